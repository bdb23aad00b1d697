//! `requests` and `request_results` as the API reads them: single requests,
//! lists, and the output and error files streamed page by page.

use super::PostgresStore;
use crate::domain::batch::BatchId;
use crate::domain::output::{ResultError, ResultRow};
use crate::domain::request::{RequestId, RequestRecord};
use crate::store::{
    ByteStream, HealthStore, LiveRequestCounts, MAX_PAGE, Page, RequestStore, Result, StoreError,
};
use bytes::Bytes;
use futures_util::{StreamExt, stream};
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::{PgPool, Row};
use tokio::sync::mpsc;
use uuid::Uuid;

/// Results read per round trip when streaming a file out.
const RESULT_PAGE: i64 = 2000;

/// Bodies read per round trip, at most (a page always holds one result):
/// answers can be megabytes each, and a file is streamed with a page
/// being read, one waiting and one being sent, so memory stays a few times
/// this whatever the file's size.
const RESULT_PAGE_BYTES: i64 = 4 << 20;

/// Live requests' records (from `requests`) chosen by `filter`.
pub(super) fn live_records(filter: &str) -> String {
    format!(
        "SELECT id, batch_id, template_id, model, custom_id, state, attempt, not_before, \
                daemon_id, created_at, claimed_at, started_at, routed_model, NULL::timestamptz AS finished_at, \
                NULL::int AS status_code, NULL::jsonb AS error \
         FROM requests WHERE {filter}"
    )
}

/// Ended requests' records (from `request_results`), in the same columns.
pub(super) fn ended_records(filter: &str) -> String {
    format!(
        "SELECT request_id AS id, batch_id, template_id, model, custom_id, state, attempt, \
                not_before, NULL::uuid AS daemon_id, created_at, claimed_at, started_at, \
                routed_model, finished_at, status_code, error \
         FROM request_results WHERE {filter}"
    )
}

/// Just before the first request id of a batch: its ids are the batch id
/// with the last six bytes replaced by the line number.
pub(super) fn before_batch(batch: BatchId) -> Uuid {
    Uuid::from_u128((batch.0.as_u128() & !0xffff_ffff_ffff).wrapping_sub(1))
}

