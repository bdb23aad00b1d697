//! `batches`: created from a file, listed, cancelled, retried, counted.

use super::SqliteStore;
use super::ending::end_batch_requests;
use super::types::{batch_hi, batch_lo, duration_us, micros, time, time_opt};
use crate::domain::batch::{
    Batch, BatchCounts, BatchError, BatchId, BatchStatus, CompletionWindow, RequestCounts,
};
use crate::domain::file::{FileId, FileKind, LineError};
use crate::domain::output::{ResultError, codes};
use crate::domain::request::RequestState;
use crate::store::guards::{batch_from, batch_word, in_flight, in_list, request_word};
use crate::store::rules::{batch_errors, check_new_batch, check_user_retry};
use crate::store::{
    BatchListQuery, BatchStore, MAX_PAGE, NewBatch, Owner, Page, Result, StoreError,
};
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection};
use std::collections::BTreeMap;

const BATCH_COLUMNS: &str = "id, owner, input_file_id, endpoint, completion_window, metadata, \
     status, errors, output_file_id, error_file_id, total, created_at, in_progress_at, \
     expires_at, finalizing_at, completed_at, failed_at, expired_at, cancelling_at, \
     cancelled_at, n_completed, n_failed, n_canceled, input_tokens, cached_tokens, \
     output_tokens, reasoning_tokens, total_tokens, n_coalesced_identical, n_coalesced_packed";

fn json<T: serde::de::DeserializeOwned>(text: Option<String>) -> Result<Option<T>> {
    text.map(|t| serde_json::from_str(&t))
        .transpose()
        .map_err(|e| StoreError::Invalid(format!("a stored JSON value is malformed: {e}")))
}

fn batch_from_row(row: &SqliteRow) -> Result<Batch> {
    Ok(Batch {
        id: row.try_get("id")?,
        owner: row.try_get("owner")?,
        input_file_id: row.try_get("input_file_id")?,
        endpoint: row.try_get("endpoint")?,
        completion_window: row.try_get("completion_window")?,
        metadata: json::<BTreeMap<String, String>>(row.try_get("metadata")?)?,
        status: row.try_get("status")?,
        errors: json::<Vec<BatchError>>(row.try_get("errors")?)?,
        output_file_id: row.try_get("output_file_id")?,
        error_file_id: row.try_get("error_file_id")?,
        created_at: time(row.try_get("created_at")?),
        in_progress_at: time_opt(row.try_get("in_progress_at")?),
        expires_at: Some(time(row.try_get("expires_at")?)),
        finalizing_at: time_opt(row.try_get("finalizing_at")?),
        completed_at: time_opt(row.try_get("completed_at")?),
        failed_at: time_opt(row.try_get("failed_at")?),
        expired_at: time_opt(row.try_get("expired_at")?),
        cancelling_at: time_opt(row.try_get("cancelling_at")?),
        cancelled_at: time_opt(row.try_get("cancelled_at")?),
        request_counts: BatchCounts {
            total: row.try_get("total")?,
            completed: row.try_get("n_completed")?,
            failed: row.try_get("n_failed")?,
            canceled: row.try_get("n_canceled")?,
        },
        usage: crate::domain::usage::Usage {
            input_tokens: row.try_get("input_tokens")?,
            cached_tokens: row.try_get("cached_tokens")?,
            output_tokens: row.try_get("output_tokens")?,
            reasoning_tokens: row.try_get("reasoning_tokens")?,
            total_tokens: row.try_get("total_tokens")?,
        },
        coalesced: crate::domain::batch::CoalescedCounts {
            identical: row.try_get("n_coalesced_identical")?,
            packed: row.try_get("n_coalesced_packed")?,
        },
    })
}

pub(super) async fn fetch_batch(
    db: &mut SqliteConnection,
    owner: Owner<'_>,
    id: BatchId,
) -> Result<Option<Batch>> {
    let row = sqlx::query(&format!(
        "SELECT {BATCH_COLUMNS} FROM batches WHERE id = ?1 AND (?2 IS NULL OR owner = ?2)"
    ))
    .bind(id)
    .bind(owner.param())
    .fetch_optional(db)
    .await?;
    row.as_ref().map(batch_from_row).transpose()
}

