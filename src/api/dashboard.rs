//! `/v1` extensions the dashboard reads (all additive; no OpenAI object
//! changes shape):
//!
//! - `GET /v1/me`: the caller's owner name and whether it is an admin;
//! - `GET /v1/batches/{id}/stats`: counts by state, throughput over time,
//!   latency percentiles and failures by code, each at a fixed cost
//!   whatever the batch's size (see `store::traits::dashboard`);
//! - `GET /v1/batches/{id}/requests/{request_id}`: one request with its
//!   input body and its answer or error;
//! - `GET /v1/files/{id}/validation`: an upload's refused lines, by line
//!   number, and the endpoints its valid lines name;
//! - `GET /v1/admin/models` and `GET /v1/admin/workers`, for owners named in
//!   `[auth] admins` (everyone when auth is off: the server then listens on
//!   loopback only, for its one local user).
//!
//! They sit behind the same bearer-key middleware as the rest of `/v1`, so
//! the dashboard has no authorization path of its own.

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::wire::{
    RequestObject, batch_id as wire_batch_id, file_id as wire_file_id, parse_batch_id,
    parse_file_id, parse_request_id,
};
use super::{ApiBackend, ApiPath, ApiState};
use crate::domain::batch::Batch;
use crate::store::{BatchSample, DaemonStatus, Owner};
use axum::Json;
use axum::extract::{Extension, State};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// The most buckets a throughput chart gets.
const MAX_BUCKETS: i64 = 60;
/// Bucket widths to choose from, in seconds.
const INTERVALS: &[i64] = &[
    1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400,
];
/// The recent window the current rate is measured over, in seconds.
const RATE_WINDOW: i64 = 60;

/// Whether `caller` may read the admin routes.
fn is_admin<S: ApiBackend>(state: &ApiState<S>, caller: &Caller) -> bool {
    let config = state.config();
    config.auth.is_none() || config.admins.contains(&caller.owner)
}

fn require_admin<S: ApiBackend>(state: &ApiState<S>, caller: &Caller) -> ApiResult<()> {
    if is_admin(state, caller) {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "This key's owner is not listed in [auth] admins",
        ))
    }
}

/// `GET /v1/me`.
pub async fn me<S: ApiBackend>(
    State(state): State<ApiState<S>>,
    Extension(caller): Extension<Caller>,
) -> Json<Value> {
    Json(json!({
        "object": "me",
        "owner": caller.owner,
        "admin": is_admin(&state, &caller),
        "auth": state.config().auth.is_some(),
    }))
}

async fn own_batch<S: ApiBackend>(
    state: &ApiState<S>,
    caller: &Caller,
    id: &str,
) -> ApiResult<Batch> {
    let not_found = || ApiError::not_found("batch", id);
    let batch_id = parse_batch_id(id).ok_or_else(not_found)?;
    state
        .store()
        .get_batch(Owner::Only(&caller.owner), batch_id)
        .await?
        .ok_or_else(not_found)
}

/// One interval of the throughput chart.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Bucket {
    /// Start of the interval, Unix seconds.
    pub t: i64,
    /// Requests completed in it (estimated when sampled).
    pub completed: f64,
    /// Requests failed or cancelled in it (estimated when sampled).
    pub failed: f64,
}

/// Latency percentiles over the sampled requests the upstream answered
/// (calls cut short by a cancel or a timeout say nothing of its speed).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Latency {
    /// Requests measured.
    pub count: usize,
    /// Median, milliseconds.
    pub p50: i64,
    /// 90th percentile, milliseconds.
    pub p90: i64,
    /// 99th percentile, milliseconds.
    pub p99: i64,
    /// Slowest, milliseconds.
    pub max: i64,
}

