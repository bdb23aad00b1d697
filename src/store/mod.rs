//! Every SQL statement lives here, one module per table.
//!
//! The rest of the crate speaks to storage only through the traits below
//! ([`FileStore`], [`BatchStore`], [`RequestStore`], [`DaemonStore`],
//! [`ResponseStepStore`]), never through a raw pool, so that every backend
//! implements the same traits: [`PostgresStore`] and the embedded
//! [`SqliteStore`] (`sqlite/`, with its own schema), chosen by [`open`] and
//! held as a [`Store`]. Everything PostgreSQL-specific stays inside
//! [`PostgresStore`].
//!
//! What every backend shares: [`StoreError`] (`error`), whose variants are
//! all a caller matches (never a driver's error or a constraint's name);
//! [`open`] (`open`), which picks the backend from the database URL; and
//! the SQL guards derived from the domain's transition tables (`guards`).
//! `postgres/` holds what only PostgreSQL knows: how domain types are
//! encoded, how its errors sort into [`StoreError`], and how it connects.
//! The per-table modules here are PostgreSQL's too and move under
//! `postgres/` once the branches that change them have merged.
//!
//! Reads that serve the API go to the replica pool; anything that decides a
//! write reads from the primary.
//!
//! # Connections by role
//!
//! One pool per role, so that no role can wait behind another's traffic:
//!
//! - `primary` and `replica` (given to [`PostgresStore::new`]): the API's own
//!   reads and writes. `fusillade serve` gives them a short acquire timeout,
//!   so an exhausted pool or a missing database answers 503 quickly.
//! - `queue`: the daemon's hot path (claims, results, lease checks).
//! - `background`: the daemon's timed roles (registry and heartbeat,
//!   rescuer, finalizer and vacuum), one connection per role, so a
//!   heartbeat never waits behind API traffic, uploads or a long finalize.
//! - `ordered`: reads that walk a batch in order (downloads, request lists).
//! - `creates`: batch creation's one statement, with its plan kept per
//!   connection (see `store::batches`), so creates never replan it.
//! - `ingest`: uploads being parsed into the database, at most
//!   [`INGEST_CONNECTIONS`] at a time; the rest wait their turn (without a
//!   timeout: their bytes are already on disk, see `api::files`), so uploads
//!   can never take the API's connections.
//!
//! The pools derived from `primary` are lazy (connections open on first
//! use) and copy its connection settings.

mod batches;
mod copy;
mod daemons;
mod dashboard;
mod ending;
mod error;
mod escalation;
mod files;
mod fingerprints;
mod guards;
mod maintenance;
mod notify;
mod open;
mod pools;
mod postgres;
mod queue;
mod requests;
mod response_steps;
mod routes;
mod rules;
mod settle;
mod sqlite;

pub use batches::{BatchListQuery, NewBatch};
pub use daemons::{DaemonRecord, DaemonStats, DaemonStatus, NewDaemon};
pub use dashboard::{
    BODY_PREVIEW, BatchSample, DashboardStore, ERROR_SAMPLE, ErrorGroup, ModelLoad,
    PENDING_COUNT_CAP, RequestDetail, ResultSample, STATS_SAMPLE,
};
pub use error::{BackendError, StoreError, UniqueKey};
pub use escalation::{EscalationStore, RoutedAttempt};
pub use files::{FileListQuery, NewFile, Order};
pub use maintenance::{FinalizeReport, MaintenanceStore, RescueReport};
pub use notify::{WORK_CHANNEL, WorkNotifier, WorkSignals};
pub use open::{OpenError, Store, open, redact, sqlite_path};
pub use pools::{API_ACQUIRE_TIMEOUT, API_CONNECTIONS, DbPools, TestDbPools};
pub use queue::{
    CLAIM_SQL, Claim, ClaimRequest, ClaimedRequest, Finished, ModelDemand, QueueStore, Requeue,
    finish_sql,
};
pub use response_steps::ResponseStepStore;
pub use routes::RouteStore;
pub use settle::{FAILURES_BEFORE_SPLIT, Refused, RefusedEnd, Settled, Settlement, WriteKind};
pub use sqlite::{SQLITE_MIGRATOR, SqliteStore};

