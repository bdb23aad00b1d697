//! Storage: the traits the rest of the crate uses, the store's errors, and
//! the rules every backend shares. Every SQL statement lives in a backend.
//!
//! The rest of the crate speaks to storage only through the traits here and
//! in `traits/` ([`FileStore`], [`BatchStore`], [`RequestStore`],
//! [`HealthStore`], [`DaemonStore`], [`QueueStore`], [`MaintenanceStore`],
//! [`RouteStore`], [`EscalationStore`], [`DashboardStore`], [`WorkNotifier`],
//! [`ResponseStepStore`]), never through a raw pool, so that every backend
//! implements the same traits: [`PostgresStore`] (`postgres/`) and the
//! embedded [`SqliteStore`] (`sqlite/`, with its own schema), chosen by
//! [`open`] and held as a [`Store`].
//!
//! What every backend shares: [`StoreError`] (`error`), whose variants are
//! all a caller matches (never a driver's error or a constraint's name);
//! [`open`] (`open`), which picks the backend from the database URL; the
//! SQL guards derived from the domain's transition tables (`guards`); the
//! checks of a new batch (`rules`); the upload's duplicate detection
//! (`fingerprints`); and how a batched write of results is retried and
//! split ([`Settlement`], `settle`). Everything that names PostgreSQL (its
//! SQL, pools, type encodings, error codes, LISTEN/NOTIFY) is in
//! `postgres/`, one module per table; SQLite's in `sqlite/`.

mod error;
mod fingerprints;
mod guards;
mod holes;
mod ingest;
mod open;
mod postgres;
mod rules;
mod settle;
mod sqlite;
mod traits;

pub use crate::domain::daemon::{DaemonRecord, DaemonStats, DaemonStatus, NewDaemon};
pub use error::{BackendError, StoreError, UniqueKey};
pub use open::{OpenError, Store, open, redact, sqlite_path};
pub use postgres::{
    API_CONNECTIONS, BACKGROUND_CONNECTIONS, CLAIM_SQL, CREATE_LANES, DbPools, INGEST_CONNECTIONS,
    MIGRATOR, PostgresRequestManager, PostgresResponseStepManager, PostgresStore, QUEUE_SETTINGS,
    TestDbPools, WORK_CHANNEL, finish_sql, migrate, queue_session_settings,
};
pub use settle::{FAILURES_BEFORE_SPLIT, Refused, RefusedEnd, Settled, Settlement, WriteKind};
pub use sqlite::{SQLITE_MIGRATOR, SqliteStore};
pub use traits::dashboard::{
    BODY_PREVIEW, BatchSample, DashboardStore, ERROR_SAMPLE, ErrorGroup, ModelLoad,
    PENDING_COUNT_CAP, RequestDetail, ResultSample, STATS_SAMPLE,
};
pub use traits::escalation::{EscalationStore, RoutedAttempt};
pub use traits::maintenance::{FinalizeReport, MaintenanceStore, RescueReport};
pub use traits::notify::{WorkNotifier, WorkSignals};
pub use traits::queue::{
    Claim, ClaimRequest, ClaimedRequest, FinishReport, Finished, ModelDemand, QueueStore, Requeue,
};
pub use traits::response_steps::ResponseStepStore;
pub use traits::routes::RouteStore;

use crate::domain::batch::{Batch, BatchId, BatchStatus, RequestCounts};
use crate::domain::file::{File, FileId, FilePurpose};
use crate::domain::ids::DaemonId;
use crate::domain::request::{RequestId, RequestRecord};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::stream::BoxStream;
use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

/// Shorthand for store results.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A stream of bytes (file content), owning everything it needs.
pub type ByteStream = BoxStream<'static, Result<Bytes>>;

/// How long an API call waits for one of the API's connections before it
/// answers 503: when the database is away or the pool is exhausted, callers
/// and probes hear it in seconds, not after half a minute. The daemon's own
/// pools keep sqlx's long default and retry.
pub const API_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

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

/// What is known about an upload before its bytes arrive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewFile {
    /// Who owns it ("" when auth is off).
    pub owner: String,
    /// The name it was uploaded with.
    pub filename: String,
    /// When it may be deleted, if ever.
    pub expires_at: Option<DateTime<Utc>>,
}

/// Sort order of a list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Order {
    /// Oldest first.
    Asc,
    /// Newest first.
    #[default]
    Desc,
}

/// Which files to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileListQuery<'a> {
    /// Whose files.
    pub owner: Owner<'a>,
    /// Only files with this purpose.
    pub purpose: Option<FilePurpose>,
    /// Start after this file (exclusive).
    pub after: Option<FileId>,
    /// At most this many (capped at [`MAX_PAGE`]).
    pub limit: i64,
    /// Newest or oldest first.
    pub order: Order,
}

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

/// What is needed to create a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewBatch<'a> {
    /// Who creates it; the input file must be theirs ("" when auth is off).
    pub owner: &'a str,
    /// The input file to run.
    pub input_file_id: FileId,
    /// The endpoint every line must target.
    pub endpoint: &'a str,
    /// `24h`, `90m`, ...
    pub completion_window: &'a str,
    /// The caller's key/value pairs.
    pub metadata: Option<BTreeMap<String, String>>,
    /// A repeat with the same key returns the first batch instead of a new one.
    pub idempotency_key: Option<&'a str>,
    /// Run only by a daemon scoped to this batch (`fusillade run`, with its
    /// own routes): other daemons never claim its requests.
    pub private: bool,
}

/// Which batches to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchListQuery<'a> {
    /// Whose batches.
    pub owner: Owner<'a>,
    /// Only batches in this status.
    pub status: Option<BatchStatus>,
    /// Start after this batch (exclusive), newest first.
    pub after: Option<BatchId>,
    /// At most this many (capped at [`MAX_PAGE`]).
    pub limit: i64,
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
