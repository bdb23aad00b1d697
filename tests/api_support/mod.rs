//! Calling the API's router in-process (`oneshot`, no socket) in tests: two
//! owners with their own keys, multipart bodies, and checks of OpenAI's
//! error envelope.
#![allow(dead_code)]

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use fusillade::api::{ApiState, router};
use fusillade::config::Config;
use fusillade::{IngestLimits, PostgresStore, TestDbPools};
use serde_json::Value;
use sqlx::PgPool;
use tower::ServiceExt;

/// Alice's key.
pub const ALICE: &str = "sk-alice";
/// Bob's key.
pub const BOB: &str = "sk-bob";
/// The chat completions endpoint.
pub const CHAT: &str = "/v1/chat/completions";

/// A config with two keys (two owners) and `extra` TOML appended.
pub fn config_with_auth(extra: &str) -> Config {
    let text =
        format!("[auth]\nkeys = {{ \"{ALICE}\" = \"alice\", \"{BOB}\" = \"bob\" }}\n{extra}");
    Config::parse(&text, "test", &|_| None).unwrap()
}

/// The router over a test store, and the pool.
#[derive(Clone)]
pub struct Api {
    pub router: Router,
    pub pool: PgPool,
    pub store: PostgresStore,
    pub state: ApiState<PostgresStore>,
}

/// What a call answered.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8(self.body.to_vec()).unwrap()
    }

    /// Asserts a 2xx and returns the JSON body.
    pub fn ok(&self) -> Value {
        assert!(
            self.status.is_success(),
            "expected success, got {}: {}",
            self.status,
            String::from_utf8_lossy(&self.body)
        );
        self.json()
    }

    /// Asserts an error in OpenAI's envelope with this status (and code, when
    /// given); returns the `error` object.
    pub fn error(&self, status: u16, code: Option<&str>) -> Value {
        assert_eq!(
            self.status.as_u16(),
            status,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        let v = self.json();
        let e = v["error"].clone();
        let obj = e.as_object().expect("an error object");
        for k in ["message", "type", "param", "code"] {
            assert!(obj.contains_key(k), "envelope lacks {k}: {v}");
        }
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(e["type"].is_string());
        if let Some(code) = code {
            assert_eq!(e["code"], code, "{v}");
        }
        e
    }
}

impl Api {
    /// Two owners with keys, default limits.
    pub async fn new(pool: &PgPool) -> Self {
        Self::with(pool, config_with_auth(""), IngestLimits::default()).await
    }

    /// A router over `config`, with a store using `limits`.
    pub async fn with(pool: &PgPool, config: Config, limits: IngestLimits) -> Self {
        let store =
            PostgresStore::new(TestDbPools::new(pool.clone()).await.unwrap()).with_limits(limits);
        let state = ApiState::fixed(store.clone(), config);
        Self {
            router: router(state.clone()),
            pool: pool.clone(),
            store,
            state,
        }
    }

    /// Sends a request.
    pub async fn send(&self, request: Request<Body>) -> Answer {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        Answer {
            status,
            headers,
            body,
        }
    }

