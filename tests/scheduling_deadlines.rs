//! Deadline urgency (issues 14 and 15): a tight window is kept beside a
//! large relaxed batch, of the same owner or of another, on two daemons.

mod common;

use common::daemon::{config, eventually, finished_batch, lines_for, start};
use common::{CHAT, jsonl, store, upload};
use fusillade::domain::batch::BatchStatus;
use fusillade::mock::{MockBehavior, MockUpstream};
use fusillade::store::{NewBatch, Owner};
use fusillade::{BatchId, BatchStore, PostgresStore};
use sqlx::PgPool;
use std::time::Duration;

/// Long enough for a busy 2-core machine.
const PATIENCE: Duration = Duration::from_secs(120);
/// A stale window no busy machine reaches: liveness is not tested here.
const RELAXED: &str = "heartbeat_ms = 500\nstale_after_ms = 60000";
const LATENCY: Duration = Duration::from_millis(50);

async fn batch(store: &PostgresStore, owner: &str, tag: &str, n: usize, window: &str) -> BatchId {
    let file = upload(store, owner, &jsonl(&lines_for("m", tag, n))).await;
    store
        .create_batch(NewBatch {
            owner,
            input_file_id: file.id,
            endpoint: CHAT,
            completion_window: window,
            metadata: None,
            idempotency_key: None,
            private: false,
        })
        .await
        .unwrap()
        .id
}

async fn pending(pool: &PgPool, id: BatchId) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM requests WHERE batch_id = $1 AND state = 'pending'")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Waits until `a` has at least this many calls in flight.
async fn running(mock: &MockUpstream, a: BatchId, at_least: u64) {
    eventually(PATIENCE, "the large batch to fill the slots", || async {
        mock.in_flight_per_batch()
            .get(&a.to_string())
            .is_some_and(|&n| n >= at_least)
    })
    .await;
}

#[sqlx::test]
async fn a_ten_minute_batch_after_a_24h_batch_of_the_same_owner_finishes_first(pool: PgPool) {
    let store = store(&pool).await;
    let mock = MockUpstream::start(MockBehavior::with_latency(LATENCY)).await;
    let cfg = config(&mock.url(), "concurrency = 16", RELAXED, "");
    let daemons = [start(&store, cfg.clone()), start(&store, cfg)];
    let relaxed = batch(&store, "a", "day-", 5_000, "24h").await;
    running(&mock, relaxed, 14).await;
    let tight = batch(&store, "a", "ten-", 100, "10m").await;
    let done = finished_batch(&store, tight, PATIENCE).await;
    assert_eq!(done.status, BatchStatus::Completed);
    assert!(done.completed_at.unwrap() <= done.expires_at.unwrap());
    assert!(
        pending(&pool, relaxed).await > 0,
        "the 10-minute batch finished first"
    );
    store.cancel_batch(Owner::Any, relaxed).await.unwrap();
    for d in daemons {
        d.stop().await;
    }
}

#[sqlx::test]
async fn a_batch_that_would_miss_its_deadline_at_fair_share_gets_the_slots_it_needs(pool: PgPool) {
    let store = store(&pool).await;
    let mock = MockUpstream::start(MockBehavior::with_latency(LATENCY)).await;
    let cfg = config(&mock.url(), "concurrency = 8", RELAXED, "");
    let daemons = [start(&store, cfg.clone()), start(&store, cfg)];
    // Two owners with large relaxed batches...
    let relaxed = batch(&store, "a", "day-", 10_000, "24h").await;
    let other = batch(&store, "c", "other-", 10_000, "24h").await;
    running(&mock, other, 3).await;
    // ...and B, whose 300 calls of 50 ms take 5.6 s at its fair share of
    // a third of the 8 slots: with 5 s left it needs 6 of them. (The
    // shortest window a batch can ask for is a minute; the deadline is
    // then moved.)
    let tight = batch(&store, "b", "tight-", 300, "1m").await;
    let deadline: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
        "WITH b AS (UPDATE batches SET expires_at = now() + interval '5 seconds' \
                    WHERE id = $1 RETURNING expires_at) \
         UPDATE requests SET deadline = (SELECT expires_at FROM b) WHERE batch_id = $1 \
         RETURNING deadline",
    )
    .bind(tight)
    .fetch_one(&pool)
    .await
    .unwrap();
    let (mut sum_a, mut sum_b, mut n) = (0, 0, 0);
    while pending(&pool, tight).await > 0 {
        let now = mock.in_flight_per_batch();
        sum_a += now.get(&relaxed.to_string()).copied().unwrap_or(0);
        sum_b += now.get(&tight.to_string()).copied().unwrap_or(0);
        n += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!(
        "while B had work, calls in flight: A {:.1}, B {:.1} on average",
        sum_a as f64 / f64::from(n.max(1)),
        sum_b as f64 / f64::from(n.max(1))
    );
    let done = finished_batch(&store, tight, PATIENCE).await;
    let last: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT max(finished_at) FROM request_results WHERE batch_id = $1")
            .bind(tight)
            .fetch_one(&pool)
            .await
            .unwrap();
    eprintln!(
        "B's last result {:.2} s before its deadline",
        (deadline - last).as_seconds_f64()
    );
    assert_eq!(done.status, BatchStatus::Completed, "{done:?}");
    assert_eq!(done.request_counts.completed, 300);
    assert!(last <= deadline);
    assert!(pending(&pool, relaxed).await > 0, "A had work all along");
    store.cancel_batch(Owner::Any, relaxed).await.unwrap();
    store.cancel_batch(Owner::Any, other).await.unwrap();
    for d in daemons {
        d.stop().await;
    }
}
