//! The cases of `tests/store_conformance.rs`, one module per subject, and
//! the helpers they share. Everything here speaks through the store traits
//! and fusillade's public API only, so that every backend runs it as is.
//!
//! What stays on PostgreSQL alone, and why:
//! - several daemons at once: `daemon_liveness.rs`, and in
//!   `daemon_runtime.rs` two daemons sharing a limit; in `daemon_faults.rs`
//!   a daemon killed mid-flight and finished by another;
//! - its connections and server: `daemon_faults.rs` (terminated
//!   connections, `fusillade run` killed and rerun), `store_settle.rs` (a
//!   server that hangs up, refusals of PostgreSQL's own (a NUL in text, a
//!   time out of range: SQLite takes both), faults by SQLSTATE that are not
//!   refusals), `daemon_poison.rs` (a trigger refusing one result under a
//!   running daemon), `pools.rs`. A refused row's isolation itself runs on
//!   both, in `settle.rs`, with the refusal planted by a trigger;
//! - its schema: `store_batches.rs` (unique constraints as typed errors),
//!   `store_queue.rs` (a daemon row deleted by hand, the queue's vacuum);
//! - a deadline moved into the past in SQL (the shortest window is a
//!   minute and no store call takes the time): `store_api.rs` (the retry of
//!   an expired batch), `store_queue.rs` (finalize expiring a batch),
//!   `daemon_runtime.rs` (lines expiring under a running daemon);
//! - the seed test, kept verbatim: `response_steps.rs`.

pub mod answers;
pub mod api;
pub mod batches;
pub mod coalescing;
pub mod coalescing_identical;
pub mod daemon_runtime;
pub mod daemons;
pub mod dashboard;
pub mod escalation;
pub mod file_access;
pub mod files;
pub mod lifecycle;
pub mod queue;
pub mod requests;
pub mod response_steps;
pub mod settle;
pub mod sharing;

use crate::common::{CHAT, chunked, collect, jsonl, line, new_batch};
use fusillade::IngestLimits;
use fusillade::domain::batch::Batch;
use fusillade::domain::file::File;
use fusillade::domain::ids::{BatchId, DaemonId};
use fusillade::domain::output::ResultError;
use fusillade::domain::request::{RequestId, RequestRecord, RequestState};
use fusillade::store::Owner;
use fusillade::store::{
    BatchStore, ClaimRequest, ClaimedRequest, DaemonStore, DashboardStore, FileStore, Finished,
    HealthStore, MaintenanceStore, NewDaemon, NewFile, QueueStore, RequestStore, Requeue,
    ResponseStepStore, RouteStore, WorkNotifier,
};
use std::collections::HashMap;

/// Everything a backend must give to run the suite: the store traits, and
/// a copy of itself with other upload limits.
pub trait Backend:
    FileStore
    + BatchStore
    + RequestStore
    + DaemonStore
    + QueueStore
    + MaintenanceStore
    + HealthStore
    + DashboardStore
    + ResponseStepStore
    + RouteStore
    + fusillade::store::EscalationStore
    + WorkNotifier
    + Clone
    + Send
    + Sync
    + 'static
{
    /// The same database, with these upload limits.
    fn with_limits(&self, limits: IngestLimits) -> Self;

    /// Makes the database refuse, as a broken constraint would, every
    /// result row inserted for which the SQL `condition` over `NEW` holds.
    fn refuse_results_where(&self, condition: &str) -> impl Future<Output = ()> + Send;
}

/// Uploads `text` for `owner` in 7-byte chunks.
pub async fn upload<S: Backend>(store: &S, owner: &str, text: &str) -> File {
    let new = NewFile {
        owner: owner.into(),
        filename: "input.jsonl".into(),
        expires_at: None,
    };
    store
        .create_file(new, chunked(text.as_bytes(), 7))
        .await
        .unwrap()
}

/// A running batch of `n` lines `r0`, `r1`, ... owned by alice.
pub async fn batch_of<S: Backend>(store: &S, n: usize) -> Batch {
    let lines: Vec<String> = (0..n).map(|i| line(&format!("r{i}"))).collect();
    let file = upload(store, "alice", &jsonl(&lines)).await;
    store
        .create_batch(new_batch("alice", file.id, CHAT))
        .await
        .unwrap()
}

/// A daemon registered as running.
pub async fn daemon<S: Backend>(store: &S) -> DaemonId {
    store
        .register_daemon(NewDaemon {
            hostname: "conformance".into(),
            pid: 1,
            version: "0".into(),
            config: serde_json::json!({}),
        })
        .await
        .unwrap()
        .id
}

/// A claim of up to `n` requests of any model, of one batch or of all. The
/// models' limit is far above what any case holds, so that the slots of
/// other daemons leave room.
pub fn claim_request(daemon: DaemonId, n: u32, scope: Option<BatchId>) -> ClaimRequest {
    ClaimRequest {
        daemon,
        models: Vec::new(),
        default_limit: 1_000_000,
        default_share: n,
        max_total: n,
        scope,
        grouped: false,
        schedule: Default::default(),
    }
}

/// Claims up to `n` requests of any model.
pub async fn claim<S: Backend>(store: &S, daemon: DaemonId, n: u32) -> Vec<ClaimedRequest> {
    store
        .claim(&claim_request(daemon, n, None))
        .await
        .unwrap()
        .requests
}

