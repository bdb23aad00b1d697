//! While the database is away, fusillade fails fast and then resumes:
//! `/healthz` answers 503 within 2 s and API calls within about 2 s, whether
//! the server is stopped (connections refused) or frozen (connections
//! accepted, never answered); `serve`'s daemon, a `worker` and `run` carry
//! on once it is back, each line ending exactly once.
//!
//! Each test starts a PostgreSQL cluster of its own (tests/common/cluster.rs),
//! since it stops it.

mod common;

use common::cluster::Cluster;
use common::daemon::lines_for;
use common::http::{Client, assert_each_once};
use common::process::{self, ChildGuard, TempDir};
use common::{CHAT, jsonl, new_batch, upload};
use fusillade::PostgresStore;
use fusillade::mock::{MockBehavior, MockUpstream};
use fusillade::store::{BatchStore, RequestStore};
use std::process::Stdio;
use std::time::Duration;

/// Long enough for a busy 2-core machine; the tests end as soon as they can.
const LONG: Duration = Duration::from_secs(120);

/// The promise: `/healthz` answers within this while the database is away.
const HEALTH_BOUND: Duration = Duration::from_secs(2);

/// API calls wait for a connection at most the API's acquire timeout (2 s);
/// one more second covers the rest of the call on a busy machine.
const API_BOUND: Duration = Duration::from_secs(3);

/// A cluster, started off the async runtime (initdb takes seconds).
async fn cluster() -> Cluster {
    tokio::task::spawn_blocking(Cluster::start).await.unwrap()
}

/// Runs a blocking step on the cluster (stop, restart, freeze).
async fn on<F: FnOnce(&mut Cluster) + Send + 'static>(mut c: Cluster, f: F) -> Cluster {
    tokio::task::spawn_blocking(move || {
        f(&mut c);
        c
    })
    .await
    .unwrap()
}

/// Fast daemon timers, and a stale window no outage here comes near (this
/// is not a test of liveness).
fn write_config(dir: &TempDir, upstream: &str) -> std::path::PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!(
            "[upstream]\nurl = \"{upstream}\"\nconcurrency = 4\n\
             [daemon]\nbackoff_ms = 10\nmax_backoff_ms = 50\nheartbeat_ms = 500\n\
             stale_after_ms = 60000\nshutdown_grace_ms = 5000\n"
        ),
    )
    .unwrap();
    path
}

async fn serve(config: &std::path::Path, db: &str, api_only: bool) -> process::Served {
    let mut cmd = process::fusillade();
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(config)
        .args(["--database-url", db])
        .stderr(Stdio::null());
    if api_only {
        cmd.arg("--api-only");
    }
    process::serve(cmd, LONG).await
}

/// `/healthz` and an API call, asked while the database is away: each
/// answers 503 within its bound.
async fn assert_fast_503s(api: &Client, batch_path: &str, why: &str) {
    for i in 0..3 {
        let (status, took) = api.timed_get("/healthz").await;
        println!("{why}: /healthz {i} answered {status} after {took:?}");
        assert_eq!(status, 503, "{why}: /healthz {i}");
        assert!(
            took <= HEALTH_BOUND,
            "{why}: /healthz {i} answered after {took:?}"
        );
    }
    for path in [batch_path, "/v1/batches", "/v1/files"] {
        let (status, took) = api.timed_get(path).await;
        println!("{why}: {path} answered {status} after {took:?}");
        assert_eq!(status, 503, "{why}: {path}");
        assert!(took <= API_BOUND, "{why}: {path} answered after {took:?}");
    }
}

