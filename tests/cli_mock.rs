//! `fusillade mock` as a user runs it: the simulator answers HTTP calls with
//! the faults its flags ask for, stops cleanly on SIGTERM, and `fusillade
//! run` gets every line through it by retrying.

mod common;

use common::daemon::lines_for;
use common::jsonl;
use common::process::{self, TempDir, database_url};
use serde_json::Value;
use sqlx::PgPool;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Long enough for a busy 2-core machine; the tests end as soon as they can.
const LONG: Duration = Duration::from_secs(120);

fn mock_cmd(flags: &[&str]) -> Command {
    let mut cmd = process::fusillade();
    cmd.args(["mock", "--listen", "127.0.0.1:0"]).args(flags);
    cmd
}

async fn chat(client: &reqwest::Client, base: &str, model: &str) -> reqwest::Response {
    client
        .post(format!("{base}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(
            serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})
                .to_string(),
        )
        .send()
        .await
        .expect("the mock answers")
}

#[tokio::test]
async fn mock_answers_with_the_error_rate_asked_for_and_stops_on_sigterm() {
    let dir = TempDir::new("mock");
    let log = dir.join("mock.log");
    let mut cmd = mock_cmd(&[
        "--error-rate",
        "0.5",
        "--error-status",
        "429",
        "--seed",
        "3",
    ]);
    cmd.stderr(std::fs::File::create(&log).unwrap());
    let mut served = process::serve(cmd, LONG).await;
    let client = reqwest::Client::new();
    let (mut ok, mut limited) = (0, 0);
    for _ in 0..40 {
        let r = chat(&client, &served.base, "sim-1").await;
        match r.status().as_u16() {
            200 => {
                let body: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
                assert_eq!(body["object"], "chat.completion");
                assert_eq!(body["model"], "sim-1");
                ok += 1;
            }
            429 => {
                assert!(r.headers().contains_key("retry-after"));
                limited += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    // A fair coin 40 times: both sides come up (the seed fixes the draws).
    assert!(ok > 5 && limited > 5, "{ok} answered, {limited} refused");

    served.process.signal("TERM");
    let status = served.process.wait_timeout(LONG);
    assert!(status.success(), "{status:?}");
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(said.contains("answered 40 calls"), "{said}");
}

#[tokio::test]
async fn mock_without_faults_answers_every_call() {
    let served = process::serve(
        mock_cmd(&["--latency-ms", "1", "--latency-dist", "uniform"]),
        LONG,
    )
    .await;
    let client = reqwest::Client::new();
    for i in 0..20 {
        let r = chat(&client, &served.base, &format!("m{i}")).await;
        assert_eq!(r.status(), 200);
    }
}

#[tokio::test]
async fn mock_refuses_flags_that_describe_no_server() {
    for flags in [
        &["--error-rate", "1.5"][..],
        &["--error-status", "200"][..],
        &["--tokens-per-second", "0"][..],
        &["--latency-dist", "gaussian"][..],
    ] {
        let mut cmd = mock_cmd(flags);
        cmd.stdout(Stdio::null());
        let out = process::output(cmd, LONG).await;
        assert_eq!(out.status.code(), Some(2), "{flags:?}");
        assert!(!out.stderr.is_empty(), "{flags:?}: no message");
    }
}

#[tokio::test]
async fn mock_help_describes_its_flags() {
    let mut cmd = process::fusillade();
    cmd.args(["mock", "--help"]);
    let out = process::output(cmd, LONG).await;
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--listen",
        "--latency-ms",
        "--latency-dist",
        "--error-rate",
        "--error-status",
        "--tokens-per-second",
        "--max-tokens-limit",
        "--seed",
        "--cache",
        "--cache-blocks",
        "--block-tokens",
        "--max-seqs",
        "/_stats",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
}

#[tokio::test]
async fn mock_stats_count_calls_per_model_and_custom_id() {
    let served = process::serve(
        mock_cmd(&["--max-tokens-limit", "100", "--seed", "1"]),
        LONG,
    )
    .await;
    let client = reqwest::Client::new();
    for (id, max_tokens, status) in [("a", 10, 200), ("a", 10, 200), ("b", 101, 400)] {
        let r = client
            .post(format!("{}/v1/chat/completions", served.base))
            .header("x-fusillade-custom-id", id)
            .body(serde_json::json!({"model": "m", "max_tokens": max_tokens}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{id}");
    }
    let stats: Value = client
        .get(format!("{}/_stats", served.base))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .map(|b| serde_json::from_slice(&b).unwrap())
        .unwrap();
    assert_eq!(stats["total_calls"], 3, "{stats}");
    assert_eq!(stats["calls_per_model"]["m"], 3, "{stats}");
    assert_eq!(stats["calls_per_custom_id"]["a"], 2, "{stats}");
    assert_eq!(stats["calls_per_custom_id"]["b"], 1, "{stats}");
}

#[tokio::test]
async fn mock_cache_mode_serves_a_repeated_prefix_from_its_cache() {
    let served = process::serve(
        mock_cmd(&["--cache", "--decode-ms", "1", "--block-tokens", "4"]),
        LONG,
    )
    .await;
    let client = reqwest::Client::new();
    let prompt = "one two three four five six seven eight nine ten eleven twelve";
    for _ in 0..2 {
        let r = client
            .post(format!("{}/v1/chat/completions", served.base))
            .body(
                serde_json::json!({"model": "m", "messages": [{"role": "user", "content": prompt}]})
                    .to_string(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let stats: Value = client
        .get(format!("{}/_stats", served.base))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .map(|b| serde_json::from_slice(&b).unwrap())
        .unwrap();
    assert_eq!(stats["calls"], 2, "{stats}");
    let cached = stats["cached_tokens"].as_u64().unwrap();
    assert!(cached > 0, "the second call found nothing cached: {stats}");

    // Flags the cache model would ignore are refused.
    for flags in [
        &["--cache", "--error-rate", "0.1"][..],
        &["--cache", "--latency-ms", "5"][..],
        &["--cache", "--max-seqs", "0"][..],
    ] {
        let mut cmd = mock_cmd(flags);
        cmd.stdout(Stdio::null());
        let out = process::output(cmd, LONG).await;
        assert_eq!(out.status.code(), Some(2), "{flags:?}");
    }
}

#[sqlx::test]
async fn run_gets_every_line_through_a_mock_that_fails_a_third_of_calls(pool: PgPool) {
    let served = process::serve(
        mock_cmd(&[
            "--error-rate",
            "0.3",
            "--error-status",
            "503",
            "--seed",
            "11",
        ]),
        LONG,
    )
    .await;
    let dir = TempDir::new("mock-run");
    std::fs::write(dir.join("in.jsonl"), jsonl(&lines_for("sim", "line-", 60))).unwrap();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        "[daemon]\nbackoff_ms = 10\nmax_backoff_ms = 50\nmax_retries = 20\n\
         heartbeat_ms = 100\nstale_after_ms = 600\n",
    )
    .unwrap();
    let mut cmd = process::fusillade();
    cmd.arg("run")
        .arg(dir.join("in.jsonl"))
        .arg("-o")
        .arg(dir.join("out.jsonl"))
        .arg("--errors")
        .arg(dir.join("err.jsonl"))
        .arg("--config")
        .arg(&config)
        .arg("--upstream")
        .arg(&served.base)
        .arg("--database-url")
        .arg(database_url(&pool).await);
    let out = process::output(cmd, LONG).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let output = std::fs::read_to_string(dir.join("out.jsonl")).unwrap();
    let mut ids: Vec<String> = output
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["custom_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 60, "every line once");
}
