//! `fusillade serve` as a process: refuses to expose the API without keys,
//! serves `/healthz` with `--api-only`, never logs a key, and counts the
//! daemon's work in `/metrics`.

mod common;

use common::daemon::lines_for;
use common::http::{Client, metric};
use common::jsonl;
use common::process::{self, TempDir, database_url};
use fusillade::mock::{MockBehavior, MockReply, MockUpstream};
use sqlx::PgPool;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

#[tokio::test]
async fn refuses_a_non_loopback_address_without_auth() {
    let mut cmd = process::fusillade();
    cmd.args(["serve", "--listen", "0.0.0.0:0"])
        .args(["--database-url", "postgres://nobody@127.0.0.1:1/none"]);
    let out = process::output(cmd, LONG).await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("[auth]") && stderr.contains("0.0.0.0"),
        "{stderr}"
    );
}

#[sqlx::test]
async fn api_only_serves_healthz(pool: PgPool) {
    let mut cmd = process::fusillade();
    cmd.args(["serve", "--api-only", "--listen", "127.0.0.1:0"])
        .args(["--database-url", &database_url(&pool).await]);
    let server = process::serve(cmd, LONG).await;
    let health = reqwest::get(format!("{}/healthz", server.base))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), r#"{"status":"ok"}"#);
    // No daemon registered itself.
    let daemons: i64 = sqlx::query_scalar("SELECT count(*) FROM daemons")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(daemons, 0);
}

/// Secrets that must never reach a log line, whatever the level.
const UPSTREAM_KEY: &str = "sk-upstream-4f1c9e2b7a";
const CLIENT_KEY: &str = "sk-client-8d3a6b0e5f";

