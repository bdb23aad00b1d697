//! Escalation to a faster model (issue 15): a batch whose window is inside
//! `escalate_within` is sent as the escalation model, within that model's
//! limit across two daemons; a batch with a long window is not. Both
//! models are recorded and listed by the API.

mod api_support;
mod common;

use api_support::{ALICE, Api};
use common::daemon::{config, finished_batch, lines_for, start};
use common::{CHAT, jsonl, store, upload};
use fusillade::domain::batch::BatchStatus;
use fusillade::mock::{MockBehavior, MockUpstream};
use fusillade::store::NewBatch;
use fusillade::{BatchId, BatchStore, PostgresStore};
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::time::Duration;

/// Long enough for a busy 2-core machine.
const PATIENCE: Duration = Duration::from_secs(120);
/// A stale window no busy machine reaches: liveness is not tested here.
const RELAXED: &str = "heartbeat_ms = 500\nstale_after_ms = 60000";
/// The escalation model's limit, over both daemons.
const FAST_LIMIT: u64 = 3;

/// "slow" (limit 8) escalates to "fast" (limit 3) inside two hours of a
/// deadline; an escalated request waits for a slot of "fast" as long as
/// the test may take.
fn models() -> String {
    format!(
        "[models.slow]\nescalate_to = \"fast\"\nescalate_within = \"2h\"\nescalate_wait = \"10m\"\n\
         [models.fast]\nconcurrency = {FAST_LIMIT}\n"
    )
}

