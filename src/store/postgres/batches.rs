//! `batches`: created from a file with set-based SQL, listed, cancelled, counted.

use super::PostgresStore;
use super::maintenance::{cancel_step, cancelled_error};
use crate::domain::batch::{
    Batch, BatchCounts, BatchError, BatchId, BatchStatus, CompletionWindow, RequestCounts,
};
use crate::domain::file::{FileId, FileKind, LineError};
use crate::domain::request::RequestState;
use crate::store::guards::batch_word;
use crate::store::rules::check_user_retry;
use crate::store::{
    BatchListQuery, BatchStore, MAX_PAGE, NewBatch, Owner, Page, Result, StoreError, UniqueKey,
};
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::{PgExecutor, Row};
use std::collections::BTreeMap;

const BATCH_COLUMNS: &str = "b.id, b.owner, b.input_file_id, b.endpoint, b.completion_window, \
     b.metadata, b.status, b.errors, b.output_file_id, b.error_file_id, b.total, b.created_at, \
     b.in_progress_at, b.expires_at, b.finalizing_at, b.completed_at, b.failed_at, b.expired_at, \
     b.cancelling_at, b.cancelled_at, b.n_completed, b.n_failed, b.n_canceled, b.input_tokens, b.cached_tokens, b.output_tokens, \
     b.reasoning_tokens, b.total_tokens, b.n_coalesced_identical, b.n_coalesced_packed";

