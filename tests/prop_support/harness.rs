//! The API's router in-process over a real database, with two owners and a
//! file, a batch and a request that exist, for made-up requests to reach.
//! Shared by `tests/prop_api.rs` and the fuzz target `api_request`.

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, header};
use fusillade::api::{ApiState, router};
use fusillade::config::Config;
use fusillade::fuzzing::api::{KEYS, KnownIds, check_answer};
use fusillade::{IngestLimits, PostgresStore, TestDbPools};
use sqlx::PgPool;
use tower::ServiceExt;

/// What a call answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The status.
    pub status: u16,
    /// The `Content-Type`, if any.
    pub content_type: Option<String>,
    /// The whole body.
    pub body: Vec<u8>,
}

impl Answer {
    /// The body as JSON (`Null` if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }
}

/// The router and the ids of what exists.
pub struct Harness {
    /// The API.
    pub router: Router,
    /// A file, a batch and a request of the first owner.
    pub ids: KnownIds,
    /// The store behind the router.
    pub store: PostgresStore,
}

/// A valid input line.
pub fn line(custom_id: &str) -> String {
    format!(
        r#"{{"custom_id":"{custom_id}","method":"POST","url":"/v1/chat/completions","body":{{"model":"m","messages":[]}}}}"#
    )
}

/// The multipart body of an upload of `content`, purpose first.
pub fn upload_body(content: &[u8]) -> Vec<u8> {
    let b = fusillade::fuzzing::api::BOUNDARY;
    let mut body = format!(
        "--{b}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n\
         --{b}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"in.jsonl\"\r\n\
         Content-Type: application/jsonl\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(content);
    body.extend_from_slice(format!("\r\n--{b}--\r\n").as_bytes());
    body
}

impl Harness {
    /// The API over `pool` with keys for two owners, and a file of three
    /// lines, a batch of it and one of its requests, owned by the first.
    pub async fn new(pool: &PgPool) -> Self {
        let text = format!(
            "[auth]\nkeys = {{ \"{}\" = \"alice\", \"{}\" = \"bob\" }}\n",
            KEYS[0], KEYS[1]
        );
        let config = Config::parse(&text, "harness", &|_| None).expect("a valid config");
        let store = PostgresStore::new(TestDbPools::new(pool.clone()).await.expect("pools"))
            .with_limits(IngestLimits::default());
        let mut h = Self {
            router: router(ApiState::fixed(store.clone(), config)),
            ids: KnownIds::default(),
            store,
        };
        let content = format!("{}\n{}\n{}\n", line("a"), line("b"), line("c"));
        let file = h.upload(KEYS[0], &upload_body(content.as_bytes())).await;
        assert_eq!(
            file.status,
            200,
            "{:?}",
            String::from_utf8_lossy(&file.body)
        );
        h.ids.file = file.json()["id"].as_str().expect("a file id").to_owned();
        let batch = h
            .send(
                Request::post("/v1/batches")
                    .header(header::AUTHORIZATION, format!("Bearer {}", KEYS[0]))
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Body::from(
                        serde_json::json!({"input_file_id": h.ids.file,
                            "endpoint": "/v1/chat/completions", "completion_window": "24h"})
                        .to_string(),
                    ))
                    .expect("a request"),
            )
            .await;
        assert_eq!(
            batch.status,
            200,
            "{:?}",
            String::from_utf8_lossy(&batch.body)
        );
        h.ids.batch = batch.json()["id"].as_str().expect("a batch id").to_owned();
        let requests = h
            .send(
                Request::get(format!("/v1/batches/{}/requests", h.ids.batch))
                    .header(header::AUTHORIZATION, format!("Bearer {}", KEYS[0]))
                    .body(Body::empty())
                    .expect("a request"),
            )
            .await;
        h.ids.request = requests.json()["data"][0]["id"]
            .as_str()
            .expect("a request id")
            .to_owned();
        h
    }

    /// Uploads a multipart `body` (with the default boundary) as `key`.
    pub async fn upload(&self, key: &str, body: &[u8]) -> Answer {
        let content_type = format!(
            "multipart/form-data; boundary={}",
            fusillade::fuzzing::api::BOUNDARY
        );
        self.send(
            Request::builder()
                .method(Method::POST)
                .uri("/v1/files")
                .header(header::AUTHORIZATION, format!("Bearer {key}"))
                .header(header::CONTENT_TYPE, content_type)
                .body(Body::from(body.to_vec()))
                .expect("a request"),
        )
        .await
    }

    /// Sends a request and reads the whole answer.
    pub async fn send(&self, request: Request<Body>) -> Answer {
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("the router never fails");
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .map(|b| b.to_vec())
            .unwrap_or_else(|e| format!("<the body failed: {e}>").into_bytes());
        Answer {
            status,
            content_type,
            body,
        }
    }

    /// Sends a request and checks the answer against the rule of
    /// [`check_answer`]; the answer, or what is wrong with it.
    pub async fn check(&self, request: Request<Body>) -> Result<Answer, String> {
        let what = format!("{} {}", request.method(), request.uri());
        let answer = self.send(request).await;
        check_answer(answer.status, answer.content_type.as_deref(), &answer.body)
            .map_err(|e| format!("{what}: {e}"))?;
        Ok(answer)
    }
}
