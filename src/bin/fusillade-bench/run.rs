//! `fusillade-bench run`: the whole product path, measured. A mock upstream
//! runs as a separate process; the real `fusillade run` binary ingests the
//! file, creates the batch, runs the daemon and writes the output files.
//! The database is PostgreSQL (created afresh) or, for a `sqlite:` URL, an
//! embedded file (deleted first), so both backends run the same command.

use crate::procs::{MockProcess, sibling};
use crate::procstat::{GroupCpu, cpu_seconds, peak_rss_kib};
use anyhow::{Context, Result, bail};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What to run.
pub struct RunBench {
    pub requests: u64,
    pub concurrency: u32,
    pub latency_ms: u64,
    pub database_url: String,
    pub claim_batch: u32,
}

/// Writes lines `first..first + n` of the benchmark's input: short
/// chat-completion requests for one model, `custom_id` `req-{i}`.
pub(crate) fn write_requests(w: &mut impl Write, first: u64, n: u64) -> std::io::Result<()> {
    for i in first..first + n {
        writeln!(
            w,
            "{{\"custom_id\":\"req-{i}\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\",\
             \"body\":{{\"model\":\"bench-model\",\"messages\":[{{\"role\":\"user\",\"content\":\"say hello {i}\"}}],\"max_tokens\":16}}}}"
        )?;
    }
    Ok(())
}

/// The input file of `n` lines at `path`.
fn write_input(path: &Path, n: u64) -> Result<()> {
    let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
    write_requests(&mut w, 0, n)?;
    w.flush()?;
    Ok(())
}

/// The benchmark's database, made fresh for each run.
enum Db {
    /// A PostgreSQL database, dropped and created again.
    Postgres,
    /// An embedded database file, deleted with its companions.
    Sqlite(PathBuf),
}

impl Db {
    /// Makes the database named by `url` fresh.
    async fn fresh(url: &str) -> Result<Self> {
        if let Some(path) = fusillade::store::sqlite_path(url) {
            // The WAL, its index and the owner's lock file go too: a
            // leftover WAL would be replayed into the new file.
            for suffix in ["", "-wal", "-shm", ".lock"] {
                let mut name = path.as_os_str().to_owned();
                name.push(suffix);
                match std::fs::remove_file(&name) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e).context(format!("removing {}", path.display())),
                }
            }
            return Ok(Db::Sqlite(path));
        }
        let pool = crate::connect_bench_db(url).await?;
        pool.close().await;
        Ok(Db::Postgres)
    }

    /// First claim, last stored result (unix seconds) and completed count,
    /// read from the database after the run.
    async fn spans(&self, url: &str) -> Result<(f64, f64, i64)> {
        match self {
            Db::Postgres => {
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(1)
                    .connect(url)
                    .await?;
                let (first, last, ok): (
                    chrono::DateTime<chrono::Utc>,
                    chrono::DateTime<chrono::Utc>,
                    i64,
                ) = sqlx::query_as(
                    "SELECT min(claimed_at), max(finished_at), count(*) FILTER (WHERE ok) \
                     FROM request_results",
                )
                .fetch_one(&pool)
                .await?;
                let secs = |t: chrono::DateTime<chrono::Utc>| t.timestamp_micros() as f64 / 1e6;
                Ok((secs(first), secs(last), ok))
            }
            Db::Sqlite(path) => {
                use sqlx::ConnectOptions;
                // Times are unix microseconds there.
                let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(path)
                    .read_only(true)
                    .connect()
                    .await?;
                let (first, last, ok): (i64, i64, i64) = sqlx::query_as(
                    "SELECT min(claimed_at), max(finished_at), coalesce(sum(ok), 0) \
                     FROM request_results",
                )
                .fetch_one(&mut conn)
                .await?;
                Ok((first as f64 / 1e6, last as f64 / 1e6, ok))
            }
        }
    }
}

