//! One daemon against an in-process mock upstream: limits, retries,
//! cancellation, reloads and stops. Several daemons sharing a database, and
//! a deadline moved in SQL, stay PostgreSQL-only (tests/daemon_runtime.rs).

use super::*;
use crate::common::daemon::*;
use crate::common::{CHAT, chat_body, line_with};
use fusillade::domain::batch::BatchStatus;
use fusillade::mock::{MockBehavior, MockReply, MockUpstream};
use fusillade::store::{DaemonStatus, Owner};
use serde_json::Value;
use std::collections::HashSet;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

fn custom_ids(lines: &[Value]) -> HashSet<String> {
    lines
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap().to_owned())
        .collect()
}

pub async fn one_daemon_fills_each_model_to_its_limit_and_no_further<S: Backend>(store: &S) {
    let mock = MockUpstream::start(MockBehavior::with_latency(Duration::from_millis(40))).await;
    let mut lines = lines_for("a", "a-", 30);
    lines.extend(lines_for("b", "b-", 30));
    lines.extend(lines_for("c", "c-", 30));
    let batch = batch_from_lines(store, &lines).await;
    let cfg = config(
        &mock.url(),
        "concurrency = 4",
        "",
        "[models.a]\nconcurrency = 2\n[models.b]\nconcurrency = 3\n",
    );
    let daemon = start(store, cfg);
    let b = finished_batch(store, batch, LONG).await;
    daemon.stop().await;

    assert_eq!(b.status, BatchStatus::Completed);
    assert_eq!(b.request_counts.completed, 90);
    let stats = mock.stats();
    assert_eq!(stats.max_in_flight_of("a"), 2);
    assert_eq!(stats.max_in_flight_of("b"), 3);
    assert_eq!(stats.max_in_flight_of("c"), 4, "the default route's limit");
    // Usage is summed from the answers (the mock reports 10 + 7 tokens).
    assert_eq!(b.usage.input_tokens, 90 * 10);
    assert_eq!(b.usage.output_tokens, 90 * 7);
    assert_eq!(b.usage.total_tokens, 90 * 17);
    let out = json_lines(store.output_stream(batch)).await;
    assert_eq!(out.len(), 90);
    assert_eq!(custom_ids(&out).len(), 90);
}

