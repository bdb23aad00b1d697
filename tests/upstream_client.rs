//! The real `UpstreamClient` against the mock upstream (and, for the idle
//! timeout, a raw TCP server that stalls mid-body).

use fusillade::config::Config;
use fusillade::domain::ids::RequestId;
use fusillade::domain::retry::{Class, classify};
use fusillade::mock::{MOCK_CONTENT, MockBehavior, MockCall, MockReply, MockUpstream};
use fusillade::upstream::{CallOutcome, UpstreamClient, UpstreamRequest};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KEY: &str = "sk-test-secret-key";
const CHAT: &str = "/v1/chat/completions";

/// A client whose every route goes to `url`, with `extra` lines in `[upstream]`.
fn client(url: &str, extra: &str) -> UpstreamClient {
    let text = format!("[upstream]\nurl = \"{url}\"\napi_key_env = \"UP_KEY\"\n{extra}\n");
    let config = Config::parse(&text, "t", &|k| (k == "UP_KEY").then(|| KEY.to_owned()))
        .expect("a valid config");
    UpstreamClient::new(Arc::new(config))
}

fn request<'a>(body: &'a str) -> UpstreamRequest<'a> {
    UpstreamRequest {
        request_id: RequestId::new(),
        batch_id: None,
        custom_id: Some("line-1"),
        model: "m",
        path: CHAT,
        body,
        endpoint_override: "",
        deadline: None,
    }
}

const BODY: &str =
    r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0.50}"#;

/// A mock that records every call and answers with `reply`.
async fn recording(
    reply: impl Fn(&MockCall) -> MockReply + Send + Sync + 'static,
) -> (MockUpstream, Arc<Mutex<Vec<MockCall>>>) {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let seen = calls.clone();
    let mock = MockUpstream::start(MockBehavior::default().respond(move |call| {
        seen.lock().unwrap().push(call.clone());
        reply(call)
    }))
    .await;
    (mock, calls)
}

/// A port on 127.0.0.1 that nobody listens on.
async fn dead_url() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("http://127.0.0.1:{port}")
}

fn answered(outcome: CallOutcome) -> (u16, String, Option<String>, Option<Duration>) {
    match outcome {
        CallOutcome::Answered {
            status,
            body,
            upstream_request_id,
            retry_after,
        } => (
            status,
            String::from_utf8(body).expect("a UTF-8 body"),
            upstream_request_id,
            retry_after,
        ),
        other => panic!("expected an answer, got {other:?}"),
    }
}

#[tokio::test]
async fn a_body_of_any_bytes_comes_back_as_sent() {
    const SENT: &[u8] = b"{\"a\":\"\0\"} \xff\xfe not UTF-8 \xc3";
    let mock =
        MockUpstream::start(MockBehavior::default().respond(|_| MockReply::bytes(200, SENT))).await;
    let c = client(&mock.url(), "");
    match c.send(&request(BODY)).await {
        CallOutcome::Answered { status, body, .. } => {
            assert_eq!((status, body.as_slice()), (200, SENT));
        }
        other => panic!("expected an answer, got {other:?}"),
    }
}

#[tokio::test]
async fn a_200_passes_through_with_its_headers() {
    let (mock, calls) = recording(MockReply::ok_for).await;
    let c = client(&mock.url(), "");
    let req = request(BODY);
    let (status, body, upstream_id, retry_after) = answered(c.send(&req).await);
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "m");
    assert_eq!(v["choices"][0]["message"]["content"], MOCK_CONTENT);
    assert!(upstream_id.is_some_and(|id| id.starts_with("mock-")));
    assert_eq!(retry_after, None);

    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(
        call.authorization.as_deref(),
        Some(&*format!("Bearer {KEY}"))
    );
    assert_eq!(call.request_id, Some(req.request_id.to_string()));
    assert_eq!(call.custom_id.as_deref(), Some("line-1"));
    assert_eq!(call.path, CHAT);
    assert_eq!(call.model, "m");
    assert_eq!(call.attempt, 1);
    // Not a streamed path: the body goes as given.
    assert_eq!(call.body, serde_json::from_str::<Value>(BODY).unwrap());
    assert!(call.body.get("stream").is_none());

    let stats = mock.stats();
    assert_eq!(stats.total_calls, 1);
    assert_eq!(stats.calls("m"), 1);
    assert_eq!(stats.call_times("line-1").len(), 1);
    mock.shutdown().await;
}

