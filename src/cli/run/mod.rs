//! `fusillade run`: one input file to completion, with a progress bar.
//!
//! - `output`: the result files, checked before any work.
//! - `input`: the input file or standard input, and its digest.
//! - `preflight`: an upstream is named and reachable.
//! - `batch`: which batch runs (the resume rules).
//! - `execute`: the scoped daemon, watched until the batch ends.
//! - `summary`: the final summary and exit status.
//!
//! [`run_job`] is the run itself, once the flags are checked and the store
//! is open; `demo` runs its sample file through it too.
//!
//! The daemon started here claims only this run's batch, and holds back
//! calls that fail like a misconfigured upstream until it is clear whether
//! they all do; if so the run stops with the URL and the cause.

pub mod batch;
mod execute;
pub mod input;
pub mod output;
mod preflight;
pub mod summary;

use super::setup::{Common, load_config, store};
use super::{CliError, usage};
use anyhow::anyhow;
pub use batch::Mode;
use fusillade::domain::batch::BatchStatus;
use fusillade::store::RequestStore;
use fusillade::store::Store;
use std::path::PathBuf;
use std::time::Instant;

/// Arguments of `fusillade run`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Exit status: 0 every line succeeded; 3 the batch finished with failed lines; \
1 a runtime failure (also an upstream that cannot be reached or refuses every call); \
2 bad usage or configuration; 130 interrupted.

Rerunning the same command resumes the unfinished batch of the same input. \
A rerun of a finished batch writes its results again; --retry-failed sends \
only its failed lines again, --fresh starts a new batch.")]
pub struct Args {
    /// The input JSONL file (OpenAI batch format); `-` reads standard input.
    #[arg(value_name = "INPUT.jsonl", required_unless_present = "input_flag")]
    input: Option<PathBuf>,
    /// The input file (as an option, like vLLM's run_batch).
    #[arg(
        short = 'i',
        long = "input",
        value_name = "INPUT.jsonl",
        conflicts_with = "input"
    )]
    input_flag: Option<PathBuf>,
    /// Where to write successful results; `-` writes them to standard output.
    #[arg(short = 'o', long, value_name = "OUT.jsonl")]
    output: PathBuf,
    /// Where to write failed lines (default: OUT with `.errors` before its
    /// extension; required with `--output -`).
    #[arg(long, value_name = "ERR.jsonl")]
    errors: Option<PathBuf>,
    /// The upstream's base URL, for every model (overrides the config's
    /// routes); the input's path, e.g. /v1/chat/completions, is appended.
    #[arg(long, value_name = "URL")]
    upstream: Option<String>,
    /// The environment variable holding the upstream's API key, sent only
    /// to the upstream's origin (without it, routes keep the config's keys).
    #[arg(long, value_name = "VAR")]
    api_key_env: Option<String>,
    /// The batch's completion window (`24h`, `90m`, ...; `0s` or `priority`
    /// for the priority tier, `flex` for `1h`).
    #[arg(long, default_value = "24h")]
    completion_window: String,
    /// Start a new batch even if this input was run before.
    #[arg(long, conflicts_with = "retry_failed")]
    fresh: bool,
    /// Send again only the failed lines of this input's finished batch.
    #[arg(long)]
    retry_failed: bool,
    /// Print one JSON summary object on standard output at the end.
    #[arg(long)]
    json: bool,
    /// No progress display; only warnings and errors.
    #[arg(short, long, conflicts_with = "verbose")]
    pub quiet: bool,
    /// More log output (repeat for more).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(flatten)]
    common: Common,
}

