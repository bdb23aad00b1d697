//! `fusillade run` as a user runs it: the binary against a mock upstream and
//! the test's own database. Every child process is killed when its guard
//! drops, whatever the outcome; waits poll with deadlines.

mod common;

use common::daemon::*;
use common::process::{self, ChildGuard, TempDir, database_url};
use common::*;
use fusillade::mock::{MockBehavior, MockReply, MockUpstream};
use fusillade::store::BatchStore;
use serde_json::Value;
use sqlx::PgPool;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Long enough for a busy 2-core machine; the tests end as soon as they can.
const LONG: Duration = Duration::from_secs(120);

/// Runs `cmd` to its end (killed after [`LONG`]); returns its output.
async fn output(cmd: Command) -> Output {
    process::output(cmd, LONG).await
}

/// A fresh directory, removed when the test ends.
fn tempdir() -> TempDir {
    TempDir::new("cli")
}

/// `fusillade run DIR/in.jsonl -o DIR/out.jsonl --errors DIR/err.jsonl`
/// against `db`, with fast daemon timers; more flags go after.
fn run_cmd(dir: &Path, db: &str) -> Command {
    let config = dir.join("config.toml");
    if !config.exists() {
        std::fs::write(
            &config,
            "[daemon]\nbackoff_ms = 10\nmax_backoff_ms = 50\nheartbeat_ms = 100\nstale_after_ms = 600\n",
        )
        .unwrap();
    }
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fusillade"));
    cmd.arg("run")
        .arg(dir.join("in.jsonl"))
        .arg("-o")
        .arg(dir.join("out.jsonl"))
        .arg("--errors")
        .arg(dir.join("err.jsonl"))
        .arg("--config")
        .arg(&config)
        .arg("--database-url")
        .arg(db)
        .env("RUST_LOG", "warn")
        .env_remove("DATABASE_URL")
        .stdin(Stdio::null());
    cmd
}

fn read_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

async fn count_batches(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM batches")
        .fetch_one(pool)
        .await
        .unwrap()
}

// 1. Scope: a run never executes another batch's work.

#[sqlx::test]
async fn run_never_sends_another_owners_pending_request(pool: PgPool) {
    let mock = MockUpstream::start(MockBehavior::with_latency(Duration::from_millis(5))).await;
    // Alice's batch, as `serve --api-only` creates it: pending, no daemon.
    let store = store(&pool).await;
    let file = upload(&store, "alice", &jsonl(&lines_for("m", "alice-", 3))).await;
    let alice = store
        .create_batch(new_batch("alice", file.id, CHAT))
        .await
        .unwrap();

    let dir = tempdir();
    std::fs::write(dir.join("in.jsonl"), jsonl(&lines_for("m", "bob-", 10))).unwrap();
    let db = database_url(&pool).await;
    let mut cmd = run_cmd(&dir, &db);
    cmd.arg("--upstream").arg(mock.url());
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(read_lines(&dir.join("out.jsonl")).len(), 10);

    let stats = mock.stats();
    assert_eq!(stats.total_calls, 10, "only bob's lines are sent");
    assert!(
        stats
            .calls_by_custom_id
            .keys()
            .all(|k| k.starts_with("bob-")),
        "{:?}",
        stats.calls_by_custom_id.keys()
    );
    let pending: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM requests WHERE batch_id = $1 AND state = 'pending'",
    )
    .bind(alice.id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(pending, 3, "alice's requests stay pending");
}

// Keys go only to their own origin.

#[sqlx::test]
async fn keys_are_sent_only_to_their_own_origin(pool: PgPool) {
    let mock = MockUpstream::start(MockBehavior::default().respond(|c| {
        let mut reply = MockReply::ok_for(c);
        reply.body = serde_json::json!({"auth": c.authorization}).to_string();
        reply
    }))
    .await;
    let dir = tempdir();
    std::fs::write(dir.join("in.jsonl"), jsonl(&lines_for("m", "r-", 1))).unwrap();
    // The config's key belongs to another server than --upstream.
    std::fs::write(
        dir.join("config.toml"),
        "[upstream]\nurl = \"http://elsewhere.invalid:9\"\napi_key_env = \"CONFIG_KEY\"\n",
    )
    .unwrap();
    let db = database_url(&pool).await;
    let auth_sent = |extra: &'static [&'static str]| {
        let mut cmd = run_cmd(&dir, &db);
        cmd.arg("--upstream")
            .arg(mock.url())
            .arg("--fresh")
            .args(extra)
            .env("CONFIG_KEY", "sk-config")
            .env("FLAG_KEY", "sk-flag");
        let dir = dir.to_path_buf();
        async move {
            let out = output(cmd).await;
            assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
            let line = &read_lines(&dir.join("out.jsonl"))[0];
            line["response"]["body"]["auth"].clone()
        }
    };
    assert_eq!(auth_sent(&[]).await, Value::Null);
    assert_eq!(
        auth_sent(&["--api-key-env", "FLAG_KEY"]).await,
        "Bearer sk-flag"
    );
}

