//! Repair and lifecycle work, run on timers by the daemon and never by the
//! claim loop: rescuing claims of dead daemons, expiring batches past their
//! deadline, and settling batches whose requests have all ended.

use super::PostgresStore;
use super::ending::{end_as, error_param};
use crate::domain::batch::{BatchId, BatchStatus};
use crate::domain::ids::DaemonId;
use crate::domain::output::{ResultError, codes};
use crate::domain::request::RequestState;
use crate::store::guards::{batch_from, batch_word, in_flight, request_word};
use crate::store::{FinalizeReport, MaintenanceStore, RescueReport, Result};
use sqlx::Row;
use sqlx::types::Json;
use std::time::Duration;

/// The live requests of the batches in `b`, as a filter over `requests q`.
const BATCH_LIVE: &str = "q.id BETWEEN fusillade_batch_lo(b.id) AND fusillade_batch_hi(b.id) \
     AND q.batch_id = b.id";

/// The error line of a request that ended because its batch was cancelled.
pub(super) fn cancelled_error() -> Json<ResultError> {
    error_param(
        codes::BATCH_CANCELLED,
        "the batch was cancelled before this request ran",
    )
}

/// The one statement that moves cancelling batches on, for the cancel
/// itself and for the finalizer alike: over the batches that `batches`
/// selects (ids of batches in `cancelling`, locked), it ends their pending
/// requests as cancelled with the error bound as `$2`, counts them, and
/// marks each batch `cancelled` once nothing of it is in flight. Yields the
/// ids of the batches that became `cancelled`.
pub(super) fn cancel_step(batches: &str) -> String {
    format!(
        "WITH b AS ({batches}),
         {},
         -- One UPDATE per batch row: a second one in the same statement
         -- would be silently skipped.
         moved AS (
             UPDATE batches x
             SET n_canceled = x.n_canceled + COALESCE(g.n, 0),
                 status = CASE WHEN s.idle THEN {cancelled} ELSE x.status END,
                 cancelled_at = CASE WHEN s.idle THEN now() ELSE x.cancelled_at END
             FROM b
             LEFT JOIN (SELECT batch_id, count(*) AS n FROM c GROUP BY batch_id) g
                    ON g.batch_id = b.id
             CROSS JOIN LATERAL (
                 SELECT NOT EXISTS (SELECT 1 FROM requests q WHERE q.batch_id = b.id
                                    AND q.state IN ({in_flight})) AS idle) s
             WHERE x.id = b.id AND x.status IN ({cancellable})
             RETURNING x.id, x.status)
         SELECT id FROM moved WHERE status = {cancelled}",
        end_as(
            "c",
            "USING b",
            &format!(
                "{BATCH_LIVE} AND q.state = {}",
                request_word(RequestState::Pending)
            ),
            RequestState::Canceled.as_str(),
            "$2"
        ),
        cancelled = batch_word(BatchStatus::Cancelled),
        cancellable = batch_from(BatchStatus::Cancelled),
        in_flight = in_flight(),
    )
}

/// Key of the advisory lock that lets one daemon vacuum at a time.
/// Completes batches in progress whose every request has ended, among
/// those `filter` (an expression on `x`) admits, up to `$1` of them. The
/// counters say when a batch may be done; the queue confirms it. A batch
/// past its deadline is left to the expiry step: its last requests may
/// have ended as `batch_expired`, and then it is expired, not completed.
fn complete_sql(filter: &str) -> String {
    format!(
        "WITH b AS (
             SELECT id FROM batches x
             WHERE status IN ({})
               AND n_completed + n_failed + n_canceled >= total
               AND expires_at > now()
               AND ({filter})
               AND NOT EXISTS (SELECT 1 FROM requests r
                               WHERE r.id BETWEEN fusillade_batch_lo(x.id)
                                              AND fusillade_batch_hi(x.id)
                                 AND r.batch_id = x.id)
             ORDER BY created_at LIMIT $1 FOR UPDATE SKIP LOCKED)
         UPDATE batches x
         SET status = {}, finalizing_at = COALESCE(finalizing_at, now()),
             completed_at = now()
         FROM b WHERE x.id = b.id RETURNING x.id",
        batch_from(BatchStatus::Completed),
        batch_word(BatchStatus::Completed),
    )
}

const VACUUM_LOCK: i64 = 0x66_75_73_76_61_63; // "fusvac"

