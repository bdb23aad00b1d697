//! `daemons`: the registry of daemons and their heartbeats.

use super::SqliteStore;
use super::types::{micros, std_us, time, time_opt};
use crate::domain::daemon::{DaemonRecord, DaemonStats, DaemonStatus, NewDaemon};
use crate::domain::ids::DaemonId;
use crate::store::rules::daemon_refused;
use crate::store::{DaemonStore, Result, StoreError};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

const COLUMNS: &str = "id, hostname, pid, version, config, status, started_at, last_heartbeat, \
     stopped_at, in_flight, requests_done, requests_failed";

fn daemon_from_row(row: &SqliteRow) -> Result<DaemonRecord> {
    let config: String = row.try_get("config")?;
    Ok(DaemonRecord {
        id: row.try_get("id")?,
        hostname: row.try_get("hostname")?,
        pid: row.try_get("pid")?,
        version: row.try_get("version")?,
        config: serde_json::from_str(&config).unwrap_or(serde_json::Value::Null),
        status: row.try_get("status")?,
        started_at: time(row.try_get("started_at")?),
        last_heartbeat: time(row.try_get("last_heartbeat")?),
        stopped_at: time_opt(row.try_get("stopped_at")?),
        stats: DaemonStats {
            in_flight: row.try_get("in_flight")?,
            requests_done: row.try_get("requests_done")?,
            requests_failed: row.try_get("requests_failed")?,
        },
    })
}

fn now() -> i64 {
    micros(chrono::Utc::now())
}

impl SqliteStore {
    /// The error for a write to a daemon that is not running (or unknown).
    async fn daemon_not_running(&self, id: DaemonId, to: DaemonStatus) -> StoreError {
        let status: Result<Option<DaemonStatus>, _> =
            sqlx::query_scalar("SELECT status FROM daemons WHERE id = ?")
                .bind(id)
                .fetch_optional(&self.writer)
                .await;
        match status {
            Err(e) => e.into(),
            Ok(found) => daemon_refused(id, found, to),
        }
    }
}

impl DaemonStore for SqliteStore {
    async fn register_daemon(&self, new: NewDaemon) -> Result<DaemonRecord> {
        let now = now();
        let row = sqlx::query(&format!(
            "INSERT INTO daemons (id, hostname, pid, version, config, started_at, last_heartbeat) \
             VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING {COLUMNS}"
        ))
        .bind(DaemonId::new())
        .bind(&new.hostname)
        .bind(new.pid)
        .bind(&new.version)
        .bind(new.config.to_string())
        .bind(now)
        .bind(now)
        .fetch_one(&self.writer)
        .await?;
        daemon_from_row(&row)
    }

    async fn heartbeat(&self, id: DaemonId, stats: DaemonStats) -> Result<()> {
        let done = sqlx::query(
            "UPDATE daemons SET last_heartbeat = ?, in_flight = ?, requests_done = ?, \
             requests_failed = ? WHERE id = ? AND status = 'running'",
        )
        .bind(now())
        .bind(stats.in_flight)
        .bind(stats.requests_done)
        .bind(stats.requests_failed)
        .bind(id)
        .execute(&self.writer)
        .await?;
        if done.rows_affected() == 1 {
            Ok(())
        } else {
            Err(self.daemon_not_running(id, DaemonStatus::Running).await)
        }
    }

    async fn mark_daemon_stopped(&self, id: DaemonId) -> Result<()> {
        let done = sqlx::query(
            "UPDATE daemons SET status = 'stopped', stopped_at = ?, in_flight = 0 \
             WHERE id = ? AND status = 'running'",
        )
        .bind(now())
        .bind(id)
        .execute(&self.writer)
        .await?;
        if done.rows_affected() == 1 {
            Ok(())
        } else {
            Err(self.daemon_not_running(id, DaemonStatus::Stopped).await)
        }
    }

    async fn live_daemons(&self, fresh: std::time::Duration) -> Result<u32> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM daemons WHERE status = 'running' AND last_heartbeat > ?",
        )
        .bind(now().saturating_sub(std_us(fresh)))
        .fetch_one(&self.reader)
        .await?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    async fn list_daemons(&self) -> Result<Vec<DaemonRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM daemons \
             ORDER BY status = 'running' DESC, started_at DESC, id DESC"
        ))
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(daemon_from_row).collect()
    }

    fn detached(&self) -> Self {
        // One process, one writer: the heartbeat's writes are short and
        // never wait behind another process's.
        self.clone()
    }
}
