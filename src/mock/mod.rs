//! A mock OpenAI-compatible upstream, **a helper for tests and benchmarks**
//! (not used by the service itself).
//!
//! [`MockUpstream::start`] binds an HTTP server to `127.0.0.1` that answers
//! every path. By default it waits [`MockBehavior::latency`] and answers 200
//! with a `chat.completion` echoing the request's `model`; a scripted
//! [`MockBehavior::responder`] can answer anything else: other statuses and
//! headers, delays, hanging calls, answers cut off halfway, SSE streams.
//! [`MockUpstream::stats`] tells how many calls came, per model, how many
//! were in flight at most, and when each call of a `custom_id` arrived (to
//! check retry spacing); `GET /_stats` gives the counts as JSON.
//!
//! It is built to be cheap: with no responder, a call costs one small JSON
//! scan (only `model` is read) and a few atomic counters, so a benchmark can
//! push tens of thousands of calls per second through it. And it is built to
//! be exact: latencies and delays are held by one alarm thread per mock, to
//! within a fraction of a millisecond (see `alarm`), and the stats give the
//! first arrival and the last answer, the span a benchmark's rate is
//! measured over.
//!
//! ```no_run
//! use fusillade::mock::{MockBehavior, MockReply, MockUpstream};
//! use std::sync::Arc;
//!
//! # async fn demo() {
//! // Fail every first attempt with a 429, then answer.
//! let mock = MockUpstream::start(MockBehavior::default().with_responder(Arc::new(|call| {
//!     if call.attempt == 1 {
//!         MockReply::status(429, r#"{"error":"slow down"}"#).with_header("retry-after", "1")
//!     } else {
//!         MockReply::ok_for(call)
//!     }
//! })))
//! .await;
//! let base_url = mock.url(); // http://127.0.0.1:PORT
//! # let _ = base_url;
//! assert_eq!(mock.stats().total_calls, 0);
//! mock.shutdown().await;
//! # }
//! ```

mod alarm;
mod cache;
mod cache_args;
mod cached;
mod overload;
mod reply;
mod stats;
use reply::REPLY_SEQ;
mod simulate;
mod sse;

pub use cache::{CacheModel, CacheStats, answer_for, embedding_for, prompt_tokens};
pub use cache_args::CacheArgs;
pub use overload::Overload;
pub use reply::{MOCK_COMPLETION_TOKENS, MOCK_CONTENT, MOCK_PROMPT_TOKENS, MockReply};
pub use simulate::{Fault, LatencyDistribution, Simulation};

use alarm::Alarm;
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::serve::ListenerExt;
use serde::Deserialize;
use serde_json::Value;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A scripted answer: called once per call, on the server's task.
pub type Responder = Arc<dyn Fn(&MockCall) -> MockReply + Send + Sync>;

/// How the mock answers.
#[derive(Clone, Default)]
pub struct MockBehavior {
    /// Wait before answering (unless the reply sets its own `delay`).
    pub latency: Duration,
    /// Answers each call; `None` answers 200 with [`MockReply::ok_for`].
    pub responder: Option<Responder>,
    /// Serve as a server with a prefix cache would (see [`CacheModel`]):
    /// service times follow the cache, answers follow the prompt
    /// ([`answer_for`]), and `GET /_stats` gives the [`CacheStats`]. The
    /// latency and the responder are not used then.
    pub cache: Option<CacheModel>,
    /// Answer 429 to calls beyond a number in flight (see [`Overload`]).
    pub overload: Option<Overload>,
}

impl MockBehavior {
    /// Answers 200 after `latency`.
    pub fn with_latency(latency: Duration) -> Self {
        Self {
            latency,
            ..Self::default()
        }
    }

    /// Serves as a server with this prefix cache and costs.
    pub fn with_cache(model: CacheModel) -> Self {
        Self {
            cache: Some(model),
            ..Self::default()
        }
    }

