//! One request: call the upstream, then decide (in `domain::retry`) what follows.

use super::abort::{Abort, AbortReason};
use super::coalesce::{self, Follower, Role};
use super::pack;
use super::slots::Job;
use super::{DaemonBackend, Shared, adaptive, jitter};
use crate::domain::batch::Coalesced;
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
        let owner = job.req.owner.clone();
        if let Some(until) = shared.routes.paused_until(&model) {
            // The upstream asked for a pause (here or to another daemon).
            tokio::select! {
                _ = tokio::time::sleep_until(until.into()) => {}
                _ = job.abort.fired() => {}
            }
        }
        match packing(&shared, &job) {
            Some((partners, params, inputs)) => {
                let mut jobs = vec![job];
                jobs.extend(partners);
                run_packed(&shared, jobs, &params, inputs, &outcomes).await;
            }
            None => run_one(&shared, job.req, job.abort, &outcomes).await,
        }
        match shared.slots.next_after(&model, &owner) {
            Some(next) => job = next,
            None => return,
        }
    }
}

/// Estimated tokens of an embeddings input.
fn est_tokens(input: &str) -> u64 {
    (input.len() as u64).div_ceil(4).max(1)
}

/// For a single-input embeddings line on a route that packs them: the
/// waiting lines of the same model, path and parameters taken to share its
/// call (none: it goes alone), the parameters, and every input in order.
fn packing<S>(shared: &Shared<S>, job: &Job) -> Option<(Vec<Job>, String, Vec<String>)> {
    let (config, _) = shared.current();
    let route = config.route(&job.req.model);
    if route.embeddings_pack < 2 {
        return None;
    }
    let first = pack::packable(&job.req.path, &job.req.body)?;
    let budget = route.embeddings_pack_tokens;
    let mut tokens = est_tokens(&first.input);
    let mut inputs = vec![first.input];
    let partners =
        shared
            .slots
            .take_waiting(&job.req.model, route.embeddings_pack as usize - 1, |r| {
                if r.path != job.req.path || r.endpoint != job.req.endpoint {
                    return Some(false);
                }
                match pack::packable(&r.path, &r.body) {
                    Some(p) if p.params == first.params => {
                        let t = est_tokens(&p.input);
                        if tokens + t > budget {
                            return None;
                        }
                        tokens += t;
                        inputs.push(p.input);
                        Some(true)
                    }
                    _ => Some(false),
                }
            });
    (!partners.is_empty()).then_some((partners, first.params, inputs))
}

/// Sends `jobs` (single-input embeddings lines, `inputs` theirs in order) as
/// one call and gives each line its own part of the answer. A refused call
/// (4xx) is split in two halves sent the same way, down to single lines, so
/// one bad input fails only its own line (at the cost of about two calls
/// per halving); any other failure is settled for each line by the retry
/// rules.
fn run_packed<'a, S: DaemonBackend>(
    shared: &'a Shared<S>,
    jobs: Vec<Job>,
    params: &'a str,
    inputs: Vec<String>,
    outcomes: &'a UnboundedSender<Outcome>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
    Box::pin(async move {
        if jobs.len() == 1 {
            let j = jobs.into_iter().next().expect("one job");
            return run_one(shared, j.req, j.abort, outcomes).await;
        }
        run_pack(shared, jobs, params, inputs, outcomes).await;
    })
}