/// The error line of a request that ended because its batch was cancelled.
pub(super) fn cancelled_error() -> ResultError {
    ResultError::new(
        codes::BATCH_CANCELLED,
        "the batch was cancelled before this request ran",
    )
}

/// Moves one cancelling batch on, for the cancel itself and for the
/// finalizer alike: its pending requests end as cancelled and are counted,
/// and it becomes `cancelled` once nothing of it is in flight. Returns
/// whether it did.
pub(super) async fn cancel_step(tx: &mut SqliteConnection, id: BatchId, now: i64) -> Result<bool> {
    let ended = end_batch_requests(
        tx,
        id,
        &format!("state = {}", request_word(RequestState::Pending)),
        RequestState::Canceled,
        &cancelled_error(),
        now,
    )
    .await?;
    let busy: bool = sqlx::query_scalar(&format!(
        "SELECT EXISTS (SELECT 1 FROM requests WHERE id BETWEEN ?1 AND ?2 AND batch_id = ?3 \
         AND state IN ({}))",
        in_flight()
    ))
    .bind(batch_lo(id))
    .bind(batch_hi(id))
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    let done = sqlx::query(&format!(
        "UPDATE batches SET n_canceled = n_canceled + ?2, \
             status = CASE WHEN ?3 THEN status ELSE {cancelled} END, \
             cancelled_at = CASE WHEN ?3 THEN cancelled_at ELSE ?4 END \
         WHERE id = ?1 AND status IN ({cancellable}) RETURNING status",
        cancelled = batch_word(BatchStatus::Cancelled),
        cancellable = batch_from(BatchStatus::Cancelled),
    ))
    .bind(id)
    .bind(ended as i64)
    .bind(busy)
    .bind(now)
    .fetch_optional(&mut *tx)
    .await?;
    Ok(done.is_some() && !busy)
}

fn now() -> i64 {
    micros(chrono::Utc::now())
}

