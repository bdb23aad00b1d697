//! `/v1/files`: upload, list, get, content, delete.
//!
//! An upload is `multipart/form-data` with a `file` field and `purpose=batch`
//! (and optionally `expires_after[anchor]=created_at`,
//! `expires_after[seconds]=N`). The `file` field is streamed into the store
//! as it arrives, parsed and validated line by line: the body is never held
//! in memory. The fields may come in any order: the Python SDK sends
//! `purpose` first, the Node SDK sends `file` first. When `purpose` comes
//! first and is wrong, the upload is refused before its bytes are read; when
//! it comes after the file, the file is stored, then deleted again if the
//! purpose turns out wrong or missing. The size limit is the store's
//! (`[api] max_upload_bytes`): a declared `Content-Length` over it is refused
//! at once, and a body that grows past it mid-stream is cut off; both answer
//! 413.

use super::error::{ApiError, ApiResult};
use super::wire::{Deleted, FileObject, ListObject, parse_file_id};
use super::{ApiBackend, ApiQuery, ApiState, page_limit};
use crate::domain::file::{FileKind, FilePurpose};
use crate::store::{FileListQuery, MAX_PAGE, NewFile, Order, Owner, StoreError};
use axum::Json;
use axum::body::Body;
use axum::extract::multipart::{Field, Multipart, MultipartRejection};
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Duration, Utc};
use futures_util::TryStreamExt;
use serde::Deserialize;

use super::auth::Caller;

/// Bytes of multipart framing and small fields allowed on top of the file
/// itself before a declared `Content-Length` is refused outright.
const MULTIPART_OVERHEAD: u64 = 1 << 20;
/// The longest text field (purpose, expiry) read.
const MAX_TEXT_FIELD: usize = 1024;
/// OpenAI's bounds for `expires_after[seconds]`: an hour to 30 days.
const EXPIRY_SECONDS: std::ops::RangeInclusive<i64> = 3600..=2_592_000;
/// The default page of `GET /v1/files`, as OpenAI's.
pub const DEFAULT_FILE_PAGE: i64 = 10_000;

fn not_found(id: &str) -> ApiError {
    ApiError::not_found("file", id)
}

fn multipart_error(e: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("The multipart body is malformed: {e}"))
}

/// Reads a small text field, refusing long ones.
async fn text_field(field: Field<'_>, name: &str) -> ApiResult<String> {
    let mut field = field;
    let mut buf = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
        buf.extend_from_slice(&chunk);
        if buf.len() > MAX_TEXT_FIELD {
            return Err(ApiError::invalid_param(
                name,
                format!("{name} is longer than {MAX_TEXT_FIELD} bytes"),
            ));
        }
    }
    String::from_utf8(buf)
        .map_err(|_| ApiError::invalid_param(name, format!("{name} is not UTF-8")))
}

fn check_purpose(purpose: Option<&str>) -> ApiResult<()> {
    match purpose {
        Some("batch") => Ok(()),
        Some(other) => Err(ApiError::invalid_param(
            "purpose",
            format!("purpose must be \"batch\", not {other:?}"),
        )),
        None => Err(ApiError::invalid_param(
            "purpose",
            "The multipart body has no purpose field; send purpose=batch",
        )),
    }
}

/// The expiry an upload asked for, if any.
#[derive(Default)]
struct Expiry {
    anchor: Option<String>,
    seconds: Option<String>,
}

impl Expiry {
    fn given(&self) -> bool {
        self.anchor.is_some() || self.seconds.is_some()
    }

    fn resolve(&self, created_at: DateTime<Utc>) -> ApiResult<Option<DateTime<Utc>>> {
        if !self.given() {
            return Ok(None);
        }
        match self.anchor.as_deref() {
            Some("created_at") | None => {}
            Some(other) => {
                return Err(ApiError::invalid_param(
                    "expires_after[anchor]",
                    format!("expires_after[anchor] must be \"created_at\", not {other:?}"),
                ));
            }
        }
        let seconds = self
            .seconds
            .as_deref()
            .ok_or_else(|| {
                ApiError::invalid_param(
                    "expires_after[seconds]",
                    "expires_after[seconds] is missing",
                )
            })?
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|s| EXPIRY_SECONDS.contains(s))
            .ok_or_else(|| {
                ApiError::invalid_param(
                    "expires_after[seconds]",
                    "expires_after[seconds] must be a whole number from 3600 to 2592000",
                )
            })?;
        Ok(Some(created_at + Duration::seconds(seconds)))
    }
}