/// The packed call of [`run_packed`], for two lines or more.
async fn run_pack<S: DaemonBackend>(
    shared: &Shared<S>,
    mut jobs: Vec<Job>,
    params: &str,
    mut inputs: Vec<String>,
    outcomes: &UnboundedSender<Outcome>,
) {
    let (config, client) = shared.current();
    if shared.monitor.tripped() {
        for j in jobs {
            settle_with(&config, j.req, &j.abort, None, HOLD, outcomes);
        }
        return;
    }
    let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    let body = pack::packed_body(params, &refs);
    let first = &jobs[0].req;
    let call = UpstreamRequest {
        request_id: first.id,
        batch_id: first.batch_id,
        custom_id: None,
        model: &first.model,
        path: &first.path,
        body: &body,
        endpoint_override: &first.endpoint,
        deadline: jobs.iter().filter_map(|j| j.req.deadline).min(),
    };
    let any_abort =
        futures_util::future::select_all(jobs.iter().map(|j| Box::pin(j.abort.fired())));
    let sent = std::time::Instant::now();
    let outcome = tokio::select! {
        biased;
        _ = any_abort => None,
        o = client.send_grouped(&call, None) => Some(o),
    };
    metrics::counter!("fusillade_packed_calls_total", "model" => first.model.clone()).increment(1);
    let model = first.model.clone();
    let Some(o) = outcome else {
        // One line was stopped: the others go back to the queue.
        count_call(&model, "released");
        for j in jobs {
            settle_with(&config, j.req, &j.abort, None, Duration::ZERO, outcomes);
        }
        return;
    };
    metrics::histogram!("fusillade_upstream_latency_seconds", "model" => first.model.clone())
        .record(sent.elapsed().as_secs_f64());
    if shared
        .monitor
        .record(|| called_url(&config, &jobs[0].req), &o)
    {
        count_call(&model, "released");
        for j in jobs {
            settle_with(&config, j.req, &j.abort, None, HOLD, outcomes);
        }
        return;
    }
    match &o {
        CallOutcome::Answered {
            status,
            body,
            upstream_request_id,
            ..
        } if (200..300).contains(status) => {
            let Some(parts) = pack::split(body, &refs) else {
                count_call(&model, "failed");
                return one_by_one(shared, jobs, outcomes).await;
            };
            count_call(&model, "completed");
            for (j, part) in jobs.into_iter().zip(parts) {
                let write = match j.abort.reason() {
                    Some(AbortReason::Abandoned) => continue,
                    Some(AbortReason::Cancelled) => cancelled(&j.req),
                    _ => Outcome::Finish(Finished {
                        id: j.req.id,
                        attempt: j.req.attempt,
                        state: RequestState::Completed,
                        status_code: Some(i32::from(*status)),
                        upstream_request_id: upstream_request_id.clone(),
                        usage: crate::domain::usage::usage_of(&part),
                        body: Some(part),
                        error: None,
                        coalesced: Some(Coalesced::Packed),
                    }),
                };
                if let Outcome::Finish(f) = &write
                    && f.coalesced.is_some()
                {
                    count_coalesced(&j.req.model, Coalesced::Packed);
                }
                let _ = outcomes.send(write);
            }
        }
        CallOutcome::Answered { status, .. }
            if (400..500).contains(status) && !matches!(status, 408 | 409 | 429) =>
        {
            count_call(&model, "failed");
            let half = jobs.len() / 2;
            let (later_jobs, later_inputs) = (jobs.split_off(half), inputs.split_off(half));
            run_packed(shared, jobs, params, inputs, outcomes).await;
            run_packed(shared, later_jobs, params, later_inputs, outcomes).await;
        }
        _ => {
            // The call counts as what its lines' rules made of it.
            let mut label = None;
            for j in jobs {
                let write = settled(&config, j.req, &j.abort, Some(o.clone()), Duration::ZERO);
                label = label.or(write.as_ref().map(label_of));
                if let Some(w) = write {
                    let _ = outcomes.send(w);
                }
            }
            count_call(&model, label.unwrap_or("abandoned"));
        }
    }
}

