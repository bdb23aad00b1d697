//! `/v1/batches`: create, get, list, cancel, and two extensions:
//! `GET /v1/batches/{id}/requests` (each request's state, paginated) and
//! `POST /v1/batches/{id}/retry` (run a finished batch's failed requests
//! again).
//!
//! Creation never answers 5xx once the batch exists: the SDKs retry 5xx, and
//! a retry would create a second batch. The store creates it in one
//! transaction that also reads it back, and everything after is infallible
//! (only the optional output expiry is written afterwards, and a failure
//! there is logged, not answered). An `Idempotency-Key` header makes a
//! repeated create return the first batch.

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::wire::{
    BatchObject, CreateBatchBody, ListObject, RequestObject, RetryObject, parse_batch_id,
    parse_file_id, parse_request_id,
};
use super::{ApiBackend, ApiBody, ApiPath, ApiQuery, ApiState, page_limit, parse_json};
use crate::domain::batch::{BatchId, BatchStatus, CompletionWindow, check_metadata};
use crate::domain::file::FileKind;
use crate::domain::request::RequestState;
use crate::store::{BatchListQuery, NewBatch, Owner, StoreError, UniqueKey};
use axum::Json;
use axum::extract::{Extension, State};
use axum::http::HeaderMap;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use chrono::Duration;
use serde::Deserialize;

/// The default page of `GET /v1/batches`, as OpenAI's.
pub const DEFAULT_BATCH_PAGE: i64 = 20;
/// The largest page of `GET /v1/batches`, as OpenAI's.
pub const MAX_BATCH_PAGE: i64 = 100;
/// The default page of `GET /v1/batches/{id}/requests`.
pub const DEFAULT_REQUEST_PAGE: i64 = 100;
/// The largest page of `GET /v1/batches/{id}/requests`.
pub const MAX_REQUEST_PAGE: i64 = 1000;
/// The longest `Idempotency-Key` accepted.
const MAX_IDEMPOTENCY_KEY: usize = 255;

fn not_found(id: &str) -> ApiError {
    ApiError::not_found("batch", id)
}

fn batch_id(id: &str) -> ApiResult<BatchId> {
    parse_batch_id(id).ok_or_else(|| not_found(id))
}

/// The caller's batch, or 404.
async fn own_batch<S: ApiBackend>(
    state: &ApiState<S>,
    caller: &Caller,
    id: &str,
) -> ApiResult<crate::domain::batch::Batch> {
    let batch_id = batch_id(id)?;
    state
        .store()
        .get_batch(Owner::Only(&caller.owner), batch_id)
        .await?
        .ok_or_else(|| not_found(id))
}