pub(super) fn batch_from_row(row: &PgRow) -> Result<Batch> {
    let metadata: Option<Json<BTreeMap<String, String>>> = row.try_get("metadata")?;
    let errors: Option<Json<Vec<BatchError>>> = row.try_get("errors")?;
    Ok(Batch {
        id: row.try_get("id")?,
        owner: row.try_get("owner")?,
        input_file_id: row.try_get("input_file_id")?,
        endpoint: row.try_get("endpoint")?,
        completion_window: row.try_get("completion_window")?,
        metadata: metadata.map(|m| m.0),
        status: row.try_get("status")?,
        errors: errors.map(|e| e.0),
        output_file_id: row.try_get("output_file_id")?,
        error_file_id: row.try_get("error_file_id")?,
        created_at: row.try_get("created_at")?,
        in_progress_at: row.try_get("in_progress_at")?,
        expires_at: row.try_get("expires_at")?,
        finalizing_at: row.try_get("finalizing_at")?,
        completed_at: row.try_get("completed_at")?,
        failed_at: row.try_get("failed_at")?,
        expired_at: row.try_get("expired_at")?,
        cancelling_at: row.try_get("cancelling_at")?,
        cancelled_at: row.try_get("cancelled_at")?,
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

async fn fetch_batch<'e>(
    db: impl PgExecutor<'e>,
    owner: Owner<'_>,
    id: BatchId,
) -> Result<Option<Batch>> {
    let row = sqlx::query(&format!(
        "SELECT {BATCH_COLUMNS} FROM batches b \
         WHERE b.id = $1 AND ($2::text IS NULL OR b.owner = $2)"
    ))
    .bind(id)
    .bind(owner.param())
    .fetch_optional(db)
    .await?;
    row.as_ref().map(batch_from_row).transpose()
}

impl PostgresStore {
    /// Why the file cannot run against `endpoint` (see `rules::batch_errors`).
    async fn batch_validation_errors(
        &self,
        tx: &mut sqlx::PgConnection,
        file_id: FileId,
        endpoint: &str,
        file_errors: Vec<LineError>,
        error_count: i64,
        urls: Vec<String>,
    ) -> Result<Vec<BatchError>> {
        let keep = self.limits.max_kept_errors;
        let (mut wrong, mut wrong_total) = (Vec::new(), 0);
        // Only when the file's distinct urls say so, find the lines at fault.
        if urls.iter().any(|u| u != endpoint) {
            let rows = sqlx::query(
                "SELECT count(*) OVER () AS total, line_number, path FROM request_templates \
                 WHERE file_id = $1 AND path <> $2 ORDER BY line_number LIMIT GREATEST($3, 1)",
            )
            .bind(file_id)
            .bind(endpoint)
            .bind(keep as i64)
            .fetch_all(&mut *tx)
            .await?;
            if let Some(first) = rows.first() {
                wrong_total = first.try_get::<i64, _>("total")?;
            }
            for r in &rows {
                wrong.push((r.try_get("line_number")?, r.try_get("path")?));
            }
        }
        Ok(super::rules::batch_errors(
            endpoint,
            file_errors,
            error_count,
            wrong,
            wrong_total,
            keep,
        ))
    }
}

impl PostgresStore {
    /// The checks of a new batch that need no database.
    fn check_new_batch(&self, new: &NewBatch<'_>) -> Result<CompletionWindow> {
        super::rules::check_new_batch(&self.limits, new)
    }

    /// The long way of [`BatchStore::create_batch`]: a repeated idempotency
    /// key, a missing or refused file, or lines to report in a failed batch.
    async fn create_batch_checked(
        &self,
        new: &NewBatch<'_>,
        id: BatchId,
        window: &CompletionWindow,
    ) -> Result<Batch> {
        let owner = Owner::Only(new.owner);
        let mut tx = self.pools.primary.begin().await?;
        if let Some(key) = new.idempotency_key {
            let existing: Option<BatchId> = sqlx::query_scalar(
                "SELECT id FROM batches WHERE owner = $1 AND idempotency_key = $2",
            )
            .bind(new.owner)
            .bind(key)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(id) = existing {
                return fetch_batch(&mut *tx, owner, id).await?.ok_or_else(|| {
                    StoreError::NotFound {
                        what: "batch",
                        id: id.to_string(),
                    }
                });
            }
        }
        // FOR SHARE keeps the file from being deleted while the batch is made.
        let file = sqlx::query(
            "SELECT kind, template_count, error_count, errors, urls FROM files \
             WHERE id = $1 AND owner = $2 AND deleted_at IS NULL FOR SHARE",
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
        let file_errors: Json<Vec<LineError>> = file.try_get("errors")?;
        let urls: Vec<String> = file.try_get("urls")?;
        let errors = self
            .batch_validation_errors(
                &mut tx,
                new.input_file_id,
                new.endpoint,
                file_errors.0,
                error_count,
                urls,
            )
            .await?;

        let metadata = new.metadata.as_ref().map(Json);
        if !errors.is_empty() {
            sqlx::query(
                "INSERT INTO batches (id, owner, input_file_id, endpoint, completion_window, \
                 metadata, status, errors, total, idempotency_key, expires_at, failed_at, private) \
                 VALUES ($1, $2, $3, $4, $5, $6, 'failed', $7, 0, $8, now() + $9, now(), $10)",
            )
            .bind(id)
            .bind(new.owner)
            .bind(new.input_file_id)
            .bind(new.endpoint)
            .bind(new.completion_window)
            .bind(metadata)
            .bind(Json(&errors))
            .bind(new.idempotency_key)
            .bind(window.duration())
            .bind(new.private)
            .execute(&mut *tx)
            .await?;
        } else {
            let output_id = FileId::new();
            let error_id = FileId::new();
            sqlx::query(
                "INSERT INTO batches (id, owner, input_file_id, endpoint, completion_window, \
                 metadata, status, total, idempotency_key, in_progress_at, expires_at, private) \
                 VALUES ($1, $2, $3, $4, $5, $6, 'in_progress', $7, $8, now(), now() + $9, $10)",
            )
            .bind(id)
            .bind(new.owner)
            .bind(new.input_file_id)
            .bind(new.endpoint)
            .bind(new.completion_window)
            .bind(metadata)
            .bind(total)
            .bind(new.idempotency_key)
            .bind(window.duration())
            .bind(new.private)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO files (id, owner, filename, purpose, kind, batch_id) VALUES \
                 ($1, $3, 'batch_' || replace($4::text, '-', '') || '_output.jsonl', 'batch_output', 'output', $4), \
                 ($2, $3, 'batch_' || replace($4::text, '-', '') || '_error.jsonl', 'batch_output', 'error', $4)",
            )
            .bind(output_id)
            .bind(error_id)
            .bind(new.owner)
            .bind(id)
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE batches SET output_file_id = $2, error_file_id = $3 WHERE id = $1")
                .bind(id)
                .bind(output_id)
                .bind(error_id)
                .execute(&mut *tx)
                .await?;
            // Request ids are the batch id with the line number in its low
            // bits (domain::ids): in line order, so the primary key index
            // grows at its right edge only.
            sqlx::query(
                "INSERT INTO requests (id, batch_id, template_id, model, custom_id, deadline, \
                                       private, prefix_key, owner) \
                 SELECT fusillade_request_id($1, t.line_number), \
                        $1, t.id, t.model, t.custom_id, b.expires_at, b.private, t.prefix_key, \
                        b.owner \
                 FROM request_templates t, batches b \
                 WHERE t.file_id = $2 AND b.id = $1",
            )
            .bind(id)
            .bind(new.input_file_id)
            .execute(&mut *tx)
            .await?;
        }
        let batch = fetch_batch(&mut *tx, owner, id)
            .await?
            .expect("the batch was just inserted");
        tx.commit().await?;
        if errors.is_empty() {
            self.bell.ring(&self.pools.primary);
        }
        Ok(batch)
    }
}

impl BatchStore for PostgresStore {
    async fn create_batch(&self, new: NewBatch<'_>) -> Result<Batch> {
        let window = self.check_new_batch(&new)?;
        let mut tries = 0;
        loop {
            let id = BatchId::new();
            let made = match self.creates.create(&new, id, window.duration()).await {
                Ok(Some(batch)) => {
                    self.bell.ring(&self.pools.primary);
                    Ok(batch)
                }
                Ok(None) => self.create_batch_checked(&new, id, &window).await,
                Err(e) => Err(e),
            };
            match made {
                // Another process made the same batch id in the same
                // millisecond (one chance in 2^26, see domain::ids); its
                // request ids would have been ours. Fresh bits fix it.
                Err(StoreError::Duplicate {
                    key: UniqueKey::BatchId | UniqueKey::RequestId,
                    ..
                }) if tries < 5 => {
                    tries += 1;
                }
                // A concurrent create with the same key won the race: answer
                // with its batch, as a repeat would get.
                Err(StoreError::Duplicate {
                    key: UniqueKey::IdempotencyKey,
                    ..
                }) => {
                    let key = new.idempotency_key.unwrap_or_default();
                    return self
                        .find_batch_by_key(new.owner, key)
                        .await?
                        .ok_or_else(|| StoreError::NotFound {
                            what: "batch",
                            id: key.to_owned(),
                        });
                }
                other => return other,
            }
        }
    }

    async fn get_batch(&self, owner: Owner<'_>, id: BatchId) -> Result<Option<Batch>> {
        // Polled by clients in loops: on the pool that keeps its plans.
        fetch_batch(&self.points, owner, id).await
    }

    async fn find_batch_by_key(&self, owner: &str, key: &str) -> Result<Option<Batch>> {
        let id: Option<BatchId> =
            sqlx::query_scalar("SELECT id FROM batches WHERE owner = $1 AND idempotency_key = $2")
                .bind(owner)
                .bind(key)
                .fetch_optional(&self.pools.primary)
                .await?;
        match id {
            Some(id) => fetch_batch(&self.pools.primary, Owner::Only(owner), id).await,
            None => Ok(None),
        }
    }

    async fn list_batches(&self, q: BatchListQuery<'_>) -> Result<Page<Batch>> {
        let limit = q.limit.clamp(1, MAX_PAGE);
        let rows = sqlx::query(&format!(
            "SELECT {BATCH_COLUMNS} FROM ( \
                 SELECT * FROM batches \
                 WHERE ($1::text IS NULL OR owner = $1) AND ($2::text IS NULL OR status = $2) \
                   AND ($3::uuid IS NULL OR (created_at, id) < \
                        (SELECT created_at, id FROM batches x WHERE x.id = $3 \
                           AND ($1::text IS NULL OR x.owner = $1))) \
                 ORDER BY created_at DESC, id DESC LIMIT $4) b \
             ORDER BY b.created_at DESC, b.id DESC"
        ))
        .bind(q.owner.param())
        .bind(q.status)
        .bind(q.after)
        .bind(limit + 1)
        .fetch_all(&self.pools.replica)
        .await?;
        Page::from_rows(&rows, limit, batch_from_row)
    }

    async fn cancel_batch(&self, owner: Owner<'_>, id: BatchId) -> Result<Batch> {
        let mut tx = self.pools.primary.begin().await?;
        let status: Option<BatchStatus> = sqlx::query_scalar(
            "SELECT status FROM batches WHERE id = $1 AND ($2::text IS NULL OR owner = $2) \
             FOR UPDATE",
        )
        .bind(id)
        .bind(owner.param())
        .fetch_optional(&mut *tx)
        .await?;
        let status = status.ok_or_else(|| StoreError::NotFound {
            what: "batch",
            id: id.to_string(),
        })?;
        if status == BatchStatus::Cancelling {
            // Asking twice is not an error; the first request is in progress.
            tx.rollback().await?;
            return fetch_batch(&self.pools.primary, owner, id)
                .await?
                .ok_or_else(|| StoreError::NotFound {
                    what: "batch",
                    id: id.to_string(),
                });
        }
        status.check(BatchStatus::Cancelling)?;
        sqlx::query(
            "UPDATE batches SET status = $3, cancelling_at = now() \
             WHERE id = $1 AND status = ANY($2)",
        )
        .bind(id)
        .bind(BatchStatus::sources_of(BatchStatus::Cancelling))
        .bind(BatchStatus::Cancelling)
        .execute(&mut *tx)
        .await?;
        // Pending requests end now; in-flight ones are stopped by their
        // daemon, and the finalizer ends the cancel with the same statement.
        sqlx::query(&cancel_step(&format!(
            "SELECT id FROM batches WHERE id = $1 AND status = {}",
            batch_word(BatchStatus::Cancelling)
        )))
        .bind(id)
        .bind(cancelled_error())
        .execute(&mut *tx)
        .await?;
        let batch = fetch_batch(&mut *tx, owner, id)
            .await?
            .expect("the batch is locked by this transaction");
        tx.commit().await?;
        Ok(batch)
    }

    async fn retry_failed(&self, owner: Owner<'_>, id: BatchId) -> Result<(Batch, u64)> {
        let not_found = || StoreError::NotFound {
            what: "batch",
            id: id.to_string(),
        };
        let mut tx = self.pools.primary.begin().await?;
        // The row lock orders this against cancel; the finalizer never
        // touches batches in the statuses that may be reopened.
        let row = sqlx::query(
            "SELECT status, completion_window FROM batches \
             WHERE id = $1 AND ($2::text IS NULL OR owner = $2) FOR UPDATE",
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
        // Guarded by `state = 'failed'`: only failed requests move (see
        // RequestState::can_be_retried_by_user), and their results go with them.
        let retried: i64 = sqlx::query_scalar(
            "WITH r AS ( \
                 DELETE FROM request_results x \
                 WHERE x.request_id BETWEEN fusillade_batch_lo($1) AND fusillade_batch_hi($1) \
                   AND NOT x.ok AND x.batch_id = $1 AND x.state = 'failed' \
                 RETURNING x.request_id, x.template_id, x.model, x.custom_id, x.attempt, \
                           x.created_at), \
             q AS ( \
                 INSERT INTO requests (id, batch_id, template_id, model, custom_id, state, \
                                       attempt, retries, not_before, deadline, created_at, \
                                       private, prefix_key, owner) \
                 SELECT r.request_id, $1, r.template_id, r.model, r.custom_id, 'pending', \
                        r.attempt, 0, now(), now() + $2, r.created_at, \
                        (SELECT private FROM batches WHERE id = $1), \
                        COALESCE(t.prefix_key, 0), \
                        (SELECT owner FROM batches WHERE id = $1) \
                 FROM r LEFT JOIN request_templates t ON t.id = r.template_id), \
             n AS (SELECT count(*) AS n FROM r), \
             t AS (UPDATE batches SET n_failed = n_failed - (SELECT n FROM n) WHERE id = $1) \
             SELECT n FROM n",
        )
        .bind(id)
        .bind(window.duration())
        .fetch_one(&mut *tx)
        .await?;
        if retried > 0 {
            sqlx::query(
                "UPDATE batches SET status = 'in_progress', expires_at = now() + $2, \
                 finalizing_at = NULL, completed_at = NULL, expired_at = NULL \
                 WHERE id = $1 AND status = ANY($3)",
            )
            .bind(id)
            .bind(window.duration())
            .bind(BatchStatus::reopenable())
            .execute(&mut *tx)
            .await?;
        }
        let batch = fetch_batch(&mut *tx, owner, id)
            .await?
            .ok_or_else(not_found)?;
        tx.commit().await?;
        if retried > 0 {
            self.bell.ring(&self.pools.primary);
        }
        Ok((batch, retried as u64))
    }

    async fn request_counts(&self, id: BatchId) -> Result<RequestCounts> {
        let rows: Vec<(RequestState, i64)> = sqlx::query_as(
            "SELECT state, count(*) FROM requests \
             WHERE id BETWEEN fusillade_batch_lo($1) AND fusillade_batch_hi($1) AND batch_id = $1 \
             GROUP BY state \
             UNION ALL \
             SELECT state, count(*) FROM request_results \
             WHERE request_id BETWEEN fusillade_batch_lo($1) AND fusillade_batch_hi($1) \
               AND batch_id = $1 \
             GROUP BY state",
        )
        .bind(id)
        .fetch_all(&self.pools.replica)
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
}
