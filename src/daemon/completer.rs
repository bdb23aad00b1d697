//! Outcomes are written many per statement: one `finish` and one `requeue`
//! for everything that arrived while the previous write ran. A row the
//! database refuses is split off and failed alone ([`Settlement`]); other
//! database errors are retried with backoff.

use super::executor::Outcome;
use super::{DaemonBackend, DbBackoff, Shared};
use crate::domain::request::RequestState;
use crate::store::{RefusedEnd, Settled, Settlement};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;

/// Most outcomes written by one statement.
const MAX_BATCH: usize = 1024;

/// After the first outcome, how long more are gathered into the same write:
/// every statement (and its commit) costs the database about as much for
/// one row as for dozens, and no slot waits for the write (slots are handed
/// on when the call ends), so a few milliseconds of delay cost nothing.
const GATHER: Duration = Duration::from_millis(10);

/// Outcomes that end the gathering early.
const GATHER_ENOUGH: usize = 512;

/// Body bytes that end the gathering: a statement stays far below the
/// 1 GiB a PostgreSQL message may carry, whatever the answers' sizes.
const MAX_BODY_BYTES: usize = 64 << 20;

/// After shutdown, how long a failing database is retried before the
/// remaining outcomes are given up (their leases then expire and other
/// daemons redo the requests: nothing is lost, some work is repeated).
const GIVE_UP_AFTER_SHUTDOWN: Duration = Duration::from_secs(15);

/// Writes outcomes until every executor is gone.
pub(super) async fn run<S: DaemonBackend>(
    shared: Arc<Shared<S>>,
    mut rx: UnboundedReceiver<Outcome>,
    shutdown: CancellationToken,
) {
    let mut batch: Vec<Outcome> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.recv().await {
        let mut bytes = body_len(&first);
        batch.push(first);
        let until = tokio::time::Instant::now() + GATHER;
        while batch.len() < GATHER_ENOUGH && bytes < MAX_BODY_BYTES {
            match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Some(o)) => {
                    bytes += body_len(&o);
                    batch.push(o);
                }
                Ok(None) | Err(_) => break,
            }
        }
        while batch.len() < MAX_BATCH && bytes < MAX_BODY_BYTES {
            match rx.try_recv() {
                Ok(o) => {
                    bytes += body_len(&o);
                    batch.push(o);
                }
                Err(_) => break,
            }
        }
        write(&shared, &mut batch, &shutdown).await;
    }
}

fn body_len(o: &Outcome) -> usize {
    match o {
        Outcome::Finish(f) => f.body.as_ref().map_or(0, Vec::len),
        Outcome::Requeue(_) => 0,
    }
}

async fn write<S: DaemonBackend>(
    shared: &Shared<S>,
    batch: &mut Vec<Outcome>,
    shutdown: &CancellationToken,
) {
    // Moved out, not cloned: the bodies are the bulk of the bytes.
    let mut finishes = Vec::new();
    let mut requeues = Vec::new();
    let mut ids = Vec::with_capacity(batch.len());
    for o in batch.drain(..) {
        match o {
            Outcome::Finish(f) => {
                ids.push(f.id);
                finishes.push(f);
            }
            Outcome::Requeue(r) => {
                ids.push(r.id);
                requeues.push(r);
            }
        }
    }
    let mut settlement = Settlement::new(finishes, requeues);
    let mut backoff = DbBackoff::default();
    let never = CancellationToken::new();
    let mut gave_up_at = None;
    loop {
        match settlement.resume(&shared.store).await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(error = %e, outcomes = settlement.remaining(), "writing outcomes failed; retrying");
                if shutdown.is_cancelled() {
                    let since = *gave_up_at.get_or_insert_with(std::time::Instant::now);
                    if since.elapsed() > GIVE_UP_AFTER_SHUTDOWN {
                        tracing::error!(
                            outcomes = settlement.remaining(),
                            "giving up on writing outcomes; their leases will expire"
                        );
                        break;
                    }
                }
                backoff.wait(&never).await;
            }
        }
    }
    let settled = settlement.into_settled();
    count(shared, &settled);
    shared.filled.add(&settled.filled);
    // Leases are checked until the database has the outcome.
    let mut held = shared.held.lock().expect("held lock");
    for id in ids {
        held.remove(&id);
    }
}

/// Counts what was written, and reports refused rows.
fn count<S>(shared: &Shared<S>, settled: &Settled) {
    for (_, state) in &settled.finished {
        let counter = if *state == RequestState::Completed {
            &shared.done
        } else {
            &shared.failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
    for r in &settled.refused {
        metrics::counter!("fusillade_rejected_rows_total", "write" => r.write.as_str())
            .increment(1);
        let then = match r.end {
            RefusedEnd::FailedInstead => "the request was failed instead",
            RefusedEnd::LeaseLost => "its lease was gone meanwhile",
            RefusedEnd::GivenUp => "failing the request was refused too: it is given up",
        };
        tracing::error!(request = %r.id, write = r.write.as_str(), reason = %r.reason,
            "the database refused this request's row; {then}");
    }
}
