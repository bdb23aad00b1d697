//! The JSON the API speaks, kept apart from the domain types: OpenAI's File,
//! Batch and list objects, the request bodies it accepts, and the prefixed
//! ids SDK users recognise (`file-…`, `batch_…`, `batch_req_…`).

use crate::domain::batch::{Batch, BatchError, CompletionWindow, ServiceTier};
use crate::domain::file::{File, FileId, FileKind};
use crate::domain::ids::{BatchId, RequestId};
use crate::domain::output::{ResultError, line_id};
use crate::domain::request::RequestRecord;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use uuid::Uuid;

/// `file-` and the uuid's 32 hex digits.
pub fn file_id(id: FileId) -> String {
    format!("file-{}", id.0.simple())
}

/// `batch_` and the uuid's 32 hex digits.
pub fn batch_id(id: BatchId) -> String {
    format!("batch_{}", id.0.simple())
}

/// `batch_req_` and the uuid's 32 hex digits, as in output lines.
pub fn request_id(id: RequestId) -> String {
    line_id(id)
}

fn parse_prefixed(text: &str, prefix: &str) -> Option<Uuid> {
    // The bare uuid is accepted too, in either spelling.
    let rest = text.strip_prefix(prefix).unwrap_or(text);
    Uuid::try_parse(rest).ok()
}

/// A file id as written on the wire; `None` when it cannot be one.
pub fn parse_file_id(text: &str) -> Option<FileId> {
    parse_prefixed(text, "file-").map(FileId)
}

/// A batch id as written on the wire; `None` when it cannot be one.
pub fn parse_batch_id(text: &str) -> Option<BatchId> {
    // `batch_req_…` is a request, not a batch.
    if text.starts_with("batch_req_") {
        return None;
    }
    parse_prefixed(text, "batch_").map(BatchId)
}

/// A request id as written on the wire; `None` when it cannot be one.
pub fn parse_request_id(text: &str) -> Option<RequestId> {
    parse_prefixed(text, "batch_req_").map(RequestId)
}

fn unix(t: DateTime<Utc>) -> i64 {
    t.timestamp()
}

fn unix_opt(t: Option<DateTime<Utc>>) -> Option<i64> {
    t.map(unix)
}

/// OpenAI's File object.
#[derive(Debug, Clone, Serialize)]
pub struct FileObject {
    /// `file-…`.
    pub id: String,
    /// Always `file`.
    pub object: &'static str,
    /// Size in bytes. For a batch's output and error files: 0 (they are
    /// rendered from the results as they are downloaded; see the README).
    pub bytes: i64,
    /// Unix seconds.
    pub created_at: i64,
    /// The uploaded name, or `batch_…_output.jsonl` / `batch_…_error.jsonl`.
    pub filename: String,
    /// `batch` for inputs, `batch_output` for both result files.
    pub purpose: &'static str,
    /// Always `processed`: an upload is parsed while it streams in.
    pub status: &'static str,
    /// Unix seconds, when set.
    pub expires_at: Option<i64>,
    /// For an input with refused lines: how many (a batch of it fails).
    pub status_details: Option<String>,
}

impl From<&File> for FileObject {
    fn from(f: &File) -> Self {
        let status_details = (f.kind == FileKind::Input && f.error_count > 0).then(|| {
            format!(
                "{} of its lines were refused; a batch created from this file fails \
                 validation and lists them in errors",
                f.error_count
            )
        });
        Self {
            id: file_id(f.id),
            object: "file",
            bytes: if f.kind == FileKind::Input {
                f.bytes
            } else {
                0
            },
            created_at: unix(f.created_at),
            filename: f.filename.clone(),
            purpose: f.purpose.as_str(),
            status: "processed",
            expires_at: unix_opt(f.expires_at),
            status_details,
        }
    }
}

/// The answer to a file deletion.
#[derive(Debug, Clone, Serialize)]
pub struct Deleted {
    /// The file's id.
    pub id: String,
    /// Always `file`.
    pub object: &'static str,
    /// Always `true`.
    pub deleted: bool,
}