#[sqlx::test]
async fn keys_are_never_logged_even_at_trace(pool: PgPool) {
    let seen_auth = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = seen_auth.clone();
    let mock = MockUpstream::start(MockBehavior::default().respond(move |c| {
        seen.lock().unwrap().push(c.authorization.clone());
        if c.custom_id.as_deref() == Some("r-1") {
            MockReply::status(401, r#"{"error":{"message":"refused"}}"#)
        } else {
            MockReply::ok_for(c)
        }
    }))
    .await;
    let dir = TempDir::new("keys");
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[upstream]\nurl = \"{}\"\napi_key_env = \"UPSTREAM_KEY\"\n\
             [daemon]\nbackoff_ms = 10\nmax_backoff_ms = 50\nheartbeat_ms = 200\n\
             [auth]\nkeys = {{ \"{CLIENT_KEY}\" = \"alice\" }}\n",
            mock.url()
        ),
    )
    .unwrap();
    let log = dir.join("serve.log");
    let db = database_url(&pool).await;
    let mut cmd = process::fusillade();
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .args(["--database-url", &db])
        .env("RUST_LOG", "trace")
        .env("UPSTREAM_KEY", UPSTREAM_KEY)
        .stderr(std::fs::File::create(&log).unwrap());
    let mut server = process::serve(cmd, LONG).await;
    let api = Client::new(&server.base, Some(CLIENT_KEY));
    let file = api.upload(jsonl(&lines_for("m", "r-", 3))).await;
    let batch = api.create_batch(&file).await;
    let done = api.finished_batch(&batch, LONG).await;
    assert_eq!(done["request_counts"]["completed"], 2, "{done}");
    api.lines(&done["output_file_id"]).await;
    // A wrong key, which is refused, and a reload of the config.
    let stranger = Client::new(&server.base, Some("sk-wrong-key"));
    assert_eq!(stranger.get("/v1/batches").await.0, 401);
    server.process.signal("HUP");
    let until = std::time::Instant::now() + LONG;
    while !std::fs::read_to_string(&log)
        .unwrap()
        .contains("configuration reloaded")
    {
        assert!(
            std::time::Instant::now() < until,
            "the reload was not logged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.process.signal("TERM");
    assert_eq!(server.process.wait_async(LONG).await.code(), Some(0));

    // The key did reach the upstream, so it went through the code that logs.
    let sent = seen_auth.lock().unwrap().clone();
    assert_eq!(sent.len(), 3);
    assert!(
        sent.iter()
            .all(|a| a.as_deref() == Some(&*format!("Bearer {UPSTREAM_KEY}")))
    );
    let text = std::fs::read_to_string(&log).unwrap();
    // The log is the trace of the whole run (so the check below means something).
    for expected in ["TRACE", "DEBUG", "serving the API", "hyper_util::client"] {
        assert!(text.contains(expected), "no {expected:?} in the log");
    }
    for secret in [UPSTREAM_KEY, CLIENT_KEY] {
        let line = text.lines().find(|l| l.contains(secret));
        assert_eq!(line, None, "a key was logged");
    }
    // Nor is either kept in the database (the daemon registers its config).
    let dump: Vec<String> = sqlx::query_scalar("SELECT config::text FROM daemons")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert!(!dump.is_empty());
    for d in dump {
        assert!(!d.contains(UPSTREAM_KEY) && !d.contains(CLIENT_KEY), "{d}");
    }
}

#[sqlx::test]
async fn metrics_count_the_daemons_work(pool: PgPool) {
    // Model `slow` is never answered (its batch is cancelled); `fail-*`
    // get a final 400; `retry-*` a 503 first, then a 200.
    let mock = MockUpstream::start(MockBehavior::default().respond(|c| {
        let id = c.custom_id.as_deref().unwrap_or_default();
        if c.model == "slow" {
            MockReply::hanging()
        } else if id.starts_with("fail-") {
            MockReply::status(400, r#"{"error":{"message":"no"}}"#)
        } else if id.starts_with("retry-") && c.attempt == 1 {
            MockReply::status(503, r#"{"error":{"message":"busy"}}"#)
        } else {
            MockReply::ok_for(c)
        }
    }))
    .await;
    let dir = TempDir::new("metrics");
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[upstream]\nurl = \"{}\"\nconcurrency = 8\n\
             [models.slow]\nconcurrency = 2\n\
             [daemon]\nbackoff_ms = 10\nmax_backoff_ms = 50\nheartbeat_ms = 200\n",
            mock.url()
        ),
    )
    .unwrap();
    let mut cmd = process::fusillade();
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .args(["--database-url", &database_url(&pool).await]);
    let server = process::serve(cmd, LONG).await;
    let api = Client::new(&server.base, None);
    let scrape = || {
        let api = api.clone();
        async move {
            let (status, text) = api.get("/metrics").await;
            assert_eq!(status, 200);
            text
        }
    };

    // During a batch: two calls of model slow are held, a third waits.
    let slow = api
        .create_batch(&api.upload(jsonl(&lines_for("slow", "slow-", 3))).await)
        .await;
    assert!(mock.wait_until(LONG, |s| s.in_flight == 2).await);
    let until = std::time::Instant::now() + LONG;
    loop {
        let text = scrape().await;
        let in_flight = metric(&text, "fusillade_in_flight", &[("model", "slow")]);
        let state = |s| metric(&text, "fusillade_requests", &[("state", s)]).unwrap_or(-1.0);
        if in_flight == Some(2.0) && state("claimed") + state("processing") == 3.0 {
            assert_eq!(state("pending"), 0.0, "{text}");
            break;
        }
        assert!(std::time::Instant::now() < until, "{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = api
        .post(
            &format!("/v1/batches/{}/cancel", slow["id"].as_str().unwrap()),
            &serde_json::json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let slow = api.finished_batch(&slow, LONG).await;
    assert_eq!(slow["status"], "cancelled", "{slow}");

    // After a batch: every call counted by its outcome.
    let mut lines = lines_for("m", "ok-", 5);
    lines.extend(lines_for("m", "fail-", 2));
    lines.extend(lines_for("m", "retry-", 1));
    let batch = api.create_batch(&api.upload(jsonl(&lines)).await).await;
    let done = api.finished_batch(&batch, LONG).await;
    assert_eq!(done["request_counts"]["completed"], 6, "{done}");
    let text = scrape().await;
    let m = |name: &str, labels: &[(&str, &str)]| metric(&text, name, labels);
    let outcome = |o: &str| {
        m(
            "fusillade_upstream_requests_total",
            &[("model", "m"), ("outcome", o)],
        )
    };
    assert_eq!(outcome("completed"), Some(6.0), "{text}");
    assert_eq!(outcome("failed"), Some(2.0), "{text}");
    assert_eq!(outcome("retried"), Some(1.0), "{text}");
    assert_eq!(
        m("fusillade_retries_total", &[("model", "m")]),
        Some(1.0),
        "{text}"
    );
    // One latency sample per answered call: 5 + 2 + 2.
    assert_eq!(
        m(
            "fusillade_upstream_latency_seconds_count",
            &[("model", "m")]
        ),
        Some(9.0),
        "{text}"
    );
    for state in ["pending", "claimed", "processing"] {
        assert_eq!(
            m("fusillade_requests", &[("state", state)]),
            Some(0.0),
            "{text}"
        );
    }
    assert_eq!(
        m(
            "fusillade_api_requests_total",
            &[("route", "/v1/batches"), ("status", "200")]
        ),
        Some(2.0),
        "{text}"
    );
}

#[sqlx::test]
async fn shared_calls_are_counted_in_metrics_and_on_the_batch(pool: PgPool) {
    use common::{EMBEDDINGS, line_with};
    use fusillade::mock::CacheModel;
    let mock = MockUpstream::start(MockBehavior::with_cache(CacheModel {
        decode: Duration::from_millis(100),
        ..CacheModel::default()
    }))
    .await;
    let dir = TempDir::new("coalesced-metrics");
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!("[upstream]\nurl = \"{}\"\nconcurrency = 4\n", mock.url()),
    )
    .unwrap();
    let mut cmd = process::fusillade();
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .args(["--database-url", &database_url(&pool).await]);
    let server = process::serve(cmd, LONG).await;
    let api = Client::new(&server.base, None);

    // Five identical temperature-0 lines (one call), and two identical
    // lines at 0.7 (two calls).
    let chat = |t: f64| {
        serde_json::json!({"model": "m", "temperature": t,
            "messages": [{"role": "user", "content": "same"}]})
        .to_string()
    };
    let mut lines: Vec<String> = (0..5)
        .map(|i| line_with(&format!("cold-{i}"), common::CHAT, &chat(0.0)))
        .collect();
    lines.extend((0..2).map(|i| line_with(&format!("warm-{i}"), common::CHAT, &chat(0.7))));
    let batch = api.create_batch(&api.upload(jsonl(&lines)).await).await;
    let done = api.finished_batch(&batch, LONG).await;
    assert_eq!(done["request_counts"]["completed"], 7, "{done}");
    assert_eq!(done["coalesced_lines"], 4, "{done}");
    assert_eq!(done["coalesced_lines_details"]["identical"], 4, "{done}");
    assert_eq!(done["coalesced_lines_details"]["packed"], 0, "{done}");

    // Single-input embeddings lines: packed (how many per call depends on
    // what was waiting), every call counted once.
    let lines: Vec<String> = (0..40)
        .map(|i| {
            let body = serde_json::json!({"model": "e", "input": format!("text {i}")});
            line_with(&format!("e{i}"), EMBEDDINGS, &body.to_string())
        })
        .collect();
    let file = api.upload(jsonl(&lines)).await;
    let (status, created) = api
        .post(
            "/v1/batches",
            &serde_json::json!({"input_file_id": file["id"], "endpoint": EMBEDDINGS,
                                "completion_window": "24h"}),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    let created: serde_json::Value = serde_json::from_str(&created).unwrap();
    let embedded = api.finished_batch(&created, LONG).await;
    assert_eq!(embedded["request_counts"]["completed"], 40, "{embedded}");
    let stats = mock.cache_stats().unwrap();
    let packed = embedded["coalesced_lines_details"]["packed"]
        .as_i64()
        .unwrap();
    assert!(
        packed >= 40 - stats.embedding_calls as i64 && stats.embedding_calls < 40,
        "{embedded} {stats:?}"
    );

    let text = api.get("/metrics").await.1;
    let m = |name: &str, labels: &[(&str, &str)]| metric(&text, name, labels);
    assert_eq!(
        m(
            "fusillade_upstream_requests_total",
            &[("model", "m"), ("outcome", "completed")]
        ),
        Some(3.0),
        "real calls only: {text}"
    );
    assert_eq!(
        m(
            "fusillade_coalesced_lines_total",
            &[("model", "m"), ("kind", "identical")]
        ),
        Some(4.0),
        "{text}"
    );
    assert_eq!(
        m(
            "fusillade_coalesced_lines_total",
            &[("model", "e"), ("kind", "packed")]
        ),
        Some(packed as f64),
        "{text}"
    );
    assert_eq!(
        m(
            "fusillade_upstream_requests_total",
            &[("model", "e"), ("outcome", "completed")]
        ),
        Some(stats.embedding_calls as f64),
        "each call once, a packed one too: {text}"
    );
}
