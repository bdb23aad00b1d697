//! Scenario `uploads`: many clients upload a file at once, optionally each
//! at a slow, fixed pace (`--trickle-kbps`), while `/healthz` is read every
//! 100 ms and the daemon's heartbeat age is read from the database: a slow
//! upload should cost the server a socket, not its database.

use super::client::Api;
use super::stack::{Stack, StackOptions};
use super::stats::{Percentiles, ms};
use super::summary::Summary;
use anyhow::Result;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The flags of this scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct UploadOptions {
    /// uploads: concurrent uploads, one client (and owner) each.
    #[arg(long, default_value_t = 10)]
    pub uploads: usize,
    /// uploads: lines of each uploaded file.
    #[arg(id = "upload-lines", long = "upload-lines", default_value_t = 20_000)]
    pub lines: u64,
    /// uploads: each client's pace in KiB/s (0: as fast as it can).
    #[arg(long, default_value_t = 0)]
    pub trickle_kbps: u64,
}

/// How long one `/healthz` read may take before it counts as no answer.
const HEALTH_LIMIT: Duration = Duration::from_secs(60);

/// Runs the uploads and prints their figures.
pub async fn run(
    so: &StackOptions,
    o: &UploadOptions,
    deadline: Instant,
    summary: &mut Summary,
) -> Result<()> {
    let stack = Stack::start(so, "uploads", o.uploads).await?;
    let body = super::input(0, o.lines);
    let mb = body.len() as f64 / 1e6;
    let stop = Arc::new(AtomicBool::new(false));
    let health = tokio::spawn(sample_health(stack.api.clone(), stop.clone()));
    let beats = tokio::spawn(sample_heartbeat(stack.pool.clone(), stop.clone()));

    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..o.uploads {
        let (api, body, kbps) = (stack.api.clone(), body.clone(), o.trickle_kbps);
        tasks.spawn(async move {
            let t = Instant::now();
            let ok = api.upload(k, body, kbps).await.is_some();
            (k, t.elapsed(), ok)
        });
    }
    let mut done = Vec::new();
    let finished = tokio::time::timeout_at(deadline.into(), async {
        while let Some(r) = tasks.join_next().await {
            done.push(r?);
        }
        anyhow::Ok(())
    })
    .await;
    let wall = started.elapsed().as_secs_f64();
    if finished.is_err() {
        tasks.abort_all();
    }
    stop.store(true, Ordering::Relaxed);
    let mut health = health.await?;
    let max_beat_age = beats.await?;

    done.sort_by_key(|d| d.0);
    for (k, took, ok) in &done {
        let secs = took.as_secs_f64();
        println!(
            "upload {k}: {} in {secs:.2} s = {:.2} MB/s ({mb:.1} MB, {} lines)",
            if *ok { "ok" } else { "FAILED" },
            mb / secs,
            o.lines
        );
    }
    let mut times: Vec<Duration> = done.iter().map(|d| d.1).collect();
    let times = Percentiles::of(&mut times);
    let fastest = done.iter().map(|d| d.1).min().unwrap_or_default();
    let pace = match o.trickle_kbps {
        0 => "full speed".to_owned(),
        k => format!("{k} KiB/s each"),
    };
    let s = "uploads";
    summary.add(s, "uploads", format!("{} × {mb:.1} MB, {pace}", o.uploads));
    summary.add(
        s,
        "uploads ok",
        format!(
            "{} of {} ({} unfinished at the deadline)",
            done.iter().filter(|d| d.2).count(),
            o.uploads,
            o.uploads - done.len()
        ),
    );
    summary.add(
        s,
        "upload time",
        format!(
            "min {} median {} max {}",
            ms(fastest),
            ms(times.p50),
            ms(times.max)
        ),
    );
    summary.add(
        s,
        "upload throughput",
        format!(
            "{:.2} MB/s per upload (median), {:.1} MB/s in all",
            mb / times.p50.as_secs_f64().max(1e-9),
            mb * done.len() as f64 / wall
        ),
    );
    let health_latency = Percentiles::of(&mut health);
    summary.add(s, "/healthz latency", health_latency.to_string());
    let unhealthy: u64 = (stack.api.tally.failures().iter())
        .filter(|f| f.0 == "GET /healthz")
        .map(|f| f.2)
        .sum();
    summary.add(
        s,
        "/healthz not 200",
        format!("{unhealthy} of {}", health.len()),
    );
    summary.add(
        s,
        "daemon heartbeat age, max",
        format!("{max_beat_age:.1} s (stale after 15 s by default)"),
    );
    summary.add(s, "non-2xx answers", stack.api.tally.describe());
    stack.finish()?;
    Ok(())
}

/// Starts a `/healthz` read every 100 ms until told to stop, each in its
/// own task so that one slow answer does not hold back the next reads: a
/// stall shows as every read that arrived during it. Every latency (the
/// statuses go to the API's tally).
async fn sample_health(api: Api, stop: Arc<AtomicBool>) -> Vec<Duration> {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut reads = tokio::task::JoinSet::new();
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let api = api.clone();
        reads.spawn(async move {
            let t = Instant::now();
            api.healthz(HEALTH_LIMIT).await;
            t.elapsed()
        });
    }
    reads.join_all().await
}

/// The oldest the running daemon's heartbeat got, in seconds, read every
/// 100 ms through the benchmark's own connections (not the server's).
async fn sample_heartbeat(pool: sqlx::PgPool, stop: Arc<AtomicBool>) -> f64 {
    let mut max = 0.0f64;
    while !stop.load(Ordering::Relaxed) {
        let age: Result<Option<f64>, _> = sqlx::query_scalar(
            "SELECT EXTRACT(EPOCH FROM clock_timestamp() - max(last_heartbeat))::float8 \
             FROM daemons WHERE status = 'running'",
        )
        .fetch_one(&pool)
        .await;
        if let Ok(Some(age)) = age {
            max = max.max(age);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    max
}
