//! Pauses of upstream routes (an upstream's `Retry-After`), shared by every
//! daemon on the database.

use crate::store::Result;
use std::future::Future;
use std::time::Duration;

/// Pauses of upstream routes, seen by every daemon on the database.
pub trait RouteStore: Send + Sync {
    /// Pauses calls of `model` until `pause` from now (the database's
    /// clock); a pause already in force that ends later is kept.
    fn pause_route(&self, model: &str, pause: Duration) -> impl Future<Output = Result<()>> + Send;
    /// The pauses still in force: each paused model with the time left
    /// until its pause ends (the database's clock). Ended pauses are never
    /// returned (and may be deleted).
    fn route_pauses(&self) -> impl Future<Output = Result<Vec<(String, Duration)>>> + Send;
}
