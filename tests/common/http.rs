//! The API of a `fusillade serve` child over real HTTP, as a client sees it.

use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// A client of one server, with or without a key.
#[derive(Debug, Clone)]
pub struct Client {
    /// The reqwest client (every call times out after a long while).
    pub http: reqwest::Client,
    /// Such as `http://127.0.0.1:41234`.
    pub base: String,
    /// The bearer key, if the server wants one.
    pub key: Option<String>,
}

impl Client {
    /// A client of `base`.
    pub fn new(base: &str, key: Option<&str>) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .expect("a reqwest client"),
            base: base.to_owned(),
            key: key.map(str::to_owned),
        }
    }

    fn auth(&self, b: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.key {
            Some(k) => b.bearer_auth(k),
            None => b,
        }
    }

    /// `GET path`: the status and the body.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let r = self
            .auth(self.http.get(format!("{}{path}", self.base)))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = r.status().as_u16();
        (status, r.text().await.expect("a body"))
    }

    /// `POST path` with a JSON body: the status and the body.
    pub async fn post(&self, path: &str, json: &Value) -> (u16, String) {
        let r = self
            .auth(self.http.post(format!("{}{path}", self.base)))
            .header("content-type", "application/json")
            .body(json.to_string())
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let status = r.status().as_u16();
        (status, r.text().await.expect("a body"))
    }

    /// `GET path`, which must answer 200 with JSON.
    pub async fn get_json(&self, path: &str) -> Value {
        let (status, body) = self.get(path).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).expect("JSON")
    }

    /// `GET path`: the status and how long the answer took.
    pub async fn timed_get(&self, path: &str) -> (u16, Duration) {
        let asked = Instant::now();
        let (status, _) = self.get(path).await;
        (status, asked.elapsed())
    }

    /// Uploads `content` as an input file; its JSON.
    pub async fn upload(&self, content: impl Into<reqwest::Body>) -> Value {
        let form = reqwest::multipart::Form::new()
            .text("purpose", "batch")
            .part(
                "file",
                reqwest::multipart::Part::stream(content).file_name("input.jsonl"),
            );
        let r = self
            .auth(self.http.post(format!("{}/v1/files", self.base)))
            .multipart(form)
            .send()
            .await
            .expect("POST /v1/files");
        let status = r.status();
        let body = r.text().await.expect("a body");
        assert_eq!(status, 200, "upload: {body}");
        serde_json::from_str(&body).expect("JSON")
    }

    /// Creates a 24h chat batch of the file; its JSON.
    pub async fn create_batch(&self, file: &Value) -> Value {
        let r = self
            .auth(self.http.post(format!("{}/v1/batches", self.base)))
            .header("content-type", "application/json")
            .body(
                json!({
                    "input_file_id": file["id"],
                    "endpoint": "/v1/chat/completions",
                    "completion_window": "24h",
                })
                .to_string(),
            )
            .send()
            .await
            .expect("POST /v1/batches");
        let status = r.status();
        let body = r.text().await.expect("a body");
        assert_eq!(status, 200, "create: {body}");
        serde_json::from_str(&body).expect("JSON")
    }

    /// Polls the batch until it is terminal; panics after `timeout`.
    pub async fn finished_batch(&self, batch: &Value, timeout: Duration) -> Value {
        let path = format!("/v1/batches/{}", batch["id"].as_str().expect("an id"));
        let until = Instant::now() + timeout;
        loop {
            let (status, body) = self.get(&path).await;
            if status == 200 {
                let b: Value = serde_json::from_str(&body).expect("JSON");
                if ["completed", "failed", "expired", "cancelled"]
                    .contains(&b["status"].as_str().unwrap_or_default())
                {
                    return b;
                }
            }
            assert!(
                Instant::now() < until,
                "the batch did not end in time: {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A file's content as JSON lines.
    pub async fn lines(&self, file_id: &Value) -> Vec<Value> {
        let id = file_id.as_str().expect("a file id");
        let (status, body) = self.get(&format!("/v1/files/{id}/content")).await;
        assert_eq!(status, 200, "{body}");
        body.lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }
}

/// Asserts that output ∪ errors holds each of `ids` exactly once.
pub fn assert_each_once(lines: &[Value], ids: &[String]) {
    let mut seen: Vec<&str> = lines
        .iter()
        .map(|l| l["custom_id"].as_str().expect("a custom_id"))
        .collect();
    seen.sort_unstable();
    let mut want: Vec<&str> = ids.iter().map(String::as_str).collect();
    want.sort_unstable();
    assert_eq!(seen, want, "each line exactly once");
}

/// The value of the Prometheus sample `name{labels}` in `text`: the line
/// whose name is `name` and whose labels include every one of `labels`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
        if n != name {
            return None;
        }
        let all = labels
            .iter()
            .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
        all.then(|| value.parse().ok()).flatten()
    })
}
