//! Connecting to PostgreSQL with the session settings every pool starts from.

use crate::store::open::{OpenError, redact};
use crate::store::{API_CONNECTIONS, BackendError};

/// A pool on the server at `url`, its statements waiting at most
/// `acquire_timeout` for a connection. One direct connection is made first,
/// since a pool only reports "timed out" where this says why.
pub async fn connect(
    url: &str,
    acquire_timeout: std::time::Duration,
) -> Result<sqlx::PgPool, OpenError> {
    use sqlx::Connection;
    use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
    let fail = |e: sqlx::Error| OpenError::Connect {
        url: redact(url),
        source: BackendError::with_source(e.to_string(), e),
    };
    // Every statement is planned with its parameters: the hot path's
    // statements take arrays and ranges whose generic plans can scan whole
    // tables once they hold millions of rows (see BENCHMARKS.md). No JIT:
    // these are short statements, and a plan that must use a disabled node
    // (see the claim) costs enough to trigger half a second of compiling.
    let options: PgConnectOptions = url
        .parse::<PgConnectOptions>()
        .map_err(fail)?
        .options([("plan_cache_mode", "force_custom_plan"), ("jit", "off")]);
    sqlx::PgConnection::connect_with(&options)
        .await
        .map_err(fail)?
        .close()
        .await
        .map_err(fail)?;
    PgPoolOptions::new()
        .max_connections(API_CONNECTIONS)
        .acquire_timeout(acquire_timeout)
        .connect_with(options)
        .await
        .map_err(fail)
}
