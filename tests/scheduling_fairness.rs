//! Fair share between owners (issue 15): two daemons on one database share
//! each model's slots between the owners with work, weighted, whatever
//! daemon claims. Shares are sampled from the mock's calls in flight per
//! batch (the `X-Fusillade-Batch-Id` header), and times from the database.

mod common;

use common::daemon::{config, eventually, finished_batch, lines_for, start};
use common::{CHAT, jsonl, new_batch, store, upload};
use fusillade::domain::batch::BatchStatus;
use fusillade::mock::{MockBehavior, MockReply, MockUpstream};
use fusillade::store::Owner;
use fusillade::{BatchId, BatchStore, PostgresStore};
use sqlx::PgPool;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::time::Duration;

/// Long enough for a busy 2-core machine.
const PATIENCE: Duration = Duration::from_secs(120);
/// A stale window no busy machine reaches: liveness is not tested here.
const RELAXED: &str = "heartbeat_ms = 500\nstale_after_ms = 60000";
/// Latency of every call: long enough that the calls, not the machine,
/// set the pace (32 slots then need about 110 calls a second, which a busy
/// 2-core machine keeps up with: were the machine the limit, B beside A
/// would also share its CPU with A's calls, which its time alone did not),
/// short enough for a quick test.
const LATENCY: Duration = Duration::from_millis(300);

/// A mock answering every call after [`LATENCY`], except the first 32 calls
/// of lines tagged `a-`, which take 1/32, 2/32, ... of it: A's calls then
/// end one after another, as those of a batch that has run a while do,
/// rather than all together every [`LATENCY`]. (In lockstep, B's first
/// slot would come anywhere between at once and a whole call later,
/// depending on when in A's round B arrived: up to 0.14× more of its time
/// alone, for nothing the scheduler decides.)
async fn staggered_mock() -> MockUpstream {
    let a_calls = AtomicU32::new(0);
    MockUpstream::start(MockBehavior::default().respond(move |call| {
        let a = call
            .custom_id
            .as_deref()
            .is_some_and(|c| c.starts_with("a-"));
        let k = if a { a_calls.fetch_add(1, Relaxed) } else { 32 };
        let delay = if k < 32 {
            LATENCY * (k + 1) / 32
        } else {
            LATENCY
        };
        MockReply {
            delay: Some(delay),
            ..MockReply::ok_for(call)
        }
    }))
    .await
}

/// Creates a batch of `n` lines of model `m` for `owner`.
async fn batch(store: &PostgresStore, owner: &str, tag: &str, n: usize) -> BatchId {
    let file = upload(store, owner, &jsonl(&lines_for("m", tag, n))).await;
    store
        .create_batch(new_batch(owner, file.id, CHAT))
        .await
        .unwrap()
        .id
}

/// From a batch's creation to its last result, as the database saw it.
async fn span(pool: &PgPool, id: BatchId) -> Duration {
    let parts: (f64, f64, f64) = sqlx::query_as(
        "SELECT extract(epoch FROM min(x.claimed_at) - b.created_at)::float8, \
                extract(epoch FROM max(x.claimed_at) - min(x.claimed_at))::float8, \
                extract(epoch FROM max(x.finished_at) - max(x.claimed_at))::float8 \
         FROM batches b JOIN request_results x ON x.batch_id = b.id WHERE b.id = $1 \
         GROUP BY b.created_at",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap();
    eprintln!("to first claim, claims, last claim to end: {parts:?}");
    let secs: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM (SELECT max(finished_at) FROM request_results \
                                    WHERE batch_id = $1) - b.created_at)::float8 \
         FROM batches b WHERE b.id = $1",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap();
    Duration::from_secs_f64(secs)
}

