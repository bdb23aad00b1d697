//! Many small batches created at once by many clients, through the store and
//! through the API: every batch completes, every request id is distinct, and
//! no call fails. (Batches made in the same millisecond once shared their
//! request ids, and their results then failed to store forever.)

mod api_support;
mod common;

use api_support::{ALICE, Api, BOB, config_with_auth};
use common::daemon::{config, eventually, start};
use common::{line, new_batch, store, upload};
use fusillade::BatchStore;
use fusillade::mock::{MockBehavior, MockUpstream};
use sqlx::PgPool;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Batches in each test.
const BATCHES: usize = 10_000;
/// Clients creating them at once.
const CLIENTS: usize = 32;
/// Long enough for a busy 2-core machine.
const PATIENCE: Duration = Duration::from_secs(600);
/// A stale window no busy machine reaches: this test is not about liveness,
/// and a daemon wrongly declared dead stops its calls (a separate issue).
const RELAXED: &str = "heartbeat_ms = 500\nstale_after_ms = 60000";

/// Batches of client `c` (the first ones take the remainder).
fn share_of(c: usize) -> usize {
    BATCHES / CLIENTS + usize::from(c < BATCHES % CLIENTS)
}

/// Waits until every batch has completed, then checks that each has exactly
/// one result and that no two requests share an id.
async fn all_complete_with_distinct_ids(pool: &PgPool) {
    eventually(PATIENCE, "every batch to complete", || async {
        let done: i64 =
            sqlx::query_scalar("SELECT count(*) FROM batches WHERE status = 'completed'")
                .fetch_one(pool)
                .await
                .unwrap();
        done == BATCHES as i64
    })
    .await;
    let (results, ids, batches, ok): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT request_id), count(DISTINCT batch_id), \
                count(*) FILTER (WHERE ok) FROM request_results",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(
        (results, ids, batches, ok),
        (
            BATCHES as i64,
            BATCHES as i64,
            BATCHES as i64,
            BATCHES as i64
        )
    );
    let counters_wrong: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM batches WHERE total <> 1 OR n_completed <> 1 \
         OR n_failed <> 0 OR n_canceled <> 0",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(counters_wrong, 0);
}

#[sqlx::test]
async fn ten_thousand_one_line_batches_from_32_store_clients(pool: PgPool) {
    let store = store(&pool).await;
    let mock = MockUpstream::start(MockBehavior::with_latency(Duration::ZERO)).await;
    let daemon = start(&store, config(&mock.url(), "concurrency = 64", RELAXED, ""));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let store = store.clone();
            tokio::spawn(async move {
                let owner = format!("owner-{c}");
                for i in 0..share_of(c) {
                    let file =
                        upload(&store, &owner, &format!("{}\n", line(&format!("{i}")))).await;
                    store
                        .create_batch(new_batch(&owner, file.id, common::CHAT))
                        .await
                        .unwrap_or_else(|e| panic!("client {c}, batch {i}: {e}"));
                }
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    all_complete_with_distinct_ids(&pool).await;
    assert_eq!(mock.stats().total_calls, BATCHES as u64);
    daemon.stop().await;
}

#[sqlx::test]
async fn ten_thousand_one_line_batches_from_32_api_clients(pool: PgPool) {
    // One upload place per client: the bound on uploads is not what this
    // test is about (a 429 is still tried again, as the SDKs do).
    let api = Api::with(
        &pool,
        config_with_auth("[api]\nmax_concurrent_uploads = 32"),
        Default::default(),
    )
    .await;
    let mock = MockUpstream::start(MockBehavior::with_latency(Duration::ZERO)).await;
    let daemon = start(
        &api.store,
        config(&mock.url(), "concurrency = 64", RELAXED, ""),
    );
    // Every answer that is not a success, with what was asked.
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let calls = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (api, failures, calls) = (api.clone(), failures.clone(), calls.clone());
            tokio::spawn(async move {
                let key = if c % 2 == 0 { ALICE } else { BOB };
                let mut mine = Vec::new();
                for i in 0..share_of(c) {
                    let content = format!("{}\n", line(&format!("c{c}-{i}")));
                    // As the SDKs do, a 429 (too many uploads at once) is
                    // tried again after the delay its Retry-After gives.
                    let file = loop {
                        let answer = api
                            .post_multipart(
                                Some(key),
                                &[
                                    api_support::Part::text("purpose", "batch"),
                                    api_support::Part::file("file", "in.jsonl", content.as_bytes()),
                                ],
                            )
                            .await;
                        calls.fetch_add(1, Ordering::Relaxed);
                        if answer.status != 429 {
                            break answer;
                        }
                        let wait: u64 = answer.headers["retry-after"]
                            .to_str()
                            .unwrap()
                            .parse()
                            .unwrap();
                        tokio::time::sleep(Duration::from_secs(wait)).await;
                    };
                    if !file.status.is_success() {
                        failures
                            .lock()
                            .unwrap()
                            .push(("upload", file.status, file.text()));
                        continue;
                    }
                    let body = serde_json::json!({
                        "input_file_id": file.json()["id"],
                        "endpoint": api_support::CHAT,
                        "completion_window": "24h",
                    });
                    let batch = api.post("/v1/batches", key, body).await;
                    calls.fetch_add(1, Ordering::Relaxed);
                    if batch.status.is_success() {
                        mine.push(batch.json()["id"].as_str().unwrap().to_owned());
                    } else {
                        failures
                            .lock()
                            .unwrap()
                            .push(("batch", batch.status, batch.text()));
                    }
                }
                (key, mine)
            })
        })
        .collect();
    let mut made = Vec::new();
    for c in clients {
        made.push(c.await.unwrap());
    }
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} of {} calls failed, first: {:?}",
        failures.len(),
        calls.load(Ordering::Relaxed),
        failures.first()
    );
    all_complete_with_distinct_ids(&pool).await;
    // The API agrees: each batch completed with its one line.
    for (key, ids) in &made {
        for id in ids {
            let b = api.get(&format!("/v1/batches/{id}"), key).await.ok();
            assert_eq!(b["status"], "completed", "{b}");
            assert_eq!(b["request_counts"]["completed"], 1, "{b}");
        }
    }
    assert_eq!(
        made.iter().map(|(_, ids)| ids.len()).sum::<usize>(),
        BATCHES
    );
    daemon.stop().await;
}
