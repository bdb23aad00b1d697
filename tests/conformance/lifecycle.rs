//! The life of a batch end to end: upload, create, claim, finish, cancel, finalize.

use super::*;
use crate::common::{CHAT, collect, jsonl, line, new_batch, valid_file};
use fusillade::domain::batch::BatchStatus;
use fusillade::store::{BatchListQuery, Finished, NewBatch, Owner};
use fusillade::{BatchCounts, RequestCounts, StoreError};

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

pub async fn a_finish_names_the_batches_it_fills_which_complete_at_once<S: Backend>(store: &S) {
    let a = batch_of(store, 3).await;
    let b = batch_of(store, 2).await;
    let d = daemon(store).await;
    let got = claim(store, d, 10).await;
    let of = |batch: &Batch| -> Vec<Finished> {
        got.iter()
            .filter(|c| c.batch_id == Some(batch.id))
            .map(|c| outcome(c, RequestState::Completed))
            .collect()
    };
    let (a_rows, b_rows) = (of(&a), of(&b));
    assert_eq!((a_rows.len(), b_rows.len()), (3, 2));

    // Two of a's three: nothing is filled yet.
    let report = store.finish_report(&a_rows[..2]).await.unwrap();
    assert_eq!(report.accepted.len(), 2);
    assert!(report.filled.is_empty(), "{report:?}");
    // a's last with one of b's: a alone is filled.
    let rows = [a_rows[2].clone(), b_rows[0].clone()];
    let report = store.finish_report(&rows).await.unwrap();
    assert_eq!(report.accepted.len(), 2);
    assert_eq!(report.filled, vec![a.id]);
    // A result whose lease is gone fills nothing, even written twice.
    let again = store.finish_report(&[a_rows[2].clone()]).await.unwrap();
    assert_eq!(again, Default::default());

    // Completing: only a filled batch named moves, and only once.
    assert!(store.complete_batches(&[b.id]).await.unwrap().is_empty());
    let completed = store.complete_batches(&[a.id, b.id]).await.unwrap();
    assert_eq!(completed, vec![a.id]);
    assert!(store.complete_batches(&[a.id]).await.unwrap().is_empty());
    let got_a = store.get_batch(Owner::Any, a.id).await.unwrap().unwrap();
    assert_eq!(got_a.status, BatchStatus::Completed);
    assert!(got_a.completed_at.is_some());
    let got_b = store.get_batch(Owner::Any, b.id).await.unwrap().unwrap();
    assert_eq!(got_b.status, BatchStatus::InProgress);

    // A cancelled batch's last result fills it, but it is not completed.
    let cancelling = store.cancel_batch(Owner::Any, b.id).await.unwrap();
    assert_eq!(cancelling.status, BatchStatus::Cancelling);
    let report = store.finish_report(&b_rows[1..]).await.unwrap();
    assert_eq!(report.filled, vec![b.id]);
    assert!(store.complete_batches(&[b.id]).await.unwrap().is_empty());
    assert!(store.complete_batches(&[]).await.unwrap().is_empty());
}

pub async fn get_batch_respects_the_owner<S: Backend>(store: &S) {
    let file = upload(store, "alice", &valid_file("r", 1)).await;
    let batch = store
        .create_batch(new_batch("alice", file.id, CHAT))
        .await
        .unwrap();
    let got = store
        .get_batch(Owner::Only("alice"), batch.id)
        .await
        .unwrap();
    assert_eq!(got.as_ref(), Some(&batch));
    assert_eq!(store.get_batch(Owner::Any, batch.id).await.unwrap(), got);
    assert_eq!(
        store.get_batch(Owner::Only("bob"), batch.id).await.unwrap(),
        None
    );
    assert_eq!(
        store.get_batch(Owner::Any, BatchId::new()).await.unwrap(),
        None
    );
}