/// `POST /v1/files`.
pub async fn create<S: ApiBackend>(
    State(state): State<ApiState<S>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> ApiResult<Json<FileObject>> {
    let limit = state.api_settings().max_upload_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit.saturating_add(MULTIPART_OVERHEAD)) {
        return Err(ApiError::too_large(limit));
    }
    let mut multipart = multipart.map_err(|e| {
        ApiError::bad_request(format!(
            "Expected a multipart/form-data body with fields file and purpose: {}",
            e.body_text()
        ))
    })?;
    let store = state.store();
    let mut purpose: Option<String> = None;
    let mut expiry = Expiry::default();
    let mut created = None;
    let mut expiry_after_file = false;
    let read = read_fields(
        store,
        &caller,
        limit,
        &mut multipart,
        &mut purpose,
        &mut expiry,
        &mut created,
        &mut expiry_after_file,
    )
    .await;
    if let Err(e) = read {
        // A refused or broken body after the file was stored: do not keep it.
        if let Some(file) = &created {
            discard(store, &caller, file).await;
        }
        return Err(e);
    }
    let Some(mut file) = created else {
        check_purpose(purpose.as_deref())?;
        return Err(ApiError::invalid_param(
            "file",
            "The multipart body has no file field",
        ));
    };
    if let Err(e) = check_purpose(purpose.as_deref()) {
        discard(store, &caller, &file).await;
        return Err(e);
    }
    if expiry_after_file {
        let expires_at = match expiry.resolve(file.created_at) {
            Ok(t) => t,
            Err(e) => {
                discard(store, &caller, &file).await;
                return Err(e);
            }
        };
        store
            .set_file_expiry(Owner::Only(&caller.owner), file.id, expires_at)
            .await?;
        file.expires_at = expires_at;
    }
    Ok(Json(FileObject::from(&file)))
}

/// Reads the multipart fields in order, streaming `file` into the store.
#[allow(clippy::too_many_arguments)]
async fn read_fields<S: ApiBackend>(
    store: &S,
    caller: &Caller,
    limit: u64,
    multipart: &mut Multipart,
    purpose: &mut Option<String>,
    expiry: &mut Expiry,
    created: &mut Option<crate::domain::file::File>,
    expiry_after_file: &mut bool,
) -> ApiResult<()> {
    while let Some(field) = multipart.next_field().await.map_err(multipart_error)? {
        let name = field.name().unwrap_or("").to_owned();
        match name.as_str() {
            "purpose" => *purpose = Some(text_field(field, "purpose").await?.trim().to_owned()),
            "expires_after[anchor]" => {
                expiry.anchor = Some(text_field(field, &name).await?.trim().to_owned());
                *expiry_after_file |= created.is_some();
            }
            "expires_after[seconds]" => {
                expiry.seconds = Some(text_field(field, &name).await?);
                *expiry_after_file |= created.is_some();
            }
            "file" => {
                if created.is_some() {
                    return Err(ApiError::invalid_param(
                        "file",
                        "The multipart body has more than one file field",
                    ));
                }
                // Refuse before reading the bytes when the answer is known.
                if purpose.is_some() {
                    check_purpose(purpose.as_deref())?;
                }
                let expires_at = expiry.resolve(Utc::now())?;
                let filename = field
                    .file_name()
                    .filter(|n| !n.is_empty())
                    .unwrap_or("upload.jsonl")
                    .to_owned();
                let body = field.map_err(|e| std::io::Error::other(e.body_text()));
                let file = store
                    .create_file(
                        NewFile {
                            owner: caller.owner.clone(),
                            filename,
                            expires_at,
                        },
                        body,
                    )
                    .await
                    .map_err(|e| match e {
                        StoreError::TooLarge { .. } => ApiError::too_large(limit),
                        other => ApiError::from(other),
                    })?;
                *created = Some(file);
            }
            // Fields we do not know are skipped, as OpenAI does.
            _ => {
                let mut field = field;
                while field.chunk().await.map_err(multipart_error)?.is_some() {}
            }
        }
    }
    Ok(())
}

