//! Slow uploads against the real server (API and daemon in one process, as
//! `fusillade serve` runs them, over real sockets): clients that trickle
//! their bodies must not starve `/healthz`, the running batch or the
//! daemon's heartbeat; a client that stops sending is cut off; uploads over
//! the limit answer 429.

mod common;

use common::daemon::{Running, batch_from_lines, config, eventually, lines_for, start};
use common::store;
use fusillade::api::{ApiState, router};
use fusillade::config::Config;
use fusillade::mock::{MockBehavior, MockUpstream};
use fusillade::store::{API_ACQUIRE_TIMEOUT, API_CONNECTIONS, Owner};
use fusillade::{BatchStore, IngestLimits, PostgresStore};
use sqlx::PgPool;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// The boundary of the raw multipart bodies.
const BOUNDARY: &str = "slow-upload-boundary-41c7";
/// The oldest heartbeat accepted while uploads trickle.
const FRESH: Duration = Duration::from_secs(3);
/// Long enough for anything that should happen on a busy 2-core machine.
const LONG: Duration = Duration::from_secs(60);

/// The API and a daemon serving one database, as `fusillade serve` runs them.
struct Server {
    base: String,
    /// The API's pool.
    primary: PgPool,
    state: ApiState<PostgresStore>,
    daemon: Option<Running>,
    spool: PathBuf,
}

