//! `fusillade-bench chaos`: the whole system under faults, then checked.
//!
//! ```text
//! fusillade-bench chaos                                   # the long run: 50,000 lines
//! fusillade-bench chaos --lines 2000 --max-kills 3       # a short one (tests/chaos_short.rs)
//! fusillade-bench chaos --no-nul-bodies                   # without NUL bytes in answers
//! fusillade-bench chaos --liveness-pressure              # tight heartbeats, 4 busy loops
//! ```
//!
//! 1. Starts a throwaway PostgreSQL cluster (`cluster`) and a guard process
//!    that removes it, and every process started, however the run ends
//!    (`guard`).
//! 2. Starts the chaos upstream in this process (`upstream`), the API
//!    (`fusillade serve --api-only`) and the workers (`fusillade worker`)
//!    as processes of their own (`fleet`).
//! 3. Uploads the input (`lines`) and creates its batch; meanwhile sends
//!    hundreds of bad requests (`malformed`).
//! 4. Kills workers with SIGKILL, restarts PostgreSQL in immediate mode,
//!    restarts every worker with SIGTERM (`schedule`).
//! 5. Checks the files, the counts, the limits, the calls and the logs
//!    (`verify`), prints the figures (`report`) and exits 1 on any
//!    violation.

mod client;
mod cluster;
mod fleet;
pub mod guard;
mod lines;
mod malformed;
mod report;
mod schedule;
mod upstream;
mod verify;

use anyhow::{Context, Result, bail};
use client::Api;
use cluster::Cluster;
use fleet::{Launcher, Proc};
use lines::{Model, Plan};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The flags of `chaos`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Lines in the batch.
    #[arg(long, default_value_t = 50_000)]
    pub lines: u64,
    /// Models and their concurrency limits (`NAME=LIMIT`, comma-separated);
    /// lines are spread over them in proportion to their limits.
    #[arg(long, value_delimiter = ',', value_parser = lines::parse_model,
          default_value = "chaos-a=4,chaos-b=8,chaos-c=16")]
    pub models: Vec<Model>,
    /// Workers running at once.
    #[arg(long, default_value_t = 3)]
    pub workers: usize,
    /// Most SIGKILLs of workers (default: no limit; they go on until the
    /// batch is 95% done).
    #[arg(long)]
    pub max_kills: Option<u64>,
    /// Least milliseconds between two kills.
    #[arg(long, default_value_t = 1000)]
    pub kill_every_min_ms: u64,
    /// Most milliseconds between two kills.
    #[arg(long, default_value_t = 3000)]
    pub kill_every_max_ms: u64,
    /// Share of the lines done when PostgreSQL is restarted.
    #[arg(long, default_value_t = 0.3)]
    pub restart_at: f64,
    /// Seconds PostgreSQL stays stopped at that restart (0: started again
    /// at once). Longer than the workers' stale window (5 s), the workers
    /// find on its return that they were all declared dead.
    #[arg(long, default_value_t = 0)]
    pub outage_secs: u64,
    /// Share of the lines done when the rolling restart begins.
    #[arg(long, default_value_t = 0.6)]
    pub rolling_at: f64,
    /// Bad requests sent to the API.
    #[arg(long, default_value_t = 500)]
    pub bad_inputs: u64,
    /// Per mille of first and second calls of a line that meet a fault.
    #[arg(long, default_value_t = 100)]
    pub fault_per_mille: u64,
    /// Per mille of lines whose answer is not a chat.completion (HTML, NUL bytes).
    #[arg(long, default_value_t = 40)]
    pub odd_per_mille: u64,
    /// Per mille of answers that are slow.
    #[arg(long, default_value_t = 30)]
    pub slow_per_mille: u64,
    /// Least answer latency, in milliseconds.
    #[arg(long, default_value_t = 20)]
    pub latency_min_ms: u64,
    /// Most answer latency, in milliseconds.
    #[arg(long, default_value_t = 200)]
    pub latency_max_ms: u64,
    /// The client's first-byte timeout: what ends a hang.
    #[arg(long, default_value_t = 4000)]
    pub hang_timeout_ms: u64,
    /// No answers with NUL bytes (known to hang a batch; see RELIABILITY.md).
    #[arg(long)]
    pub no_nul_bodies: bool,
    /// Tight liveness: heartbeats every 100 ms, declared dead after 500 ms,
    /// with `--busy-loops` processes competing for the cores.
    #[arg(long)]
    pub liveness_pressure: bool,
    /// Processes spinning on a core during the run (default: 4 with
    /// `--liveness-pressure`, else 0).
    #[arg(long)]
    pub busy_loops: Option<usize>,
    /// Extra PostgreSQL settings, `name=value` (repeatable), such as
    /// `synchronous_commit=off`.
    #[arg(long = "pg-setting")]
    pub pg_settings: Vec<String>,
    /// Seconds the batch may take before it counts as stuck.
    #[arg(long, default_value_t = 1800)]
    pub timeout_secs: u64,
    /// Seed of every random choice (default: from the clock; printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Keep the processes' logs in this directory (default: they are
    /// removed with the cluster).
    #[arg(long)]
    pub log_dir: Option<PathBuf>,
}

