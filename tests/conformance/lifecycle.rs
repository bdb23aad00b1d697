//! The life of a batch end to end: upload, create, claim, finish, cancel, finalize.

use super::*;
use crate::common::{collect, jsonl, line, new_batch};
use fusillade::domain::batch::BatchStatus;
use fusillade::store::{Finished, NewBatch, Owner};

pub async fn an_upload_reads_back_byte_for_byte<S: Backend>(store: &S) {
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

pub async fn a_batch_has_one_request_per_line<S: Backend>(store: &S) {
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

pub async fn an_idempotency_key_answers_with_the_first_batch<S: Backend>(store: &S) {
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

pub async fn cancel_with_nothing_in_flight_ends_the_batch_at_once<S: Backend>(store: &S) {
    let batch = batch_of(store, 4).await;
    let cancelled = store.cancel_batch(Owner::Any, batch.id).await.unwrap();
    assert_eq!(cancelled.status, BatchStatus::Cancelled);
    assert_eq!(cancelled.request_counts.canceled, 4);
    assert_eq!(lines_of(store.error_stream(batch.id)).await, 4);
    // Ended batches refuse a second cancel's change.
    assert!(store.cancel_batch(Owner::Any, batch.id).await.is_err());
}

pub async fn cancel_with_a_call_in_flight_is_finished_by_the_finalizer<S: Backend>(store: &S) {
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

pub async fn finished_requests_complete_the_batch_and_fill_its_files<S: Backend>(store: &S) {
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
