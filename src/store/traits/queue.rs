//! The daemon's hot path as every backend offers it: claim many requests,
//! then settle many. Every write after the claim names the claim's attempt
//! (its lease), so a daemon that lost its lease finds its late writes
//! rejected rather than applied.

use crate::domain::batch::BatchId;
use crate::domain::ids::{DaemonId, TemplateId};
use crate::domain::output::ResultError;
use crate::domain::request::{RequestId, RequestState};
use crate::domain::schedule::Schedule;
use crate::domain::usage::Usage;
use crate::store::Result;
use chrono::{DateTime, Utc};
use std::future::Future;
use std::time::Duration;

/// One model as a daemon sees it when it claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelDemand {
    /// The model.
    pub model: String,
    /// Its global limit: most calls at once across all daemons.
    pub limit: u32,
    /// The slots this daemon aims to hold while the model has work (its
    /// fair share of the limit).
    pub share: u32,
    /// Calls of it this daemon is making now: the slots it holds never go
    /// below this.
    pub in_flight: u32,
    /// Requests of it this daemon has claimed and not yet sent, in calls
    /// (see `per_call`).
    pub waiting: u32,
    /// Requests one call takes (1, or more for embeddings lines sent many
    /// to a call): the claim takes this many per call it wants.
    pub per_call: u32,
}

/// What a claim asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRequest {
    /// The claiming daemon.
    pub daemon: DaemonId,
    /// Models with their own limits, and every model this daemon holds
    /// slots or requests of.
    pub models: Vec<ModelDemand>,
    /// Limit of every other model.
    pub default_limit: u32,
    /// Share of every other model.
    pub default_share: u32,
    /// Most requests claimed by this one statement.
    pub max_total: u32,
    /// Claim only requests of this batch (`fusillade run`); `None` claims
    /// every batch's work.
    pub scope: Option<BatchId>,
    /// Take requests in prefix-group order within each model and deadline
    /// (see `domain::prefix`), so calls sharing a prompt prefix run close
    /// together; `false` takes them in line order (for comparison: the
    /// shared claim then sorts each deadline's pending rows).
    pub grouped: bool,
    /// How each model's requests are shared between owners (weights, caps,
    /// and the call times deadline urgency is judged by; see
    /// `domain::schedule`). Scoped claims take one batch and ignore it.
    pub schedule: Schedule,
}

/// What a claim returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claim {
    /// Slots this daemon may use now, per model it asked about or found
    /// work for: it may make that many calls of the model at once. (While
    /// calls beyond its share still run it holds more, and uses them up.)
    pub slots: Vec<(String, u32)>,
    /// The requests claimed, earliest deadline first within each model.
    pub requests: Vec<ClaimedRequest>,
    /// How many requests were asked for: fewer claimed means the queue had
    /// no more to give.
    pub asked: u32,
    /// Running daemons (this one included), for the next share.
    pub peers: u32,
}

/// A claimed request with what is needed to send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedRequest {
    /// The request.
    pub id: RequestId,
    /// Its batch.
    pub batch_id: Option<BatchId>,
    /// Its template.
    pub template_id: TemplateId,
    /// The lease: later writes must name this attempt.
    pub attempt: i32,
    /// Retries already made.
    pub retries: i32,
    /// The model it is routed by.
    pub model: String,
    /// The caller's id.
    pub custom_id: Option<String>,
    /// The batch deadline, if any.
    pub deadline: Option<DateTime<Utc>>,
    /// The endpoint path, e.g. `/v1/chat/completions`.
    pub path: String,
    /// The body to send, as written in the input.
    pub body: String,
    /// A base URL that overrides the configured route ("" for none).
    pub endpoint: String,
    /// Its prompt's prefix group (see `domain::prefix`): replicas are chosen by it.
    pub prefix_key: i64,
    /// Its batch's owner ("" when auth is off, or for a request without a
    /// batch): the daemon shares its slots between owners by it.
    pub owner: String,
}

