//! One error type for every failure the API answers, rendered in OpenAI's
//! envelope: `{"error": {"message", "type", "param", "code"}}`.
//!
//! Statuses follow what the SDKs expect: 400 for a malformed or invalid
//! request, 401 for a missing or unknown key, 403 for a non-admin key on an
//! admin route, 404 for anything the caller
//! cannot see (another owner's object included, and ids that cannot be
//! ids), 408 for an upload whose client stopped sending, 409 for a state
//! conflict, 413 for an upload over the limit, 422 for a well-formed request
//! naming an object that cannot be used that way, 429 (with `Retry-After`)
//! when too many uploads run at once, 500 for our own faults and 503 when
//! the database is out of reach. Conflicts
//! carry `x-should-retry: false`, since the SDKs retry 409 otherwise and
//! retrying cannot help. Internal details never reach the body: they are
//! logged, and the body says only that the server failed.

use crate::store::StoreError;
use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    param: Option<String>,
    code: Option<String>,
    /// Seconds for a `Retry-After` header.
    retry_after: Option<u64>,
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: Body<'a>,
}

#[derive(Serialize)]
struct Body<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
            param: None,
            code: None,
            retry_after: None,
        }
    }

    /// Names the request parameter at fault.
    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// Sets the machine-readable code.
    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The message for people.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// 400: the request is malformed or a parameter is invalid.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
            .with_code("invalid_request")
    }

    /// 400 for a parameter with a bad value.
    pub fn invalid_param(param: &str, message: impl Into<String>) -> Self {
        Self::bad_request(message)
            .with_param(param)
            .with_code("invalid_value")
    }

    /// 401: no key, or one nobody was given.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_request_error", message)
            .with_code("invalid_api_key")
    }

    /// 403: a known key asking for what only an admin may see.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "permission_error", message).with_code("forbidden")
    }

    /// 404 for an object the caller cannot see.
    pub fn not_found(what: &str, id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("No such {what}: {id:?}"),
        )
        .with_code("not_found")
    }

    /// 404 for a path that names no route.
    pub fn no_route(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("Unknown request URL: {method} {path}"),
        )
        .with_code("unknown_url")
    }

    /// 405 for a known path called with the wrong method.
    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            format!("Method {method} is not allowed on {path}"),
        )
        .with_code("method_not_allowed")
    }

    /// 409: the object's state does not allow the change.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "invalid_request_error", message).with_code("conflict")
    }

    /// 413: the upload is over the limit.
    pub fn too_large(limit: u64) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("The file is larger than the limit of {limit} bytes"),
        )
        .with_param("file")
        .with_code("file_too_large")
    }

    /// 413: a request body (not an upload) over its limit.
    pub fn body_too_large(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            message,
        )
        .with_code("request_too_large")
    }

    /// 408: the client stopped sending an upload for longer than `idle`.
    pub fn upload_stalled(idle: std::time::Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            format!(
                "The upload was cut off: nothing arrived for {} s",
                idle.as_secs()
            ),
        )
        .with_param("file")
        .with_code("upload_timeout")
    }

    /// 429: `limit` uploads are already running; retry after `retry_after` seconds.
    pub fn too_many_uploads(limit: u32, retry_after: u64) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            format!("{limit} uploads are already running; retry later"),
        )
        .with_code("too_many_uploads");
        e.retry_after = Some(retry_after);
        e
    }

    /// 422: well-formed, but the object named cannot be used this way.
    pub fn unprocessable(param: &str, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request_error",
            message,
        )
        .with_param(param)
        .with_code("unprocessable")
    }

    /// 500: our fault. `cause` is logged, never sent.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "api_error",
            "The server had an error while processing your request",
        )
        .with_code("internal_error")
    }

    /// 503: the database is out of reach; retrying later may help.
    pub fn unavailable(cause: &dyn std::fmt::Display) -> Self {
        tracing::warn!(error = %cause, "database unavailable");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "api_error",
            "The service is temporarily unavailable; retry later",
        )
        .with_code("unavailable")
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { what, id } => ApiError::not_found(what, &id),
            StoreError::Conflict(t) => ApiError::conflict(format!(
                "The {} is {} and cannot become {}",
                t.kind, t.from, t.to
            )),
            StoreError::Invalid(message) => ApiError::bad_request(message),
            StoreError::TooLarge { limit } => ApiError::too_large(limit),
            StoreError::Io(e) => ApiError::bad_request(format!("Reading the upload failed: {e}")),
            e @ StoreError::Unavailable(_) => ApiError::unavailable(&e),
            other => ApiError::internal(&other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Envelope {
            error: Body {
                message: &self.message,
                kind: self.kind,
                param: self.param.as_deref(),
                code: self.code.as_deref(),
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::CONFLICT {
            response
                .headers_mut()
                .insert("x-should-retry", HeaderValue::from_static("false"));
        }
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// Shorthand for handler results.
pub type ApiResult<T> = Result<T, ApiError>;
