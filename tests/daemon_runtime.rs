//! The daemon on PostgreSQL alone: two daemons sharing one limit, and a
//! deadline of seconds (moved in SQL: the API's shortest window is a
//! minute). The single-daemon tests run on every backend in
//! tests/conformance/daemon_runtime.rs.

mod common;

use common::daemon::*;
use common::*;
use fusillade::domain::batch::BatchStatus;
use fusillade::mock::{MockBehavior, MockReply, MockUpstream};
use fusillade::store::RequestStore;
use serde_json::Value;
use sqlx::PgPool;
use std::collections::HashSet;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

fn custom_ids(lines: &[Value]) -> HashSet<String> {
    lines
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap().to_owned())
        .collect()
}

#[sqlx::test]
async fn two_daemons_share_one_global_limit(pool: PgPool) {
    let store = store(&pool).await;
    let mock = MockUpstream::start(MockBehavior::with_latency(Duration::from_millis(40))).await;
    let batch = batch_from_lines(&store, &lines_for("m", "r-", 80)).await;
    let cfg = config(&mock.url(), "concurrency = 5", "", "");
    let d1 = start(&store, cfg.clone());
    let d2 = start(&store, cfg);
    let b = finished_batch(&store, batch, LONG).await;
    let (r1, r2) = (d1.stop().await, d2.stop().await);

    assert_eq!(b.status, BatchStatus::Completed);
    assert_eq!(mock.stats().max_in_flight_of("m"), 5);
    assert_eq!(r1.completed + r2.completed, 80);
    assert!(
        r1.completed > 0 && r2.completed > 0,
        "both daemons worked: {r1:?} {r2:?}"
    );
    assert_eq!(mock.stats().calls("m"), 80, "nothing was sent twice");
}

#[sqlx::test]
async fn at_the_deadline_unfinished_lines_expire_and_finished_ones_stay(pool: PgPool) {
    let store = store(&pool).await;
    let behavior = MockBehavior::with_latency(Duration::ZERO).respond(|call| {
        if call.custom_id.as_deref().unwrap_or("").starts_with("fast") {
            MockReply::ok_for(call)
        } else {
            MockReply::hanging()
        }
    });
    let mock = MockUpstream::start(behavior).await;
    let mut lines = lines_for("m", "fast-", 3);
    lines.extend(lines_for("m", "slow-", 5));
    let batch = batch_from_lines(&store, &lines).await;
    // A window of seconds (the API's minimum is a minute).
    sqlx::query("UPDATE batches SET expires_at = now() + interval '2 seconds' WHERE id = $1")
        .bind(batch)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE requests SET deadline = now() + interval '2 seconds' WHERE batch_id = $1")
        .bind(batch)
        .execute(&pool)
        .await
        .unwrap();
    let daemon = start(&store, config(&mock.url(), "concurrency = 3", "", ""));
    let b = finished_batch(&store, batch, LONG).await;
    daemon.stop().await;

    assert_eq!(b.status, BatchStatus::Expired);
    assert!(b.expired_at.is_some());
    assert_eq!(b.request_counts.completed, 3);
    assert_eq!(b.request_counts.failed, 5);
    let out = json_lines(store.output_stream(batch)).await;
    assert_eq!(
        custom_ids(&out),
        (0..3).map(|i| format!("fast-{i}")).collect()
    );
    let errs = json_lines(store.error_stream(batch)).await;
    assert_eq!(errs.len(), 5);
    for e in &errs {
        assert_eq!(e["error"]["code"], "batch_expired", "{e}");
        assert_eq!(e["response"], Value::Null);
    }
}