/// `POST /v1/batches`.
pub async fn create<S: ApiBackend>(
    State(state): State<ApiState<S>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    ApiBody(body): ApiBody,
) -> ApiResult<Json<BatchObject>> {
    let req: CreateBatchBody = parse_json(&body)?;
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .map(str::trim)
                .filter(|k| !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY)
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "The Idempotency-Key header must be 1 to {MAX_IDEMPOTENCY_KEY} visible \
                         ASCII characters"
                    ))
                    .with_param("Idempotency-Key")
                })?,
        ),
    };
    // Checked here as well as in the store, to name the parameter at fault.
    CompletionWindow::parse(&req.completion_window)
        .map_err(|e| ApiError::invalid_param("completion_window", e.to_string()))?;
    if let Some(m) = &req.metadata {
        check_metadata(m).map_err(|e| ApiError::invalid_param("metadata", e.to_string()))?;
    }
    let endpoints = &state.api_settings().endpoints;
    if !endpoints.contains(&req.endpoint) {
        return Err(ApiError::invalid_param(
            "endpoint",
            format!(
                "endpoint {:?} is not supported; use one of: {}",
                req.endpoint,
                endpoints.join(", ")
            ),
        ));
    }
    let output_expiry = match &req.output_expires_after {
        None => None,
        Some(e) if e.anchor == "created_at" && (3600..=2_592_000).contains(&e.seconds) => {
            Some(Duration::seconds(e.seconds))
        }
        Some(_) => {
            return Err(ApiError::invalid_param(
                "output_expires_after",
                "output_expires_after must be {\"anchor\": \"created_at\", \"seconds\": N} \
                 with N from 3600 to 2592000",
            ));
        }
    };
    let file_not_found =
        || ApiError::not_found("file", &req.input_file_id).with_param("input_file_id");
    let input_file_id = parse_file_id(&req.input_file_id).ok_or_else(file_not_found)?;
    let owner = Owner::Only(&caller.owner);
    let store = state.store();
    let new = NewBatch {
        owner: &caller.owner,
        input_file_id,
        endpoint: &req.endpoint,
        completion_window: &req.completion_window,
        metadata: req.metadata.clone(),
        idempotency_key: key,
        private: false,
    };
    let batch = match store.create_batch(new).await {
        Ok(b) => b,
        // Two creates with one key at once: the loser finds the winner's batch.
        Err(StoreError::Duplicate {
            key: UniqueKey::IdempotencyKey,
            ..
        }) if key.is_some() => store
            .find_batch_by_key(&caller.owner, key.unwrap_or_default())
            .await?
            .ok_or_else(|| {
                ApiError::conflict("A batch with this Idempotency-Key is being created")
            })?,
        Err(StoreError::NotFound { .. }) => return Err(file_not_found()),
        // Looked at only when the create is refused, so that a create costs
        // one statement: an output file given as input is a 422.
        Err(e @ StoreError::Invalid(_)) => {
            return Err(match store.get_file(owner, input_file_id).await? {
                Some(file) if file.kind != FileKind::Input => ApiError::unprocessable(
                    "input_file_id",
                    format!(
                        "File {:?} is a batch's {} file, not an uploaded input file",
                        req.input_file_id, file.kind
                    ),
                ),
                _ => e.into(),
            });
        }
        Err(e) => return Err(e.into()),
    };
    // From here on the batch exists: nothing may turn this into a 5xx.
    if let Some(after) = output_expiry {
        let expires_at = Some(batch.created_at + after);
        for id in [batch.output_file_id, batch.error_file_id]
            .into_iter()
            .flatten()
        {
            if let Err(e) = store.set_file_expiry(owner, id, expires_at).await {
                tracing::warn!(batch = %batch.id, error = %e, "could not set the output files' expiry");
            }
        }
    }
    Ok(Json(BatchObject::from(&batch)))
}

