//! The OpenAI-compatible HTTP API (SPEC §4): `router(state)` gives an axum
//! [`Router`] that the official SDKs use unchanged with `base_url` set to
//! `http://HOST:PORT/v1`.
//!
//! - [`files`]: upload (multipart, spooled to disk, then parsed into the
//!   store), list, get, content (streamed out), delete.
//! - [`spool`]: an upload's bytes on disk until the client has sent them all.
//! - [`uploads`]: how many uploads run at once; the cut-off for stalled ones.
//! - [`batches`]: create, get, list, cancel, and the extensions
//!   `GET /v1/batches/{id}/requests` and `POST /v1/batches/{id}/retry`.
//! - [`dashboard`]: the `/v1` extensions the dashboard reads (`/v1/me`,
//!   batch stats, one request, admin models and workers).
//! - [`ui`]: the dashboard itself, a static app served at `/`.
//! - [`auth`]: bearer keys mapped to owners.
//! - [`health`]: `/healthz` and `/metrics` (Prometheus text).
//! - [`error`]: the one error type, rendered in OpenAI's envelope.
//! - [`wire`]: the JSON objects, apart from the domain types.
//!
//! Handlers are generic over the store ([`ApiBackend`]), so another backend
//! implementing the store traits can serve the same API.

pub mod auth;
pub mod batch_reads;
pub mod batches;
pub mod dashboard;
pub mod error;
pub mod files;
pub mod health;
pub mod spool;
pub mod ui;
pub mod uploads;
pub mod wire;

use crate::config::{ApiSettings, Config};
use crate::store::{BatchStore, DaemonStore, DashboardStore, FileStore, HealthStore, RequestStore};
use auth::AuthTable;
use axum::Router;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode, Uri};
use axum::middleware::{from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use error::ApiError;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::de::DeserializeOwned;
use std::sync::{Arc, RwLock};
use tokio::sync::watch;

/// Everything the API needs from storage.
pub trait ApiBackend:
    FileStore
    + BatchStore
    + RequestStore
    + HealthStore
    + DashboardStore
    + DaemonStore
    + Clone
    + Send
    + Sync
    + 'static
{
}
impl<T> ApiBackend for T where
    T: FileStore
        + BatchStore
        + RequestStore
        + HealthStore
        + DashboardStore
        + DaemonStore
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// The state every handler shares: the store, the live configuration (auth
/// keys follow SIGHUP reloads), and the metrics handle.
pub struct ApiState<S> {
    inner: Arc<Inner<S>>,
}

impl<S> Clone for ApiState<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<S> {
    store: S,
    config: watch::Receiver<Arc<Config>>,
    auth: RwLock<(Arc<Config>, Arc<AuthTable>)>,
    /// `[api]` as it was at start: the store's upload limits are fixed when
    /// it is built, so the API's own checks keep the same values until a
    /// restart (auth keys, by contrast, follow reloads).
    api: ApiSettings,
    /// The bound on uploads at once (`[api] max_concurrent_uploads`).
    uploads: uploads::UploadGate,
    /// Concurrent reads of one batch share their query.
    batch_reads: batch_reads::BatchReads,
    metrics: Option<PrometheusHandle>,
}

impl<S: ApiBackend> ApiState<S> {
    /// State over `store`, following configuration updates sent on `config`
    /// (for auth keys). The store enforces the upload limits it was built
    /// with, which should be those of `[api]` in `config` (as
    /// [`store::open`](crate::store::open) sets them).
    pub fn new(store: S, config: watch::Receiver<Arc<Config>>) -> Self {
        let initial = config.borrow().clone();
        let table = Arc::new(AuthTable::new(&initial));
        Self {
            inner: Arc::new(Inner {
                store,
                config,
                api: initial.api.clone(),
                uploads: uploads::UploadGate::new(initial.api.max_concurrent_uploads),
                batch_reads: batch_reads::BatchReads::new(initial.api.batch_read_interval),
                auth: RwLock::new((initial, table)),
                metrics: health::install_recorder(),
            }),
        }
    }

    /// State with a fixed configuration (tests, embedding).
    pub fn fixed(store: S, config: Config) -> Self {
        let (tx, rx) = watch::channel(Arc::new(config));
        // Nobody will send a new config; the receiver keeps the last value.
        drop(tx);
        Self::new(store, rx)
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.inner.store
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        self.inner.config.borrow().clone()
    }

    /// The `[api]` settings in force (those of the configuration at start).
    pub fn api_settings(&self) -> &ApiSettings {
        &self.inner.api
    }

    /// The bound on uploads running at once.
    pub fn uploads(&self) -> &uploads::UploadGate {
        &self.inner.uploads
    }

    /// Shared reads of batches.
    pub fn batch_reads(&self) -> &batch_reads::BatchReads {
        &self.inner.batch_reads
    }

    /// The auth keys of the configuration in force.
    pub fn auth_table(&self) -> Arc<AuthTable> {
        let latest = self.config();
        {
            let cached = self.inner.auth.read().expect("auth lock");
            if Arc::ptr_eq(&cached.0, &latest) {
                return cached.1.clone();
            }
        }
        let table = Arc::new(AuthTable::new(&latest));
        *self.inner.auth.write().expect("auth lock") = (latest, table.clone());
        table
    }

    fn metrics(&self) -> Option<&PrometheusHandle> {
        self.inner.metrics.as_ref()
    }
}

/// The API's routes over `state`.
pub fn router<S: ApiBackend>(state: ApiState<S>) -> Router {
    let v1 = Router::new()
        .route(
            "/v1/files",
            // Uploads are spooled under the size limit of `[api]`; axum's
            // default 2 MB body limit would cut them short.
            post(files::create::<S>)
                .layer(DefaultBodyLimit::disable())
                .get(files::list::<S>),
        )
        .route(
            "/v1/files/{id}",
            get(files::retrieve::<S>).delete(files::delete::<S>),
        )
        .route("/v1/files/{id}/content", get(files::content::<S>))
        .route(
            "/v1/files/{id}/validation",
            get(dashboard::file_validation::<S>),
        )
        .route(
            "/v1/batches",
            post(batches::create::<S>)
                .layer(DefaultBodyLimit::max(MAX_JSON_BODY))
                .get(batches::list::<S>),
        )
        .route("/v1/batches/{id}", get(batches::retrieve::<S>))
        .route("/v1/batches/{id}/cancel", post(batches::cancel::<S>))
        .route("/v1/batches/{id}/retry", post(batches::retry::<S>))
        .route("/v1/batches/{id}/requests", get(batches::requests::<S>))
        .route(
            "/v1/batches/{id}/requests/{request_id}",
            get(dashboard::request_detail::<S>),
        )
        .route("/v1/batches/{id}/stats", get(dashboard::stats::<S>))
        .route("/v1/me", get(dashboard::me::<S>))
        .route("/v1/admin/models", get(dashboard::admin_models::<S>))
        .route("/v1/admin/workers", get(dashboard::admin_workers::<S>))
        .route_layer(from_fn_with_state(state.clone(), auth::require::<S>));
    Router::new()
        .merge(v1)
        .route("/healthz", get(health::healthz::<S>))
        .route("/metrics", get(health::metrics::<S>))
        .merge(ui::routes::<S>())
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(from_fn(health::track))
        .with_state(state)
}

async fn no_route(method: Method, uri: Uri) -> Response {
    ApiError::no_route(method.as_str(), uri.path()).into_response()
}

async fn wrong_method(method: Method, uri: Uri) -> Response {
    ApiError::method_not_allowed(method.as_str(), uri.path()).into_response()
}

/// Query parameters, with a malformed query answered as a 400 in the envelope.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|q| ApiQuery(q.0))
            .map_err(|e| {
                ApiError::bad_request(format!("Invalid query parameters: {}", e.body_text()))
            })
    }
}

