//! The API as the chaos run calls it, with every answer counted: a 5xx is a
//! failure of the run unless it came while the database was being
//! restarted (then 503 is the promised answer), and those are counted
//! apart.

use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Answers by status (0: no answer), split by whether the database was up.
#[derive(Debug, Default)]
pub struct Tally {
    /// While the database was up: status -> count.
    pub up: BTreeMap<u16, u64>,
    /// While it was being restarted (and until `/healthz` said ok again).
    pub restarting: BTreeMap<u16, u64>,
    /// The calls that got a 5xx while the database was up: `route status`.
    pub server_errors: Vec<String>,
    /// The routes of calls that got no answer while it was up.
    pub no_answer: Vec<String>,
}

impl Tally {
    /// 5xx answers while the database was up.
    pub fn five_xx(&self) -> u64 {
        self.up.range(500..600).map(|(_, n)| n).sum()
    }

    /// Calls that got no answer while the database was up.
    pub fn unanswered(&self) -> u64 {
        self.up.get(&0).copied().unwrap_or(0)
    }

    /// Calls made.
    pub fn total(&self) -> u64 {
        self.up.values().chain(self.restarting.values()).sum()
    }
}

/// A handle on the API; cheap to clone.
#[derive(Clone)]
pub struct Api {
    /// The HTTP client.
    pub http: reqwest::Client,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Every answer.
    pub tally: Arc<Mutex<Tally>>,
    /// Set while the database is being restarted.
    pub db_restarting: Arc<AtomicBool>,
}

impl Api {
    /// The API at `base`.
    pub fn new(base: &str) -> Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()?,
            base: base.to_owned(),
            tally: Arc::default(),
            db_restarting: Arc::default(),
        })
    }

    /// Counts one answer (`0`: none) of a call to `route`.
    pub fn record(&self, route: &str, status: u16) {
        let restarting = self.db_restarting.load(Ordering::SeqCst);
        let mut t = self.tally.lock().expect("no panic while held");
        let map = if restarting {
            &mut t.restarting
        } else {
            &mut t.up
        };
        *map.entry(status).or_default() += 1;
        if !restarting && status >= 500 {
            t.server_errors.push(format!("{route} {status}"));
        }
        if !restarting && status == 0 {
            t.no_answer.push(route.to_owned());
        }
    }

    /// Sends `request`, counts the answer, and returns its status and body.
    pub async fn call(
        &self,
        route: &str,
        request: reqwest::RequestBuilder,
    ) -> Option<(u16, bytes::Bytes)> {
        let answer = match request.send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                r.bytes().await.ok().map(|b| (status, b))
            }
            Err(_) => None,
        };
        self.record(route, answer.as_ref().map_or(0, |a| a.0));
        answer
    }

    /// A call that must answer 2xx with JSON.
    async fn json(&self, route: &str, request: reqwest::RequestBuilder) -> Result<Value> {
        let (status, body) = self
            .call(route, request)
            .await
            .with_context(|| format!("{route}: no answer"))?;
        if !(200..300).contains(&status) {
            bail!("{route}: {status} {}", String::from_utf8_lossy(&body));
        }
        Ok(serde_json::from_slice(&body)?)
    }

    /// Uploads `body` as a batch input file; returns the file object.
    pub async fn upload(&self, body: Vec<u8>) -> Result<Value> {
        let part = reqwest::multipart::Part::bytes(body)
            .file_name("chaos.jsonl")
            .mime_str("application/jsonl")?;
        let form = reqwest::multipart::Form::new()
            .text("purpose", "batch")
            .part("file", part);
        let request = self
            .http
            .post(format!("{}/v1/files", self.base))
            .multipart(form);
        self.json("POST /v1/files", request).await
    }

    /// Creates a batch of `file_id`; returns the batch object.
    pub async fn create_batch(&self, file_id: &str) -> Result<Value> {
        let body = serde_json::json!({
            "input_file_id": file_id,
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
            "metadata": {"run": "chaos"},
        });
        let request = self
            .http
            .post(format!("{}/v1/batches", self.base))
            .header("content-type", "application/json")
            .body(body.to_string());
        self.json("POST /v1/batches", request).await
    }

    /// The batch object.
    pub async fn batch(&self, id: &str) -> Result<Value> {
        let request = self.http.get(format!("{}/v1/batches/{id}", self.base));
        self.json("GET /v1/batches/{id}", request).await
    }

    /// Every batch (newest first), following `after` through the pages.
    pub async fn batches(&self) -> Result<Vec<Value>> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut url = format!("{}/v1/batches?limit=100", self.base);
            if let Some(a) = &after {
                url.push_str("&after=");
                url.push_str(a);
            }
            let page = self.json("GET /v1/batches", self.http.get(url)).await?;
            let data = page["data"].as_array().cloned().unwrap_or_default();
            after = data
                .last()
                .and_then(|b| b["id"].as_str())
                .map(str::to_owned);
            all.extend(data);
            if page["has_more"] != Value::Bool(true) || after.is_none() {
                return Ok(all);
            }
        }
    }

    /// The content of a file.
    pub async fn content(&self, file_id: &str) -> Result<bytes::Bytes> {
        let route = "GET /v1/files/{id}/content";
        let request = self
            .http
            .get(format!("{}/v1/files/{file_id}/content", self.base));
        let (status, body) = self
            .call(route, request)
            .await
            .with_context(|| format!("{route}: no answer"))?;
        if status != 200 {
            bail!("{route}: {status}");
        }
        Ok(body)
    }

    /// `/healthz`'s status (0: no answer within `limit`), not counted: a
    /// 503 there while the database is away is the promised answer.
    pub async fn healthz(&self, limit: Duration) -> u16 {
        let request = self
            .http
            .get(format!("{}/healthz", self.base))
            .timeout(limit);
        request.send().await.map_or(0, |r| r.status().as_u16())
    }
}
