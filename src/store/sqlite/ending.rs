//! How live requests end, in SQL: their record is copied into
//! `request_results` and their `requests` row deleted, in the caller's
//! transaction, so the record kept is the same whichever way a request
//! ended (results, cancels, expiry).

use super::types::{batch_hi, batch_lo};
use crate::domain::batch::BatchId;
use crate::domain::output::ResultError;
use crate::domain::request::RequestState;
use sqlx::SqliteConnection;

/// The record of a `requests` row as `request_results` keeps it.
pub(super) const RECORD: &str = "id, batch_id, template_id, model, custom_id, attempt, retries, \
     not_before, created_at, claimed_at, started_at, routed_model";

/// The `request_results` columns that [`RECORD`] fills, in its order.
pub(super) const RESULT_RECORD: &str = "request_id, batch_id, template_id, model, custom_id, \
     attempt, retries, not_before, created_at, claimed_at, started_at, routed_model";

/// Ends the live requests of `batch` that `filter` picks (a condition
/// over `requests`, binding nothing) as `state` with `error`, at `now`.
/// Returns how many ended.
pub(super) async fn end_batch_requests(
    tx: &mut SqliteConnection,
    batch: BatchId,
    filter: &str,
    state: RequestState,
    error: &ResultError,
    now: i64,
) -> sqlx::Result<u64> {
    let range = "id BETWEEN ?1 AND ?2 AND batch_id = ?3";
    let error = serde_json::to_string(error).expect("an error line serializes");
    let moved = sqlx::query(&format!(
        "INSERT INTO request_results ({RESULT_RECORD}, state, ok, error, finished_at) \
         SELECT {RECORD}, ?4, 0, ?5, ?6 FROM requests WHERE {range} AND {filter}"
    ))
    .bind(batch_lo(batch))
    .bind(batch_hi(batch))
    .bind(batch)
    .bind(state)
    .bind(&error)
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if moved > 0 {
        sqlx::query(&format!("DELETE FROM requests WHERE {range} AND {filter}"))
            .bind(batch_lo(batch))
            .bind(batch_hi(batch))
            .bind(batch)
            .execute(&mut *tx)
            .await?;
    }
    Ok(moved)
}
