//! Runs with no server: `fusillade demo` on a machine with no network and
//! no database, `fusillade run` against `fusillade mock` with no database
//! setting (the embedded default), resumed after kill -9, and the commands
//! that need PostgreSQL refusing an embedded database.
//!
//! Every command gets a cleared `DATABASE_URL` and a temporary
//! `XDG_STATE_HOME` and `HOME`, so no test touches the real home.

mod common;

use common::daemon::lines_for;
use common::jsonl;
use common::process::{self, ChildGuard, TempDir};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// Long enough for a busy 2-core machine; the tests end as soon as they can.
const LONG: Duration = Duration::from_secs(180);

/// The binary with no database setting and its state and home in `home`.
fn fusillade_in(home: &Path) -> Command {
    let mut cmd = process::fusillade();
    cmd.env("XDG_STATE_HOME", home.join("state"))
        .env("HOME", home.join("home"));
    cmd
}

/// Where the embedded default lives for [`fusillade_in`]`(home)`.
fn default_db(home: &Path) -> std::path::PathBuf {
    home.join("state/fusillade/fusillade.db")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// custom_id -> how many lines carry it, over the files given.
fn custom_ids(files: &[&Path]) -> BTreeMap<String, usize> {
    let mut ids = BTreeMap::new();
    for f in files {
        let text = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        for l in text.lines() {
            let v: Value = serde_json::from_str(l).unwrap();
            *ids.entry(v["custom_id"].as_str().unwrap().to_owned())
                .or_insert(0) += 1;
        }
    }
    ids
}

/// Whether this machine can give a process a network of its own with only
/// loopback up (`unshare -n` needs root and util-linux; `ip` brings lo up).
fn isolated_network() -> Result<(), String> {
    let ok = Command::new("unshare")
        .args(["-n", "sh", "-c", "ip link set lo up"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    match ok {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "`unshare -n` with `ip link set lo up` failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("cannot run unshare: {e}")),
    }
}

#[tokio::test]
async fn demo_runs_with_no_network_and_writes_every_line_once() {
    let tmp = TempDir::new("demo");
    let dir = tmp.join("demo");
    let mut cmd = fusillade_in(&tmp);
    match isolated_network() {
        Ok(()) => {
            // A network namespace of its own: only loopback, nothing else
            // reachable (no database server, no internet).
            let program = cmd.get_program().to_owned();
            let envs: Vec<_> = cmd
                .get_envs()
                .map(|(k, v)| (k.to_owned(), v.map(ToOwned::to_owned)))
                .collect();
            cmd = Command::new("unshare");
            cmd.args(["-n", "sh", "-c", r#"ip link set lo up && exec "$0" "$@""#])
                .arg(program)
                .stdin(Stdio::null());
            for (k, v) in envs {
                match v {
                    Some(v) => cmd.env(k, v),
                    None => cmd.env_remove(k),
                };
            }
        }
        Err(why) => eprintln!("running the demo with the machine's network: {why}"),
    }
    cmd.arg("demo")
        .arg("--dir")
        .arg(&dir)
        .args(["--lines", "600"]);
    let out = process::output(cmd, LONG).await;
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{said}\n{}", stderr(&out));

    let input = custom_ids(&[&dir.join("input.jsonl")]);
    assert_eq!(input.len(), 600);
    let results = custom_ids(&[&dir.join("output.jsonl"), &dir.join("errors.jsonl")]);
    assert_eq!(results, input, "every line once, in one of the two files");
    // The failed lines are exactly the ones meant to fail: those asking
    // for more tokens than the simulated server allows.
    let meant: Vec<String> = std::fs::read_to_string(dir.join("input.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["body"]["max_tokens"].as_u64().unwrap() > 4096)
        .map(|v| v["custom_id"].as_str().unwrap().to_owned())
        .collect();
    let failed: Vec<String> = custom_ids(&[&dir.join("errors.jsonl")])
        .into_keys()
        .collect();
    assert!(!meant.is_empty());
    assert_eq!(failed, meant);
    // The summary shows retries and both limits, and how to go on.
    for shown in [
        "retries:",
        "demo-fast",
        "demo-slow",
        "fusillade run",
        "--upstream",
    ] {
        assert!(said.contains(shown), "{shown} missing from:\n{said}");
    }
    assert!(dir.join("fusillade.db").exists());
    assert!(
        !default_db(&tmp).exists(),
        "the demo keeps its database in its own directory"
    );
}

/// The mock's `GET /_stats`.
async fn mock_stats(base: &str) -> Value {
    reqwest::get(format!("{base}/_stats"))
        .await
        .expect("the mock answers /_stats")
        .bytes()
        .await
        .map(|b| serde_json::from_slice(&b).expect("JSON stats"))
        .expect("the stats' body")
}

/// Calls the mock received per custom_id.
fn calls_per_id(stats: &Value) -> BTreeMap<String, u64> {
    stats["calls_per_custom_id"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
        .collect()
}

/// `fusillade run DIR/in.jsonl` against `upstream`, with no database setting.
fn run_cmd(tmp: &TempDir, upstream: &str) -> Command {
    let config = tmp.join("config.toml");
    std::fs::write(
        &config,
        "[upstream]\nconcurrency = 4\n\
         [daemon]\nbackoff_ms = 10\nmax_backoff_ms = 50\nheartbeat_ms = 100\nstale_after_ms = 600\n",
    )
    .unwrap();
    let mut cmd = fusillade_in(tmp);
    cmd.arg("run")
        .arg(tmp.join("in.jsonl"))
        .arg("-o")
        .arg(tmp.join("out.jsonl"))
        .arg("--errors")
        .arg(tmp.join("err.jsonl"))
        .arg("--config")
        .arg(&config)
        .arg("--upstream")
        .arg(upstream);
    cmd
}

#[tokio::test]
async fn run_with_no_database_setting_uses_the_embedded_default_and_resumes_after_kill_9() {
    let mut mock = process::fusillade();
    mock.args(["mock", "--listen", "127.0.0.1:0", "--latency-ms", "40"])
        .stderr(Stdio::null());
    let mock = process::serve(mock, LONG).await;
    let tmp = TempDir::new("embedded-run");
    let lines = 400;
    std::fs::write(tmp.join("in.jsonl"), jsonl(&lines_for("m", "line-", lines))).unwrap();

    // Killed once a good part of the lines were answered (4 at a time,
    // 40 ms each: the whole file takes seconds).
    let log = tmp.join("first.log");
    let mut first = run_cmd(&tmp, &mock.base);
    first
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut first = ChildGuard::spawn(&mut first);
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let calls = mock_stats(&mock.base).await["total_calls"]
            .as_u64()
            .unwrap();
        if calls >= 150 {
            break;
        }
        assert!(
            first.try_status().is_none(),
            "the run ended before it was killed: {}",
            std::fs::read_to_string(&log).unwrap()
        );
        assert!(tokio::time::Instant::now() < deadline, "no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.signal("KILL");
    first.wait_async(LONG).await;
    let before = calls_per_id(&mock_stats(&mock.base).await);
    assert!(before.len() < lines, "killed after the end");
    let said = std::fs::read_to_string(&log).unwrap();
    let path = default_db(&tmp);
    assert!(
        said.lines()
            .next()
            .unwrap_or("")
            .contains(&format!("store: embedded sqlite at {}", path.display())),
        "the first line names the store:\n{said}"
    );
    assert!(path.exists(), "{}", path.display());

    // The same command again: it resumes.
    let out = process::output(run_cmd(&tmp, &mock.base), LONG).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    // Lines answered before the kill were not sent again, except the few
    // in flight or not yet recorded when it came.
    let after = calls_per_id(&mock_stats(&mock.base).await);
    assert_eq!(after.len(), lines);
    let resent = after.values().filter(|&&n| n > 1).count();
    assert!(
        resent <= before.len() / 4,
        "{resent} of the {} lines sent before the kill were sent again:\n{err}",
        before.len()
    );
    assert!(err.contains("resuming batch"), "{err}");
    let results = custom_ids(&[&tmp.join("out.jsonl"), &tmp.join("err.jsonl")]);
    assert_eq!(results.len(), lines, "every line");
    assert!(results.values().all(|&n| n == 1), "every line once");
}

#[tokio::test]
async fn worker_and_serve_api_only_refuse_an_embedded_database() {
    let tmp = TempDir::new("scale-out");
    let explicit = format!("sqlite://{}", tmp.join("x.db").display());
    let mut worker = fusillade_in(&tmp);
    worker.args(["worker", "--database-url", &explicit]);
    let mut api_only = fusillade_in(&tmp);
    api_only.args(["serve", "--api-only", "--listen", "127.0.0.1:0"]);
    let mut worker_default = fusillade_in(&tmp);
    worker_default.arg("worker");
    for (what, cmd) in [
        ("worker --database-url sqlite://", worker),
        ("serve --api-only with the default", api_only),
        ("worker with the default", worker_default),
    ] {
        let out = process::output(cmd, LONG).await;
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{what}: {err}");
        assert!(err.contains("scale-out needs PostgreSQL"), "{what}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{what}: {err}");
    }
    // Refused before anything was opened.
    assert!(!tmp.join("x.db").exists());
    assert!(!default_db(&tmp).exists());
}

#[tokio::test]
async fn serve_uses_the_embedded_default_and_migrate_migrates_it() {
    let tmp = TempDir::new("embedded-serve");
    let log = tmp.join("serve.log");
    let mut cmd = fusillade_in(&tmp);
    cmd.args(["serve", "--listen", "127.0.0.1:0"])
        .stderr(std::fs::File::create(&log).unwrap());
    let served = process::serve(cmd, LONG).await;
    let health = reqwest::get(format!("{}/healthz", served.base))
        .await
        .expect("serve answers");
    assert_eq!(health.status(), 200);
    // The store is named before the address is printed.
    let said = std::fs::read_to_string(&log).unwrap();
    let path = default_db(&tmp);
    assert!(
        said.lines()
            .next()
            .unwrap_or("")
            .contains(&format!("store: embedded sqlite at {}", path.display())),
        "{said}"
    );
    assert!(path.exists());
    drop(served);

    let mut migrate = fusillade_in(&tmp);
    let other = tmp.join("other/x.db");
    migrate
        .arg("migrate")
        .arg("--database-url")
        .arg(format!("sqlite://{}", other.display()));
    let out = process::output(migrate, LONG).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("up to date"),
        "{out:?}"
    );
    assert!(other.exists());
}