/// Sends each line alone, one after another, in the slot the pack held.
async fn one_by_one<S: DaemonBackend>(
    shared: &Shared<S>,
    jobs: Vec<Job>,
    outcomes: &UnboundedSender<Outcome>,
) {
    for j in jobs {
        run_one(shared, j.req, j.abort, outcomes).await;
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
    let grouped = config.daemon.prefix_grouping;
    let key = if config.route(&req.model).coalesce {
        coalesce::key(&req)
    } else {
        None
    };
    let (req, abort) = match &key {
        None => (req, abort),
        Some(k) => match shared.coalescer.begin(k, req, abort) {
            (Role::Leader, Some(mine)) => mine,
            (Role::Answered(answered), _) => {
                let (f, o) = *answered;
                settle_follower(&config, f, Some(o), outcomes);
                return;
            }
            // Joined: its twin's call settles it.
            _ => return,
        },
    };
    let call = UpstreamRequest {
        request_id: req.id,
        batch_id: req.batch_id,
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
        o = client.send_grouped(&call, grouped.then_some(req.prefix_key)) => Ok(o),
    };
    if let Ok(o) = &outcome {
        let took = sent.elapsed();
        shared.slots.observe(&req.model, took);
        adapt(shared, &config, &req.model, o, took);
        metrics::histogram!("fusillade_upstream_latency_seconds", "model" => req.model.clone())
            .record(took.as_secs_f64());
    }
    // What twins waiting on this call are given (nothing: they go back to
    // the queue).
    let mut handed: Option<CallOutcome> = None;
    // This daemon lost its standing while the call ran: its claim is the
    // queue's again, and whatever came back is dropped unwritten.
    if abort.reason() == Some(AbortReason::Abandoned) {
        shared.abandoned.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("fusillade_upstream_requests_total", "model" => req.model.clone(), "outcome" => "abandoned")
            .increment(1);
        hand_on(shared, &config, key.as_deref(), None, outcomes);
        return;
    }
    let write = match outcome {
        Err(AbortReason::Abandoned) => {
            hand_on(shared, &config, key.as_deref(), None, outcomes);
            return; // counted above
        }
        Err(AbortReason::Released) => Outcome::Requeue(Requeue {
            id: req.id,
            attempt: req.attempt,
            delay: Duration::ZERO,
            is_retry: false,
        }),
        // The batch is being cancelled (or the lease is gone, in which case
        // this guarded write is simply rejected).
        Err(AbortReason::Cancelled) => cancelled(&req),
        Ok(o) if shared.monitor.record(|| called_url(&config, &req), &o) => {
            Outcome::Requeue(Requeue {
                id: req.id,
                attempt: req.attempt,
                delay: HOLD,
                is_retry: false,
            })
        }
        Ok(o) => {
            if key.is_some() {
                handed = Some(o.clone());
            }
            decided(&config, &req, o)
        }
    };
    hand_on(shared, &config, key.as_deref(), handed, outcomes);
    count_call(&req.model, label_of(&write));
    // The completer outlives every executor; a send error means it crashed.
    let _ = outcomes.send(write);
}

/// Takes an answer into the route's adaptive limit and pause.
fn adapt<S: DaemonBackend>(
    shared: &Shared<S>,
    config: &crate::config::Config,
    model: &str,
    outcome: &CallOutcome,
    took: Duration,
) {
    let CallOutcome::Answered {
        status,
        retry_after,
        ..
    } = outcome
    else {
        return;
    };
    let peers = shared.peers.load(Ordering::Relaxed).max(1);
    let ceiling = config.route(model).concurrency.div_ceil(peers);
    let in_flight = shared.slots.in_flight_of(model);
    if let Some(cut) = shared
        .routes
        .record(model, ceiling, *status, took, in_flight)
    {
        tracing::debug!(
            model,
            limit = cut,
            "upstream refused a call: route limit cut"
        );
        shared.slots.lower(model, cut);
    }
    if let (429 | 503, Some(pause)) = (*status, retry_after)
        && !pause.is_zero()
    {
        adaptive::pause_everywhere(shared, model, *pause);
    }
}

/// Ends a leader's call in the coalescer and settles its twins with
/// `outcome` (`None`: the call gave nothing to share).
fn hand_on<S>(
    shared: &Shared<S>,
    config: &crate::config::Config,
    key: Option<&str>,
    outcome: Option<CallOutcome>,
    outcomes: &UnboundedSender<Outcome>,
) {
    let Some(key) = key else { return };
    for f in shared.coalescer.end(key, outcome.as_ref()) {
        settle_follower(config, f, outcome.clone(), outcomes);
    }
}

/// The `outcome` label of a call whose request is written as `write`.
fn label_of(write: &Outcome) -> &'static str {
    match write {
        Outcome::Requeue(r) if r.is_retry => "retried",
        Outcome::Requeue(_) => "released",
        Outcome::Finish(f) => f.state.as_str(),
    }
}

