//! What the dashboard reads beyond the OpenAI objects: a batch's requests in
//! one state, one request with its input and answer, a batch's statistics,
//! and the load of each model. Every read costs the same whatever the
//! batch's size: samples and pages are bounded by the constants below.

use crate::domain::batch::BatchId;
use crate::domain::request::{RequestId, RequestRecord, RequestState};
use crate::store::{Page, Result};
use chrono::{DateTime, Utc};
use std::future::Future;

/// Lines read for a batch's throughput and latency, at most.
pub const STATS_SAMPLE: i64 = 2000;
/// Failed results read for a batch's error breakdown, at most.
pub const ERROR_SAMPLE: i64 = 5000;
/// Bytes of an input or answer body returned for display, at most.
pub const BODY_PREVIEW: i32 = 256 * 1024;
/// Pending requests counted per model, at most (the count says when it stopped).
pub const PENDING_COUNT_CAP: i64 = 10_000;

/// One request with what it ran and what came back.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestDetail {
    /// The request's record.
    pub record: RequestRecord,
    /// The input line's body (its first [`BODY_PREVIEW`] bytes).
    pub input_body: Option<String>,
    /// The input body's full size in bytes.
    pub input_bytes: i64,
    /// The upstream's answer as text (its first [`BODY_PREVIEW`] characters);
    /// absent for an answer that is not text (see `response_bytes`).
    pub response_body: Option<String>,
    /// The answer's full size in bytes.
    pub response_bytes: i64,
    /// The upstream's request id, when it gave one.
    pub upstream_request_id: Option<String>,
}

/// A result as the statistics see it.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultSample {
    /// Whether it completed.
    pub ok: bool,
    /// When it ended.
    pub finished_at: DateTime<Utc>,
    /// When it was last sent upstream, or else claimed (the daemon records
    /// the sending only for some calls); absent when neither happened.
    pub started_at: Option<DateTime<Utc>>,
    /// The upstream's status, when it answered.
    pub status_code: Option<i32>,
}

/// Failures with the same code and upstream status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorGroup {
    /// The error line's code.
    pub code: String,
    /// The upstream's HTTP status, when it answered.
    pub status_code: Option<i32>,
    /// How many of the examined failures.
    pub count: i64,
}

/// Raw material of a batch's statistics.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchSample {
    /// Requests claimed by a daemon, not yet sent.
    pub claimed: i64,
    /// Requests sent upstream, not yet answered.
    pub processing: i64,
    /// Every how many lines one was read (1: all of them).
    pub step: i64,
    /// The ended requests among the lines read.
    pub results: Vec<ResultSample>,
    /// Failures by code and status, over at most [`ERROR_SAMPLE`] of them.
    pub errors: Vec<ErrorGroup>,
    /// How many failures the breakdown examined.
    pub errors_examined: i64,
}

/// One model's load across all daemons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelLoad {
    /// The model name.
    pub model: String,
    /// Requests claimed or being sent.
    pub in_flight: i64,
    /// Upstream slots held by running daemons.
    pub slots_held: i64,
    /// Requests waiting (up to [`PENDING_COUNT_CAP`]).
    pub pending: i64,
}

/// The dashboard's reads.
pub trait DashboardStore: Send + Sync {
    /// A batch's requests in one state, in line order, after a cursor.
    fn list_requests_in_state(
        &self,
        batch_id: BatchId,
        state: RequestState,
        after: Option<RequestId>,
        limit: i64,
    ) -> impl Future<Output = Result<Page<RequestRecord>>> + Send;
    /// One request of a batch with its input body and answer.
    fn request_detail(
        &self,
        batch_id: BatchId,
        id: RequestId,
    ) -> impl Future<Output = Result<Option<RequestDetail>>> + Send;
    /// The sample a batch's statistics are made from; `total` is the batch's
    /// number of lines.
    fn batch_sample(
        &self,
        batch_id: BatchId,
        total: i64,
    ) -> impl Future<Output = Result<BatchSample>> + Send;
    /// Every model with work waiting, in flight, or slots held, by name.
    fn model_loads(&self) -> impl Future<Output = Result<Vec<ModelLoad>>> + Send;
}
