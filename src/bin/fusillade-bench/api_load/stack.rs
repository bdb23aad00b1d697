//! One fresh system under load: a new database, the mock upstream in its own
//! process, and `fusillade serve` (API and daemon) configured to call it,
//! with one API key per client so that every client is its own owner.

use super::client::{Api, auth_toml};
use crate::connect_bench_db;
use crate::procs::{MockProcess, ServeOptions, Server};
use anyhow::Result;
use std::path::PathBuf;

/// What every scenario's system shares.
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// A database for benchmarks only (dropped and created afresh).
    pub database_url: String,
    /// The mock upstream's latency per request.
    pub latency_ms: u64,
    /// The daemon's concurrency limit for the one model.
    pub concurrency: u32,
    /// Extra lines for the server's `[api]` section.
    pub api_settings: Vec<String>,
}

/// The running system; dropping it stops both processes.
pub struct Stack {
    /// The server's API.
    pub api: Api,
    /// A connection pool of the benchmark's own, for reading timestamps.
    pub pool: sqlx::PgPool,
    // The server is declared before the mock so that it stops first.
    server: Server,
    mock: MockProcess,
    log: PathBuf,
}

/// What the mock and the server's log said when the system stopped.
#[derive(Debug, Clone, Copy, Default)]
pub struct StackReport {
    /// Calls the mock received.
    pub calls: u64,
    /// Seconds from the mock's first arrival to its last answer.
    pub upstream_secs: f64,
}

impl Stack {
    /// Writes out the dirty pages of the setup (uploads) now, so that a
    /// checkpoint does not land at some random point of the measured part
    /// of this run or the next: every run's timing starts from the same
    /// state. A failure is printed, not fatal (the figures then carry that
    /// noise).
    pub async fn checkpoint(&self) {
        if let Err(e) = sqlx::query("CHECKPOINT").execute(&self.pool).await {
            println!("checkpoint before the measured part failed: {e}");
        }
    }

    /// Starts a system named `name` (used for its config and log files)
    /// with keys for owners `0..owners`, and an upload place for each (the
    /// server's default is 8 at once; more answer 429, which the clients
    /// retry after its delay).
    pub async fn start(o: &StackOptions, name: &str, owners: usize) -> Result<Self> {
        let pool = connect_bench_db(&o.database_url).await?;
        let mock = MockProcess::start(o.latency_ms)?;
        let dir = PathBuf::from("bench-data");
        std::fs::create_dir_all(&dir)?;
        let config = dir.join(format!("api-load-{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "[upstream]\nurl = \"{}\"\nconcurrency = {}\n[api]\nmax_concurrent_uploads = {}\n{}\n{}",
                mock.url,
                o.concurrency,
                owners.max(8),
                o.api_settings.join("\n"),
                auth_toml(owners.max(1))
            ),
        )?;
        let log = dir.join(format!("api-load-{name}.log"));
        let server = Server::start(ServeOptions {
            database_url: &o.database_url,
            config: Some(&config),
            api_only: false,
            log: Some(&log),
        })?;
        println!(
            "[{name}] server pid {} at {}, mock at {} ({} ms), log {}",
            server.pid(),
            server.url,
            mock.url,
            o.latency_ms,
            log.display()
        );
        Ok(Self {
            api: Api::new(&server.url),
            pool,
            server,
            mock,
            log,
        })
    }

    /// Stops the system; prints how many warnings and errors the server
    /// logged, and returns what the mock saw.
    pub fn finish(mut self) -> Result<StackReport> {
        let (calls, upstream_secs) = self.mock.finish()?;
        drop(self.server);
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let count = |level: &str| log.lines().filter(|l| l.contains(level)).count();
        println!(
            "server log: {} WARN, {} ERROR lines ({})",
            count("WARN"),
            count("ERROR"),
            self.log.display()
        );
        Ok(StackReport {
            calls,
            upstream_secs,
        })
    }
}