    /// The same behavior, refusing calls beyond `overload.max_in_flight`.
    pub fn with_overload(mut self, overload: Overload) -> Self {
        self.overload = Some(overload);
        self
    }

    /// The same behavior, answering through `responder`.
    pub fn with_responder(mut self, responder: Responder) -> Self {
        self.responder = Some(responder);
        self
    }

    /// The same behavior, answering through the closure `f`.
    pub fn respond(self, f: impl Fn(&MockCall) -> MockReply + Send + Sync + 'static) -> Self {
        self.with_responder(Arc::new(f))
    }
}

impl fmt::Debug for MockBehavior {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockBehavior")
            .field("latency", &self.latency)
            .field("responder", &self.responder.as_ref().map(|_| "Fn"))
            .field("cache", &self.cache)
            .field("overload", &self.overload)
            .finish()
    }
}

/// One call as the responder sees it.
#[derive(Debug, Clone)]
pub struct MockCall {
    /// The body's `model` ("" when absent).
    pub model: String,
    /// The `X-Fusillade-Custom-Id` header.
    pub custom_id: Option<String>,
    /// The `X-Request-Id` header.
    pub request_id: Option<String>,
    /// The request path, such as `/v1/chat/completions`.
    pub path: String,
    /// Calls seen so far with this `custom_id`, this one included (1 without one).
    pub attempt: u32,
    /// The `Authorization` header.
    pub authorization: Option<String>,
    /// The body as JSON (`Null` when it is not JSON).
    pub body: Value,
    /// The W3C `traceparent` header.
    pub traceparent: Option<String>,
}

impl MockCall {
    /// The body as JSON (the same as [`MockCall::body`]).
    pub fn json(&self) -> &Value {
        &self.body
    }
}

/// A snapshot of what the mock saw.
#[derive(Debug, Clone, Default)]
pub struct MockStats {
    /// Calls received.
    pub total_calls: u64,
    /// Calls being handled now.
    pub in_flight: u64,
    /// Most calls handled at once.
    pub max_in_flight: u64,
    /// Calls received, per model.
    pub calls_per_model: BTreeMap<String, u64>,
    /// Calls being handled now, per model.
    pub in_flight_per_model: BTreeMap<String, u64>,
    /// Most calls of a model handled at once.
    pub max_in_flight_per_model: BTreeMap<String, u64>,
    /// When each call of a custom_id arrived, in order.
    pub calls_by_custom_id: HashMap<String, Vec<Instant>>,
    /// When the first call arrived.
    pub first_call_at: Option<Instant>,
    /// When the last answer was handed to the server to send.
    pub last_answer_at: Option<Instant>,
}

impl MockStats {
    /// Calls received for `model`.
    pub fn calls(&self, model: &str) -> u64 {
        self.calls_per_model.get(model).copied().unwrap_or(0)
    }

    /// Most calls of `model` handled at once.
    pub fn max_in_flight_of(&self, model: &str) -> u64 {
        self.max_in_flight_per_model
            .get(model)
            .copied()
            .unwrap_or(0)
    }

    /// When each call with this custom_id arrived.
    pub fn call_times(&self, custom_id: &str) -> &[Instant] {
        self.calls_by_custom_id
            .get(custom_id)
            .map_or(&[], Vec::as_slice)
    }
}

#[derive(Debug, Default)]
struct ModelCounters {
    calls: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
}

struct Shared {
    behavior: MockBehavior,
    stop: CancellationToken,
    total: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    seq: AtomicU64,
    created: u64,
    models: RwLock<HashMap<String, Arc<ModelCounters>>>,
    by_custom_id: Mutex<HashMap<String, Vec<Instant>>>,
    alarm: Alarm,
    /// The instant the two marks below count nanoseconds from.
    epoch: Instant,
    /// First arrival, in nanoseconds after `epoch` (`u64::MAX`: none yet).
    first_call: AtomicU64,
    /// Last answer, in nanoseconds after `epoch` (0: none yet).
    last_answer: AtomicU64,
    /// The prefix cache, in cache-modelling mode.
    cache: Option<cache::PrefixCache>,
    /// Calls in flight per batch, and overload refusals.
    tally: overload::Tally,
}

