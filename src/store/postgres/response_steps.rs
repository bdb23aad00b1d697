//! `response_steps`: the steps of multi-step responses.

use super::PostgresStore;
use crate::domain::ids::{RequestId, StepId};
use crate::domain::step::{CreateStepInput, ResponseStep, StepState};
use crate::store::rules::step_refused;
use crate::store::{ResponseStepStore, Result, StoreError};
use serde_json::Value;
use sqlx::Row;
use sqlx::postgres::PgRow;

const COLUMNS: &str = "id, request_id, prev_step_id, parent_step_id, step_kind, step_sequence, \
     state, request_payload, response_payload, error, retry_attempt, created_at, started_at, \
     completed_at, failed_at, canceled_at";

fn step_from_row(row: &PgRow) -> Result<ResponseStep, sqlx::Error> {
    Ok(ResponseStep {
        id: row.try_get("id")?,
        request_id: row.try_get("request_id")?,
        prev_step_id: row.try_get("prev_step_id")?,
        parent_step_id: row.try_get("parent_step_id")?,
        step_kind: row.try_get("step_kind")?,
        step_sequence: row.try_get("step_sequence")?,
        state: row.try_get("state")?,
        request_payload: row.try_get("request_payload")?,
        response_payload: row.try_get("response_payload")?,
        error: row.try_get("error")?,
        retry_attempt: row.try_get("retry_attempt")?,
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("started_at")?,
        completed_at: row.try_get("completed_at")?,
        failed_at: row.try_get("failed_at")?,
        canceled_at: row.try_get("canceled_at")?,
    })
}

impl PostgresStore {
    /// Runs `UPDATE response_steps SET <set> WHERE id = $1 AND state = ANY(sources)`
    /// with `$2` bound to `payload`; on no row, finds out why.
    async fn step_transition(
        &self,
        id: StepId,
        to: StepState,
        set: &str,
        payload: Option<Value>,
    ) -> Result<()> {
        let sql = format!(
            "UPDATE response_steps SET state = '{to}', {set} \
             WHERE id = $1 AND state = ANY($3)"
        );
        let done = sqlx::query(&sql)
            .bind(id)
            .bind(payload)
            .bind(StepState::sources_of(to))
            .execute(&self.pools.primary)
            .await?;
        if done.rows_affected() == 1 {
            return Ok(());
        }
        let current: Option<StepState> =
            sqlx::query_scalar("SELECT state FROM response_steps WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pools.primary)
                .await?;
        Err(step_refused(id, current, to))
    }
}

impl ResponseStepStore for PostgresStore {
    async fn create_step(&self, input: CreateStepInput) -> Result<StepId> {
        let id = input.id.unwrap_or_default();
        // The request may be live or ended (ended requests leave `requests`),
        // so its existence is checked here rather than by a foreign key.
        let inserted = sqlx::query(
            "INSERT INTO response_steps \
             (id, request_id, prev_step_id, parent_step_id, step_kind, step_sequence, request_payload) \
             SELECT $1, $2, $3, $4, $5, $6, $7 \
             WHERE EXISTS (SELECT 1 FROM requests WHERE id = $2) \
                OR EXISTS (SELECT 1 FROM request_results WHERE request_id = $2)",
        )
        .bind(id)
        .bind(input.request_id)
        .bind(input.prev_step_id)
        .bind(input.parent_step_id)
        .bind(input.step_kind)
        .bind(input.step_sequence)
        .bind(input.request_payload)
        .execute(&self.pools.primary)
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
        let sql = format!("SELECT {COLUMNS} FROM response_steps WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pools.replica)
            .await?;
        Ok(row.as_ref().map(step_from_row).transpose()?)
    }

    async fn list_chain(&self, request_id: RequestId) -> Result<Vec<ResponseStep>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM response_steps WHERE request_id = $1 \
             ORDER BY step_sequence, id"
        );
        let rows = sqlx::query(&sql)
            .bind(request_id)
            .fetch_all(&self.pools.replica)
            .await?;
        Ok(rows.iter().map(step_from_row).collect::<Result<_, _>>()?)
    }

    async fn list_scope(
        &self,
        request_id: RequestId,
        parent_step_id: Option<StepId>,
    ) -> Result<Vec<ResponseStep>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM response_steps \
             WHERE request_id = $1 AND parent_step_id IS NOT DISTINCT FROM $2 \
             ORDER BY step_sequence, id"
        );
        let rows = sqlx::query(&sql)
            .bind(request_id)
            .bind(parent_step_id)
            .fetch_all(&self.pools.replica)
            .await?;
        Ok(rows.iter().map(step_from_row).collect::<Result<_, _>>()?)
    }

    async fn mark_step_processing(&self, id: StepId) -> Result<()> {
        // Keeps the first start time when called again while processing.
        self.step_transition(
            id,
            StepState::Processing,
            "started_at = COALESCE(started_at, now()), response_payload = $2",
            None,
        )
        .await
    }

    async fn complete_step(&self, id: StepId, response: Value) -> Result<()> {
        self.step_transition(
            id,
            StepState::Completed,
            "response_payload = $2, completed_at = now()",
            Some(response),
        )
        .await
    }

    async fn fail_step(&self, id: StepId, error: Value) -> Result<()> {
        self.step_transition(
            id,
            StepState::Failed,
            "error = $2, failed_at = now()",
            Some(error),
        )
        .await
    }

    async fn cancel_step(&self, id: StepId) -> Result<()> {
        self.step_transition(
            id,
            StepState::Canceled,
            "canceled_at = now(), error = COALESCE(error, $2)",
            None,
        )
        .await
    }

    async fn requeue_step_for_retry(&self, id: StepId) -> Result<()> {
        self.step_transition(
            id,
            StepState::Pending,
            "retry_attempt = retry_attempt + 1, started_at = NULL, response_payload = $2",
            None,
        )
        .await
    }
}
