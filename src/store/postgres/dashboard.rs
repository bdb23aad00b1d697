//! What the dashboard reads beyond the OpenAI objects: a batch's requests in
//! one state, one request with its input and answer, a batch's statistics,
//! and the load of each model.
//!
//! Every statement here costs the same for a batch of ten requests and one
//! of a million: counts come from the batch's maintained counters and the
//! small partial index of in-flight requests; statistics read a fixed-size
//! sample of evenly spaced lines (each a primary-key lookup, since a
//! request's id is its batch id and line number); error breakdowns read at
//! most [`ERROR_SAMPLE`] failures through the partial index of failed
//! results; lists read one keyset page.

use super::PostgresStore;
use super::requests::{before_batch, ended_records, live_records, request_from_row};
use crate::domain::batch::BatchId;
use crate::domain::request::{RequestId, RequestRecord, RequestState};
use crate::store::{
    BODY_PREVIEW, BatchSample, DashboardStore, ERROR_SAMPLE, ErrorGroup, MAX_PAGE, ModelLoad,
    PENDING_COUNT_CAP, Page, RequestDetail, Result, ResultSample, STATS_SAMPLE,
};
use sqlx::Row;

impl DashboardStore for PostgresStore {
    async fn list_requests_in_state(
        &self,
        batch_id: BatchId,
        state: RequestState,
        after: Option<RequestId>,
        limit: i64,
    ) -> Result<Page<RequestRecord>> {
        let limit = limit.clamp(1, MAX_PAGE);
        let range = "> $2 AND {id} <= fusillade_batch_hi($1) AND batch_id = $1";
        let live = |id: &str| format!("{id} {}", range.replace("{id}", id));
        // Each statement names the predicate of the index that holds its
        // state, so the plan reads only that state's rows of the batch.
        let sql = match state {
            RequestState::Pending => format!(
                "{} ORDER BY id LIMIT $3",
                live_records(&format!("{} AND state = 'pending'", live("id")))
            ),
            RequestState::Claimed | RequestState::Processing => format!(
                "{} ORDER BY id LIMIT $3",
                live_records(&format!(
                    "{} AND state IN ('claimed', 'processing') AND state = $4",
                    live("id")
                ))
            ),
            RequestState::Completed => format!(
                "{} ORDER BY request_id LIMIT $3",
                ended_records(&format!("{} AND ok", live("request_id")))
            ),
            RequestState::Failed | RequestState::Canceled => format!(
                "{} ORDER BY request_id LIMIT $3",
                ended_records(&format!("{} AND NOT ok AND state = $4", live("request_id")))
            ),
        };
        let mut q = sqlx::query(&sql)
            .bind(batch_id)
            .bind(after.map_or(before_batch(batch_id), |a| a.0))
            .bind(limit + 1);
        if matches!(
            state,
            RequestState::Claimed
                | RequestState::Processing
                | RequestState::Failed
                | RequestState::Canceled
        ) {
            q = q.bind(state);
        }
        let rows = q.fetch_all(&self.ordered).await?;
        Page::from_rows(&rows, limit, request_from_row)
    }

    async fn request_detail(
        &self,
        batch_id: BatchId,
        id: RequestId,
    ) -> Result<Option<RequestDetail>> {
        let row = sqlx::query(&format!(
            "{} UNION ALL {}",
            live_records("id = $1 AND batch_id = $2"),
            ended_records("request_id = $1 AND batch_id = $2")
        ))
        .bind(id)
        .bind(batch_id)
        .fetch_optional(&self.pools.replica)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let record = request_from_row(&row)?;
        let extra = sqlx::query(
            "SELECT (SELECT left(body, $3) FROM request_templates WHERE id = $2) AS input_body, \
                    (SELECT octet_length(body) FROM request_templates WHERE id = $2) \
                        AS input_bytes, \
                    left(r.body, $3) AS response_body, \
                    COALESCE(octet_length(r.body), octet_length(r.body_bytes)) \
                        AS response_bytes, \
                    r.upstream_request_id \
             FROM (SELECT 1) one \
             LEFT JOIN request_results r ON r.request_id = $1",
        )
        .bind(id)
        .bind(record.template_id)
        .bind(BODY_PREVIEW)
        .fetch_one(&self.pools.replica)
        .await?;
        Ok(Some(RequestDetail {
            input_body: extra.try_get("input_body")?,
            input_bytes: extra
                .try_get::<Option<i32>, _>("input_bytes")?
                .unwrap_or(0)
                .into(),
            response_body: extra.try_get("response_body")?,
            response_bytes: extra
                .try_get::<Option<i32>, _>("response_bytes")?
                .unwrap_or(0)
                .into(),
            upstream_request_id: extra.try_get("upstream_request_id")?,
            record,
        }))
    }

