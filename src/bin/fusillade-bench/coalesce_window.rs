//! `fusillade-bench coalesce --scenario window`: a tight-window batch
//! submitted while a large 24 h batch of the same model runs, through a
//! real `fusillade serve` (API and daemon, coalescing on) against a
//! cache-modelling mock. Prints when the small batch finished against its
//! window, and how far the big batch got meanwhile; then cancels the big
//! batch (it is not waited for).
//!
//! The case is a 10-minute window; windows are whole minutes here,
//! so the default scales it down to `2m` to keep the run under two minutes.

use crate::procs::{MockProcess, ServeOptions, Server};
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};

/// The flags of the window scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct WindowArgs {
    /// window: lines of the 24 h batch.
    #[arg(long, default_value_t = 30_000)]
    pub big_lines: u64,
    /// window: lines of the tight-window batch.
    #[arg(long, default_value_t = 1_000)]
    pub small_lines: u64,
    /// window: the tight batch's completion window (whole minutes or hours).
    #[arg(long, default_value = "2m")]
    pub small_window: String,
    /// window: seconds the big batch runs alone before the small one is submitted.
    #[arg(long, default_value_t = 10)]
    pub lead_secs: u64,
    /// window: the small batch belongs to another owner (API key) than the
    /// big one; by default both are one owner's.
    #[arg(long)]
    pub two_owners: bool,
}

const BIG_KEY: &str = "sk-bench-big";
const SMALL_KEY: &str = "sk-bench-small";

/// `n` chat lines of model `bench-model`: 50 system prompts of 60 words,
/// each line its own question (temperature 0, no two alike).
fn lines(tag: &str, n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n {
        let p = i % 50;
        let system = format!(
            "You are persona {p} of the {tag} batch. {}",
            "answer briefly and plainly, ".repeat(12)
        );
        let line = json!({"custom_id": format!("{tag}-{i}"), "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "bench-model", "temperature": 0, "max_tokens": 16,
                "messages": [{"role": "system", "content": system},
                             {"role": "user", "content": format!("question {i} of {tag}?")}]}});
        out.extend_from_slice(line.to_string().as_bytes());
        out.push(b'\n');
    }
    out
}

/// The HTTP client of one owner.
struct Owner<'a> {
    http: &'a reqwest::Client,
    base: &'a str,
    key: &'a str,
}

impl Owner<'_> {
    async fn json(&self, r: reqwest::RequestBuilder, what: &str) -> Result<Value> {
        let r = r.bearer_auth(self.key).send().await?;
        let status = r.status();
        let body = r.text().await?;
        if !status.is_success() {
            bail!("{what}: HTTP {status}: {body}");
        }
        Ok(serde_json::from_str(&body)?)
    }

    async fn upload(&self, bytes: Vec<u8>) -> Result<String> {
        let part = reqwest::multipart::Part::bytes(bytes)
            .file_name("input.jsonl")
            .mime_str("application/jsonl")?;
        let form = reqwest::multipart::Form::new()
            .text("purpose", "batch")
            .part("file", part);
        let file = self
            .json(
                self.http
                    .post(format!("{}/v1/files", self.base))
                    .multipart(form),
                "upload",
            )
            .await?;
        Ok(file["id"].as_str().context("no file id")?.to_owned())
    }

    async fn create(&self, file: &str, window: &str) -> Result<Value> {
        let body = json!({"input_file_id": file, "endpoint": "/v1/chat/completions",
                          "completion_window": window});
        self.json(
            self.http
                .post(format!("{}/v1/batches", self.base))
                .header("content-type", "application/json")
                .body(body.to_string()),
            "create",
        )
        .await
    }

    async fn get(&self, id: &str) -> Result<Value> {
        self.json(
            self.http.get(format!("{}/v1/batches/{id}", self.base)),
            "get",
        )
        .await
    }

    async fn cancel(&self, id: &str) -> Result<Value> {
        self.json(
            self.http
                .post(format!("{}/v1/batches/{id}/cancel", self.base))
                .header("content-type", "application/json")
                .body("{}"),
            "cancel",
        )
        .await
    }
}

fn done(b: &Value) -> i64 {
    b["request_counts"]["completed"].as_i64().unwrap_or(0)
        + b["request_counts"]["failed"].as_i64().unwrap_or(0)
}

