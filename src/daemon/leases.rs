//! Stops calls whose lease is gone (rescued, expired) or whose batch is being
//! cancelled, checked on a short cadence of its own so that cancellation
//! reaches calls quickly.

use super::abort::AbortReason;
use super::{DaemonBackend, Shared};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often held leases are checked.
const LEASE_CHECK: Duration = Duration::from_millis(500);

pub(super) async fn run<S: DaemonBackend>(shared: Arc<Shared<S>>, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(LEASE_CHECK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.cancelled() => return,
        }
        check(&shared).await;
    }
}

async fn check<S: DaemonBackend>(shared: &Shared<S>) {
    let (generation, daemon) = (shared.standing.generation(), shared.id());
    let held: Vec<_> = shared
        .held
        .lock()
        .expect("held lock")
        .iter()
        .map(|(id, h)| (*id, h.attempt))
        .collect();
    if held.is_empty() {
        return;
    }
    match shared.store.lost_leases(daemon, &held).await {
        Ok(lost) => {
            let map = shared.held.lock().expect("held lock");
            // The answer is about the leases asked for: not about those the
            // daemon holds after losing its standing and claiming again.
            if shared.standing.generation() != generation {
                return;
            }
            let asked: std::collections::HashMap<_, _> = held.into_iter().collect();
            let stopped: Vec<_> = lost
                .iter()
                .filter_map(|id| map.get(id).filter(|h| asked.get(id) == Some(&h.attempt)))
                .collect();
            // Every stop is decided before any call wakes: a woken call's
            // slot starts the next request waiting for it, which may be one
            // of these (a cancelled batch's), and must find it stopped.
            for h in &stopped {
                h.abort.decide(AbortReason::Cancelled);
            }
            for h in &stopped {
                h.abort.fire(AbortReason::Cancelled);
            }
        }
        Err(e) => tracing::warn!(error = %e, "lease check failed"),
    }
}