#[tokio::test]
async fn no_key_and_no_custom_id_send_no_header() {
    let (mock, calls) = recording(MockReply::ok_for).await;
    let config = Config::parse("", "t", &|_| None)
        .unwrap()
        .with_upstream_url(&mock.url())
        .unwrap();
    let c = UpstreamClient::new(Arc::new(config));
    let req = UpstreamRequest {
        custom_id: None,
        ..request(BODY)
    };
    assert_eq!(answered(c.send(&req).await).0, 200);
    let call = calls.lock().unwrap()[0].clone();
    assert_eq!(call.authorization, None);
    assert_eq!(call.custom_id, None);
}

#[tokio::test]
async fn a_custom_id_of_any_text_is_sent_and_read_back_whole() {
    // Header values are visible ASCII only: these once failed every call of
    // their line as "not a valid header value", so the line never ran.
    let (mock, calls) = recording(MockReply::ok_for).await;
    let c = client(&mock.url(), "");
    let ids = [
        "café au lait",
        "🚀",
        "100% sure",
        "tab\tand\nnewline",
        "%41",
    ];
    for id in ids {
        let req = UpstreamRequest {
            custom_id: Some(id),
            ..request(BODY)
        };
        assert_eq!(answered(c.send(&req).await).0, 200, "{id:?}");
    }
    let seen: Vec<_> = calls
        .lock()
        .unwrap()
        .iter()
        .map(|c| c.custom_id.clone())
        .collect();
    let want: Vec<_> = ids.iter().map(|id| Some(id.to_string())).collect();
    assert_eq!(seen, want);
}

