//! `route_pauses`: an upstream's `Retry-After`, shared by every daemon.

use super::PostgresStore;
use crate::store::{Result, RouteStore};
use std::time::Duration;

impl RouteStore for PostgresStore {
    async fn pause_route(&self, model: &str, pause: Duration) -> Result<()> {
        let us = i64::try_from(pause.as_micros()).unwrap_or(i64::MAX);
        sqlx::query(
            "INSERT INTO route_pauses (model, until)
             VALUES ($1, now() + $2 * interval '1 microsecond')
             ON CONFLICT (model) DO UPDATE SET until = GREATEST(route_pauses.until, EXCLUDED.until)",
        )
        .bind(model)
        .bind(us)
        .execute(&self.background)
        .await?;
        Ok(())
    }

    async fn route_pauses(&self) -> Result<Vec<(String, Duration)>> {
        let rows: Vec<(String, f64)> = sqlx::query_as(
            "SELECT model, extract(epoch FROM until - now())::float8 FROM route_pauses
             WHERE until > now()",
        )
        .fetch_all(&self.background)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(m, s)| (m, Duration::from_secs_f64(s.max(0.0))))
            .collect())
    }
}