/// Runs the file, writes both result files.
pub async fn run(args: Args) -> Result<(), CliError> {
    let started = Instant::now();
    let input_arg = args
        .input
        .clone()
        .or_else(|| args.input_flag.clone())
        .ok_or_else(|| usage(anyhow!("no input file given")))?;
    if args.json && args.output == std::path::Path::new("-") {
        return Err(usage(anyhow!(
            "--json and --output - both write to standard output; choose one"
        )));
    }
    // Paths first: a typo fails now, not after the batch ran.
    let stdin = input_arg == std::path::Path::new("-");
    let targets = output::check(
        (!stdin).then_some(input_arg.as_path()),
        &args.output,
        args.errors.as_deref(),
    )?;
    let input = tokio::task::block_in_place(|| input::Input::open(&input_arg))?;
    let config = configure(&args)?;
    let db = args.common.database(&config)?;
    preflight::reachable(&config).await?;

    let store = store(&db, &config).await?;
    if !args.quiet {
        eprintln!("{}", db.describe());
    }
    let mode = match (args.fresh, args.retry_failed) {
        (true, _) => Mode::Fresh,
        (_, true) => Mode::RetryFailed,
        _ => Mode::Resume,
    };
    let ran = run_job(Job {
        store: &store,
        config,
        input: &input,
        targets,
        completion_window: &args.completion_window,
        mode,
        quiet: args.quiet,
        started,
    })
    .await?;
    if args.json {
        println!("{}", summary::json(&ran.batch, &ran.written));
    } else if !args.quiet {
        eprintln!("{}", summary::line(&ran.batch, &ran.written));
    }
    let hint = if ran.already_finished {
        "; rerun with --retry-failed to send only those lines again, or --fresh to run the whole file again"
    } else {
        "; rerun with --retry-failed to send only those lines again"
    };
    summary::outcome(&ran.batch, &ran.written, hint)
}

/// One input run to its end on an open store: what `run` does once its
/// flags are checked, and what `demo` does with its own file and store.
pub struct Job<'a> {
    /// The store, opened.
    pub store: &'a Store,
    /// Routes, limits and daemon settings.
    pub config: fusillade::config::Config,
    /// The input file.
    pub input: &'a input::Input,
    /// Where results and failed lines go.
    pub targets: output::Targets,
    /// The batch's completion window.
    pub completion_window: &'a str,
    /// Resume, start afresh or retry the failed lines.
    pub mode: Mode,
    /// Show no progress and no notes.
    pub quiet: bool,
    /// When the command started (for the elapsed time).
    pub started: Instant,
}

/// What a [`Job`] ended with.
#[derive(Debug)]
pub struct Ran {
    /// The batch as it ended.
    pub batch: fusillade::domain::batch::Batch,
    /// What was written where.
    pub written: summary::Written,
    /// It had ended before this run: nothing was sent.
    pub already_finished: bool,
}

/// Picks the batch (the resume rules), runs it with a daemon scoped to it
/// and the progress display, and writes both result files.
pub async fn run_job(job: Job<'_>) -> Result<Ran, CliError> {
    let digest = job.input.digest().await?;
    let store = job.store;
    let base = format!("run:{digest}:{}", job.completion_window);
    let picked = batch::pick(store, &base, job.mode, job.quiet, async |key| {
        batch::start(
            store,
            &job.input.path,
            &job.input.name,
            job.completion_window,
            key,
            job.quiet,
        )
        .await
    })
    .await?;
    if picked.batch.status == BatchStatus::Failed {
        return Err(batch::refused(&picked.batch));
    }
    let last = if picked.already_finished {
        picked.batch
    } else {
        execute::execute(store, job.config, &picked.batch, job.quiet).await?
    };

    let output_bytes = output::write(store.output_stream(last.id), &job.targets.output).await?;
    let error_bytes = output::write(store.error_stream(last.id), &job.targets.errors).await?;
    Ok(Ran {
        batch: last,
        written: summary::Written {
            targets: job.targets,
            output_bytes,
            error_bytes,
            elapsed: job.started.elapsed(),
        },
        already_finished: picked.already_finished,
    })
}

/// The config with the flags applied, refusing to guess an upstream.
fn configure(args: &Args) -> Result<fusillade::config::Config, CliError> {
    let mut config = load_config(args.common.config.as_deref())?;
    if let Some(url) = &args.upstream {
        config = config.with_upstream_url(url).map_err(usage)?;
    }
    if let Some(var) = &args.api_key_env {
        let key = std::env::var(var)
            .ok()
            .filter(|k| !k.is_empty())
            .ok_or_else(|| {
                usage(anyhow!(
                    "--api-key-env names the environment variable {var}, which is not set"
                ))
            })?;
        config = config.with_api_key(&key);
    }
    preflight::upstream_named(&config)?;
    Ok(config)
}
