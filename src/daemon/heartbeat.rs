//! Liveness: heartbeats with counters, and stopping calls whose lease is gone
//! (rescued, expired) or whose batch is being cancelled.

use super::{DaemonBackend, Shared, register};
use crate::store::StoreError;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often held leases are checked, so cancellation reaches calls quickly.
const LEASE_CHECK: Duration = Duration::from_millis(500);

pub(super) async fn run<S: DaemonBackend>(shared: Arc<Shared<S>>, stop: CancellationToken) {
    let mut last_beat = tokio::time::Instant::now();
    let mut ticker = tokio::time::interval(LEASE_CHECK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.cancelled() => return,
        }
        let every = shared.config.borrow().daemon.heartbeat;
        if last_beat.elapsed() >= every {
            beat(&shared, &stop).await;
            last_beat = tokio::time::Instant::now();
        }
        check_leases(&shared).await;
    }
}

async fn beat<S: DaemonBackend>(shared: &Shared<S>, stop: &CancellationToken) {
    let id = shared.id();
    match shared.store.heartbeat(id, shared.stats()).await {
        Ok(()) => {
            let fresh = shared.config.borrow().daemon.stale_after;
            if let Ok(n) = shared.store.live_daemons(fresh).await {
                shared.peers.store(n.max(1), Ordering::Relaxed);
            }
        }
        Err(StoreError::Conflict(_)) | Err(StoreError::NotFound { .. }) => {
            // Declared dead (its heartbeats could not reach the database for
            // too long): its claims were rescued, so stop every call and come
            // back under a new id.
            tracing::warn!(daemon = %id, "this daemon was declared dead; re-registering");
            // Its slots no longer count either; requests waiting for one
            // were rescued with the rest and are dropped unsent.
            shared.slots.forget_grants();
            let waiting = shared.slots.drain_waiting();
            {
                let mut held = shared.held.lock().expect("held lock");
                for job in waiting {
                    held.remove(&job.req.id);
                }
                for h in held.values() {
                    h.abort.cancel();
                }
            }
            let config = shared.config.borrow().clone();
            if let Ok(new_id) = register(&shared.store, &config, stop).await {
                *shared.id.write().expect("id lock") = new_id;
                tracing::info!(daemon = %new_id, "registered again");
            }
        }
        // No heartbeat while the database is unreachable: it would be a lie.
        Err(e) => tracing::warn!(daemon = %id, error = %e, "heartbeat failed"),
    }
}

async fn check_leases<S: DaemonBackend>(shared: &Shared<S>) {
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
    match shared.store.lost_leases(shared.id(), &held).await {
        Ok(lost) => {
            let map = shared.held.lock().expect("held lock");
            for id in lost {
                if let Some(h) = map.get(&id) {
                    h.abort.cancel();
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "lease check failed"),
    }
}
