//! `fusillade-bench`: reproducible measurements of fusillade's parts.
//!
//! ```text
//! fusillade-bench gen --lines 200000 --out bench-data/200k.jsonl
//! fusillade-bench ingest bench-data/200k.jsonl [--database-url URL]
//! fusillade-bench run --requests 50000 --concurrency 256 --latency-ms 0
//! fusillade-bench run --database-url sqlite:///tmp/bench.db   # the embedded store
//! fusillade-bench mock --latency-ms 50          # the mock upstream alone
//! fusillade-bench api-load --scenario poll      # many API clients at once
//! fusillade-bench chaos --lines 50000            # kills, restarts, faults; then checks
//! fusillade-bench mock --cache                  # a mock with a prefix cache (GET /_stats)
//! fusillade-bench coalesce --replicas 1         # mixed-prefix workload, coalescing off vs on
//! fusillade-bench coalesce --scenario window    # a 2m-window batch during a 24h one
//! fusillade-bench dashboard [--browser]          # page loads: 1,000 batches + a 1M batch
//! ```
//! `ingest` uploads the file through the store exactly as the API does
//! (streamed from disk in 256 KiB chunks), creates a batch from it, and
//! prints the rates and the process's peak RSS.

mod adaptive;
mod api;
mod api_load;
mod chaos;
mod coalesce;
mod coalesce_window;
mod dashboard;
mod procs;
mod procstat;
mod queue;
mod run;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use fusillade::store::{BatchStore, FileStore, NewBatch, NewFile, PostgresStore};
use futures_util::TryStreamExt;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser)]
#[command(name = "fusillade-bench", about = "Benchmarks of fusillade's parts")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Writes a JSONL input file of chat-completion requests.
    Gen {
        /// Number of lines.
        #[arg(long, default_value_t = 200_000)]
        lines: u64,
        /// Approximate bytes per line.
        #[arg(long, default_value_t = 520)]
        line_bytes: usize,
        /// Number of distinct models the lines name.
        #[arg(long, default_value_t = 4)]
        models: u64,
        /// Where to write it.
        #[arg(long)]
        out: PathBuf,
    },
    /// Runs N requests through `fusillade run` against a mock upstream, on
    /// PostgreSQL or (with `--database-url sqlite:PATH`) the embedded store.
    Run {
        /// Number of requests.
        #[arg(long, default_value_t = 50_000)]
        requests: u64,
        /// Concurrency limit of the one model.
        #[arg(long, default_value_t = 256)]
        concurrency: u32,
        /// Mock upstream latency per request.
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
        /// Requests claimed per statement.
        #[arg(long, default_value_t = 512)]
        claim_batch: u32,
        #[command(flatten)]
        db: BenchDb,
    },
    /// Claims and finishes N requests with no HTTP: the database cost alone.
    Queue {
        /// Pending requests to claim and finish.
        #[arg(long, default_value_t = 50_000)]
        requests: u64,
        /// Terminal requests inserted first, to see the claim with a long history.
        #[arg(long, default_value_t = 0)]
        history: u64,
        /// Pending requests with a later deadline inserted first: a backlog
        /// in `requests` that the claims never reach.
        #[arg(long, default_value_t = 0)]
        backlog: u64,
        /// Requests finished and claimed again per step.
        #[arg(long, default_value_t = 96)]
        claim_batch: u32,
        /// Requests held (claimed, not finished) at all times, as a daemon does.
        #[arg(long, default_value_t = 256)]
        in_flight: u32,
        /// Print the plan of one claim halfway through.
        #[arg(long)]
        explain: bool,
        #[command(flatten)]
        db: BenchDb,
    },
    /// Serves a mock upstream until killed; prints `listening on URL` first.
    Mock {
        /// Latency per request.
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
        /// Port (0 picks a free one).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Also stop when standard input closes, and print what the mock saw
        /// (`calls N span_us S`: first arrival to last answer) as it stops.
        #[arg(long)]
        report_on_eof: bool,
        #[command(flatten)]
        cache: fusillade::mock::CacheArgs,
    },
    /// A mixed-prefix chat workload (and an embeddings one) through
    /// `fusillade run` against cache-modelling mocks, with coalescing off
    /// (file order, round-robin) and on; checks every answer.
    Coalesce(coalesce::Args),
    /// `fusillade run` against a mock that answers 429 above 40 calls in
    /// flight: configured at 256 (adaptive) and at exactly 40; prints mean
    /// in flight, 429 share and throughput of each, and their ratio.
    Adaptive(adaptive::Args),
    /// Uploads a ~SIZE MB file through `fusillade serve --api-only` over
    /// HTTP, then downloads a batch output of it; prints MB/s and the
    /// server's peak RSS.
    ApiUpload {
        /// Size of the generated input file in MB (kept in bench-data/).
        #[arg(long, default_value_t = 1024)]
        size_mb: u64,
        /// Skip the output download.
        #[arg(long)]
        no_download: bool,
        #[command(flatten)]
        db: BenchDb,
    },
    /// Many API clients at once against `fusillade serve` and its daemon:
    /// polling during a batch, concurrent uploads, small batches.
    ApiLoad(api_load::Args),
    /// API + workers on a throwaway PostgreSQL under SIGKILLs, a database
    /// restart, a rolling restart, upstream faults and bad requests; then
    /// checks every line and prints the figures (exit 1 on any violation).
    Chaos(chaos::Args),
    /// Times the dashboard's pages with 1,000 batches and a
    /// 1,000,000-request batch in the database.
    Dashboard(dashboard::Args),
    /// Internal: the cleanup guard of `chaos`.
    #[command(hide = true)]
    ChaosGuard,
    /// Uploads a JSONL file, then creates a batch from it.
    Ingest {
        /// The file to upload.
        path: PathBuf,
        #[command(flatten)]
        db: BenchDb,
    },
}

