//! Poison isolation of the daemon's batched writes ([`Settlement`]) on
//! PostgreSQL: rows the database refuses are split off and failed alone, the
//! rest land; other failures keep the work for the next try, and never fail
//! rows while every write fails. These need PostgreSQL's own refusals
//! (SQLSTATEs), triggers planted in SQL and a server that hangs up; bodies
//! text cannot hold run on every backend (tests/conformance/requests.rs).

mod common;

use common::daemon::json_lines;
use common::fail_results_where;
use common::*;
use fusillade::domain::batch::{BatchId, BatchStatus};
use fusillade::domain::output::ResultError;
use fusillade::domain::request::{RequestId, RequestState};
use fusillade::store::{
    BatchStore, ClaimRequest, ClaimedRequest, Finished, ModelDemand, Owner, PostgresStore,
    QueueStore, RefusedEnd, RequestStore, Requeue, Settlement, StoreError, WriteKind,
};
use serde_json::Value;
use sqlx::PgPool;
use std::collections::HashMap;
use std::time::Duration;

/// A batch of `n` lines `r-<i>`, all claimed by a fresh daemon, in line order.
async fn claimed_batch(store: &PostgresStore, n: usize) -> (BatchId, Vec<ClaimedRequest>) {
    let lines: Vec<String> = (0..n)
        .map(|i| line_with(&format!("r-{i}"), CHAT, &chat_body("x", "m")))
        .collect();
    let file = upload(store, "", &jsonl(&lines)).await;
    let batch = store
        .create_batch(new_batch("", file.id, CHAT))
        .await
        .unwrap();
    let daemon = common::daemon(store).await;
    let limit = u32::try_from(n).unwrap();
    let claim = store
        .claim(&ClaimRequest {
            daemon,
            models: vec![ModelDemand {
                model: "m".into(),
                limit,
                share: limit,
                in_flight: 0,
                waiting: limit,
                per_call: 1,
            }],
            default_limit: 0,
            default_share: 0,
            max_total: limit,
            scope: None,
            grouped: false,
            schedule: Default::default(),
        })
        .await
        .unwrap();
    let mut got = claim.requests;
    assert_eq!(got.len(), n);
    got.sort_by_key(|c| c.id.0);
    (batch.id, got)
}

fn completed(c: &ClaimedRequest, body: &[u8]) -> Finished {
    Finished {
        id: c.id,
        attempt: c.attempt,
        state: RequestState::Completed,
        status_code: Some(200),
        upstream_request_id: Some(format!("up-{}", c.custom_id.as_deref().unwrap())),
        body: Some(body.to_vec()),
        error: None,
        usage: None,
        coalesced: None,
    }
}

fn released(c: &ClaimedRequest, delay: Duration) -> Requeue {
    Requeue {
        id: c.id,
        attempt: c.attempt,
        delay,
        is_retry: true,
    }
}

/// The error file's lines by custom_id.
async fn errors_by_id(store: &PostgresStore, batch: BatchId) -> HashMap<String, Value> {
    json_lines(store.error_stream(batch))
        .await
        .into_iter()
        .map(|l| (l["custom_id"].as_str().unwrap().to_owned(), l))
        .collect()
}

/// Writes until done, with no pause (the caller's backoff is not under test).
async fn settle_all(store: &PostgresStore, settlement: &mut Settlement, most: usize) -> usize {
    let mut calls = 0;
    while !settlement.is_done() {
        calls += 1;
        assert!(calls <= most, "still not done after {most} calls");
        let _ = settlement.resume(store).await;
    }
    calls
}

