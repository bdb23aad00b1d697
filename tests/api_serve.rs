//! `fusillade serve` as a process: refuses to expose the API without keys,
//! and serves `/healthz` with `--api-only`.

use sqlx::PgPool;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[test]
fn refuses_a_non_loopback_address_without_auth() {
    let out = Command::new(env!("CARGO_BIN_EXE_fusillade"))
        .args(["serve", "--listen", "0.0.0.0:0"])
        .args(["--database-url", "postgres://nobody@127.0.0.1:1/none"])
        .output()
        .unwrap();
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
    let db: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&pool)
        .await
        .unwrap();
    let mut url = url::Url::parse(&std::env::var("DATABASE_URL").unwrap()).unwrap();
    url.set_path(&db);
    let mut child = Command::new(env!("CARGO_BIN_EXE_fusillade"))
        .args(["serve", "--api-only", "--listen", "127.0.0.1:0"])
        .args(["--database-url", url.as_str()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let base = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line.trim().trim_start_matches("listening on ").to_owned()
    })
    .await
    .unwrap();
    let health = reqwest::get(format!("{base}/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), r#"{"status":"ok"}"#);
    // No daemon registered itself.
    let daemons: i64 = sqlx::query_scalar("SELECT count(*) FROM daemons")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(daemons, 0);
    child.kill().unwrap();
    child.wait().unwrap();
}
