//! Concurrency that adapts to the upstream (issue 15), on two daemons: a
//! route configured far above what its server takes settles near what it
//! takes, with few refusals; a healthy upstream of steady latency keeps its
//! limit at the ceiling under full load; and a `Retry-After` stops every
//! daemon's calls.

mod common;

use common::daemon::{batch_from_lines, config, eventually, lines_for, start};
use common::store;
use fusillade::BatchStore;
use fusillade::mock::{MockBehavior, MockReply, MockUpstream, Overload};
use fusillade::store::Owner;
use sqlx::PgPool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Long enough for a busy 2-core machine.
const PATIENCE: Duration = Duration::from_secs(120);
/// Liveness is not tested here; refused calls are retried as long as needed.
const DAEMON: &str = "heartbeat_ms = 500\nstale_after_ms = 60000\nmax_retries = 1000";

#[sqlx::test]
async fn a_route_above_what_its_server_takes_settles_near_it(pool: PgPool) {
    let store = store(&pool).await;
    let mock = MockUpstream::start(
        MockBehavior::with_latency(Duration::from_millis(400)).with_overload(Overload {
            max_in_flight: 40,
            retry_after: None,
        }),
    )
    .await;
    let cfg = config(&mock.url(), "concurrency = 256", DAEMON, "");
    let daemons = [start(&store, cfg.clone()), start(&store, cfg)];
    let batch = batch_from_lines(&store, &lines_for("m", "l-", 8_000)).await;
    eventually(PATIENCE, "calls", || async { mock.total_calls() > 0 }).await;
    // Warm-up: the first burst (256 calls) is mostly refused.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (calls0, refused0) = (mock.total_calls(), mock.refused());
    let (mut sum, mut samples) = (0u64, 0u64);
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        sum += mock.in_flight();
        samples += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let calls = mock.total_calls() - calls0;
    let refused = mock.refused() - refused0;
    let mean = sum as f64 / samples as f64;
    let refused_share = refused as f64 / calls as f64;
    eprintln!(
        "in flight {mean:.1} on average; {refused} of {calls} calls refused ({:.1}%); {:.0} calls/s",
        100.0 * refused_share,
        (calls - refused) as f64 / 4.0
    );
    assert!(
        (32.0..=48.0).contains(&mean),
        "{mean:.1} calls in flight on average, not 40 ± 20%"
    );
    assert!(refused_share < 0.05, "{refused} of {calls} calls refused");
    store.cancel_batch(Owner::Any, batch).await.unwrap();
    for d in daemons {
        d.stop().await;
    }
}

#[sqlx::test]
async fn a_healthy_upstream_at_full_load_keeps_the_limit_at_its_ceiling(pool: PgPool) {
    let store = store(&pool).await;
    let mock = MockUpstream::start(MockBehavior::with_latency(Duration::from_millis(50))).await;
    let cfg = config(&mock.url(), "concurrency = 512", DAEMON, "");
    let d = start(&store, cfg);
    let batch = batch_from_lines(&store, &lines_for("m", "l-", 20_000)).await;
    eventually(PATIENCE, "calls", || async { mock.total_calls() > 0 }).await;
    // Sampled while the batch keeps the route loaded (the latency rule only
    // acts then), well past the rule's warm-up of 4 × 512 answers.
    let (mut limits, mut most_in_flight) = (Vec::new(), 0);
    let until = Instant::now() + PATIENCE;
    while mock.total_calls() < 10_000 && Instant::now() < until {
        most_in_flight = most_in_flight.max(mock.in_flight());
        limits.extend(d.monitor.route_limits());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "{} samples, up to {most_in_flight} calls in flight, {} calls in all",
        limits.len(),
        mock.total_calls()
    );
    assert!(
        most_in_flight >= 256,
        "the route was never loaded: {most_in_flight}"
    );
    assert!(!limits.is_empty());
    // A machine whose cores are busy stretches every call the daemon times,
    // which the latency rule may read as congestion for a moment; a rule
    // that cuts a steady upstream keeps the limit low for most samples.
    let at_ceiling = limits.iter().filter(|l| l.limit == 512).count();
    let lowest = limits.iter().map(|l| l.limit).min().unwrap_or(0);
    assert!(limits.iter().all(|l| l.ceiling == 512));
    assert!(
        at_ceiling * 10 >= limits.len() * 8 && lowest >= 256,
        "the limit was at its ceiling in {at_ceiling} of {} samples, at least {lowest}",
        limits.len()
    );
    store.cancel_batch(Owner::Any, batch).await.unwrap();
    d.stop().await;
}

#[sqlx::test]
async fn retry_after_stops_every_daemons_calls(pool: PgPool) {
    let store = store(&pool).await;
    let arrivals: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let told: Arc<Mutex<Option<Instant>>> = Arc::default();
    let (a, t) = (arrivals.clone(), told.clone());
    let mock = MockUpstream::start(
        MockBehavior::with_latency(Duration::from_millis(50)).respond(move |call| {
            let now = Instant::now();
            let n = {
                let mut a = a.lock().unwrap();
                a.push(now);
                a.len()
            };
            if n == 100 {
                *t.lock().unwrap() = Some(now);
                MockReply::status(429, r#"{"error":{"message":"slow down"}}"#)
                    .with_header("retry-after", "2")
            } else {
                MockReply::ok_for(call)
            }
        }),
    )
    .await;
    let cfg = config(&mock.url(), "concurrency = 16", DAEMON, "");
    let daemons = [start(&store, cfg.clone()), start(&store, cfg)];
    let batch = batch_from_lines(&store, &lines_for("m", "l-", 3_000)).await;
    eventually(PATIENCE, "the Retry-After", || async {
        told.lock().unwrap().is_some()
    })
    .await;
    let told = told.lock().unwrap().unwrap();
    eventually(PATIENCE, "calls after the pause", || async {
        arrivals
            .lock()
            .unwrap()
            .last()
            .is_some_and(|&l| l > told + Duration::from_secs(2))
    })
    .await;
    let arrivals = arrivals.lock().unwrap().clone();
    // Calls already on their way when the pause was set may still arrive;
    // the other daemon learns of it through the database within its poll.
    let late: Vec<Duration> = arrivals
        .iter()
        .filter(|&&at| at > told + Duration::from_millis(500))
        .map(|&at| at - told)
        .filter(|d| *d < Duration::from_millis(1_950))
        .collect();
    assert!(
        late.is_empty(),
        "{} calls during the pause, the first at {:?} after it",
        late.len(),
        late.first()
    );
    store.cancel_batch(Owner::Any, batch).await.unwrap();
    for d in daemons {
        d.stop().await;
    }
}