impl Server {
    /// Starts both with `[api]` keys `api` (and a spool directory of its own).
    /// The daemon is declared dead only after 5 s without a heartbeat, so a
    /// busy test machine cannot fail the test; the test asks for far fresher.
    async fn start(pool: &PgPool, upstream: &str, api: &str) -> Self {
        let spool = std::env::temp_dir().join(format!("fusillade-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir(&spool).unwrap();
        let extra = format!("[api]\nupload_spool_dir = \"{}\"\n{api}", spool.display());
        let cfg: Arc<Config> = config(upstream, "concurrency = 8", "stale_after_ms = 5000", &extra);
        // The API's pool as `fusillade serve` builds it: a few connections,
        // and a short wait for one.
        let primary = sqlx::postgres::PgPoolOptions::new()
            .max_connections(API_CONNECTIONS)
            .acquire_timeout(API_ACQUIRE_TIMEOUT)
            .connect_with(pool.connect_options().as_ref().clone())
            .await
            .unwrap();
        let store = PostgresStore::new(primary.clone()).with_limits(IngestLimits {
            max_file_bytes: cfg.api.max_upload_bytes,
            endpoints: cfg.api.endpoints.clone(),
            ..IngestLimits::default()
        });
        let daemon = start(&store, cfg.clone());
        let state = ApiState::fixed(store, (*cfg).clone());
        let app = router(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            base,
            primary,
            state,
            daemon: Some(daemon),
            spool,
        }
    }

    fn addr(&self) -> &str {
        self.base.trim_start_matches("http://")
    }

    /// Waits until `n` uploads are being received.
    async fn wait_for_uploads(&self, n: u32) {
        let gate = self.state.uploads();
        eventually(LONG, &format!("{n} uploads in progress"), || async {
            gate.in_use() == n
        })
        .await;
    }

    /// The files left in the spool directory.
    fn spooled(&self) -> usize {
        std::fs::read_dir(&self.spool).unwrap().count()
    }

    async fn stop(mut self) {
        if let Some(d) = self.daemon.take() {
            d.stop().await;
        }
        let _ = std::fs::remove_dir_all(&self.spool);
    }
}

/// `n` valid chat lines.
fn jsonl(prefix: &str, n: usize) -> String {
    lines_for("m", prefix, n)
        .into_iter()
        .map(|l| l + "\n")
        .collect()
}

/// A raw upload request: its head with the body's prefix up to the file's
/// bytes, the file's bytes, and the rest of the body.
fn raw_upload(addr: &str, content: &str) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let prefix = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n\
         --{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"slow.jsonl\"\r\n\
         Content-Type: application/jsonl\r\n\r\n"
    );
    let suffix = format!("\r\n--{BOUNDARY}--\r\n");
    let length = prefix.len() + content.len() + suffix.len();
    let head = format!(
        "POST /v1/files HTTP/1.1\r\nHost: {addr}\r\n\
         Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\
         Content-Length: {length}\r\nConnection: close\r\n\r\n{prefix}"
    );
    (
        head.into_bytes(),
        content.as_bytes().to_vec(),
        suffix.into_bytes(),
    )
}

/// The status code and the body of a raw HTTP/1.1 response.
fn parse_response(raw: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

/// An upload sent over raw TCP a few bytes every 200 ms until `finish` says
/// true, then all at once; gives the status and body of the answer.
async fn trickle(addr: String, content: String, finish: watch::Receiver<bool>) -> (u16, String) {
    let (head, file, rest) = raw_upload(&addr, &content);
    let mut conn = TcpStream::connect(&addr).await.unwrap();
    conn.write_all(&head).await.unwrap();
    let mut sent = 0;
    while !*finish.borrow() && sent < file.len() {
        let end = (sent + 8).min(file.len());
        conn.write_all(&file[sent..end]).await.unwrap();
        sent = end;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    conn.write_all(&file[sent..]).await.unwrap();
    conn.write_all(&rest).await.unwrap();
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer).await.unwrap();
    parse_response(&answer)
}

/// The age of the daemon's last heartbeat, and whether it is still running.
async fn heartbeat(pool: &PgPool) -> (Duration, String) {
    let (age_ms, status): (f64, String) = sqlx::query_as(
        "SELECT (extract(epoch FROM now() - last_heartbeat) * 1000)::float8, status \
         FROM daemons",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    (Duration::from_millis(age_ms.max(0.0) as u64), status)
}

#[sqlx::test]
async fn slow_uploads_starve_neither_health_checks_nor_the_daemon(pool: PgPool) {
    let mock = MockUpstream::start(MockBehavior::with_latency(Duration::from_millis(50))).await;
    let server = Server::start(&pool, &mock.url(), "max_concurrent_uploads = 12").await;
    let observer = store(&pool).await;
    // A batch long enough to run while the uploads trickle.
    const TOTAL: i64 = 300;
    let batch = batch_from_lines(&observer, &lines_for("m", "b-", TOTAL as usize)).await;

    // More slow uploads than the API has connections.
    let (finish, finishing) = watch::channel(false);
    let uploads: Vec<_> = (0..API_CONNECTIONS + 2)
        .map(|i| {
            tokio::spawn(trickle(
                server.addr().to_owned(),
                jsonl(&format!("u{i}-"), 40),
                finishing.clone(),
            ))
        })
        .collect();
    server.wait_for_uploads(API_CONNECTIONS + 2).await;

    // While they trickle: every health check answers within a second, the
    // batch keeps completing and the heartbeat stays fresh. This goes on for
    // well past the API pool's acquire timeout, and until the batch is done.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let started = Instant::now();
    let mut checks = 0;
    let mut completed = 0;
    while completed < TOTAL || started.elapsed() < API_ACQUIRE_TIMEOUT * 3 {
        assert!(
            started.elapsed() < LONG,
            "the batch did not finish: {completed} of {TOTAL}"
        );
        let asked = Instant::now();
        let health = client.get(format!("{}/healthz", server.base)).send().await;
        let health = health.unwrap_or_else(|e| {
            panic!(
                "/healthz did not answer within 1 s (check {checks}, after {:?}): {e}",
                asked.elapsed()
            )
        });
        assert_eq!(health.status(), 200, "check {checks}");
        let (age, status) = heartbeat(&pool).await;
        assert_eq!(status, "running", "the daemon was declared dead");
        // Beats come every 100 ms; a daemon starved of connections stops beating.
        assert!(age < FRESH, "heartbeat {age:?} old");
        let b = observer
            .get_batch(Owner::Any, batch)
            .await
            .unwrap()
            .unwrap();
        completed = b.request_counts.completed;
        checks += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        uploads.iter().all(|u| !u.is_finished()),
        "the uploads were still trickling"
    );

    // Then the uploads finish, and each is stored whole.
    finish.send(true).unwrap();
    for u in uploads {
        let (status, body) = tokio::time::timeout(LONG, u).await.unwrap().unwrap();
        assert_eq!(status, 200, "{body}");
        let file: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(file["object"], "file", "{file}");
    }
    let templates: i64 = sqlx::query_scalar(
        "SELECT COALESCE(sum(template_count), 0)::int8 FROM files WHERE filename = 'slow.jsonl'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(templates, 40 * i64::from(API_CONNECTIONS + 2));
    assert_eq!(server.spooled(), 0, "spools left behind");
    server.stop().await;
    mock.shutdown().await;
}

#[sqlx::test]
async fn a_client_that_stops_sending_is_cut_off(pool: PgPool) {
    let mock = MockUpstream::start(MockBehavior::default()).await;
    let server = Server::start(&pool, &mock.url(), "upload_idle_timeout_secs = 1").await;
    let (head, file, _) = raw_upload(server.addr(), &jsonl("s-", 10));
    let mut conn = TcpStream::connect(server.addr()).await.unwrap();
    conn.write_all(&head).await.unwrap();
    conn.write_all(&file[..file.len() / 2]).await.unwrap();
    let stopped = Instant::now();
    // Nothing more is sent; the connection stays open.
    let mut answer = Vec::new();
    tokio::time::timeout(LONG, conn.read_to_end(&mut answer))
        .await
        .expect("the stalled upload was never cut off")
        .unwrap();
    assert!(
        stopped.elapsed() >= Duration::from_millis(900),
        "cut off after {:?}, before the idle timeout",
        stopped.elapsed()
    );
    let (status, body) = parse_response(&answer);
    assert_eq!(status, 408, "{body}");
    let e: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(e["error"]["code"], "upload_timeout", "{e}");
    assert_eq!(e["error"]["param"], "file", "{e}");
    // Nothing was stored, nothing is left on disk.
    let files: i64 = sqlx::query_scalar("SELECT count(*) FROM files")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(files, 0);
    assert_eq!(server.spooled(), 0, "spools left behind");
    server.stop().await;
    mock.shutdown().await;
}

/// A small upload sent whole with reqwest; its status, `Retry-After` and body.
async fn quick_upload(base: &str) -> (u16, Option<String>, serde_json::Value) {
    let form = reqwest::multipart::Form::new()
        .text("purpose", "batch")
        .part(
            "file",
            reqwest::multipart::Part::bytes(jsonl("q-", 2).into_bytes()).file_name("quick.jsonl"),
        );
    let answer = reqwest::Client::new()
        .post(format!("{base}/v1/files"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let status = answer.status().as_u16();
    let retry_after = answer
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = answer.bytes().await.unwrap();
    (status, retry_after, serde_json::from_slice(&body).unwrap())
}

#[sqlx::test]
async fn uploads_over_the_limit_answer_429_until_a_place_frees(pool: PgPool) {
    let mock = MockUpstream::start(MockBehavior::default()).await;
    let server = Server::start(&pool, &mock.url(), "max_concurrent_uploads = 2").await;
    let (finish, finishing) = watch::channel(false);
    let slow: Vec<_> = (0..2)
        .map(|i| {
            tokio::spawn(trickle(
                server.addr().to_owned(),
                jsonl(&format!("w{i}-"), 40),
                finishing.clone(),
            ))
        })
        .collect();
    // Once both slow uploads are in, a third is refused at once.
    server.wait_for_uploads(2).await;
    let (status, retry_after, body) = quick_upload(&server.base).await;
    assert_eq!(status, 429, "{body}");
    let secs: u64 = retry_after.expect("a Retry-After header").parse().unwrap();
    assert!(secs >= 1, "Retry-After: {secs}");
    assert_eq!(body["error"]["code"], "too_many_uploads", "{body}");
    assert_eq!(body["error"]["type"], "rate_limit_error", "{body}");

    // When they finish, uploads are taken again.
    finish.send(true).unwrap();
    for u in slow {
        let (status, body) = tokio::time::timeout(LONG, u).await.unwrap().unwrap();
        assert_eq!(status, 200, "{body}");
    }
    let (status, _, body) = quick_upload(&server.base).await;
    assert_eq!(status, 200, "{body}");
    server.stop().await;
    mock.shutdown().await;
}

#[sqlx::test]
async fn with_every_api_connection_taken_healthz_answers_503_within_seconds(pool: PgPool) {
    let mock = MockUpstream::start(MockBehavior::default()).await;
    let server = Server::start(&pool, &mock.url(), "").await;
    let client = reqwest::Client::builder().timeout(LONG).build().unwrap();
    let healthz = format!("{}/healthz", server.base);
    // Every connection the pool can open, but for any the daemon's work
    // listener holds for good.
    let api = &server.primary;
    let mut taken = Vec::new();
    while api.size() < API_CONNECTIONS || api.num_idle() > 0 {
        match api.acquire().await {
            Ok(c) => taken.push(c),
            Err(_) => break,
        }
    }
    assert!(!taken.is_empty());
    let asked = Instant::now();
    let answer = client.get(&healthz).send().await.unwrap();
    assert_eq!(answer.status(), 503);
    assert!(
        asked.elapsed() < API_ACQUIRE_TIMEOUT + Duration::from_secs(2),
        "answered after {:?}",
        asked.elapsed()
    );
    drop(taken);
    let answer = client.get(&healthz).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    server.stop().await;
    mock.shutdown().await;
}