// 2. Exit codes.

#[sqlx::test]
async fn failed_lines_exit_3_and_say_how_many_and_where(pool: PgPool) {
    let mock = MockUpstream::start(MockBehavior::default().respond(|c| {
        if c.custom_id.as_deref() == Some("r-1") {
            MockReply::status(400, r#"{"error":{"message":"bad"}}"#)
        } else {
            MockReply::ok_for(c)
        }
    }))
    .await;
    let dir = tempdir();
    std::fs::write(dir.join("in.jsonl"), jsonl(&lines_for("m", "r-", 5))).unwrap();
    let db = database_url(&pool).await;
    let mut cmd = run_cmd(&dir, &db);
    cmd.arg("--upstream")
        .arg(mock.url())
        .env("RUST_LOG", "info");
    let out = output(cmd).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("INFO"), "{err}");
    assert!(!err.contains('\x1b'), "no colours off a terminal: {err:?}");
    assert!(err.contains("1 of 5 lines failed"), "{err}");
    assert!(err.contains("err.jsonl"), "{err}");
    assert!(err.contains("--retry-failed"), "{err}");
    assert_eq!(read_lines(&dir.join("out.jsonl")).len(), 4);
    assert_eq!(read_lines(&dir.join("err.jsonl")).len(), 1);
}

#[sqlx::test]
async fn run_takes_minute_windows_and_the_tiers_names(pool: PgPool) {
    let mock = MockUpstream::start(MockBehavior::default()).await;
    let db = database_url(&pool).await;
    for window in ["90m", "priority", "flex", "0s"] {
        let dir = tempdir();
        std::fs::write(dir.join("in.jsonl"), jsonl(&lines_for("m", "r-", 2))).unwrap();
        let mut cmd = run_cmd(&dir, &db);
        cmd.arg("--upstream")
            .arg(mock.url())
            .arg("--fresh")
            .arg("--completion-window")
            .arg(window);
        let out = output(cmd).await;
        assert_eq!(out.status.code(), Some(0), "{window}: {}", stderr(&out));
        assert_eq!(read_lines(&dir.join("out.jsonl")).len(), 2, "{window}");
    }
    let windows: Vec<String> =
        sqlx::query_scalar("SELECT completion_window FROM batches ORDER BY created_at")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(windows, ["90m", "priority", "flex", "0s"]);
}

// 3. Resume: a `--fresh` run resumes; a finished run with failed lines
// offers --retry-failed, which re-sends only those.

#[sqlx::test]
async fn an_interrupted_fresh_run_is_resumed(pool: PgPool) {
    let mock = MockUpstream::start(MockBehavior::with_latency(Duration::from_millis(50))).await;
    let dir = tempdir();
    std::fs::write(dir.join("in.jsonl"), jsonl(&lines_for("m", "r-", 200))).unwrap();
    std::fs::write(
        dir.join("config.toml"),
        "[upstream]\nconcurrency = 4\n[daemon]\nheartbeat_ms = 100\nstale_after_ms = 600\nshutdown_grace_ms = 2000\n",
    )
    .unwrap();
    let db = database_url(&pool).await;
    let mut cmd = run_cmd(&dir, &db);
    cmd.arg("--upstream").arg(mock.url()).arg("--fresh");
    let err_path = dir.join("stderr.txt");
    let mut child = ChildGuard::spawn(
        cmd.stdout(Stdio::null())
            .stderr(std::fs::File::create(&err_path).unwrap()),
    );
    assert!(mock.wait_until(LONG, |s| s.total_calls >= 20).await);
    child.signal("INT");
    let status = child.wait_async(LONG).await;
    assert_eq!(status.code(), Some(130));
    // The count reported is the store's, after the daemon let go.
    let err = std::fs::read_to_string(&err_path).unwrap();
    let reported: i64 = err
        .split("interrupted with ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{err}"));
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM request_results")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(reported, stored, "{err}");
    let calls_before = mock.stats().total_calls;
    assert!(calls_before < 200);

    let mut cmd = run_cmd(&dir, &db);
    cmd.arg("--upstream").arg(mock.url());
    let out = output(cmd).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("resuming batch"), "{err}");
    assert_eq!(count_batches(&pool).await, 1, "no second batch");
    assert_eq!(read_lines(&dir.join("out.jsonl")).len(), 200);
    // Each line was sent once (those in flight at the interrupt may have
    // been sent again).
    assert!(
        mock.stats().total_calls <= 200 + 4,
        "{}",
        mock.stats().total_calls
    );
}

