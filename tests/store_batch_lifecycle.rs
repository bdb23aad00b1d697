//! `BatchStore` against a real PostgreSQL: batches looked up and listed by
//! owner and status, cancelled (at once, or after in-flight requests), and
//! their requests counted by state.

mod common;

use common::*;
use fusillade::store::{BatchListQuery, NewDaemon, Owner};
use fusillade::{
    BatchCounts, BatchId, BatchStatus, BatchStore, DaemonStore, RequestCounts, StoreError,
};
use sqlx::PgPool;
use uuid::Uuid;

#[sqlx::test]
async fn get_batch_respects_the_owner(pool: PgPool) {
    let store = store(&pool).await;
    let file = upload(&store, "alice", &valid_file("r", 1)).await;
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

#[sqlx::test]
async fn list_batches_filters_and_paginates(pool: PgPool) {
    let store = store(&pool).await;
    let good = upload(&store, "alice", &valid_file("r", 2)).await;
    let bad = upload(&store, "alice", "nope\n").await;
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
    let bobs_file = upload(&store, "bob", &valid_file("r", 1)).await;
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

/// The results rows of a batch: (custom_id, ok, error code).
async fn results(pool: &PgPool, batch: BatchId) -> Vec<(String, bool, Option<String>)> {
    sqlx::query_as(
        "SELECT custom_id, ok, error->>'code' FROM request_results \
         WHERE batch_id = $1 ORDER BY request_id",
    )
    .bind(batch)
    .fetch_all(pool)
    .await
    .unwrap()
}

#[sqlx::test]
async fn cancel_ends_pending_requests_at_once(pool: PgPool) {
    let store = store(&pool).await;
    let file = upload(&store, "alice", &valid_file("r", 3)).await;
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
    for r in requests(&pool, batch.id).await {
        assert_eq!(r.state, "canceled");
    }
    let want: Vec<_> = (0..3)
        .map(|i| (format!("r{i}"), false, Some("batch_cancelled".to_string())))
        .collect();
    assert_eq!(results(&pool, batch.id).await, want);
    assert_eq!(
        store.get_batch(Owner::Any, batch.id).await.unwrap(),
        Some(done)
    );
}

#[sqlx::test]
async fn cancel_with_a_request_in_flight_waits_for_it(pool: PgPool) {
    let store = store(&pool).await;
    let file = upload(&store, "alice", &valid_file("r", 4)).await;
    let batch = store
        .create_batch(new_batch("alice", file.id, CHAT))
        .await
        .unwrap();
    let reqs = requests(&pool, batch.id).await;
    set_in_flight(&pool, reqs[1].id, "processing").await;
    set_in_flight(&pool, reqs[2].id, "claimed").await;

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
    let states: Vec<String> = requests(&pool, batch.id)
        .await
        .into_iter()
        .map(|r| r.state)
        .collect();
    assert_eq!(states, ["canceled", "processing", "claimed", "canceled"]);
    let custom: Vec<String> = results(&pool, batch.id)
        .await
        .into_iter()
        .map(|r| r.0)
        .collect();
    assert_eq!(custom, ["r0", "r3"]);

    // Asking again is fine and changes nothing.
    let second = store
        .cancel_batch(Owner::Only("alice"), batch.id)
        .await
        .unwrap();
    assert_eq!(second, first);
    assert_eq!(count(&pool, "request_results").await, 2);
}

#[sqlx::test]
async fn cancel_of_an_ended_batch_is_a_conflict(pool: PgPool) {
    let store = store(&pool).await;
    let file = upload(&store, "alice", &valid_file("r", 1)).await;
    let cancelled = store
        .create_batch(new_batch("alice", file.id, CHAT))
        .await
        .unwrap();
    store.cancel_batch(Owner::Any, cancelled.id).await.unwrap();
    let completed = store
        .create_batch(new_batch("alice", file.id, CHAT))
        .await
        .unwrap();
    sqlx::query(
        "UPDATE batches SET status = 'completed', finalizing_at = now(), completed_at = now() \
         WHERE id = $1",
    )
    .bind(completed.id)
    .execute(&pool)
    .await
    .unwrap();
    let bad = upload(&store, "alice", "nope\n").await;
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
    // The completed batch's pending request was left alone.
    assert_eq!(requests(&pool, completed.id).await[0].state, "pending");
}

#[sqlx::test]
async fn request_counts_by_state(pool: PgPool) {
    let store = store(&pool).await;
    let daemon = store
        .register_daemon(NewDaemon {
            hostname: "h".into(),
            pid: 1,
            version: "0".into(),
            config: serde_json::json!({}),
        })
        .await
        .unwrap();
    let file = upload(&store, "alice", &valid_file("r", 7)).await;
    let batch = store
        .create_batch(new_batch("alice", file.id, CHAT))
        .await
        .unwrap();
    let reqs = requests(&pool, batch.id).await;
    set_in_flight(&pool, reqs[1].id, "claimed").await;
    set_in_flight(&pool, reqs[2].id, "processing").await;
    sqlx::query("UPDATE requests SET daemon_id = $2 WHERE id = $1")
        .bind(reqs[2].id)
        .bind(daemon.id)
        .execute(&pool)
        .await
        .unwrap();
    finish(&pool, reqs[3].id, Some(200), Some("{}"), None).await;
    let err = serde_json::json!({"code": "request_timeout", "message": "slow"});
    finish(&pool, reqs[4].id, None, None, Some(err.clone())).await;
    finish(&pool, reqs[5].id, None, None, Some(err)).await;
    cancel(&pool, reqs[6].id).await;

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
        store.request_counts(BatchId(Uuid::nil())).await.unwrap(),
        RequestCounts::default()
    );
}
