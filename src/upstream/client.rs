//! The call itself: headers, timeouts by phase, the capped body read, and the
//! streamed variant.

use super::sse::{Reassembler, SseParser, StreamEnd};
use super::{CallOutcome, UpstreamRequest};
use crate::config::{Config, Route};
use crate::domain::retry::parse_retry_after;
use chrono::Utc;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use serde_json::value::RawValue;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;
use tokio::time::Instant;

/// Idle connections kept per upstream host.
const POOL_PER_HOST: usize = 1024;

/// The pooled HTTP clients: one per distinct connect timeout, as reqwest sets
/// it per client. A build failure is kept, and reported by every call.
#[derive(Debug, Clone)]
pub(super) struct Clients {
    by_connect_timeout: HashMap<Duration, reqwest::Client>,
    /// Each route's base URL, parsed once: parsing (host checks included)
    /// on every call was a visible part of the daemon's CPU.
    base_urls: HashMap<String, reqwest::Url>,
    /// The replica sets of the routes that have them, by the route's `url`.
    replicas: HashMap<String, std::sync::Arc<Replicas>>,
    error: Option<String>,
}

/// A route's replicas and the calls each is making.
#[derive(Debug)]
struct Replicas {
    urls: Vec<String>,
    in_flight: Vec<AtomicU32>,
    /// Calls one replica takes at once.
    per_replica: u32,
    turn: AtomicUsize,
    /// When each replica may be used again after a connection failure or
    /// timeout, in milliseconds after `epoch` (0: it may).
    down_until: Vec<AtomicU64>,
    epoch: std::time::Instant,
}

/// How long a replica that refused a connection or timed out is left out.
const REPLICA_BACKOFF: Duration = Duration::from_secs(5);

impl Replicas {
    /// The replica for a call: the group's own while it has room, else the
    /// least busy; calls of no group in turn.
    fn pick(&self, prefix_key: Option<i64>) -> usize {
        let n = self.urls.len();
        let now = self.now_ms();
        let up = |i: usize| self.down_until[i].load(Relaxed) <= now;
        // When every replica is out, they are all tried again.
        let all_down = !(0..n).any(up);
        let usable = |i: usize| all_down || up(i);
        let Some(key) = prefix_key else {
            for _ in 0..n {
                let i = self.turn.fetch_add(1, Relaxed) % n;
                if usable(i) {
                    return i;
                }
            }
            return self.turn.fetch_add(1, Relaxed) % n;
        };
        let home = (key as u64 % n as u64) as usize;
        if usable(home) && self.in_flight[home].load(Relaxed) < self.per_replica {
            return home;
        }
        (0..n)
            .filter(|&i| usable(i))
            .min_by_key(|&i| self.in_flight[i].load(Relaxed))
            .unwrap_or(home)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Leaves replica `i` out for [`REPLICA_BACKOFF`].
    fn failed(&self, i: usize) {
        let until = self.now_ms() + REPLICA_BACKOFF.as_millis() as u64;
        self.down_until[i].fetch_max(until, Relaxed);
        metrics::counter!("fusillade_replica_failures_total", "url" => self.urls[i].clone())
            .increment(1);
    }
}

/// Counts a call against its replica until dropped.
struct ReplicaCall<'a> {
    replicas: &'a Replicas,
    index: usize,
}

impl ReplicaCall<'_> {
    /// The replica refused the connection or did not answer in time.
    fn failed(&self) {
        self.replicas.failed(self.index);
    }
}

impl Drop for ReplicaCall<'_> {
    fn drop(&mut self) {
        self.replicas.in_flight[self.index].fetch_sub(1, Relaxed);
    }
}

