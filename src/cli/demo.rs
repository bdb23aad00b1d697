//! `fusillade demo`: the whole tool in one command, with nothing else
//! running and no network. It starts the built-in simulator on a loopback
//! port (some latency, a few 429 and 503 answers, two models), writes a
//! sample input, runs it exactly as `fusillade run` would (the same
//! [`run_job`], the progress display) on an embedded database in the demo
//! directory, and ends with a summary and the command that runs the same
//! file against a real server.
//!
//! Every demo is a fresh batch: rerunning it in the same directory starts
//! again from the first line (the earlier batches stay in its database).
//! A fresh start is what a demo is for, and an interrupted demo's
//! simulator is gone anyway.

mod sample;

use super::database::Database;
use super::run::output::{self, Targets};
use super::run::{Job, Mode, input::Input, run_job};
use super::setup::store;
use super::{CliError, Kind, runtime, usage};
use anyhow::anyhow;
use fusillade::config::Config;
use fusillade::domain::batch::Batch;
use fusillade::mock::{Fault, LatencyDistribution, MockStats, MockUpstream, Simulation};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Arguments of `fusillade demo`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Writes into DIR: input.jsonl (the sample), output.jsonl and errors.jsonl \
(the results), fusillade.toml (the per-model limits) and fusillade.db (the \
embedded database). Rerunning the demo in the same DIR starts a fresh run \
of the sample; earlier batches stay in the database.

Exit status: 0 when every line succeeded except the few the sample makes \
fail on purpose (they ask for more max_tokens than the simulated server \
allows, which answers 400); 3 when any other line failed; 1 a runtime \
failure; 2 bad usage (e.g. DIR cannot be written); 130 interrupted.")]
pub struct Args {
    /// Directory for the sample, the results and the embedded database
    /// (created if missing).
    #[arg(long, value_name = "DIR", default_value = "fusillade-demo")]
    dir: PathBuf,
    /// Lines in the sample input.
    #[arg(long, value_name = "N", default_value_t = 3000,
          value_parser = clap::value_parser!(u64).range(sample::MIN_LINES..=1_000_000))]
    lines: u64,
    /// No progress display; the summary only.
    #[arg(short, long)]
    pub quiet: bool,
}

/// The simulated server: 25 ms on average before the first byte, decoding
/// at 1000 tokens a second, 0.2% of calls refused with 429 and 2% with 503.
/// 429s are kept rare: each carries `Retry-After: 1`, which pauses the
/// whole route (see the README's "Scheduling"), so a few show the pause
/// and more would spend the demo waiting.
fn simulation() -> Simulation {
    Simulation {
        latency: Duration::from_millis(25),
        distribution: LatencyDistribution::Uniform,
        faults: vec![
            Fault {
                rate: 0.002,
                status: 429,
            },
            Fault {
                rate: 0.02,
                status: 503,
            },
        ],
        tokens_per_second: Some(1000.0),
        max_tokens_limit: Some(sample::TOKEN_LIMIT),
        seed: 13,
    }
}

/// The demo's config: a limit per model, so that both limits show.
fn config_text() -> String {
    format!(
        "# Written by `fusillade demo`: calls in flight at most, per model.\n\
         # Use it with `fusillade run --config`, with your server's models.\n\
         [upstream]\nconcurrency = 16\n\n\
         [models.\"{}\"]\nconcurrency = 32\n\n\
         [models.\"{}\"]\nconcurrency = 8\n",
        sample::FAST,
        sample::SLOW
    )
}

/// The files of a demo directory.
struct Paths {
    dir: PathBuf,
    input: PathBuf,
    output: PathBuf,
    errors: PathBuf,
    config: PathBuf,
    db: PathBuf,
}

impl Paths {
    fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            input: dir.join("input.jsonl"),
            output: dir.join("output.jsonl"),
            errors: dir.join("errors.jsonl"),
            config: dir.join("fusillade.toml"),
            db: dir.join("fusillade.db"),
        }
    }
}

/// A line for the user on stderr, unless `--quiet`.
macro_rules! note {
    ($quiet:expr, $($arg:tt)*) => {
        if !$quiet {
            eprintln!($($arg)*);
        }
    };
}