/// Runs the benchmark and prints its numbers.
pub async fn run(b: RunBench) -> Result<()> {
    let db = Db::fresh(&b.database_url).await?;
    let dir = PathBuf::from("bench-data");
    std::fs::create_dir_all(&dir)?;
    let input = dir.join(format!("run-{}.jsonl", b.requests));
    write_input(&input, b.requests)?;
    let config = dir.join("run-config.toml");
    std::fs::write(
        &config,
        format!(
            "[upstream]\nconcurrency = {}\n[daemon]\nclaim_batch = {}\n",
            b.concurrency, b.claim_batch
        ),
    )?;

    // The mock upstream, in its own process so its CPU is not the daemon's.
    let mut mock = MockProcess::start(b.latency_ms)?;
    let url = mock.url.clone();

    // PostgreSQL's processes, when it is the database (the embedded one's
    // work is the daemon's own).
    let mut pg = matches!(db, Db::Postgres).then(|| GroupCpu::start("postgres"));
    let started = Instant::now();
    let mut child = Command::new(sibling("fusillade")?)
        .arg("run")
        .arg(&input)
        .arg("--output")
        .arg(dir.join("run-out.jsonl"))
        .arg("--errors")
        .arg(dir.join("run-err.jsonl"))
        .arg("--config")
        .arg(&config)
        .arg("--upstream")
        .arg(&url)
        .arg("--database-url")
        .arg(&b.database_url)
        .arg("--fresh")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting fusillade run")?;
    let pid = child.id();
    let (mut cpu, mut rss, mut mock_cpu) = (0.0f64, 0u64, 0.0f64);
    let status = loop {
        if let Some(s) = cpu_seconds(pid) {
            cpu = s;
        }
        if let Some(s) = cpu_seconds(mock.pid()) {
            mock_cpu = s;
        }
        if let Some(r) = peak_rss_kib(pid) {
            rss = rss.max(r);
        }
        if let Some(pg) = &mut pg {
            pg.sample();
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let wall = started.elapsed().as_secs_f64();
    let upstream_span = mock.finish()?;
    if !status.success() {
        bail!("fusillade run failed: {status}");
    }

    let (first, last, ok) = db.spans(&b.database_url).await?;
    let span = (last - first).max(1e-9);
    let (calls, upstream_secs) = upstream_span;
    let upstream_secs = upstream_secs.max(1e-9);
    // The definition: completed requests over the time from the
    // first upstream call to the last, as the upstream saw them.
    let rate = b.requests as f64 / upstream_secs;
    let per_1k = |secs: f64| secs * 1000.0 / (b.requests as f64 / 1000.0);
    println!("requests          {} (completed {ok})", b.requests);
    println!("concurrency       {}", b.concurrency);
    println!("upstream latency  {} ms", b.latency_ms);
    println!(
        "completed rate    {rate:.0} req/s (first upstream call to last answer, {upstream_secs:.3} s; {calls} calls)"
    );
    println!(
        "claim-to-result   {:.0} req/s (first claim to last stored result, {span:.3} s)",
        b.requests as f64 / span
    );
    println!("whole run         {wall:.2} s wall (ingest, batch, run, output files)");
    println!(
        "daemon CPU        {:.1} ms per 1k requests ({cpu:.2} s in all)",
        per_1k(cpu)
    );
    if let Db::Sqlite(path) = &db {
        println!(
            "database          embedded, {} (its work is in the daemon CPU above)",
            path.display()
        );
        println!("PostgreSQL CPU    n/a (embedded database)");
    } else if let Some(pg) = pg.as_ref().filter(|pg| pg.seen_any()) {
        println!(
            "PostgreSQL CPU    {:.1} ms per 1k requests ({:.0} µs per request)",
            per_1k(pg.used()),
            pg.used() * 1e6 / b.requests as f64
        );
    } else {
        println!("PostgreSQL CPU    n/a (no local postgres processes visible)");
    }
    println!(
        "mock CPU          {:.1} ms per 1k requests (the upstream stand-in, same machine)",
        per_1k(mock_cpu)
    );
    println!("daemon peak RSS   {} MiB", rss / 1024);
    if b.latency_ms > 0 {
        let capacity = f64::from(b.concurrency) / (b.latency_ms as f64 / 1000.0);
        println!(
            "upstream use      {:.1}% ({rate:.0} of {capacity:.0} req/s possible at C/L)",
            100.0 * rate / capacity
        );
    } else {
        println!("upstream use      n/a at 0 ms latency");
    }
    Ok(())
}
