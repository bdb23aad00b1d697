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
//!
//! Two runs of one batch on this machine differ by up to 10% with no
//! pollers at all (`--pollers 0` gave ratios of 0.90 to 1.02), so each
//! round also runs the batch once with the pollers switched on and off in
//! turn (`--phase-ms`): both rates then come from the same run, and what
//! drifts between runs cancels. That ratio is results per second while
//! the pollers read over results per second while they pause, from the
//! results' `finished_at`, leaving out the first phase (the batch's start)
//! and the one in which it ends.

use super::client::{Api, is_terminal};
use super::poller::Poller;
use super::stack::{Stack, StackOptions};
use super::stats::Percentiles;
use super::summary::Summary;
use anyhow::{Context, Result};
use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;

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
    /// poll: length of the phases of the run in which the pollers read and
    /// pause in turn, in ms (0: no such run).
    #[arg(long = "phase-ms", default_value_t = 500)]
    pub phase_ms: u64,
}

/// When the pollers read: always, or in turns of this length.
#[derive(Debug, Clone, Copy)]
enum Pacing {
    Always,
    Phases(Duration),
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
    /// In a run of phases: results per second while the pollers read over
    /// results per second while they paused.
    phase_ratio: Option<f64>,
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
    let mut phase_ratios = Vec::new();
    let mut worst_p99 = Duration::ZERO;
    // Apart: in the run of phases, every switch on starts a hundred reads
    // at once, which the steady polling of the setup never does.
    let mut worst_phase_p99 = Duration::ZERO;
    for round in 1..=rounds.max(1) {
        let deadline = Instant::now() + timeout;
        let alone = one_run(so, &body, 0, o.interval_ms, Pacing::Always, deadline);
        let alone = super::bounded(deadline, alone).await?;
        let deadline = Instant::now() + timeout;
        let busy = one_run(
            so,
            &body,
            o.pollers,
            o.interval_ms,
            Pacing::Always,
            deadline,
        );
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
        if o.phase_ms > 0 && o.pollers > 0 {
            let deadline = Instant::now() + timeout;
            let pacing = Pacing::Phases(Duration::from_millis(o.phase_ms));
            let phased = one_run(so, &body, o.pollers, o.interval_ms, pacing, deadline);
            let phased = super::bounded(deadline, phased).await?;
            worst_phase_p99 = worst_phase_p99.max(phased.reads.p99);
            let ratio = phased.phase_ratio;
            phase_ratios.extend(ratio);
            summary.add(
                "poll",
                &format!(
                    "round {round}: one run, pollers on / off in turns of {} ms",
                    o.phase_ms
                ),
                match ratio {
                    Some(r) => format!("ratio {r:.2}; GET {}; {}", phased.reads, phased.outcome),
                    None => format!("no ratio (too few whole phases); {}", phased.outcome),
                },
            );
        }
    }
    summary.add(
        "poll",
        "rate ratio (pollers / none), median of rounds",
        median_of(&mut ratios),
    );
    if !phase_ratios.is_empty() {
        summary.add(
            "poll",
            "rate ratio within one run (on / off phases), median",
            median_of(&mut phase_ratios),
        );
    }
    summary.add(
        "poll",
        "GET /v1/batches/{id} p99, worst round",
        format!("{} ms", worst_p99.as_millis()),
    );
    if !phase_ratios.is_empty() {
        summary.add(
            "poll",
            "GET /v1/batches/{id} p99 in the on / off runs, worst",
            format!("{} ms", worst_phase_p99.as_millis()),
        );
    }
    Ok(())
}

/// "median (rounds: a, b, c)" of `ratios` (sorted in place).
fn median_of(ratios: &mut [f64]) -> String {
    ratios.sort_by(f64::total_cmp);
    format!(
        "{:.2} (rounds: {})",
        ratios[ratios.len() / 2],
        ratios
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

async fn one_run(
    so: &StackOptions,
    body: &Bytes,
    pollers: usize,
    interval_ms: u64,
    pacing: Pacing,
    deadline: Instant,
) -> Result<RunFigures> {
    let name = match pacing {
        Pacing::Always => format!("poll-{pollers}"),
        Pacing::Phases(_) => format!("poll-{pollers}-phases"),
    };
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
    let (on, reading) = watch::channel(matches!(pacing, Pacing::Always));
    let tasks: Vec<_> = (0..pollers)
        .map(|_| {
            let client = Poller::new(&api.base, 0, &id, api.tally.clone());
            tokio::spawn(poll(client, interval_ms, reading.clone(), stop.clone()))
        })
        .collect();
    let phases = match pacing {
        Pacing::Always => None,
        Pacing::Phases(length) => Some(tokio::spawn(switch(on, length, stop.clone()))),
    };
    let last = wait_terminal(&api, &id, deadline).await;
    stop.store(true, Ordering::Relaxed);
    let polled = started.elapsed().as_secs_f64();
    let phase_ratio = match phases {
        Some(p) => phase_ratio(&stack.pool, &p.await?).await?,
        None => None,
    };
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
        phase_ratio,
    })
}

/// Switches the pollers off and on every `length` (off first) until told
/// to stop; when each phase began.
async fn switch(
    on: watch::Sender<bool>,
    length: Duration,
    stop: Arc<AtomicBool>,
) -> Vec<chrono::DateTime<chrono::Utc>> {
    let mut starts = vec![chrono::Utc::now()];
    let mut next = tokio::time::Instant::now() + length;
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep_until(next).await;
        next += length;
        starts.push(chrono::Utc::now());
        on.send_modify(|on| *on = !*on);
    }
    starts
}

/// Results per second in the phases with pollers (odd) over those without
/// (even), from the results' `finished_at`; phase 0 (the start) and phases
/// not over by the last result are left out. `None` without a whole phase
/// of each kind.
async fn phase_ratio(
    pool: &sqlx::PgPool,
    starts: &[chrono::DateTime<chrono::Utc>],
) -> Result<Option<f64>> {
    let finished: Vec<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT finished_at FROM request_results")
            .fetch_all(pool)
            .await?;
    let Some(&last) = finished.iter().max() else {
        return Ok(None);
    };
    // [results, seconds] of phases without and with pollers.
    let mut sums = [[0.0f64; 2]; 2];
    for (k, w) in starts.windows(2).enumerate().skip(1) {
        let (from, to) = (w[0], w[1]);
        if to > last {
            break;
        }
        let n = finished.iter().filter(|&&t| t >= from && t < to).count();
        let s = &mut sums[k % 2];
        s[0] += n as f64;
        s[1] += (to - from).as_seconds_f64();
    }
    let rate = |s: [f64; 2]| (s[1] > 0.0).then(|| s[0] / s[1]);
    Ok(match (rate(sums[1]), rate(sums[0])) {
        (Some(with), Some(without)) if without > 0.0 => Some(with / without),
        _ => None,
    })
}

/// Reads the batch in a loop, while `reading` says so, until told to stop;
/// the latency of each read.
async fn poll(
    mut client: Poller,
    interval_ms: u64,
    mut reading: watch::Receiver<bool>,
    stop: Arc<AtomicBool>,
) -> Vec<Duration> {
    let mut samples = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        if !*reading.borrow_and_update() {
            // Paused: wait for the next switch, and look at `stop` again.
            let _ = tokio::time::timeout(Duration::from_millis(100), reading.changed()).await;
            continue;
        }
        let t = Instant::now();
        client.read().await;
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
