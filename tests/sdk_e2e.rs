//! The official OpenAI Python SDK against `fusillade serve` (the built
//! binary, API and daemon in one process) and an in-process mock upstream:
//! upload, create, poll, download output and errors, cancel, list with
//! pagination, errors as the SDK's exceptions (tests/sdk/e2e.py).
//!
//! The SDK is installed from PyPI into a virtual environment under
//! `target/sdk-venv` (reused when it already has it). Without python3 or
//! PyPI this test fails, saying which is missing: it never skips.

mod common;

use common::process::{self, TempDir, database_url};
use fusillade::mock::{MockBehavior, MockReply, MockUpstream};
use sqlx::PgPool;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

fn run(cmd: &mut Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A python with the `openai` package, made once under target/.
fn sdk_python() -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/sdk-venv");
    let python = venv.join("bin/python");
    let has_sdk = || {
        Command::new(&python)
            .args(["-c", "import openai"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if has_sdk() {
        return python;
    }
    let python3 = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    if Command::new(&python3).arg("--version").output().is_err() {
        panic!(
            "the SDK end-to-end test needs python3 (with venv) on PATH, or PYTHON set to one; \
             install it (e.g. apt-get install python3 python3-venv)"
        );
    }
    run(
        Command::new(&python3)
            .args(["-m", "venv", "--clear"])
            .arg(&venv),
        "creating the virtual environment (is python3-venv installed?)",
    );
    run(
        Command::new(&python).args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "openai",
        ]),
        "installing the openai package from PyPI (is PyPI reachable?)",
    );
    assert!(has_sdk(), "openai was installed but cannot be imported");
    python
}

#[sqlx::test]
async fn the_official_python_sdk_works_unchanged(pool: PgPool) {
    // Done first, while nothing else runs: the install can take a while.
    let python = tokio::task::spawn_blocking(sdk_python).await.unwrap();

    let dir = TempDir::new("sdk");
    // `fail-*` get a final 400; model `slow` is never answered: its calls
    // hang until the cancel aborts them. Each slow call that arrives is
    // counted in WORK/slow-calls, which the script polls before it cancels.
    let slow_calls = Arc::new(AtomicUsize::new(0));
    let marker = dir.join("slow-calls");
    let mock = MockUpstream::start(MockBehavior::default().respond(move |call| {
        if call
            .custom_id
            .as_deref()
            .is_some_and(|c| c.starts_with("fail-"))
        {
            MockReply::status(400, r#"{"error":{"message":"refused by the mock"}}"#)
        } else if call.model == "slow" {
            let n = slow_calls.fetch_add(1, Ordering::SeqCst) + 1;
            let tmp = marker.with_extension("tmp");
            std::fs::write(&tmp, n.to_string()).unwrap();
            std::fs::rename(&tmp, &marker).unwrap();
            MockReply::hanging()
        } else {
            MockReply::ok_for(call)
        }
    }))
    .await;

    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[upstream]\nurl = \"{}\"\nconcurrency = 8\n\
             [daemon]\nbackoff_ms = 10\nmax_backoff_ms = 50\nheartbeat_ms = 200\n\
             stale_after_ms = 2000\nshutdown_grace_ms = 1000\n\
             [auth]\nkeys = {{ \"sk-e2e\" = \"e2e\", \"sk-other\" = \"other\" }}\n",
            mock.url()
        ),
    )
    .unwrap();
    let mut cmd = process::fusillade();
    cmd.arg("serve")
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--config")
        .arg(&config)
        .arg("--database-url")
        .arg(database_url(&pool).await);
    let server = process::serve(cmd, Duration::from_secs(60)).await;
    let url = server.base.clone();

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/e2e.py");
    let work = dir.to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(&python)
            .arg(&script)
            .arg(&work)
            .env("OPENAI_BASE_URL", format!("{url}/v1"))
            .env("OPENAI_API_KEY", "sk-e2e")
            .env("E2E_OTHER_KEY", "sk-other")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "tests/sdk/e2e.py failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("e2e ok"), "{stdout}");
    // The slow lines were each sent once, and no more.
    assert_eq!(mock.stats().calls("slow"), 4);
    drop(server);
    mock.shutdown().await;
}
