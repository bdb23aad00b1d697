//! `daemons`: the registry of worker processes and their heartbeats.

use super::PostgresStore;
use crate::domain::daemon::{DaemonRecord, DaemonStats, DaemonStatus, NewDaemon};
use crate::domain::ids::DaemonId;
use crate::store::rules::daemon_refused;
use crate::store::{DaemonStore, Result, StoreError};
use sqlx::Row;
use sqlx::postgres::PgRow;

const COLUMNS: &str = "id, hostname, pid, version, config, status, started_at, last_heartbeat, \
     stopped_at, in_flight, requests_done, requests_failed";

fn daemon_from_row(row: &PgRow) -> Result<DaemonRecord> {
    Ok(DaemonRecord {
        id: row.try_get("id")?,
        hostname: row.try_get("hostname")?,
        pid: row.try_get("pid")?,
        version: row.try_get("version")?,
        config: row.try_get("config")?,
        status: row.try_get("status")?,
        started_at: row.try_get("started_at")?,
        last_heartbeat: row.try_get("last_heartbeat")?,
        stopped_at: row.try_get("stopped_at")?,
        stats: DaemonStats {
            in_flight: row.try_get("in_flight")?,
            requests_done: row.try_get("requests_done")?,
            requests_failed: row.try_get("requests_failed")?,
        },
    })
}

impl PostgresStore {
    /// The error for a write to a daemon that is not running (or unknown).
    async fn daemon_not_running(&self, id: DaemonId, to: DaemonStatus) -> StoreError {
        let status: Result<Option<DaemonStatus>, _> =
            sqlx::query_scalar("SELECT status FROM daemons WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.background)
                .await;
        match status {
            Err(e) => e.into(),
            Ok(found) => daemon_refused(id, found, to),
        }
    }
}

impl DaemonStore for PostgresStore {
    async fn register_daemon(&self, new: NewDaemon) -> Result<DaemonRecord> {
        let row = sqlx::query(&format!(
            "INSERT INTO daemons (id, hostname, pid, version, config) \
             VALUES ($1, $2, $3, $4, $5) RETURNING {COLUMNS}"
        ))
        .bind(DaemonId::new())
        .bind(&new.hostname)
        .bind(new.pid)
        .bind(&new.version)
        .bind(&new.config)
        .fetch_one(&self.background)
        .await?;
        daemon_from_row(&row)
    }

    async fn heartbeat(&self, id: DaemonId, stats: DaemonStats) -> Result<()> {
        let done = sqlx::query(
            "UPDATE daemons SET last_heartbeat = now(), in_flight = $2, requests_done = $3, \
             requests_failed = $4 WHERE id = $1 AND status = 'running'",
        )
        .bind(id)
        .bind(stats.in_flight)
        .bind(stats.requests_done)
        .bind(stats.requests_failed)
        .execute(&self.background)
        .await?;
        if done.rows_affected() == 1 {
            Ok(())
        } else {
            Err(self.daemon_not_running(id, DaemonStatus::Running).await)
        }
    }

    async fn mark_daemon_stopped(&self, id: DaemonId) -> Result<()> {
        let done = sqlx::query(
            "UPDATE daemons SET status = 'stopped', stopped_at = now(), in_flight = 0 \
             WHERE id = $1 AND status = 'running'",
        )
        .bind(id)
        .execute(&self.background)
        .await?;
        if done.rows_affected() == 1 {
            Ok(())
        } else {
            Err(self.daemon_not_running(id, DaemonStatus::Stopped).await)
        }
    }

    async fn live_daemons(&self, fresh: std::time::Duration) -> Result<u32> {
        let ms = i64::try_from(fresh.as_millis()).unwrap_or(i64::MAX);
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM daemons WHERE status = 'running' \
             AND last_heartbeat > now() - $1 * interval '1 millisecond'",
        )
        .bind(ms)
        .fetch_one(&self.background)
        .await?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    async fn list_daemons(&self) -> Result<Vec<DaemonRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM daemons \
             ORDER BY status = 'running' DESC, started_at DESC, id DESC"
        ))
        .fetch_all(&self.pools.replica)
        .await?;
        rows.iter().map(daemon_from_row).collect()
    }

    fn detached(&self) -> Self {
        let mut copy = self.clone();
        // The same acquire timeout as the background pool's: the heartbeat
        // puts its own deadline on every call.
        copy.background = super::pool_like(
            &self.pools.primary,
            "heartbeat",
            super::DETACHED_CONNECTIONS,
            self.background.options().get_acquire_timeout(),
        );
        copy
    }
}