/// `errors` of a failed batch.
#[derive(Debug, Clone, Serialize)]
pub struct BatchErrors {
    /// Always `list`.
    pub object: &'static str,
    /// One entry per refused line (the first ones), in line order.
    pub data: Vec<BatchErrorObject>,
}

/// One entry of `errors.data`.
#[derive(Debug, Clone, Serialize)]
pub struct BatchErrorObject {
    /// A short machine-readable code.
    pub code: String,
    /// A sentence for people.
    pub message: String,
    /// The parameter at fault, if any.
    pub param: Option<String>,
    /// The 1-based line of the input file, if any.
    pub line: Option<i64>,
}

impl From<&BatchError> for BatchErrorObject {
    fn from(e: &BatchError) -> Self {
        Self {
            code: e.code.clone(),
            message: e.message.clone(),
            param: e.param.clone(),
            line: e.line,
        }
    }
}

/// `request_counts`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RequestCountsObject {
    /// All requests.
    pub total: i64,
    /// Ended with a 2xx.
    pub completed: i64,
    /// Ended otherwise: failed, expired or cancelled.
    pub failed: i64,
}

/// `usage.input_tokens_details`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct InputTokensDetails {
    /// Served from cache.
    pub cached_tokens: i64,
}

/// `usage.output_tokens_details`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct OutputTokensDetails {
    /// Spent on reasoning.
    pub reasoning_tokens: i64,
}

/// `usage`: summed from the answers' own `usage` fields.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct UsageObject {
    /// Prompt tokens.
    pub input_tokens: i64,
    /// Of which cached.
    pub input_tokens_details: InputTokensDetails,
    /// Completion tokens.
    pub output_tokens: i64,
    /// Of which reasoning.
    pub output_tokens_details: OutputTokensDetails,
    /// All tokens.
    pub total_tokens: i64,
}

/// OpenAI's Batch object.
#[derive(Debug, Clone, Serialize)]
pub struct BatchObject {
    /// `batch_…`.
    pub id: String,
    /// Always `batch`.
    pub object: &'static str,
    /// The endpoint every line targets.
    pub endpoint: String,
    /// Validation errors of a failed batch, else `null`.
    pub errors: Option<BatchErrors>,
    /// `file-…`.
    pub input_file_id: String,
    /// As given, e.g. `24h`.
    pub completion_window: String,
    /// `priority`, `flex` or `default`, derived from the completion window
    /// (`domain::batch::ServiceTier`); an extension of ours on batches.
    pub service_tier: &'static str,
    /// OpenAI's status word.
    pub status: &'static str,
    /// Successful results (downloadable while the batch runs, too).
    pub output_file_id: Option<String>,
    /// Failed results.
    pub error_file_id: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds, once it applies.
    pub in_progress_at: Option<i64>,
    /// The deadline, Unix seconds.
    pub expires_at: Option<i64>,
    /// Unix seconds, once it applies.
    pub finalizing_at: Option<i64>,
    /// Unix seconds, once it applies.
    pub completed_at: Option<i64>,
    /// Unix seconds, once it applies.
    pub failed_at: Option<i64>,
    /// Unix seconds, once it applies.
    pub expired_at: Option<i64>,
    /// Unix seconds, once it applies.
    pub cancelling_at: Option<i64>,
    /// Unix seconds, once it applies.
    pub cancelled_at: Option<i64>,
    /// Live counts.
    pub request_counts: RequestCountsObject,
    /// The caller's pairs, or `null`.
    pub metadata: Option<BTreeMap<String, String>>,
    /// Not tracked per batch (a file may name many models): always `null`.
    pub model: Option<String>,
    /// Token totals.
    pub usage: UsageObject,
    /// Extension: completed lines answered without a call of their own.
    pub coalesced_lines: i64,
    /// Extension: those lines by kind.
    pub coalesced_lines_details: CoalescedLinesDetails,
}