#[sqlx::test]
async fn a_finished_run_with_failed_lines_offers_retry_failed(pool: PgPool) {
    let failing = Arc::new(AtomicBool::new(true));
    let f = failing.clone();
    let mock = MockUpstream::start(MockBehavior::default().respond(move |c| {
        if f.load(Ordering::SeqCst) && c.custom_id.as_deref() == Some("r-2") {
            MockReply::status(400, "{}")
        } else {
            MockReply::ok_for(c)
        }
    }))
    .await;
    let dir = tempdir();
    std::fs::write(dir.join("in.jsonl"), jsonl(&lines_for("m", "r-", 6))).unwrap();
    let db = database_url(&pool).await;
    let cmd = |extra: &[&str]| {
        let mut cmd = run_cmd(&dir, &db);
        cmd.arg("--upstream").arg(mock.url()).args(extra);
        cmd
    };
    assert_eq!(output(cmd(&[])).await.status.code(), Some(3));
    failing.store(false, Ordering::SeqCst);

    // A plain rerun sends nothing and says what can be done.
    let out = output(cmd(&[])).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("already ended"), "{err}");
    assert!(
        err.contains("--retry-failed") && err.contains("--fresh"),
        "{err}"
    );
    assert_eq!(mock.stats().total_calls, 6);

    // --retry-failed sends only the failed line again.
    let out = output(cmd(&["--retry-failed"])).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let stats = mock.stats();
    assert_eq!(stats.total_calls, 7);
    assert_eq!(stats.call_times("r-2").len(), 2);
    assert_eq!(read_lines(&dir.join("out.jsonl")).len(), 6);
    assert!(read_lines(&dir.join("err.jsonl")).is_empty());
    assert_eq!(count_batches(&pool).await, 1);
}

// 4. Fail fast.

#[sqlx::test]
async fn no_upstream_is_a_usage_error_that_says_how_to_give_one(pool: PgPool) {
    let dir = tempdir();
    std::fs::write(dir.join("in.jsonl"), jsonl(&lines_for("m", "r-", 2))).unwrap();
    let out = output(run_cmd(&dir, &database_url(&pool).await)).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--upstream"), "{err}");
    assert_eq!(count_batches(&pool).await, 0);
}

#[sqlx::test]
async fn a_bad_config_or_database_url_is_a_usage_error(pool: PgPool) {
    let mock = MockUpstream::start(MockBehavior::default()).await;
    let dir = tempdir();
    std::fs::write(dir.join("in.jsonl"), jsonl(&lines_for("m", "r-", 2))).unwrap();
    let db = database_url(&pool).await;
    // A config that does not parse, and one with a key of the wrong type.
    for (text, named) in [
        ("[upstream\n", "config"),
        ("[upstream]\nconcurrency = \"many\"\n", "concurrency"),
    ] {
        std::fs::write(dir.join("config.toml"), text).unwrap();
        let mut cmd = run_cmd(&dir, &db);
        cmd.arg("--upstream").arg(mock.url());
        let out = output(cmd).await;
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{text:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(named), "{err}");
    }
    // A database that is not there.
    std::fs::remove_file(dir.join("config.toml")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = run_cmd(&dir, &format!("postgres://postgres@127.0.0.1:{port}/none"));
    cmd.arg("--upstream").arg(mock.url());
    let out = output(cmd).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("cannot connect to the database"), "{err}");
    assert_eq!(mock.stats().total_calls, 0);
    assert_eq!(count_batches(&pool).await, 0);
}

#[sqlx::test]
async fn an_unreachable_upstream_fails_before_anything_is_sent(pool: PgPool) {
    // A port nobody listens on: bound, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempdir();
    std::fs::write(dir.join("in.jsonl"), jsonl(&lines_for("m", "r-", 2))).unwrap();
    let mut cmd = run_cmd(&dir, &database_url(&pool).await);
    let url = format!("http://127.0.0.1:{port}");
    cmd.arg("--upstream").arg(&url);
    let started = Instant::now();
    let out = output(cmd).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&url) && err.contains("refused"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(count_batches(&pool).await, 0);
}

