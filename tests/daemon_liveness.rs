//! A daemon that loses its standing (declared dead by another, or unable to
//! heartbeat) drops its calls without writing anything, holds no slot that
//! another daemon could reuse meanwhile, and comes back under a new id; its
//! heartbeats follow `heartbeat_ms`.

mod common;

use common::daemon::*;
use common::*;
use fusillade::domain::batch::BatchStatus;
use fusillade::domain::ids::DaemonId;
use fusillade::mock::{MockBehavior, MockReply, MockUpstream};
use fusillade::store::{DaemonStore, MaintenanceStore, NewDaemon, RequestStore};
use fusillade::{BatchId, PostgresStore};
use sqlx::PgPool;
use std::collections::HashMap;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(90);

/// The running daemons' ids, once there are `n`.
async fn running(pool: &PgPool, n: usize) -> Vec<DaemonId> {
    let until = tokio::time::Instant::now() + LONG;
    loop {
        let ids: Vec<DaemonId> =
            sqlx::query_scalar("SELECT id FROM daemons WHERE status = 'running' ORDER BY id")
                .fetch_all(pool)
                .await
                .unwrap();
        if ids.len() == n {
            return ids;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "{n} daemons never ran: {ids:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Declares `victim` dead as another daemon's rescuer would: its heartbeat
/// is aged and a rescue run by `by` finds it stale (retried, since the
/// victim's own heartbeat may land between the two statements). Returns the
/// claims the rescue returned to the queue.
async fn declare_dead(pool: &PgPool, store: &PostgresStore, victim: DaemonId, by: DaemonId) -> u64 {
    let minute = Duration::from_secs(60);
    let until = tokio::time::Instant::now() + LONG;
    loop {
        sqlx::query("UPDATE daemons SET last_heartbeat = now() - interval '1 hour' WHERE id = $1")
            .bind(victim)
            .execute(pool)
            .await
            .unwrap();
        let r = store.rescue(by, Some(minute), minute).await.unwrap();
        if r.dead_daemons == 1 {
            return r.requests;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "the victim was never declared dead"
        );
    }
}

async fn dead_daemons(pool: &PgPool) -> Vec<DaemonId> {
    sqlx::query_scalar("SELECT id FROM daemons WHERE status = 'dead'")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// Every line completed exactly once: no error line (no `batch_cancelled`
/// that nobody asked for), no cancelled result.
async fn assert_all_completed_once(pool: &PgPool, store: &PostgresStore, batch: BatchId, n: usize) {
    let b = finished_batch(store, batch, LONG).await;
    assert_eq!(b.status, BatchStatus::Completed);
    assert_eq!(
        (b.request_counts.completed, b.request_counts.failed),
        (n as i64, 0),
        "{:?}",
        b.request_counts
    );
    let errors = json_lines(store.error_stream(batch)).await;
    assert!(errors.is_empty(), "{errors:?}");
    let mut seen: HashMap<String, usize> = HashMap::new();
    for line in json_lines(store.output_stream(batch)).await {
        *seen
            .entry(line["custom_id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(seen.len(), n);
    assert!(seen.values().all(|&c| c == 1), "{seen:?}");
    let cancelled: i64 =
        sqlx::query_scalar("SELECT count(*) FROM request_results WHERE state = 'canceled'")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(cancelled, 0);
}

#[sqlx::test]
async fn a_daemon_declared_dead_mid_flight_writes_nothing_and_every_line_completes_once(
    pool: PgPool,
) {
    let store = store(&pool).await;
    let mock = MockUpstream::start(MockBehavior::with_latency(Duration::from_millis(30))).await;
    let batch = batch_from_lines(&store, &lines_for("m", "r-", 300)).await;
    let daemon = start(&store, config(&mock.url(), "concurrency = 4", "", ""));
    let victim = running(&pool, 1).await[0];
    assert!(mock.wait_until(LONG, |s| s.total_calls >= 40).await);
    // Another daemon's rescuer, which then goes away cleanly.
    let rescuer = store
        .register_daemon(NewDaemon {
            hostname: "elsewhere".into(),
            pid: 1,
            version: "0".into(),
            config: serde_json::json!({}),
        })
        .await
        .unwrap()
        .id;
    let freed = declare_dead(&pool, &store, victim, rescuer).await;
    // (On a busy machine the victim's new id may have found this one, which
    // never heartbeats, dead already.)
    let _ = store.mark_daemon_stopped(rescuer).await;
    assert!(
        freed > 0,
        "the victim held claims when it was declared dead"
    );

    assert_all_completed_once(&pool, &store, batch, 300).await;
    daemon.stop().await;
    let mut dead = dead_daemons(&pool).await;
    dead.retain(|d| *d != rescuer);
    assert_eq!(dead, vec![victim], "only the victim");
    let registered: i64 = sqlx::query_scalar("SELECT count(*) FROM daemons")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(registered, 3, "the victim came back under a new id");
    assert!(mock.stats().max_in_flight_of("m") <= 4);
}

#[sqlx::test]
async fn a_daemon_that_cannot_heartbeat_drops_its_calls_unwritten_and_hands_them_back(
    pool: PgPool,
) {
    let store = store(&pool).await;
    // First calls hang until dropped; later ones answer at once.
    let mock = MockUpstream::start(MockBehavior::default().respond(|call| {
        if call.attempt == 1 {
            MockReply::hanging()
        } else {
            MockReply::ok_for(call)
        }
    }))
    .await;
    let batch = batch_from_lines(&store, &lines_for("m", "r-", 4)).await;
    let daemon = start(&store, config(&mock.url(), "concurrency = 4", "", ""));
    let victim = running(&pool, 1).await[0];
    assert!(mock.wait_until(LONG, |s| s.in_flight == 4).await);

    // Its row locked, no heartbeat goes through (nor anything else that
    // writes the row, such as retiring it), while its leases stay valid:
    // any outcome written for the dropped calls would be accepted.
    let mut lock = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM daemons WHERE id = $1 FOR UPDATE")
        .bind(victim)
        .execute(&mut *lock)
        .await
        .unwrap();
    assert!(
        mock.wait_until(LONG, |s| s.in_flight == 0).await,
        "the calls were dropped before the stale window ended"
    );
    lock.commit().await.unwrap();

    assert_all_completed_once(&pool, &store, batch, 4).await;
    let report = daemon.stop().await;
    assert_eq!(
        (report.abandoned, report.completed, report.failed),
        (4, 4, 0),
        "each first call dropped unwritten, each second one completed"
    );
    assert_eq!(dead_daemons(&pool).await, vec![victim]);
    let stats = mock.stats();
    for i in 0..4 {
        assert_eq!(
            stats.call_times(&format!("r-{i}")).len(),
            2,
            "dropped, then redone"
        );
    }
}

#[sqlx::test]
async fn two_daemons_keep_the_limit_while_one_is_declared_dead(pool: PgPool) {
    let store = store(&pool).await;
    let mock = MockUpstream::start(MockBehavior::with_latency(Duration::from_millis(200))).await;
    let batch = batch_from_lines(&store, &lines_for("m", "r-", 120)).await;
    let cfg = config(&mock.url(), "concurrency = 4", "", "");
    let d1 = start(&store, cfg.clone());
    let d2 = start(&store, cfg);
    let ids = running(&pool, 2).await;
    assert!(mock.wait_until(LONG, |s| s.total_calls >= 20).await);
    // The victim's slots are not given to the other daemon while its calls
    // may still run.
    let freed = declare_dead(&pool, &store, ids[0], ids[1]).await;
    assert!(
        freed > 0,
        "the victim held claims when it was declared dead"
    );

    assert_all_completed_once(&pool, &store, batch, 120).await;
    d1.stop().await;
    d2.stop().await;
    assert_eq!(mock.stats().max_in_flight_of("m"), 4, "the limit held");
    assert_eq!(dead_daemons(&pool).await, vec![ids[0]], "only the victim");
}

#[sqlx::test]
async fn heartbeats_follow_heartbeat_ms(pool: PgPool) {
    // Every heartbeat the daemons table records, with the database's time.
    sqlx::raw_sql(
        "CREATE TABLE beats (at timestamptz NOT NULL);
         CREATE FUNCTION log_beat() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.last_heartbeat IS DISTINCT FROM OLD.last_heartbeat THEN
                 INSERT INTO beats VALUES (NEW.last_heartbeat);
             END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER log_beat AFTER UPDATE ON daemons
             FOR EACH ROW EXECUTE FUNCTION log_beat();",
    )
    .execute(&pool)
    .await
    .unwrap();
    let store = store(&pool).await;
    let mock = MockUpstream::start(MockBehavior::default()).await;
    let daemon = start(
        &store,
        config(
            &mock.url(),
            "",
            "heartbeat_ms = 100\nstale_after_ms = 600",
            "",
        ),
    );
    eventually(LONG, "eleven heartbeats", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM beats")
            .fetch_one(&pool)
            .await
            .unwrap();
        n >= 11
    })
    .await;
    daemon.stop().await;
    let mut gaps: Vec<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM at - lag(at) OVER (ORDER BY at))::float8 * 1000
         FROM beats ORDER BY at OFFSET 1 LIMIT 10",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    gaps.sort_by(f64::total_cmp);
    // Typical beats are one heartbeat apart (a slower timer would space
    // every one of them out); a busy machine may delay a few.
    let median = gaps[gaps.len() / 2];
    assert!(median < 250.0, "heartbeats every ~100 ms, not {gaps:?}");
}
