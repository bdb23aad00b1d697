//! What the dashboard reads beyond the OpenAI objects (see the trait docs
//! in `store::traits::dashboard`).

use super::SqliteStore;
use super::requests::{before_batch, ended_records, live_records, request_from_row};
use super::types::{batch_hi, batch_lo, time, time_opt};
use crate::domain::batch::BatchId;
use crate::domain::request::{RequestId, RequestRecord, RequestState};
use crate::store::guards::in_flight;
use crate::store::{
    BODY_PREVIEW, BatchSample, DashboardStore, ERROR_SAMPLE, ErrorGroup, MAX_PAGE, ModelLoad,
    PENDING_COUNT_CAP, Page, RequestDetail, Result, ResultSample, STATS_SAMPLE,
};
use sqlx::Row;

/// The first `max` bytes of `text`, cut at a character boundary.
fn preview(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

impl DashboardStore for SqliteStore {
    async fn list_requests_in_state(
        &self,
        batch_id: BatchId,
        state: RequestState,
        after: Option<RequestId>,
        limit: i64,
    ) -> Result<Page<RequestRecord>> {
        let limit = limit.clamp(1, MAX_PAGE);
        let sql = if state.is_terminal() {
            format!(
                "{} ORDER BY request_id LIMIT ?4",
                ended_records(
                    "request_id > ?1 AND request_id <= ?2 AND batch_id = ?3 AND state = ?5"
                )
            )
        } else {
            format!(
                "{} ORDER BY id LIMIT ?4",
                live_records("id > ?1 AND id <= ?2 AND batch_id = ?3 AND state = ?5")
            )
        };
        let rows = sqlx::query(&sql)
            .bind(after.unwrap_or_else(|| before_batch(batch_id)))
            .bind(batch_hi(batch_id))
            .bind(batch_id)
            .bind(limit + 1)
            .bind(state)
            .fetch_all(&self.reader)
            .await?;
        Page::from_rows(&rows, limit, request_from_row)
    }

    async fn request_detail(
        &self,
        batch_id: BatchId,
        id: RequestId,
    ) -> Result<Option<RequestDetail>> {
        let row = sqlx::query(&format!(
            "{} UNION ALL {}",
            live_records("id = ?1 AND batch_id = ?2"),
            ended_records("request_id = ?1 AND batch_id = ?2")
        ))
        .bind(id)
        .bind(batch_id)
        .fetch_optional(&self.reader)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let record = request_from_row(&row)?;
        let input: Option<String> =
            sqlx::query_scalar("SELECT body FROM request_templates WHERE id = ?")
                .bind(record.template_id)
                .fetch_optional(&self.reader)
                .await?;
        let answer = sqlx::query(
            "SELECT body, upstream_request_id FROM request_results WHERE request_id = ?",
        )
        .bind(id)
        .fetch_optional(&self.reader)
        .await?;
        let (body, upstream_request_id): (Option<Vec<u8>>, Option<String>) = match &answer {
            Some(a) => (a.try_get("body")?, a.try_get("upstream_request_id")?),
            None => (None, None),
        };
        let max = BODY_PREVIEW as usize;
        Ok(Some(RequestDetail {
            input_bytes: input.as_ref().map_or(0, |b| b.len() as i64),
            input_body: input.as_deref().map(|b| preview(b, max)),
            response_bytes: body.as_ref().map_or(0, |b| b.len() as i64),
            response_body: body
                .as_deref()
                .and_then(|b| std::str::from_utf8(b).ok())
                .filter(|t| !t.contains('\0'))
                .map(|t| preview(t, max)),
            upstream_request_id,
            record,
        }))
    }

    async fn batch_sample(&self, batch_id: BatchId, total: i64) -> Result<BatchSample> {
        let step = ((total + STATS_SAMPLE - 1) / STATS_SAMPLE).max(1);
        let counts: Vec<(RequestState, i64)> = sqlx::query_as(&format!(
            "SELECT state, count(*) FROM requests WHERE state IN ({}) AND batch_id = ? \
             GROUP BY state",
            in_flight()
        ))
        .bind(batch_id)
        .fetch_all(&self.reader)
        .await?;
        let count = |s: RequestState| counts.iter().find(|c| c.0 == s).map_or(0, |c| c.1);
        // Lines 1, 1 + step, ...: one primary-key lookup each.
        let rows = sqlx::query(
            "WITH RECURSIVE g(line) AS (SELECT 1 UNION ALL SELECT line + ?3 FROM g \
                                       WHERE line + ?3 <= max(?2, 1)) \
             SELECT r.ok, r.finished_at, COALESCE(r.started_at, r.claimed_at) AS started_at, \
                    r.status_code \
             FROM g JOIN request_results r \
               ON r.request_id = unhex(substr(hex(?1), 1, 20) || printf('%012X', g.line)) \
             WHERE r.batch_id = ?1",
        )
        .bind(batch_id)
        .bind(total)
        .bind(step)
        .fetch_all(&self.reader)
        .await?;
        let results = rows
            .iter()
            .map(|r| {
                Ok(ResultSample {
                    ok: r.try_get("ok")?,
                    finished_at: time(r.try_get("finished_at")?),
                    started_at: time_opt(r.try_get("started_at")?),
                    status_code: r.try_get("status_code")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let groups = sqlx::query(
            "SELECT COALESCE(e.error ->> 'code', '') AS code, e.status_code, count(*) AS n \
             FROM (SELECT error, status_code FROM request_results \
                   WHERE request_id BETWEEN ?1 AND ?2 AND NOT ok AND batch_id = ?3 \
                   ORDER BY request_id LIMIT ?4) e \
             GROUP BY 1, 2 ORDER BY n DESC, code, e.status_code",
        )
        .bind(batch_lo(batch_id))
        .bind(batch_hi(batch_id))
        .bind(batch_id)
        .bind(ERROR_SAMPLE)
        .fetch_all(&self.reader)
        .await?;
        let errors = groups
            .iter()
            .map(|r| {
                Ok(ErrorGroup {
                    code: r.try_get("code")?,
                    status_code: r.try_get("status_code")?,
                    count: r.try_get("n")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let errors_examined = errors.iter().map(|g| g.count).sum();
        Ok(BatchSample {
            claimed: count(RequestState::Claimed),
            processing: count(RequestState::Processing),
            step,
            results,
            errors,
            errors_examined,
        })
    }

    async fn model_loads(&self) -> Result<Vec<ModelLoad>> {
        let rows = sqlx::query(&format!(
            "WITH names AS ( \
                 SELECT DISTINCT model FROM requests WHERE state = 'pending' AND NOT private \
                 UNION SELECT s.model FROM model_slots s JOIN daemons d ON d.id = s.daemon_id \
                       WHERE d.status = 'running' \
                 UNION SELECT model FROM requests WHERE state IN ({flight})) \
             SELECT n.model, \
                    (SELECT count(*) FROM requests q WHERE q.model = n.model \
                       AND q.state IN ({flight})) AS in_flight, \
                    (SELECT COALESCE(sum(s.held), 0) FROM model_slots s \
                       JOIN daemons d ON d.id = s.daemon_id \
                     WHERE s.model = n.model AND d.status = 'running') AS slots_held, \
                    (SELECT count(*) FROM (SELECT 1 FROM requests q WHERE q.model = n.model \
                       AND q.state = 'pending' AND NOT q.private LIMIT ?1)) AS pending \
             FROM names n ORDER BY n.model",
            flight = in_flight()
        ))
        .bind(PENDING_COUNT_CAP)
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ModelLoad {
                    model: r.try_get("model")?,
                    in_flight: r.try_get("in_flight")?,
                    slots_held: r.try_get("slots_held")?,
                    pending: r.try_get("pending")?,
                })
            })
            .collect()
    }
}