/// `GET /v1/batches/{id}`.
pub async fn retrieve<S: ApiBackend>(
    State(state): State<ApiState<S>>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Response> {
    let batch_id = batch_id(&id)?;
    let shared = state
        .batch_reads()
        .get(state.store(), &caller.owner, batch_id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    Ok(([(CONTENT_TYPE, "application/json")], shared.json()).into_response())
}

/// Query of `GET /v1/batches`.
#[derive(Debug, Deserialize)]
pub struct ListParams {
    after: Option<String>,
    limit: Option<i64>,
    /// Only batches in this status (extension).
    status: Option<String>,
}

/// `GET /v1/batches`: newest first; `status` (extension) keeps one status.
pub async fn list<S: ApiBackend>(
    State(state): State<ApiState<S>>,
    Extension(caller): Extension<Caller>,
    ApiQuery(q): ApiQuery<ListParams>,
) -> ApiResult<Json<ListObject<BatchObject>>> {
    let limit = page_limit(q.limit, DEFAULT_BATCH_PAGE, MAX_BATCH_PAGE)?;
    let after = match q.after.as_deref() {
        None | Some("") => None,
        Some(a) => Some(parse_batch_id(a).ok_or_else(|| {
            ApiError::invalid_param("after", format!("after must be a batch id, not {a:?}"))
        })?),
    };
    let status = match q.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(s.parse::<BatchStatus>().map_err(|_| {
            ApiError::invalid_param("status", format!("status {s:?} is not a batch status"))
        })?),
    };
    let page = state
        .store()
        .list_batches(BatchListQuery {
            owner: Owner::Only(&caller.owner),
            status,
            after,
            limit,
        })
        .await?;
    let data = page.items.iter().map(BatchObject::from).collect();
    Ok(Json(ListObject::new(
        data,
        page.has_more,
        |b: &BatchObject| b.id.clone(),
    )))
}

/// `POST /v1/batches/{id}/cancel`: `cancelling`, or `cancelled` at once when
/// nothing is in flight. Cancelling twice is not an error; cancelling a
/// finished batch is a 409 (with `x-should-retry: false`).
pub async fn cancel<S: ApiBackend>(
    State(state): State<ApiState<S>>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<BatchObject>> {
    let batch_id = batch_id(&id)?;
    let batch = state
        .store()
        .cancel_batch(Owner::Only(&caller.owner), batch_id)
        .await
        .map_err(|e| match e {
            StoreError::NotFound { .. } => not_found(&id),
            StoreError::Conflict(t) => ApiError::conflict(format!(
                "Batch {id:?} is {} and cannot be cancelled",
                t.from
            )),
            other => other.into(),
        })?;
    Ok(Json(BatchObject::from(&batch)))
}

/// `POST /v1/batches/{id}/retry` (extension): puts a `completed` or
/// `expired` batch's failed requests back in the queue, reopening it with a
/// new deadline. The answer is the batch object plus `retried` (how many).
pub async fn retry<S: ApiBackend>(
    State(state): State<ApiState<S>>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<RetryObject>> {
    let batch_id = batch_id(&id)?;
    let (batch, retried) = state
        .store()
        .retry_failed(Owner::Only(&caller.owner), batch_id)
        .await
        .map_err(|e| match e {
            StoreError::NotFound { .. } => not_found(&id),
            StoreError::Conflict(t) => ApiError::conflict(format!(
                "Batch {id:?} is {}; only a completed or expired batch's failed requests can \
                 be retried",
                t.from
            )),
            other => other.into(),
        })?;
    Ok(Json(RetryObject {
        batch: BatchObject::from(&batch),
        retried,
    }))
}

/// Query of `GET /v1/batches/{id}/requests`.
#[derive(Debug, Deserialize)]
pub struct RequestListParams {
    after: Option<String>,
    limit: Option<i64>,
    /// Only requests in this state.
    state: Option<String>,
}

/// `GET /v1/batches/{id}/requests` (extension): the batch's requests in
/// input-line order, with their state, attempts and outcome; `state` keeps
/// those in one state.
pub async fn requests<S: ApiBackend>(
    State(state): State<ApiState<S>>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<RequestListParams>,
) -> ApiResult<Json<ListObject<RequestObject>>> {
    let limit = page_limit(q.limit, DEFAULT_REQUEST_PAGE, MAX_REQUEST_PAGE)?;
    let after = match q.after.as_deref() {
        None | Some("") => None,
        Some(a) => Some(parse_request_id(a).ok_or_else(|| {
            ApiError::invalid_param("after", format!("after must be a request id, not {a:?}"))
        })?),
    };
    let filter = match q.state.as_deref() {
        None | Some("") => None,
        Some(s) => Some(s.parse::<RequestState>().map_err(|_| {
            ApiError::invalid_param("state", format!("state {s:?} is not a request state"))
        })?),
    };
    let batch = own_batch(&state, &caller, &id).await?;
    let page = match filter {
        None => state.store().list_requests(batch.id, after, limit).await?,
        Some(s) => {
            state
                .store()
                .list_requests_in_state(batch.id, s, after, limit)
                .await?
        }
    };
    let data = page.items.iter().map(RequestObject::from).collect();
    Ok(Json(ListObject::new(
        data,
        page.has_more,
        |r: &RequestObject| r.id.clone(),
    )))
}