/// Runs the suite; exits 1 (through the error) on any violation and 130
/// when interrupted, after cleaning up either way.
pub async fn run(args: Args) -> Result<()> {
    if args.models.is_empty() || args.workers == 0 || args.lines == 0 {
        bail!("--models, --workers and --lines must not be empty or 0");
    }
    let guard = Arc::new(guard::Guard::start()?);
    let outcome = tokio::select! {
        r = session(&args, &guard) => Some(r),
        () = interrupted() => None,
    };
    // Everything the session started has been dropped (so killed) by now;
    // the guard stops the database and removes the files.
    match Arc::try_unwrap(guard) {
        Ok(g) => g.finish(),
        Err(_) => {
            eprintln!("chaos: the guard is still shared; it cleans up when this process ends")
        }
    }
    match outcome {
        None => {
            eprintln!("chaos: interrupted; everything it started was stopped and removed");
            std::process::exit(130);
        }
        Some(Err(e)) => Err(e),
        Some(Ok(violations)) if violations.is_empty() => Ok(()),
        Some(Ok(violations)) => bail!(
            "{} violation(s): {}",
            violations.len(),
            violations.join("; ")
        ),
    }
}

async fn interrupted() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = hup.recv() => {}
    }
}

/// The run's temporary directory, removed by the guard.
fn temp_dir(guard: &guard::Guard) -> Result<PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .subsec_nanos();
    let dir = std::env::temp_dir().join(format!("fusillade-chaos-{}-{nanos}", std::process::id()));
    std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    guard.remove_dir(&dir);
    Ok(dir)
}

/// The config every process reads.
fn config_toml(a: &Args, upstream: &str, upload_limit: u64) -> String {
    let (heartbeat, stale) = if a.liveness_pressure {
        (100, 500)
    } else {
        (500, 5000)
    };
    let mut c = format!(
        "[upstream]\nurl = \"{upstream}\"\nconcurrency = 8\nfirst_byte_timeout_ms = {t}\n\
         idle_timeout_ms = {t}\n\n",
        t = a.hang_timeout_ms
    );
    for m in &a.models {
        c.push_str(&format!(
            "[models.\"{}\"]\nconcurrency = {}\n\n",
            m.name, m.limit
        ));
    }
    c.push_str(&format!(
        "[daemon]\nmax_retries = 10\nbackoff_ms = 100\nmax_backoff_ms = 2000\n\
         heartbeat_ms = {heartbeat}\nstale_after_ms = {stale}\nshutdown_grace_ms = 3000\n\n\
         [api]\nmax_upload_bytes = {upload_limit}\n"
    ));
    c
}

/// How long a SIGTERMed worker may take: its grace period and some slack
/// for a loaded machine.
const STOP_WITHIN: Duration = Duration::from_secs(30);
/// Seconds a 429 asks the client to wait.
const RETRY_AFTER_SECS: u64 = 1;

