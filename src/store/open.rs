//! `open`: the one place that turns a configuration into a store, picking
//! the backend from the database URL, and [`Store`], which is either.

use super::{
    BackendError, BatchListQuery, BatchSample, BatchStore, ByteStream, Claim, ClaimRequest,
    DaemonRecord, DaemonStats, DaemonStore, DashboardStore, FileListQuery, FileStore,
    FinalizeReport, FinishReport, Finished, HealthStore, LiveRequestCounts, MaintenanceStore,
    ModelLoad, NewBatch, NewDaemon, NewFile, Owner, Page, PostgresStore, QueueStore, RequestDetail,
    RequestStore, Requeue, RescueReport, ResponseStepStore, Result, RouteStore, SqliteStore,
    WorkNotifier, WorkSignals,
};
use crate::config::Config;
use crate::domain::batch::{Batch, BatchId, RequestCounts};
use crate::domain::file::{File, FileId, IngestLimits};
use crate::domain::ids::{DaemonId, StepId};
use crate::domain::request::{RequestId, RequestRecord, RequestState};
use crate::domain::step::{CreateStepInput, ResponseStep};
use bytes::Bytes;
use std::path::PathBuf;
use std::time::Duration;

/// The store [`open`] returns: one of the backends, implementing every
/// store trait by handing each call to it.
#[derive(Debug, Clone)]
pub enum Store {
    /// A PostgreSQL server: any number of processes.
    Postgres(PostgresStore),
    /// An embedded SQLite file, owned by this process.
    Sqlite(SqliteStore),
}

/// Why a store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The configuration names no database.
    #[error("no database URL is configured")]
    NoDatabase,
    /// The URL's scheme names no backend this build has.
    #[error(
        "unsupported database URL {url}: the supported schemes are postgres://, postgresql:// and sqlite://"
    )]
    Unsupported {
        /// The URL, its password hidden.
        url: String,
    },
    /// The database could not be reached or refused the connection.
    #[error("cannot connect to the database at {url}: {source}")]
    Connect {
        /// The URL, its password hidden.
        url: String,
        /// Why.
        source: BackendError,
    },
    /// Another process owns the embedded database.
    #[error(
        "the embedded database {path} is in use by another fusillade process; scale-out needs PostgreSQL"
    )]
    InUse {
        /// The database file.
        path: String,
    },
    /// The schema could not be brought up to date.
    #[error("migrating the database failed: {0}")]
    Migrate(#[source] BackendError),
}

impl OpenError {
    /// Whether the configuration is at fault (a missing, malformed or
    /// unreachable database), as opposed to the database failing once reached.
    pub fn is_configuration(&self) -> bool {
        !matches!(self, OpenError::Migrate(_))
    }
}

/// The file an embedded database URL names: `sqlite://PATH` or
/// `sqlite:PATH` (`sqlite:///tmp/x.db` is `/tmp/x.db`), or `None` for
/// another scheme.
pub fn sqlite_path(url: &str) -> Option<PathBuf> {
    let rest = url.strip_prefix("sqlite:")?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    // Options after `?` are not ours to read; the path is what comes before.
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty()).then(|| PathBuf::from(path))
}

/// Opens the database that `config.database_url` names, brings its schema
/// up to date, and applies the config's `[api]` upload limits and endpoints,
/// so that every command reads one configuration the same way. Statements
/// wait at most `acquire_timeout` for a pooled connection.
pub async fn open(config: &Config, acquire_timeout: Duration) -> Result<Store, OpenError> {
    let url = config
        .database_url
        .as_deref()
        .filter(|u| !u.is_empty())
        .ok_or(OpenError::NoDatabase)?;
    if let Some(path) = sqlite_path(url) {
        let store = SqliteStore::open(&path, acquire_timeout).await?;
        return Ok(Store::Sqlite(store.with_limits(config.api.ingest_limits())));
    }
    let scheme = url.split_once("://").map_or("", |(s, _)| s);
    match scheme {
        "postgres" | "postgresql" => {
            let pool = super::postgres::connect(url, acquire_timeout).await?;
            super::migrate(&pool)
                .await
                .map_err(|e| OpenError::Migrate(BackendError::with_source(e.to_string(), e)))?;
            Ok(Store::Postgres(
                PostgresStore::new(pool).with_limits(config.api.ingest_limits()),
            ))
        }
        _ => Err(OpenError::Unsupported { url: redact(url) }),
    }
}

/// The URL with any password replaced, for messages and logs.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

/// Runs `$call` on whichever backend `$store` holds, bound as `$s`.
macro_rules! either {
    ($store:expr, $s:ident => $call:expr) => {
        match $store {
            Store::Postgres($s) => $call,
            Store::Sqlite($s) => $call,
        }
    };
}