impl Shared {
    fn model(&self, model: &str) -> Arc<ModelCounters> {
        if let Some(c) = self.models.read().expect("not poisoned").get(model) {
            return c.clone();
        }
        self.models
            .write()
            .expect("not poisoned")
            .entry(model.to_owned())
            .or_default()
            .clone()
    }

    /// Records a call of `custom_id`; returns its 1-based number.
    fn record(&self, custom_id: &str, at: Instant) -> u32 {
        let mut map = self.by_custom_id.lock().expect("not poisoned");
        let times = match map.get_mut(custom_id) {
            Some(t) => t,
            None => map.entry(custom_id.to_owned()).or_default(),
        };
        times.push(at);
        u32::try_from(times.len()).unwrap_or(u32::MAX)
    }

    fn snapshot(&self) -> MockStats {
        let mut s = self.counters();
        s.calls_by_custom_id = self.by_custom_id.lock().expect("not poisoned").clone();
        s
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX - 1)
    }

    fn counters(&self) -> MockStats {
        let first = self.first_call.load(Relaxed);
        let last = self.last_answer.load(Relaxed);
        let mut s = MockStats {
            total_calls: self.total.load(Relaxed),
            in_flight: self.in_flight.load(Relaxed),
            max_in_flight: self.max_in_flight.load(Relaxed),
            first_call_at: (first != u64::MAX).then(|| self.epoch + Duration::from_nanos(first)),
            last_answer_at: (last != 0).then(|| self.epoch + Duration::from_nanos(last)),
            ..MockStats::default()
        };
        for (name, c) in self.models.read().expect("not poisoned").iter() {
            s.calls_per_model
                .insert(name.clone(), c.calls.load(Relaxed));
            s.in_flight_per_model
                .insert(name.clone(), c.in_flight.load(Relaxed));
            s.max_in_flight_per_model
                .insert(name.clone(), c.max_in_flight.load(Relaxed));
        }
        s
    }
}

/// Counts a call in flight from its creation until it is dropped, which
/// happens when the handler answers or when its future is dropped because
/// the client went away.
struct InFlight<'a> {
    shared: &'a Shared,
    model: &'a ModelCounters,
}

impl<'a> InFlight<'a> {
    fn enter(shared: &'a Shared, model: &'a ModelCounters) -> Self {
        model.calls.fetch_add(1, Relaxed);
        let n = model.in_flight.fetch_add(1, Relaxed) + 1;
        model.max_in_flight.fetch_max(n, Relaxed);
        let n = shared.in_flight.fetch_add(1, Relaxed) + 1;
        shared.max_in_flight.fetch_max(n, Relaxed);
        Self { shared, model }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.model.in_flight.fetch_sub(1, Relaxed);
        self.shared.in_flight.fetch_sub(1, Relaxed);
    }
}

/// A running mock server; stopped by [`MockUpstream::shutdown`] or on drop.
pub struct MockUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
}