impl MaintenanceStore for PostgresStore {
    async fn rescue(
        &self,
        by: DaemonId,
        stale_after: Option<Duration>,
        fence_after: Duration,
    ) -> Result<RescueReport> {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let row = sqlx::query(&format!(
            "WITH dead AS (
                 UPDATE daemons SET status = 'dead', stopped_at = now(), in_flight = 0
                 WHERE status = 'running' AND id <> $2
                   AND last_heartbeat < now() - $1::bigint * interval '1 millisecond'
                 RETURNING id),
             freed AS (
                 UPDATE requests q SET state = {pending}, daemon_id = NULL, started_at = NULL
                 WHERE q.state IN ({in_flight})
                   AND (q.daemon_id IN (SELECT id FROM dead)
                        OR NOT EXISTS (SELECT 1 FROM daemons d
                                       WHERE d.id = q.daemon_id AND d.status = 'running'))
                 RETURNING q.id),
             forgotten AS (
                 DELETE FROM model_slots s
                 WHERE NOT EXISTS (
                     SELECT 1 FROM daemons d
                     WHERE d.id = s.daemon_id
                       AND (d.status = 'running'
                            OR (d.status = 'dead'
                                AND d.stopped_at >= now() - $3 * interval '1 millisecond'))))
             SELECT (SELECT count(*) FROM dead) AS dead, (SELECT count(*) FROM freed) AS freed,
                    CASE WHEN EXISTS (SELECT 1 FROM freed)
                         THEN (SELECT 1 FROM pg_notify('fusillade_work', '')) END AS notified",
            pending = request_word(RequestState::Pending),
            in_flight = in_flight(),
        ))
        .bind(stale_after.map(ms))
        .bind(by)
        .bind(ms(fence_after))
        .fetch_one(&self.background)
        .await?;
        Ok(RescueReport {
            dead_daemons: row.try_get::<i64, _>("dead")? as u64,
            requests: row.try_get::<i64, _>("freed")? as u64,
        })
    }

    async fn retire_daemon(&self, id: DaemonId) -> Result<u64> {
        let freed: i64 = sqlx::query_scalar(&format!(
            "WITH dead AS (
                 UPDATE daemons SET status = 'dead', stopped_at = now(), in_flight = 0
                 WHERE id = $1 AND status = 'running'),
             freed AS (
                 UPDATE requests q SET state = {pending}, daemon_id = NULL, started_at = NULL
                 WHERE q.state IN ({in_flight}) AND q.daemon_id = $1
                 RETURNING q.id)
             SELECT count(*) FROM freed,
                    (SELECT CASE WHEN EXISTS (SELECT 1 FROM freed)
                                 THEN (SELECT 1 FROM pg_notify('fusillade_work', '')) END) n(x)",
            pending = request_word(RequestState::Pending),
            in_flight = in_flight(),
        ))
        .bind(id)
        .fetch_one(&self.background)
        .await?;
        Ok(freed as u64)
    }

    async fn finalize(&self, limit: i64) -> Result<FinalizeReport> {
        let expired_error = Json(ResultError::new(
            codes::BATCH_EXPIRED,
            "the batch's completion window ended before this request finished",
        ));
        let expired: Vec<BatchId> = sqlx::query_scalar(&format!(
            "WITH b AS (
                 SELECT id FROM batches
                 WHERE status IN ({}) AND expires_at <= now()
                 ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED),
             {}
             UPDATE batches x SET status = {}, expired_at = now(),
                                  n_failed = x.n_failed + COALESCE(g.n, 0)
             FROM b LEFT JOIN (SELECT batch_id, count(*) AS n FROM gone GROUP BY batch_id) g
                    ON g.batch_id = b.id
             WHERE x.id = b.id RETURNING x.id",
            batch_from(BatchStatus::Expired),
            end_as(
                "gone",
                "USING b",
                BATCH_LIVE,
                RequestState::Failed.as_str(),
                "$2"
            ),
            batch_word(BatchStatus::Expired),
        ))
        .bind(limit)
        .bind(&expired_error)
        .fetch_all(&self.background)
        .await?;
        let cancelled: Vec<BatchId> = sqlx::query_scalar(&cancel_step(&format!(
            "SELECT id FROM batches WHERE status = {}
             ORDER BY cancelling_at LIMIT $1 FOR UPDATE SKIP LOCKED",
            batch_word(BatchStatus::Cancelling)
        )))
        .bind(limit)
        .bind(cancelled_error())
        .fetch_all(&self.background)
        .await?;
        let completed: Vec<BatchId> = sqlx::query_scalar(&complete_sql("true"))
            .bind(limit)
            .fetch_all(&self.background)
            .await?;
        Ok(FinalizeReport {
            completed,
            cancelled,
            expired,
        })
    }

    async fn complete_batches(&self, ids: &[BatchId]) -> Result<Vec<BatchId>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let completed = sqlx::query_scalar(&complete_sql("x.id = ANY($2)"))
            .bind(ids.len() as i64)
            .bind(ids)
            .fetch_all(&self.background)
            .await?;
        Ok(completed)
    }

    async fn vacuum_queue(&self, min_dead: i64) -> Result<bool> {
        use sqlx::Acquire;
        let dead: Option<i64> = sqlx::query_scalar(
            "SELECT n_dead_tup FROM pg_stat_user_tables \
             WHERE relid = 'requests'::regclass",
        )
        .fetch_optional(&self.background)
        .await?;
        if dead.unwrap_or(0) < min_dead {
            return Ok(false);
        }
        let mut conn = self.background.acquire().await?;
        let conn = conn.acquire().await?;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(VACUUM_LOCK)
            .fetch_one(&mut *conn)
            .await?;
        if !locked {
            return Ok(false);
        }
        let vacuumed = sqlx::query("VACUUM (ANALYZE) requests")
            .execute(&mut *conn)
            .await;
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(VACUUM_LOCK)
            .execute(&mut *conn)
            .await?;
        vacuumed?;
        Ok(true)
    }
}