/// The benchmark database, shared by every subcommand that needs one.
#[derive(clap::Args)]
struct BenchDb {
    /// PostgreSQL URL of a database for benchmarks only: it is dropped and
    /// created afresh on every run. `run` also takes `sqlite:PATH` or
    /// `sqlite://PATH`: that file (with its WAL) is deleted first.
    #[arg(
        long = "database-url",
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/fusillade_bench"
    )]
    url: String,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Gen {
            lines,
            line_bytes,
            models,
            out,
        } => generate(lines, line_bytes, models, &out),
        Command::Ingest { path, db } => runtime()?.block_on(ingest(&path, &db.url)),
        Command::Run {
            requests,
            concurrency,
            latency_ms,
            claim_batch,
            db,
        } => runtime()?.block_on(run::run(run::RunBench {
            requests,
            concurrency,
            latency_ms,
            database_url: db.url,
            claim_batch,
        })),
        Command::Queue {
            requests,
            history,
            backlog,
            claim_batch,
            in_flight,
            explain,
            db,
        } => runtime()?.block_on(queue::run(queue::QueueBench {
            requests,
            history,
            backlog,
            claim_batch,
            in_flight,
            explain,
            database_url: db.url,
        })),
        Command::Mock {
            latency_ms,
            port,
            report_on_eof,
            cache,
        } => runtime()?.block_on(mock(latency_ms, port, report_on_eof, cache.model())),
        Command::Coalesce(args) => runtime()?.block_on(coalesce::run(args)),
        Command::Adaptive(args) => runtime()?.block_on(adaptive::run(args)),
        Command::ApiUpload {
            size_mb,
            no_download,
            db,
        } => runtime()?.block_on(api::run(api::ApiBench {
            size_mb,
            download: !no_download,
            database_url: db.url,
        })),
        Command::ApiLoad(args) => runtime()?.block_on(api_load::run(args)),
        Command::Chaos(args) => runtime()?.block_on(chaos::run(args)),
        Command::ChaosGuard => chaos::guard::serve(),
        Command::Dashboard(args) => runtime()?.block_on(dashboard::run(args)),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

async fn mock(
    latency_ms: u64,
    port: u16,
    report_on_eof: bool,
    cache: Option<fusillade::mock::CacheModel>,
) -> Result<()> {
    use fusillade::mock::{MockBehavior, MockUpstream};
    let behavior = match cache {
        Some(model) => MockBehavior::with_cache(model),
        None => MockBehavior::with_latency(std::time::Duration::from_millis(latency_ms)),
    };
    let server = MockUpstream::start_on(port, behavior).await?;
    println!("listening on {}", server.url());
    std::io::stdout().flush()?;
    if !report_on_eof {
        tokio::signal::ctrl_c().await?;
        return Ok(());
    }
    let eof = tokio::task::spawn_blocking(|| {
        // Any input is ignored; only its end matters.
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
    });
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = eof => {}
    }
    let stats = server.counters();
    let span = match (stats.first_call_at, stats.last_answer_at) {
        (Some(first), Some(last)) => last.saturating_duration_since(first).as_micros(),
        _ => 0,
    };
    println!("calls {} span_us {span}", stats.total_calls);
    std::io::stdout().flush()?;
    Ok(())
}