#[sqlx::test]
async fn an_upstream_refusing_every_call_stops_the_run_resumably(pool: PgPool) {
    let mock = MockUpstream::start(
        MockBehavior::default().respond(|_| MockReply::status(401, r#"{"error":"bad key"}"#)),
    )
    .await;
    let dir = tempdir();
    std::fs::write(dir.join("in.jsonl"), jsonl(&lines_for("m", "r-", 50))).unwrap();
    std::fs::write(
        dir.join("config.toml"),
        "[upstream]\nconcurrency = 2\n[daemon]\nheartbeat_ms = 100\nstale_after_ms = 600\n",
    )
    .unwrap();
    let db = database_url(&pool).await;
    // The base URL given with /v1, as users do: the message shows the
    // doubled path actually called.
    let mut cmd = run_cmd(&dir, &db);
    cmd.arg("--upstream").arg(format!("{}/v1", mock.url()));
    let out = output(cmd).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let called = format!("{}/v1/v1/chat/completions", mock.url());
    assert!(err.contains(&called), "{err}");
    assert!(err.contains("401") && err.contains("bad key"), "{err}");
    // Three calls judge it; at most one more was on its way (concurrency 2).
    assert!(
        mock.stats().total_calls <= 4,
        "{}",
        mock.stats().total_calls
    );
    let failed: i64 = sqlx::query_scalar("SELECT count(*) FROM request_results")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(failed, 0, "no line was failed by the misconfiguration");

    // Fixed: the same input resumes and succeeds.
    let good = MockUpstream::start(MockBehavior::default()).await;
    let mut cmd = run_cmd(&dir, &db);
    cmd.arg("--upstream").arg(good.url());
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(read_lines(&dir.join("out.jsonl")).len(), 50);
    assert_eq!(count_batches(&pool).await, 1);
}

#[sqlx::test]
async fn an_unresolvable_host_fails_before_anything_is_sent(pool: PgPool) {
    let dir = tempdir();
    std::fs::write(dir.join("in.jsonl"), jsonl(&lines_for("m", "r-", 2))).unwrap();
    let mut cmd = run_cmd(&dir, &database_url(&pool).await);
    cmd.arg("--upstream")
        .arg("http://no-such-host.invalid:8000");
    let out = output(cmd).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("http://no-such-host.invalid:8000") && err.contains("resolv"),
        "{err}"
    );
    assert_eq!(count_batches(&pool).await, 0);
}

// 5. Outputs checked before any work; stdin and stdout.

#[sqlx::test]
async fn bad_outputs_fail_before_any_work(pool: PgPool) {
    let mock = MockUpstream::start(MockBehavior::default()).await;
    let dir = tempdir();
    std::fs::write(dir.join("in.jsonl"), jsonl(&lines_for("m", "r-", 2))).unwrap();
    let db = database_url(&pool).await;
    for (output_path, what) in [
        (dir.join("missing/out.jsonl"), "does not exist"),
        (dir.join("in.jsonl"), "is the input"),
    ] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fusillade"));
        cmd.arg("run")
            .arg(dir.join("in.jsonl"))
            .arg("-o")
            .arg(&output_path)
            .arg("--upstream")
            .arg(mock.url())
            .arg("--database-url")
            .arg(&db);
        let out = output(cmd).await;
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(what), "{err}");
    }
    assert_eq!(mock.stats().total_calls, 0);
    assert_eq!(count_batches(&pool).await, 0);
}

