//! One set of store tests for every backend (the pattern of River's driver
//! tests): each case is a generic function that speaks to the store through
//! its traits only, and each backend runs every case through a macro, so a
//! new backend gets the whole suite by adding one line. Behaviour only one
//! backend has (several daemons, LISTEN/NOTIFY, read replicas) stays in the
//! other `store_*` files.
//!
//! Today the only backend is PostgreSQL: the tests are named
//! `postgres::CASE`, so `cargo nextest run --test store_conformance` shows
//! the count per backend.

mod common;

use common::{CHAT, chunked, collect, jsonl, line, new_batch};
use fusillade::domain::batch::{Batch, BatchStatus};
use fusillade::domain::file::File;
use fusillade::domain::ids::DaemonId;
use fusillade::domain::output::ResultError;
use fusillade::domain::request::RequestState;
use fusillade::store::{
    BatchStore, ClaimRequest, ClaimedRequest, DaemonStore, FileStore, Finished, MaintenanceStore,
    NewBatch, NewDaemon, NewFile, Owner, QueueStore, RequestStore,
};

/// Everything a backend must implement to run the suite.
trait Backend:
    FileStore + BatchStore + RequestStore + DaemonStore + QueueStore + MaintenanceStore
{
}

impl<S> Backend for S where
    S: FileStore + BatchStore + RequestStore + DaemonStore + QueueStore + MaintenanceStore
{
}

/// Every case, by name: the one list each backend's module expands.
macro_rules! for_each_case {
    ($run:ident) => {
        $run!(
            an_upload_reads_back_byte_for_byte,
            a_batch_has_one_request_per_line,
            an_idempotency_key_answers_with_the_first_batch,
            cancel_with_nothing_in_flight_ends_the_batch_at_once,
            cancel_with_a_call_in_flight_is_finished_by_the_finalizer,
            finished_requests_complete_the_batch_and_fill_its_files,
        );
    };
}

/// PostgreSQL: each case on a fresh database of its own.
macro_rules! on_postgres {
    ($($case:ident),+ $(,)?) => {
        mod postgres {
            $(
                #[sqlx::test]
                async fn $case(pool: sqlx::PgPool) {
                    super::$case(&crate::common::store(&pool).await).await;
                }
            )+
        }
    };
}

for_each_case!(on_postgres);

// Helpers, over the traits only.