#[sqlx::test]
async fn a_batched_write_with_unstorable_rows_lands_the_rest_and_fails_those(pool: PgPool) {
    let store = store(&pool).await;
    let (batch, got) = claimed_batch(&store, 40).await;
    let ok_body = br#"{"ok":true}"#;
    // Three rows the database cannot take: a NUL in a text column, a NUL
    // in the jsonb error, a delay past the end of time. Healthy rows
    // around them, in both writes.
    let mut finishes: Vec<Finished> = got[..30].iter().map(|c| completed(c, ok_body)).collect();
    finishes[7].upstream_request_id = Some("up\0id".into());
    finishes[21] = Finished {
        state: RequestState::Failed,
        status_code: Some(400),
        error: Some(ResultError::new("upstream_error", "nul \0 here")),
        ..completed(&got[21], b"{}")
    };
    let mut requeues: Vec<Requeue> = got[30..]
        .iter()
        .map(|c| released(c, Duration::from_secs(3600)))
        .collect();
    requeues[4].delay = Duration::MAX;
    let poisoned = [got[7].id, got[21].id, got[34].id];

    let mut settlement = Settlement::new(finishes, requeues);
    settlement.resume(&store).await.unwrap();
    assert!(settlement.is_done());
    let settled = settlement.into_settled();

    // Every healthy row landed as asked; the bad ones were failed instead.
    let states: HashMap<RequestId, RequestState> = settled.finished.iter().copied().collect();
    assert_eq!(states.len(), 31);
    for c in &got[..30] {
        let want = if poisoned.contains(&c.id) {
            RequestState::Failed
        } else {
            RequestState::Completed
        };
        assert_eq!(states.get(&c.id), Some(&want), "{:?}", c.custom_id);
    }
    assert_eq!(settled.requeued.len(), 9);
    assert!(!settled.requeued.contains(&got[34].id));
    let mut refused: Vec<(RequestId, WriteKind, RefusedEnd)> = settled
        .refused
        .iter()
        .map(|r| (r.id, r.write, r.end))
        .collect();
    refused.sort_by_key(|r| r.0.0);
    assert_eq!(
        refused,
        vec![
            (got[7].id, WriteKind::Finish, RefusedEnd::FailedInstead),
            (got[21].id, WriteKind::Finish, RefusedEnd::FailedInstead),
            (got[34].id, WriteKind::Requeue, RefusedEnd::FailedInstead),
        ]
    );

    // In the files: 28 outputs, 3 error lines saying what happened.
    let outputs = json_lines(store.output_stream(batch)).await;
    assert_eq!(outputs.len(), 28);
    assert!(outputs.iter().all(|l| l["response"]["body"]["ok"] == true));
    let errors = errors_by_id(&store, batch).await;
    assert_eq!(errors.len(), 3);
    for (custom_id, what, sqlstate) in [
        (
            "r-7",
            "refused to store this request's result (the upstream answered HTTP 200)",
            "22021",
        ),
        (
            "r-21",
            "refused to store this request's result (the upstream answered HTTP 400)",
            "22P05",
        ),
        ("r-34", "refused to queue this request for a retry", "22008"),
    ] {
        let e = &errors[custom_id]["error"];
        assert_eq!(e["code"], "storage_refused", "{custom_id}");
        let message = e["message"].as_str().unwrap();
        assert!(message.contains(what), "{custom_id}: {message}");
        assert!(message.contains(sqlstate), "{custom_id}: {message}");
        assert_eq!(errors[custom_id]["response"], Value::Null);
    }
    let b = store.get_batch(Owner::Any, batch).await.unwrap().unwrap();
    assert_eq!(b.status, BatchStatus::InProgress);
    assert_eq!(
        (b.request_counts.completed, b.request_counts.failed),
        (28, 3)
    );
}

#[sqlx::test]
async fn a_refused_write_is_reported_as_rejected_and_a_bad_one_alone_too(pool: PgPool) {
    let store = store(&pool).await;
    let (_, got) = claimed_batch(&store, 2).await;
    let mut bad = completed(&got[0], b"{}");
    bad.upstream_request_id = Some("\0".into());
    let e = store.finish(&[bad, completed(&got[1], b"{}")]).await;
    assert!(matches!(e, Err(StoreError::Rejected(_))), "{e:?}");
    assert!(!e.unwrap_err().is_unavailable());
    // Nothing of the refused statement landed.
    let live: i64 = sqlx::query_scalar("SELECT count(*) FROM requests")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(live, 2);
}

#[sqlx::test]
async fn with_the_database_away_the_work_is_kept_for_the_next_try(pool: PgPool) {
    let store = store(&pool).await;
    let (batch, got) = claimed_batch(&store, 6).await;
    // A store whose server hangs up on every connection.
    let mut options = (*pool.connect_options()).clone();
    options = options.port(hanging_up_port().await);
    let away = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options);
    let away = PostgresStore::new(away);

    let finishes = got[..4].iter().map(|c| completed(c, b"{}")).collect();
    let requeues = got[4..]
        .iter()
        .map(|c| released(c, Duration::ZERO))
        .collect();
    let mut settlement = Settlement::new(finishes, requeues);
    for _ in 0..3 {
        let e = settlement.resume(&away).await.unwrap_err();
        assert!(e.is_unavailable(), "{e:?}");
        assert_eq!(settlement.remaining(), 6);
    }
    settlement.resume(&store).await.unwrap();
    let settled = settlement.into_settled();
    assert_eq!(settled.finished.len(), 4);
    assert_eq!(settled.requeued.len(), 2);
    assert!(settled.refused.is_empty());
    assert_eq!(json_lines(store.output_stream(batch)).await.len(), 4);
}