/// Deletes a file stored by a refused upload; a failure is only logged, the
/// refusal is what the caller needs to hear.
async fn discard<S: ApiBackend>(store: &S, caller: &Caller, file: &crate::domain::file::File) {
    if let Err(e) = store.delete_file(Owner::Only(&caller.owner), file.id).await {
        tracing::warn!(file = %file.id, error = %e, "could not delete a refused upload");
    }
}

/// Query of `GET /v1/files`.
#[derive(Debug, Deserialize)]
pub struct ListParams {
    purpose: Option<String>,
    after: Option<String>,
    limit: Option<i64>,
    order: Option<String>,
}

/// `GET /v1/files`: newest first unless `order=asc`.
pub async fn list<S: ApiBackend>(
    State(state): State<ApiState<S>>,
    Extension(caller): Extension<Caller>,
    ApiQuery(q): ApiQuery<ListParams>,
) -> ApiResult<Json<ListObject<FileObject>>> {
    let limit = page_limit(q.limit, DEFAULT_FILE_PAGE, MAX_PAGE)?;
    let purpose = match q.purpose.as_deref() {
        None | Some("") => None,
        Some(p) => Some(p.parse::<FilePurpose>().map_err(|_| {
            ApiError::invalid_param(
                "purpose",
                format!("purpose must be \"batch\" or \"batch_output\", not {p:?}"),
            )
        })?),
    };
    let order = match q.order.as_deref() {
        None | Some("desc") => Order::Desc,
        Some("asc") => Order::Asc,
        Some(o) => {
            return Err(ApiError::invalid_param(
                "order",
                format!("order must be \"asc\" or \"desc\", not {o:?}"),
            ));
        }
    };
    let after = match q.after.as_deref() {
        None | Some("") => None,
        Some(a) => Some(parse_file_id(a).ok_or_else(|| {
            ApiError::invalid_param("after", format!("after must be a file id, not {a:?}"))
        })?),
    };
    let page = state
        .store()
        .list_files(FileListQuery {
            owner: Owner::Only(&caller.owner),
            purpose,
            after,
            limit,
            order,
        })
        .await?;
    let data = page.items.iter().map(FileObject::from).collect();
    Ok(Json(ListObject::new(
        data,
        page.has_more,
        |f: &FileObject| f.id.clone(),
    )))
}

/// `GET /v1/files/{id}`.
pub async fn retrieve<S: ApiBackend>(
    State(state): State<ApiState<S>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<FileObject>> {
    let file_id = parse_file_id(&id).ok_or_else(|| not_found(&id))?;
    let file = state
        .store()
        .get_file(Owner::Only(&caller.owner), file_id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    Ok(Json(FileObject::from(&file)))
}

/// `DELETE /v1/files/{id}`.
pub async fn delete<S: ApiBackend>(
    State(state): State<ApiState<S>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<Deleted>> {
    let file_id = parse_file_id(&id).ok_or_else(|| not_found(&id))?;
    if !state
        .store()
        .delete_file(Owner::Only(&caller.owner), file_id)
        .await?
    {
        return Err(not_found(&id));
    }
    Ok(Json(Deleted {
        id: super::wire::file_id(file_id),
        object: "file",
        deleted: true,
    }))
}

/// `GET /v1/files/{id}/content`: the bytes, streamed from the database. An
/// input file gives its original bytes (with `Content-Length`); an output or
/// error file gives its lines as they are now (chunked), so results can be
/// read while the batch still runs.
pub async fn content<S: ApiBackend>(
    State(state): State<ApiState<S>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let file_id = parse_file_id(&id).ok_or_else(|| not_found(&id))?;
    let owner = Owner::Only(&caller.owner);
    let store = state.store();
    let file = store
        .get_file(owner, file_id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    let stream = store
        .file_content(owner, file_id)
        .await
        .map_err(|e| match e {
            StoreError::NotFound { .. } => not_found(&id),
            other => other.into(),
        })?;
    let file_for_log = file_id;
    let body = Body::from_stream(stream.inspect_err(move |e| {
        // The status is already sent; cutting the connection short is how
        // the client learns the body is incomplete.
        tracing::error!(file = %file_for_log, error = %e, "download failed midway");
    }));
    let mut response = body.into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if file.kind == FileKind::Input
        && let Ok(v) = HeaderValue::from_str(&file.bytes.to_string())
    {
        h.insert(header::CONTENT_LENGTH, v);
    }
    let safe_name: String = file
        .filename
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{safe_name}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(response)
}