impl SqliteStore {
    async fn create_in(
        &self,
        tx: &mut SqliteConnection,
        new: &NewBatch<'_>,
        window: &CompletionWindow,
    ) -> Result<(Batch, bool)> {
        let owner = Owner::Only(new.owner);
        if let Some(key) = new.idempotency_key {
            let existing: Option<BatchId> = sqlx::query_scalar(
                "SELECT id FROM batches WHERE owner = ? AND idempotency_key = ?",
            )
            .bind(new.owner)
            .bind(key)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(id) = existing {
                let batch =
                    fetch_batch(tx, owner, id)
                        .await?
                        .ok_or_else(|| StoreError::NotFound {
                            what: "batch",
                            id: id.to_string(),
                        })?;
                return Ok((batch, false));
            }
        }
        let file = sqlx::query(
            "SELECT kind, template_count, error_count, errors, urls FROM files \
             WHERE id = ? AND owner = ? AND deleted_at IS NULL",
        )
        .bind(new.input_file_id)
        .bind(new.owner)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: "file",
            id: new.input_file_id.to_string(),
        })?;
        let kind: FileKind = file.try_get("kind")?;
        if kind != FileKind::Input {
            return Err(StoreError::Invalid(format!(
                "file {} is a batch {kind} file, not an input file",
                new.input_file_id
            )));
        }
        let total: i64 = file.try_get("template_count")?;
        let error_count: i64 = file.try_get("error_count")?;
        let file_errors: Vec<LineError> = json(file.try_get("errors")?)?.unwrap_or_default();
        let urls: Vec<String> = json(file.try_get("urls")?)?.unwrap_or_default();
        let keep = self.limits.max_kept_errors;
        let (mut wrong, mut wrong_total) = (Vec::new(), 0);
        if urls.iter().any(|u| u != new.endpoint) {
            wrong_total = sqlx::query_scalar(
                "SELECT count(*) FROM request_templates WHERE file_id = ? AND path <> ?",
            )
            .bind(new.input_file_id)
            .bind(new.endpoint)
            .fetch_one(&mut *tx)
            .await?;
            let rows = sqlx::query(
                "SELECT line_number, path FROM request_templates \
                 WHERE file_id = ? AND path <> ? ORDER BY line_number LIMIT ?",
            )
            .bind(new.input_file_id)
            .bind(new.endpoint)
            .bind(keep as i64)
            .fetch_all(&mut *tx)
            .await?;
            for r in &rows {
                wrong.push((r.try_get("line_number")?, r.try_get("path")?));
            }
        }
        let errors = batch_errors(
            new.endpoint,
            file_errors,
            error_count,
            wrong,
            wrong_total,
            keep,
        );

        let id = BatchId::new();
        let now = now();
        let expires = now.saturating_add(duration_us(window.duration()));
        let metadata = new
            .metadata
            .as_ref()
            .map(|m| serde_json::to_string(m).expect("metadata serializes"));
        let runnable = errors.is_empty();
        if !runnable {
            sqlx::query(
                "INSERT INTO batches (id, owner, input_file_id, endpoint, completion_window, \
                 metadata, status, errors, total, idempotency_key, created_at, expires_at, \
                 failed_at, private) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'failed', ?7, 0, ?8, ?9, ?10, ?9, ?11)",
            )
            .bind(id)
            .bind(new.owner)
            .bind(new.input_file_id)
            .bind(new.endpoint)
            .bind(new.completion_window)
            .bind(metadata)
            .bind(serde_json::to_string(&errors).expect("errors serialize"))
            .bind(new.idempotency_key)
            .bind(now)
            .bind(expires)
            .bind(new.private)
            .execute(&mut *tx)
            .await?;
        } else {
            let output_id = FileId::new();
            let error_id = FileId::new();
            sqlx::query(
                "INSERT INTO batches (id, owner, input_file_id, endpoint, completion_window, \
                 metadata, status, total, idempotency_key, created_at, in_progress_at, \
                 expires_at, private) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'in_progress', ?7, ?8, ?9, ?9, ?10, ?11)",
            )
            .bind(id)
            .bind(new.owner)
            .bind(new.input_file_id)
            .bind(new.endpoint)
            .bind(new.completion_window)
            .bind(metadata)
            .bind(total)
            .bind(new.idempotency_key)
            .bind(now)
            .bind(expires)
            .bind(new.private)
            .execute(&mut *tx)
            .await?;
            let name = id.0.simple().to_string();
            sqlx::query(
                "INSERT INTO files (id, owner, filename, purpose, kind, batch_id, created_at) \
                 VALUES (?1, ?3, ?4, 'batch_output', 'output', ?6, ?7), \
                        (?2, ?3, ?5, 'batch_output', 'error', ?6, ?7)",
            )
            .bind(output_id)
            .bind(error_id)
            .bind(new.owner)
            .bind(format!("batch_{name}_output.jsonl"))
            .bind(format!("batch_{name}_error.jsonl"))
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE batches SET output_file_id = ?2, error_file_id = ?3 WHERE id = ?1")
                .bind(id)
                .bind(output_id)
                .bind(error_id)
                .execute(&mut *tx)
                .await?;
            // A request's id is its batch's id with the line number in the
            // low six bytes (domain::ids), so a batch is one key range.
            sqlx::query(
                "INSERT INTO requests (id, batch_id, template_id, model, custom_id, not_before, \
                                       deadline, created_at, private, prefix_key, owner) \
                 SELECT unhex(substr(hex(?1), 1, 20) || printf('%012X', t.line_number)), \
                        ?1, t.id, t.model, t.custom_id, ?3, ?4, ?3, ?5, t.prefix_key, ?6 \
                 FROM request_templates t WHERE t.file_id = ?2 ORDER BY t.line_number",
            )
            .bind(id)
            .bind(new.input_file_id)
            .bind(now)
            .bind(expires)
            .bind(new.private)
            .bind(new.owner)
            .execute(&mut *tx)
            .await?;
        }
        let batch = fetch_batch(tx, owner, id)
            .await?
            .expect("the batch was just inserted");
        Ok((batch, runnable && total > 0))
    }
}

