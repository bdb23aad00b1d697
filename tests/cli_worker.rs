//! `fusillade worker` as a process: SIGTERM lets the calls in flight finish
//! and exits 0; SIGHUP reloads the config while it runs.

mod common;

use common::daemon::{batch_from_lines, eventually, finished_batch, lines_for};
use common::process::{self, ChildGuard, TempDir, database_url};
use common::store;
use fusillade::domain::batch::BatchStatus;
use fusillade::mock::{MockBehavior, MockReply, MockUpstream};
use sqlx::PgPool;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

/// Long enough for a busy 2-core machine; the tests end as soon as they can.
const LONG: Duration = Duration::from_secs(120);

/// Writes the worker's config: every model at `concurrency` against `url`.
fn write_config(path: &Path, url: &str, concurrency: u32) {
    std::fs::write(
        path,
        format!(
            "[upstream]\nurl = \"{url}\"\nconcurrency = {concurrency}\n\
             [daemon]\nbackoff_ms = 10\nmax_backoff_ms = 50\nheartbeat_ms = 200\n\
             stale_after_ms = 5000\nshutdown_grace_ms = 60000\n"
        ),
    )
    .unwrap();
}

/// `fusillade worker --config CONFIG --database-url DB`, its stderr in
/// `dir/worker.log`.
fn worker(dir: &TempDir, db: &str) -> ChildGuard {
    let mut cmd = process::fusillade();
    cmd.arg("worker")
        .arg("--config")
        .arg(dir.join("config.toml"))
        .arg("--database-url")
        .arg(db)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("worker.log")).unwrap());
    ChildGuard::spawn(&mut cmd)
}

async fn results(pool: &PgPool, state: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT custom_id FROM request_results WHERE state = $1 ORDER BY custom_id")
        .bind(state)
        .fetch_all(pool)
        .await
        .unwrap()
}

#[sqlx::test]
async fn sigterm_lets_calls_in_flight_finish_then_exits_0(pool: PgPool) {
    // Each call takes 3 s, far longer than it takes to send the signal.
    let mock = MockUpstream::start(
        MockBehavior::default()
            .respond(|c| MockReply::ok_for(c).with_delay(Duration::from_secs(3))),
    )
    .await;
    let store = store(&pool).await;
    let batch = batch_from_lines(&store, &lines_for("m", "r-", 10)).await;
    let dir = TempDir::new("worker");
    write_config(&dir.join("config.toml"), &mock.url(), 2);
    let mut worker = worker(&dir, &database_url(&pool).await);

    assert!(mock.wait_until(LONG, |s| s.in_flight == 2).await);
    worker.signal("TERM");
    let in_flight_at_signal = mock.in_flight();
    let called: Vec<String> = mock.stats().calls_by_custom_id.into_keys().collect();
    assert_eq!(in_flight_at_signal, 2, "the calls were still running");
    assert_eq!(called.len(), 2);

    let status = worker.wait_async(LONG).await;
    let log = std::fs::read_to_string(dir.join("worker.log")).unwrap();
    assert_eq!(status.code(), Some(0), "{log}");
    // The two calls ran to their answer and were recorded as such.
    let mut called = called;
    called.sort();
    assert_eq!(results(&pool, "completed").await, called, "{log}");
    // Nothing else was sent, and nothing is left claimed.
    assert_eq!(mock.stats().total_calls, 2);
    let (pending, in_flight): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE state = 'pending'), \
                count(*) FILTER (WHERE state <> 'pending') FROM requests WHERE batch_id = $1",
    )
    .bind(batch)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((pending, in_flight), (8, 0), "{log}");
    let daemon: String = sqlx::query_scalar("SELECT status FROM daemons")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(daemon, "stopped");
}

#[sqlx::test]
async fn sighup_reloads_the_config(pool: PgPool) {
    let mock = MockUpstream::start(
        MockBehavior::default()
            .respond(|c| MockReply::ok_for(c).with_delay(Duration::from_millis(300))),
    )
    .await;
    let store = store(&pool).await;
    let batch = batch_from_lines(&store, &lines_for("m", "r-", 60)).await;
    let dir = TempDir::new("worker");
    let config = dir.join("config.toml");
    write_config(&config, &mock.url(), 1);
    let mut worker = worker(&dir, &database_url(&pool).await);

    // One call at a time while the config says 1.
    assert!(mock.wait_until(LONG, |s| s.total_calls >= 4).await);
    assert_eq!(mock.stats().max_in_flight, 1);

    write_config(&config, &mock.url(), 4);
    worker.signal("HUP");
    assert!(
        mock.wait_until(LONG, |s| s.in_flight == 4).await,
        "the reloaded concurrency of 4 was never used: {:?}",
        mock.stats().max_in_flight
    );
    let log = dir.join("worker.log");
    eventually(LONG, "the reload to be logged", || async {
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("configuration reloaded")
    })
    .await;
    // A broken file is refused and the running config kept.
    std::fs::write(&config, "[upstream\n").unwrap();
    worker.signal("HUP");
    eventually(LONG, "the refusal to be logged", || async {
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("configuration not reloaded")
    })
    .await;
    let b = finished_batch(&store, batch, LONG).await;
    assert_eq!(b.status, BatchStatus::Completed);
    assert_eq!(b.request_counts.completed, 60);
    assert_eq!(mock.stats().max_in_flight, 4);
    assert!(worker.try_status().is_none(), "the worker is still running");
    worker.signal("TERM");
    assert_eq!(worker.wait_async(LONG).await.code(), Some(0));
}