/// The final result `state` for a claimed request, as a daemon writes it.
pub fn outcome(c: &ClaimedRequest, state: RequestState) -> Finished {
    let ok = state == RequestState::Completed;
    Finished {
        id: c.id,
        attempt: c.attempt,
        state,
        status_code: ok.then_some(200),
        upstream_request_id: None,
        body: ok.then(|| br#"{"ok":true}"#.to_vec()),
        error: (!ok).then(|| ResultError::new("test", "ended by the test")),
        usage: None,
        coalesced: None,
    }
}

/// Claims every request of a batch for a daemon of its own (each line of
/// [`batch_of`] has a model of its own), in line order.
pub async fn claim_all<S: Backend>(store: &S, batch: BatchId) -> Vec<ClaimedRequest> {
    let n = store.request_counts(batch).await.unwrap().pending as u32;
    let d = daemon(store).await;
    let mut got = store
        .claim(&claim_request(d, n, Some(batch)))
        .await
        .unwrap()
        .requests;
    assert_eq!(got.len(), n as usize, "every pending request claimed");
    got.sort_by_key(|c| c.id);
    got
}

/// Returns claimed requests to pending at once, as a release would.
pub async fn release<S: Backend>(store: &S, claimed: &[ClaimedRequest]) {
    let items: Vec<Requeue> = claimed
        .iter()
        .map(|c| Requeue {
            id: c.id,
            attempt: c.attempt,
            delay: std::time::Duration::ZERO,
            is_retry: false,
        })
        .collect();
    assert_eq!(store.requeue(&items).await.unwrap().len(), items.len());
}

/// A result for a claimed request: `completed` without an error, else
/// `failed`, with the upstream's request id `upstream-<id>` when it answered.
pub fn result(
    c: &ClaimedRequest,
    status_code: Option<i32>,
    body: Option<&str>,
    error: Option<serde_json::Value>,
) -> Finished {
    let state = if error.is_none() {
        RequestState::Completed
    } else {
        RequestState::Failed
    };
    Finished {
        id: c.id,
        attempt: c.attempt,
        state,
        status_code,
        upstream_request_id: status_code.map(|_| format!("upstream-{}", c.id.0.simple())),
        body: body.map(|b| b.as_bytes().to_vec()),
        error: error.map(|e| serde_json::from_value(e).expect("an error object")),
        usage: None,
        coalesced: None,
    }
}

/// Writes one result and checks that the store took it.
pub async fn finish_one<S: Backend>(store: &S, result: Finished) {
    let id = result.id;
    let taken = store.finish(&[result]).await.unwrap();
    assert_eq!(taken, vec![id], "the store refused the result");
}

/// How many lines a byte stream holds.
pub async fn lines_of(stream: fusillade::store::ByteStream) -> usize {
    let bytes = collect(stream).await;
    bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .count()
}

/// A batch, read back.
pub async fn batch<S: Backend>(store: &S, id: BatchId) -> Batch {
    store.get_batch(Owner::Any, id).await.unwrap().unwrap()
}

/// Every request of a batch, in line order.
pub async fn requests_of<S: Backend>(store: &S, batch: BatchId) -> Vec<RequestRecord> {
    let page = store.list_requests(batch, None, 10_000).await.unwrap();
    assert!(!page.has_more);
    page.items
}

/// A request template as a daemon sees it, with its input line number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// The 1-based input line.
    pub line: u64,
    /// The line's custom_id.
    pub custom_id: String,
    /// Its url.
    pub path: String,
    /// Its model.
    pub model: String,
    /// Its body, as written.
    pub body: String,
}

/// The templates of a file of valid lines, as the requests of a new batch
/// of it show them (claimed by a daemon of their own), in line order. The
/// line number comes from the request id, which encodes it.
pub async fn templates<S: Backend>(store: &S, file: &File) -> Vec<Template> {
    let endpoint = file.urls.first().map_or(CHAT, String::as_str);
    let batch = store
        .create_batch(new_batch(&file.owner, file.id, endpoint))
        .await
        .unwrap();
    assert!(batch.errors.is_none(), "{:?}", batch.errors);
    let n = file.template_count as u32;
    let d = daemon(store).await;
    let claimed = store
        .claim(&claim_request(d, n, Some(batch.id)))
        .await
        .unwrap()
        .requests;
    assert_eq!(claimed.len(), n as usize, "every template claimed");
    let mut by_id: HashMap<RequestId, ClaimedRequest> =
        claimed.into_iter().map(|c| (c.id, c)).collect();
    let mut out = Vec::new();
    let mut line = 0;
    while !by_id.is_empty() {
        line += 1;
        assert!(line < 10_000_000, "request ids do not encode their lines");
        if let Some(c) = by_id.remove(&RequestId::of_line(batch.id, line)) {
            out.push(Template {
                line,
                custom_id: c.custom_id.unwrap_or_default(),
                path: c.path,
                model: c.model,
                body: c.body,
            });
        }
    }
    out
}

/// The line numbers of a file's templates.
pub async fn template_lines<S: Backend>(store: &S, file: &File) -> Vec<u64> {
    templates(store, file)
        .await
        .iter()
        .map(|t| t.line)
        .collect()
}