impl Clients {
    pub(super) fn build(config: &Config) -> Self {
        let mut by_connect_timeout = HashMap::new();
        let mut base_urls = HashMap::new();
        let mut replicas = HashMap::new();
        let mut error = None;
        for route in std::iter::once(&config.upstream).chain(config.models.values()) {
            for u in std::iter::once(&route.url).chain(&route.replicas) {
                if let Ok(url) = reqwest::Url::parse(u) {
                    base_urls.insert(u.clone(), url);
                }
            }
            if route.replicas.len() > 1 && !replicas.contains_key(&route.url) {
                let n = route.replicas.len();
                replicas.insert(
                    route.url.clone(),
                    std::sync::Arc::new(Replicas {
                        urls: route.replicas.clone(),
                        in_flight: (0..n).map(|_| AtomicU32::new(0)).collect(),
                        per_replica: (route.concurrency / n as u32).max(1),
                        turn: AtomicUsize::new(0),
                        down_until: (0..n).map(|_| AtomicU64::new(0)).collect(),
                        epoch: std::time::Instant::now(),
                    }),
                );
            }
            if by_connect_timeout.contains_key(&route.connect_timeout) {
                continue;
            }
            let built = reqwest::Client::builder()
                .connect_timeout(route.connect_timeout)
                .pool_max_idle_per_host(POOL_PER_HOST)
                .tcp_nodelay(true)
                .tcp_keepalive(Duration::from_secs(60))
                // A redirect is an answer like any other: following it would
                // re-send the body somewhere the configuration did not name.
                .redirect(reqwest::redirect::Policy::none())
                .build();
            match built {
                Ok(c) => {
                    by_connect_timeout.insert(route.connect_timeout, c);
                }
                Err(e) => {
                    error.get_or_insert_with(|| {
                        format!("cannot build the HTTP client: {}", error_chain(e))
                    });
                }
            }
        }
        Self {
            by_connect_timeout,
            base_urls,
            replicas,
            error,
        }
    }

    /// The base URL a call of this route goes to, and the count of the
    /// replica it is made on (when the route has replicas).
    fn base<'a>(
        &'a self,
        route: &'a Route,
        prefix_key: Option<i64>,
    ) -> (&'a str, Option<ReplicaCall<'a>>) {
        match self.replicas.get(&route.url) {
            None => (route.url.as_str(), None),
            Some(r) => {
                let i = r.pick(prefix_key);
                r.in_flight[i].fetch_add(1, Relaxed);
                metrics::counter!("fusillade_replica_calls_total", "url" => r.urls[i].clone())
                    .increment(1);
                (
                    r.urls[i].as_str(),
                    Some(ReplicaCall {
                        replicas: r,
                        index: i,
                    }),
                )
            }
        }
    }

    /// `path` under the base URL, from the parsed base when there is one
    /// and the path is a plain path.
    fn url(&self, base: &str, path: &str) -> Option<reqwest::Url> {
        if path.contains(['?', '#']) {
            return None;
        }
        let mut url = self.base_urls.get(base)?.clone();
        let slash = if path.starts_with('/') { "" } else { "/" };
        let full = format!("{}{slash}{path}", url.path().trim_end_matches('/'));
        url.set_path(&full);
        Some(url)
    }

    fn get(&self, route: &Route) -> Result<&reqwest::Client, String> {
        self.by_connect_timeout
            .get(&route.connect_timeout)
            .ok_or_else(|| {
                self.error
                    .clone()
                    .unwrap_or_else(|| "no HTTP client for this route".to_owned())
            })
    }
}

/// When each limit of the call falls.
struct Limits {
    total: Instant,
    deadline: Option<Instant>,
}

impl Limits {
    /// The earliest of `phase_end`, the total and the deadline, with its name.
    fn earliest(&self, phase_end: Instant, phase: &'static str) -> (Instant, &'static str) {
        let mut best = (phase_end, phase);
        if self.total < best.0 {
            best = (self.total, "total");
        }
        if let Some(d) = self.deadline
            && d <= best.0
        {
            best = (d, "deadline");
        }
        best
    }
}

/// `start + d`, or far in the future when that overflows.
fn after(start: Instant, d: Duration) -> Instant {
    start
        .checked_add(d)
        .unwrap_or_else(|| start + Duration::from_secs(100 * 365 * 86_400))
}