impl BatchStore for SqliteStore {
    async fn create_batch(&self, new: NewBatch<'_>) -> Result<Batch> {
        let window = check_new_batch(&self.limits, &new)?;
        let mut tx = self.write().await?;
        let (batch, work) = self.create_in(&mut tx, &new, &window).await?;
        tx.commit().await?;
        if work {
            self.ring();
        }
        Ok(batch)
    }

    async fn get_batch(&self, owner: Owner<'_>, id: BatchId) -> Result<Option<Batch>> {
        let mut conn = self.reader.acquire().await?;
        fetch_batch(&mut conn, owner, id).await
    }

    async fn find_batch_by_key(&self, owner: &str, key: &str) -> Result<Option<Batch>> {
        let row = sqlx::query(&format!(
            "SELECT {BATCH_COLUMNS} FROM batches WHERE owner = ? AND idempotency_key = ?"
        ))
        .bind(owner)
        .bind(key)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(batch_from_row).transpose()
    }

    async fn list_batches(&self, q: BatchListQuery<'_>) -> Result<Page<Batch>> {
        let limit = q.limit.clamp(1, MAX_PAGE);
        let rows = sqlx::query(&format!(
            "SELECT {BATCH_COLUMNS} FROM batches \
             WHERE (?1 IS NULL OR owner = ?1) AND (?2 IS NULL OR status = ?2) \
               AND (?3 IS NULL OR (created_at, id) < \
                    (SELECT created_at, id FROM batches x WHERE x.id = ?3 \
                       AND (?1 IS NULL OR x.owner = ?1))) \
             ORDER BY created_at DESC, id DESC LIMIT ?4"
        ))
        .bind(q.owner.param())
        .bind(q.status)
        .bind(q.after)
        .bind(limit + 1)
        .fetch_all(&self.reader)
        .await?;
        Page::from_rows(&rows, limit, batch_from_row)
    }

