//! The embedded backend: every store trait over one SQLite database file,
//! owned by one process at a time.
//!
//! # Design
//!
//! - **One owner.** [`SqliteStore::open`] takes an exclusive lock on
//!   `PATH.lock` and holds it for the store's life: a second process gets
//!   [`OpenError::InUse`] instead of two schedulers racing over one file.
//!   Since nobody else can hold a claim, every claim found at open was left
//!   by a process that died, and goes back to pending there (a `fusillade
//!   run` killed with -9 resumes where it was).
//! - **One writer.** Writes go through a pool of one connection, in
//!   `BEGIN IMMEDIATE` transactions, so they never meet a lock they must
//!   wait out; reads use a few read-only connections beside it (WAL mode
//!   lets them run while it writes). A claim is a guarded UPDATE in the
//!   writer's transaction: no other process can claim meanwhile.
//! - **Time from Rust.** Every statement binds `now` (unix microseconds),
//!   never SQLite's clock.
//! - **In-process wake-ups.** [`WorkNotifier`](super::WorkNotifier) is a
//!   broadcast rung after the commits that make work claimable.

mod batches;
mod daemons;
mod dashboard;
mod ending;
mod errors;
mod escalation;
mod files;
mod maintenance;
mod queue;
mod requests;
mod routes;
mod share;
mod steps;
mod types;

pub(crate) use errors::{is_sqlite, sort, sort_write};

use super::guards::{in_flight, request_word};
use super::open::OpenError;
use super::{BackendError, Result, WorkNotifier, WorkSignals};
use crate::domain::file::IngestLimits;
use crate::domain::request::RequestState;
use futures_util::StreamExt;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

/// The embedded migrations in `src/store/sqlite/migrations/`.
pub static SQLITE_MIGRATOR: sqlx::migrate::Migrator =
    sqlx::migrate!("./src/store/sqlite/migrations");

/// Read-only connections beside the writer.
const READERS: u32 = 4;

/// Page cache of the writer and of each reader, in KiB (SQLite's negative
/// form): memory stays bounded whatever the database's size. The caches
/// are the bulk of the embedded store's memory, so they are kept small:
/// the writer's holds the live queue's hot pages; readers mostly stream
/// results in key order, whose pages the kernel caches anyway.
const WRITER_CACHE: &str = "-8192";
const READER_CACHE: &str = "-1024";

/// How long a write waits for the one writer connection, at least: a
/// batch's creation or a finalize holds it for a moment, and callers
/// should wait that out rather than fail.
const WRITER_WAIT: Duration = Duration::from_secs(30);

/// How long a statement waits for a lock held by another connection
/// (readers checkpointing the WAL, mostly).
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The embedded store: every trait of [`store`](super) over one SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// The one connection that writes.
    writer: SqlitePool,
    /// Read-only connections.
    reader: SqlitePool,
    limits: IngestLimits,
    /// Rung after commits that make work claimable.
    bell: broadcast::Sender<()>,
    path: Arc<PathBuf>,
    /// The exclusive lock on `PATH.lock`, released when the last copy of
    /// the store is dropped.
    _owner: Arc<std::fs::File>,
}

impl SqliteStore {
    /// Opens (creating it and its directory if needed) the database at
    /// `path`, takes ownership of it, brings its schema up to date, and
    /// returns every claim left by a previous process to pending. Statements
    /// of readers wait at most `acquire_timeout` for a connection.
    pub async fn open(path: &Path, acquire_timeout: Duration) -> Result<Self, OpenError> {
        let shown = path.display().to_string();
        let connect = |e: BackendError| OpenError::Connect {
            url: format!("sqlite://{shown}"),
            source: e,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                connect(BackendError::with_source(
                    format!("cannot create the directory {}: {e}", dir.display()),
                    e,
                ))
            })?;
        }
        let owner = take_ownership(path)?;
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT)
            .pragma("temp_store", "memory");
        let fail = |e: sqlx::Error| connect(BackendError::with_source(e.to_string(), e));
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(acquire_timeout.max(WRITER_WAIT))
            .connect_with(options.clone().pragma("cache_size", WRITER_CACHE))
            .await
            .map_err(fail)?;
        SQLITE_MIGRATOR
            .run(&writer)
            .await
            .map_err(|e| OpenError::Migrate(BackendError::with_source(e.to_string(), e)))?;
        let reader = SqlitePoolOptions::new()
            .max_connections(READERS)
            .acquire_timeout(acquire_timeout)
            .connect_lazy_with(options.read_only(true).pragma("cache_size", READER_CACHE));
        let (bell, _) = broadcast::channel(16);
        let store = Self {
            writer,
            reader,
            limits: IngestLimits::default(),
            bell,
            path: Arc::new(path.to_owned()),
            _owner: Arc::new(owner),
        };
        store
            .rescue_at_open()
            .await
            .map_err(|e| OpenError::Migrate(BackendError::new(e.to_string())))?;
        Ok(store)
    }

    /// Replaces the upload limits and allowed endpoints.
    pub fn with_limits(mut self, limits: IngestLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The upload limits in force.
    pub fn limits(&self) -> &IngestLimits {
        &self.limits
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many migrations have been applied to this database.
    pub async fn migrations_applied(&self) -> Result<i64> {
        let n = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
            .fetch_one(&self.reader)
            .await?;
        Ok(n)
    }

    /// A write transaction: takes the write lock at once, so a transaction
    /// that reads first never finds it taken when it comes to write.
    async fn write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// Announces work made claimable by a commit.
    fn ring(&self) {
        // No receiver is no daemon listening: nothing to wake.
        let _ = self.bell.send(());
    }

    /// Every claim in the database was left by a process that held the
    /// lock before this one and is gone: back to pending, its daemons dead.
    async fn rescue_at_open(&self) -> Result<()> {
        let now = types::micros(chrono::Utc::now());
        let mut tx = self.write().await?;
        sqlx::query(&format!(
            "UPDATE requests SET state = {pending}, daemon_id = NULL, started_at = NULL \
             WHERE state IN ({in_flight})",
            pending = request_word(RequestState::Pending),
            in_flight = in_flight(),
        ))
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE daemons SET status = 'dead', stopped_at = ?, in_flight = 0 \
             WHERE status = 'running'",
        )
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM model_slots")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Takes the exclusive lock on `PATH.lock`, or says who has it.
fn take_ownership(path: &Path) -> Result<std::fs::File, OpenError> {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let lock_path = PathBuf::from(name);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| OpenError::Connect {
            url: format!("sqlite://{}", path.display()),
            source: BackendError::with_source(
                format!("cannot open the lock file {}: {e}", lock_path.display()),
                e,
            ),
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(OpenError::InUse {
            path: path.display().to_string(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(OpenError::Connect {
            url: format!("sqlite://{}", path.display()),
            source: BackendError::with_source(
                format!("cannot lock {}: {e}", lock_path.display()),
                e,
            ),
        }),
    }
}

impl WorkNotifier for SqliteStore {
    async fn listen_for_work(&self) -> Result<WorkSignals> {
        let rx = self.bell.subscribe();
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            match rx.recv().await {
                // A lagging listener missed signals: one wake-up covers them.
                Ok(()) | Err(broadcast::error::RecvError::Lagged(_)) => Some(((), rx)),
                Err(broadcast::error::RecvError::Closed) => None,
            }
        });
        Ok(stream.boxed())
    }
}
