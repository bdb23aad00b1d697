//! `requests` and `request_results` as the API reads them: single requests,
//! lists, and the output and error files streamed page by page.

use super::SqliteStore;
use super::types::{batch_hi, batch_lo, time, time_opt};
use crate::domain::batch::BatchId;
use crate::domain::output::{ResultError, ResultRow};
use crate::domain::request::{RequestId, RequestRecord, RequestState};
use crate::store::guards::{batch_from, in_flight};
use crate::store::{
    ByteStream, HealthStore, LiveRequestCounts, MAX_PAGE, Page, RequestStore, Result, StoreError,
};
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt, stream};
use sqlx::Row;
use sqlx::sqlite::{SqlitePool, SqliteRow};
use tokio::sync::mpsc;

/// Results read per statement when streaming a file out.
const RESULT_PAGE: i64 = 2000;

/// Bytes of rendered lines sent at a time: a page stops early once it has
/// this many, so memory stays a few times this whatever the answers' size.
const RESULT_PAGE_BYTES: usize = 4 << 20;

/// Live requests' records (from `requests`) chosen by `filter`.
pub(super) fn live_records(filter: &str) -> String {
    format!(
        "SELECT id, batch_id, template_id, model, custom_id, state, attempt, not_before, \
                daemon_id, created_at, claimed_at, started_at, routed_model, NULL AS finished_at, \
                NULL AS status_code, NULL AS error \
         FROM requests WHERE {filter}"
    )
}

/// Ended requests' records (from `request_results`), in the same columns.
pub(super) fn ended_records(filter: &str) -> String {
    format!(
        "SELECT request_id AS id, batch_id, template_id, model, custom_id, state, attempt, \
                not_before, NULL AS daemon_id, created_at, claimed_at, started_at, \
                routed_model, finished_at, status_code, error \
         FROM request_results WHERE {filter}"
    )
}

/// Just before the first request id of a batch.
pub(super) fn before_batch(batch: BatchId) -> RequestId {
    RequestId(uuid::Uuid::from_u128(
        batch_lo(batch).0.as_u128().wrapping_sub(1),
    ))
}

pub(super) fn request_from_row(row: &SqliteRow) -> Result<RequestRecord> {
    let error: Option<String> = row.try_get("error")?;
    let error: Option<ResultError> = error
        .map(|e| serde_json::from_str(&e))
        .transpose()
        .map_err(|e| StoreError::Invalid(format!("a stored error line is malformed: {e}")))?;
    Ok(RequestRecord {
        id: row.try_get("id")?,
        batch_id: row.try_get("batch_id")?,
        template_id: row.try_get("template_id")?,
        model: row.try_get("model")?,
        custom_id: row.try_get("custom_id")?,
        state: row.try_get("state")?,
        attempt: row.try_get("attempt")?,
        not_before: time(row.try_get("not_before")?),
        daemon_id: row.try_get("daemon_id")?,
        created_at: time(row.try_get("created_at")?),
        claimed_at: time_opt(row.try_get("claimed_at")?),
        started_at: time_opt(row.try_get("started_at")?),
        finished_at: time_opt(row.try_get("finished_at")?),
        status_code: row.try_get("status_code")?,
        error,
        routed_model: row.try_get("routed_model")?,
    })
}

/// Renders one result row as a line of the output or error file.
fn render(row: &SqliteRow, out: &mut Vec<u8>) -> Result<RequestId> {
    let error: Option<String> = row.try_get("error")?;
    let error: Option<ResultError> = error
        .map(|e| serde_json::from_str(&e))
        .transpose()
        .map_err(|e| StoreError::Invalid(format!("a stored error line is malformed: {e}")))?;
    let body: Option<&[u8]> = row.try_get("body")?;
    let id: RequestId = row.try_get("request_id")?;
    let custom_id: Option<&str> = row.try_get("custom_id")?;
    let upstream_request_id: Option<&str> = row.try_get("upstream_request_id")?;
    ResultRow {
        request_id: id,
        custom_id,
        status_code: row.try_get("status_code")?,
        upstream_request_id,
        body,
        error: error.as_ref(),
    }
    .write_line(out);
    Ok(id)
}