/// Counts one upstream call (a packed one too: once) by its outcome.
fn count_call(model: &str, label: &'static str) {
    metrics::counter!("fusillade_upstream_requests_total", "model" => model.to_owned(), "outcome" => label)
        .increment(1);
    if label == "retried" {
        metrics::counter!("fusillade_retries_total", "model" => model.to_owned()).increment(1);
    }
}

/// Counts a line completed by a call it shared.
fn count_coalesced(model: &str, kind: Coalesced) {
    let kind = match kind {
        Coalesced::Identical => "identical",
        Coalesced::Packed => "packed",
    };
    metrics::counter!("fusillade_coalesced_lines_total", "model" => model.to_owned(), "kind" => kind)
        .increment(1);
}

/// Settles a request that was not sent alone: with `outcome` by the retry
/// rules (without usage), or, with none, back to the queue after `delay`;
/// its own abort comes first.
fn settle_with(
    config: &crate::config::Config,
    req: ClaimedRequest,
    abort: &Abort,
    outcome: Option<CallOutcome>,
    delay: Duration,
    outcomes: &UnboundedSender<Outcome>,
) {
    if let Some(write) = settled(config, req, abort, outcome, delay) {
        let _ = outcomes.send(write);
    }
}

/// The write [`settle_with`] sends (none for a request whose daemon lost
/// its standing).
fn settled(
    config: &crate::config::Config,
    req: ClaimedRequest,
    abort: &Abort,
    outcome: Option<CallOutcome>,
    delay: Duration,
) -> Option<Outcome> {
    let req = &req;
    let write = match (abort.reason(), outcome) {
        (Some(AbortReason::Abandoned), _) => return None,
        (Some(AbortReason::Cancelled), _) => cancelled(req),
        (Some(AbortReason::Released), _) => Outcome::Requeue(Requeue {
            id: req.id,
            attempt: req.attempt,
            delay: Duration::ZERO,
            is_retry: false,
        }),
        (None, None) => Outcome::Requeue(Requeue {
            id: req.id,
            attempt: req.attempt,
            delay,
            is_retry: false,
        }),
        (None, Some(o)) => {
            let mut w = decided(config, req, o);
            if let Outcome::Finish(done) = &mut w {
                done.usage = None;
            }
            w
        }
    };
    Some(write)
}

/// Settles a request that was not sent, with its twin's outcome: the same
/// rules as its own call's, but no usage (the upstream billed the twin).
fn settle_follower(
    config: &crate::config::Config,
    f: Follower,
    outcome: Option<CallOutcome>,
    outcomes: &UnboundedSender<Outcome>,
) {
    let model = f.req.model.clone();
    let Some(mut write) = settled(config, f.req, &f.abort, outcome, Duration::ZERO) else {
        return;
    };
    if let Outcome::Finish(done) = &mut write
        && done.state == RequestState::Completed
    {
        done.coalesced = Some(Coalesced::Identical);
        count_coalesced(&model, Coalesced::Identical);
    }
    let _ = outcomes.send(write);
}

/// A request whose batch is being cancelled.
fn cancelled(req: &ClaimedRequest) -> Outcome {
    Outcome::Finish(Finished {
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
        coalesced: None,
    })
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

/// The write for `o`, the outcome of `req`'s call, by the retry rules.
fn decided(config: &crate::config::Config, req: &ClaimedRequest, o: CallOutcome) -> Outcome {
    let deadline = req
        .deadline
        .unwrap_or_else(|| Utc::now() + chrono::Duration::days(3650));
    let attempt_no = req.retries.max(0) as u32 + 1;
    let decision =
        config
            .daemon
            .retry
            .decide(&o.attempt(), attempt_no, Utc::now(), deadline, jitter());
    decide_write(req, o, decision)
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
                coalesced: None,
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
                coalesced: None,
            })
        }
    }
}