impl fmt::Debug for MockUpstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockUpstream")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl MockUpstream {
    /// Starts a mock on a free port of 127.0.0.1.
    ///
    /// # Panics
    /// When no port can be bound (it is a test helper).
    pub async fn start(behavior: MockBehavior) -> Self {
        Self::start_on(0, behavior)
            .await
            .expect("binding the mock upstream to 127.0.0.1")
    }

    /// Starts a mock on this port of 127.0.0.1 (0 for any free one).
    pub async fn start_on(port: u16, behavior: MockBehavior) -> std::io::Result<Self> {
        Self::start_at(SocketAddr::from(([127, 0, 0, 1], port)), behavior).await
    }

    /// Starts a mock on this address (port 0 for any free one).
    pub async fn start_at(addr: SocketAddr, behavior: MockBehavior) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let cache = behavior.cache.map(cache::PrefixCache::new);
        let shared = Arc::new(Shared {
            behavior,
            cache,
            stop: CancellationToken::new(),
            total: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            max_in_flight: AtomicU64::new(0),
            seq: AtomicU64::new(0),
            created,
            models: RwLock::default(),
            by_custom_id: Mutex::default(),
            alarm: Alarm::start()?,
            epoch: Instant::now(),
            first_call: AtomicU64::new(u64::MAX),
            last_answer: AtomicU64::new(0),
            tally: overload::Tally::default(),
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let stop = shared.stop.clone();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        });
        Ok(Self {
            addr,
            shared,
            task: Some(task),
        })
    }

    /// The base URL, such as `http://127.0.0.1:41234` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A snapshot of everything; it copies the call times of every
    /// custom_id (see [`MockUpstream::counters`] for a cheap one).
    pub fn stats(&self) -> MockStats {
        self.shared.snapshot()
    }

    /// The counters without `calls_by_custom_id` (left empty): cheap to poll
    /// even after millions of calls, unlike [`MockUpstream::stats`], which
    /// copies every custom_id's call times.
    pub fn counters(&self) -> MockStats {
        self.shared.counters()
    }

    /// What the prefix cache has served (`None` unless in cache-modelling mode).
    pub fn cache_stats(&self) -> Option<CacheStats> {
        self.shared.cache.as_ref().map(cache::PrefixCache::stats)
    }

    /// Calls received so far (cheaper than [`MockUpstream::stats`]).
    pub fn total_calls(&self) -> u64 {
        self.shared.total.load(Relaxed)
    }

    /// Calls being handled now per batch (by the `X-Fusillade-Batch-Id`
    /// header), over the batches seen so far.
    pub fn in_flight_per_batch(&self) -> HashMap<String, u64> {
        self.shared.tally.in_flight()
    }

    /// Calls answered 429 because more than [`Overload::max_in_flight`]
    /// were in flight.
    pub fn refused(&self) -> u64 {
        self.shared.tally.refused.load(Relaxed)
    }

    /// Calls being handled now (cheaper than [`MockUpstream::stats`]).
    pub fn in_flight(&self) -> u64 {
        self.shared.in_flight.load(Relaxed)
    }

    /// When each call with this custom_id arrived (cheaper than [`MockUpstream::stats`]).
    pub fn call_times(&self, custom_id: &str) -> Vec<Instant> {
        self.shared
            .by_custom_id
            .lock()
            .expect("not poisoned")
            .get(custom_id)
            .cloned()
            .unwrap_or_default()
    }

    /// Polls the stats every 10 ms until `done` holds or `timeout` passes;
    /// returns whether it held.
    pub async fn wait_until(&self, timeout: Duration, done: impl Fn(&MockStats) -> bool) -> bool {
        let end = tokio::time::Instant::now() + timeout;
        loop {
            if done(&self.stats()) {
                return true;
            }
            if tokio::time::Instant::now() >= end {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops accepting calls, ends hanging and delayed ones (with a 503),
    /// lets answers being sent finish, and waits for the server to stop
    /// (at most 5 s, then it is aborted).
    pub async fn shutdown(mut self) {
        self.shared.stop.cancel();
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(Duration::from_secs(5), &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.shared.stop.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The only part of a body the hot path reads.
#[derive(Deserialize)]
struct ModelOnly<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
}

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let arrived = Instant::now();
    if req.uri().path() == "/_stats" && req.method() == axum::http::Method::GET {
        return json_response(match &shared.cache {
            Some(cache) => serde_json::to_string(&cache.stats()).expect("serializes"),
            None => stats::json(&shared),
        });
    }
    shared.first_call.fetch_min(shared.nanos(arrived), Relaxed);
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return plain(StatusCode::BAD_REQUEST, "unreadable body");
    };
    if let Some(cache) = &shared.cache {
        return cached::serve(&shared, cache, parts.uri.path(), &bytes).await;
    }
    let model = serde_json::from_slice::<ModelOnly>(&bytes)
        .ok()
        .and_then(|m| m.model)
        .unwrap_or(Cow::Borrowed(""));
    let counters = shared.model(&model);
    let _in_flight = InFlight::enter(&shared, &counters);
    shared.total.fetch_add(1, Relaxed);
    let _batch = header_str(&parts.headers, "x-fusillade-batch-id").map(|b| shared.tally.enter(b));
    if let Some(o) = shared.behavior.overload
        && shared.in_flight.load(Relaxed) > o.max_in_flight
    {
        shared.tally.refused.fetch_add(1, Relaxed);
        let mut reply = MockReply::status(429, r#"{"error":{"message":"overloaded"}}"#);
        if let Some(after) = o.retry_after {
            reply = reply.with_header("retry-after", after.as_secs().to_string());
        }
        let request_id = HeaderValue::from_static("mock-overloaded");
        return scripted(reply, request_id);
    }
    let custom_id = header_str(&parts.headers, "x-fusillade-custom-id")
        .map(|v| crate::upstream::header_text::decode(v).unwrap_or_else(|| v.to_owned()));
    let custom_id = custom_id.as_deref();
    let attempt = custom_id.map_or(1, |c| shared.record(c, arrived));
    let reply = shared.behavior.responder.as_ref().map(|responder| {
        responder(&MockCall {
            model: model.clone().into_owned(),
            custom_id: custom_id.map(str::to_owned),
            request_id: header_str(&parts.headers, "x-request-id").map(str::to_owned),
            path: parts.uri.path().to_owned(),
            attempt,
            authorization: header_str(&parts.headers, "authorization").map(str::to_owned),
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            traceparent: header_str(&parts.headers, "traceparent").map(str::to_owned),
        })
    });
    let delay = reply
        .as_ref()
        .and_then(|r| r.delay)
        .unwrap_or(shared.behavior.latency);
    let hang = reply.as_ref().is_some_and(|r| r.hang);
    if hang {
        shared.stop.cancelled().await;
        return plain(StatusCode::SERVICE_UNAVAILABLE, "mock shutting down");
    }
    if !delay.is_zero() {
        tokio::select! {
            () = shared.alarm.until(Instant::now() + delay) => {}
            () = shared.stop.cancelled() => {
                return plain(StatusCode::SERVICE_UNAVAILABLE, "mock shutting down");
            }
        }
    }
    let seq = shared.seq.fetch_add(1, Relaxed);
    shared
        .last_answer
        .fetch_max(shared.nanos(Instant::now()), Relaxed);
    let request_id = HeaderValue::try_from(format!("mock-{seq}")).expect("ascii");
    match reply {
        None => {
            let body = completion_json_at(&model, seq, shared.created);
            let mut r = Response::new(Body::from(body));
            let h = r.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON));
            h.insert("x-request-id", request_id);
            r
        }
        Some(reply) => scripted(reply, request_id),
    }
}

const JSON: &str = "application/json";

fn json_response(body: String) -> Response {
    let mut r = Response::new(Body::from(body));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON));
    r
}

