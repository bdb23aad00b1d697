//! `/v1/files`: upload, list, get, content, delete.
//!
//! An upload is `multipart/form-data` with a `file` field and `purpose=batch`
//! (and optionally `expires_after[anchor]=created_at`,
//! `expires_after[seconds]=N`). The fields may come in any order: the Python
//! SDK sends `purpose` first, the Node SDK sends `file` first.
//!
//! The `file` field is spooled to a temporary file as it arrives (see
//! [`spool`](super::spool)), and only once the whole body is in, and the
//! purpose and expiry are known to be right, is it parsed and validated line
//! by line into the store, at disk speed. So a slow client never holds a
//! database connection, the body is never held in memory, and a refused
//! upload never touches the database. When `purpose` comes first and is
//! wrong, the upload is refused before the file's bytes are read.
//!
//! The size limit is `[api] max_upload_bytes`: a declared `Content-Length`
//! over it is refused at once, and a file that grows past it is cut off;
//! both answer 413. How many uploads run at once, and how long a client may
//! send nothing, are bounded too (see [`uploads`](super::uploads)): 429 and
//! 408.

use super::error::{ApiError, ApiResult};
use super::spool::{Spool, SpoolError};
use super::uploads::{Stalled, cut_off_when_idle};
use super::wire::{Deleted, FileObject, ListObject, parse_file_id};
use super::{ApiBackend, ApiPath, ApiQuery, ApiState, page_limit};
use crate::domain::file::{FileKind, FilePurpose};
use crate::store::{FileListQuery, MAX_PAGE, NewFile, Order, Owner, StoreError};
use axum::Json;
use axum::body::Body;
use axum::extract::multipart::{Field, Multipart, MultipartError};
use axum::extract::{Extension, FromRequest, Request, State};
use axum::http::{HeaderValue, header};
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

/// A spool that failed is our fault (a full disk, say), not the client's.
fn spool_failed(e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(&format!("spooling an upload failed: {e}"))
}

/// How a failed read of the body is answered: 408 when the client stalled
/// (the multipart parser reports a cut-off like any broken body), else 400.
#[derive(Clone)]
struct ReadErrors {
    stalled: Stalled,
    idle: std::time::Duration,
}

impl ReadErrors {
    fn map(&self, e: MultipartError) -> ApiError {
        if self.stalled.happened() {
            ApiError::upload_stalled(self.idle)
        } else {
            multipart_error(e)
        }
    }
}

/// Reads a small text field, refusing long ones.
async fn text_field(mut field: Field<'_>, name: &str, errors: &ReadErrors) -> ApiResult<String> {
    let mut buf = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(|e| errors.map(e))? {
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

/// The `file` field, on disk.
struct Spooled {
    filename: String,
    spool: Spool,
}

/// Every field of an upload, read to the end.
#[derive(Default)]
struct Form {
    purpose: Option<String>,
    expiry: Expiry,
    file: Option<Spooled>,
}

/// `POST /v1/files`.
pub async fn create<S: ApiBackend>(
    State(state): State<ApiState<S>>,
    Extension(caller): Extension<Caller>,
    request: Request,
) -> ApiResult<Json<FileObject>> {
    let settings = state.api_settings();
    let limit = settings.max_upload_bytes;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit.saturating_add(MULTIPART_OVERHEAD)) {
        return Err(ApiError::too_large(limit));
    }
    // Held to the end, through the ingest: it bounds the spools on disk too.
    let _place = state.uploads().enter()?;
    let (parts, body) = request.into_parts();
    let (body, stalled) = cut_off_when_idle(body, settings.upload_idle_timeout);
    let errors = ReadErrors {
        stalled,
        idle: settings.upload_idle_timeout,
    };
    let mut multipart = Multipart::from_request(Request::from_parts(parts, body), &())
        .await
        .map_err(|e| {
            ApiError::bad_request(format!(
                "Expected a multipart/form-data body with fields file and purpose: {}",
                e.body_text()
            ))
        })?;
    let dir = settings
        .upload_spool_dir
        .clone()
        .unwrap_or_else(std::env::temp_dir);
    let form = read_form(&mut multipart, &errors, &dir, limit).await?;
    let Some(spooled) = form.file else {
        check_purpose(form.purpose.as_deref())?;
        return Err(ApiError::invalid_param(
            "file",
            "The multipart body has no file field",
        ));
    };
    check_purpose(form.purpose.as_deref())?;
    let expires_at = form.expiry.resolve(Utc::now())?;
    // The client has sent everything: only now is a connection taken.
    let body = spooled.spool.into_stream().await.map_err(spool_failed)?;
    let store = state.store();
    let mut file = store
        .create_file(
            NewFile {
                owner: caller.owner.clone(),
                filename: spooled.filename,
                expires_at,
            },
            body,
        )
        .await
        .map_err(|e| match e {
            StoreError::TooLarge { .. } => ApiError::too_large(limit),
            other => ApiError::from(other),
        })?;
    // The expiry counts from the stored creation time, to the second.
    let exact = form.expiry.resolve(file.created_at)?;
    if exact.map(|t| t.timestamp()) != file.expires_at.map(|t| t.timestamp()) {
        store
            .set_file_expiry(Owner::Only(&caller.owner), file.id, exact)
            .await?;
        file.expires_at = exact;
    }
    Ok(Json(FileObject::from(&file)))
}

/// Reads the multipart fields in order, spooling `file` to disk.
async fn read_form(
    multipart: &mut Multipart,
    errors: &ReadErrors,
    dir: &std::path::Path,
    limit: u64,
) -> ApiResult<Form> {
    let mut form = Form::default();
    while let Some(mut field) = multipart.next_field().await.map_err(|e| errors.map(e))? {
        let name = field.name().unwrap_or("").to_owned();
        match name.as_str() {
            "purpose" => {
                form.purpose = Some(
                    text_field(field, "purpose", errors)
                        .await?
                        .trim()
                        .to_owned(),
                );
            }
            "expires_after[anchor]" => {
                form.expiry.anchor =
                    Some(text_field(field, &name, errors).await?.trim().to_owned());
            }
            "expires_after[seconds]" => {
                form.expiry.seconds = Some(text_field(field, &name, errors).await?);
            }
            "file" => {
                if form.file.is_some() {
                    return Err(ApiError::invalid_param(
                        "file",
                        "The multipart body has more than one file field",
                    ));
                }
                // Refuse before reading the bytes when the answer is known.
                if form.purpose.is_some() {
                    check_purpose(form.purpose.as_deref())?;
                }
                form.expiry.resolve(Utc::now())?;
                let filename = field
                    .file_name()
                    .filter(|n| !n.is_empty())
                    .unwrap_or("upload.jsonl")
                    .to_owned();
                let mut spool = Spool::create(dir, limit).await.map_err(spool_failed)?;
                while let Some(chunk) = field.chunk().await.map_err(|e| errors.map(e))? {
                    spool.write(&chunk).await.map_err(|e| match e {
                        SpoolError::TooLarge { limit } => ApiError::too_large(limit),
                        SpoolError::Io(e) => spool_failed(e),
                    })?;
                }
                form.file = Some(Spooled { filename, spool });
            }
            // Fields we do not know are skipped, as OpenAI does.
            _ => while field.chunk().await.map_err(|e| errors.map(e))?.is_some() {},
        }
    }
    Ok(form)
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
    ApiPath(id): ApiPath<String>,
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
    ApiPath(id): ApiPath<String>,
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
    ApiPath(id): ApiPath<String>,
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