async fn pending(pool: &PgPool, id: BatchId) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM requests WHERE batch_id = $1 AND state = 'pending'")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The calls in flight of `a` and of `b`, summed over samples taken every
/// 5 ms while `b` has pending work, from its first call on.
async fn sample_shares(
    pool: &PgPool,
    mock: &MockUpstream,
    a: BatchId,
    b: BatchId,
    at_most: Duration,
) -> (u64, u64, u32) {
    let (a, b_id, b) = (a.to_string(), b, b.to_string());
    let (mut sum_a, mut sum_b, mut samples) = (0, 0, 0);
    let mut started = false;
    let until = tokio::time::Instant::now() + at_most;
    while tokio::time::Instant::now() < until && pending(pool, b_id).await > 0 {
        let now = mock.in_flight_per_batch();
        let (n_a, n_b) = (
            now.get(&a).copied().unwrap_or(0),
            now.get(&b).copied().unwrap_or(0),
        );
        started |= n_b > 0;
        if started {
            sum_a += n_a;
            sum_b += n_b;
            samples += 1;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (sum_a, sum_b, samples)
}

#[sqlx::test]
async fn a_small_owner_is_not_starved_by_a_large_one(pool: PgPool) {
    let store = store(&pool).await;
    let mock = staggered_mock().await;
    let cfg = config(&mock.url(), "concurrency = 32", RELAXED, "");
    let daemons = [start(&store, cfg.clone()), start(&store, cfg)];

    // B's 200 lines alone.
    let alone = batch(&store, "b", "alone-", 200).await;
    let done = finished_batch(&store, alone, PATIENCE).await;
    assert_eq!(done.status, BatchStatus::Completed);
    let alone = span(&pool, alone).await;

    // A's 20,000 lines hold every slot...
    let a = batch(&store, "a", "a-", 20_000).await;
    eventually(PATIENCE, "A to fill the slots", || async {
        mock.in_flight_per_batch()
            .get(&a.to_string())
            .is_some_and(|&n| n >= 28)
    })
    .await;
    // ...when B comes with 200. B's fair half of the slots makes it take
    // 12.5 calls' time where it took 7 alone, and it waits for its first
    // slots until A's calls end (1.86× to 1.92× on a quiet machine), so a
    // busy machine's jitter alone can push one measurement past 2×: B comes
    // up to three times, one after another, and its best run must be within
    // 2× (a scheduler that starves B fails every run, by far).
    let mut best = f64::INFINITY;
    let (mut sum_a, mut sum_b, mut samples) = (0, 0, 0);
    for attempt in 0..3 {
        let b = batch(&store, "b", &format!("b{attempt}-"), 200).await;
        let (a_in, b_in, n) = sample_shares(&pool, &mock, a, b, PATIENCE).await;
        (sum_a, sum_b, samples) = (sum_a + a_in, sum_b + b_in, samples + n);
        let done = finished_batch(&store, b, PATIENCE).await;
        assert_eq!(done.status, BatchStatus::Completed);
        let shared = span(&pool, b).await;
        let ratio = shared.as_secs_f64() / alone.as_secs_f64();
        eprintln!("B alone {alone:?}, beside A {shared:?} ({ratio:.2}x)");
        best = best.min(ratio);
        if best <= 2.0 {
            break;
        }
    }
    let share_b = sum_b as f64 / (sum_a + sum_b) as f64;
    eprintln!("B's share of the calls in flight {share_b:.2} over {samples} samples");
    assert!(
        best <= 2.0,
        "B took {best:.2}× its time alone beside A, more than twice, in each of 3 runs"
    );
    assert!(samples >= 10, "too few samples: {samples}");
    assert!(
        (0.4..=0.6).contains(&share_b),
        "B held {share_b:.2} of the calls in flight while both had work"
    );
    assert!(
        store
            .get_batch(Owner::Any, a)
            .await
            .unwrap()
            .unwrap()
            .request_counts
            .completed
            < 20_000,
        "A still had work all along"
    );
    store.cancel_batch(Owner::Any, a).await.unwrap();
    for d in daemons {
        d.stop().await;
    }
}

#[sqlx::test]
async fn weights_share_the_slots_in_proportion(pool: PgPool) {
    let store = store(&pool).await;
    let mock = MockUpstream::start(MockBehavior::with_latency(LATENCY)).await;
    let cfg = config(
        &mock.url(),
        "concurrency = 32",
        RELAXED,
        "[owners.\"a\"]\nweight = 3\n",
    );
    let daemons = [start(&store, cfg.clone()), start(&store, cfg)];
    let a = batch(&store, "a", "a-", 5_000).await;
    let b = batch(&store, "b", "b-", 5_000).await;
    // Both have work for far longer than the sampling: A's share settles
    // within a few calls; the first are left out.
    eventually(PATIENCE, "both to run", || async {
        let now = mock.in_flight_per_batch();
        now.get(&a.to_string()).is_some_and(|&n| n > 0)
            && now.get(&b.to_string()).is_some_and(|&n| n > 0)
    })
    .await;
    tokio::time::sleep(LATENCY * 5).await;
    let (mut sum_a, mut sum_b) = (0u64, 0u64);
    for _ in 0..200 {
        let now = mock.in_flight_per_batch();
        sum_a += now.get(&a.to_string()).copied().unwrap_or(0);
        sum_b += now.get(&b.to_string()).copied().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(pending(&pool, a).await > 0 && pending(&pool, b).await > 0);
    let share_a = sum_a as f64 / (sum_a + sum_b) as f64;
    eprintln!("A (weight 3) held {share_a:.2} of the calls in flight");
    assert!(
        (0.65..=0.85).contains(&share_a),
        "A (weight 3 to 1) held {share_a:.2} of the calls in flight"
    );
    store.cancel_batch(Owner::Any, a).await.unwrap();
    store.cancel_batch(Owner::Any, b).await.unwrap();
    for d in daemons {
        d.stop().await;
    }
}
