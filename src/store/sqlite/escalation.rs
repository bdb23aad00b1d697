//! `requests.routed_model` on the embedded store (see `store::escalation`).

use super::SqliteStore;
use crate::store::guards::in_flight;
use crate::store::{EscalationStore, Result, RoutedAttempt, StoreError};

impl EscalationStore for SqliteStore {
    async fn record_routes(&self, routes: &[RoutedAttempt]) -> Result<u64> {
        if routes.is_empty() {
            return Ok(0);
        }
        let sql = format!(
            "UPDATE requests SET routed_model = ?3 \
             WHERE id = ?1 AND attempt = ?2 AND state IN ({})",
            in_flight()
        );
        let write = async {
            let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
            let mut n = 0;
            for r in routes {
                n += sqlx::query(&sql)
                    .bind(r.id)
                    .bind(r.attempt)
                    .bind(&r.model)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            }
            tx.commit().await?;
            Ok::<_, sqlx::Error>(n)
        };
        write.await.map_err(StoreError::from_write)
    }
}
