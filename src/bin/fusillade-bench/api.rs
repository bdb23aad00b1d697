//! `fusillade-bench api-upload`: a large upload and a large output download
//! through the HTTP API of a real `fusillade serve --api-only` process,
//! with the server's memory sampled from /proc while the bytes flow.
//!
//! 1. Writes a JSONL file of about `--size-mb` MB under bench-data/ (kept
//!    and reused).
//! 2. Starts `fusillade serve --api-only` (the binary next to this one) on a
//!    fresh benchmark database.
//! 3. Uploads the file as multipart/form-data, streamed from disk, and
//!    prints MB/s and the server's peak RSS (VmHWM, and the highest VmRSS
//!    sampled every 50 ms).
//! 4. Creates a batch of it, gives every request a result with one bulk SQL
//!    statement (a small chat.completion body, as a daemon would store it),
//!    downloads the output file, and prints MB/s and RSS again.

use super::connect_bench_db;
use super::procs::{ServeOptions, Server};
use super::procstat::peak_rss_kib;
use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What to run.
pub struct ApiBench {
    /// Approximate size of the input file, in MB (10^6 bytes).
    pub size_mb: u64,
    /// Also measure the output download.
    pub download: bool,
    /// A database for benchmarks only (dropped and created afresh).
    pub database_url: String,
}

