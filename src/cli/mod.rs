//! The subcommands, one module each. Raw arguments become a checked setting
//! here; the work itself is done by the library.

mod completions;
mod database;
mod demo;
mod migrate;
mod mock;
mod progress;
mod run;
mod serve;
mod setup;
mod worker;

use clap::{Parser, Subcommand};

/// Command-line interface of the `fusillade` binary.
#[derive(Debug, Parser)]
#[command(
    name = "fusillade",
    version,
    about = "Runs large batches of LLM requests against OpenAI-compatible servers"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs a sample file against the built-in simulator on an embedded
    /// database: the whole tool in one command, with no server and no network.
    Demo(demo::Args),
    /// Serves the OpenAI-compatible HTTP API and runs the daemon (`--api-only`: the API alone).
    Serve(serve::Args),
    /// Applies the database schema (safe to run any number of times).
    Migrate(migrate::Args),
    /// Runs the daemon alone: claims and executes requests (scale-out; needs PostgreSQL).
    Worker(worker::Args),
    /// Runs one input file to completion and writes its output and error files.
    Run(run::Args),
    /// Serves the built-in model simulator: an OpenAI-compatible upstream
    /// with set latency and faults (or a modelled prefix cache, --cache),
    /// to try fusillade without a model server.
    Mock(mock::Args),
    /// Prints a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(completions::Args),
}

impl Cli {
    /// The log filter when `RUST_LOG` is unset: `-q` warnings only, `-v`
    /// fusillade's debug lines, `-vv` every crate's (for `run`; the other
    /// subcommands log at info). sqlx's slow-statement warnings are expected
    /// on bulk loads and are hidden unless asked for.
    pub fn log_filter(&self) -> &'static str {
        match &self.command {
            Command::Run(a) if a.quiet => "warn,sqlx=error",
            Command::Run(a) if a.verbose == 1 => "info,fusillade=debug,sqlx=error",
            Command::Run(a) if a.verbose > 1 => "debug,fusillade=trace",
            // The demo shows its progress and summary, not the daemon's logs.
            Command::Demo(_) => "warn,sqlx=error",
            _ => "info,sqlx=error",
        }
    }
}

/// Whether a failure is the user's input (exit 2) or happened at run time (exit 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Bad usage or configuration, including an unreachable database.
    Usage,
    /// Anything that went wrong while working.
    Runtime,
    /// Stopped by a signal before the work was done (exit 130).
    Interrupted,
    /// The work finished, but some of its lines failed (exit 3).
    ErrorLines,
}

/// A failure with the exit code it maps to.
#[derive(Debug)]
pub struct CliError {
    /// What kind of failure.
    pub kind: Kind,
    /// What went wrong, for one line on stderr.
    pub error: anyhow::Error,
}

impl CliError {
    /// The process exit code: 2 usage, 1 runtime, 3 failed lines, 130 interrupted.
    pub fn exit_code(&self) -> u8 {
        match self.kind {
            Kind::Usage => 2,
            Kind::Runtime => 1,
            Kind::ErrorLines => 3,
            Kind::Interrupted => 130,
        }
    }
}

/// Marks an error as bad usage or configuration.
pub fn usage(error: impl Into<anyhow::Error>) -> CliError {
    CliError {
        kind: Kind::Usage,
        error: error.into(),
    }
}

/// Marks an error as a run-time failure.
pub fn runtime(error: impl Into<anyhow::Error>) -> CliError {
    CliError {
        kind: Kind::Runtime,
        error: error.into(),
    }
}

/// Logs to stderr through `filter`, unless `RUST_LOG` says otherwise.
/// Colours only on a terminal, and not with `NO_COLOR`; lines are written
/// above `run`'s progress bar, never into it.
pub fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(progress::colours_on_stderr())
        .with_writer(progress::LogWriter::default)
        .init();
}

/// Runs the chosen subcommand on a fresh tokio runtime.
pub fn run(cli: Cli) -> Result<(), CliError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(runtime)?;
    rt.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Migrate(args) => migrate::run(args).await,
            Command::Worker(args) => worker::run(args).await,
            Command::Run(args) => run::run(args).await,
            Command::Demo(args) => demo::run(args).await,
            Command::Mock(args) => mock::run(args).await,
            Command::Completions(args) => completions::run(args),
        }
    })
}

/// How long a statement waits for a pooled connection by default: long
/// enough to ride out a database restart for commands that retry anyway.
pub const DEFAULT_ACQUIRE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