use crate::domain::batch::{Batch, BatchId, RequestCounts};
use crate::domain::file::{File, FileId, IngestLimits};
use crate::domain::ids::DaemonId;
use crate::domain::request::{RequestId, RequestRecord};
use bytes::Bytes;
use futures_util::stream::BoxStream;
use std::future::Future;

/// Shorthand for store results.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A stream of bytes (file content), owning everything it needs.
pub type ByteStream = BoxStream<'static, Result<Bytes>>;

/// Planner settings for statements that must walk an index in order and
/// stop early: no bitmap scans, sorts or sequential scans, no JIT. Needed
/// because the bulk tables' statistics lag far behind their contents (a
/// batch of a million rows is written in seconds): with "one row" estimates
/// the planner reads a whole batch and sorts it for every page, and a plan
/// that must use a disabled node anyway looks costly enough to be compiled
/// by the JIT (half a second). Set on the sessions of dedicated pools.
const ORDERED_SETTINGS: &[(&str, &str)] = &[
    ("jit", "off"),
    ("enable_bitmapscan", "off"),
    ("enable_sort", "off"),
    ("enable_seqscan", "off"),
];

/// The daemon's hot path (claims, results, requeues, lease checks) runs on
/// connections of its own with [`ORDERED_SETTINGS`], joins by nested loops
/// only (its statements join a few hundred ids to their rows by primary
/// key; a hash join would scan a whole index of live or dead rows), and
/// plans made once per connection: replanning every statement cost about a
/// quarter of its database time, and these settings leave one good plan.
#[doc(hidden)]
pub const QUEUE_SETTINGS: &[(&str, &str)] = &[
    ("enable_hashjoin", "off"),
    ("enable_mergejoin", "off"),
    ("plan_cache_mode", "force_generic_plan"),
];

/// Every setting of the hot path's sessions, for `EXPLAIN` in benchmarks.
#[doc(hidden)]
pub fn queue_session_settings() -> impl Iterator<Item = (&'static str, &'static str)> {
    ORDERED_SETTINGS.iter().chain(QUEUE_SETTINGS).copied()
}

/// Most connections of the hot path's pool: one claim, one result writer,
/// one lease check at a time, and a spare.
const QUEUE_CONNECTIONS: u32 = 4;

/// Most connections of the pool of ordered reads (downloads and lists).
const ORDERED_CONNECTIONS: u32 = 8;

/// Connections of the daemon's timed roles: one each for the heartbeat (until
/// it runs on a [detached](DaemonStore::detached) copy), the rescuer, the
/// finalizer (which also vacuums) and the new-work listener (which holds its
/// connection), so none waits for another.
pub const BACKGROUND_CONNECTIONS: u32 = 4;

/// Connections of a [detached](DaemonStore::detached) store: the heartbeat
/// and, rarely, the clean-up after this daemon lost its standing.
const DETACHED_CONNECTIONS: u32 = 2;

/// Uploads parsed into the database at once. Ingest runs at disk speed from
/// a spooled file, so a few at a time keep the database busy enough.
pub const INGEST_CONNECTIONS: u32 = 2;

/// Connections that create batches: each create is one short statement.
const CREATE_CONNECTIONS: u32 = 4;

/// Planner settings of the `creates` pool: batch creation's statement
/// (index lookups and inserts only) keeps one plan per connection, since
/// planning it cost twice its execution.
const CREATE_SETTINGS: &[(&str, &str)] = &[("plan_cache_mode", "force_generic_plan")];

/// Connections of the pool of single-row reads by primary key.
const POINT_CONNECTIONS: u32 = 4;

/// Settings of the pool of single-row reads by primary key (a batch read by
/// `GET /v1/batches/{id}`): read-only, and one plan per connection. Its
/// statements have one good plan whatever their parameters, and planning
/// each time (as the API's pools do) cost as much as running them: with
/// pgbench, 0.28 to 0.32 ms a read planned each time against 0.15 to
/// 0.17 ms with the plan kept; through the API, one query per read, the
/// database's CPU per read fell from 190 to 125 µs.
const POINT_SETTINGS: &[(&str, &str)] = &[
    ("default_transaction_read_only", "on"),
    ("plan_cache_mode", "force_generic_plan"),
];