async fn batch(store: &PostgresStore, tag: &str, n: usize, window: &str) -> BatchId {
    let file = upload(store, "alice", &jsonl(&lines_for("slow", tag, n))).await;
    store
        .create_batch(NewBatch {
            owner: "alice",
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

/// (model, routed_model) of each request, as the API lists them.
async fn listed(pool: &PgPool, id: BatchId) -> BTreeMap<(String, String), usize> {
    let api = Api::new(pool).await;
    let mut seen = BTreeMap::new();
    let mut after = String::new();
    loop {
        let page = api
            .get(
                &format!(
                    "/v1/batches/{}/requests?limit=100{after}",
                    fusillade::api::wire::batch_id(id)
                ),
                ALICE,
            )
            .await
            .ok();
        for r in page["data"].as_array().unwrap() {
            let key = (
                r["model"].as_str().unwrap().to_owned(),
                r["routed_model"].as_str().unwrap_or("null").to_owned(),
            );
            *seen.entry(key).or_default() += 1;
        }
        if !page["has_more"].as_bool().unwrap() {
            // One request's own page shows the same.
            let first = &page["data"][0];
            let one = api
                .get(
                    &format!(
                        "/v1/batches/{}/requests/{}",
                        fusillade::api::wire::batch_id(id),
                        first["id"].as_str().unwrap()
                    ),
                    ALICE,
                )
                .await
                .ok();
            assert_eq!(one["model"], first["model"]);
            assert_eq!(one["routed_model"], first["routed_model"]);
            return seen;
        }
        after = format!("&after={}", page["last_id"].as_str().unwrap());
    }
}

#[sqlx::test]
async fn a_batch_inside_the_window_goes_to_the_escalation_model_within_its_limit(pool: PgPool) {
    let store = store(&pool).await;
    let mock = MockUpstream::start(MockBehavior::with_latency(Duration::from_millis(50))).await;
    let cfg = config(&mock.url(), "concurrency = 8", RELAXED, &models());
    let daemons = [start(&store, cfg.clone()), start(&store, cfg)];
    let n = 120;
    let id = batch(&store, "near-", n, "1h").await;
    // Sample the escalation model's calls in flight while the batch runs.
    let (mut most, mut samples) = (0, 0);
    let done = loop {
        let stats = mock.stats();
        most = most.max(stats.in_flight_per_model.get("fast").copied().unwrap_or(0));
        samples += 1;
        let b = store
            .get_batch(fusillade::store::Owner::Any, id)
            .await
            .unwrap()
            .unwrap();
        if b.status.is_terminal() {
            break b;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let done = if done.status == BatchStatus::Completed {
        done
    } else {
        finished_batch(&store, id, PATIENCE).await
    };
    let stats = mock.stats();
    eprintln!(
        "fast: {} calls, at most {} in flight ({most} in {samples} samples); slow: {} calls",
        stats.calls("fast"),
        stats.max_in_flight_of("fast"),
        stats.calls("slow")
    );
    assert_eq!(done.status, BatchStatus::Completed, "{done:?}");
    assert_eq!(done.request_counts.completed, n as i64);
    assert_eq!(
        stats.calls("fast"),
        n as u64,
        "every call went as the escalation model"
    );
    assert_eq!(stats.calls("slow"), 0);
    assert!(most <= FAST_LIMIT, "sampled {most} calls of fast at once");
    assert!(
        stats.max_in_flight_of("fast") <= FAST_LIMIT,
        "the escalation model's limit was exceeded: {} at once",
        stats.max_in_flight_of("fast")
    );
    assert_eq!(
        listed(&pool, id).await,
        BTreeMap::from([(("slow".to_owned(), "fast".to_owned()), n)]),
        "both models are listed for every request"
    );
    for d in daemons {
        d.stop().await;
    }
}

#[sqlx::test]
async fn a_batch_with_a_long_window_is_not_escalated(pool: PgPool) {
    let store = store(&pool).await;
    let mock = MockUpstream::start(MockBehavior::with_latency(Duration::from_millis(10))).await;
    let cfg = config(&mock.url(), "concurrency = 8", RELAXED, &models());
    let daemons = [start(&store, cfg.clone()), start(&store, cfg)];
    let n = 40;
    let id = batch(&store, "far-", n, "24h").await;
    let done = finished_batch(&store, id, PATIENCE).await;
    let stats = mock.stats();
    assert_eq!(done.status, BatchStatus::Completed, "{done:?}");
    assert_eq!(stats.calls("slow"), n as u64);
    assert_eq!(stats.calls("fast"), 0);
    assert_eq!(
        listed(&pool, id).await,
        BTreeMap::from([(("slow".to_owned(), "slow".to_owned()), n)]),
        "its own model is recorded as where it went"
    );
    for d in daemons {
        d.stop().await;
    }
}

#[sqlx::test]
async fn an_escalated_request_that_finds_no_slot_in_time_falls_back_to_its_own_model(pool: PgPool) {
    let store = store(&pool).await;
    let mock = MockUpstream::start(MockBehavior::with_latency(Duration::from_millis(50))).await;
    // No wait at all: nothing escalated finds a slot of "fast" before the
    // next claim could grant one, so every call goes back to "slow".
    let cfg = config(
        &mock.url(),
        "concurrency = 8",
        RELAXED,
        "[models.slow]\nescalate_to = \"fast\"\nescalate_within = \"2h\"\nescalate_wait = \"0s\"\n\
         [models.fast]\nconcurrency = 1\n",
    );
    let daemons = [start(&store, cfg.clone()), start(&store, cfg)];
    let n = 40;
    let id = batch(&store, "back-", n, "1h").await;
    let done = finished_batch(&store, id, PATIENCE).await;
    let stats = mock.stats();
    eprintln!(
        "fast: {} calls; slow: {} calls",
        stats.calls("fast"),
        stats.calls("slow")
    );
    assert_eq!(done.status, BatchStatus::Completed, "{done:?}");
    assert_eq!(stats.calls("fast") + stats.calls("slow"), n as u64);
    assert!(stats.calls("slow") > 0, "some fell back");
    assert!(stats.max_in_flight_of("fast") <= 1);
    let seen = listed(&pool, id).await;
    assert_eq!(
        seen.get(&("slow".to_owned(), "slow".to_owned()))
            .copied()
            .unwrap_or(0) as u64,
        stats.calls("slow"),
        "a fallback is recorded: {seen:?}"
    );
    for d in daemons {
        d.stop().await;
    }
}
