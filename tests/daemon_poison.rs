//! A result PostgreSQL refuses (planted by a trigger) fails its line alone
//! and the batch completes. Answers text cannot hold run on every backend
//! in tests/conformance/answers.rs.

mod common;

use common::daemon::*;
use common::*;
use fusillade::domain::batch::BatchStatus;
use fusillade::mock::{MockBehavior, MockUpstream};
use fusillade::store::RequestStore;
use sqlx::PgPool;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(120);

#[sqlx::test]
async fn a_result_the_database_refuses_fails_its_line_alone_and_the_batch_completes(pool: PgPool) {
    let store = store(&pool).await;
    // The database refuses the result of one line for its data, whatever
    // it holds: only its failure (with no body) gets through.
    fail_results_where(
        &pool,
        "NEW.custom_id = 'ok-77' AND NEW.body IS NOT NULL",
        "22000",
    )
    .await;
    let mock = MockUpstream::start(MockBehavior::with_latency(Duration::from_millis(20))).await;
    let batch = batch_from_lines(&store, &lines_for("m", "ok-", 300)).await;
    let cfg = config(
        &mock.url(),
        "concurrency = 64",
        "heartbeat_ms = 500\nstale_after_ms = 30000",
        "",
    );
    let daemon = start(&store, cfg);
    let b = finished_batch(&store, batch, LONG).await;
    daemon.stop().await;
    assert_eq!(b.status, BatchStatus::Completed);
    assert_eq!(
        (b.request_counts.completed, b.request_counts.failed),
        (299, 1)
    );
    assert_eq!(json_lines(store.output_stream(batch)).await.len(), 299);
    let errors = json_lines(store.error_stream(batch)).await;
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["custom_id"], "ok-77");
    assert_eq!(errors[0]["error"]["code"], "storage_refused");
    let message = errors[0]["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("the upstream answered HTTP 200") && message.contains("planted refusal"),
        "{message}"
    );
}