/// Renders the results after `after` into chunks of about
/// [`RESULT_PAGE_BYTES`], sent down `out`; stops quietly when the reader
/// goes away.
async fn send_results(
    pool: SqlitePool,
    batch: BatchId,
    ok: bool,
    out: mpsc::Sender<Result<Bytes>>,
) -> Result<()> {
    // Two statements: the error file's names the partial index's predicate.
    let sql = format!(
        "SELECT request_id, custom_id, status_code, upstream_request_id, body, error \
         FROM request_results \
         WHERE request_id > ?1 AND request_id <= ?2 AND batch_id = ?3 AND {} \
         ORDER BY request_id LIMIT ?4",
        if ok { "ok" } else { "NOT ok" }
    );
    let mut after = before_batch(batch);
    loop {
        let mut buf = Vec::with_capacity(64 << 10);
        let mut rows = 0;
        {
            let mut page = sqlx::query(&sql)
                .bind(after)
                .bind(batch_hi(batch))
                .bind(batch)
                .bind(RESULT_PAGE)
                .fetch(&pool);
            while let Some(row) = page.try_next().await? {
                after = render(&row, &mut buf)?;
                rows += 1;
                if buf.len() >= RESULT_PAGE_BYTES {
                    break;
                }
            }
        }
        if rows == 0 {
            return Ok(());
        }
        if out.send(Ok(Bytes::from(buf))).await.is_err() {
            return Ok(());
        }
    }
}

impl SqliteStore {
    fn result_stream(&self, batch: BatchId, ok: bool) -> ByteStream {
        let (tx, rx) = mpsc::channel(1);
        let pool = self.reader.clone();
        tokio::spawn(async move {
            if let Err(e) = send_results(pool, batch, ok, tx.clone()).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        })
        .boxed()
    }
}

impl RequestStore for SqliteStore {
    async fn get_request(&self, id: RequestId) -> Result<Option<RequestRecord>> {
        let row = sqlx::query(&format!(
            "{} UNION ALL {}",
            live_records("id = ?1"),
            ended_records("request_id = ?1")
        ))
        .bind(id)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(request_from_row).transpose()
    }

    async fn list_requests(
        &self,
        batch_id: BatchId,
        after: Option<RequestId>,
        limit: i64,
    ) -> Result<Page<RequestRecord>> {
        let limit = limit.clamp(1, MAX_PAGE);
        let rows = sqlx::query(&format!(
            "SELECT * FROM ( \
                 SELECT * FROM ({} ORDER BY id LIMIT ?4) \
                 UNION ALL \
                 SELECT * FROM ({} ORDER BY request_id LIMIT ?4)) \
             ORDER BY id LIMIT ?4",
            live_records("id > ?1 AND id <= ?2 AND batch_id = ?3"),
            ended_records("request_id > ?1 AND request_id <= ?2 AND batch_id = ?3"),
        ))
        .bind(after.unwrap_or_else(|| before_batch(batch_id)))
        .bind(batch_hi(batch_id))
        .bind(batch_id)
        .bind(limit + 1)
        .fetch_all(&self.reader)
        .await?;
        Page::from_rows(&rows, limit, request_from_row)
    }

    fn output_stream(&self, batch_id: BatchId) -> ByteStream {
        self.result_stream(batch_id, true)
    }

    fn error_stream(&self, batch_id: BatchId) -> ByteStream {
        self.result_stream(batch_id, false)
    }
}

impl HealthStore for SqliteStore {
    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    async fn live_request_counts(&self) -> Result<LiveRequestCounts> {
        let live = batch_from(crate::domain::batch::BatchStatus::Expired);
        let (unfinished, claimed, processing): (i64, i64, i64) = sqlx::query_as(&format!(
            "SELECT COALESCE((SELECT sum(total - n_completed - n_failed - n_canceled) \
                              FROM batches WHERE status IN ({live}, 'cancelling')), 0), \
                    (SELECT count(*) FROM requests WHERE state IN ({flight}) AND state = ?1), \
                    (SELECT count(*) FROM requests WHERE state IN ({flight}) AND state = ?2)",
            flight = in_flight(),
        ))
        .bind(RequestState::Claimed)
        .bind(RequestState::Processing)
        .fetch_one(&self.reader)
        .await?;
        let pending = (unfinished - claimed - processing).max(0);
        Ok(LiveRequestCounts {
            pending,
            claimed,
            processing,
        })
    }
}