/// A pool on the same server as `primary` whose sessions use `settings` on
/// top of [`ORDERED_SETTINGS`], with this acquire timeout.
fn pool_with(
    primary: &sqlx::PgPool,
    settings: &[(&str, &str)],
    max: u32,
    acquire: std::time::Duration,
) -> sqlx::PgPool {
    let options = primary
        .connect_options()
        .as_ref()
        .clone()
        .options(ORDERED_SETTINGS.iter().chain(settings).copied());
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(acquire)
        .connect_lazy_with(options)
}

/// A pool on the same server as `primary`, with its session settings, at
/// most `max` connections, and this acquire timeout.
fn pool_like(primary: &sqlx::PgPool, max: u32, acquire: std::time::Duration) -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(acquire)
        .connect_lazy_with(primary.connect_options().as_ref().clone())
}

/// One page of a keyset-paginated list.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    /// The items, in the order asked for.
    pub items: Vec<T>,
    /// Whether more items follow the last one.
    pub has_more: bool,
}

impl<T> Page<T> {
    /// A page from `limit + 1` fetched rows: the extra row only says more follow.
    pub(crate) fn from_rows<R>(
        rows: &[R],
        limit: i64,
        convert: impl Fn(&R) -> Result<T>,
    ) -> Result<Self> {
        let items = rows
            .iter()
            .take(limit.max(0) as usize)
            .map(convert)
            .collect::<Result<_>>()?;
        Ok(Page {
            items,
            has_more: rows.len() as i64 > limit,
        })
    }
}

/// Which objects a caller may see: one owner's, or (with auth off) all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner<'a> {
    /// Any owner's objects.
    Any,
    /// Only this owner's objects.
    Only(&'a str),
}

impl<'a> Owner<'a> {
    /// The owner as a nullable SQL parameter (NULL matches everyone).
    pub(crate) fn param(self) -> Option<&'a str> {
        match self {
            Owner::Any => None,
            Owner::Only(o) => Some(o),
        }
    }
}

/// The most items a list call returns.
pub const MAX_PAGE: i64 = 10_000;

