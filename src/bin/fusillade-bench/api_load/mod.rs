//! `fusillade-bench api-load`: many API clients at once against a real
//! `fusillade serve` (API and daemon in one process) on a fresh database,
//! with the mock upstream in its own process, all on 127.0.0.1 (issue 10).
//!
//! ```text
//! fusillade-bench api-load --scenario poll            # one batch, alone then with 100 pollers
//! fusillade-bench api-load --scenario uploads --trickle-kbps 100
//! fusillade-bench api-load --scenario small-batches   # 1x20000 vs 1000x20 vs 10000x1
//! fusillade-bench api-load                            # all three
//! ```
//!
//! Every run has a deadline (`--timeout-secs`): what has not finished by
//! then is reported as such, so that a batch that never completes does not
//! hang the benchmark. A run that does not even return by then is given up
//! a little later, and the next scenario still runs.

mod client;
mod poll;
mod poller;
mod small_batches;
mod stack;
mod stats;
mod summary;
mod uploads;

use anyhow::{Result, anyhow};
use bytes::Bytes;
use std::future::Future;
use std::time::{Duration, Instant};

/// Which scenario to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// One batch, alone and then polled by many clients.
    Poll,
    /// Concurrent (optionally slow) uploads while `/healthz` is sampled.
    Uploads,
    /// One big batch against many small ones.
    SmallBatches,
    /// The three, one after another.
    All,
}

/// The flags of `api-load`.
#[derive(clap::Args)]
pub struct Args {
    /// Which scenario to run.
    #[arg(long, value_enum, default_value_t = Scenario::All)]
    scenario: Scenario,
    /// Mock upstream latency per request.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// The daemon's concurrency limit for the one model.
    #[arg(long, default_value_t = 256)]
    concurrency: u32,
    /// How long one run (each poll run, the uploads, each small-batches
    /// case) waits for its work before reporting what did not finish.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
    /// Extra `[api]` lines for the server's config, e.g.
    /// `batch_read_interval_ms = 0` (repeatable).
    #[arg(long = "api-setting", value_name = "LINE")]
    api_settings: Vec<String>,
    /// Rounds of the poll and small-batches scenarios, run alternately: a
    /// run of a few seconds varies by 10% or more from one to the next on a
    /// shared machine, so each round's ratio is printed and their median
    /// summarised.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    #[command(flatten)]
    poll: poll::PollOptions,
    #[command(flatten)]
    uploads: uploads::UploadOptions,
    #[command(flatten)]
    small: small_batches::SmallOptions,
    #[command(flatten)]
    db: crate::BenchDb,
}

/// Runs the chosen scenarios and prints a summary table of all figures.
pub async fn run(a: Args) -> Result<()> {
    let so = stack::StackOptions {
        database_url: a.db.url.clone(),
        latency_ms: a.latency_ms,
        concurrency: a.concurrency,
        api_settings: a.api_settings.clone(),
    };
    let timeout = Duration::from_secs(a.timeout_secs);
    let mut summary = summary::Summary::default();
    let chosen = |s: Scenario| a.scenario == s || a.scenario == Scenario::All;
    let mut failures = Vec::new();
    if chosen(Scenario::Poll) {
        println!("\n== poll ==");
        let r = poll::run(&so, &a.poll, a.rounds, timeout, &mut summary).await;
        failures.extend(r.err().map(|e| ("poll", e)));
    }
    if chosen(Scenario::Uploads) {
        println!("\n== uploads ==");
        let deadline = Instant::now() + timeout;
        let r = uploads::run(&so, &a.uploads, deadline, &mut summary);
        failures.extend(bounded(deadline, r).await.err().map(|e| ("uploads", e)));
    }
    if chosen(Scenario::SmallBatches) {
        println!("\n== small-batches ==");
        let r = small_batches::run(&so, &a.small, a.rounds, timeout, &mut summary).await;
        failures.extend(r.err().map(|e| ("small-batches", e)));
    }
    for (scenario, e) in &failures {
        summary.add(scenario, "FAILED", format!("{e:#}"));
    }
    summary.print();
    Ok(())
}

/// How long after its deadline a run that has not returned is given up.
const GRACE: Duration = Duration::from_secs(120);

/// Awaits `run`, a run whose deadline is `deadline`, and gives it up
/// (dropping it, which stops its processes) `GRACE` after that.
async fn bounded<T>(deadline: Instant, run: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout_at((deadline + GRACE).into(), run)
        .await
        .map_err(|_| anyhow!("gave up {} s after the deadline", GRACE.as_secs()))?
}

/// Lines `first..first + n` of the benchmark's input, in memory.
fn input(first: u64, n: u64) -> Bytes {
    let mut out = Vec::with_capacity(n as usize * 170);
    crate::run::write_requests(&mut out, first, n).expect("writing to memory cannot fail");
    out.into()
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        args: super::Args,
    }

    #[test]
    fn the_defaults_parse() {
        Wrap::command().debug_assert();
        let w = Wrap::try_parse_from(["api-load", "--upload-lines", "7"]).unwrap();
        assert_eq!(w.args.poll.lines, 50_000);
        assert_eq!(w.args.uploads.lines, 7);
        assert_eq!(w.args.small.cases.len(), 3);
    }
}
