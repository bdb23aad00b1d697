//! One request: call the upstream, then decide (in `domain::retry`) what follows.

use super::abort::{Abort, AbortReason};
use super::slots::Job;
use super::{DaemonBackend, Shared, jitter};
use crate::domain::output::{ResultError, codes};
use crate::domain::request::RequestState;
use crate::domain::retry::{Decision, FailReason};
use crate::store::{ClaimedRequest, Finished, Requeue};
use crate::upstream::{CallOutcome, UpstreamRequest};
use chrono::Utc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;

/// What the completer must write for one request.
#[derive(Debug)]
pub(super) enum Outcome {
    /// A final result.
    Finish(Finished),
    /// Back to pending (a retry or a release).
    Requeue(Requeue),
}

/// Runs a claimed request in a slot, sends its outcome to the completer,
/// and goes on with the next request waiting for the slot, if any.
pub(super) async fn run<S: DaemonBackend>(
    shared: Arc<Shared<S>>,
    job: Job,
    outcomes: UnboundedSender<Outcome>,
) {
    let mut job = job;
    loop {
        let model = job.req.model.clone();
        run_one(&shared, job.req, job.abort, &outcomes).await;
        match shared.slots.next_after(&model) {
            Some(next) => job = next,
            None => return,
        }
    }
}

/// Runs one claimed request and sends its outcome to the completer.
async fn run_one<S: DaemonBackend>(
    shared: &Shared<S>,
    req: ClaimedRequest,
    abort: Abort,
    outcomes: &UnboundedSender<Outcome>,
) {
    if abort.reason() == Some(AbortReason::Abandoned) {
        return; // dropped before it started: nothing was sent, nothing is written
    }
    if shared.monitor.tripped() {
        // The upstream was judged broken: the line waits for the next run.
        let _ = outcomes.send(Outcome::Requeue(Requeue {
            id: req.id,
            attempt: req.attempt,
            delay: HOLD,
            is_retry: false,
        }));
        return;
    }
    let (config, client) = shared.current();
    let call = UpstreamRequest {
        request_id: req.id,
        custom_id: req.custom_id.as_deref(),
        model: &req.model,
        path: &req.path,
        body: &req.body,
        endpoint_override: &req.endpoint,
        deadline: req.deadline,
    };
    let sent = std::time::Instant::now();
    let outcome = tokio::select! {
        // A switch thrown before the call starts stops it before it is sent.
        biased;
        why = abort.fired() => Err(why),
        o = client.send(&call) => Ok(o),
    };
    if outcome.is_ok() {
        metrics::histogram!("fusillade_upstream_latency_seconds", "model" => req.model.clone())
            .record(sent.elapsed().as_secs_f64());
    }
    // This daemon lost its standing while the call ran: its claim is the
    // queue's again, and whatever came back is dropped unwritten.
    if abort.reason() == Some(AbortReason::Abandoned) {
        shared.abandoned.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("fusillade_upstream_requests_total", "model" => req.model.clone(), "outcome" => "abandoned")
            .increment(1);
        return;
    }
    let write = match outcome {
        Err(AbortReason::Abandoned) => return, // counted above
        Err(AbortReason::Released) => Outcome::Requeue(Requeue {
            id: req.id,
            attempt: req.attempt,
            delay: Duration::ZERO,
            is_retry: false,
        }),
        // The batch is being cancelled (or the lease is gone, in which case
        // this guarded write is simply rejected).
        Err(AbortReason::Cancelled) => Outcome::Finish(Finished {
            id: req.id,
            attempt: req.attempt,
            state: RequestState::Canceled,
            status_code: None,
            upstream_request_id: None,
            body: None,
            error: Some(ResultError::new(
                codes::BATCH_CANCELLED,
                "the batch was cancelled while this request was running",
            )),
            usage: None,
        }),
        Ok(o) if shared.monitor.record(|| called_url(&config, &req), &o) => {
            Outcome::Requeue(Requeue {
                id: req.id,
                attempt: req.attempt,
                delay: HOLD,
                is_retry: false,
            })
        }
        Ok(o) => {
            let deadline = req
                .deadline
                .unwrap_or_else(|| Utc::now() + chrono::Duration::days(3650));
            let attempt_no = req.retries.max(0) as u32 + 1;
            let decision = config.daemon.retry.decide(
                &o.attempt(),
                attempt_no,
                Utc::now(),
                deadline,
                jitter(),
            );
            decide_write(&req, o, decision)
        }
    };
    let (label, retried) = match &write {
        Outcome::Requeue(r) if r.is_retry => ("retried", true),
        Outcome::Requeue(_) => ("released", false),
        Outcome::Finish(f) => (f.state.as_str(), false),
    };
    metrics::counter!("fusillade_upstream_requests_total", "model" => req.model.clone(), "outcome" => label)
        .increment(1);
    if retried {
        metrics::counter!("fusillade_retries_total", "model" => req.model.clone()).increment(1);
    }
    // The completer outlives every executor; a send error means it crashed.
    let _ = outcomes.send(write);
}

