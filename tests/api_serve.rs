//! `fusillade serve` as a process: refuses to expose the API without keys,
//! and serves `/healthz` with `--api-only`.

mod common;

use common::process::{self, database_url};
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
