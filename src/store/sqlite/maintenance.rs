//! Repair and lifecycle work, run on timers by the daemon: rescuing claims
//! of dead daemons, expiring batches past their deadline, and settling
//! batches whose requests have all ended.

use super::SqliteStore;
use super::batches::cancel_step;
use super::ending::end_batch_requests;
use super::types::{batch_hi, batch_lo, micros, std_us};
use crate::domain::batch::{BatchId, BatchStatus};
use crate::domain::ids::DaemonId;
use crate::domain::output::{ResultError, codes};
use crate::domain::request::RequestState;
use crate::store::guards::{batch_from, batch_word, in_flight, request_word};
use crate::store::{FinalizeReport, MaintenanceStore, RescueReport, Result};
use std::time::Duration;

fn now() -> i64 {
    micros(chrono::Utc::now())
}

impl MaintenanceStore for SqliteStore {
    async fn rescue(
        &self,
        by: DaemonId,
        stale_after: Option<Duration>,
        fence_after: Duration,
    ) -> Result<RescueReport> {
        let now = now();
        let mut tx = self.write().await?;
        let dead = sqlx::query(
            "UPDATE daemons SET status = 'dead', stopped_at = ?1, in_flight = 0 \
             WHERE status = 'running' AND id <> ?2 AND last_heartbeat < ?3",
        )
        .bind(now)
        .bind(by)
        .bind(stale_after.map(|s| now.saturating_sub(std_us(s))))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let freed = sqlx::query(&format!(
            "UPDATE requests SET state = {pending}, daemon_id = NULL, started_at = NULL \
             WHERE state IN ({in_flight}) AND NOT EXISTS (SELECT 1 FROM daemons d \
                 WHERE d.id = requests.daemon_id AND d.status = 'running')",
            pending = request_word(RequestState::Pending),
            in_flight = in_flight(),
        ))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query(
            "DELETE FROM model_slots WHERE NOT EXISTS ( \
                 SELECT 1 FROM daemons d WHERE d.id = model_slots.daemon_id \
                   AND (d.status = 'running' OR (d.status = 'dead' AND d.stopped_at >= ?1)))",
        )
        .bind(now.saturating_sub(std_us(fence_after)))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        if freed > 0 {
            self.ring();
        }
        Ok(RescueReport {
            dead_daemons: dead,
            requests: freed,
        })
    }

    async fn retire_daemon(&self, id: DaemonId) -> Result<u64> {
        let mut tx = self.write().await?;
        sqlx::query(
            "UPDATE daemons SET status = 'dead', stopped_at = ?2, in_flight = 0 \
             WHERE id = ?1 AND status = 'running'",
        )
        .bind(id)
        .bind(now())
        .execute(&mut *tx)
        .await?;
        let freed = sqlx::query(&format!(
            "UPDATE requests SET state = {pending}, daemon_id = NULL, started_at = NULL \
             WHERE state IN ({in_flight}) AND daemon_id = ?1",
            pending = request_word(RequestState::Pending),
            in_flight = in_flight(),
        ))
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        if freed > 0 {
            self.ring();
        }
        Ok(freed)
    }

    async fn finalize(&self, limit: i64) -> Result<FinalizeReport> {
        let expired_error = ResultError::new(
            codes::BATCH_EXPIRED,
            "the batch's completion window ended before this request finished",
        );
        let mut report = FinalizeReport::default();
        // Each batch moves in a transaction of its own, so the hot path
        // never waits for a whole pass.
        let now = now();
        let due: Vec<BatchId> = sqlx::query_scalar(&format!(
            "SELECT id FROM batches WHERE status IN ({}) AND expires_at <= ? \
             ORDER BY expires_at LIMIT ?",
            batch_from(BatchStatus::Expired)
        ))
        .bind(now)
        .bind(limit)
        .fetch_all(&self.reader)
        .await?;
        for id in due {
            let mut tx = self.write().await?;
            let ended =
                end_batch_requests(&mut tx, id, "1", RequestState::Failed, &expired_error, now)
                    .await?;
            let moved = sqlx::query(&format!(
                "UPDATE batches SET status = {}, expired_at = ?2, n_failed = n_failed + ?3 \
                 WHERE id = ?1 AND status IN ({}) AND expires_at <= ?2",
                batch_word(BatchStatus::Expired),
                batch_from(BatchStatus::Expired)
            ))
            .bind(id)
            .bind(now)
            .bind(ended as i64)
            .execute(&mut *tx)
            .await?;
            if moved.rows_affected() == 1 {
                tx.commit().await?;
                report.expired.push(id);
            } else {
                tx.rollback().await?;
            }
        }
        let cancelling: Vec<BatchId> = sqlx::query_scalar(&format!(
            "SELECT id FROM batches WHERE status = {} ORDER BY cancelling_at LIMIT ?",
            batch_word(BatchStatus::Cancelling)
        ))
        .bind(limit)
        .fetch_all(&self.reader)
        .await?;
        for id in cancelling {
            let mut tx = self.write().await?;
            if cancel_step(&mut tx, id, now).await? {
                report.cancelled.push(id);
            }
            tx.commit().await?;
        }
        // The counters say when a batch may be done; the queue confirms it.
        // They are read outside the write, so that a pass with nothing to
        // do never takes the one writer from the hot path (counters only
        // grow: a batch found done here is still done in the write).
        let candidates: Vec<BatchId> = sqlx::query_scalar(&format!(
            "SELECT id FROM batches WHERE status IN ({}) \
               AND n_completed + n_failed + n_canceled >= total \
             ORDER BY created_at LIMIT ?",
            batch_from(BatchStatus::Completed)
        ))
        .bind(limit)
        .fetch_all(&self.reader)
        .await?;
        report.completed = self.complete(&candidates, now).await?;
        Ok(report)
    }

    async fn complete_batches(&self, ids: &[BatchId]) -> Result<Vec<BatchId>> {
        self.complete(ids, now()).await
    }

    async fn vacuum_queue(&self, _min_dead: i64) -> Result<bool> {
        // SQLite reuses a deleted row's space by itself; nothing to do.
        Ok(false)
    }
}

impl SqliteStore {
    /// Completes those of `ids` that are in progress with every request
    /// ended (by the counters, confirmed by the queue) and not past their
    /// deadline (the expiry step's), at `now`; the ones completed.
    async fn complete(&self, ids: &[BatchId], now: i64) -> Result<Vec<BatchId>> {
        let mut completed = Vec::new();
        if ids.is_empty() {
            return Ok(completed);
        }
        let mut tx = self.write().await?;
        for &id in ids {
            let live: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM requests WHERE id BETWEEN ?1 AND ?2 \
                 AND batch_id = ?3)",
            )
            .bind(batch_lo(id))
            .bind(batch_hi(id))
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
            if live {
                continue;
            }
            let moved = sqlx::query(&format!(
                "UPDATE batches SET status = {}, finalizing_at = COALESCE(finalizing_at, ?2), \
                 completed_at = ?2 WHERE id = ?1 AND status IN ({}) \
                 AND n_completed + n_failed + n_canceled >= total AND expires_at > ?2",
                batch_word(BatchStatus::Completed),
                batch_from(BatchStatus::Completed)
            ))
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            if moved.rows_affected() == 1 {
                completed.push(id);
            }
        }
        tx.commit().await?;
        Ok(completed)
    }
}
