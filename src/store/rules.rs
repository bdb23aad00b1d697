//! Rules that are not storage, shared by every backend: what a new batch
//! must satisfy before the database is asked, how a file's refused lines
//! become a failed batch's errors, which batches a user may retry, and how
//! a guarded state change that touched no row becomes an error.

use super::{NewBatch, Result, StoreError};
use crate::domain::IllegalTransition;
use crate::domain::batch::{BatchError, BatchStatus, CompletionWindow, check_metadata};
use crate::domain::daemon::DaemonStatus;
use crate::domain::file::{IngestLimits, LineError};
use crate::domain::ids::{DaemonId, StepId};
use crate::domain::step::StepState;

/// The checks of a new batch that need no database.
pub(super) fn check_new_batch(
    limits: &IngestLimits,
    new: &NewBatch<'_>,
) -> Result<CompletionWindow> {
    let window = CompletionWindow::parse(new.completion_window)
        .map_err(|e| StoreError::Invalid(e.to_string()))?;
    if let Some(m) = &new.metadata {
        check_metadata(m).map_err(|e| StoreError::Invalid(e.to_string()))?;
    }
    if !limits.endpoints.iter().any(|e| e == new.endpoint) {
        return Err(StoreError::Invalid(format!(
            "endpoint {:?} is not supported; use one of: {}",
            new.endpoint,
            limits.endpoints.join(", ")
        )));
    }
    Ok(window)
}

/// A refused line as a batch error.
pub(super) fn line_error_to_batch(e: LineError) -> BatchError {
    BatchError {
        code: e.code.to_string(),
        message: e.message,
        param: None,
        line: e.line.map(|l| l as i64),
    }
}

/// Why a file cannot run against `endpoint`: its refused lines (`file_errors`
/// kept of `error_count`), then its lines for another endpoint (`wrong`, the
/// first of `wrong_total`, as line and url), the first `keep` in line
/// order, and a note of how many more there were. Empty when it can run.
pub(super) fn batch_errors(
    endpoint: &str,
    file_errors: Vec<LineError>,
    error_count: i64,
    wrong: Vec<(i64, String)>,
    wrong_total: i64,
    keep: usize,
) -> Vec<BatchError> {
    let mut errors: Vec<BatchError> = file_errors.into_iter().map(line_error_to_batch).collect();
    let total = error_count + wrong_total;
    if !wrong.is_empty() {
        for (line, path) in wrong.into_iter().take(keep) {
            errors.push(BatchError {
                code: "invalid_url".into(),
                message: format!("url {path:?} does not match the batch's endpoint {endpoint:?}"),
                param: Some("url".into()),
                line: Some(line),
            });
        }
        errors.sort_by_key(|e| e.line);
        errors.truncate(keep);
    }
    if total as usize > errors.len() && !errors.is_empty() {
        errors.push(BatchError {
            code: "too_many_errors".into(),
            message: format!(
                "{total} lines were refused; only the first {} are listed",
                errors.len()
            ),
            param: None,
            line: None,
        });
    }
    errors
}

/// A user's retry of a batch in `status`: a conflict unless the status
/// reopens on a retry (see [`BatchStatus::reopens_on_user_retry`]).
pub(super) fn check_user_retry(status: BatchStatus) -> Result<()> {
    if status.reopens_on_user_retry() {
        return Ok(());
    }
    Err(StoreError::Conflict(IllegalTransition {
        kind: "batch",
        from: status.as_str(),
        to: BatchStatus::InProgress.as_str(),
    }))
}

/// Why a guarded change of daemon `id` to `to` touched no row: there is no
/// such daemon (`found` is `None`), or its status may not become `to`.
pub(super) fn daemon_refused(
    id: DaemonId,
    found: Option<DaemonStatus>,
    to: DaemonStatus,
) -> StoreError {
    refused(
        "daemon",
        "daemon",
        id,
        found.map(DaemonStatus::as_str),
        to.as_str(),
    )
}

/// Why a guarded change of step `id` to `to` touched no row: there is no
/// such step (`found` is `None`), or its state may not become `to`.
pub(super) fn step_refused(id: StepId, found: Option<StepState>, to: StepState) -> StoreError {
    refused(
        "response step",
        "step",
        id,
        found.map(StepState::as_str),
        to.as_str(),
    )
}

/// Not found when nothing was `found`, else a conflict from it to `to`.
fn refused(
    what: &'static str,
    kind: &'static str,
    id: impl std::fmt::Display,
    found: Option<&'static str>,
    to: &'static str,
) -> StoreError {
    match found {
        None => StoreError::NotFound {
            what,
            id: id.to_string(),
        },
        Some(from) => StoreError::Conflict(IllegalTransition { kind, from, to }),
    }
}