/// Polls `/healthz` until it answers 200.
async fn healthy_again(api: &Client) {
    let until = std::time::Instant::now() + LONG;
    while api.get("/healthz").await.0 != 200 {
        assert!(
            std::time::Instant::now() < until,
            "/healthz never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_stopped_database_gets_fast_503s_and_serve_resumes_when_it_is_back() {
    let cluster = cluster().await;
    let mock = MockUpstream::start(MockBehavior::with_latency(Duration::from_millis(20))).await;
    let dir = TempDir::new("outage");
    let config = write_config(&dir, &mock.url());
    let server = serve(&config, &cluster.url(), false).await;
    let api = Client::new(&server.base, None);
    assert_eq!(api.get("/healthz").await.0, 200);
    let ids: Vec<String> = (0..200).map(|i| format!("r-{i}")).collect();
    let file = api.upload(jsonl(&lines_for("m", "r-", 200))).await;
    let batch = api.create_batch(&file).await;
    let batch_path = format!("/v1/batches/{}", batch["id"].as_str().unwrap());
    assert!(mock.wait_until(LONG, |s| s.total_calls >= 20).await);

    let cluster = on(cluster, |c| c.stop()).await;
    assert_fast_503s(&api, &batch_path, "stopped").await;

    let _cluster = on(cluster, |c| c.restart()).await;
    healthy_again(&api).await;
    let done = api.finished_batch(&batch, LONG).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["request_counts"]["completed"], 200, "{done}");
    let mut lines = api.lines(&done["output_file_id"]).await;
    lines.extend(api.lines(&done["error_file_id"]).await);
    assert_each_once(&lines, &ids);
    assert!(
        server_alive(server.process),
        "serve exited during the outage"
    );
}

fn server_alive(mut p: ChildGuard) -> bool {
    p.try_status().is_none()
}

#[tokio::test]
async fn a_frozen_database_gets_fast_503s_too() {
    let cluster = cluster().await;
    let dir = TempDir::new("outage");
    let config = write_config(&dir, "http://127.0.0.1:9");
    let server = serve(&config, &cluster.url(), true).await;
    let api = Client::new(&server.base, None);
    let file = api.upload(jsonl(&lines_for("m", "r-", 3))).await;
    let batch = api.create_batch(&file).await;
    let batch_path = format!("/v1/batches/{}", batch["id"].as_str().unwrap());
    assert_eq!(api.get(&batch_path).await.0, 200);

    // Every server process stopped: pooled connections stay open, new ones
    // are accepted by the kernel, and nothing answers.
    let cluster = on(cluster, |c| c.freeze()).await;
    assert_fast_503s(&api, &batch_path, "frozen").await;

    let _cluster = on(cluster, |c| c.thaw()).await;
    healthy_again(&api).await;
    assert_eq!(api.get(&batch_path).await.0, 200);
}

/// A store on the cluster, migrated, with a batch of `n` lines `r-<i>`.
async fn batch_on(cluster: &Cluster, n: usize) -> (PostgresStore, fusillade::BatchId) {
    let pool = sqlx::PgPool::connect(&cluster.url()).await.unwrap();
    fusillade::store::migrate(&pool).await.unwrap();
    let store = PostgresStore::new(pool);
    let file = upload(&store, "", &jsonl(&lines_for("m", "r-", n))).await;
    let batch = store
        .create_batch(new_batch("", file.id, CHAT))
        .await
        .unwrap();
    (store, batch.id)
}

/// Polls the file until it holds `what`.
async fn logged(path: &std::path::Path, what: &str) {
    let until = std::time::Instant::now() + LONG;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(what) {
            return;
        }
        assert!(
            std::time::Instant::now() < until,
            "never logged {what:?}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_worker_backs_off_while_the_database_is_away_and_resumes() {
    let cluster = cluster().await;
    let mock = MockUpstream::start(MockBehavior::with_latency(Duration::from_millis(20))).await;
    let (store, batch) = batch_on(&cluster, 300).await;
    let dir = TempDir::new("outage");
    let config = write_config(&dir, &mock.url());
    let log = dir.join("worker.log");
    let mut cmd = process::fusillade();
    cmd.arg("worker")
        .arg("--config")
        .arg(&config)
        .args(["--database-url", &cluster.url()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut worker = ChildGuard::spawn(&mut cmd);
    assert!(mock.wait_until(LONG, |s| s.total_calls >= 20).await);

    let cluster = on(cluster, |c| c.stop()).await;
    // The worker notices, says so, and stays up.
    logged(&log, "database error").await;
    assert!(worker.try_status().is_none(), "the worker exited");
    let _cluster = on(cluster, |c| c.restart()).await;

    let until = std::time::Instant::now() + LONG;
    let done = loop {
        if let Ok(Some(b)) = store.get_batch(fusillade::store::Owner::Any, batch).await
            && b.status.is_terminal()
        {
            break b;
        }
        if std::time::Instant::now() > until {
            let live: Vec<(String, String, i32)> = sqlx::query_as(
                "SELECT custom_id, state, attempt FROM requests WHERE batch_id = $1",
            )
            .bind(batch)
            .fetch_all(&store.pools().primary)
            .await
            .unwrap();
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("the batch never ended; left: {live:?}\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(done.status, fusillade::BatchStatus::Completed);
    assert_eq!(done.request_counts.completed, 300);
    let ids: Vec<String> = (0..300).map(|i| format!("r-{i}")).collect();
    let mut lines = common::daemon::json_lines(store.output_stream(batch)).await;
    lines.extend(common::daemon::json_lines(store.error_stream(batch)).await);
    assert_each_once(&lines, &ids);
    worker.signal("TERM");
    assert_eq!(worker.wait_async(LONG).await.code(), Some(0));
}

#[tokio::test]
async fn run_waits_for_the_database_and_resumes() {
    let cluster = cluster().await;
    let mock = MockUpstream::start(MockBehavior::with_latency(Duration::from_millis(20))).await;
    let dir = TempDir::new("outage");
    let config = write_config(&dir, &mock.url());
    std::fs::write(dir.join("in.jsonl"), jsonl(&lines_for("m", "r-", 300))).unwrap();
    let log = dir.join("run.log");
    let mut cmd = process::fusillade();
    cmd.arg("run")
        .arg(dir.join("in.jsonl"))
        .arg("-o")
        .arg(dir.join("out.jsonl"))
        .arg("--errors")
        .arg(dir.join("err.jsonl"))
        .arg("--config")
        .arg(&config)
        .args(["--upstream", &mock.url(), "--database-url", &cluster.url()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut run = ChildGuard::spawn(&mut cmd);
    assert!(mock.wait_until(LONG, |s| s.total_calls >= 20).await);

    let cluster = on(cluster, |c| c.stop()).await;
    logged(&log, "waiting for the database").await;
    assert!(run.try_status().is_none(), "run exited");
    let _cluster = on(cluster, |c| c.restart()).await;

    let status = run.wait_async(LONG).await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(0), "{text}");
    assert!(text.contains("the database is back"), "{text}");
    let read = |name: &str| -> Vec<serde_json::Value> {
        std::fs::read_to_string(dir.join(name))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let mut lines = read("out.jsonl");
    assert_eq!(lines.len(), 300, "{text}");
    lines.extend(read("err.jsonl"));
    let ids: Vec<String> = (0..300).map(|i| format!("r-{i}")).collect();
    assert_each_once(&lines, &ids);
}