pub(super) async fn send(
    config: &Config,
    clients: &Clients,
    req: &UpstreamRequest<'_>,
    prefix_key: Option<i64>,
) -> CallOutcome {
    let route = config.route(req.model);
    let client = match clients.get(route) {
        Ok(c) => c,
        Err(message) => return CallOutcome::ConnectionFailed { message },
    };
    let start = Instant::now();
    let deadline = match req.deadline {
        None => None,
        Some(d) => match (d - Utc::now()).to_std() {
            Ok(left) if !left.is_zero() => Some(after(start, left)),
            _ => return CallOutcome::TimedOut { phase: "deadline" },
        },
    };
    let limits = Limits {
        total: after(start, route.total_timeout),
        deadline,
    };
    let streamed = route
        .stream_paths
        .iter()
        .any(|p| p.trim_end_matches('/') == req.path.trim_end_matches('/'));
    let body = if streamed {
        streaming_body(req.path, req.body).unwrap_or_else(|| req.body.to_owned())
    } else {
        req.body.to_owned()
    };
    let body = match route.priority_hint {
        Some(hint) => super::priority::with_hint(hint, &body, req.deadline, chrono::Utc::now())
            .unwrap_or(body),
        None => body,
    };
    let (route_base, replica) = if req.endpoint_override.is_empty() {
        clients.base(route, prefix_key)
    } else {
        (route.url.as_str(), None)
    };
    let parsed = if req.endpoint_override.is_empty() {
        clients.url(route_base, req.path)
    } else {
        None
    };
    let headers = match headers(route, req) {
        Ok(h) => h,
        Err(message) => return CallOutcome::ConnectionFailed { message },
    };
    let builder = match parsed {
        Some(url) => client.post(url),
        None => {
            let base = if req.endpoint_override.is_empty() {
                route_base
            } else {
                req.endpoint_override
            };
            let base = base.trim_end_matches('/');
            let slash = if req.path.starts_with('/') { "" } else { "/" };
            client.post(format!("{base}{slash}{}", req.path))
        }
    };
    let sending = builder.headers(headers).body(body).send();
    let (at, phase) = limits.earliest(after(start, route.first_byte_timeout), "first_byte");
    let replica_failed = || {
        if let Some(r) = &replica {
            r.failed();
        }
    };
    let response = match tokio::time::timeout_at(at, sending).await {
        Err(_) => {
            if phase == "first_byte" {
                replica_failed();
            }
            return CallOutcome::TimedOut { phase };
        }
        Ok(Err(e)) if e.is_connect() && e.is_timeout() => {
            replica_failed();
            return CallOutcome::TimedOut { phase: "connect" };
        }
        Ok(Err(e)) => {
            if e.is_connect() {
                replica_failed();
            }
            return CallOutcome::ConnectionFailed {
                message: scrub(error_chain(e), route),
            };
        }
        Ok(Ok(r)) => r,
    };
    let status = response.status().as_u16();
    let h = response.headers();
    let upstream_request_id = h
        .get("x-request-id")
        .or_else(|| h.get("request-id"))
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let retry_after = retry_after(h);
    let is_sse = h
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
    let limit = route.max_response_bytes;
    let body = if streamed && is_sse && (200..300).contains(&status) {
        match read_stream(response, &limits, route).await {
            Ok(body) => body.into_bytes(),
            Err(ReadEnd::Upstream(body)) => {
                // The upstream broke off with an error after a 2xx start: a
                // server-side failure, retryable like one.
                return CallOutcome::Answered {
                    status: 502,
                    body: body.into_bytes(),
                    upstream_request_id,
                    retry_after,
                };
            }
            Err(ReadEnd::Outcome(o)) => return o,
        }
    } else {
        match read_body(response, &limits, route).await {
            // Kept as bytes: whatever the upstream sent is stored as sent.
            Ok(bytes) => bytes,
            Err(o) => return o,
        }
    };
    if body.len() as u64 > limit {
        return CallOutcome::BodyTooLarge { limit };
    }
    CallOutcome::Answered {
        status,
        body,
        upstream_request_id,
        retry_after,
    }
}

fn headers(route: &Route, req: &UpstreamRequest<'_>) -> Result<HeaderMap, String> {
    let mut h = HeaderMap::with_capacity(6);
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(key) = &route.api_key {
        let mut v = HeaderValue::try_from(format!("Bearer {key}"))
            .map_err(|_| "the route's api key is not a valid header value".to_owned())?;
        v.set_sensitive(true);
        h.insert(AUTHORIZATION, v);
    }
    let id = HeaderValue::try_from(req.request_id.to_string()).expect("a uuid is a header value");
    h.insert("x-request-id", id.clone());
    h.insert("x-fusillade-request-id", id);
    if let Some(b) = req.batch_id {
        let v = HeaderValue::try_from(b.to_string()).expect("a uuid is a header value");
        h.insert("x-fusillade-batch-id", v);
    }
    if let Some(c) = req.custom_id {
        let v = HeaderValue::try_from(super::header_text::encode(c))
            .expect("an encoded custom_id is a header value");
        h.insert("x-fusillade-custom-id", v);
    }
    if route.traceparent {
        let trace = req.batch_id.map_or(req.request_id.0, |b| b.0);
        let v = HeaderValue::try_from(super::trace::traceparent(trace))
            .expect("hex digits are a header value");
        h.insert("traceparent", v);
    }
    Ok(h)
}