fn list(owner: Owner<'_>, limit: i64) -> BatchListQuery<'_> {
    BatchListQuery {
        owner,
        status: None,
        after: None,
        limit,
    }
}

pub async fn list_batches_filters_and_paginates<S: Backend>(store: &S) {
    let good = upload(store, "alice", &valid_file("r", 2)).await;
    let bad = upload(store, "alice", "nope\n").await;
    let mut made = Vec::new();
    for i in 0..7 {
        let file = if i % 3 == 1 { bad.id } else { good.id };
        made.push(
            store
                .create_batch(new_batch("alice", file, CHAT))
                .await
                .unwrap(),
        );
    }
    let bobs_file = upload(store, "bob", &valid_file("r", 1)).await;
    let bobs = store
        .create_batch(new_batch("bob", bobs_file.id, CHAT))
        .await
        .unwrap();
    let newest_first: Vec<BatchId> = made.iter().rev().map(|b| b.id).collect();

    let mut seen = Vec::new();
    let mut q = list(Owner::Only("alice"), 3);
    loop {
        let page = store.list_batches(q).await.unwrap();
        assert!(page.items.iter().all(|b| b.owner == "alice"));
        seen.extend(page.items.iter().map(|b| b.id));
        q.after = page.items.last().map(|b| b.id);
        if !page.has_more {
            break;
        }
        assert_eq!(page.items.len(), 3);
    }
    assert_eq!(seen, newest_first);

    // Items carry their counts, the same as get_batch.
    let page = store
        .list_batches(list(Owner::Only("alice"), 100))
        .await
        .unwrap();
    assert!(!page.has_more);
    let mut listed = page.items.clone();
    listed.reverse();
    assert_eq!(listed, made);

    let failed = store
        .list_batches(BatchListQuery {
            status: Some(BatchStatus::Failed),
            ..list(Owner::Only("alice"), 100)
        })
        .await
        .unwrap();
    let want: Vec<BatchId> = made
        .iter()
        .rev()
        .filter(|b| b.status == BatchStatus::Failed)
        .map(|b| b.id)
        .collect();
    assert_eq!(want.len(), 2);
    assert_eq!(failed.items.iter().map(|b| b.id).collect::<Vec<_>>(), want);

    let all = store.list_batches(list(Owner::Any, 100)).await.unwrap();
    assert_eq!(all.items.len(), 8);
    assert_eq!(all.items[0].id, bobs.id);
    let page = store
        .list_batches(list(Owner::Only("bob"), 100))
        .await
        .unwrap();
    assert_eq!(page.items, vec![bobs.clone()]);
    let foreign = BatchListQuery {
        after: Some(bobs.id),
        ..list(Owner::Only("alice"), 100)
    };
    assert!(store.list_batches(foreign).await.unwrap().items.is_empty());
    for (limit, want) in [(0, 1), (-1, 1), (1_000_000, 7)] {
        let page = store
            .list_batches(list(Owner::Only("alice"), limit))
            .await
            .unwrap();
        assert_eq!(page.items.len(), want, "limit {limit}");
        assert_eq!(page.has_more, want < 7, "limit {limit}");
    }
}

/// The batch's error file as (custom_id, error code), in line order.
async fn error_lines<S: Backend>(store: &S, batch: BatchId) -> Vec<(String, String)> {
    let bytes = collect(store.error_stream(batch)).await;
    String::from_utf8(bytes)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["custom_id"].as_str().unwrap().to_owned(),
                v["error"]["code"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

pub async fn cancel_ends_pending_requests_at_once<S: Backend>(store: &S) {
    let file = upload(store, "alice", &valid_file("r", 3)).await;
    let batch = store
        .create_batch(new_batch("alice", file.id, CHAT))
        .await
        .unwrap();
    let err = store
        .cancel_batch(Owner::Only("bob"), batch.id)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound { what: "batch", .. }),
        "{err:?}"
    );
    let err = store
        .cancel_batch(Owner::Any, BatchId::new())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");

    let done = store
        .cancel_batch(Owner::Only("alice"), batch.id)
        .await
        .unwrap();
    assert_eq!(done.status, BatchStatus::Cancelled);
    assert!(done.cancelling_at.is_some());
    assert!(done.cancelled_at.is_some());
    let counts = RequestCounts {
        total: 3,
        canceled: 3,
        ..Default::default()
    };
    assert_eq!(done.request_counts, BatchCounts::from(counts));
    assert_eq!(store.request_counts(batch.id).await.unwrap(), counts);
    for r in requests_of(store, batch.id).await {
        assert_eq!(r.state, RequestState::Canceled);
    }
    let want: Vec<_> = (0..3)
        .map(|i| (format!("r{i}"), "batch_cancelled".to_string()))
        .collect();
    assert_eq!(error_lines(store, batch.id).await, want);
    assert_eq!(lines_of(store.output_stream(batch.id)).await, 0);
    assert_eq!(
        store.get_batch(Owner::Any, batch.id).await.unwrap(),
        Some(done)
    );
}

pub async fn cancel_with_a_request_in_flight_waits_for_it<S: Backend>(store: &S) {
    let file = upload(store, "alice", &valid_file("r", 4)).await;
    let batch = store
        .create_batch(new_batch("alice", file.id, CHAT))
        .await
        .unwrap();
    let d = daemon(store).await;
    let held = store
        .claim(&claim_request(d, 2, Some(batch.id)))
        .await
        .unwrap()
        .requests;
    assert_eq!(held.len(), 2);

    let first = store.cancel_batch(Owner::Any, batch.id).await.unwrap();
    assert_eq!(first.status, BatchStatus::Cancelling);
    assert!(first.cancelling_at.is_some());
    assert_eq!(first.cancelled_at, None);
    let counts = RequestCounts {
        total: 4,
        in_progress: 2,
        canceled: 2,
        ..Default::default()
    };
    assert_eq!(first.request_counts, BatchCounts::from(counts));
    assert_eq!(first.request_counts.unfinished(), 2);
    assert_eq!(store.request_counts(batch.id).await.unwrap(), counts);
    let mut ended = Vec::new();
    for r in requests_of(store, batch.id).await {
        if held.iter().any(|h| h.id == r.id) {
            assert_eq!(r.state, RequestState::Claimed);
        } else {
            assert_eq!(r.state, RequestState::Canceled);
            ended.push(r.custom_id.unwrap());
        }
    }
    let custom: Vec<String> = error_lines(store, batch.id)
        .await
        .into_iter()
        .map(|r| r.0)
        .collect();
    assert_eq!(custom, ended);
    // The daemon holding the calls is told to stop them.
    let held_ids: Vec<_> = held.iter().map(|h| (h.id, h.attempt)).collect();
    let mut lost = store.lost_leases(d, &held_ids).await.unwrap();
    lost.sort();
    let mut want: Vec<_> = held.iter().map(|h| h.id).collect();
    want.sort();
    assert_eq!(lost, want);

    // Asking again is fine and changes nothing.
    let second = store
        .cancel_batch(Owner::Only("alice"), batch.id)
        .await
        .unwrap();
    assert_eq!(second, first);
    assert_eq!(lines_of(store.error_stream(batch.id)).await, 2);
}

pub async fn cancel_of_an_ended_batch_is_a_conflict<S: Backend>(store: &S) {
    let file = upload(store, "alice", &valid_file("r", 1)).await;
    let cancelled = store
        .create_batch(new_batch("alice", file.id, CHAT))
        .await
        .unwrap();
    store.cancel_batch(Owner::Any, cancelled.id).await.unwrap();
    let completed = store
        .create_batch(new_batch("alice", file.id, CHAT))
        .await
        .unwrap();
    let d = daemon(store).await;
    let got = store
        .claim(&claim_request(d, 1, Some(completed.id)))
        .await
        .unwrap()
        .requests;
    finish_one(store, outcome(&got[0], RequestState::Completed)).await;
    store.finalize(10).await.unwrap();
    let bad = upload(store, "alice", "nope\n").await;
    let failed = store
        .create_batch(new_batch("alice", bad.id, CHAT))
        .await
        .unwrap();
    for (batch, from) in [
        (cancelled.id, "cancelled"),
        (completed.id, "completed"),
        (failed.id, "failed"),
    ] {
        let before = store.get_batch(Owner::Any, batch).await.unwrap();
        match store.cancel_batch(Owner::Only("alice"), batch).await {
            Err(StoreError::Conflict(t)) => {
                assert_eq!((t.kind, t.from, t.to), ("batch", from, "cancelling"))
            }
            other => panic!("{from}: {other:?}"),
        }
        assert_eq!(store.get_batch(Owner::Any, batch).await.unwrap(), before);
    }
    // The completed batch's result was left alone.
    assert_eq!(lines_of(store.output_stream(completed.id)).await, 1);
    assert_eq!(lines_of(store.error_stream(completed.id)).await, 0);
}

pub async fn request_counts_by_state<S: Backend>(store: &S) {
    let file = upload(store, "alice", &valid_file("r", 7)).await;
    let batch = store
        .create_batch(new_batch("alice", file.id, CHAT))
        .await
        .unwrap();
    let d = daemon(store).await;
    let got = store
        .claim(&claim_request(d, 6, Some(batch.id)))
        .await
        .unwrap()
        .requests;
    assert_eq!(got.len(), 6);
    // Two stay in flight; the others end each way.
    let ends = [
        RequestState::Completed,
        RequestState::Failed,
        RequestState::Failed,
        RequestState::Canceled,
    ];
    let results: Vec<Finished> = got[2..]
        .iter()
        .zip(ends)
        .map(|(c, state)| outcome(c, state))
        .collect();
    assert_eq!(store.finish(&results).await.unwrap().len(), 4);

    let want = RequestCounts {
        total: 7,
        pending: 1,
        in_progress: 2,
        completed: 1,
        failed: 2,
        canceled: 1,
    };
    assert_eq!(store.request_counts(batch.id).await.unwrap(), want);
    assert_eq!(want.finished(), 4);
    let got = store
        .get_batch(Owner::Any, batch.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.request_counts, BatchCounts::from(want));
    assert_eq!(got.request_counts.unfinished(), 3);
    assert_eq!(
        store.request_counts(BatchId::new()).await.unwrap(),
        RequestCounts::default()
    );
}