#[sqlx::test]
async fn stdin_in_stdout_out_and_a_json_summary(pool: PgPool) {
    let mock = MockUpstream::start(MockBehavior::default()).await;
    let dir = tempdir();
    let db = database_url(&pool).await;
    let input = jsonl(&lines_for("m", "r-", 3));

    // `-i - -o -`: lines in on stdin, results out on stdout.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fusillade"));
    cmd.args(["run", "-i", "-", "-o", "-", "--errors"])
        .arg(dir.join("err.jsonl"))
        .arg("--upstream")
        .arg(mock.url())
        .arg("--database-url")
        .arg(&db)
        .arg("-q")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = ChildGuard::spawn(&mut cmd);
        child
            .child()
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let mut stdout = String::new();
        child
            .child()
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        let mut stderr = String::new();
        child
            .child()
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        let status = child.wait_timeout(LONG);
        (status, stdout, stderr)
    })
    .await
    .unwrap();
    assert_eq!(out.0.code(), Some(0), "{}", out.2);
    // -q: nothing on stderr when all goes well.
    assert_eq!(out.2, "");
    let lines: Vec<Value> = out
        .1
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert!(lines.iter().all(|l| l["response"]["status_code"] == 200));
    assert!(!Path::new("-").exists(), "no file named -");

    // `--json`: one object on stdout.
    std::fs::write(dir.join("in.jsonl"), jsonl(&lines_for("m", "j-", 2))).unwrap();
    let mut cmd = run_cmd(&dir, &db);
    cmd.arg("--upstream").arg(mock.url()).arg("--json");
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["request_counts"]["completed"], 2);
    assert!(!stderr(&out).contains("DEBUG"), "{}", stderr(&out));

    // `-v`: fusillade's debug lines too (without RUST_LOG, which would win).
    let mut cmd = run_cmd(&dir, &db);
    cmd.arg("--upstream")
        .arg(mock.url())
        .args(["-v", "--fresh"])
        .env_remove("RUST_LOG");
    let out = output(cmd).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("DEBUG") && err.contains("fusillade"), "{err}");
    assert_eq!(summary["status"], "completed");
    assert!(summary["batch_id"].as_str().is_some());
}

// 7. Progress on a terminal: log lines go above the bar, never into it.

#[sqlx::test]
async fn log_lines_are_not_glued_onto_the_progress_line(pool: PgPool) {
    let mock = MockUpstream::start(MockBehavior::with_latency(Duration::from_millis(100))).await;
    let dir = tempdir();
    std::fs::write(dir.join("in.jsonl"), jsonl(&lines_for("m", "r-", 40))).unwrap();
    std::fs::write(
        dir.join("config.toml"),
        "[upstream]\nconcurrency = 2\n[daemon]\nheartbeat_ms = 100\nstale_after_ms = 600\n",
    )
    .unwrap();
    let db = database_url(&pool).await;
    let inner = format!(
        "{} run {} -o {} --config {} --upstream {} --database-url {}",
        env!("CARGO_BIN_EXE_fusillade"),
        dir.join("in.jsonl").display(),
        dir.join("out.jsonl").display(),
        dir.join("config.toml").display(),
        mock.url(),
        db
    );
    // `script` gives the command a pseudo-terminal; sqlx logs every
    // statement at debug, so log lines arrive while the bar is drawn.
    let mut cmd = Command::new("script");
    cmd.args(["-qfec", &inner, "/dev/null"])
        .env("RUST_LOG", "info,sqlx::query=debug")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    let out = output(cmd).await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("in flight"), "a bar was drawn: {text}");
    assert!(text.contains("DEBUG"), "logs were written: {text}");
    for segment in text.split(['\n', '\r']) {
        assert!(
            !(segment.contains("in flight") && segment.contains("DEBUG")),
            "a log line glued to the bar: {segment:?}"
        );
    }
    assert!(
        !text.contains("\x1b[3"),
        "no colours with NO_COLOR: {text:?}"
    );
    // "in flight" is calls the upstream is answering (at most the
    // concurrency of 2), not requests claimed ahead.
    let shown: Vec<u32> = text
        .split("in flight ")
        .skip(1)
        .filter_map(|t| t.split(' ').next()?.parse().ok())
        .collect();
    assert!(shown.iter().any(|&n| n > 0), "{shown:?}");
    assert!(shown.iter().all(|&n| n <= 2), "{shown:?}");
}

// 8. The rest of the command line.