impl Store {
    /// Whether this is the embedded database (one process; no scale-out).
    pub fn is_embedded(&self) -> bool {
        matches!(self, Store::Sqlite(_))
    }

    /// The upload limits in force.
    pub fn limits(&self) -> &IngestLimits {
        either!(self, s => s.limits())
    }

    /// How many migrations have been applied to this database.
    pub async fn migrations_applied(&self) -> Result<i64> {
        either!(self, s => s.migrations_applied().await)
    }
}

impl FileStore for Store {
    async fn create_file<S>(&self, new: NewFile, body: S) -> Result<File>
    where
        S: futures_util::Stream<Item = std::io::Result<Bytes>> + Send + Unpin,
    {
        either!(self, s => s.create_file(new, body).await)
    }
    async fn get_file(&self, owner: Owner<'_>, id: FileId) -> Result<Option<File>> {
        either!(self, s => s.get_file(owner, id).await)
    }
    async fn list_files(&self, query: FileListQuery<'_>) -> Result<Page<File>> {
        either!(self, s => s.list_files(query).await)
    }
    async fn delete_file(&self, owner: Owner<'_>, id: FileId) -> Result<bool> {
        either!(self, s => s.delete_file(owner, id).await)
    }
    async fn file_content(&self, owner: Owner<'_>, id: FileId) -> Result<ByteStream> {
        either!(self, s => s.file_content(owner, id).await)
    }
    async fn set_file_expiry(
        &self,
        owner: Owner<'_>,
        id: FileId,
        expires_at: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<bool> {
        either!(self, s => s.set_file_expiry(owner, id, expires_at).await)
    }
}

impl BatchStore for Store {
    async fn create_batch(&self, new: NewBatch<'_>) -> Result<Batch> {
        either!(self, s => s.create_batch(new).await)
    }
    async fn get_batch(&self, owner: Owner<'_>, id: BatchId) -> Result<Option<Batch>> {
        either!(self, s => s.get_batch(owner, id).await)
    }
    async fn find_batch_by_key(&self, owner: &str, key: &str) -> Result<Option<Batch>> {
        either!(self, s => s.find_batch_by_key(owner, key).await)
    }
    async fn list_batches(&self, query: BatchListQuery<'_>) -> Result<Page<Batch>> {
        either!(self, s => s.list_batches(query).await)
    }
    async fn cancel_batch(&self, owner: Owner<'_>, id: BatchId) -> Result<Batch> {
        either!(self, s => s.cancel_batch(owner, id).await)
    }
    async fn request_counts(&self, id: BatchId) -> Result<RequestCounts> {
        either!(self, s => s.request_counts(id).await)
    }
    async fn retry_failed(&self, owner: Owner<'_>, id: BatchId) -> Result<(Batch, u64)> {
        either!(self, s => s.retry_failed(owner, id).await)
    }
}

impl HealthStore for Store {
    async fn ping(&self) -> Result<()> {
        either!(self, s => s.ping().await)
    }
    async fn live_request_counts(&self) -> Result<LiveRequestCounts> {
        either!(self, s => s.live_request_counts().await)
    }
}

impl RequestStore for Store {
    async fn get_request(&self, id: RequestId) -> Result<Option<RequestRecord>> {
        either!(self, s => s.get_request(id).await)
    }
    async fn list_requests(
        &self,
        batch_id: BatchId,
        after: Option<RequestId>,
        limit: i64,
    ) -> Result<Page<RequestRecord>> {
        either!(self, s => s.list_requests(batch_id, after, limit).await)
    }
    fn output_stream(&self, batch_id: BatchId) -> ByteStream {
        either!(self, s => s.output_stream(batch_id))
    }
    fn error_stream(&self, batch_id: BatchId) -> ByteStream {
        either!(self, s => s.error_stream(batch_id))
    }
}

impl DaemonStore for Store {
    async fn register_daemon(&self, new: NewDaemon) -> Result<DaemonRecord> {
        either!(self, s => s.register_daemon(new).await)
    }
    async fn heartbeat(&self, id: DaemonId, stats: DaemonStats) -> Result<()> {
        either!(self, s => s.heartbeat(id, stats).await)
    }
    async fn mark_daemon_stopped(&self, id: DaemonId) -> Result<()> {
        either!(self, s => s.mark_daemon_stopped(id).await)
    }
    async fn live_daemons(&self, fresh: Duration) -> Result<u32> {
        either!(self, s => s.live_daemons(fresh).await)
    }
    async fn list_daemons(&self) -> Result<Vec<DaemonRecord>> {
        either!(self, s => s.list_daemons().await)
    }
    fn detached(&self) -> Self {
        match self {
            Store::Postgres(s) => Store::Postgres(s.detached()),
            Store::Sqlite(s) => Store::Sqlite(s.detached()),
        }
    }
}

impl DashboardStore for Store {
    async fn list_requests_in_state(
        &self,
        batch_id: BatchId,
        state: RequestState,
        after: Option<RequestId>,
        limit: i64,
    ) -> Result<Page<RequestRecord>> {
        either!(self, s => s.list_requests_in_state(batch_id, state, after, limit).await)
    }
    async fn request_detail(
        &self,
        batch_id: BatchId,
        id: RequestId,
    ) -> Result<Option<RequestDetail>> {
        either!(self, s => s.request_detail(batch_id, id).await)
    }
    async fn batch_sample(&self, batch_id: BatchId, total: i64) -> Result<BatchSample> {
        either!(self, s => s.batch_sample(batch_id, total).await)
    }
    async fn model_loads(&self) -> Result<Vec<ModelLoad>> {
        either!(self, s => s.model_loads().await)
    }
}

impl QueueStore for Store {
    async fn claim(&self, req: &ClaimRequest) -> Result<Claim> {
        either!(self, s => s.claim(req).await)
    }
    async fn finish_report(&self, items: &[Finished]) -> Result<FinishReport> {
        either!(self, s => s.finish_report(items).await)
    }
    async fn requeue(&self, items: &[Requeue]) -> Result<Vec<RequestId>> {
        either!(self, s => s.requeue(items).await)
    }
    async fn lost_leases(
        &self,
        daemon: DaemonId,
        held: &[(RequestId, i32)],
    ) -> Result<Vec<RequestId>> {
        either!(self, s => s.lost_leases(daemon, held).await)
    }
}

impl MaintenanceStore for Store {
    async fn rescue(
        &self,
        by: DaemonId,
        stale_after: Option<Duration>,
        fence_after: Duration,
    ) -> Result<RescueReport> {
        either!(self, s => s.rescue(by, stale_after, fence_after).await)
    }
    async fn retire_daemon(&self, id: DaemonId) -> Result<u64> {
        either!(self, s => s.retire_daemon(id).await)
    }
    async fn complete_batches(&self, ids: &[BatchId]) -> Result<Vec<BatchId>> {
        either!(self, s => s.complete_batches(ids).await)
    }
    async fn finalize(&self, limit: i64) -> Result<FinalizeReport> {
        either!(self, s => s.finalize(limit).await)
    }
    async fn vacuum_queue(&self, min_dead: i64) -> Result<bool> {
        either!(self, s => s.vacuum_queue(min_dead).await)
    }
}

impl RouteStore for Store {
    async fn pause_route(&self, model: &str, pause: Duration) -> Result<()> {
        either!(self, s => s.pause_route(model, pause).await)
    }
    async fn route_pauses(&self) -> Result<Vec<(String, Duration)>> {
        either!(self, s => s.route_pauses().await)
    }
}

impl super::EscalationStore for Store {
    async fn record_routes(&self, routes: &[super::RoutedAttempt]) -> Result<u64> {
        either!(self, s => s.record_routes(routes).await)
    }
}

impl WorkNotifier for Store {
    async fn listen_for_work(&self) -> Result<WorkSignals> {
        either!(self, s => s.listen_for_work().await)
    }
}

impl ResponseStepStore for Store {
    async fn create_step(&self, input: CreateStepInput) -> Result<StepId> {
        either!(self, s => s.create_step(input).await)
    }
    async fn get_step(&self, id: StepId) -> Result<Option<ResponseStep>> {
        either!(self, s => s.get_step(id).await)
    }
    async fn list_chain(&self, request_id: RequestId) -> Result<Vec<ResponseStep>> {
        either!(self, s => s.list_chain(request_id).await)
    }
    async fn list_scope(
        &self,
        request_id: RequestId,
        parent_step_id: Option<StepId>,
    ) -> Result<Vec<ResponseStep>> {
        either!(self, s => s.list_scope(request_id, parent_step_id).await)
    }
    async fn mark_step_processing(&self, id: StepId) -> Result<()> {
        either!(self, s => s.mark_step_processing(id).await)
    }
    async fn complete_step(&self, id: StepId, response: serde_json::Value) -> Result<()> {
        either!(self, s => s.complete_step(id, response).await)
    }
    async fn fail_step(&self, id: StepId, error: serde_json::Value) -> Result<()> {
        either!(self, s => s.fail_step(id, error).await)
    }
    async fn cancel_step(&self, id: StepId) -> Result<()> {
        either!(self, s => s.cancel_step(id).await)
    }
    async fn requeue_step_for_retry(&self, id: StepId) -> Result<()> {
        either!(self, s => s.requeue_step_for_retry(id).await)
    }
}