pub async fn outcomes_are_retried_or_final_as_the_rules_say<S: Backend>(store: &S) {
    let behavior = MockBehavior::with_latency(Duration::ZERO).respond(|call| {
        let id = call.custom_id.as_deref().unwrap_or("");
        match (id, call.attempt) {
            ("flaky", 1 | 2) => MockReply::status(500, r#"{"error":{"message":"oops"}}"#),
            ("bad", _) => MockReply::status(400, r#"{"error":{"message":"nope"}}"#),
            ("limited", 1) => MockReply::status(429, r#"{"error":{"message":"slow down"}}"#)
                .with_header("Retry-After", "1"),
            ("stuck", 1) => MockReply::hanging(),
            ("down", _) => MockReply::status(503, "<html>unavailable</html>"),
            _ => MockReply::ok_for(call),
        }
    });
    let mock = MockUpstream::start(behavior).await;
    let lines: Vec<String> = ["flaky", "bad", "limited", "stuck", "down", "fine"]
        .iter()
        .map(|id| line_with(id, CHAT, &chat_body("x", "m")))
        .collect();
    let batch = batch_from_lines(store, &lines).await;
    let cfg = config(
        &mock.url(),
        "first_byte_timeout_ms = 300",
        "max_retries = 3",
        "",
    );
    let daemon = start(store, cfg);
    let b = finished_batch(store, batch, LONG).await;
    daemon.stop().await;
    assert_eq!(b.status, BatchStatus::Completed);
    assert_eq!(b.request_counts.completed, 4, "{:?}", b.request_counts);
    assert_eq!(b.request_counts.failed, 2);

    let out = json_lines(store.output_stream(batch)).await;
    let errs = json_lines(store.error_stream(batch)).await;
    let ok: HashSet<String> = custom_ids(&out);
    assert_eq!(
        ok,
        ["flaky", "limited", "stuck", "fine"]
            .map(String::from)
            .into()
    );
    let stats = mock.stats();
    assert_eq!(stats.call_times("flaky").len(), 3, "500, 500, then 200");
    assert_eq!(stats.call_times("bad").len(), 1, "a 400 is final");
    assert_eq!(stats.call_times("down").len(), 4, "1 try + 3 retries");
    assert_eq!(
        stats.call_times("stuck").len(),
        2,
        "timed out, then retried"
    );
    let limited = stats.call_times("limited");
    assert_eq!(limited.len(), 2);
    assert!(
        limited[1].duration_since(limited[0]) >= Duration::from_secs(1),
        "Retry-After: 1 is honoured"
    );

    let bad = errs.iter().find(|e| e["custom_id"] == "bad").unwrap();
    assert_eq!(bad["response"]["status_code"], 400);
    assert_eq!(bad["response"]["body"]["error"]["message"], "nope");
    assert_eq!(bad["error"]["code"], "upstream_error");
    let down = errs.iter().find(|e| e["custom_id"] == "down").unwrap();
    assert_eq!(down["response"]["status_code"], 503);
    assert_eq!(down["response"]["body"], "<html>unavailable</html>");
    let fine = out.iter().find(|o| o["custom_id"] == "fine").unwrap();
    assert_eq!(fine["response"]["status_code"], 200);
    assert_eq!(fine["response"]["body"]["model"], "m");
    assert_eq!(fine["error"], Value::Null);
}

pub async fn cancel_aborts_calls_in_flight_and_ends_the_batch_within_two_seconds<S: Backend>(
    store: &S,
) {
    let mock = MockUpstream::start(
        MockBehavior::with_latency(Duration::ZERO).respond(|_| MockReply::hanging()),
    )
    .await;
    let batch = batch_from_lines(store, &lines_for("m", "r-", 12)).await;
    let daemon = start(store, config(&mock.url(), "concurrency = 4", "", ""));
    assert!(mock.wait_until(LONG, |s| s.in_flight == 4).await);

    let b = store.cancel_batch(Owner::Any, batch).await.unwrap();
    assert_eq!(b.status, BatchStatus::Cancelling);
    let b = finished_batch(store, batch, Duration::from_secs(2)).await;
    assert_eq!(b.status, BatchStatus::Cancelled);
    assert!(
        mock.wait_until(Duration::from_secs(2), |s| s.in_flight == 0)
            .await,
        "the upstream calls were aborted"
    );
    daemon.stop().await;
    assert_eq!(b.request_counts.canceled, 12);
    let errs = json_lines(store.error_stream(batch)).await;
    assert_eq!(errs.len(), 12);
    assert!(errs.iter().all(|e| e["error"]["code"] == "batch_cancelled"));
    assert_eq!(mock.stats().total_calls, 4, "nothing more was sent");
}

pub async fn a_reloaded_limit_applies_while_running<S: Backend>(store: &S) {
    let mock = MockUpstream::start(MockBehavior::with_latency(Duration::from_millis(30))).await;
    let batch = batch_from_lines(store, &lines_for("m", "r-", 400)).await;
    let (reload, daemon) = start_reloadable(store, config(&mock.url(), "concurrency = 2", "", ""));
    assert!(mock.wait_until(LONG, |s| s.total_calls >= 20).await);
    assert_eq!(mock.stats().max_in_flight_of("m"), 2);
    reload
        .send(config(&mock.url(), "concurrency = 6", "", ""))
        .unwrap();
    assert!(
        mock.wait_until(LONG, |s| s.max_in_flight_per_model.get("m") == Some(&6))
            .await,
        "the new limit is used"
    );
    let b = finished_batch(store, batch, LONG).await;
    daemon.stop().await;
    assert_eq!(b.status, BatchStatus::Completed);
    assert_eq!(mock.stats().max_in_flight_of("m"), 6, "and never exceeded");
}

pub async fn stopping_lets_calls_finish_within_the_grace_period<S: Backend>(store: &S) {
    let mock = MockUpstream::start(MockBehavior::with_latency(Duration::from_millis(300))).await;
    let batch = batch_from_lines(store, &lines_for("m", "r-", 20)).await;
    let daemon = start(store, config(&mock.url(), "concurrency = 4", "", ""));
    assert!(mock.wait_until(LONG, |s| s.in_flight == 4).await);
    let report = daemon.stop().await;
    assert!(
        report.completed >= 4,
        "calls in flight finished: {report:?}"
    );
    let c = store.request_counts(batch).await.unwrap();
    assert_eq!(c.in_progress, 0, "nothing is left claimed");
    assert_eq!(c.completed + c.pending, 20, "{c:?}");
    let daemons = store.list_daemons().await.unwrap();
    assert_eq!(daemons.len(), 1);
    assert_eq!(daemons[0].status, DaemonStatus::Stopped);
}

pub async fn stopping_releases_calls_still_running_after_the_grace_period<S: Backend>(store: &S) {
    let mock = MockUpstream::start(
        MockBehavior::with_latency(Duration::ZERO).respond(|_| MockReply::hanging()),
    )
    .await;
    let batch = batch_from_lines(store, &lines_for("m", "r-", 6)).await;
    let daemon = start(
        store,
        config(
            &mock.url(),
            "concurrency = 3",
            "shutdown_grace_ms = 200",
            "",
        ),
    );
    assert!(mock.wait_until(LONG, |s| s.in_flight == 3).await);
    daemon.stop().await;
    let b = store.get_batch(Owner::Any, batch).await.unwrap().unwrap();
    assert_eq!(b.status, BatchStatus::InProgress);
    let c = store.request_counts(batch).await.unwrap();
    assert_eq!(c.pending, 6, "released, not failed: {c:?}");
    let again = claim_all(store, batch).await;
    assert!(
        again.iter().all(|c| c.retries == 0),
        "a release is not a retry"
    );
    assert!(mock.wait_until(LONG, |s| s.in_flight == 0).await);
}
