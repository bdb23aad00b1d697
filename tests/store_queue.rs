//! The queue on PostgreSQL alone: claims of a daemon whose row was deleted,
//! a batch expired by moving its deadline into the past in SQL, and the
//! queue's vacuum. Everything else about claims, results and maintenance
//! runs on every backend in tests/conformance/queue.rs.

mod common;

use common::queue::{batch_for, claim_of, done, slots_demand};
use common::*;
use fusillade::domain::batch::BatchStatus;
use fusillade::store::{BatchStore, MaintenanceStore, Owner, QueueStore, RequestStore};
use sqlx::PgPool;
use std::time::Duration;

#[sqlx::test]
async fn claims_of_a_daemon_whose_row_is_gone_are_rescued(pool: PgPool) {
    let store = store(&pool).await;
    batch_for(&store, "m", 4, "24h").await;
    let (alive, vanishing) = (common::daemon(&store).await, common::daemon(&store).await);
    let claimed = store
        .claim(&slots_demand(vanishing, "m", 20, 10, 0, 0))
        .await
        .unwrap()
        .requests;
    assert_eq!(claimed.len(), 4);
    sqlx::query("DELETE FROM daemons WHERE id = $1")
        .bind(vanishing)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(
        store
            .rescue(alive, None, Duration::from_secs(60))
            .await
            .unwrap()
            .requests,
        4
    );
}

#[sqlx::test]
async fn finalize_expires_a_batch_past_its_deadline(pool: PgPool) {
    let store = store(&pool).await;
    let d = common::daemon(&store).await;
    // Past the deadline: finished results kept, the rest batch_expired.
    let b2 = batch_for(&store, "two", 3, "24h").await;
    let got = claim_of(&store, d, "two", 10, 2, 10).await;
    store.finish(&[done(&got[0])]).await.unwrap();
    sqlx::query("UPDATE batches SET expires_at = now() - interval '1 second' WHERE id = $1")
        .bind(b2)
        .execute(&pool)
        .await
        .unwrap();
    let report = store.finalize(10).await.unwrap();
    assert_eq!(report.expired, vec![b2]);
    let b = store.get_batch(Owner::Any, b2).await.unwrap().unwrap();
    assert_eq!(b.status, BatchStatus::Expired);
    assert_eq!(b.request_counts.completed, 1);
    assert_eq!(b.request_counts.failed, 2);
    let errs = String::from_utf8(collect(store.error_stream(b2)).await).unwrap();
    assert_eq!(errs.matches("batch_expired").count(), 2);
    // The in-flight one lost its lease.
    assert!(store.finish(&[done(&got[1])]).await.unwrap().is_empty());
}

#[sqlx::test]
async fn the_queue_is_vacuumed_only_when_worth_it(pool: PgPool) {
    let store = store(&pool).await;
    batch_for(&store, "m", 3, "24h").await;
    let d = common::daemon(&store).await;
    let got = claim_of(&store, d, "m", 10, 10, 10).await;
    store
        .finish(&got.iter().map(done).collect::<Vec<_>>())
        .await
        .unwrap();
    assert!(!store.vacuum_queue(i64::MAX).await.unwrap());
    assert!(store.vacuum_queue(0).await.unwrap());
    // The work is unchanged by it.
    assert_eq!(store.finalize(10).await.unwrap().completed.len(), 1);
}