/// The final result of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// The request.
    pub id: RequestId,
    /// The attempt that produced the result.
    pub attempt: i32,
    /// The terminal state: `Completed` goes to the output file, `Failed` and
    /// `Canceled` to the error file.
    pub state: RequestState,
    /// The upstream's status, when it answered.
    pub status_code: Option<i32>,
    /// The upstream's request id header.
    pub upstream_request_id: Option<String>,
    /// The upstream's body, when it answered: its bytes as received,
    /// whatever they are (stored as text when text can hold them, else as
    /// bytes; see migrations/0006_result_body_bytes.sql).
    pub body: Option<Vec<u8>>,
    /// Why it failed, when it did.
    pub error: Option<ResultError>,
    /// Tokens the answer reports, added to the batch's totals.
    pub usage: Option<Usage>,
    /// Set when the answer came from a call the line shared (counted in the
    /// batch's `coalesced` when the line completed).
    pub coalesced: Option<crate::domain::batch::Coalesced>,
}

/// What one finish wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FinishReport {
    /// The requests whose lease still held: their results are written.
    pub accepted: Vec<RequestId>,
    /// Batches whose counters now hold every request: each one's last
    /// result was among these.
    pub filled: Vec<BatchId>,
}

/// A request going back to pending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requeue {
    /// The request.
    pub id: RequestId,
    /// The attempt that ends.
    pub attempt: i32,
    /// Claimable again after this delay.
    pub delay: Duration,
    /// Whether this is a retry (counted against max_retries) or a release.
    pub is_retry: bool,
}

/// Claiming and settling requests.
pub trait QueueStore: Send + Sync {
    /// Sets the slots this daemon holds per model and claims up to
    /// `max_total` pending requests, earliest deadline first. A model with
    /// work (pending here, or waiting in the daemon) gets the daemon's share
    /// of its limit, as far as the slots of the other daemons leave room
    /// (those of running daemons, and of dead ones until the rescuer forgets
    /// them); one without keeps only the slots of its calls in flight. A
    /// daemon that is not running gets no slots and claims nothing. Claims
    /// from all daemons are serialized by one transaction-scoped advisory
    /// lock, so the slots they read are never stale. Each model with slots
    /// gets enough requests to fill its free slots and have as many again
    /// waiting, so that calls that end are replaced at once.
    ///
    /// Unscoped, each model's requests are shared between the owners with
    /// claimable work (pending, `not_before` and `deadline` not reached, not
    /// private) by `domain::schedule::split(limit, want, loads,
    /// &req.schedule, req.schedule.call_times[model], now)`, where `limit`
    /// is the model's limit, `want` the requests to claim of it, and each
    /// owner's [`OwnerLoad`](crate::domain::schedule::OwnerLoad) holds: `active`, its rows of the model claimed
    /// or processing by any daemon; `deadline`, the earliest deadline of its
    /// claimable rows (`None` for none); `remaining`, the batch of that row's
    /// `total` less its completed, failed and cancelled requests (1 without
    /// a batch). Each owner's share is taken earliest deadline first, then
    /// by `prefix_key` when `grouped`, then by id. An owner that yields
    /// fewer rows than its share drops out and what it left is split again
    /// among the others (up to three rounds in all). Scoped claims take the
    /// batch's rows without sharing. Every claimed request carries its
    /// batch's owner.
    fn claim(&self, req: &ClaimRequest) -> impl Future<Output = Result<Claim>> + Send;
    /// Records final results in one statement; returns the ids whose lease
    /// still held (the others were rescued, expired or cancelled meanwhile
    /// and are untouched). A row whose data the database refuses fails the
    /// whole statement with [`StoreError::Rejected`](crate::store::StoreError::Rejected);
    /// [`Settlement`](crate::store::Settlement) finds and fails that row alone.
    fn finish(&self, items: &[Finished]) -> impl Future<Output = Result<Vec<RequestId>>> + Send {
        async move { Ok(self.finish_report(items).await?.accepted) }
    }
    /// [`finish`](Self::finish), also saying which batches the results
    /// filled: every one of their requests has now ended, so they can be
    /// completed at once rather than on the finalizer's next tick.
    fn finish_report(
        &self,
        items: &[Finished],
    ) -> impl Future<Output = Result<FinishReport>> + Send;
    /// Returns requests to pending in one statement; returns the ids whose
    /// lease still held. Refused data is reported as for [`QueueStore::finish`].
    fn requeue(&self, items: &[Requeue]) -> impl Future<Output = Result<Vec<RequestId>>> + Send;
    /// Of these requests held by `daemon`, those it must stop: their lease is
    /// gone, or their batch is being cancelled.
    fn lost_leases(
        &self,
        daemon: DaemonId,
        held: &[(RequestId, i32)],
    ) -> impl Future<Output = Result<Vec<RequestId>>> + Send;
}