    async fn cancel_batch(&self, owner: Owner<'_>, id: BatchId) -> Result<Batch> {
        let not_found = || StoreError::NotFound {
            what: "batch",
            id: id.to_string(),
        };
        let mut tx = self.write().await?;
        let status: Option<BatchStatus> = sqlx::query_scalar(
            "SELECT status FROM batches WHERE id = ?1 AND (?2 IS NULL OR owner = ?2)",
        )
        .bind(id)
        .bind(owner.param())
        .fetch_optional(&mut *tx)
        .await?;
        let status = status.ok_or_else(not_found)?;
        if status == BatchStatus::Cancelling {
            // Asking twice is not an error; the first request is in progress.
            let batch = fetch_batch(&mut tx, owner, id)
                .await?
                .ok_or_else(not_found)?;
            tx.rollback().await?;
            return Ok(batch);
        }
        status.check(BatchStatus::Cancelling)?;
        let now = now();
        sqlx::query(&format!(
            "UPDATE batches SET status = {}, cancelling_at = ?2 WHERE id = ?1 AND status IN ({})",
            batch_word(BatchStatus::Cancelling),
            batch_from(BatchStatus::Cancelling)
        ))
        .bind(id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        // Pending requests end now; in-flight ones are stopped by their
        // daemon, and the finalizer ends the cancel with the same step.
        cancel_step(&mut tx, id, now).await?;
        let batch = fetch_batch(&mut tx, owner, id)
            .await?
            .ok_or_else(not_found)?;
        tx.commit().await?;
        Ok(batch)
    }

    async fn request_counts(&self, id: BatchId) -> Result<RequestCounts> {
        let rows: Vec<(RequestState, i64)> = sqlx::query_as(
            "SELECT state, count(*) FROM requests \
             WHERE id BETWEEN ?1 AND ?2 AND batch_id = ?3 GROUP BY state \
             UNION ALL \
             SELECT state, count(*) FROM request_results \
             WHERE request_id BETWEEN ?1 AND ?2 AND batch_id = ?3 GROUP BY state",
        )
        .bind(batch_lo(id))
        .bind(batch_hi(id))
        .bind(id)
        .fetch_all(&self.reader)
        .await?;
        let mut c = RequestCounts::default();
        for (state, n) in rows {
            c.total += n;
            match state {
                RequestState::Pending => c.pending += n,
                RequestState::Claimed | RequestState::Processing => c.in_progress += n,
                RequestState::Completed => c.completed += n,
                RequestState::Failed => c.failed += n,
                RequestState::Canceled => c.canceled += n,
            }
        }
        Ok(c)
    }

    async fn retry_failed(&self, owner: Owner<'_>, id: BatchId) -> Result<(Batch, u64)> {
        let not_found = || StoreError::NotFound {
            what: "batch",
            id: id.to_string(),
        };
        let mut tx = self.write().await?;
        let row = sqlx::query(
            "SELECT status, completion_window FROM batches \
             WHERE id = ?1 AND (?2 IS NULL OR owner = ?2)",
        )
        .bind(id)
        .bind(owner.param())
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(not_found)?;
        let status: BatchStatus = row.try_get("status")?;
        check_user_retry(status)?;
        let window: String = row.try_get("completion_window")?;
        let window =
            CompletionWindow::parse(&window).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let now = now();
        let deadline = now.saturating_add(duration_us(window.duration()));
        // Only failed requests move (RequestState::can_be_retried_by_user),
        // and their results go with them.
        let failed = |x: &str| {
            format!(
                "{x}request_id BETWEEN ?1 AND ?2 AND {x}batch_id = ?3 AND NOT {x}ok \
                 AND {x}state = {}",
                request_word(RequestState::Failed)
            )
        };
        let retried = sqlx::query(&format!(
            "INSERT INTO requests (id, batch_id, template_id, model, custom_id, state, attempt, \
                                   retries, not_before, deadline, created_at, private, prefix_key, \
                                   owner) \
             SELECT x.request_id, ?3, x.template_id, x.model, x.custom_id, {pending}, x.attempt, \
                    0, ?4, ?5, x.created_at, (SELECT private FROM batches WHERE id = ?3), \
                    COALESCE(t.prefix_key, 0), (SELECT owner FROM batches WHERE id = ?3) \
             FROM request_results x LEFT JOIN request_templates t ON t.id = x.template_id \
             WHERE {failed}",
            pending = request_word(RequestState::Pending),
            failed = failed("x."),
        ))
        .bind(batch_lo(id))
        .bind(batch_hi(id))
        .bind(id)
        .bind(now)
        .bind(deadline)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if retried > 0 {
            sqlx::query(&format!("DELETE FROM request_results WHERE {}", failed("")))
                .bind(batch_lo(id))
                .bind(batch_hi(id))
                .bind(id)
                .execute(&mut *tx)
                .await?;
            sqlx::query(&format!(
                "UPDATE batches SET n_failed = n_failed - ?2, status = {in_progress}, \
                 in_progress_at = COALESCE(in_progress_at, ?3), expires_at = ?4, \
                 finalizing_at = NULL, completed_at = NULL, expired_at = NULL \
                 WHERE id = ?1 AND status IN ({reopenable})",
                in_progress = batch_word(BatchStatus::InProgress),
                reopenable = in_list(BatchStatus::reopenable()),
            ))
            .bind(id)
            .bind(retried as i64)
            .bind(now)
            .bind(deadline)
            .execute(&mut *tx)
            .await?;
        }
        let batch = fetch_batch(&mut tx, owner, id)
            .await?
            .ok_or_else(not_found)?;
        tx.commit().await?;
        if retried > 0 {
            self.ring();
        }
        Ok((batch, retried))
    }
}
