//! The user's retry of an expired batch, on PostgreSQL alone: making a batch
//! expire needs its deadline moved into the past, which only SQL can do
//! (the shortest window is a minute). The other tests of the API's store
//! functions run on every backend in tests/conformance/api.rs.

mod common;

use common::*;
use fusillade::store::{MaintenanceStore, Owner, WorkNotifier};
use fusillade::{BatchStatus, BatchStore, RequestStore};
use futures_util::StreamExt;
use serde_json::json;
use sqlx::PgPool;
use std::time::Duration;

#[sqlx::test]
async fn retry_reopens_an_expired_batch_and_requeues_only_failed_requests(pool: PgPool) {
    let store = store(&pool).await;
    let file = upload(&store, "alice", &valid_file("r", 4)).await;
    let batch = store
        .create_batch(new_batch("alice", file.id, CHAT))
        .await
        .unwrap();
    let reqs = requests(&pool, batch.id).await;
    // One completed, one failed by the upstream (after two retries), two
    // left pending when the window runs out.
    finish(&pool, reqs[0].id, Some(200), Some(r#"{"ok":true}"#), None).await;
    finish(
        &pool,
        reqs[1].id,
        Some(400),
        Some("{}"),
        Some(json!({"code": "upstream_error", "message": "no"})),
    )
    .await;
    sqlx::query("UPDATE request_results SET retries = 2 WHERE request_id = $1")
        .bind(reqs[1].id)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE batches SET expires_at = now() - interval '1 second' WHERE id = $1")
        .bind(batch.id)
        .execute(&pool)
        .await
        .unwrap();
    store.finalize(10).await.unwrap();
    let expired = store
        .get_batch(Owner::Any, batch.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(expired.status, BatchStatus::Expired);
    assert_eq!(expired.request_counts.failed, 3);

    let mut signals = store.listen_for_work().await.unwrap();
    let (reopened, n) = store
        .retry_failed(Owner::Only("alice"), batch.id)
        .await
        .unwrap();
    assert_eq!(n, 3);
    assert_eq!(reopened.status, BatchStatus::InProgress);
    assert_eq!(reopened.expired_at, None);
    assert_eq!(reopened.completed_at, None);
    let new_deadline = reopened.expires_at.unwrap();
    assert!(new_deadline > chrono::Utc::now() + chrono::Duration::hours(23));
    assert_eq!(reopened.request_counts.unfinished(), 3);
    assert_eq!(reopened.request_counts.completed, 1);
    assert_eq!(reopened.request_counts.failed, 0);
    // A signal for idle daemons, sent with the commit.
    tokio::time::timeout(Duration::from_secs(5), signals.next())
        .await
        .expect("a work signal")
        .unwrap();

    let rows: Vec<(String, i32, Option<chrono::DateTime<chrono::Utc>>, bool)> = sqlx::query_as(
        "SELECT state, retries, deadline, live FROM ( \
             SELECT id, state, retries, deadline, true AS live FROM requests WHERE batch_id = $1 \
             UNION ALL \
             SELECT request_id, state, retries, NULL, false FROM request_results \
             WHERE batch_id = $1) x \
         ORDER BY id",
    )
    .bind(batch.id)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!((rows[0].0.as_str(), rows[0].3), ("completed", false));
    for r in &rows[1..] {
        assert_eq!(
            (r.0.as_str(), r.1, r.2, r.3),
            ("pending", 0, Some(new_deadline), true)
        );
    }
    // Only the completed request keeps its result line.
    let results: i64 =
        sqlx::query_scalar("SELECT count(*) FROM request_results WHERE batch_id = $1")
            .bind(batch.id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(results, 1);
    assert_eq!(collect(store.error_stream(batch.id)).await, b"");
}
