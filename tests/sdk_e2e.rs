//! The official OpenAI Python SDK against `fusillade serve` (the built
//! binary, API and daemon in one process) and an in-process mock upstream:
//! upload, create, poll, download output and errors, cancel, list with
//! pagination, errors as the SDK's exceptions (tests/sdk/e2e.py).
//!
//! The SDK is installed from PyPI into a virtual environment under
//! `target/sdk-venv` (reused when it already has it). Without python3 or
//! PyPI this test fails, saying which is missing: it never skips.

use fusillade::mock::{MockBehavior, MockReply, MockUpstream};
use sqlx::PgPool;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The URL of the test's own database, for the binary.
async fn database_url(pool: &PgPool) -> String {
    let db: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(pool)
        .await
        .unwrap();
    let base = std::env::var("DATABASE_URL").unwrap();
    let mut url = url::Url::parse(&base).unwrap();
    url.set_path(&db);
    url.to_string()
}

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

/// The child process, killed when dropped (also when the test panics).
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[sqlx::test]
async fn the_official_python_sdk_works_unchanged(pool: PgPool) {
    // Done first, while nothing else runs: the install can take a while.
    let python = tokio::task::spawn_blocking(sdk_python).await.unwrap();

    // `fail-*` get a final 400; model `slow` is held for a minute (and
    // aborted by the cancel).
    let mock = MockUpstream::start(MockBehavior::default().respond(|call| {
        if call
            .custom_id
            .as_deref()
            .is_some_and(|c| c.starts_with("fail-"))
        {
            MockReply::status(400, r#"{"error":{"message":"refused by the mock"}}"#)
        } else if call.model == "slow" {
            MockReply::ok_for(call).with_delay(Duration::from_secs(60))
        } else {
            MockReply::ok_for(call)
        }
    }))
    .await;

    let dir = std::env::temp_dir().join(format!("fusillade-sdk-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
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
    let mut child = Command::new(env!("CARGO_BIN_EXE_fusillade"))
        .arg("serve")
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--config")
        .arg(&config)
        .arg("--database-url")
        .arg(database_url(&pool).await)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let server = Server(child);
    let url = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line.trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line from serve: {line:?}"))
            .to_owned()
    })
    .await
    .unwrap();

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/e2e.py");
    let work = dir.clone();
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
    drop(server);
    mock.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