/// The largest JSON request body read (`POST /v1/batches`).
pub const MAX_JSON_BODY: usize = 2 << 20;

/// A JSON request body read whole, with a failure to read it (over
/// [`MAX_JSON_BODY`], or broken off) answered in the envelope.
pub struct ApiBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for ApiBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Bytes::from_request(req, state).await {
            Ok(b) => Ok(ApiBody(b)),
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::body_too_large(
                format!("The request body is larger than the limit of {MAX_JSON_BODY} bytes"),
            )),
            Err(e) => Err(ApiError::bad_request(format!(
                "Reading the request body failed: {}",
                e.body_text()
            ))),
        }
    }
}

/// Path parameters, with one that cannot be read (a percent-escape that is
/// not UTF-8, say) answered as a 404 in the envelope: an id that cannot be
/// an id names nothing the caller can see.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(p) => Ok(ApiPath(p.0)),
            Err(e) => {
                tracing::debug!(path = parts.uri.path(), error = %e.body_text(), "unreadable path");
                Err(ApiError::not_found("object", parts.uri.path()))
            }
        }
    }
}

/// Parses a JSON request body, saying what is wrong when it cannot.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "The request body is empty; expected a JSON object",
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Data => "has an invalid or missing field",
            _ => "is not valid JSON",
        };
        ApiError::bad_request(format!("The request body {what}: {e}"))
    })
}

/// `limit` checked against `1..=max`, or `default` when absent.
pub fn page_limit(limit: Option<i64>, default: i64, max: i64) -> Result<i64, ApiError> {
    match limit {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::invalid_param(
            "limit",
            format!("limit must be between 1 and {max}, not {n}"),
        )),
    }
}