/// Samples a process's VmRSS every 50 ms while running; keeps the highest.
struct RssSampler {
    stop: Arc<AtomicBool>,
    max_kib: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let max_kib = Arc::new(AtomicU64::new(0));
        let (s, m) = (stop.clone(), max_kib.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some(k) = rss_kib(pid) {
                    m.fetch_max(k, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Self {
            stop,
            max_kib,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.max_kib.load(Ordering::Relaxed)
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The input file for `size_mb`, written once.
fn input_file(size_mb: u64) -> Result<PathBuf> {
    let path = PathBuf::from(format!("bench-data/api-{size_mb}mb.jsonl"));
    let line_bytes = 520u64;
    // `gen` lines come out a few bytes longer than asked.
    let lines = (size_mb * 1_000_000) / (line_bytes + 5);
    if !path.exists() {
        super::generate(lines, line_bytes as usize, 4, &path)?;
    }
    Ok(path)
}

/// Runs the benchmark.
pub async fn run(b: ApiBench) -> Result<()> {
    let path = input_file(b.size_mb)?;
    let size = std::fs::metadata(&path)?.len();
    let pool = connect_bench_db(&b.database_url).await?;
    let server = Server::start(ServeOptions {
        database_url: &b.database_url,
        config: None,
        api_only: true,
        log: None,
    })?;
    let pid = server.pid();
    let client = reqwest::Client::new();
    let idle_kib = rss_kib(pid).unwrap_or(0);
    println!(
        "server          pid {pid}, {} (RSS at start {:.1} MiB)",
        server.url,
        mib(idle_kib)
    );

    // Upload, streamed from disk.
    let sampler = RssSampler::start(pid);
    let started = Instant::now();
    let file = upload(&client, &server.url, &path, size).await?;
    let upload_secs = started.elapsed().as_secs_f64();
    let upload_rss = sampler.finish();
    let hwm = peak_rss_kib(pid).unwrap_or(0);
    let mb = size as f64 / 1e6;
    println!(
        "upload          {mb:.1} MB in {upload_secs:.2} s = {:.1} MB/s  (stored {} bytes)",
        mb / upload_secs,
        file["bytes"]
    );
    println!(
        "server RSS      peak sampled {:.1} MiB, VmHWM {:.1} MiB during upload",
        mib(upload_rss),
        mib(hwm)
    );
    if !b.download {
        return Ok(());
    }

    let file_id = file["id"].as_str().context("no file id")?;
    let started = Instant::now();
    let body = serde_json::json!({
        "input_file_id": file_id,
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    });
    let answer = client
        .post(format!("{}/v1/batches", server.url))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&body)?)
        .send()
        .await?
        .error_for_status()?
        .bytes()
        .await?;
    let batch: serde_json::Value = serde_json::from_slice(&answer)?;
    let total = batch["request_counts"]["total"].as_i64().unwrap_or(0);
    println!(
        "batch create    {total} requests in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let batch_id = batch["id"].as_str().context("no batch id")?;
    let batch_uuid = uuid::Uuid::parse_str(batch_id.trim_start_matches("batch_"))?;
    let started = Instant::now();
    fill_results(&pool, batch_uuid).await?;
    println!(
        "results         {total} written by SQL in {:.2} s (setup, not measured)",
        started.elapsed().as_secs_f64()
    );

    let output = batch["output_file_id"].as_str().context("no output file")?;
    let sampler = RssSampler::start(pid);
    let started = Instant::now();
    let (bytes, lines) = download(&client, &server.url, output).await?;
    let secs = started.elapsed().as_secs_f64();
    let download_rss = sampler.finish();
    if lines as i64 != total {
        bail!("the output file has {lines} lines, expected {total}");
    }
    println!(
        "download        {:.1} MB in {secs:.2} s = {:.1} MB/s  ({lines} lines, {:.0} lines/s)",
        bytes as f64 / 1e6,
        bytes as f64 / 1e6 / secs,
        lines as f64 / secs
    );
    println!(
        "server RSS      peak sampled {:.1} MiB during download, VmHWM {:.1} MiB overall",
        mib(download_rss),
        mib(peak_rss_kib(pid).unwrap_or(0))
    );
    Ok(())
}

async fn upload(
    client: &reqwest::Client,
    url: &str,
    path: &Path,
    size: u64,
) -> Result<serde_json::Value> {
    let file = tokio::fs::File::open(path).await?;
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 256 << 10);
    let part =
        reqwest::multipart::Part::stream_with_length(reqwest::Body::wrap_stream(stream), size)
            .file_name("input.jsonl")
            .mime_str("application/jsonl")?;
    let (status, body) = post_file(client.post(format!("{url}/v1/files")), part).await?;
    if !status.is_success() {
        bail!("upload answered {status}: {body}");
    }
    Ok(body)
}

/// Posts `part` as the file of a `purpose=batch` upload; returns the
/// answer's status and JSON body (`null` when the body is not JSON).
pub(crate) async fn post_file(
    request: reqwest::RequestBuilder,
    part: reqwest::multipart::Part,
) -> Result<(reqwest::StatusCode, serde_json::Value)> {
    let form = reqwest::multipart::Form::new()
        .text("purpose", "batch")
        .part("file", part);
    let response = request.multipart(form).send().await?;
    let status = response.status();
    let body = serde_json::from_slice(&response.bytes().await?).unwrap_or_default();
    Ok((status, body))
}

/// Every request of the batch completed with a small chat.completion body.
async fn fill_results(pool: &sqlx::PgPool, batch: uuid::Uuid) -> Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "WITH d AS ( \
             DELETE FROM requests \
             WHERE id BETWEEN fusillade_batch_lo($1) AND fusillade_batch_hi($1) AND batch_id = $1 \
             RETURNING *) \
         INSERT INTO request_results \
             (request_id, batch_id, template_id, model, custom_id, state, attempt, not_before, \
              created_at, ok, status_code, upstream_request_id, body) \
         SELECT id, batch_id, template_id, model, custom_id, 'completed', 1, not_before, \
                created_at, true, 200, 'req-' || left(md5(id::text), 16), \
                '{\"id\":\"chatcmpl-' || left(md5(id::text), 24) || \
                '\",\"object\":\"chat.completion\",\"created\":1700000000,\"model\":\"' || \
                model || '\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\
                \"content\":\"The quick brown fox jumps over the lazy dog, and then it rests \
                for a while.\"},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":120,\
                \"completion_tokens\":18,\"total_tokens\":138}}' \
         FROM d",
    )
    .bind(batch)
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE batches SET n_completed = total WHERE id = $1")
        .bind(batch)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    sqlx::query("VACUUM ANALYZE request_results")
        .execute(pool)
        .await?;
    Ok(())
}

async fn download(client: &reqwest::Client, url: &str, file: &str) -> Result<(u64, u64)> {
    let response = client
        .get(format!("{url}/v1/files/{file}/content"))
        .send()
        .await?
        .error_for_status()?;
    let mut stream = response.bytes_stream();
    let (mut bytes, mut lines) = (0u64, 0u64);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        bytes += chunk.len() as u64;
        lines += memchr::memchr_iter(b'\n', &chunk).count() as u64;
    }
    Ok((bytes, lines))
}