/// Runs the demo; see the module docs.
pub async fn run(args: Args) -> Result<(), CliError> {
    let started = Instant::now();
    let paths = Paths::new(&args.dir);
    std::fs::create_dir_all(&paths.dir)
        .map_err(|e| usage(anyhow!("cannot create {}: {e}", paths.dir.display())))?;
    let earlier = paths.db.exists();
    let sample = tokio::task::block_in_place(|| sample::write(&paths.input, args.lines))
        .map_err(|e| usage(anyhow!("cannot write {}: {e}", paths.input.display())))?;
    std::fs::write(&paths.config, config_text())
        .map_err(|e| usage(anyhow!("cannot write {}: {e}", paths.config.display())))?;
    note!(
        args.quiet,
        "fusillade demo: {} requests in {}, sent to a simulated model server on this machine",
        sample.lines,
        paths.input.display()
    );
    if earlier {
        note!(
            args.quiet,
            "a fresh run: the demo always starts from the first line (earlier batches stay in {})",
            paths.db.display()
        );
    }

    let mock = MockUpstream::start_on(0, simulation().behavior())
        .await
        .map_err(|e| runtime(anyhow!("cannot start the simulated server: {e}")))?;
    let config = Config::load(&paths.config)
        .and_then(|c| c.with_upstream_url(&mock.url()))
        .map_err(runtime)?;
    // An absolute path: a relative one would read as a host in the URL.
    let absolute = std::fs::canonicalize(&paths.dir).map_err(runtime)?;
    let db = Database::at(format!(
        "sqlite://{}",
        absolute.join("fusillade.db").display()
    ));
    let store = store(&db, &config).await?;
    note!(args.quiet, "{}", db.describe());

    let targets = output::check(Some(&paths.input), &paths.output, Some(&paths.errors))?;
    let input = Input::open(&paths.input)?;
    let ran = run_job(Job {
        store: &store,
        config: config.clone(),
        input: &input,
        targets,
        completion_window: "24h",
        mode: Mode::Fresh,
        quiet: args.quiet,
        started,
    })
    .await
    .map_err(|e| match e.kind {
        Kind::Interrupted => CliError {
            kind: Kind::Interrupted,
            error: anyhow!("demo interrupted; running it again starts a fresh demo"),
        },
        _ => e,
    })?;
    let stats = mock.stats();
    mock.shutdown().await;

    let planned = sample.refused.len() as i64;
    println!(
        "{}",
        summary(
            &ran.batch,
            planned,
            &stats,
            &config,
            &paths,
            &ran.written.targets,
            started.elapsed()
        )
    );
    let c = &ran.batch.request_counts;
    let failed = c.failed + c.canceled;
    if failed == planned && c.completed + planned == c.total {
        return Ok(());
    }
    Err(CliError {
        kind: Kind::ErrorLines,
        error: anyhow!(
            "{failed} lines failed where {planned} were meant to (batch {}); see {}",
            ran.batch.status,
            paths.errors.display()
        ),
    })
}

/// Calls sent again: every call of a line after its first.
fn retries(stats: &MockStats) -> usize {
    stats
        .calls_by_custom_id
        .values()
        .map(|t| t.len().saturating_sub(1))
        .sum()
}

/// The closing summary: counts, retries, limits, and the command for a
/// real server.
fn summary(
    b: &Batch,
    planned: i64,
    stats: &MockStats,
    config: &Config,
    paths: &Paths,
    targets: &Targets,
    elapsed: Duration,
) -> String {
    let c = &b.request_counts;
    let failed = c.failed + c.canceled;
    let why = if failed == planned {
        "as planned: they".to_owned()
    } else {
        format!("where {planned} were meant to: the lines that")
    };
    let mut s = format!(
        "\ndemo finished in {:.1} s: {} of {} lines succeeded, {failed} failed ({why} ask for \
         more than the server's {}-token limit, answered 400)\n",
        elapsed.as_secs_f64(),
        c.completed,
        c.total,
        sample::TOKEN_LIMIT,
    );
    s.push_str(&format!(
        "retries: {} calls sent again after the server answered 429 (with Retry-After) or 503\n",
        retries(stats)
    ));
    s.push_str("per-model limits (most calls in flight at once / the limit):\n");
    for model in [sample::FAST, sample::SLOW] {
        s.push_str(&format!(
            "  {model:<10} {:>3} / {:<3} ({} calls)\n",
            stats.max_in_flight_of(model),
            config.route(model).concurrency,
            stats.calls(model),
        ));
    }
    s.push_str(&format!(
        "results: {} ({} lines), failed lines: {} ({failed} lines)\n",
        targets.output.describe(),
        c.completed,
        targets.errors.describe()
    ));
    s.push_str(&format!(
        "\nTo run the same file against a real server (an OpenAI-compatible base URL; \
         change the models {} and {} in the file to ones it serves):\n  \
         fusillade run {} -o out.jsonl --config {} \\\n      \
         --upstream https://api.openai.com --api-key-env OPENAI_API_KEY",
        sample::FAST,
        sample::SLOW,
        paths.input.display(),
        paths.config.display(),
    ));
    s
}
