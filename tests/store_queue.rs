//! The queue on PostgreSQL alone: claims of a daemon whose row was deleted,
//! a batch expired by moving its deadline into the past in SQL, and the
//! queue's vacuum. Everything else about claims, results and maintenance
//! runs on every backend in tests/conformance/queue.rs.

mod common;

use common::*;
use fusillade::domain::batch::{BatchId, BatchStatus};
use fusillade::domain::ids::DaemonId;
use fusillade::domain::request::RequestState;
use fusillade::store::{
    BatchStore, ClaimRequest, ClaimedRequest, Finished, MaintenanceStore, ModelDemand, Owner,
    PostgresStore, QueueStore, RequestStore,
};
use sqlx::PgPool;
use std::time::Duration;

/// Uploads `n` lines for `model` and makes a batch of them.
async fn batch_of(store: &PostgresStore, model: &str, n: usize, window: &str) -> BatchId {
    let lines: Vec<String> = (0..n)
        .map(|i| line_with(&format!("{model}-{i}"), CHAT, &chat_body("x", model)))
        .collect();
    let file = upload(store, "", &jsonl(&lines)).await;
    let mut nb = new_batch("", file.id, CHAT);
    nb.completion_window = window;
    let b = store.create_batch(nb).await.unwrap();
    assert_eq!(b.status, BatchStatus::InProgress);
    b.id
}

/// A claim of `want` requests of each `(model, limit, want)` by a daemon
/// that holds none yet and is alone: its share is the whole limit, and the
/// requests it says are waiting make the claim take exactly `want` once it
/// holds the whole limit (a claim fills free slots plus the slots' worth of
/// waiting requests).
fn demand(daemon: DaemonId, models: &[(&str, u32, u32)], max_total: u32) -> ClaimRequest {
    ClaimRequest {
        daemon,
        models: models
            .iter()
            .map(|&(m, limit, want)| ModelDemand {
                model: m.into(),
                limit,
                share: limit,
                in_flight: 0,
                waiting: (2 * limit).saturating_sub(want),
                per_call: 1,
            })
            .collect(),
        default_limit: 0,
        default_share: 0,
        max_total,
        scope: None,
        grouped: false,
        schedule: Default::default(),
    }
}

/// What a daemon with `in_flight` calls and `waiting` requests of `model` asks.
fn slots_demand(
    daemon: DaemonId,
    model: &str,
    limit: u32,
    share: u32,
    in_flight: u32,
    waiting: u32,
) -> ClaimRequest {
    ClaimRequest {
        daemon,
        models: vec![ModelDemand {
            model: model.into(),
            limit,
            share,
            in_flight,
            waiting,
            per_call: 1,
        }],
        default_limit: 0,
        default_share: 0,
        max_total: 1000,
        scope: None,
        grouped: false,
        schedule: Default::default(),
    }
}

/// The requests claimed by [`demand`] for one model.
async fn claim(
    store: &PostgresStore,
    daemon: DaemonId,
    model: &str,
    limit: u32,
    want: u32,
    max_total: u32,
) -> Vec<ClaimedRequest> {
    store
        .claim(&demand(daemon, &[(model, limit, want)], max_total))
        .await
        .unwrap()
        .requests
}

fn done(c: &ClaimedRequest) -> Finished {
    Finished {
        id: c.id,
        attempt: c.attempt,
        state: RequestState::Completed,
        status_code: Some(200),
        upstream_request_id: Some("up-1".into()),
        body: Some(r#"{"ok":true}"#.into()),
        error: None,
        usage: None,
        coalesced: None,
    }
}

#[sqlx::test]
async fn claims_of_a_daemon_whose_row_is_gone_are_rescued(pool: PgPool) {
    let store = store(&pool).await;
    batch_of(&store, "m", 4, "24h").await;
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
    let b2 = batch_of(&store, "two", 3, "24h").await;
    let got = claim(&store, d, "two", 10, 2, 10).await;
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
    batch_of(&store, "m", 3, "24h").await;
    let d = common::daemon(&store).await;
    let got = claim(&store, d, "m", 10, 10, 10).await;
    store
        .finish(&got.iter().map(done).collect::<Vec<_>>())
        .await
        .unwrap();
    assert!(!store.vacuum_queue(i64::MAX).await.unwrap());
    assert!(store.vacuum_queue(0).await.unwrap());
    // The work is unchanged by it.
    assert_eq!(store.finalize(10).await.unwrap().completed.len(), 1);
}
