//! Repair and lifecycle work, run on timers by the daemon and never by the
//! claim loop: rescuing claims of dead daemons, expiring batches past their
//! deadline, settling batches whose requests have all ended, and the
//! queue's own upkeep.

use crate::domain::batch::BatchId;
use crate::domain::ids::DaemonId;
use crate::store::Result;
use std::future::Future;
use std::time::Duration;

/// What one rescue pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RescueReport {
    /// Daemons newly declared dead.
    pub dead_daemons: u64,
    /// Requests returned to pending.
    pub requests: u64,
}

/// Batches moved by one finalize pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FinalizeReport {
    /// Batches now `completed`.
    pub completed: Vec<BatchId>,
    /// Batches now `cancelled`.
    pub cancelled: Vec<BatchId>,
    /// Batches now `expired`.
    pub expired: Vec<BatchId>,
}

impl FinalizeReport {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.completed.is_empty() && self.cancelled.is_empty() && self.expired.is_empty()
    }
}

/// Timed repair and lifecycle work.
pub trait MaintenanceStore: Send + Sync {
    /// Run by the daemon `by`: declares every other daemon without a
    /// heartbeat for `stale_after` dead (nobody with `None`: the caller
    /// cannot tell a dead daemon from a stall of its own), returns to
    /// pending every claim held by a daemon that is not running, and forgets
    /// the slots of daemons that stopped, or that died more than
    /// `fence_after` ago. Until then a dead daemon's slots still count
    /// against the limits: a daemon that was only slow may still be making
    /// calls, and it stops them on its own once it cannot prove it is alive
    /// (see `daemon::heartbeat`).
    fn rescue(
        &self,
        by: DaemonId,
        stale_after: Option<Duration>,
        fence_after: Duration,
    ) -> impl Future<Output = Result<RescueReport>> + Send;
    /// Run by a daemon that lost its standing (declared dead, or unable to
    /// heartbeat for too long) once every one of its calls has stopped:
    /// marks it dead if it still counts as running and returns its claims
    /// to pending at once. Returns how many. Its slots go the way of every
    /// dead daemon's (see [`rescue`](Self::rescue)): its calls have ended
    /// here, but the upstream may take a moment to see it.
    fn retire_daemon(&self, id: DaemonId) -> impl Future<Output = Result<u64>> + Send;
    /// Moves up to `limit` batches of each kind on: past the deadline ->
    /// `expired` (unfinished requests end as `batch_expired`); cancelling with
    /// nothing in flight -> `cancelled`; in progress with every request ended
    /// -> `completed`.
    fn finalize(&self, limit: i64) -> impl Future<Output = Result<FinalizeReport>> + Send;
    /// Completes those of `ids` that are in progress with every request
    /// ended, as [`finalize`](Self::finalize) would; the ones completed.
    /// One past its deadline is left to `finalize`, which expires it.
    /// Run as soon as a finish reports a batch filled.
    fn complete_batches(
        &self,
        ids: &[BatchId],
    ) -> impl Future<Output = Result<Vec<BatchId>>> + Send;
    /// The queue's own upkeep, which the finalizer runs on its tick: a
    /// backend whose queue needs none does nothing and returns `false`.
    /// `min_dead` is how much garbage makes it worth running; `true` when
    /// it ran.
    ///
    /// PostgreSQL: vacuums `requests` when it holds at least `min_dead`
    /// dead row versions, unless another daemon is doing it. Every claim
    /// and result leaves a dead version behind, and the claim's indexes slow
    /// down with each one until vacuum removes them: autovacuum (once a
    /// minute at best) is far too slow for a queue moving 10k rows a second.
    fn vacuum_queue(&self, min_dead: i64) -> impl Future<Output = Result<bool>> + Send;
}