fn plain(status: StatusCode, text: &'static str) -> Response {
    let mut r = Response::new(Body::from(text));
    *r.status_mut() = status;
    r
}

fn scripted(reply: MockReply, request_id: HeaderValue) -> Response {
    let content_type = if reply.sse { "text/event-stream" } else { JSON };
    let body = if reply.reset {
        // An error from the body stream makes the server drop the
        // connection mid-answer, as a crashed or reset upstream would.
        let half = reply.body.as_bytes()[..reply.body.len() / 2].to_vec();
        let cut = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "mock reset");
        Body::from_stream(futures_util::stream::iter([Ok(half), Err(cut)]))
    } else if reply.sse {
        let events = sse::sse_events(&reply.body);
        Body::from_stream(futures_util::stream::iter(
            events.into_iter().map(Ok::<_, Infallible>),
        ))
    } else {
        reply
            .raw_body
            .map_or_else(|| Body::from(reply.body), Body::from)
    };
    let mut r = Response::new(body);
    *r.status_mut() =
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert("x-request-id", request_id);
    for (k, v) in reply.headers {
        if let (Ok(k), Ok(v)) = (
            HeaderName::try_from(k.as_str()),
            HeaderValue::try_from(v.as_str()),
        ) {
            h.insert(k, v);
        }
    }
    r
}

