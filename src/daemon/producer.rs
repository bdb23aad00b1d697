//! The claim loop: keeps every model with work supplied with slots and with
//! claimed requests waiting for them, and starts calls as slots allow. It
//! never sleeps a fixed time while work is claimable: it waits for the
//! waiting requests to run low, a notification of new work, or (for delayed
//! retries and other daemons' releases) a short poll.

use super::abort::Abort;
use super::slots::Job;
use super::{DaemonBackend, DbBackoff, Held, Shared, escalate, executor};
use crate::store::{ClaimRequest, ModelDemand, RoutedAttempt};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How often to look for work that no notification announces (retries whose
/// delay ended, slots freed by other daemons).
const POLL: Duration = Duration::from_millis(100);

/// How often a claim looks for owners to catch up in models it asks
/// nothing of (see `domain::schedule`, rule 4): that reads every owner's
/// load, which a claim of nothing otherwise skips.
const CATCH_UP: Duration = POLL;

/// Builds the claim from the configuration and this daemon's slots.
fn demand<S>(shared: &Shared<S>, max_total: u32, catch_up: bool) -> ClaimRequest {
    let (config, _) = shared.current();
    let peers = shared.peers.load(Ordering::Relaxed).max(1);
    // This daemon's fair share of a limit; the database keeps the sum of
    // all daemons' slots within the whole limit.
    let share = |limit: u32| limit.div_ceil(peers);
    // Under that, the route's adaptive limit (see `adaptive`).
    let own = |model: &str| {
        let share = share(config.route(model).concurrency);
        share.min(shared.routes.limit(model, share))
    };
    let local: HashMap<String, _> = shared.slots.prepare_claim(own).into_iter().collect();
    let mut schedule = config.schedule();
    shared.slots.set_weights(schedule.weights.clone());
    schedule.catch_up = catch_up;
    schedule.call_times = local
        .iter()
        .filter_map(|(m, s)| Some((m.clone(), s.call_time?)))
        .collect();
    let mut names: Vec<&String> = config.models.keys().collect();
    names.extend(local.keys().filter(|m| !config.models.contains_key(*m)));
    let models = names
        .into_iter()
        .map(|m| {
            let route = config.route(m);
            let limit = route.concurrency;
            let state = local.get(m).copied().unwrap_or_default();
            // Embeddings lines may go many to a call: claim for that many.
            let per_call = if state.embeddings {
                route.embeddings_pack
            } else {
                1
            };
            ModelDemand {
                model: m.clone(),
                limit,
                share: own(m),
                in_flight: state.in_flight,
                waiting: state.waiting.div_ceil(per_call),
                per_call,
            }
        })
        .collect();
    ClaimRequest {
        daemon: shared.id(),
        models,
        default_limit: config.upstream.concurrency,
        default_share: share(config.upstream.concurrency),
        max_total,
        scope: shared.scope,
        grouped: config.daemon.prefix_grouping,
        schedule,
    }
}

/// Claims and starts calls until `shutdown` fires.
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
    let mut last_catch_up: Option<std::time::Instant> = None;
    while !shutdown.is_cancelled() {
        if shared.standing.is_fenced() {
            // Lost its standing: nothing is claimed until registered again.
            tokio::select! {
                _ = shared.standing.restored() => {}
                _ = shutdown.cancelled() => break,
            }
            continue;
        }
        fall_back(&shared, &outcomes, &executors).await;
        let generation = shared.standing.generation();
        let max_total = shared.current().0.daemon.claim_batch;
        let catch_up = last_catch_up.is_none_or(|t| t.elapsed() >= CATCH_UP);
        if catch_up {
            last_catch_up = Some(std::time::Instant::now());
        }
        let request = demand(&shared, max_total, catch_up);
        let claim = match shared.store.claim(&request).await {
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
        let n = claim.requests.len();
        // The share of the next claim follows daemons that came or went
        // since (heartbeats also refresh it, less often).
        shared.peers.store(claim.peers.max(1), Ordering::Relaxed);
        claims += 1;
        claimed_rows += n as u64;
        let mut jobs: Vec<Job> = claim
            .requests
            .into_iter()
            .map(|req| Job {
                req,
                abort: Abort::new(),
                escalated: None,
            })
            .collect();
        // Where each attempt goes is written before any of them can start
        // (and end, which moves its record into the results).
        let routes = escalate::decide(
            &shared.current().0.escalations,
            &mut jobs,
            chrono::Utc::now(),
        );
        record(&shared, &routes).await;
        let start = {
            let mut held = shared.held.lock().expect("held lock");
            if shared.standing.generation() != generation {
                // The daemon lost its standing while this claim ran: its
                // requests go back to the queue with the old id's other
                // claims, unsent. (Checked under the held lock, which
                // `standing::abandon_all` takes after voiding claims.)
                tracing::debug!(requests = n, "claim voided by the lost standing");
                continue;
            }
            for job in &jobs {
                held.insert(
                    job.req.id,
                    Held {
                        attempt: job.req.attempt,
                        abort: job.abort.clone(),
                    },
                );
            }
            shared.slots.refill(&claim.slots, jobs)
        };
        for job in start {
            executors.spawn(executor::run(shared.clone(), job, outcomes.clone()));
        }
        if n as u32 >= max_total {
            continue; // a full claim: more is probably waiting
        }
        // Fewer than asked: the queue is empty for now, so only new work (or
        // the poll) is worth another claim, not every call that ends. (None
        // asked means enough requests wait: claim again when they run low.)
        let ran_dry = (n as u32) < claim.asked;
        tokio::select! {
            _ = shared.slots.low(), if !ran_dry => {}
            Some(_) = next_signal(&mut work) => {}
            _ = tokio::time::sleep(POLL) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    tracing::info!(claims, claimed_rows, "claim loop stopped");
}

/// Sends escalated requests that waited too long for their new model's
/// slots back to their own model (see `escalate`), and starts those its
/// slots allow.
async fn fall_back<S: DaemonBackend>(
    shared: &Arc<Shared<S>>,
    outcomes: &UnboundedSender<executor::Outcome>,
    executors: &TaskTracker,
) {
    let mut back = shared.slots.overdue_escalations(std::time::Instant::now());
    if back.is_empty() {
        return;
    }
    let routes = escalate::fall_back(&mut back);
    // Recorded before they can start, as at the claim.
    record(shared, &routes).await;
    for job in shared.slots.refill(&[], back) {
        executors.spawn(executor::run(shared.clone(), job, outcomes.clone()));
    }
}

/// Records where attempts are sent. A failed write is logged, not retried:
/// the call is made either way.
async fn record<S: DaemonBackend>(shared: &Shared<S>, routes: &[RoutedAttempt]) {
    if let Err(e) = shared.store.record_routes(routes).await {
        tracing::warn!(error = %e, attempts = routes.len(), "cannot record routed models");
    }
}

async fn next_signal(work: &mut Option<crate::store::WorkSignals>) -> Option<()> {
    match work {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}
