//! The claim loop: while slots are free and work is pending, claim and spawn.
//! It never sleeps a fixed time while work is claimable: it waits for a slot
//! to free, a notification of new work, or (for delayed retries and other
//! daemons' releases) a short poll.

use super::{DaemonBackend, DbBackoff, Held, Shared, executor};
use crate::store::{ClaimRequest, ModelDemand};
use futures_util::StreamExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How often to look for work that no notification announces (retries whose
/// delay ended, slots freed by other daemons).
const POLL: Duration = Duration::from_millis(100);

/// Builds the claim from the configuration and the slots in use.
fn demand<S>(shared: &Shared<S>, max_total: u32) -> ClaimRequest {
    let (config, _) = shared.current();
    let in_flight = shared.limiter.snapshot();
    let peers = shared.peers.load(Ordering::Relaxed).max(1);
    // This daemon's share of a limit; the claim statement still enforces the
    // whole limit across daemons.
    let share = |limit: u32| limit.div_ceil(peers);
    let mut names: Vec<&String> = config.models.keys().collect();
    names.extend(in_flight.keys().filter(|m| !config.models.contains_key(*m)));
    let models = names
        .into_iter()
        .map(|m| {
            let limit = config.route(m).concurrency;
            ModelDemand {
                model: m.clone(),
                limit,
                want: share(limit).saturating_sub(*in_flight.get(m).unwrap_or(&0)),
            }
        })
        .collect();
    ClaimRequest {
        daemon: shared.id(),
        models,
        default_limit: config.upstream.concurrency,
        default_want: share(config.upstream.concurrency),
        max_total,
    }
}

/// Claims and spawns until `shutdown` fires.
pub(super) async fn run<S: DaemonBackend>(
    shared: Arc<Shared<S>>,
    outcomes: UnboundedSender<executor::Outcome>,
    executors: TaskTracker,
    shutdown: CancellationToken,
) {
    let mut work = match shared.store.listen_for_work().await {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for new work; polling instead");
            None
        }
    };
    let mut backoff = DbBackoff::default();
    let (mut claims, mut claimed_rows) = (0u64, 0u64);
    while !shutdown.is_cancelled() {
        let max_total = shared.current().0.daemon.claim_batch;
        let claim = demand(&shared, max_total);
        let claimed = match shared.store.claim(&claim).await {
            Ok(c) => {
                backoff.reset();
                c
            }
            Err(e) => {
                tracing::warn!(error = %e, "claim failed; backing off");
                if !backoff.wait(&shutdown).await {
                    break;
                }
                continue;
            }
        };
        let n = claimed.len();
        claims += 1;
        claimed_rows += n as u64;
        for request in claimed {
            let abort = CancellationToken::new();
            shared.limiter.acquire(&request.model);
            shared.held.lock().expect("held lock").insert(
                request.id,
                Held {
                    attempt: request.attempt,
                    abort: abort.clone(),
                },
            );
            executors.spawn(executor::run(
                shared.clone(),
                request,
                abort,
                outcomes.clone(),
            ));
        }
        if n as u32 >= max_total {
            continue; // a full claim: more is probably waiting
        }
        let held = shared.limiter.total();
        tokio::select! {
            _ = shared.limiter.freed() => gather_frees(&shared.limiter, held).await,
            Some(_) = next_signal(&mut work) => {}
            _ = tokio::time::sleep(POLL) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    tracing::info!(claims, claimed_rows, "claim loop stopped");
}

/// Most time spent gathering freed slots into one claim.
const GATHER: Duration = Duration::from_millis(2);

/// After a slot frees, waits briefly for more, so that one claim statement
/// refills many slots: a claim costs the database about the same for one row
/// as for dozens. Waits for a sixteenth of the slots held, at most [`GATHER`].
async fn gather_frees(limiter: &super::limiter::Limiter, held: u32) {
    let enough = (held / 16).max(1);
    let until = tokio::time::Instant::now() + GATHER;
    while held.saturating_sub(limiter.total()) < enough {
        tokio::select! {
            _ = limiter.freed() => {}
            _ = tokio::time::sleep_until(until) => return,
        }
    }
}

async fn next_signal(work: &mut Option<crate::store::WorkSignals>) -> Option<()> {
    match work {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}
