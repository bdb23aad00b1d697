//! Liveness: a heartbeat every `daemon.heartbeat_ms`, sent from a thread of
//! its own with connections of its own, so that neither a daemon busy with
//! calls nor a runtime starved of CPU makes it late. When a heartbeat finds
//! the daemon declared dead, or none has gone through for so long that others
//! may declare it dead any moment, the daemon loses its standing (see
//! `standing`): it drops what it holds, waits for its calls to end, returns
//! its claims, and registers again. Its old slots still count against the
//! limits until the rescuers forget them, one stale window after its death.

use super::standing::abandon_all;
use super::{DaemonBackend, DbBackoff, Shared, register};
use crate::store::StoreError;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Starts the heartbeat thread; the returned receiver resolves when it ends
/// (after `stop` fires).
pub(super) fn spawn<S: DaemonBackend>(
    shared: Arc<Shared<S>>,
    registered: Instant,
    stop: CancellationToken,
) -> std::io::Result<tokio::sync::oneshot::Receiver<()>> {
    let (done, ended) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("fusillade-heartbeat".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the heartbeat's runtime");
                    return;
                }
            };
            rt.block_on(async move {
                // Made here, so its connections belong to this runtime.
                let store = shared.store.detached();
                run(&shared, &store, registered, &stop).await;
            });
            let _ = done.send(());
        })?;
    Ok(ended)
}

/// Why the daemon lost its standing.
enum Lost {
    /// A heartbeat found it declared dead (or unknown).
    DeclaredDead,
    /// No heartbeat went through in time.
    Silent(Duration),
}

async fn run<S: DaemonBackend>(
    shared: &Shared<S>,
    store: &S,
    registered: Instant,
    stop: &CancellationToken,
) {
    let mut last_ok = registered;
    let first = shared.config.borrow().daemon.stale_after / 2;
    shared.standing.beat_ok(registered, first);
    let mut next = tokio::time::Instant::now();
    loop {
        let daemon = shared.config.borrow().daemon.clone();
        next += daemon.heartbeat;
        // A beat that took longer than the period is followed at once, and
        // the schedule restarts from now (no burst of catch-up beats).
        let now = tokio::time::Instant::now();
        if next < now {
            next = now;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = stop.cancelled() => return,
        }
        // Stop every call before anyone may declare this daemon dead: one
        // heartbeat short of the stale window since the last beat that went
        // through (the window is at least three heartbeats, see `config`).
        let fence_at = last_ok + daemon.stale_after.saturating_sub(daemon.heartbeat);
        let sent = Instant::now();
        // A beat that goes through settles it either way, so even a thread
        // that woke up late gives it one period.
        let wait_until = fence_at.max(sent + daemon.heartbeat);
        let beat = tokio::select! {
            r = tokio::time::timeout_at(wait_until.into(), store.heartbeat(shared.id(), shared.stats())) => r,
            _ = stop.cancelled() => return,
        };
        let lost = match beat {
            Ok(Ok(())) => {
                last_ok = sent;
                shared.standing.beat_ok(sent, daemon.stale_after / 2);
                continue;
            }
            Ok(Err(StoreError::Conflict(_) | StoreError::NotFound { .. })) => Lost::DeclaredDead,
            // No heartbeat while the database is unreachable: it would be a
            // lie. Silence is only fatal once it lasts.
            Ok(Err(e)) if Instant::now() < fence_at => {
                tracing::warn!(daemon = %shared.id(), error = %e, "heartbeat failed");
                continue;
            }
            Ok(Err(e)) => {
                tracing::warn!(daemon = %shared.id(), error = %e, "heartbeat failed");
                Lost::Silent(last_ok.elapsed())
            }
            Err(_) => Lost::Silent(last_ok.elapsed()),
        };
        match recover(shared, store, lost, stop).await {
            Some(registered) => last_ok = registered,
            None => return,
        }
    }
}

/// Loses the standing and gets it back: drops everything, waits for the
/// calls to end, retires the old id (its claims back to the queue)
/// and registers again. Returns when the new registration was sent, or
/// `None` if `stop` fired first.
async fn recover<S: DaemonBackend>(
    shared: &Shared<S>,
    store: &S,
    lost: Lost,
    stop: &CancellationToken,
) -> Option<Instant> {
    let old = shared.id();
    match lost {
        Lost::DeclaredDead => {
            tracing::warn!(daemon = %old, "this daemon was declared dead; dropping its calls and registering again")
        }
        Lost::Silent(for_) => tracing::warn!(
            daemon = %old,
            silent_ms = for_.as_millis() as u64,
            "no heartbeat went through in time; dropping every call before this daemon is declared dead"
        ),
    }
    metrics::counter!("fusillade_daemon_standing_lost_total").increment(1);
    abandon_all(shared);
    // Its claims go back only once no call of it is left.
    tokio::select! {
        _ = shared.slots.idle() => {}
        _ = stop.cancelled() => return None,
    }
    let mut backoff = DbBackoff::default();
    loop {
        let retired = tokio::select! {
            r = store.retire_daemon(old) => r,
            _ = stop.cancelled() => return None,
        };
        match retired {
            Ok(requests) => {
                tracing::info!(daemon = %old, requests, "claims of the old id returned to the queue");
                break;
            }
            Err(e) => {
                tracing::warn!(daemon = %old, error = %e, "cannot retire the old id; retrying");
                if !backoff.wait(stop).await {
                    return None;
                }
            }
        }
    }
    let config = shared.config.borrow().clone();
    let registered = Instant::now();
    let new = register(store, &config, stop).await.ok()?;
    *shared.id.write().expect("id lock") = new;
    shared
        .standing
        .beat_ok(registered, config.daemon.stale_after / 2);
    shared.standing.restore();
    tracing::info!(daemon = %new, "registered again");
    Some(registered)
}
