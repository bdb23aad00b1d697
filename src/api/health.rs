//! `/healthz`, `/metrics`, and the API's own measurements.
//!
//! Metrics go through the `metrics` facade to one process-wide Prometheus
//! recorder, installed once ([`install_recorder`]); the daemon's metrics
//! (upstream calls, latency, retries, in flight per model) land in the same
//! recorder when it runs in the same process. The API adds:
//! - `fusillade_api_requests_total{route,status}` and
//!   `fusillade_api_latency_seconds{route}` (time to the response head;
//!   `route` is the matched path template, such as `/v1/files/{id}`, or
//!   `unmatched`);
//! - `fusillade_requests{state}` for `pending`, `claimed` and `processing`,
//!   counted from the database at scrape time through the partial indexes
//!   that cover exactly those states.
//!
//! Neither route needs a key: probes and scrapers rarely carry one, and
//! neither shows any owner's objects.

use super::{ApiBackend, ApiState};
use crate::store::StoreError;
use axum::Json;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Histogram buckets in seconds, from 1 ms to 10 min (upstream calls can be long).
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide Prometheus recorder the first time it is
/// called, and returns its handle every time. `None` when another recorder
/// was installed first (metrics then go there, and `/metrics` says so).
pub fn install_recorder() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
                .expect("the buckets are not empty");
            match builder.install_recorder() {
                Ok(handle) => Some(handle),
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed; /metrics is empty");
                    None
                }
            }
        })
        .clone()
}

/// Folds histogram samples into their buckets every few seconds, so memory
/// stays flat however rarely `/metrics` is scraped (a scrape does it too).
pub async fn upkeep(handle: PrometheusHandle) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        handle.run_upkeep();
    }
}

/// Middleware: counts every response by route and status, and times it.
pub async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::histogram!("fusillade_api_latency_seconds", "route" => route.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!("fusillade_api_requests_total", "route" => route, "status" => status)
        .increment(1);
    response
}

/// How long `/healthz` waits for the database's answer. Below the API's
/// acquire timeout, so that a probe hears 503 within 2 s whether the
/// server refuses connections (which the pool retries until its timeout),
/// accepts them but never answers, or has every connection busy.
pub const HEALTH_TIMEOUT: Duration = Duration::from_millis(1500);

/// `GET /healthz`: 200 `{"status":"ok"}` when the database answers within
/// [`HEALTH_TIMEOUT`], else 503.
pub async fn healthz<S: ApiBackend>(State(state): State<ApiState<S>>) -> Response {
    let answer = tokio::time::timeout(HEALTH_TIMEOUT, state.store().ping()).await;
    let answer = answer.unwrap_or_else(|_| {
        Err(StoreError::unavailable(
            "no answer within the health timeout",
        ))
    });
    match answer {
        Ok(()) => Json(json!({"status": "ok"})).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "health check: database unreachable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "unavailable", "database": "unreachable"})),
            )
                .into_response()
        }
    }
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics<S: ApiBackend>(State(state): State<ApiState<S>>) -> Response {
    match state.store().live_request_counts().await {
        Ok(c) => {
            for (name, n) in [
                ("pending", c.pending),
                ("claimed", c.claimed),
                ("processing", c.processing),
            ] {
                metrics::gauge!("fusillade_requests", "state" => name).set(n as f64);
            }
        }
        // A scrape still answers: the other metrics are in memory.
        Err(e) => tracing::warn!(error = %e, "metrics: counting requests failed"),
    }
    let body = state
        .metrics()
        .map(|h| h.render())
        .unwrap_or_else(|| "# no Prometheus recorder is installed in this process\n".into());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}
