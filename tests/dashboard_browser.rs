//! The dashboard in a real headless Chromium (tests/browser/dashboard.py,
//! driven by Playwright's Python package): against a `fusillade serve` with
//! the built-in mock upstream, it signs in, uploads 500 lines through the
//! page, creates a batch, watches the progress bar reach 100%, opens a
//! failed request and sees its error, cancels a slow batch from its page,
//! visits the admin pages, and checks that another owner's key sees none of
//! it; no page may log a console error. Screenshots of each page go to
//! `target/dashboard-screenshots/`.
//!
//! Chromium (`CHROMIUM`, default `/usr/bin/chromium`) and the `playwright`
//! package must be installed (`.ci/run` installs them): when they are
//! missing this test fails, it never skips.

mod common;

use common::process::{self, TempDir, database_url};
use common::{CHAT, chat_body, jsonl, line_with};
use fusillade::mock::{MockBehavior, MockReply, MockUpstream};
use sqlx::PgPool;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);
/// The browser run's whole budget, for a busy machine.
const BROWSER: Duration = Duration::from_secs(600);
const ALICE: &str = "sk-dash-alice";
const BOB: &str = "sk-dash-bob";

fn lines(prefix: &str, model: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let id = format!("{prefix}{i}");
            line_with(&id, CHAT, &chat_body(&id, model))
        })
        .collect()
}

#[sqlx::test]
async fn the_dashboard_works_in_a_real_browser(pool: PgPool) {
    let mock = MockUpstream::start(MockBehavior::default().respond(|c| {
        let id = c.custom_id.as_deref().unwrap_or("");
        if id.starts_with("fail-") {
            MockReply::status(400, r#"{"error":{"message":"prompt refused by the mock"}}"#)
        } else if id.starts_with("slow-") {
            MockReply::ok_for(c).with_delay(Duration::from_secs(300))
        } else {
            MockReply::ok_for(c).with_delay(Duration::from_millis(5))
        }
    }))
    .await;
    let dir = TempDir::new("dashboard");
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[upstream]\nurl = \"{}\"\nconcurrency = 16\n\
             [daemon]\nbackoff_ms = 10\nmax_backoff_ms = 50\nheartbeat_ms = 200\n\
             [auth]\nkeys = {{ \"{ALICE}\" = \"alice\", \"{BOB}\" = \"bob\" }}\n\
             admins = [\"alice\"]\n",
            mock.url()
        ),
    )
    .unwrap();
    // 500 lines, 5 of which the upstream refuses; a slow batch; a file
    // with a line that is not JSON.
    let mut input = lines("ok-", "dash-fast", 495);
    input.extend(lines("fail-", "dash-fast", 5));
    let input_path = dir.join("input.jsonl");
    std::fs::write(&input_path, jsonl(&input)).unwrap();
    let slow_path = dir.join("slow.jsonl");
    std::fs::write(&slow_path, jsonl(&lines("slow-", "dash-slow", 20))).unwrap();
    let good = lines("b-", "dash-fast", 2);
    let bad_path = dir.join("bad.jsonl");
    std::fs::write(&bad_path, format!("{}\nnot json\n{}\n", good[0], good[1])).unwrap();

    let db = database_url(&pool).await;
    let mut cmd = process::fusillade();
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .args(["--database-url", &db]);
    let server = process::serve(cmd, LONG).await;

    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/dashboard-screenshots");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/dashboard.py");
    let mut py = Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()));
    py.arg(&script)
        .arg(&server.base)
        .args([ALICE, BOB])
        .args([&input_path, &slow_path, &bad_path])
        .arg(&shots);
    let out = process::output(py, BROWSER).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the browser test failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    for page in [
        "login",
        "upload",
        "batch",
        "request",
        "cancelled",
        "batches",
        "models",
        "workers",
        "other-owner",
    ] {
        let png = shots.join(format!("{page}.png"));
        let bytes = std::fs::read(&png).unwrap_or_else(|e| panic!("{png:?}: {e}"));
        assert!(bytes.starts_with(b"\x89PNG"), "{png:?} is not a PNG");
    }
    assert!(
        mock.stats().calls("dash-slow") > 0,
        "the slow batch was running when cancelled"
    );
    drop(server);
}
