//! `GET /v1/batches/{id}` under many readers at once: they share queries,
//! every answer is the batch as it is, and a read that follows a change
//! sees the change.

mod api_support;
mod common;

use api_support::*;
use serde_json::Value;
use sqlx::PgPool;
use std::sync::atomic::Ordering;

/// Reads `path` from `n` tasks at once; every answer's JSON.
async fn read_at_once(api: &Api, path: &str, n: usize) -> Vec<Value> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let api = api.clone();
            let path = path.to_owned();
            tokio::spawn(async move { api.get(&path, ALICE).await.ok() })
        })
        .collect();
    let mut answers = Vec::with_capacity(n);
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    answers
}

#[sqlx::test]
async fn concurrent_reads_of_one_batch_share_queries_and_agree(pool: PgPool) {
    let api = Api::new(&pool).await;
    let batch = api.batch_of(ALICE, "shared", 3).await;
    let path = format!("/v1/batches/{}", id(&batch));
    let reads = read_at_once(&api, &path, 200).await;
    for r in &reads {
        assert_eq!(r, &reads[0]);
        assert_eq!(r["id"], batch["id"]);
        assert_eq!(r["request_counts"]["total"], 3);
    }
    let counts = api.state.batch_reads().counts();
    let (served, queries) = (
        counts.reads.load(Ordering::Relaxed),
        counts.queries.load(Ordering::Relaxed),
    );
    assert_eq!(served, 200);
    assert!(
        queries < served / 2,
        "200 reads at once ran {queries} queries"
    );
    assert_eq!(api.state.batch_reads().in_flight(), 0);
}

#[sqlx::test]
async fn a_read_after_a_cancel_sees_it_while_others_poll(pool: PgPool) {
    let api = Api::new(&pool).await;
    // Several rounds, since whether a stale query would be running at the
    // moment of the read is a matter of timing.
    for round in 0..10 {
        let batch = api.batch_of(ALICE, &format!("fresh{round}"), 2).await;
        let path = format!("/v1/batches/{}", id(&batch));
        let stop = tokio_util::sync::CancellationToken::new();
        let pollers: Vec<_> = (0..8)
            .map(|_| {
                let (api, path, stop) = (api.clone(), path.clone(), stop.clone());
                tokio::spawn(async move {
                    while !stop.is_cancelled() {
                        assert_eq!(api.get(&path, ALICE).await.ok()["object"], "batch");
                    }
                })
            })
            .collect();
        // Let the pollers get going, so queries are running when we cancel.
        while api
            .state
            .batch_reads()
            .counts()
            .queries
            .load(Ordering::Relaxed)
            < 4 * (round + 1)
        {
            tokio::task::yield_now().await;
        }
        api.post(&format!("{path}/cancel"), ALICE, Value::Null)
            .await
            .ok();
        let after = api.get(&path, ALICE).await.ok();
        assert_eq!(after["status"], "cancelled", "round {round}: {after}");
        stop.cancel();
        for p in pollers {
            p.await.unwrap();
        }
    }
}

#[sqlx::test]
async fn shared_reads_stay_per_owner(pool: PgPool) {
    let api = Api::new(&pool).await;
    let batch = api.batch_of(ALICE, "mine", 1).await;
    let path = format!("/v1/batches/{}", id(&batch));
    let (alice, bob) = tokio::join!(api.get(&path, ALICE), api.get(&path, BOB));
    assert_eq!(alice.ok()["id"], batch["id"]);
    bob.error(404, None);
}

/// An API whose shared queries of one batch start at most once per `ms`.
async fn paced(pool: &PgPool, ms: u64) -> Api {
    let config = config_with_auth(&format!("[api]\nbatch_read_interval_ms = {ms}"));
    Api::with(pool, config, Default::default()).await
}

#[sqlx::test]
async fn overlapping_reads_start_queries_at_most_once_per_interval(pool: PgPool) {
    let api = paced(&pool, 100).await;
    let batch = api.batch_of(ALICE, "paced", 2).await;
    let path = format!("/v1/batches/{}", id(&batch));
    let queries = || {
        let q = &api.state.batch_reads().counts().queries;
        q.load(Ordering::Relaxed)
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let started = std::time::Instant::now();
    let pollers: Vec<_> = (0..8)
        .map(|_| {
            let (api, path, stop) = (api.clone(), path.clone(), stop.clone());
            let want = batch["id"].clone();
            tokio::spawn(async move {
                let mut reads = 0u64;
                while !stop.is_cancelled() {
                    assert_eq!(api.get(&path, ALICE).await.ok()["id"], want);
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    while queries() < 10 {
        tokio::task::yield_now().await;
    }
    stop.cancel();
    let mut reads = 0;
    for p in pollers {
        reads += p.await.unwrap();
    }
    let elapsed = started.elapsed();
    // A slow machine only spaces queries further apart, so this bound holds
    // however busy it is: one query at the start, then one per interval.
    let most = elapsed.as_millis() as u64 / 100 + 2;
    let ran = queries();
    assert!(
        ran <= most,
        "{ran} queries in {elapsed:?} with an interval of 100 ms ({reads} reads)"
    );
    assert!(reads >= ran, "{reads} reads, {ran} queries");
}

#[sqlx::test]
async fn a_batch_not_read_lately_is_read_at_once(pool: PgPool) {
    // With an interval of a minute, a read that waited for it would time out
    // below: the pause is per batch, and only after a query of that batch.
    let api = paced(&pool, 60_000).await;
    let mut paths = Vec::new();
    for n in 0..5 {
        let batch = api.batch_of(ALICE, &format!("lone{n}"), 1).await;
        paths.push((format!("/v1/batches/{}", id(&batch)), batch["id"].clone()));
    }
    let reads = async {
        for (path, want) in &paths {
            assert_eq!(&api.get(path, ALICE).await.ok()["id"], want);
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), reads)
        .await
        .expect("reads of five batches, one after another, do not wait a minute");
}
