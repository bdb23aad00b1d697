//! Moves batches on: completed when every request has ended, expired at the
//! deadline, cancelled once nothing is in flight. It also keeps the queue
//! table vacuumed (see `MaintenanceStore::vacuum_queue`).
//!
//! A batch whose last result this daemon wrote is completed at once: the
//! completer hands it over ([`Filled`]), so that it does not wait for the
//! next tick (up to 250 ms, a sixth of a 20,000-line batch's run here).
//! The tick still finds every other batch, such as one whose last result
//! another daemon wrote just as it died.

use super::{DaemonBackend, Shared};
use crate::domain::batch::BatchId;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Batches the completer found filled, waiting to be completed.
#[derive(Debug, Default)]
pub(super) struct Filled {
    ids: Mutex<Vec<BatchId>>,
    bell: Notify,
}

impl Filled {
    /// Hands `ids` to the finalizer.
    pub(super) fn add(&self, ids: &[BatchId]) {
        if ids.is_empty() {
            return;
        }
        self.ids.lock().expect("filled lock").extend_from_slice(ids);
        self.bell.notify_one();
    }

    fn take(&self) -> Vec<BatchId> {
        std::mem::take(&mut *self.ids.lock().expect("filled lock"))
    }
}

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
    let mut tick = tokio::time::Instant::now() + EVERY;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(tick) => {}
            _ = shared.filled.bell.notified() => {
                complete_filled(&shared).await;
                continue;
            }
            _ = stop.cancelled() => return,
        }
        tick = tokio::time::Instant::now() + EVERY;
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

/// Completes the batches the completer handed over. A failure is only
/// logged: the next tick's pass finds them anyway.
async fn complete_filled<S: DaemonBackend>(shared: &Shared<S>) {
    let ids = shared.filled.take();
    match shared.store.complete_batches(&ids).await {
        Ok(done) => {
            for id in &done {
                tracing::info!(batch = %id, "batch completed");
            }
        }
        Err(e) => tracing::warn!(error = %e, "completing filled batches failed"),
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
