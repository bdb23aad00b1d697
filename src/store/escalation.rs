//! The model each attempt is sent as, when its model escalates to another
//! (`requests.routed_model`, see migrations/0010_escalation.sql). The daemon
//! decides (see `domain::escalation`); this only records.

use super::{PostgresStore, Result, StoreError};
use crate::domain::request::RequestId;
use std::future::Future;

/// One attempt and the model it is sent as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutedAttempt {
    /// The request.
    pub id: RequestId,
    /// The attempt (its lease): a write for an older attempt is ignored.
    pub attempt: i32,
    /// The model the attempt is sent as (its own, or the one it escalated to).
    pub model: String,
}

/// Recording where attempts were sent.
pub trait EscalationStore: Send + Sync {
    /// Sets `routed_model` of each request whose attempt `attempt` is still
    /// in flight (claimed or processing) to `model`, in one statement; it is
    /// kept in the request's result when it ends. Returns how many were set.
    fn record_routes(&self, routes: &[RoutedAttempt]) -> impl Future<Output = Result<u64>> + Send;
}

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
