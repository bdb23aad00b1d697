//! The model each attempt is sent as, when its model escalates to another
//! (`requests.routed_model`, see migrations/0010_escalation.sql). The daemon
//! decides (see `domain::escalation`); this only records.

use super::PostgresStore;
use crate::domain::request::RequestId;
use crate::store::{EscalationStore, Result, RoutedAttempt, StoreError};

impl EscalationStore for PostgresStore {
    async fn record_routes(&self, routes: &[RoutedAttempt]) -> Result<u64> {
        if routes.is_empty() {
            return Ok(0);
        }
        let ids: Vec<RequestId> = routes.iter().map(|r| r.id).collect();
        let attempts: Vec<i32> = routes.iter().map(|r| r.attempt).collect();
        let models: Vec<&str> = routes.iter().map(|r| r.model.as_str()).collect();
        let done = sqlx::query(
            "UPDATE requests q SET routed_model = r.model
             FROM unnest($1::uuid[], $2::int[], $3::text[]) AS r(id, attempt, model)
             -- Not pending = in flight (see the finish statement).
             WHERE q.id = r.id AND q.attempt = r.attempt AND q.state <> 'pending'",
        )
        .bind(&ids)
        .bind(&attempts)
        .bind(&models)
        .execute(&self.queue)
        .await
        .map_err(StoreError::from_write)?;
        Ok(done.rows_affected())
    }
}
