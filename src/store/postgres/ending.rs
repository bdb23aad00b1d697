//! How a live request ends, in SQL: its `requests` row is deleted and its
//! whole record is appended to `request_results` in the same statement (see
//! migrations/0002_live_queue.sql). Every statement that ends requests
//! (results, cancels, expiry) builds on these pieces, so the record kept is
//! the same whichever way a request ended.

use crate::domain::output::ResultError;
use sqlx::types::Json;

/// What `DELETE FROM requests q ... RETURNING` hands on: the queue row's record.
pub(super) const DELETED_RECORD: &str = "q.id, q.batch_id, q.template_id, q.model, q.custom_id, \
     q.attempt, q.retries, q.not_before, q.created_at, q.claimed_at, q.started_at, q.routed_model";

/// The same record, selected from the deleted rows.
pub(super) const RECORD: &str = "id, batch_id, template_id, model, custom_id, attempt, retries, \
     not_before, created_at, claimed_at, started_at, routed_model";

/// The `request_results` columns that [`RECORD`] fills, in its order.
pub(super) const RESULT_RECORD: &str = "request_id, batch_id, template_id, model, custom_id, \
     attempt, retries, not_before, created_at, claimed_at, started_at, routed_model";

/// Ends the live requests chosen by `filter` (over `requests q`, with
/// `using` joined in) as `state` with the error bound as `$error_param`,
/// appends their results, and yields a CTE named `name` of the ended rows'
/// `batch_id`s, for the caller's counters.
pub(super) fn end_as(
    name: &str,
    using: &str,
    filter: &str,
    state: &str,
    error_param: &str,
) -> String {
    format!(
        "{name}_rows AS (
             DELETE FROM requests q {using}
             WHERE {filter}
             RETURNING {DELETED_RECORD}),
         {name} AS (
             INSERT INTO request_results ({RESULT_RECORD}, state, ok, error)
             SELECT {RECORD}, '{state}', false, {error_param} FROM {name}_rows
             RETURNING batch_id)"
    )
}

/// An error as the `jsonb` parameter of an ending statement.
pub(super) fn error_param(code: &str, message: &str) -> Json<ResultError> {
    Json(ResultError::new(code, message))
}