/// `value` at quantile `q` of `sorted` (nearest rank).
fn quantile(sorted: &[i64], q: f64) -> i64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Statistics of a batch from its counters and a sample of its lines.
pub fn batch_stats(batch: &Batch, sample: &BatchSample, now: DateTime<Utc>) -> Value {
    let c = &batch.request_counts;
    let in_progress = sample.claimed + sample.processing;
    let counts = crate::domain::batch::RequestCounts {
        total: c.total,
        pending: (c.total - c.completed - c.failed - c.canceled - in_progress).max(0),
        in_progress,
        completed: c.completed,
        failed: c.failed,
        canceled: c.canceled,
    };
    let scale = sample.step as f64;
    let live = !batch.status.is_terminal();
    let first = sample.results.iter().map(|r| r.finished_at).min();
    let last = sample.results.iter().map(|r| r.finished_at).max();
    let start = batch
        .in_progress_at
        .into_iter()
        .chain(first)
        .min()
        .unwrap_or(batch.created_at);
    let end = if live { Some(now) } else { last }
        .unwrap_or(start)
        .max(start);
    let span = (end - start).num_seconds().max(1);
    let interval = INTERVALS
        .iter()
        .copied()
        .find(|i| span / i < MAX_BUCKETS)
        .unwrap_or(86400);
    let origin = start.timestamp() - start.timestamp().rem_euclid(interval);
    let n = ((end.timestamp() - origin) / interval + 1).clamp(1, MAX_BUCKETS + 1);
    let mut buckets: Vec<Bucket> = (0..n)
        .map(|i| Bucket {
            t: origin + i * interval,
            completed: 0.0,
            failed: 0.0,
        })
        .collect();
    let mut latencies = Vec::new();
    let mut recent = 0usize;
    for r in &sample.results {
        let i = ((r.finished_at.timestamp() - origin) / interval).clamp(0, n - 1) as usize;
        if r.ok {
            buckets[i].completed += scale;
        } else {
            buckets[i].failed += scale;
        }
        if let (Some(s), Some(_)) = (r.started_at, r.status_code) {
            latencies.push((r.finished_at - s).num_milliseconds().max(0));
        }
        if (now - r.finished_at).num_seconds() < RATE_WINDOW {
            recent += 1;
        }
    }
    latencies.sort_unstable();
    let latency = (!latencies.is_empty()).then(|| Latency {
        count: latencies.len(),
        p50: quantile(&latencies, 0.5),
        p90: quantile(&latencies, 0.9),
        p99: quantile(&latencies, 0.99),
        max: *latencies.last().unwrap_or(&0),
    });
    // Over the last minute, or since the batch started when that is shorter.
    let window = (now - start).num_seconds().clamp(1, RATE_WINDOW) as f64;
    let rate = if live {
        recent as f64 * scale / window
    } else {
        0.0
    };
    let remaining = counts.pending + counts.in_progress;
    let eta = (live && rate > 0.0).then(|| (remaining as f64 / rate).ceil() as i64);
    let errors: Vec<Value> = sample
        .errors
        .iter()
        .map(|g| json!({"code": g.code, "status_code": g.status_code, "count": g.count}))
        .collect();
    json!({
        "object": "batch.stats",
        "id": wire_batch_id(batch.id),
        "status": batch.status.as_str(),
        "counts": counts,
        "sample": {
            "step": sample.step,
            "results_read": sample.results.len(),
            "exact": sample.step == 1,
        },
        "throughput": {"interval_secs": interval, "buckets": buckets},
        "rate_per_sec": rate,
        "eta_secs": eta,
        "latency_ms": latency,
        "errors": {"examined": sample.errors_examined, "groups": errors},
    })
}

/// `GET /v1/batches/{id}/stats`.
pub async fn stats<S: ApiBackend>(
    State(state): State<ApiState<S>>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let batch = own_batch(&state, &caller, &id).await?;
    let sample = state
        .store()
        .batch_sample(batch.id, batch.request_counts.total)
        .await?;
    Ok(Json(batch_stats(&batch, &sample, Utc::now())))
}

/// A body for display: JSON when it parses, else the text as is.
fn body_value(text: Option<String>, bytes: i64) -> Value {
    match text {
        None if bytes > 0 => {
            json!({"bytes": bytes, "text": null, "json": null, "truncated": false})
        }
        None => Value::Null,
        Some(t) => {
            let truncated = (t.len() as i64) < bytes;
            let parsed = if truncated {
                None
            } else {
                serde_json::from_str::<Value>(&t).ok()
            };
            json!({
                "bytes": bytes,
                "json": parsed,
                "text": if parsed.is_some() { None } else { Some(t) },
                "truncated": truncated,
            })
        }
    }
}

/// `GET /v1/batches/{id}/requests/{request_id}`.
pub async fn request_detail<S: ApiBackend>(
    State(state): State<ApiState<S>>,
    Extension(caller): Extension<Caller>,
    ApiPath((id, rid)): ApiPath<(String, String)>,
) -> ApiResult<Json<Value>> {
    let batch = own_batch(&state, &caller, &id).await?;
    let not_found = || ApiError::not_found("request", &rid);
    let request_id = parse_request_id(&rid).ok_or_else(not_found)?;
    let detail = state
        .store()
        .request_detail(batch.id, request_id)
        .await?
        .ok_or_else(not_found)?;
    let mut out = serde_json::to_value(RequestObject::from(&detail.record))
        .map_err(|e| ApiError::internal(&e))?;
    let response = body_value(detail.response_body, detail.response_bytes);
    // Where the last attempt was sent when that is recorded (escalation),
    // else the model the answer names.
    let routed_model = detail
        .record
        .routed_model
        .clone()
        .or_else(|| response["json"]["model"].as_str().map(str::to_owned));
    if let Some(o) = out.as_object_mut() {
        o.insert(
            "input".into(),
            body_value(detail.input_body, detail.input_bytes),
        );
        o.insert("response".into(), response);
        o.insert(
            "upstream_request_id".into(),
            json!(detail.upstream_request_id),
        );
        o.insert("routed_model".into(), json!(routed_model));
    }
    Ok(Json(out))
}