/// A port of 127.0.0.1 that accepts connections and closes them at once
/// (a refused connection would be retried by the pool until its timeout).
async fn hanging_up_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((conn, _)) = l.accept().await {
            drop(conn);
        }
    });
    port
}

#[sqlx::test]
async fn a_row_that_keeps_failing_is_split_off_and_failed_after_bounded_tries(pool: PgPool) {
    let store = store(&pool).await;
    let (batch, got) = claimed_batch(&store, 16).await;
    // XX000 (internal error): not a refusal of the data, so retried first.
    fail_results_where(&pool, "NEW.body LIKE '%poison%'", "XX000").await;
    let mut finishes: Vec<Finished> = got.iter().map(|c| completed(c, b"{}")).collect();
    finishes[11].body = Some(br#"{"poison":1}"#.to_vec());

    let mut settlement = Settlement::new(finishes, Vec::new());
    let calls = settle_all(&store, &mut settlement, 100).await;
    assert!(calls > fusillade::store::FAILURES_BEFORE_SPLIT as usize);
    let settled = settlement.into_settled();
    assert_eq!(settled.refused.len(), 1);
    assert_eq!(settled.refused[0].id, got[11].id);
    assert_eq!(settled.refused[0].end, RefusedEnd::FailedInstead);
    assert_eq!(json_lines(store.output_stream(batch)).await.len(), 15);
    let errors = errors_by_id(&store, batch).await;
    let message = errors["r-11"]["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("planted failure (SQLSTATE XX000)"),
        "{message}"
    );
}

#[sqlx::test]
async fn a_row_whose_failure_is_refused_too_is_given_up_not_retried(pool: PgPool) {
    let store = store(&pool).await;
    let (batch, got) = claimed_batch(&store, 6).await;
    // Every result of r-2 is refused for its data, its failure included.
    fail_results_where(&pool, "NEW.custom_id = 'r-2'", "23514").await;
    let finishes = got.iter().map(|c| completed(c, b"{}")).collect();
    let mut settlement = Settlement::new(finishes, Vec::new());
    settlement.resume(&store).await.unwrap();
    let settled = settlement.into_settled();
    assert_eq!(settled.finished.len(), 5);
    assert_eq!(settled.refused.len(), 1);
    let r = &settled.refused[0];
    assert_eq!((r.id, r.end), (got[2].id, RefusedEnd::GivenUp));
    assert!(
        r.reason.contains("failing it was refused too"),
        "{}",
        r.reason
    );
    assert_eq!(json_lines(store.output_stream(batch)).await.len(), 5);
}

#[sqlx::test]
async fn while_every_write_fails_no_row_is_failed(pool: PgPool) {
    let store = store(&pool).await;
    let (batch, got) = claimed_batch(&store, 8).await;
    // Every result fails, as on a full disk: the failures written instead
    // fail too, so rows are kept, however long it lasts.
    fail_results_where(&pool, "true", "53100").await;
    let finishes = got.iter().map(|c| completed(c, b"{}")).collect();
    let mut settlement = Settlement::new(finishes, Vec::new());
    for _ in 0..100 {
        assert!(settlement.resume(&store).await.is_err());
    }
    assert_eq!(settlement.remaining(), 8);
    assert!(settlement.settled().refused.is_empty());
    assert!(settlement.settled().finished.is_empty());

    // Once the database takes writes again, everything lands as it was.
    sqlx::query("DROP TRIGGER test_fail ON request_results")
        .execute(&pool)
        .await
        .unwrap();
    settle_all(&store, &mut settlement, 20).await;
    let settled = settlement.into_settled();
    assert_eq!(settled.finished.len(), 8);
    assert!(
        settled
            .finished
            .iter()
            .all(|(_, s)| *s == RequestState::Completed)
    );
    assert_eq!(json_lines(store.output_stream(batch)).await.len(), 8);
    assert!(errors_by_id(&store, batch).await.is_empty());
}
