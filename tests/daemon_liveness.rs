//! A daemon that loses its standing (declared dead by another, or unable to
//! heartbeat) drops its calls without writing anything, holds no slot that
//! another daemon could reuse meanwhile, and comes back under a new id; its
//! heartbeats follow `heartbeat_ms`.

mod common;

use common::daemon::*;
use common::*;
use fusillade::config::Config;
use fusillade::daemon::Daemon;
use fusillade::domain::batch::BatchStatus;
use fusillade::domain::ids::DaemonId;
use fusillade::mock::{MockBehavior, MockReply, MockUpstream};
use fusillade::store::{DaemonStore, MaintenanceStore, NewDaemon, RequestStore};
use fusillade::{BatchId, PostgresStore};
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

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

/// Declares `victim` dead as another daemon's rescuer would, once its
/// heartbeats stopped landing: from now on they leave its heartbeat time as
/// it was (they still "succeed", so the victim learns only when it is
/// declared dead), that time is an hour old, and a rescue run by `by` finds
/// it stale. Returns the claims the rescue returned to the queue.
async fn declare_dead(pool: &PgPool, store: &PostgresStore, victim: DaemonId, by: DaemonId) -> u64 {
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS frozen (id uuid PRIMARY KEY);
         CREATE OR REPLACE FUNCTION freeze_heartbeat() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF EXISTS (SELECT 1 FROM frozen WHERE id = NEW.id) THEN
                 NEW.last_heartbeat := OLD.last_heartbeat;
             END IF;
             RETURN NEW;
         END $$;
         CREATE OR REPLACE TRIGGER freeze_heartbeat BEFORE UPDATE ON daemons
             FOR EACH ROW EXECUTE FUNCTION freeze_heartbeat();",
    )
    .execute(pool)
    .await
    .unwrap();
    // One statement, so that no heartbeat lands between the ageing and the
    // freeze (the trigger does not see the row this statement inserts).
    sqlx::query(
        "WITH f AS (INSERT INTO frozen VALUES ($1))
         UPDATE daemons SET last_heartbeat = now() - interval '1 hour' WHERE id = $1",
    )
    .bind(victim)
    .execute(pool)
    .await
    .unwrap();
    let minute = Duration::from_secs(60);
    let r = store.rescue(by, Some(minute), minute).await.unwrap();
    assert_eq!(r.dead_daemons, 1, "the victim was declared dead");
    r.requests
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

/// How long to stall, and who to tell when the stall begins.
type Stall = (Duration, tokio::sync::oneshot::Sender<()>);

/// A daemon on a runtime of its own, one thread, that the test can stall as
/// a starved CPU would: its tasks (calls, aborts) stop for a while, its
/// heartbeat thread goes on.
struct Stallable {
    stalls: tokio::sync::mpsc::UnboundedSender<Stall>,
    stop: CancellationToken,
    thread: std::thread::JoinHandle<()>,
}

fn start_stallable(pool: &PgPool, config: Arc<Config>) -> Stallable {
    let options = pool.connect_options().as_ref().clone();
    let (stalls, mut asked) = tokio::sync::mpsc::unbounded_channel::<Stall>();
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(4)
                .connect_with(options)
                .await
                .unwrap();
            let (_keep, config) = tokio::sync::watch::channel(config);
            let daemon = tokio::spawn(Daemon::new(PostgresStore::new(pool), config).run(stopped));
            tokio::spawn(async move {
                while let Some((pause, started)) = asked.recv().await {
                    let _ = started.send(());
                    // The stall itself: nothing else on this runtime runs.
                    std::thread::sleep(pause);
                }
            });
            daemon.await.unwrap().unwrap();
        });
    });
    Stallable {
        stalls,
        stop,
        thread,
    }
}

impl Stallable {
    /// Stalls the daemon's runtime for `pause`; returns once the stall began.
    async fn stall(&self, pause: Duration) {
        let (started, began) = tokio::sync::oneshot::channel();
        self.stalls.send((pause, started)).unwrap();
        began.await.unwrap();
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::task::spawn_blocking(move || self.thread.join().unwrap())
            .await
            .unwrap();
    }
}

#[sqlx::test]
async fn a_dead_daemons_slots_are_not_reused_while_its_stalled_calls_may_run(pool: PgPool) {
    let store = store(&pool).await;
    // First calls take long (until dropped), later ones answer at once.
    let mock = MockUpstream::start(MockBehavior::default().respond(|call| {
        let answer = MockReply::ok_for(call);
        if call.attempt == 1 {
            answer.with_delay(Duration::from_secs(3))
        } else {
            answer
        }
    }))
    .await;
    let batch = batch_from_lines(&store, &lines_for("m", "r-", 8)).await;
    let cfg = config(&mock.url(), "concurrency = 4", "stale_after_ms = 2000", "");
    let victim = start_stallable(&pool, cfg.clone());
    let victim_id = running(&pool, 1).await[0];
    assert!(mock.wait_until(LONG, |s| s.in_flight == 4).await);
    let other = start(&store, cfg);
    let other_id = running(&pool, 2)
        .await
        .into_iter()
        .find(|id| *id != victim_id)
        .unwrap();

    // Declared dead while its runtime cannot act on it: its 4 calls run on
    // for a second, while its slots must not go to the other daemon.
    victim.stall(Duration::from_secs(1)).await;
    let freed = declare_dead(&pool, &store, victim_id, other_id).await;
    assert!(freed >= 4, "its calls' claims were returned: {freed}");

    assert_all_completed_once(&pool, &store, batch, 8).await;
    victim.stop().await;
    other.stop().await;
    assert_eq!(mock.stats().max_in_flight_of("m"), 4, "the limit held");
    assert_eq!(
        dead_daemons(&pool).await,
        vec![victim_id],
        "only the victim"
    );
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
