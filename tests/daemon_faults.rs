//! The daemon on PostgreSQL when things break: a daemon killed mid-flight,
//! connections terminated by the server, and `fusillade run` killed and
//! rerun. An answer too large to keep runs on every backend in
//! tests/conformance/answers.rs.

mod common;

use common::daemon::*;
use common::process::{self, ChildGuard, TempDir, database_url};
use common::*;
use fusillade::domain::batch::BatchStatus;
use fusillade::mock::{MockBehavior, MockUpstream};
use fusillade::store::RequestStore;
use fusillade::{BatchId, PostgresStore};
use serde_json::Value;
use sqlx::PgPool;
use std::collections::HashMap;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(90);

/// Every custom id appears exactly once across output and error files.
async fn assert_each_line_once(store: &PostgresStore, batch: BatchId, n: usize) {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for line in json_lines(store.output_stream(batch))
        .await
        .into_iter()
        .chain(json_lines(store.error_stream(batch)).await)
    {
        *seen
            .entry(line["custom_id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(seen.len(), n);
    assert!(seen.values().all(|&c| c == 1), "{seen:?}");
}

#[sqlx::test]
async fn a_killed_daemons_claims_are_finished_by_another(pool: PgPool) {
    let store = store(&pool).await;
    let mock = MockUpstream::start(MockBehavior::with_latency(Duration::from_millis(300))).await;
    let batch = batch_from_lines(&store, &lines_for("m", "r-", 40)).await;
    let cfg = config(&mock.url(), "concurrency = 8", "", "");

    let doomed = start_crashable(&pool, cfg.clone());
    assert!(mock.wait_until(LONG, |s| s.in_flight == 8).await);
    doomed.crash();
    let claimed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM requests WHERE state IN ('claimed', 'processing')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(claimed > 0, "the dead daemon left claims behind");

    let survivor = start(&store, cfg);
    let b = finished_batch(&store, batch, LONG).await;
    survivor.stop().await;
    assert_eq!(b.status, BatchStatus::Completed);
    assert_eq!(b.request_counts.completed, 40);
    assert_each_line_once(&store, batch, 40).await;
    let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM daemons WHERE status = 'dead'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(dead, 1);
}

#[sqlx::test]
async fn terminated_connections_do_not_lose_work(pool: PgPool) {
    let store = store(&pool).await;
    let mock = MockUpstream::start(MockBehavior::with_latency(Duration::from_millis(20))).await;
    let batch = batch_from_lines(&store, &lines_for("m", "r-", 150)).await;
    let daemon = start(&store, config(&mock.url(), "concurrency = 4", "", ""));
    for round in 1..=3u64 {
        assert!(
            mock.wait_until(LONG, |s| s.total_calls >= round * 30).await,
            "progress before round {round}"
        );
        let killed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()) t",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert!(killed > 0);
    }
    let b = finished_batch(&store, batch, LONG).await;
    daemon.stop().await;
    assert_eq!(b.status, BatchStatus::Completed);
    assert_eq!(b.request_counts.completed, 150);
    assert_each_line_once(&store, batch, 150).await;
}

fn fusillade_run(dir: &std::path::Path, db: &str, upstream: &str) -> std::process::Command {
    let mut cmd = process::fusillade();
    cmd.arg("run")
        .arg(dir.join("in.jsonl"))
        .arg("--output")
        .arg(dir.join("out.jsonl"))
        .arg("--errors")
        .arg(dir.join("err.jsonl"))
        .arg("--config")
        .arg(dir.join("config.toml"))
        .arg("--upstream")
        .arg(upstream)
        .arg("--database-url")
        .arg(db)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    cmd
}

fn read_lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[sqlx::test]
async fn run_survives_kill_9_and_resumes_without_resending(pool: PgPool) {
    let mock = MockUpstream::start(MockBehavior::with_latency(Duration::from_millis(40))).await;
    let dir = TempDir::new("test");
    std::fs::write(dir.join("in.jsonl"), jsonl(&lines_for("m", "r-", 300))).unwrap();
    std::fs::write(
        dir.join("config.toml"),
        "[upstream]\nconcurrency = 8\n[daemon]\nheartbeat_ms = 100\nstale_after_ms = 500\n",
    )
    .unwrap();
    let db = database_url(&pool).await;

    let mut child = ChildGuard::spawn(&mut fusillade_run(&dir, &db, &mock.url()));
    assert!(mock.wait_until(LONG, |s| s.total_calls >= 80).await);
    child.signal("KILL");
    child.wait_async(LONG).await;
    assert!(!dir.join("out.jsonl").exists());
    let done_before: Vec<String> =
        sqlx::query_scalar("SELECT custom_id FROM request_results WHERE state = 'completed'")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(!done_before.is_empty());

    let out = process::output(fusillade_run(&dir, &db, &mock.url()), LONG).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "rerun failed: {stderr}");
    assert!(stderr.contains("resuming batch"), "{stderr}");

    let results = read_lines(&dir.join("out.jsonl"));
    assert_eq!(results.len(), 300);
    let ids: std::collections::HashSet<_> = results
        .iter()
        .map(|r| r["custom_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 300);
    assert!(read_lines(&dir.join("err.jsonl")).is_empty());
    let stats = mock.stats();
    for id in &done_before {
        assert_eq!(
            stats.call_times(id).len(),
            1,
            "{id} was completed and must not be resent"
        );
    }
    let batches: i64 = sqlx::query_scalar("SELECT count(*) FROM batches")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(batches, 1, "the rerun resumed the same batch");
    // Only the killed run's daemon was declared dead, and no line was
    // cancelled: the rerun's daemon was never taken for dead.
    let (dead, cancelled): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM daemons WHERE status = 'dead'), \
                (SELECT count(*) FROM request_results WHERE state = 'canceled')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((dead, cancelled), (1, 0));
}

#[sqlx::test]
async fn run_reports_refused_input_with_exit_code_2(pool: PgPool) {
    let mock = MockUpstream::start(MockBehavior::with_latency(Duration::ZERO)).await;
    let dir = TempDir::new("test");
    std::fs::write(dir.join("in.jsonl"), "{\"custom_id\": \"a\"}\nnot json\n").unwrap();
    std::fs::write(dir.join("config.toml"), "").unwrap();
    let db = database_url(&pool).await;
    let mut cmd = fusillade_run(&dir, &db, &mock.url());
    cmd.stderr(std::process::Stdio::piped());
    let out = process::output(cmd, LONG).await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line 1") && stderr.contains("line 2"),
        "{stderr}"
    );
    assert_eq!(mock.stats().total_calls, 0);
}