fn generate(lines: u64, line_bytes: usize, models: u64, out: &PathBuf) -> Result<()> {
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut w = std::io::BufWriter::with_capacity(
        1 << 20,
        std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?,
    );
    let words = [
        "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta",
    ];
    let mut total = 0u64;
    for i in 0..lines {
        let mut text = String::with_capacity(line_bytes);
        let mut k = i;
        while text.len() + 160 < line_bytes {
            text.push_str(words[(k % 8) as usize]);
            text.push(' ');
            k = k
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407)
                >> 7;
        }
        let line = format!(
            "{{\"custom_id\":\"request-{i}\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\",\
             \"body\":{{\"model\":\"model-{}\",\"messages\":[{{\"role\":\"user\",\"content\":\"{text}\"}}],\
             \"max_tokens\":64}}}}\n",
            i % models.max(1)
        );
        total += line.len() as u64;
        w.write_all(line.as_bytes())?;
    }
    w.flush()?;
    println!("wrote {lines} lines, {total} bytes to {}", out.display());
    Ok(())
}

pub(crate) async fn connect_bench_db(url: &str) -> Result<sqlx::PgPool> {
    use sqlx::postgres::PgConnectOptions;
    use sqlx::{ConnectOptions, Executor};
    // As the binary does (src/cli/mod.rs): custom plans for every statement.
    let options: PgConnectOptions = url
        .parse::<PgConnectOptions>()?
        .options([("plan_cache_mode", "force_custom_plan"), ("jit", "off")]);
    let db = options.get_database().unwrap_or("postgres").to_owned();
    let mut admin = options.clone().database("postgres").connect().await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&db)
            .fetch_one(&mut admin)
            .await?;
    // A fresh database each run, so earlier runs' rows and dead tuples do not
    // change the numbers.
    let quoted = format!("\"{}\"", db.replace('"', "\"\""));
    if exists {
        admin
            .execute(format!("DROP DATABASE {quoted} WITH (FORCE)").as_str())
            .await?;
    }
    admin
        .execute(format!("CREATE DATABASE {quoted}").as_str())
        .await?;
    // Start from a clean checkpoint so one run's dirty pages do not tax the next.
    admin.execute("CHECKPOINT").await?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await?;
    fusillade::store::migrate(&pool).await?;
    Ok(pool)
}

async fn ingest(path: &PathBuf, url: &str) -> Result<()> {
    let pool = connect_bench_db(url).await?;
    let store = PostgresStore::new(pool.clone());
    let file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    let size = file.metadata().await?.len();
    let body = tokio_util::io::ReaderStream::with_capacity(file, 256 << 10).map_ok(|b| b);

    let started = Instant::now();
    let uploaded = store
        .create_file(
            NewFile {
                owner: String::new(),
                filename: path.display().to_string(),
                expires_at: None,
            },
            body,
        )
        .await?;
    let upload_secs = started.elapsed().as_secs_f64();
    if uploaded.error_count > 0 {
        bail!("the file has {} refused lines", uploaded.error_count);
    }
    let rss_after_upload = peak_rss_kib();

    let started = Instant::now();
    let batch = store
        .create_batch(NewBatch {
            owner: "",
            input_file_id: uploaded.id,
            endpoint: "/v1/chat/completions",
            completion_window: "24h",
            metadata: None,
            idempotency_key: None,
            private: false,
        })
        .await?;
    let batch_secs = started.elapsed().as_secs_f64();

    let mb = size as f64 / 1e6;
    let lines = uploaded.template_count as f64;
    println!(
        "file            {} ({mb:.1} MB, {lines} lines)",
        path.display()
    );
    println!(
        "ingest          {upload_secs:.3} s  {:.1} MB/s  {:.0} lines/s",
        mb / upload_secs,
        lines / upload_secs
    );
    println!(
        "batch create    {batch_secs:.3} s  {:.0} requests/s  (status {}, {} requests)",
        batch.request_counts.total as f64 / batch_secs,
        batch.status,
        batch.request_counts.total
    );
    println!(
        "peak RSS        {} MiB after ingest, {} MiB at end",
        rss_after_upload / 1024,
        peak_rss_kib() / 1024
    );
    Ok(())
}

/// The process's peak resident set size (VmHWM), in KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
