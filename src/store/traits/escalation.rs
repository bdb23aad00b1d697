//! Recording the model each attempt is sent as, when its model escalates
//! to another. The daemon decides (see `domain::escalation`); the store
//! only records.

use crate::domain::request::RequestId;
use crate::store::Result;
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