/// Everything but the cleanup; returns the violations.
async fn session(a: &Args, guard: &Arc<guard::Guard>) -> Result<Vec<String>> {
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let started = Instant::now();
    let dir = temp_dir(guard)?;
    let log_dir = match &a.log_dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => dir.join("logs"),
    };
    std::fs::create_dir_all(&log_dir)?;
    let pg_dir = dir.join("cluster");
    std::fs::create_dir(&pg_dir)?;
    let cluster = Arc::new(Cluster::start(&pg_dir, &a.pg_settings, guard)?);
    println!(
        "chaos: seed {seed}; {} on {}; logs in {}",
        cluster.version,
        cluster.url,
        log_dir.display()
    );

    let plan = Plan {
        lines: a.lines,
        models: a.models.clone(),
        seed,
        odd_per_mille: a.odd_per_mille,
        nul_bodies: !a.no_nul_bodies,
    };
    let mix = upstream::FaultMix {
        fault_per_mille: a.fault_per_mille,
        slow_per_mille: a.slow_per_mille,
        latency_ms: (a.latency_min_ms, a.latency_max_ms.max(a.latency_min_ms)),
        // Slow, but inside the timeout even on a loaded machine.
        slow_ms: (a.hang_timeout_ms / 5, a.hang_timeout_ms * 2 / 5),
        retry_after_secs: RETRY_AFTER_SECS,
        hang_timeout: Duration::from_millis(a.hang_timeout_ms),
    };
    let up = upstream::ChaosUpstream::start(plan.clone(), mix).await?;

    let mut input = Vec::with_capacity(a.lines as usize * 200);
    for i in 0..a.lines {
        input.extend_from_slice(plan.input_line(i).as_bytes());
        input.push(b'\n');
    }
    // Room for the input and the multipart around it; the flood's
    // oversize uploads go past it.
    let upload_limit = input.len() as u64 + (1 << 20);
    let config = dir.join("fusillade.toml");
    std::fs::write(&config, config_toml(a, &up.mock.url(), upload_limit))?;

    let exe = crate::procs::sibling("fusillade")?;
    let launcher = Launcher::new(
        exe,
        config,
        cluster.url.clone(),
        log_dir.clone(),
        guard.clone(),
    );
    launcher.migrate()?;
    let (api_proc, api_url) = launcher.api()?;
    let api = Api::new(&api_url)?;
    let busy: Vec<Proc> = (0..a
        .busy_loops
        .unwrap_or(if a.liveness_pressure { 4 } else { 0 }))
        .map(|n| fleet::busy_loop(n, &log_dir, guard))
        .collect::<Result<_>>()?;
    let mut workers = schedule::Workers {
        running: Vec::new(),
        launcher,
    };
    for _ in 0..a.workers {
        let w = workers.launcher.worker()?;
        workers.running.push(w);
    }

    let file = api.upload(input).await?;
    let file_id = file["id"]
        .as_str()
        .context("the file has an id")?
        .to_owned();
    let batch = api.create_batch(&file_id).await?;
    let batch_id = batch["id"]
        .as_str()
        .context("the batch has an id")?
        .to_owned();
    println!(
        "chaos: batch {batch_id} of {} lines; API {api_url}; {} workers; upstream {}",
        a.lines,
        a.workers,
        up.mock.url()
    );

    let flood = tokio::spawn({
        let (api, file_id, batch_id) = (api.clone(), file_id.clone(), batch_id.clone());
        let (count, oversize) = (a.bad_inputs, upload_limit as usize + (1 << 20));
        async move { malformed::flood(&api, count, 4, &file_id, &batch_id, oversize).await }
    });
    let timing = schedule::Timing {
        max_kills: a.max_kills,
        kill_every_ms: (
            a.kill_every_min_ms,
            a.kill_every_max_ms.max(a.kill_every_min_ms),
        ),
        kill_until: 0.95,
        restart_at: a.restart_at,
        outage: Duration::from_secs(a.outage_secs),
        rolling_at: a.rolling_at,
        stop_within: STOP_WITHIN,
        timeout: Duration::from_secs(a.timeout_secs),
        seed,
    };
    let events = schedule::run(
        &timing,
        &api,
        &cluster,
        &mut workers,
        &batch_id,
        a.lines,
        || flood.is_finished(),
    )
    .await?;
    let flood = flood.await?;

    // The checks, while everything still runs.
    let batch = api.batch(&batch_id).await?;
    let output = api
        .content(batch["output_file_id"].as_str().unwrap_or(""))
        .await?;
    let errors = api
        .content(batch["error_file_id"].as_str().unwrap_or(""))
        .await?;
    let files = verify::files(&plan, &batch, &output, &errors);
    let stuck = api
        .batches()
        .await?
        .iter()
        .filter(|b| !schedule::is_terminal(b["status"].as_str().unwrap_or("")))
        .count() as u64;
    let calls = {
        let log = up.log.lock().expect("no panic while held");
        verify::calls(&log, Duration::from_secs(RETRY_AFTER_SECS), &events.marks)
    };
    let limits = verify::limits(&a.models, &up.mock.counters().max_in_flight_per_model);
    let passes = verify::passes(
        &up.log.lock().expect("no panic while held"),
        started,
        &events.marks,
    );
    // Every process is stopped as an operator would, then its log is read.
    let mut unclean = events.unclean_stops.clone();
    let mut all_logs = Vec::new();
    let last = workers.launcher.workers_started();
    for n in 1..=last {
        all_logs.push(log_dir.join(format!("worker-{n}.log")));
    }
    all_logs.push(api_proc.log.clone());
    let mut stopping: Vec<Proc> = workers.running.drain(..).collect();
    stopping.push(api_proc);
    for p in &stopping {
        p.term()?;
    }
    let end = Instant::now() + STOP_WITHIN;
    for p in &mut stopping {
        match p
            .wait_within(end.saturating_duration_since(Instant::now()))
            .await?
        {
            Some(s) if s.success() => {}
            Some(s) => unclean.push(format!("{} exited with {s} after SIGTERM", p.name)),
            None => unclean.push(format!("{} still running after SIGTERM", p.name)),
        }
    }
    drop(busy);
    let logs = verify::logs(&all_logs);
    let tally = std::mem::take(&mut *api.tally.lock().expect("no panic while held"));

    let figures = report::Figures {
        args: a.clone(),
        seed,
        pg_version: cluster.version.clone(),
        events,
        flood,
        files,
        calls,
        limits,
        passes,
        logs,
        tally,
        stuck,
        unclean,
        workers_started: last,
        total_time: started.elapsed(),
    };
    figures.print();
    Ok(figures.violations())
}