pub(super) fn request_from_row(row: &PgRow) -> Result<RequestRecord> {
    let error: Option<Json<ResultError>> = row.try_get("error")?;
    Ok(RequestRecord {
        id: row.try_get("id")?,
        batch_id: row.try_get("batch_id")?,
        template_id: row.try_get("template_id")?,
        model: row.try_get("model")?,
        custom_id: row.try_get("custom_id")?,
        state: row.try_get("state")?,
        attempt: row.try_get("attempt")?,
        not_before: row.try_get("not_before")?,
        daemon_id: row.try_get("daemon_id")?,
        created_at: row.try_get("created_at")?,
        claimed_at: row.try_get("claimed_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        status_code: row.try_get("status_code")?,
        error: error.map(|e| e.0),
        routed_model: row.try_get("routed_model")?,
    })
}

/// Keeps the rows of a page (`r`, in request order) whose bodies before
/// them add up to less than `$4` bytes, so a page of large answers is cut
/// short; the next page starts after its last row.
macro_rules! bytes_capped {
    ($page:literal) => {
        concat!(
            "SELECT request_id, custom_id, status_code, upstream_request_id, body, body_bytes, \
                    error \
             FROM (SELECT r.*, sum(COALESCE(octet_length(r.body), octet_length(r.body_bytes), 0)) \
                                   OVER (ORDER BY r.request_id) AS upto \
                   FROM (",
            $page,
            ") r) s \
             WHERE upto - COALESCE(octet_length(body), octet_length(body_bytes), 0) < $4 \
             ORDER BY request_id"
        )
    };
}

/// One page of results after `after`, in request order: at most
/// [`RESULT_PAGE`] results and, past the first, [`RESULT_PAGE_BYTES`] of bodies.
async fn result_page(
    pool: &PgPool,
    batch_id: BatchId,
    ok: bool,
    after: Uuid,
) -> Result<Vec<PgRow>, sqlx::Error> {
    // Two statements, not `ok = $2`: the error file's must name the partial
    // index's own predicate to use it whatever the plan.
    let sql = if ok {
        bytes_capped!(
            "SELECT request_id, custom_id, status_code, upstream_request_id, body, body_bytes, \
                    error \
             FROM request_results \
             WHERE request_id > $2 AND request_id <= fusillade_batch_hi($1) AND batch_id = $1 \
               AND ok \
             ORDER BY request_id LIMIT $3"
        )
    } else {
        bytes_capped!(
            "SELECT request_id, custom_id, status_code, upstream_request_id, body, body_bytes, \
                    error \
             FROM request_results \
             WHERE request_id > $2 AND request_id <= fusillade_batch_hi($1) AND batch_id = $1 \
               AND NOT ok \
             ORDER BY request_id LIMIT $3"
        )
    };
    sqlx::query(sql)
        .bind(batch_id)
        .bind(after)
        .bind(RESULT_PAGE)
        .bind(RESULT_PAGE_BYTES)
        .fetch_all(pool)
        .await
}

/// A page of results rendered as JSONL.
fn render(rows: &[PgRow]) -> Result<Bytes> {
    let mut out = Vec::with_capacity(rows.len() * 256);
    for row in rows {
        let error: Option<Json<ResultError>> = row.try_get("error")?;
        // One of the two at most (see migrations/0006_result_body_bytes.sql).
        let text: Option<&str> = row.try_get("body")?;
        let bytes: Option<&[u8]> = row.try_get("body_bytes")?;
        ResultRow {
            request_id: RequestId(row.try_get("request_id")?),
            custom_id: row.try_get("custom_id")?,
            status_code: row.try_get("status_code")?,
            upstream_request_id: row.try_get("upstream_request_id")?,
            body: text.map(str::as_bytes).or(bytes),
            error: error.as_ref().map(|e| &e.0),
        }
        .write_line(&mut out);
    }
    Ok(Bytes::from(out))
}

/// Reads every page into `out`, one ahead of the reader: the database
/// reads page N+1 while the server renders and sends page N. Stops quietly
/// when the reader goes away.
async fn read_pages(
    pool: PgPool,
    batch_id: BatchId,
    ok: bool,
    out: mpsc::Sender<Result<Vec<PgRow>, sqlx::Error>>,
) {
    let mut after = before_batch(batch_id);
    loop {
        let page = result_page(&pool, batch_id, ok, after).await;
        let last = match &page {
            Ok(rows) => match rows.last().map(|r| r.try_get::<Uuid, _>("request_id")) {
                None => return,
                Some(Ok(id)) => Some(id),
                Some(Err(_)) => None,
            },
            Err(_) => None,
        };
        if out.send(page).await.is_err() {
            return;
        }
        match last {
            Some(id) => after = id,
            None => return, // an error was sent
        }
    }
}

impl PostgresStore {
    fn result_stream(&self, batch_id: BatchId, ok: bool) -> ByteStream {
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(read_pages(self.ordered.clone(), batch_id, ok, tx));
        stream::unfold(rx, |mut rx| async move {
            let page = rx.recv().await?;
            let item = page
                .map_err(StoreError::from)
                .and_then(|rows| render(&rows));
            Some((item, rx))
        })
        .boxed()
    }
}

impl RequestStore for PostgresStore {
    async fn get_request(&self, id: RequestId) -> Result<Option<RequestRecord>> {
        let row = sqlx::query(&format!(
            "{} UNION ALL {}",
            live_records("id = $1"),
            ended_records("request_id = $1")
        ))
        .bind(id)
        .fetch_optional(&self.pools.replica)
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
        // Each side reads its primary key range in order and stops early.
        let rows = sqlx::query(&format!(
            "SELECT * FROM ( \
                 ({} ORDER BY id LIMIT $3) \
                 UNION ALL \
                 ({} ORDER BY request_id LIMIT $3)) x \
             ORDER BY id LIMIT $3",
            live_records("id > $2 AND id <= fusillade_batch_hi($1) AND batch_id = $1"),
            ended_records(
                "request_id > $2 AND request_id <= fusillade_batch_hi($1) AND batch_id = $1"
            ),
        ))
        .bind(batch_id)
        .bind(after.map_or(before_batch(batch_id), |a| a.0))
        .bind(limit + 1)
        .fetch_all(&self.ordered)
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

impl HealthStore for PostgresStore {
    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pools.primary).await?;
        Ok(())
    }

    async fn live_request_counts(&self) -> Result<LiveRequestCounts> {
        // Unfinished requests come from the counters of the live batches
        // (the small `batches_live` index), not from a count of the queue,
        // which holds a whole backlog. In-flight ones come from the partial
        // index of claimed requests, at most the sum of all limits.
        let (unfinished, claimed, processing): (i64, i64, i64) = sqlx::query_as(
            "SELECT COALESCE((SELECT sum(total - n_completed - n_failed - n_canceled) \
                              FROM batches \
                              WHERE status IN ('validating', 'in_progress', 'finalizing', \
                                               'cancelling')), 0)::bigint, \
                    f.claimed, f.processing \
             FROM (SELECT count(*) FILTER (WHERE state = 'claimed') AS claimed, \
                          count(*) FILTER (WHERE state = 'processing') AS processing \
                   FROM requests WHERE state IN ('claimed', 'processing')) f",
        )
        .fetch_one(&self.pools.replica)
        .await?;
        let pending = (unfinished - claimed - processing).max(0);
        Ok(LiveRequestCounts {
            pending,
            claimed,
            processing,
        })
    }
}
