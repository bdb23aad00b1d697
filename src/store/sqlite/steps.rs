//! `response_steps`: the steps of multi-step responses.

use super::SqliteStore;
use super::types::{micros, time, time_opt};
use crate::domain::ids::{RequestId, StepId};
use crate::domain::step::{CreateStepInput, ResponseStep, StepState};
use crate::store::guards::in_list;
use crate::store::rules::step_refused;
use crate::store::{ResponseStepStore, Result, StoreError};
use serde_json::Value;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

const COLUMNS: &str = "id, request_id, prev_step_id, parent_step_id, step_kind, step_sequence, \
     state, request_payload, response_payload, error, retry_attempt, created_at, started_at, \
     completed_at, failed_at, canceled_at";

fn json(text: Option<String>) -> Result<Option<Value>> {
    text.map(|t| serde_json::from_str(&t))
        .transpose()
        .map_err(|e| StoreError::Invalid(format!("a stored JSON value is malformed: {e}")))
}

fn step_from_row(row: &SqliteRow) -> Result<ResponseStep> {
    Ok(ResponseStep {
        id: row.try_get("id")?,
        request_id: row.try_get("request_id")?,
        prev_step_id: row.try_get("prev_step_id")?,
        parent_step_id: row.try_get("parent_step_id")?,
        step_kind: row.try_get("step_kind")?,
        step_sequence: row.try_get("step_sequence")?,
        state: row.try_get("state")?,
        request_payload: json(row.try_get("request_payload")?)?.unwrap_or(Value::Null),
        response_payload: json(row.try_get("response_payload")?)?,
        error: json(row.try_get("error")?)?,
        retry_attempt: row.try_get("retry_attempt")?,
        created_at: time(row.try_get("created_at")?),
        started_at: time_opt(row.try_get("started_at")?),
        completed_at: time_opt(row.try_get("completed_at")?),
        failed_at: time_opt(row.try_get("failed_at")?),
        canceled_at: time_opt(row.try_get("canceled_at")?),
    })
}

impl SqliteStore {
    /// Runs `UPDATE response_steps SET <set> WHERE id = ?1 AND state IN
    /// (sources)` with `?2` bound to `payload` and `?3` to now; on no row,
    /// finds out why.
    async fn step_transition(
        &self,
        id: StepId,
        to: StepState,
        set: &str,
        payload: Option<Value>,
    ) -> Result<()> {
        let sql = format!(
            "UPDATE response_steps SET state = '{to}', {set} \
             WHERE id = ?1 AND state IN ({})",
            in_list(StepState::sources_of(to))
        );
        let done = sqlx::query(&sql)
            .bind(id)
            .bind(payload.map(|p| p.to_string()))
            .bind(micros(chrono::Utc::now()))
            .execute(&self.writer)
            .await?;
        if done.rows_affected() == 1 {
            return Ok(());
        }
        let current: Option<StepState> =
            sqlx::query_scalar("SELECT state FROM response_steps WHERE id = ?")
                .bind(id)
                .fetch_optional(&self.writer)
                .await?;
        Err(step_refused(id, current, to))
    }

    async fn steps_where(
        &self,
        filter: &str,
        request: RequestId,
        parent: Option<StepId>,
    ) -> Result<Vec<ResponseStep>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM response_steps WHERE request_id = ?1 AND {filter} \
             ORDER BY step_sequence, id"
        );
        let rows = sqlx::query(&sql)
            .bind(request)
            .bind(parent)
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(step_from_row).collect()
    }
}

impl ResponseStepStore for SqliteStore {
    async fn create_step(&self, input: CreateStepInput) -> Result<StepId> {
        let id = input.id.unwrap_or_default();
        // The request may be live or ended (ended requests leave `requests`).
        let inserted = sqlx::query(
            "INSERT INTO response_steps \
             (id, request_id, prev_step_id, parent_step_id, step_kind, step_sequence, \
              request_payload, created_at) \
             SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8 \
             WHERE EXISTS (SELECT 1 FROM requests WHERE id = ?2) \
                OR EXISTS (SELECT 1 FROM request_results WHERE request_id = ?2)",
        )
        .bind(id)
        .bind(input.request_id)
        .bind(input.prev_step_id)
        .bind(input.parent_step_id)
        .bind(input.step_kind)
        .bind(input.step_sequence)
        .bind(input.request_payload.to_string())
        .bind(micros(chrono::Utc::now()))
        .execute(&self.writer)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                what: "request",
                id: input.request_id.0.to_string(),
            });
        }
        Ok(id)
    }

    async fn get_step(&self, id: StepId) -> Result<Option<ResponseStep>> {
        let sql = format!("SELECT {COLUMNS} FROM response_steps WHERE id = ?");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(step_from_row).transpose()
    }

    async fn list_chain(&self, request_id: RequestId) -> Result<Vec<ResponseStep>> {
        self.steps_where("?2 IS NULL", request_id, None).await
    }

    async fn list_scope(
        &self,
        request_id: RequestId,
        parent_step_id: Option<StepId>,
    ) -> Result<Vec<ResponseStep>> {
        self.steps_where("parent_step_id IS ?2", request_id, parent_step_id)
            .await
    }

    async fn mark_step_processing(&self, id: StepId) -> Result<()> {
        // Keeps the first start time when called again while processing.
        self.step_transition(
            id,
            StepState::Processing,
            "started_at = COALESCE(started_at, ?3), response_payload = ?2",
            None,
        )
        .await
    }

    async fn complete_step(&self, id: StepId, response: Value) -> Result<()> {
        self.step_transition(
            id,
            StepState::Completed,
            "response_payload = ?2, completed_at = ?3",
            Some(response),
        )
        .await
    }

    async fn fail_step(&self, id: StepId, error: Value) -> Result<()> {
        self.step_transition(
            id,
            StepState::Failed,
            "error = ?2, failed_at = ?3",
            Some(error),
        )
        .await
    }

    async fn cancel_step(&self, id: StepId) -> Result<()> {
        self.step_transition(
            id,
            StepState::Canceled,
            "canceled_at = ?3, error = COALESCE(error, ?2)",
            None,
        )
        .await
    }

    async fn requeue_step_for_retry(&self, id: StepId) -> Result<()> {
        self.step_transition(
            id,
            StepState::Pending,
            "retry_attempt = retry_attempt + 1, started_at = NULL, response_payload = ?2",
            None,
        )
        .await
    }
}