/// `GET /v1/files/{id}/validation`: what the upload's parse found.
pub async fn file_validation<S: ApiBackend>(
    State(state): State<ApiState<S>>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let not_found = || ApiError::not_found("file", &id);
    let file_id = parse_file_id(&id).ok_or_else(not_found)?;
    let file = state
        .store()
        .get_file(Owner::Only(&caller.owner), file_id)
        .await?
        .ok_or_else(not_found)?;
    let errors: Vec<Value> = file
        .errors
        .iter()
        .map(|e| json!({"line": e.line, "code": e.code.as_str(), "message": e.message}))
        .collect();
    Ok(Json(json!({
        "object": "file.validation",
        "id": wire_file_id(file.id),
        "valid_lines": file.template_count,
        "error_count": file.error_count,
        "errors": errors,
        "endpoints": file.urls,
    })))
}

/// Upstream calls per model made by this process's daemon, from its metrics.
fn calls_by_model<S: ApiBackend>(state: &ApiState<S>) -> BTreeMap<String, f64> {
    by_model(state, "fusillade_upstream_requests_total")
}

/// A metric of this process's daemon summed per `model` label.
fn by_model<S: ApiBackend>(state: &ApiState<S>, metric: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Some(handle) = state.metrics() else {
        return out;
    };
    for line in handle.render().lines() {
        let Some(rest) = line.strip_prefix(metric).and_then(|r| r.strip_prefix('{')) else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let model = labels
            .split(",")
            .find_map(|l| l.strip_prefix("model=\"").and_then(|m| m.strip_suffix('"')));
        if let (Some(model), Ok(v)) = (model, value.trim().parse::<f64>()) {
            *out.entry(model.to_owned()).or_default() += v;
        }
    }
    out
}

/// `GET /v1/admin/models`: every configured model and every model with work.
pub async fn admin_models<S: ApiBackend>(
    State(state): State<ApiState<S>>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<Value>> {
    require_admin(&state, &caller)?;
    let config = state.config();
    let loads = state.store().model_loads().await?;
    let calls = calls_by_model(&state);
    // This process's daemon's adaptive limits (absent without one).
    let route_limits = by_model(&state, "fusillade_route_limit");
    let mut names: Vec<String> = config.models.keys().cloned().collect();
    names.extend(loads.iter().map(|l| l.model.clone()));
    names.extend(calls.keys().cloned());
    names.extend(route_limits.keys().cloned());
    names.sort();
    names.dedup();
    let data: Vec<Value> = names
        .iter()
        .map(|name| {
            let load = loads.iter().find(|l| &l.model == name);
            json!({
                "object": "model.load",
                "model": name,
                "limit": config.route(name).concurrency,
                "in_flight": load.map_or(0, |l| l.in_flight),
                "slots_held": load.map_or(0, |l| l.slots_held),
                "pending": load.map_or(0, |l| l.pending),
                "pending_capped": load.is_some_and(|l| l.pending >= crate::store::PENDING_COUNT_CAP),
                "calls_total": calls.get(name).copied().unwrap_or(0.0),
                "route_limit": route_limits.get(name).map(|&l| l as u64),
            })
        })
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

/// `GET /v1/admin/workers`: running daemons, and the last few that stopped.
pub async fn admin_workers<S: ApiBackend>(
    State(state): State<ApiState<S>>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<Value>> {
    require_admin(&state, &caller)?;
    let now = Utc::now();
    let daemons = state.store().list_daemons().await?;
    let data: Vec<Value> = daemons
        .iter()
        .filter(|d| d.status == DaemonStatus::Running)
        .chain(
            daemons
                .iter()
                .filter(|d| d.status != DaemonStatus::Running)
                .take(10),
        )
        .map(|d| {
            json!({
                "object": "worker",
                "id": d.id.0.to_string(),
                "hostname": d.hostname,
                "pid": d.pid,
                "version": d.version,
                "status": d.status.as_str(),
                "started_at": d.started_at.timestamp(),
                "last_heartbeat": d.last_heartbeat.timestamp(),
                "heartbeat_age_ms": (now - d.last_heartbeat).num_milliseconds(),
                "in_flight": d.stats.in_flight,
                "requests_done": d.stats.requests_done,
                "requests_failed": d.stats.requests_failed,
            })
        })
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}