/// How long a call held back by the monitor waits before it may be claimed
/// again (the owner normally stops the daemon well before).
const HOLD: Duration = Duration::from_secs(1);

/// The full URL a request is sent to, for messages.
fn called_url(config: &crate::config::Config, req: &ClaimedRequest) -> String {
    let base = if req.endpoint.is_empty() {
        config.route(&req.model).url.as_str()
    } else {
        req.endpoint.as_str()
    };
    let slash = if req.path.starts_with('/') { "" } else { "/" };
    format!("{}{slash}{}", base.trim_end_matches('/'), req.path)
}

fn decide_write(req: &ClaimedRequest, o: CallOutcome, decision: Decision) -> Outcome {
    match decision {
        Decision::RetryAfter(delay) => Outcome::Requeue(Requeue {
            id: req.id,
            attempt: req.attempt,
            delay,
            is_retry: true,
        }),
        Decision::Complete => {
            let CallOutcome::Answered {
                status,
                body,
                upstream_request_id,
                ..
            } = o
            else {
                unreachable!("only an answer completes")
            };
            Outcome::Finish(Finished {
                id: req.id,
                attempt: req.attempt,
                state: RequestState::Completed,
                status_code: Some(i32::from(status)),
                upstream_request_id,
                usage: crate::domain::usage::usage_of(&body),
                body: Some(body),
                error: None,
            })
        }
        Decision::Fail(reason) => {
            let why = match reason {
                FailReason::Fatal => "",
                FailReason::RetriesExhausted => " (retries exhausted)",
                FailReason::DeadlineTooClose => " (a retry would pass the batch deadline)",
            };
            let (status_code, upstream_request_id, body, error) = match o {
                CallOutcome::Answered {
                    status,
                    body,
                    upstream_request_id,
                    ..
                } => (
                    Some(i32::from(status)),
                    upstream_request_id,
                    Some(body),
                    ResultError::new(
                        codes::UPSTREAM_ERROR,
                        format!("the upstream answered HTTP {status}{why}"),
                    ),
                ),
                // The batch's deadline cut the call short: the line expired.
                CallOutcome::TimedOut { phase: "deadline" } => (
                    None,
                    None,
                    None,
                    ResultError::new(
                        codes::BATCH_EXPIRED,
                        "the batch's completion window ended before this request finished",
                    ),
                ),
                CallOutcome::TimedOut { phase } => (
                    None,
                    None,
                    None,
                    ResultError::new(
                        codes::REQUEST_TIMEOUT,
                        format!("the upstream did not answer in time ({phase} timeout){why}"),
                    ),
                ),
                CallOutcome::ConnectionFailed { message } => (
                    None,
                    None,
                    None,
                    ResultError::new(
                        codes::CONNECTION_ERROR,
                        format!("could not reach the upstream: {message}{why}"),
                    ),
                ),
                CallOutcome::BodyTooLarge { limit } => (
                    None,
                    None,
                    None,
                    ResultError::new(
                        codes::UPSTREAM_ERROR,
                        format!("the upstream's answer was larger than {limit} bytes"),
                    ),
                ),
            };
            Outcome::Finish(Finished {
                id: req.id,
                attempt: req.attempt,
                state: RequestState::Failed,
                status_code,
                upstream_request_id,
                body,
                error: Some(error),
                usage: None,
            })
        }
    }
}