/// The body of a streamed call: the request's JSON object with `"stream": true`,
/// and, for chat completions, usage asked for in the last chunk. `None` when
/// the body is not a JSON object (it is then sent as is).
fn streaming_body(path: &str, body: &str) -> Option<String> {
    // Values stay as written; only the order of the keys may change.
    let mut map: BTreeMap<String, Box<RawValue>> = serde_json::from_str(body).ok()?;
    let raw = |s: &str| RawValue::from_string(s.to_owned()).expect("valid JSON");
    map.insert("stream".into(), raw("true"));
    if path.trim_end_matches('/').ends_with("/chat/completions") {
        map.entry("stream_options".into())
            .or_insert_with(|| raw(r#"{"include_usage":true}"#));
    }
    serde_json::to_string(&map).ok()
}

/// The wait asked for: `retry-after-ms` (milliseconds) if usable, else `Retry-After`.
fn retry_after(h: &HeaderMap) -> Option<Duration> {
    let ms = h
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map(|v| Duration::from_secs_f64(v / 1000.0));
    ms.or_else(|| {
        h.get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, Utc::now()))
    })
}

/// The next chunk of the body, within the idle timeout and the call's limits.
async fn next_chunk(
    response: &mut reqwest::Response,
    limits: &Limits,
    route: &Route,
) -> Result<Option<bytes::Bytes>, CallOutcome> {
    let (at, phase) = limits.earliest(after(Instant::now(), route.idle_timeout), "idle");
    match tokio::time::timeout_at(at, response.chunk()).await {
        Err(_) => Err(CallOutcome::TimedOut { phase }),
        Ok(Err(e)) => Err(CallOutcome::ConnectionFailed {
            message: scrub(format!("reading the answer: {}", error_chain(e)), route),
        }),
        Ok(Ok(chunk)) => Ok(chunk),
    }
}

async fn read_body(
    mut response: reqwest::Response,
    limits: &Limits,
    route: &Route,
) -> Result<Vec<u8>, CallOutcome> {
    let limit = route.max_response_bytes;
    let too_large = CallOutcome::BodyTooLarge { limit };
    let expected = response.content_length();
    if expected.is_some_and(|n| n > limit) {
        return Err(too_large);
    }
    let mut body: Vec<u8> = Vec::new();
    while let Some(chunk) = next_chunk(&mut response, limits, route).await? {
        if (body.len() + chunk.len()) as u64 > limit {
            return Err(too_large);
        }
        if body.is_empty() {
            // The first chunk is often the whole answer: no copy when it is not shared.
            body = chunk.into();
        } else {
            body.extend_from_slice(&chunk);
        }
    }
    Ok(body)
}

enum ReadEnd {
    /// An error event: its JSON.
    Upstream(String),
    Outcome(CallOutcome),
}

impl From<CallOutcome> for ReadEnd {
    fn from(o: CallOutcome) -> Self {
        ReadEnd::Outcome(o)
    }
}

async fn read_stream(
    mut response: reqwest::Response,
    limits: &Limits,
    route: &Route,
) -> Result<String, ReadEnd> {
    let limit = route.max_response_bytes;
    let mut parser = SseParser::new();
    let mut answer = Reassembler::new();
    while let Some(chunk) = next_chunk(&mut response, limits, route).await? {
        parser.feed(&chunk, &mut |data| answer.event(data));
        if (parser.pending_len() + answer.approx_size()) as u64 > limit {
            return Err(CallOutcome::BodyTooLarge { limit }.into());
        }
    }
    parser.finish(&mut |data| answer.event(data));
    match answer.finish() {
        Ok(body) => Ok(body),
        Err(StreamEnd::UpstreamError(body)) => Err(ReadEnd::Upstream(body)),
        Err(StreamEnd::Incomplete(why)) => Err(CallOutcome::ConnectionFailed {
            message: why.to_owned(),
        }
        .into()),
    }
}

