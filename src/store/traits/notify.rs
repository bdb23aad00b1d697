//! Wake-ups for idle daemons: which writes signal new work, and the
//! stream a daemon listens to. PostgreSQL sends them by LISTEN/NOTIFY
//! (`postgres::notify`), the embedded store by an in-process broadcast.

use crate::store::Result;
use futures_util::stream::BoxStream;
use std::future::Future;

/// A stream that yields whenever new work may be claimable.
pub type WorkSignals = BoxStream<'static, ()>;

/// Subscribing to new-work signals.
///
/// # Which writes wake listeners
///
/// Every backend signals, once the work is visible to a claim, after each
/// write that makes requests claimable at once:
///
/// - creating a batch that has requests ([`BatchStore::create_batch`]);
/// - a user's retry that requeued at least one request
///   ([`BatchStore::retry_failed`]);
/// - a requeue of which at least one row is due now (no backoff delay)
///   ([`QueueStore::requeue`]);
/// - a rescue or retirement that returned claims to pending
///   ([`MaintenanceStore::rescue`], [`MaintenanceStore::retire_daemon`]).
///
/// Nothing else signals: results, cancels and finalizing end work rather
/// than make it, and a requeue with a delay becomes due later, which the
/// daemon's polling finds (it polls whatever it hears). A signal may be
/// lost or come twice, so it is a hint to claim soon, never a promise of
/// work; several signals close together may arrive as one.
///
/// [`BatchStore::create_batch`]: crate::store::BatchStore::create_batch
/// [`BatchStore::retry_failed`]: crate::store::BatchStore::retry_failed
/// [`QueueStore::requeue`]: crate::store::QueueStore::requeue
/// [`MaintenanceStore::rescue`]: crate::store::MaintenanceStore::rescue
/// [`MaintenanceStore::retire_daemon`]: crate::store::MaintenanceStore::retire_daemon
pub trait WorkNotifier: Send + Sync {
    /// A stream of signals. After a lost connection it reconnects; signals
    /// sent meanwhile are lost, which the daemon's polling covers.
    fn listen_for_work(&self) -> impl Future<Output = Result<WorkSignals>> + Send;
}
