//! Scenario `poll`: one batch run twice on a fresh system, once alone and
//! once with many clients reading it in a loop (`GET /v1/batches/{id}`), to
//! see what reads cost the batch and how fast they are answered meanwhile.
//! The pair is run `--rounds` times, alternately: a batch of a few seconds
//! varies by 10% or more from one run to the next on a shared machine, as
//! much as the effect measured, so each round's ratio is printed and their
//! median summarised.
//!
//! The batch's rate is the mock's: calls over the time from its first
//! arrival to its last answer (the definition `fusillade-bench run` uses),
//! which does not depend on how often anyone polls.

use super::client::{Api, is_terminal};
use super::stack::{Stack, StackOptions};
use super::stats::Percentiles;
use super::summary::Summary;
use anyhow::{Context, Result};
use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The flags of this scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct PollOptions {
    /// poll: lines of the batch.
    #[arg(long, default_value_t = 50_000)]
    pub lines: u64,
    /// poll: polling clients in the second run.
    #[arg(long, default_value_t = 100)]
    pub pollers: usize,
    /// poll: pause between one client's reads, in ms (0: none).
    #[arg(long = "poll-interval-ms", default_value_t = 0)]
    pub interval_ms: u64,
}

/// What one run measured.
struct RunFigures {
    /// Requests per second, as the mock saw them.
    rate: f64,
    /// The batch's last status and counts, as read at the end.
    outcome: String,
    /// Latency of the pollers' reads.
    reads: Percentiles,
    /// The pollers' reads per second while the batch ran.
    reads_per_sec: f64,
}

/// Runs the rounds and prints their figures.
pub async fn run(
    so: &StackOptions,
    o: &PollOptions,
    rounds: usize,
    timeout: Duration,
    summary: &mut Summary,
) -> Result<()> {
    let body = super::input(0, o.lines);
    let mut ratios = Vec::new();
    let mut worst_p99 = Duration::ZERO;
    for round in 1..=rounds.max(1) {
        let deadline = Instant::now() + timeout;
        let alone = one_run(so, &body, 0, o.interval_ms, deadline);
        let alone = super::bounded(deadline, alone).await?;
        let deadline = Instant::now() + timeout;
        let busy = one_run(so, &body, o.pollers, o.interval_ms, deadline);
        let busy = super::bounded(deadline, busy).await?;
        let ratio = busy.rate / alone.rate;
        ratios.push(ratio);
        worst_p99 = worst_p99.max(busy.reads.p99);
        summary.add(
            "poll",
            &format!("round {round}: batch alone / with {} pollers", o.pollers),
            format!(
                "{:.0} / {:.0} req/s, ratio {ratio:.2}; {}; {}",
                alone.rate, busy.rate, alone.outcome, busy.outcome
            ),
        );
        summary.add(
            "poll",
            &format!("round {round}: GET /v1/batches/{{id}} latency"),
            format!("{}; {:.0} reads/s", busy.reads, busy.reads_per_sec),
        );
    }
    ratios.sort_by(f64::total_cmp);
    summary.add(
        "poll",
        "rate ratio (pollers / none), median of rounds",
        format!(
            "{:.2} (rounds: {})",
            ratios[ratios.len() / 2],
            ratios
                .iter()
                .map(|r| format!("{r:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    summary.add(
        "poll",
        "GET /v1/batches/{id} p99, worst round",
        format!("{} ms", worst_p99.as_millis()),
    );
    Ok(())
}

async fn one_run(
    so: &StackOptions,
    body: &Bytes,
    pollers: usize,
    interval_ms: u64,
    deadline: Instant,
) -> Result<RunFigures> {
    let name = format!("poll-{pollers}");
    let stack = Stack::start(so, &name, 1).await?;
    let api = stack.api.clone();
    let file = api
        .upload(0, body.clone(), 0)
        .await
        .context("upload failed")?;
    stack.checkpoint().await;
    let batch = api.create_batch(0, &file).await.context("create failed")?;
    let id = batch["id"].as_str().context("no batch id")?.to_owned();

    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let tasks: Vec<_> = (0..pollers)
        .map(|_| tokio::spawn(poller(api.clone(), id.clone(), interval_ms, stop.clone())))
        .collect();
    let last = wait_terminal(&api, &id, deadline).await;
    stop.store(true, Ordering::Relaxed);
    let polled = started.elapsed().as_secs_f64();
    let mut samples = Vec::new();
    for t in tasks {
        samples.extend(t.await?);
    }
    let report = stack.finish()?;

    let counts = &last["request_counts"];
    let outcome = format!(
        "{} ({} of {} completed, {} failed)",
        last["status"].as_str().unwrap_or("unknown"),
        counts["completed"],
        counts["total"],
        counts["failed"]
    );
    let rate = report.calls as f64 / report.upstream_secs.max(1e-9);
    println!(
        "run with {pollers} pollers: {outcome}; {} upstream calls in {:.2} s = {rate:.0} req/s",
        report.calls, report.upstream_secs
    );
    println!("non-2xx answers: {}", api.tally.describe());
    Ok(RunFigures {
        rate,
        outcome,
        reads_per_sec: samples.len() as f64 / polled,
        reads: Percentiles::of(&mut samples),
    })
}

/// Reads the batch in a loop until told to stop; the latency of each read.
async fn poller(api: Api, id: String, interval_ms: u64, stop: Arc<AtomicBool>) -> Vec<Duration> {
    let mut samples = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        api.batch_status(0, &id).await;
        samples.push(t.elapsed());
        if interval_ms > 0 {
            tokio::time::sleep(Duration::from_millis(interval_ms)).await;
        }
    }
    samples
}

/// The batch as last read: once final, or when the deadline passes.
async fn wait_terminal(api: &Api, id: &str, deadline: Instant) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    loop {
        if let Some(b) = api.get_batch(0, id).await {
            last = b;
        }
        let done = last["status"].as_str().is_some_and(is_terminal);
        if done || Instant::now() >= deadline {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