/// An error and its causes, without the URL, as one line.
fn error_chain(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        let s_text = s.to_string();
        if !message.ends_with(&s_text) {
            message.push_str(": ");
            message.push_str(&s_text);
        }
        source = s.source();
    }
    message
}

/// Makes sure the route's key appears nowhere in `message`.
fn scrub(message: String, route: &Route) -> String {
    match &route.api_key {
        Some(key) if !key.is_empty() && message.contains(key.as_str()) => {
            message.replace(key.as_str(), "***")
        }
        _ => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replicas(n: usize, per_replica: u32) -> Replicas {
        Replicas {
            urls: (0..n).map(|i| format!("http://r{i}")).collect(),
            in_flight: (0..n).map(|_| AtomicU32::new(0)).collect(),
            per_replica,
            turn: AtomicUsize::new(0),
            down_until: (0..n).map(|_| AtomicU64::new(0)).collect(),
            epoch: std::time::Instant::now(),
        }
    }

    #[test]
    fn a_failed_replica_is_left_out_until_all_are() {
        let r = replicas(2, 5);
        let home = r.pick(Some(4));
        r.failed(home);
        assert_ne!(r.pick(Some(4)), home);
        assert!((0..4).all(|_| r.pick(None) != home));
        r.failed(1 - home);
        // All out: the group's own again.
        assert_eq!(r.pick(Some(4)), home);
    }

    #[test]
    fn a_group_goes_home_while_its_replica_has_room() {
        let r = replicas(3, 2);
        let home = r.pick(Some(7));
        assert_eq!(home, 7 % 3);
        r.in_flight[home].store(1, Relaxed);
        assert_eq!(r.pick(Some(7)), home);
        // Full: the least busy other one takes it.
        r.in_flight[home].store(2, Relaxed);
        r.in_flight[(home + 1) % 3].store(1, Relaxed);
        assert_eq!(r.pick(Some(7)), (home + 2) % 3);
    }

    #[test]
    fn calls_of_no_group_go_round() {
        let r = replicas(2, 5);
        let picks: Vec<usize> = (0..4).map(|_| r.pick(None)).collect();
        assert_eq!(picks, [0, 1, 0, 1]);
        // Negative keys are keys too.
        assert!(r.pick(Some(-3)) < 2);
    }

    #[test]
    fn streaming_body_sets_stream_and_usage() {
        let b = streaming_body(
            "/v1/chat/completions",
            r#"{"model":"m","n":1.10,"stream":false}"#,
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["stream"], true);
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert!(b.contains("1.10"), "values are kept as written: {b}");
        let b = streaming_body(
            "/v1/chat/completions",
            r#"{"model":"m","stream_options":{"include_usage":false}}"#,
        )
        .unwrap();
        assert!(b.contains(r#""stream_options":{"include_usage":false}"#));
        let b = streaming_body("/v1/completions", r#"{"model":"m"}"#).unwrap();
        assert_eq!(b, r#"{"model":"m","stream":true}"#);
        assert_eq!(streaming_body("/v1/completions", "[1]"), None);
        assert_eq!(streaming_body("/v1/completions", "nope"), None);
    }

    #[test]
    fn retry_after_prefers_milliseconds() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(RETRY_AFTER, HeaderValue::from_static("2"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", HeaderValue::from_static("150"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(150)));
        h.insert("retry-after-ms", HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
    }

    #[test]
    fn limits_pick_the_earliest() {
        let now = Instant::now();
        let s = Duration::from_secs;
        let l = Limits {
            total: now + s(10),
            deadline: Some(now + s(5)),
        };
        assert_eq!(
            l.earliest(now + s(1), "first_byte"),
            (now + s(1), "first_byte")
        );
        assert_eq!(l.earliest(now + s(7), "idle"), (now + s(5), "deadline"));
        let l = Limits {
            total: now + s(3),
            deadline: Some(now + s(5)),
        };
        assert_eq!(l.earliest(now + s(7), "idle"), (now + s(3), "total"));
        let l = Limits {
            total: now + s(3),
            deadline: None,
        };
        assert_eq!(l.earliest(now + s(1), "idle"), (now + s(1), "idle"));
    }

    #[test]
    fn keys_are_scrubbed() {
        let mut route = Config::default().upstream;
        route.api_key = Some("sk-secret".into());
        assert_eq!(scrub("x sk-secret y".into(), &route), "x *** y");
        assert_eq!(scrub("fine".into(), &route), "fine");
    }
}