    /// A call with an optional key and JSON body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        json: Option<Value>,
    ) -> Answer {
        let mut b = Request::builder().method(method).uri(path);
        if let Some(k) = key {
            b = b.header(header::AUTHORIZATION, format!("Bearer {k}"));
        }
        let body = match json {
            Some(v) => {
                b = b.header(header::CONTENT_TYPE, "application/json");
                Body::from(serde_json::to_vec(&v).unwrap())
            }
            None => Body::empty(),
        };
        self.send(b.body(body).unwrap()).await
    }

    /// GET as `key`.
    pub async fn get(&self, path: &str, key: &str) -> Answer {
        self.call(Method::GET, path, Some(key), None).await
    }

    /// POST JSON as `key`.
    pub async fn post(&self, path: &str, key: &str, json: Value) -> Answer {
        self.call(Method::POST, path, Some(key), Some(json)).await
    }

    /// DELETE as `key`.
    pub async fn delete(&self, path: &str, key: &str) -> Answer {
        self.call(Method::DELETE, path, Some(key), None).await
    }

    /// POST a multipart body as `key`.
    pub async fn post_multipart(&self, key: Option<&str>, parts: &[Part<'_>]) -> Answer {
        let (content_type, body) = multipart(parts);
        let mut b = Request::builder()
            .method(Method::POST)
            .uri("/v1/files")
            .header(header::CONTENT_TYPE, content_type)
            .header(header::CONTENT_LENGTH, body.len());
        if let Some(k) = key {
            b = b.header(header::AUTHORIZATION, format!("Bearer {k}"));
        }
        self.send(b.body(Body::from(body)).unwrap()).await
    }

    /// Uploads `content` as `key` (purpose first, as the Python SDK does).
    pub async fn upload(&self, key: &str, content: &str) -> Value {
        self.post_multipart(
            Some(key),
            &[
                Part::text("purpose", "batch"),
                Part::file("file", "input.jsonl", content.as_bytes()),
            ],
        )
        .await
        .ok()
    }

    /// Creates a 24h chat batch of `file_id` as `key`.
    pub async fn create_batch(&self, key: &str, file_id: &str) -> Value {
        self.post(
            "/v1/batches",
            key,
            serde_json::json!({
                "input_file_id": file_id,
                "endpoint": CHAT,
                "completion_window": "24h",
            }),
        )
        .await
        .ok()
    }

    /// Uploads `n` valid lines and creates a batch of them, as `key`.
    pub async fn batch_of(&self, key: &str, prefix: &str, n: usize) -> Value {
        let file = self.upload(key, &valid_file(prefix, n)).await;
        self.create_batch(key, file["id"].as_str().unwrap()).await
    }
}

/// One field of a multipart body.
pub struct Part<'a> {
    pub name: &'a str,
    pub filename: Option<&'a str>,
    pub data: &'a [u8],
}

impl<'a> Part<'a> {
    /// A text field.
    pub fn text(name: &'a str, value: &'a str) -> Self {
        Self {
            name,
            filename: None,
            data: value.as_bytes(),
        }
    }

    /// A file field.
    pub fn file(name: &'a str, filename: &'a str, data: &'a [u8]) -> Self {
        Self {
            name,
            filename: Some(filename),
            data,
        }
    }
}

/// A multipart/form-data body and its content type.
pub fn multipart(parts: &[Part<'_>]) -> (String, Vec<u8>) {
    let boundary = "----fusillade-test-boundary-7d1f";
    let mut body = Vec::new();
    for p in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match p.filename {
            Some(f) => body.extend_from_slice(
                format!(
                    "Content-Disposition: form-data; name=\"{}\"; filename=\"{f}\"\r\n\
                     Content-Type: application/jsonl\r\n\r\n",
                    p.name
                )
                .as_bytes(),
            ),
            None => body.extend_from_slice(
                format!(
                    "Content-Disposition: form-data; name=\"{}\"\r\n\r\n",
                    p.name
                )
                .as_bytes(),
            ),
        }
        body.extend_from_slice(p.data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// A valid chat line for model `m`.
pub fn line(custom_id: &str) -> String {
    format!(
        r#"{{"custom_id":"{custom_id}","method":"POST","url":"{CHAT}","body":{{"model":"m","messages":[{{"role":"user","content":"hi {custom_id}"}}]}}}}"#
    )
}

/// `n` valid lines `<prefix>0`...
pub fn valid_file(prefix: &str, n: usize) -> String {
    (0..n)
        .map(|i| format!("{}\n", line(&format!("{prefix}{i}"))))
        .collect()
}

/// The JSON lines of a download.
pub fn lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The `id` of a JSON object.
pub fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_owned()
}
