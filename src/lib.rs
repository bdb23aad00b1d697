//! fusillade runs large batches of LLM requests against OpenAI-compatible
//! inference servers, with a database as its only state: PostgreSQL for many
//! workers and machines, or an embedded SQLite file for one process.
//!
//! # Layout
//!
//! - [`domain`]: pure types and rules (ids, states and their transitions,
//!   JSONL parsing and validation, output lines). No SQL, no I/O.
//! - [`store`]: storage behind traits, with two backends (PostgreSQL in
//!   `store::postgres`, SQLite in `store::sqlite`), each one module per table.
//! - `migrations/`: the PostgreSQL schema, the only place it changes;
//!   SQLite's own is in `src/store/sqlite/migrations/`.
//! - [`api`]: the OpenAI-compatible HTTP API (axum): `api::router(state)`,
//!   with the dashboard (a static app at `/`) and the `/v1` extensions it reads.
//! - `cli` (in the binary): one module per subcommand.
//! - [`fuzzing`]: entry points that feed arbitrary input to every parser of
//!   outside input, for the property tests and the fuzz targets.

pub mod api;
pub mod config;
pub mod daemon;
pub mod domain;
pub mod fuzzing;
pub mod mock;
pub mod store;
pub mod upstream;

/// Requests: ids, states, records.
pub mod request {
    pub use crate::domain::request::*;
}

/// Response steps of multi-step responses and their store.
pub mod response_step {
    pub use crate::domain::step::*;
    pub use crate::store::ResponseStepStore;
}

pub use domain::batch::{Batch, BatchCounts, BatchId, BatchStatus, RequestCounts};
pub use domain::file::{File, FileId, IngestLimits};
pub use store::{
    BatchStore, DaemonStore, DbPools, FileStore, PostgresRequestManager,
    PostgresResponseStepManager, PostgresStore, RequestStore, StoreError, TestDbPools,
};