fn terminal(b: &Value) -> bool {
    matches!(
        b["status"].as_str(),
        Some("completed" | "failed" | "expired" | "cancelled")
    )
}

/// Runs the scenario and prints its figures.
pub async fn run(
    w: &WindowArgs,
    concurrency: u32,
    cache: &fusillade::mock::CacheArgs,
    db: &str,
    dir: &Path,
) -> Result<()> {
    let window = fusillade::domain::batch::CompletionWindow::parse(&w.small_window)
        .map_err(|e| anyhow::anyhow!("--small-window: {e}"))?;
    let window_secs = window.duration().num_seconds() as f64;
    let pool = crate::connect_bench_db(db).await?;
    pool.close().await;
    let mut mock = MockProcess::start_with(&cache.flags())?;
    let config = dir.join("coalesce-window.toml");
    let auth =
        format!("[auth]\nkeys = {{ \"{BIG_KEY}\" = \"big\", \"{SMALL_KEY}\" = \"small\" }}\n");
    std::fs::write(
        &config,
        format!(
            "[upstream]\nurl = \"{}\"\nconcurrency = {concurrency}\n{auth}",
            mock.url
        ),
    )?;
    let server = Server::start(ServeOptions {
        database_url: db,
        config: Some(&config),
        api_only: false,
        log: Some(&dir.join("coalesce-window.log")),
    })?;
    let http = reqwest::Client::new();
    let big = Owner {
        http: &http,
        base: &server.url,
        key: BIG_KEY,
    };
    let small = Owner {
        http: &http,
        base: &server.url,
        key: if w.two_owners { SMALL_KEY } else { BIG_KEY },
    };
    println!(
        "workload          24h batch of {} lines, then a {} batch of {} lines after {} s ({}), {concurrency} in flight",
        w.big_lines,
        w.small_window,
        w.small_lines,
        w.lead_secs,
        if w.two_owners {
            "another owner"
        } else {
            "the same owner"
        }
    );
    // Both files first, so that the small batch's upload is not timed.
    let big_file = big.upload(lines("big", w.big_lines)).await?;
    let small_file = small.upload(lines("small", w.small_lines)).await?;
    let big_batch = big.create(&big_file, "24h").await?;
    let big_id = big_batch["id"].as_str().context("no id")?.to_owned();
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(w.lead_secs)).await;
    let before = big.get(&big_id).await?;
    if terminal(&before) {
        bail!("the big batch ended before the small one was submitted: raise --big-lines");
    }
    let submitted = Instant::now();
    let small_batch = small.create(&small_file, &w.small_window).await?;
    let small_id = small_batch["id"].as_str().context("no id")?.to_owned();
    let (small_end, big_at_end) = loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let s = small.get(&small_id).await?;
        let b = big.get(&big_id).await?;
        if terminal(&s) {
            break (s, b);
        }
        if submitted.elapsed().as_secs_f64() > window_secs + 30.0 {
            bail!("the small batch did not end within its window and 30 s more: {s}");
        }
    };
    let took = submitted.elapsed().as_secs_f64();
    let alone = done(&before) as f64 / (submitted - started).as_secs_f64();
    let big_during = (done(&big_at_end) - done(&before)) as f64;
    println!(
        "small batch       {} in {took:.1} s of its {:.0} s window ({:.0}%): {} completed, {} failed",
        small_end["status"].as_str().unwrap_or("?"),
        window_secs,
        100.0 * took / window_secs,
        small_end["request_counts"]["completed"],
        small_end["request_counts"]["failed"],
    );
    println!(
        "big batch         {:.0} lines/s alone; {} lines done while the small one ran ({:.0}/s); {} of {} done at its end, still {}",
        alone,
        big_during,
        big_during / took.max(1e-9),
        done(&big_at_end),
        w.big_lines,
        big_at_end["status"].as_str().unwrap_or("?"),
    );
    println!(
        "verdict           the small batch {} its window",
        if small_end["status"] == "completed" && took <= window_secs {
            "finished within"
        } else {
            "MISSED"
        }
    );
    big.cancel(&big_id).await?;
    drop(server);
    let _ = mock.finish();
    Ok(())
}