/// `coalesced_lines_details` (extension).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CoalescedLinesDetails {
    /// Lines that took an identical line's answer.
    pub identical: i64,
    /// Lines answered by a packed embeddings call.
    pub packed: i64,
}

impl From<&Batch> for BatchObject {
    fn from(b: &Batch) -> Self {
        let c = &b.request_counts;
        let u = &b.usage;
        // Stored windows were checked on creation; the default tier otherwise.
        let tier = CompletionWindow::parse(&b.completion_window)
            .map_or(ServiceTier::Default, CompletionWindow::tier);
        Self {
            id: batch_id(b.id),
            object: "batch",
            endpoint: b.endpoint.clone(),
            errors: b
                .errors
                .as_ref()
                .filter(|e| !e.is_empty())
                .map(|e| BatchErrors {
                    object: "list",
                    data: e.iter().map(BatchErrorObject::from).collect(),
                }),
            input_file_id: file_id(b.input_file_id),
            completion_window: b.completion_window.clone(),
            service_tier: tier.as_str(),
            status: b.status.as_str(),
            output_file_id: b.output_file_id.map(file_id),
            error_file_id: b.error_file_id.map(file_id),
            created_at: unix(b.created_at),
            in_progress_at: unix_opt(b.in_progress_at),
            expires_at: unix_opt(b.expires_at),
            finalizing_at: unix_opt(b.finalizing_at),
            completed_at: unix_opt(b.completed_at),
            failed_at: unix_opt(b.failed_at),
            expired_at: unix_opt(b.expired_at),
            cancelling_at: unix_opt(b.cancelling_at),
            cancelled_at: unix_opt(b.cancelled_at),
            request_counts: RequestCountsObject {
                total: c.total,
                completed: c.completed,
                failed: c.failed + c.canceled,
            },
            metadata: b.metadata.clone(),
            model: None,
            usage: UsageObject {
                input_tokens: u.input_tokens,
                input_tokens_details: InputTokensDetails {
                    cached_tokens: u.cached_tokens,
                },
                output_tokens: u.output_tokens,
                output_tokens_details: OutputTokensDetails {
                    reasoning_tokens: u.reasoning_tokens,
                },
                total_tokens: u.total_tokens,
            },
            coalesced_lines: b.coalesced.total(),
            coalesced_lines_details: CoalescedLinesDetails {
                identical: b.coalesced.identical,
                packed: b.coalesced.packed,
            },
        }
    }
}

/// One request of a batch (extension: `GET /v1/batches/{id}/requests`).
#[derive(Debug, Clone, Serialize)]
pub struct RequestObject {
    /// `batch_req_…`, the same id as its output or error line.
    pub id: String,
    /// Always `batch.request`.
    pub object: &'static str,
    /// The batch's id.
    pub batch_id: Option<String>,
    /// The input line's custom_id.
    pub custom_id: Option<String>,
    /// The model it is routed by (its input line's model).
    pub model: String,
    /// The model its last attempt was sent as, when its model escalates to
    /// another (`escalate_to`); null: sent as `model`, or not sent yet.
    pub routed_model: Option<String>,
    /// pending, claimed, processing, completed, failed or canceled.
    pub state: &'static str,
    /// How many times it was claimed.
    pub attempt: i32,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds, when last claimed.
    pub claimed_at: Option<i64>,
    /// Unix seconds, when last sent upstream.
    pub started_at: Option<i64>,
    /// Unix seconds, when it ended.
    pub finished_at: Option<i64>,
    /// Not claimable before this (retry backoff), Unix seconds.
    pub not_before: i64,
    /// The upstream's status, when it answered.
    pub status_code: Option<i32>,
    /// Why it did not complete.
    pub error: Option<ResultError>,
    /// Milliseconds from its last sending (or, when that is not recorded,
    /// its last claim) to its end.
    pub latency_ms: Option<i64>,
}