async fn upload<S: Backend>(store: &S, owner: &str, text: &str) -> File {
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

async fn batch_of<S: Backend>(store: &S, n: usize) -> Batch {
    let lines: Vec<String> = (0..n).map(|i| line(&format!("r{i}"))).collect();
    let file = upload(store, "alice", &jsonl(&lines)).await;
    store
        .create_batch(new_batch("alice", file.id, CHAT))
        .await
        .unwrap()
}

async fn daemon<S: Backend>(store: &S) -> DaemonId {
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

/// Claims up to `n` requests of any model.
async fn claim<S: Backend>(store: &S, daemon: DaemonId, n: u32) -> Vec<ClaimedRequest> {
    store
        .claim(&ClaimRequest {
            daemon,
            models: Vec::new(),
            default_limit: n,
            default_share: n,
            max_total: n,
            scope: None,
            grouped: false,
            schedule: Default::default(),
        })
        .await
        .unwrap()
        .requests
}

fn outcome(c: &ClaimedRequest, state: RequestState) -> Finished {
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
    }
}

async fn lines_of(stream: fusillade::store::ByteStream) -> usize {
    let bytes = collect(stream).await;
    bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .count()
}

// The cases.

async fn an_upload_reads_back_byte_for_byte<S: Backend>(store: &S) {
    let text = jsonl(&[line("a"), line("b")]);
    let file = upload(store, "alice", &text).await;
    assert_eq!(file.bytes as usize, text.len());
    let got = store.get_file(Owner::Only("alice"), file.id).await.unwrap();
    assert_eq!(got.map(|f| f.id), Some(file.id));
    assert!(
        store
            .get_file(Owner::Only("bob"), file.id)
            .await
            .unwrap()
            .is_none()
    );
    let content = store
        .file_content(Owner::Only("alice"), file.id)
        .await
        .unwrap();
    assert_eq!(collect(content).await, text.as_bytes());
}

async fn a_batch_has_one_request_per_line<S: Backend>(store: &S) {
    let batch = batch_of(store, 5).await;
    assert_eq!(batch.status, BatchStatus::InProgress);
    assert_eq!(batch.request_counts.total, 5);
    let counts = store.request_counts(batch.id).await.unwrap();
    assert_eq!((counts.total, counts.pending), (5, 5));
    let page = store.list_requests(batch.id, None, 100).await.unwrap();
    let ids: Vec<_> = page.items.iter().map(|r| r.custom_id.clone()).collect();
    let want: Vec<_> = (0..5).map(|i| Some(format!("r{i}"))).collect();
    assert_eq!(ids, want, "in line order");
}

async fn an_idempotency_key_answers_with_the_first_batch<S: Backend>(store: &S) {
    let file = upload(store, "alice", &jsonl(&[line("a")])).await;
    let keyed = || NewBatch {
        idempotency_key: Some("k"),
        ..new_batch("alice", file.id, CHAT)
    };
    let first = store.create_batch(keyed()).await.unwrap();
    let again = store.create_batch(keyed()).await.unwrap();
    assert_eq!(first.id, again.id);
    let found = store.find_batch_by_key("alice", "k").await.unwrap();
    assert_eq!(found.map(|b| b.id), Some(first.id));
}

async fn cancel_with_nothing_in_flight_ends_the_batch_at_once<S: Backend>(store: &S) {
    let batch = batch_of(store, 4).await;
    let cancelled = store.cancel_batch(Owner::Any, batch.id).await.unwrap();
    assert_eq!(cancelled.status, BatchStatus::Cancelled);
    assert_eq!(cancelled.request_counts.canceled, 4);
    assert_eq!(lines_of(store.error_stream(batch.id)).await, 4);
    // Ended batches refuse a second cancel's change.
    assert!(store.cancel_batch(Owner::Any, batch.id).await.is_err());
}

async fn cancel_with_a_call_in_flight_is_finished_by_the_finalizer<S: Backend>(store: &S) {
    let batch = batch_of(store, 3).await;
    let d = daemon(store).await;
    let held = claim(store, d, 1).await;
    assert_eq!(held.len(), 1);
    let cancelling = store.cancel_batch(Owner::Any, batch.id).await.unwrap();
    assert_eq!(cancelling.status, BatchStatus::Cancelling);
    assert_eq!(cancelling.request_counts.canceled, 2);
    // The finalizer waits for the call in flight...
    let report = store.finalize(100).await.unwrap();
    assert!(report.cancelled.is_empty());
    // ...and ends the cancel once it has ended.
    let ended = store
        .finish(&[outcome(&held[0], RequestState::Canceled)])
        .await
        .unwrap();
    assert_eq!(ended, vec![held[0].id]);
    let report = store.finalize(100).await.unwrap();
    assert_eq!(report.cancelled, vec![batch.id]);
    let b = store
        .get_batch(Owner::Any, batch.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b.status, BatchStatus::Cancelled);
    assert_eq!(b.request_counts.canceled, 3);
}

async fn finished_requests_complete_the_batch_and_fill_its_files<S: Backend>(store: &S) {
    let batch = batch_of(store, 4).await;
    let d = daemon(store).await;
    let got = claim(store, d, 10).await;
    assert_eq!(got.len(), 4);
    let outcomes: Vec<Finished> = got
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let state = if i == 0 {
                RequestState::Failed
            } else {
                RequestState::Completed
            };
            outcome(c, state)
        })
        .collect();
    assert_eq!(store.finish(&outcomes).await.unwrap().len(), 4);
    let report = store.finalize(100).await.unwrap();
    assert_eq!(report.completed, vec![batch.id]);
    let b = store
        .get_batch(Owner::Any, batch.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b.status, BatchStatus::Completed);
    assert_eq!(
        (b.request_counts.completed, b.request_counts.failed),
        (3, 1)
    );
    assert_eq!(lines_of(store.output_stream(batch.id)).await, 3);
    assert_eq!(lines_of(store.error_stream(batch.id)).await, 1);
}