    async fn batch_sample(&self, batch_id: BatchId, total: i64) -> Result<BatchSample> {
        let step = ((total + STATS_SAMPLE - 1) / STATS_SAMPLE).max(1);
        // In flight: the partial index of claimed requests holds at most the
        // sum of all limits, whatever the size of the batch.
        let (claimed, processing): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE state = 'claimed'), \
                    count(*) FILTER (WHERE state = 'processing') \
             FROM requests WHERE state IN ('claimed', 'processing') AND batch_id = $1",
        )
        .bind(batch_id)
        .fetch_one(&self.pools.replica)
        .await?;
        // Lines 1, 1 + step, ...: one primary-key lookup each.
        let rows = sqlx::query(
            "SELECT r.ok, r.finished_at, COALESCE(r.started_at, r.claimed_at) AS started_at, \
                    r.status_code \
             FROM generate_series(1::bigint, GREATEST($2, 1), $3) g(line) \
             JOIN request_results r ON r.request_id = fusillade_request_id($1, g.line) \
             WHERE r.batch_id = $1",
        )
        .bind(batch_id)
        .bind(total)
        .bind(step)
        .fetch_all(&self.pools.replica)
        .await?;
        let results = rows
            .iter()
            .map(|r| {
                Ok(ResultSample {
                    ok: r.try_get("ok")?,
                    finished_at: r.try_get("finished_at")?,
                    started_at: r.try_get("started_at")?,
                    status_code: r.try_get("status_code")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let groups = sqlx::query(
            "SELECT COALESCE(e.error->>'code', '') AS code, e.status_code, count(*) AS n \
             FROM (SELECT error, status_code FROM request_results \
                   WHERE request_id BETWEEN fusillade_batch_lo($1) AND fusillade_batch_hi($1) \
                     AND NOT ok AND batch_id = $1 \
                   ORDER BY request_id LIMIT $2) e \
             GROUP BY 1, 2 ORDER BY n DESC, code, status_code",
        )
        .bind(batch_id)
        .bind(ERROR_SAMPLE)
        .fetch_all(&self.pools.replica)
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
            claimed,
            processing,
            step,
            results,
            errors,
            errors_examined,
        })
    }

    async fn model_loads(&self) -> Result<Vec<ModelLoad>> {
        // The models come from the slots of running daemons and the claim
        // index (the recursive walk reads one index entry per model). The
        // pending count walks the claim index in its own order (its columns
        // after the model, migrations/0008): without the
        // ORDER BY the planner may pick a sequential scan for the LIMIT,
        // which first reads every page the ended requests left empty (60 ms
        // at a million requests instead of 9).
        let rows = sqlx::query(
            "WITH RECURSIVE m(model) AS ( \
                 (SELECT model FROM requests WHERE state = 'pending' AND NOT private \
                  ORDER BY model LIMIT 1) \
                 UNION ALL \
                 SELECT (SELECT q.model FROM requests q \
                         WHERE q.state = 'pending' AND NOT q.private AND q.model > m.model \
                         ORDER BY q.model LIMIT 1) \
                 FROM m WHERE m.model IS NOT NULL), \
             names AS ( \
                 SELECT model FROM m WHERE model IS NOT NULL \
                 UNION SELECT s.model FROM model_slots s JOIN daemons d ON d.id = s.daemon_id \
                       WHERE d.status = 'running' \
                 UNION SELECT model FROM requests WHERE state IN ('claimed', 'processing')) \
             SELECT n.model, \
                    (SELECT count(*) FROM requests q WHERE q.model = n.model \
                       AND q.state IN ('claimed', 'processing')) AS in_flight, \
                    (SELECT COALESCE(sum(s.held), 0)::bigint FROM model_slots s \
                       JOIN daemons d ON d.id = s.daemon_id \
                     WHERE s.model = n.model AND d.status = 'running') AS slots_held, \
                    (SELECT count(*) FROM (SELECT 1 FROM requests q WHERE q.model = n.model \
                       AND q.state = 'pending' AND NOT q.private \
                       ORDER BY q.deadline, q.prefix_key, q.id LIMIT $1) p) AS pending \
             FROM names n ORDER BY n.model",
        )
        .bind(PENDING_COUNT_CAP)
        .fetch_all(&self.pools.replica)
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
