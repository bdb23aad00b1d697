//! The PostgreSQL backend: one module per table with its SQL, the pools by
//! role, LISTEN/NOTIFY (`notify`), how domain types are encoded (`types`),
//! how the server's errors map to [`StoreError`](super::StoreError)
//! (`errors`), and how a store is connected (`connect`). The only part of
//! the crate that names PostgreSQL.
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
//!   connection (see `postgres::batches`), so creates never replan it.
//! - `ingest`: uploads being parsed into the database, at most
//!   [`INGEST_CONNECTIONS`] at a time; the rest wait their turn (without a
//!   timeout: their bytes are already on disk, see `api::files`), so uploads
//!   can never take the API's connections.
//!
//! The pools derived from `primary` are lazy (connections open on first
//! use) and copy its connection settings.

mod batches;
mod connect;
mod copy;
mod creates;
mod daemons;
mod dashboard;
mod ending;
mod errors;
mod escalation;
mod files;
mod maintenance;
mod notify;
mod pools;
mod queue;
mod requests;
mod response_steps;
mod routes;
mod types;

pub(crate) use connect::connect;
pub use creates::LANES as CREATE_LANES;
pub use notify::WORK_CHANNEL;
pub use pools::{API_CONNECTIONS, DbPools, TestDbPools};
pub use queue::{CLAIM_SQL, finish_sql};

use super::Result;
// The per-table modules were written beside these and name them as
// `super::rules`: kept so their bodies read as they did.
use super::rules;
use crate::domain::file::IngestLimits;

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
/// it runs on a [detached](crate::store::DaemonStore::detached) copy), the rescuer, the
/// finalizer (which also vacuums) and the new-work listener (which holds its
/// connection), so none waits for another.
pub const BACKGROUND_CONNECTIONS: u32 = 4;

/// Connections of a [detached](crate::store::DaemonStore::detached) store: the heartbeat
/// and, rarely, the clean-up after this daemon lost its standing.
const DETACHED_CONNECTIONS: u32 = 2;

/// Uploads parsed into the database at once. Ingest runs at disk speed from
/// a spooled file, so a few at a time keep the database busy enough.
pub const INGEST_CONNECTIONS: u32 = 2;

/// Connections that create batches: each create is one short statement.
const CREATE_CONNECTIONS: u32 = creates::LANES as u32;

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

/// The connect options of `primary` with the pool's role in the session's
/// `application_name` ("fusillade queue", or after the name the database
/// URL gives), so that `pg_stat_activity` shows which part of the process
/// each connection serves.
fn options_for(primary: &sqlx::PgPool, role: &str) -> sqlx::postgres::PgConnectOptions {
    let options = primary.connect_options().as_ref().clone();
    let name = match options.get_application_name() {
        Some(given) => format!("{given} {role}"),
        None => format!("fusillade {role}"),
    };
    options.application_name(&name)
}

/// A pool for `role` on the same server as `primary` whose sessions use
/// `settings` on top of [`ORDERED_SETTINGS`], with this acquire timeout.
fn pool_with(
    primary: &sqlx::PgPool,
    role: &str,
    settings: &[(&str, &str)],
    max: u32,
    acquire: std::time::Duration,
) -> sqlx::PgPool {
    let options =
        options_for(primary, role).options(ORDERED_SETTINGS.iter().chain(settings).copied());
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(acquire)
        .connect_lazy_with(options)
}

/// A pool for `role` on the same server as `primary`, with its session
/// settings, at most `max` connections, and this acquire timeout.
fn pool_like(
    primary: &sqlx::PgPool,
    role: &str,
    max: u32,
    acquire: std::time::Duration,
) -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(acquire)
        .connect_lazy_with(options_for(primary, role))
}

/// The PostgreSQL store: every store trait over one pair of pools.
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
    /// Batch creation (API calls), in groups, on a pool with [`CREATE_SETTINGS`].
    creates: creates::CreateGroups,
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
                "queue",
                QUEUE_SETTINGS,
                QUEUE_CONNECTIONS,
                default_wait,
            ),
            ordered: pool_with(
                &pools.replica,
                "ordered reads",
                &[("default_transaction_read_only", "on")],
                ORDERED_CONNECTIONS,
                api_wait,
            ),
            background: pool_like(
                &pools.primary,
                "background",
                BACKGROUND_CONNECTIONS,
                default_wait,
            ),
            ingest: pool_like(&pools.primary, "uploads", INGEST_CONNECTIONS, api_wait),
            creates: creates::CreateGroups::new(pool_with(
                &pools.primary,
                "creates",
                CREATE_SETTINGS,
                CREATE_CONNECTIONS,
                api_wait,
            )),
            points: pool_with(
                &pools.replica,
                "point reads",
                POINT_SETTINGS,
                POINT_CONNECTIONS,
                api_wait,
            ),
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