/// Files: upload, look up, list, delete, download.
pub trait FileStore: Send + Sync {
    /// Stores an uploaded JSONL file, parsing and validating it line by line as
    /// it streams in. Refused lines are recorded on the file, valid ones become
    /// request templates.
    fn create_file<S>(&self, new: NewFile, body: S) -> impl Future<Output = Result<File>> + Send
    where
        S: futures_util::Stream<Item = std::io::Result<Bytes>> + Send + Unpin;
    /// One file, unless deleted or owned by someone else.
    fn get_file(
        &self,
        owner: Owner<'_>,
        id: FileId,
    ) -> impl Future<Output = Result<Option<File>>> + Send;
    /// Files, newest first (or oldest first), after a cursor.
    fn list_files(
        &self,
        query: FileListQuery<'_>,
    ) -> impl Future<Output = Result<Page<File>>> + Send;
    /// Soft-deletes a file; `false` when there was none to delete.
    fn delete_file(
        &self,
        owner: Owner<'_>,
        id: FileId,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// The file's content: the original bytes of an input file, or the lines
    /// of a batch's output or error file, streamed from the database.
    fn file_content(
        &self,
        owner: Owner<'_>,
        id: FileId,
    ) -> impl Future<Output = Result<ByteStream>> + Send;
    /// Sets when an input file may be deleted; `false` when there is no such
    /// file (for uploads whose expiry arrives after their bytes).
    fn set_file_expiry(
        &self,
        owner: Owner<'_>,
        id: FileId,
        expires_at: Option<chrono::DateTime<chrono::Utc>>,
    ) -> impl Future<Output = Result<bool>> + Send;
}

/// Batches: create from a file, look up, list, cancel, count.
pub trait BatchStore: Send + Sync {
    /// Creates a batch from an input file in a few set-based statements. A file
    /// with refused lines, or with lines for another endpoint, gives a batch in
    /// status `failed` with line-numbered errors and no requests.
    fn create_batch(&self, new: NewBatch<'_>) -> impl Future<Output = Result<Batch>> + Send;
    /// One batch with its request counts.
    fn get_batch(
        &self,
        owner: Owner<'_>,
        id: BatchId,
    ) -> impl Future<Output = Result<Option<Batch>>> + Send;
    /// The batch an owner created with this idempotency key, if any.
    fn find_batch_by_key(
        &self,
        owner: &str,
        key: &str,
    ) -> impl Future<Output = Result<Option<Batch>>> + Send;
    /// Batches, newest first, after a cursor.
    fn list_batches(
        &self,
        query: BatchListQuery<'_>,
    ) -> impl Future<Output = Result<Page<Batch>>> + Send;
    /// Asks for a batch to stop: pending requests end as cancelled at once; the
    /// batch is `cancelled` when nothing is in flight, else `cancelling`.
    fn cancel_batch(
        &self,
        owner: Owner<'_>,
        id: BatchId,
    ) -> impl Future<Output = Result<Batch>> + Send;
    /// How many of the batch's requests are in each state, counted from its
    /// rows: exact, and as costly as the batch is large. A batch's own
    /// counters ([`Batch::request_counts`]) cost nothing to read.
    fn request_counts(&self, id: BatchId) -> impl Future<Output = Result<RequestCounts>> + Send;
    /// Runs a finished batch's failed requests again, the one user-requested
    /// exception to terminal states never changing (see
    /// [`RequestState::can_be_retried_by_user`](crate::domain::request::RequestState::can_be_retried_by_user)
    /// and [`BatchStatus::reopens_on_user_retry`](crate::domain::batch::BatchStatus::reopens_on_user_retry)):
    /// in one transaction, its `failed` requests go back to `pending` with
    /// their retries reset and their results deleted, and the batch goes back
    /// to `in_progress` with a new deadline (now + its window). Returns the
    /// batch and how many requests were requeued; with none to requeue the
    /// batch is left as it was. A batch in another status is a conflict.
    fn retry_failed(
        &self,
        owner: Owner<'_>,
        id: BatchId,
    ) -> impl Future<Output = Result<(Batch, u64)>> + Send;
}

/// Requests not yet finished, over all live batches, by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LiveRequestCounts {
    /// Waiting to be claimed (retries in backoff included).
    pub pending: i64,
    /// Claimed by a daemon, not yet sent.
    pub claimed: i64,
    /// Sent upstream, waiting for the answer.
    pub processing: i64,
}

/// What health checks and metrics scrapes read.
pub trait HealthStore: Send + Sync {
    /// Succeeds when the database answers.
    fn ping(&self) -> impl Future<Output = Result<()>> + Send;
    /// Unfinished requests of live batches by state: the unfinished ones
    /// from the live batches' counters, the in-flight ones from the partial
    /// index of claimed requests; neither reads the backlog or ended rows.
    fn live_request_counts(&self) -> impl Future<Output = Result<LiveRequestCounts>> + Send;
}

/// Requests as the API sees them.
pub trait RequestStore: Send + Sync {
    /// One request with its result, if it has one.
    fn get_request(
        &self,
        id: RequestId,
    ) -> impl Future<Output = Result<Option<RequestRecord>>> + Send;
    /// A batch's requests in id order, after a cursor.
    fn list_requests(
        &self,
        batch_id: BatchId,
        after: Option<RequestId>,
        limit: i64,
    ) -> impl Future<Output = Result<Page<RequestRecord>>> + Send;
    /// The batch's output file: one OpenAI line per completed request.
    fn output_stream(&self, batch_id: BatchId) -> ByteStream;
    /// The batch's error file: one OpenAI line per failed or cancelled request.
    fn error_stream(&self, batch_id: BatchId) -> ByteStream;
}

/// The registry of daemons.
pub trait DaemonStore: Send + Sync {
    /// Records a starting daemon.
    fn register_daemon(&self, new: NewDaemon) -> impl Future<Output = Result<DaemonRecord>> + Send;
    /// Says the daemon is alive, with its counters. A daemon that was declared
    /// dead or stopped gets a conflict: it must stop working.
    fn heartbeat(
        &self,
        id: DaemonId,
        stats: DaemonStats,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Records a clean stop.
    fn mark_daemon_stopped(&self, id: DaemonId) -> impl Future<Output = Result<()>> + Send;
    /// How many daemons are running with a heartbeat younger than `fresh`.
    fn live_daemons(&self, fresh: std::time::Duration) -> impl Future<Output = Result<u32>> + Send;
    /// All daemons, running ones first, newest first.
    fn list_daemons(&self) -> impl Future<Output = Result<Vec<DaemonRecord>>> + Send;
    /// A copy of this store whose registry calls (register, heartbeat,
    /// retire) use connections of their own, opened on first use by the
    /// runtime that uses them: the heartbeat runs on a thread of its own, so
    /// that a daemon busy with calls, or a runtime starved of CPU, still
    /// proves it is alive. Call it on the runtime that will use the copy.
    fn detached(&self) -> Self
    where
        Self: Sized;
}

/// The PostgreSQL store: every trait above over one pair of pools.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pools: DbPools,
    /// The daemon's hot path: the primary server, [`QUEUE_SETTINGS`].
    queue: sqlx::PgPool,
    /// Reads that walk a batch's requests or results in order (lists and
    /// output files): the replica, [`ORDERED_SETTINGS`], read-only.
    ordered: sqlx::PgPool,
    /// The daemon's timed roles: registry, heartbeat, rescuer, finalizer, new-work listener.
    background: sqlx::PgPool,
    /// Uploads being parsed into the database.
    ingest: sqlx::PgPool,
    /// Turns at the ingest pool: waiting here has no timeout, while the
    /// pool's own acquire timeout (the primary's) still catches a database
    /// that is away.
    ingest_turns: std::sync::Arc<tokio::sync::Semaphore>,
    /// Batch creation (API calls): [`CREATE_SETTINGS`].
    creates: sqlx::PgPool,
    /// Reads of one row by primary key on the replica: [`POINT_SETTINGS`].
    points: sqlx::PgPool,
    limits: IngestLimits,
    /// Announces batches made claimable by this process.
    bell: std::sync::Arc<notify::WorkBell>,
}

/// The reference crate's name for the request store, kept so its users can move.
pub type PostgresRequestManager = PostgresStore;
/// The store of response steps (the same store; named as the seed test uses it).
pub type PostgresResponseStepManager = PostgresStore;

impl PostgresStore {
    /// A store over these pools with default upload limits.
    pub fn new(pools: impl Into<DbPools>) -> Self {
        let pools = pools.into();
        // The API's pools decide how long an API call may wait for a
        // connection; the daemon's keep the default, and retry anyway.
        let api_wait = pools.primary.options().get_acquire_timeout();
        let default_wait = sqlx::postgres::PgPoolOptions::new().get_acquire_timeout();
        Self {
            queue: pool_with(
                &pools.primary,
                QUEUE_SETTINGS,
                QUEUE_CONNECTIONS,
                default_wait,
            ),
            ordered: pool_with(
                &pools.replica,
                &[("default_transaction_read_only", "on")],
                ORDERED_CONNECTIONS,
                api_wait,
            ),
            background: pool_like(&pools.primary, BACKGROUND_CONNECTIONS, default_wait),
            ingest: pool_like(&pools.primary, INGEST_CONNECTIONS, api_wait),
            creates: pool_with(
                &pools.primary,
                CREATE_SETTINGS,
                CREATE_CONNECTIONS,
                api_wait,
            ),
            points: pool_with(&pools.replica, POINT_SETTINGS, POINT_CONNECTIONS, api_wait),
            ingest_turns: std::sync::Arc::new(tokio::sync::Semaphore::new(
                INGEST_CONNECTIONS as usize,
            )),
            pools,
            limits: IngestLimits::default(),
            bell: Default::default(),
        }
    }

    /// Replaces the upload limits and allowed endpoints.
    pub fn with_limits(mut self, limits: IngestLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The pools this store uses.
    pub fn pools(&self) -> &DbPools {
        &self.pools
    }

    /// The upload limits in force.
    pub fn limits(&self) -> &IngestLimits {
        &self.limits
    }

    /// How many migrations have been applied to this database.
    pub async fn migrations_applied(&self) -> Result<i64> {
        let n = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
            .fetch_one(&self.pools.primary)
            .await?;
        Ok(n)
    }
}

/// The embedded migrations in `migrations/`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Applies every migration not yet applied; safe to run any number of times.
pub async fn migrate(pool: &sqlx::PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}