#[sqlx::test]
async fn every_subcommand_takes_config_and_errors_are_one_line(pool: PgPool) {
    let db = database_url(&pool).await;
    let dir = tempdir();
    std::fs::write(dir.join("c.toml"), "").unwrap();
    // No database setting must never reach the real home's default.
    let bin = || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fusillade"));
        cmd.env("XDG_STATE_HOME", dir.join("state"))
            .env("HOME", dir.join("home"))
            .env_remove("DATABASE_URL");
        cmd
    };
    let mut cmd = bin();
    cmd.arg("migrate")
        .arg("--config")
        .arg(dir.join("c.toml"))
        .arg("--database-url")
        .arg(&db);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let mut cmd = bin();
    cmd.args(["worker", "--config"]).arg(dir.join("nope.toml"));
    let out = output(cmd).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("nope.toml") && err.contains("does not exist"),
        "{err}"
    );

    let mut cmd = bin();
    cmd.args(["migrate", "--database-url", "mysql://x@localhost/db"]);
    let out = output(cmd).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("postgres://"), "{err}");

    for sub in ["serve", "worker", "migrate", "run"] {
        let mut cmd = bin();
        cmd.args([sub, "--help"]);
        let out = output(cmd).await;
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains("--config"), "{sub}: {help}");
        // The embedded default is documented where the flag is.
        assert!(help.contains("sqlite://"), "{sub}: {help}");
        assert!(help.contains("fusillade/fusillade.db"), "{sub}: {help}");
        assert!(!help.contains("SPEC"), "{sub}: {help}");
    }

    let mut cmd = bin();
    cmd.args(["completions", "bash"]);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("fusillade"));
}

#[sqlx::test]
async fn serve_listens_on_localhost_port_0(pool: PgPool) {
    let db = database_url(&pool).await;
    let mut child = ChildGuard::spawn(
        Command::new(env!("CARGO_BIN_EXE_fusillade"))
            .args([
                "serve",
                "--api-only",
                "--listen",
                "localhost:0",
                "--database-url",
            ])
            .arg(&db)
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    let stdout = child.child().stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .unwrap();
        line
    });
    let line = tokio::time::timeout(LONG, line).await.unwrap().unwrap();
    assert!(line.contains("listening on http://"), "{line}");
    drop(child);
}

// The store's limits: `run` reads `[api]` as `serve` does.

#[sqlx::test]
async fn run_applies_the_endpoints_and_upload_limit_of_the_api_section(pool: PgPool) {
    let mock = MockUpstream::start(MockBehavior::default()).await;
    let db = database_url(&pool).await;

    // Only embeddings allowed: the chat lines are refused before any call.
    let dir = tempdir();
    std::fs::write(dir.join("in.jsonl"), jsonl(&lines_for("m", "c-", 3))).unwrap();
    std::fs::write(
        dir.join("config.toml"),
        "[api]\nendpoints = [\"/v1/embeddings\"]\n",
    )
    .unwrap();
    let mut cmd = run_cmd(&dir, &db);
    cmd.arg("--upstream").arg(mock.url());
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("\"/v1/chat/completions\" is not supported"),
        "{}",
        stderr(&out)
    );

    // A file over max_upload_bytes is not run either.
    let dir = tempdir();
    std::fs::write(dir.join("in.jsonl"), jsonl(&lines_for("m", "c-", 3))).unwrap();
    std::fs::write(dir.join("config.toml"), "[api]\nmax_upload_bytes = 100\n").unwrap();
    let mut cmd = run_cmd(&dir, &db);
    cmd.arg("--upstream").arg(mock.url());
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("100 bytes"), "{}", stderr(&out));
    assert_eq!(mock.stats().total_calls, 0);
}

#[sqlx::test]
async fn the_summary_counts_lines_answered_by_a_shared_call(pool: PgPool) {
    let mock = MockUpstream::start(MockBehavior::default()).await;
    let dir = tempdir();
    let db = database_url(&pool).await;
    let body = |q: &str| {
        serde_json::json!({"model": "m", "temperature": 0,
            "messages": [{"role": "user", "content": q}]})
        .to_string()
    };
    let mut lines: Vec<String> = (0..4)
        .map(|i| line_with(&format!("twin-{i}"), CHAT, &body("same")))
        .collect();
    lines.push(line_with("alone", CHAT, &body("other")));
    std::fs::write(dir.join("in.jsonl"), jsonl(&lines)).unwrap();
    let mut cmd = run_cmd(&dir, &db);
    cmd.arg("--upstream").arg(mock.url()).arg("--json");
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["request_counts"]["completed"], 5, "{summary}");
    assert_eq!(summary["coalesced_lines"], 3, "{summary}");
    assert_eq!(summary["coalesced_lines_details"]["identical"], 3);
    assert_eq!(summary["coalesced_lines_details"]["packed"], 0);
    assert_eq!(
        mock.stats().total_calls,
        2,
        "one call for the twins, one for the other"
    );
    // The line on stderr says it too (a rerun of the finished batch).
    let mut cmd = run_cmd(&dir, &db);
    cmd.arg("--upstream").arg(mock.url());
    let out = output(cmd).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("3 answered by a shared call (3 identical, 0 packed)"),
        "{err}"
    );
}
