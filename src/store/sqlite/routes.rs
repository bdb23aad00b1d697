//! `route_pauses` on the embedded store: the process's clock is the
//! database's, since one process owns the file.

use super::SqliteStore;
use super::types::micros;
use crate::store::{Result, RouteStore};
use std::time::Duration;

impl RouteStore for SqliteStore {
    async fn pause_route(&self, model: &str, pause: Duration) -> Result<()> {
        let now = micros(chrono::Utc::now());
        let us = i64::try_from(pause.as_micros()).unwrap_or(i64::MAX);
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO route_pauses (model, until) VALUES (?1, ?2) \
             ON CONFLICT (model) DO UPDATE SET until = max(until, excluded.until)",
        )
        .bind(model)
        .bind(now.saturating_add(us))
        .execute(&mut *tx)
        .await?;
        // Ended pauses are never read again.
        sqlx::query("DELETE FROM route_pauses WHERE until <= ?1")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn route_pauses(&self) -> Result<Vec<(String, Duration)>> {
        let now = micros(chrono::Utc::now());
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT model, until FROM route_pauses WHERE until > ?1")
                .bind(now)
                .fetch_all(&self.reader)
                .await?;
        Ok(rows
            .into_iter()
            .map(|(m, until)| {
                (
                    m,
                    Duration::from_micros(until.saturating_sub(now).max(0) as u64),
                )
            })
            .collect())
    }
}