#[tokio::test]
async fn statuses_bodies_and_retry_after_pass_through() {
    let (mock, _) = recording(|call| match call.body["case"].as_str() {
        Some("400") => MockReply::status(400, r#"{"error":{"message":"bad"}}"#),
        Some("429") => MockReply::status(429, "slow down").with_header("Retry-After", "1"),
        Some("503") => MockReply::status(503, "busy")
            .with_header("retry-after", "9")
            .with_header("retry-after-ms", "250")
            .with_header("request-id", "req-abc"),
        _ => MockReply::status(500, ""),
    })
    .await;
    let c = client(&mock.url(), "");

    let (status, body, _, retry_after) = answered(c.send(&request(r#"{"case":"400"}"#)).await);
    assert_eq!(
        (status, body.as_str()),
        (400, r#"{"error":{"message":"bad"}}"#)
    );
    assert_eq!(retry_after, None);

    let (status, body, _, retry_after) = answered(c.send(&request(r#"{"case":"429"}"#)).await);
    assert_eq!((status, body.as_str()), (429, "slow down"));
    assert_eq!(retry_after, Some(Duration::from_secs(1)));

    let (status, _, upstream_id, retry_after) =
        answered(c.send(&request(r#"{"case":"503"}"#)).await);
    assert_eq!(status, 503);
    assert_eq!(retry_after, Some(Duration::from_millis(250)));
    // x-request-id comes first; the mock sets it, so the scripted one is replaced.
    assert!(upstream_id.is_some());

    let (status, body, ..) = answered(c.send(&request("{}")).await);
    assert_eq!((status, body.as_str()), (500, ""));
    // The attempts of one custom_id are counted.
    assert_eq!(mock.stats().call_times("line-1").len(), 4);
}

#[tokio::test]
async fn a_hanging_upstream_times_out_at_first_byte_and_the_mock_sees_it_end() {
    let mock = MockUpstream::start(MockBehavior::default().respond(|_| MockReply::hanging())).await;
    let c = client(&mock.url(), "first_byte_timeout_ms = 200");
    assert_eq!(
        c.send(&request(BODY)).await,
        CallOutcome::TimedOut {
            phase: "first_byte"
        }
    );
    // The client gave up and closed the connection: the call is no longer in flight.
    assert!(
        mock.wait_until(Duration::from_secs(10), |s| s.in_flight == 0)
            .await,
        "the abandoned call stays in flight"
    );
    let s = mock.stats();
    assert_eq!(
        (s.total_calls, s.max_in_flight, s.max_in_flight_of("m")),
        (1, 1, 1)
    );
    mock.shutdown().await;
}

#[tokio::test]
async fn the_deadline_caps_the_call() {
    let mock = MockUpstream::start(MockBehavior::default().respond(|_| MockReply::hanging())).await;
    let c = client(&mock.url(), "");
    let req = UpstreamRequest {
        deadline: Some(chrono::Utc::now() + chrono::Duration::milliseconds(300)),
        ..request(BODY)
    };
    assert_eq!(
        c.send(&req).await,
        CallOutcome::TimedOut { phase: "deadline" }
    );
    // A deadline already past sends nothing.
    let req = UpstreamRequest {
        deadline: Some(chrono::Utc::now() - chrono::Duration::seconds(1)),
        ..request(BODY)
    };
    assert_eq!(
        c.send(&req).await,
        CallOutcome::TimedOut { phase: "deadline" }
    );
    assert_eq!(mock.total_calls(), 1);
}

#[tokio::test]
async fn the_total_timeout_caps_the_call() {
    let mock = MockUpstream::start(MockBehavior::default().respond(|_| MockReply::hanging())).await;
    let c = client(&mock.url(), "total_timeout_ms = 200");
    assert_eq!(
        c.send(&request(BODY)).await,
        CallOutcome::TimedOut { phase: "total" }
    );
}

/// A server that answers headers with this content type and part of a
/// chunked body, then stalls until the client goes away.
async fn stalling_server(content_type: &'static str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\n\
                     transfer-encoding: chunked\r\n\r\n10\r\ndata: {{\"a\": 1}}\n\n\r\n"
                );
                if socket.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                // Hold the connection until the client closes it.
                while matches!(socket.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    url
}

#[tokio::test]
async fn a_stalled_body_times_out_as_idle() {
    let url = stalling_server("application/json").await;
    let c = client(&url, "idle_timeout_ms = 200");
    assert_eq!(
        c.send(&request(BODY)).await,
        CallOutcome::TimedOut { phase: "idle" }
    );
}

#[tokio::test]
async fn a_stalled_stream_times_out_as_idle() {
    let url = stalling_server("text/event-stream").await;
    let c = client(
        &url,
        "idle_timeout_ms = 200\nstream_paths = [\"/v1/chat/completions\"]",
    );
    assert_eq!(
        c.send(&request(BODY)).await,
        CallOutcome::TimedOut { phase: "idle" }
    );
}

#[tokio::test]
async fn a_connection_that_never_opens_times_out_as_connect() {
    // A listener that never accepts, with its queue filled: the handshake of
    // one more connection gets no answer.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    let _listener = socket.listen(0).unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        let connecting = tokio::net::TcpStream::connect(addr);
        match tokio::time::timeout(Duration::from_millis(300), connecting).await {
            Ok(Ok(s)) => fillers.push(s),
            _ => break, // the queue is full
        }
    }
    assert!(
        !fillers.is_empty(),
        "the queue takes at least one connection"
    );
    // Were the queue not full, the call would end at first_byte instead.
    let c = client(
        &format!("http://{addr}"),
        "connect_timeout_ms = 200\nfirst_byte_timeout_ms = 5000",
    );
    assert_eq!(
        c.send(&request(BODY)).await,
        CallOutcome::TimedOut { phase: "connect" }
    );
}

#[tokio::test]
async fn a_redirect_is_an_answer() {
    let (mock, _) =
        recording(|_| MockReply::status(307, "").with_header("location", "http://127.0.0.1:9/"))
            .await;
    let c = client(&mock.url(), "");
    assert_eq!(answered(c.send(&request(BODY)).await).0, 307);
}

#[tokio::test]
async fn connection_refused_is_a_connection_failure_without_the_key() {
    let c = client(&dead_url().await, "");
    match c.send(&request(BODY)).await {
        CallOutcome::ConnectionFailed { message } => {
            assert!(!message.is_empty());
            assert!(!message.contains(KEY), "{message}");
        }
        other => panic!("expected a connection failure, got {other:?}"),
    }
}

#[tokio::test]
async fn a_body_over_the_limit_is_too_large() {
    let mock = MockUpstream::start(MockBehavior::default()).await;
    let c = client(&mock.url(), "max_response_bytes = 100");
    let outcome = c.send(&request(BODY)).await;
    assert_eq!(outcome, CallOutcome::BodyTooLarge { limit: 100 });
    // Asking again would fetch the same answer: not retried.
    assert_eq!(classify(&outcome.attempt()), Class::Fatal);
    // At the limit exactly, it is kept.
    let (mock, _) = recording(|_| MockReply::status(200, "x".repeat(100))).await;
    let c = client(&mock.url(), "max_response_bytes = 100");
    assert_eq!(answered(c.send(&request(BODY)).await).1.len(), 100);
}

#[tokio::test]
async fn endpoint_override_wins_over_the_route() {
    let (mock, calls) = recording(MockReply::ok_for).await;
    let c = client(&dead_url().await, "");
    let url = format!("{}/", mock.url());
    let req = UpstreamRequest {
        endpoint_override: &url,
        ..request(BODY)
    };
    assert_eq!(answered(c.send(&req).await).0, 200);
    assert_eq!(calls.lock().unwrap()[0].path, CHAT);
}

#[tokio::test]
async fn a_streamed_path_is_sent_with_stream_and_reassembled() {
    let (mock, calls) = recording(|call| match call.body["case"].as_str() {
        Some("plain") => MockReply::ok_for(call),
        Some("error") => MockReply::status(400, r#"{"error":"no"}"#),
        Some("broken") => MockReply::status(
            200,
            "data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}]}\n\n",
        )
        .with_sse(),
        Some("midway") => MockReply::status(
            200,
            "data: {\"error\":{\"message\":\"overloaded\"}}\n\n",
        )
        .with_sse(),
        _ => {
            let mut answer = MockReply::ok_for(call);
            let mut v: Value = serde_json::from_str(&answer.body).unwrap();
            v["choices"][0]["message"]["tool_calls"] = json!([{
                "id": "call_1", "type": "function",
                "function": {"name": "lookup", "arguments": "{\"q\": \"a longer argument\"}"}
            }]);
            answer.body = v.to_string();
            answer.with_sse()
        }
    })
    .await;
    let c = client(&mock.url(), "stream_paths = [\"/v1/chat/completions\"]");
    let body = r#"{"model":"m","messages":[]}"#;
    let (status, text, upstream_id, _) = answered(c.send(&request(body)).await);
    assert_eq!(status, 200);
    assert!(upstream_id.is_some());
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "m");
    let choice = &v["choices"][0];
    assert_eq!(choice["message"]["content"], MOCK_CONTENT);
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(
        choice["message"]["tool_calls"][0]["function"]["arguments"],
        "{\"q\": \"a longer argument\"}"
    );
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(v["usage"]["total_tokens"], 17);
    let sent = calls.lock().unwrap()[0].body.clone();
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["stream_options"], json!({"include_usage": true}));
    assert_eq!(sent["model"], "m");

    // A server that ignores `stream` and answers JSON: kept as is.
    let (status, text, ..) = answered(c.send(&request(r#"{"case":"plain"}"#)).await);
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["object"],
        "chat.completion"
    );
    // Errors before the stream: kept as is.
    let (status, text, ..) = answered(c.send(&request(r#"{"case":"error"}"#)).await);
    assert_eq!((status, text.as_str()), (400, r#"{"error":"no"}"#));
    // A stream cut short is a broken connection.
    assert!(matches!(
        c.send(&request(r#"{"case":"broken"}"#)).await,
        CallOutcome::ConnectionFailed { .. }
    ));
    // An error event after a 2xx start is a 502 carrying it.
    let (status, text, ..) = answered(c.send(&request(r#"{"case":"midway"}"#)).await);
    assert_eq!(status, 502);
    assert!(text.contains("overloaded"));
}

#[tokio::test]
async fn a_streamed_answer_over_the_limit_is_too_large() {
    let mock = MockUpstream::start(MockBehavior::default().respond(|call| {
        let mut answer = MockReply::ok_for(call);
        let mut v: Value = serde_json::from_str(&answer.body).unwrap();
        v["choices"][0]["message"]["content"] = "word ".repeat(400).into();
        answer.body = v.to_string();
        answer.with_sse()
    }))
    .await;
    let c = client(
        &mock.url(),
        "stream_paths = [\"/v1/chat/completions\"]\nmax_response_bytes = 1000",
    );
    assert_eq!(
        c.send(&request(BODY)).await,
        CallOutcome::BodyTooLarge { limit: 1000 }
    );
}

/// A TCP relay in front of the mock that counts the connections it
/// accepts, and holds every answer back until the gate opens, so that
/// calls stay in flight together as long as the test wants.
struct GatedRelay {
    url: String,
    connections: Arc<std::sync::atomic::AtomicUsize>,
    gate: tokio::sync::watch::Sender<bool>,
}

impl GatedRelay {
    async fn start(target: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (gate, open) = tokio::sync::watch::channel(false);
        let count = connections.clone();
        tokio::spawn(async move {
            loop {
                let (client, _) = listener.accept().await.unwrap();
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut open = open.clone();
                tokio::spawn(async move {
                    let server = tokio::net::TcpStream::connect(target).await.unwrap();
                    let (mut client_rx, mut client_tx) = client.into_split();
                    let (mut server_rx, mut server_tx) = server.into_split();
                    let up = tokio::io::copy(&mut client_rx, &mut server_tx);
                    let down = async {
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            let n = server_rx.read(&mut buf).await?;
                            if n == 0 {
                                return Ok::<_, std::io::Error>(());
                            }
                            let _ = open.wait_for(|o| *o).await;
                            client_tx.write_all(&buf[..n]).await?;
                        }
                    };
                    let _ = tokio::join!(up, down);
                });
            }
        });
        Self {
            url,
            connections,
            gate,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[tokio::test]
async fn many_concurrent_calls_reuse_the_pool() {
    const N: usize = 50;
    let mock = MockUpstream::start(MockBehavior::default()).await;
    let relay = GatedRelay::start(mock.addr()).await;
    let c = client(&relay.url, "");
    let wave = |tag: &'static str| {
        let calls = (0..N).map(|i| {
            let c = c.clone();
            async move {
                let id = format!("{tag}{i}");
                let req = UpstreamRequest {
                    custom_id: Some(&id),
                    ..request(BODY)
                };
                answered(c.send(&req).await).0
            }
        });
        tokio::spawn(futures_util::future::join_all(calls))
    };
    // All N calls reach the upstream while none has its answer: they run
    // at once, each on a connection of its own.
    let first = wave("a");
    let all_sent = mock
        .wait_until(Duration::from_secs(60), |s| s.total_calls == N as u64)
        .await;
    assert!(
        all_sent,
        "only {} calls were sent at once",
        mock.total_calls()
    );
    assert_eq!(relay.connections(), N);
    relay.gate.send(true).unwrap();
    let statuses = first.await.unwrap();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");

    // The next N calls at once go over the same N connections.
    relay.gate.send(false).unwrap();
    let second = wave("b");
    let all_sent = mock
        .wait_until(Duration::from_secs(60), |s| s.total_calls == 2 * N as u64)
        .await;
    assert!(
        all_sent,
        "{} calls of the second wave were sent",
        mock.total_calls() - N as u64
    );
    relay.gate.send(true).unwrap();
    let statuses = second.await.unwrap();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(
        relay.connections(),
        N,
        "the second wave opened new connections"
    );
    let s = mock.stats();
    assert_eq!(s.calls_by_custom_id.len(), 2 * N);
    assert_eq!(s.in_flight, 0);
}

#[tokio::test]
async fn the_path_goes_under_the_base_url_with_or_without_a_prefix() {
    let (mock, calls) = recording(MockReply::ok_for).await;
    for (base, expected) in [
        (mock.url(), CHAT.to_owned()),
        (format!("{}/", mock.url()), CHAT.to_owned()),
        (format!("{}/proxy/", mock.url()), format!("/proxy{CHAT}")),
        (format!("{}/proxy", mock.url()), format!("/proxy{CHAT}")),
    ] {
        let (status, ..) = answered(client(&base, "").send(&request(BODY)).await);
        assert_eq!(status, 200, "{base}");
        let path = calls.lock().unwrap().pop().unwrap().path;
        assert_eq!(path, expected, "{base}");
    }
    // A per-line endpoint overrides the route's base.
    let c = client(&dead_url().await, "");
    let over = format!("{}/other/", mock.url());
    let mut req = request(BODY);
    req.endpoint_override = &over;
    let (status, ..) = answered(c.send(&req).await);
    assert_eq!(status, 200);
    assert_eq!(
        calls.lock().unwrap().pop().unwrap().path,
        format!("/other{CHAT}")
    );
}

#[tokio::test]
async fn traceparent_is_sent_when_tracing_is_on_and_not_otherwise() {
    let (mock, calls) = recording(MockReply::ok_for).await;
    let batch = fusillade::domain::batch::BatchId::new();
    let req = UpstreamRequest {
        batch_id: Some(batch),
        ..request(BODY)
    };
    let off = client(&mock.url(), "");
    assert_eq!(answered(off.send(&req).await).0, 200);
    let on = client(&mock.url(), "traceparent = true");
    for _ in 0..2 {
        assert_eq!(answered(on.send(&req).await).0, 200);
    }
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls[0].traceparent, None, "tracing off: no header");
    let headers: Vec<String> = calls[1..]
        .iter()
        .map(|c| c.traceparent.clone().expect("tracing on: a traceparent"))
        .collect();
    for h in &headers {
        assert!(fusillade::upstream::trace::is_well_formed(h), "{h}");
        assert_eq!(&h[3..35], batch.0.simple().to_string(), "the batch's trace");
    }
    assert_ne!(headers[0][36..52], headers[1][36..52], "a span per attempt");
}
