//! The API as the benchmark's clients see it: one HTTP client shared by
//! every task, each call made with the key of the owner it acts for, and
//! every answer counted by route and status, so that a 5xx anywhere in a
//! scenario is reported rather than lost in a task.

use crate::api::post_file;
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The bearer key of owner `k` (the server's config maps it to `owner-k`).
pub fn key(k: usize) -> String {
    format!("sk-bench-{k}")
}

/// The `[auth]` section that gives owners `0..owners` a key each.
pub fn auth_toml(owners: usize) -> String {
    let keys: Vec<String> = (0..owners)
        .map(|k| format!("\"{}\" = \"owner-{k}\"", key(k)))
        .collect();
    format!("[auth]\nkeys = {{ {} }}\n", keys.join(", "))
}

/// Times an upload refused with 429 is sent again.
const UPLOAD_TRIES: usize = 10;
/// The delay the server's 429 asks for (`Retry-After`).
const RETRY_AFTER: Duration = Duration::from_secs(2);

/// Answers counted by (route, status); status 0 is a transport error (no answer).
#[derive(Debug, Default)]
pub struct Tally(Mutex<BTreeMap<(&'static str, u16), u64>>);

impl Tally {
    /// Counts one answer (status 0: none).
    pub fn record(&self, route: &'static str, status: u16) {
        *self
            .0
            .lock()
            .expect("no panics while held")
            .entry((route, status))
            .or_default() += 1;
    }

    /// Every answer that was not 2xx, and transport errors.
    pub fn failures(&self) -> Vec<(&'static str, u16, u64)> {
        let map = self.0.lock().expect("no panics while held");
        map.iter()
            .filter(|((_, s), _)| !(200..300).contains(s))
            .map(|(&(r, s), &n)| (r, s, n))
            .collect()
    }

    /// How many answers in all.
    pub fn total(&self) -> u64 {
        self.0.lock().expect("no panics while held").values().sum()
    }

    /// One line: the count of non-2xx answers, 5xx among them, and which.
    pub fn describe(&self) -> String {
        let failures = self.failures();
        let count = |f: &dyn Fn(u16) -> bool| -> u64 {
            failures.iter().filter(|x| f(x.1)).map(|x| x.2).sum()
        };
        let (all, server, transport) = (count(&|_| true), count(&|s| s >= 500), count(&|s| s == 0));
        let which: Vec<String> = failures
            .iter()
            .map(|(r, s, n)| match s {
                0 => format!("{r} no answer ×{n}"),
                s => format!("{r} {s} ×{n}"),
            })
            .collect();
        format!(
            "{all} of {} (5xx {server}, no answer {transport}){}{}",
            self.total(),
            if which.is_empty() { "" } else { ": " },
            which.join(", ")
        )
    }
}

/// A handle on the server's API; cheap to clone into tasks.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    /// `http://host:port` of the server.
    pub base: String,
    /// Every answer so far.
    pub tally: Arc<Tally>,
}

/// Whether a batch status is final.
pub fn is_terminal(status: &str) -> bool {
    matches!(status, "completed" | "failed" | "expired" | "cancelled")
}

impl Api {
    /// The API at `base` (`http://127.0.0.1:PORT`).
    pub fn new(base: &str) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: base.to_owned(),
            tally: Arc::default(),
        }
    }

    /// Sends one request, counts its answer, and returns it when it is 2xx.
    async fn send(
        &self,
        route: &'static str,
        request: reqwest::RequestBuilder,
    ) -> Option<reqwest::Response> {
        match request.send().await {
            Ok(r) => {
                self.tally.record(route, r.status().as_u16());
                r.status().is_success().then_some(r)
            }
            Err(_) => {
                self.tally.record(route, 0);
                None
            }
        }
    }

    /// A 2xx answer's JSON body; a body that cannot be read counts as no answer.
    async fn json(&self, route: &'static str, request: reqwest::RequestBuilder) -> Option<Value> {
        let body = self.send(route, request).await?.bytes().await;
        let value = body.ok().and_then(|b| serde_json::from_slice(&b).ok());
        if value.is_none() {
            self.tally.record(route, 0);
        }
        value
    }

    /// Uploads `body` as owner `k`'s batch input file; at `trickle_kbps` > 0
    /// the body is sent at that many KiB per second. Returns the file id.
    pub async fn upload(&self, k: usize, body: Bytes, trickle_kbps: u64) -> Option<String> {
        let route = "POST /v1/files";
        for _ in 0..UPLOAD_TRIES {
            let len = body.len() as u64;
            let part = if trickle_kbps == 0 {
                reqwest::multipart::Part::bytes(body.to_vec())
            } else {
                reqwest::multipart::Part::stream_with_length(
                    trickle(body.clone(), trickle_kbps),
                    len,
                )
            };
            let part = part
                .file_name("input.jsonl")
                .mime_str("application/jsonl")
                .expect("a valid mime type");
            let request = self
                .http
                .post(format!("{}/v1/files", self.base))
                .bearer_auth(key(k));
            match post_file(request, part).await {
                Ok((status, body)) => {
                    self.tally.record(route, status.as_u16());
                    // Too many uploads at once: again after the delay, as
                    // the SDKs do.
                    if status.as_u16() == 429 {
                        tokio::time::sleep(RETRY_AFTER).await;
                        continue;
                    }
                    let id = body["id"].as_str().map(str::to_owned);
                    if status.is_success() && id.is_none() {
                        self.tally.record(route, 0);
                    }
                    return id.filter(|_| status.is_success());
                }
                Err(_) => {
                    self.tally.record(route, 0);
                    return None;
                }
            }
        }
        None
    }

    /// Creates a batch of `file_id` as owner `k`; returns the batch object.
    pub async fn create_batch(&self, k: usize, file_id: &str) -> Option<Value> {
        let body = serde_json::json!({
            "input_file_id": file_id,
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
        });
        let request = self
            .http
            .post(format!("{}/v1/batches", self.base))
            .bearer_auth(key(k))
            .header("content-type", "application/json")
            .body(body.to_string());
        self.json("POST /v1/batches", request).await
    }

    /// Reads batch `id` as owner `k`.
    pub async fn get_batch(&self, k: usize, id: &str) -> Option<Value> {
        let request = self
            .http
            .get(format!("{}/v1/batches/{id}", self.base))
            .bearer_auth(key(k));
        self.json("GET /v1/batches/{id}", request).await
    }

    /// The `id` of every line of file `file_id`, read as owner `k`.
    pub async fn line_ids(&self, k: usize, file_id: &str) -> Option<Vec<String>> {
        #[derive(serde::Deserialize)]
        struct Line {
            id: String,
        }
        let request = self
            .http
            .get(format!("{}/v1/files/{file_id}/content", self.base))
            .bearer_auth(key(k));
        let route = "GET /v1/files/{id}/content";
        let body = self.send(route, request).await?.bytes().await.ok();
        let ids: Option<Vec<String>> = body.and_then(|b| {
            b.split(|&c| c == b'\n')
                .filter(|l| !l.is_empty())
                .map(|l| serde_json::from_slice::<Line>(l).ok().map(|l| l.id))
                .collect()
        });
        if ids.is_none() {
            self.tally.record(route, 0);
        }
        ids
    }

    /// `GET /healthz`, given up on after `limit`; the status (0: no answer).
    pub async fn healthz(&self, limit: Duration) -> u16 {
        let request = self
            .http
            .get(format!("{}/healthz", self.base))
            .timeout(limit);
        // Not through `send`: a 503 here is a figure to keep, not a failure.
        let status = request.send().await.map_or(0, |r| r.status().as_u16());
        self.tally.record("GET /healthz", status);
        status
    }
}

/// `body` as a stream of chunks sent every 100 ms, `kbps` KiB per second:
/// a slow client, as seen by the server.
fn trickle(body: Bytes, kbps: u64) -> reqwest::Body {
    let chunk = ((kbps * 1024) / 10).max(1) as usize;
    let chunks = futures_util::stream::iter(
        (0..body.len())
            .step_by(chunk)
            .map(move |at| body.slice(at..(at + chunk).min(body.len())))
            .collect::<Vec<_>>(),
    );
    let paced = chunks.then(|c| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok::<Bytes, std::io::Error>(c)
    });
    reqwest::Body::wrap_stream(paced)
}