fn completion_json(model: &str) -> String {
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    completion_json_at(model, REPLY_SEQ.fetch_add(1, Relaxed), created)
}

/// An OpenAI `chat.completion`, written without building a JSON tree.
pub(crate) fn completion_json_at(model: &str, seq: u64, created: u64) -> String {
    let model = if model.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        serde_json::to_string(model).expect("a string serializes")
    } else {
        format!("\"{model}\"")
    };
    format!(
        concat!(
            r#"{{"id":"chatcmpl-mock-{seq}","object":"chat.completion","created":{created},"#,
            r#""model":{model},"system_fingerprint":"fp_mock","choices":[{{"index":0,"#,
            r#""message":{{"role":"assistant","content":"{content}"}},"logprobs":null,"#,
            r#""finish_reason":"stop"}}],"usage":{{"prompt_tokens":{p},"completion_tokens":{c},"#,
            r#""total_tokens":{t}}}}}"#
        ),
        seq = seq,
        created = created,
        model = model,
        content = MOCK_CONTENT,
        p = MOCK_PROMPT_TOKENS,
        c = MOCK_COMPLETION_TOKENS,
        t = MOCK_PROMPT_TOKENS + MOCK_COMPLETION_TOKENS,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_answer_is_a_chat_completion() {
        let v: Value = serde_json::from_str(&completion_json_at("m\"x", 3, 9)).unwrap();
        assert_eq!(v["model"], "m\"x");
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["id"], "chatcmpl-mock-3");
        assert_eq!(v["choices"][0]["message"]["content"], MOCK_CONTENT);
        assert_eq!(v["usage"]["total_tokens"], 17);
    }

    #[tokio::test]
    async fn a_reset_answer_is_cut_off() {
        let mock = MockUpstream::start(
            MockBehavior::default().respond(|call| MockReply::ok_for(call).with_reset()),
        )
        .await;
        let http = reqwest::Client::new();
        let sent = http.post(mock.url()).body(r#"{"model":"m"}"#).send().await;
        let read = match sent {
            Ok(r) => r.bytes().await.map(|_| ()),
            Err(e) => Err(e),
        };
        assert!(read.is_err(), "a reset answer must not read as whole");
        assert_eq!(mock.total_calls(), 1);
    }

    #[tokio::test]
    async fn a_call_the_client_gives_up_on_leaves_the_in_flight_count() {
        // The chaos suite checks per-model limits with these counts, so a
        // hanging call must stop counting once its client has gone.
        let mock =
            MockUpstream::start(MockBehavior::default().respond(|_| MockReply::hanging())).await;
        let http = reqwest::Client::new();
        let sent = http
            .post(mock.url())
            .body(r#"{"model":"m"}"#)
            .timeout(Duration::from_millis(300))
            .send()
            .await;
        assert!(sent.is_err());
        assert_eq!(mock.counters().max_in_flight_of("m"), 1);
        let gone = mock
            .wait_until(Duration::from_secs(30), |s| s.in_flight == 0)
            .await;
        assert!(gone, "the hanging call is still counted in flight");
    }
}
