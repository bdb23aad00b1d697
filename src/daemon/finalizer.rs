//! Moves batches on: completed when every request has ended, expired at the
//! deadline, cancelled once nothing is in flight. It also keeps the queue
//! table vacuumed (see `MaintenanceStore::vacuum_queue`).

use super::{DaemonBackend, Shared};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often batches are checked. Cancellation and expiry both land within it.
const EVERY: Duration = Duration::from_millis(250);
/// Batches of each kind moved per statement.
const LIMIT: i64 = 100;

/// Dead row versions in `requests` that trigger a vacuum.
const VACUUM_AT: i64 = 100_000;
/// How often the need for a vacuum is checked.
const VACUUM_CHECK_EVERY: Duration = Duration::from_secs(2);

pub(super) async fn run<S: DaemonBackend>(shared: Arc<Shared<S>>, stop: CancellationToken) {
    let mut last_vacuum_check = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = stop.cancelled() => return,
        }
        run_once(&shared).await;
        if last_vacuum_check.elapsed() >= VACUUM_CHECK_EVERY {
            last_vacuum_check = tokio::time::Instant::now();
            let started = std::time::Instant::now();
            match shared.store.vacuum_queue(VACUUM_AT).await {
                Ok(true) => tracing::debug!(
                    ms = started.elapsed().as_millis() as u64,
                    "vacuumed the requests table"
                ),
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "vacuum failed"),
            }
        }
    }
}

/// One pass (repeated while a pass fills its limit).
pub(super) async fn run_once<S: DaemonBackend>(shared: &Shared<S>) {
    loop {
        match shared.store.finalize(LIMIT).await {
            Ok(r) => {
                for id in &r.completed {
                    tracing::info!(batch = %id, "batch completed");
                }
                for id in &r.expired {
                    tracing::info!(batch = %id, "batch expired");
                }
                for id in &r.cancelled {
                    tracing::info!(batch = %id, "batch cancelled");
                }
                let most = r
                    .completed
                    .len()
                    .max(r.expired.len())
                    .max(r.cancelled.len());
                if (most as i64) < LIMIT {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "finalize failed");
                return;
            }
        }
    }
}