impl From<&RequestRecord> for RequestObject {
    fn from(r: &RequestRecord) -> Self {
        Self {
            id: request_id(r.id),
            object: "batch.request",
            batch_id: r.batch_id.map(batch_id),
            custom_id: r.custom_id.clone(),
            model: r.model.clone(),
            routed_model: r.routed_model.clone(),
            state: r.state.as_str(),
            attempt: r.attempt,
            created_at: unix(r.created_at),
            claimed_at: unix_opt(r.claimed_at),
            started_at: unix_opt(r.started_at),
            finished_at: unix_opt(r.finished_at),
            not_before: unix(r.not_before),
            status_code: r.status_code,
            error: r.error.clone(),
            latency_ms: r
                .started_at
                .or(r.claimed_at)
                .zip(r.finished_at)
                .map(|(s, f)| (f - s).num_milliseconds().max(0)),
        }
    }
}

/// The answer of `POST /v1/batches/{id}/retry` (extension).
#[derive(Debug, Clone, Serialize)]
pub struct RetryObject {
    /// The batch after the retry.
    #[serde(flatten)]
    pub batch: BatchObject,
    /// How many failed requests were put back in the queue.
    pub retried: u64,
}

/// A page of a list: `{object: "list", data, first_id, last_id, has_more}`.
#[derive(Debug, Clone, Serialize)]
pub struct ListObject<T> {
    /// Always `list`.
    pub object: &'static str,
    /// The items.
    pub data: Vec<T>,
    /// The first item's id.
    pub first_id: Option<String>,
    /// The last item's id: pass it as `after` for the next page.
    pub last_id: Option<String>,
    /// Whether another page follows.
    pub has_more: bool,
}

impl<T> ListObject<T> {
    /// A page of `data`, whose ids `id` reads.
    pub fn new(data: Vec<T>, has_more: bool, id: impl Fn(&T) -> String) -> Self {
        Self {
            object: "list",
            first_id: data.first().map(&id),
            last_id: data.last().map(&id),
            data,
            has_more,
        }
    }
}

/// `output_expires_after` / `expires_after`: `{anchor: "created_at", seconds}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpiresAfter {
    /// Only `created_at`.
    pub anchor: String,
    /// Between an hour and 30 days.
    pub seconds: i64,
}

/// The body of `POST /v1/batches`. Unknown fields are ignored, so newer SDKs
/// sending new optional fields still work.
#[derive(Debug, Clone, Deserialize)]
pub struct CreateBatchBody {
    /// `file-…` of an uploaded input file.
    pub input_file_id: String,
    /// One of the allowed endpoints.
    pub endpoint: String,
    /// `24h`, or (extension) any `Nh` / `Nm` of at least a minute, `0s` or
    /// `priority` (the priority tier, given one minute), `flex` (`1h`).
    pub completion_window: String,
    /// Up to 16 pairs.
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
    /// When the output and error files may be deleted.
    #[serde(default)]
    pub output_expires_after: Option<ExpiresAfter>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_with_and_without_prefix() {
        let f = FileId::new();
        assert_eq!(parse_file_id(&file_id(f)), Some(f));
        assert_eq!(parse_file_id(&f.0.to_string()), Some(f));
        assert_eq!(parse_file_id(&f.0.simple().to_string()), Some(f));
        let b = BatchId::new();
        assert_eq!(parse_batch_id(&batch_id(b)), Some(b));
        assert_eq!(parse_batch_id(&b.0.to_string()), Some(b));
        let r = RequestId(Uuid::now_v7());
        assert_eq!(parse_request_id(&request_id(r)), Some(r));
        assert_eq!(parse_batch_id(&request_id(r)), None);
        for bad in ["", "file-", "file-xyz", "batch_", "nope", "file-123"] {
            assert_eq!(parse_file_id(bad), None, "{bad}");
            assert_eq!(parse_batch_id(bad), None, "{bad}");
        }
        assert!(file_id(f).starts_with("file-"));
        assert_eq!(batch_id(b).len(), "batch_".len() + 32);
    }
}
