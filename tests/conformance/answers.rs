//! One daemon meeting odd answers: upstream answers that text cannot hold
//! (NUL bytes, bytes that are not UTF-8) mixed into a batch of healthy
//! ones, and an answer too large to keep. Faults only PostgreSQL can plant
//! (killed connections, refusals by trigger, a killed process) stay in
//! tests/daemon_faults.rs and tests/daemon_poison.rs.

use super::*;
use crate::common::daemon::*;
use crate::common::{CHAT, chat_body, line_with};
use fusillade::domain::batch::BatchStatus;
use fusillade::mock::{MockBehavior, MockReply, MockUpstream};
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(120);

/// A JSON body with the escape `\u0000`: JSON, so it goes out unchanged.
const NUL_ESCAPE: &[u8] =
    br#"{"object":"chat.completion","choices":[{"message":{"content":"a\u0000b"}}]}"#;
/// A raw NUL byte inside what would be JSON: not JSON, so a string.
const NUL_RAW: &[u8] = b"{\"object\":\"chat.completion\",\"content\":\"a\0b\"}";
/// Text with a NUL.
const NUL_TEXT: &[u8] = b"plain text \0 with a NUL";
/// Bytes that are not UTF-8, a NUL and a quote among them.
const NOT_UTF8: &[u8] = b"\xff\xfe bad \xc3( \0 \"q\" \xe2\x82";
/// A final error whose body has a NUL: it goes to the error file.
const NUL_400: &[u8] = b"{\"error\":\"no\0pe\"}";

/// One line of an output or error file, its body kept as written.
#[derive(Deserialize)]
struct Line<'a> {
    custom_id: String,
    #[serde(borrow)]
    response: Option<Response<'a>>,
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Response<'a> {
    status_code: u16,
    #[serde(borrow)]
    body: &'a RawValue,
}

/// The bytes a JSON string literal carries, reading `\udcXY` as the byte
/// `0xXY` (Python's `surrogateescape`), as a client would decode it.
fn string_bytes(literal: &str) -> Vec<u8> {
    assert!(
        literal.starts_with('"') && literal.ends_with('"'),
        "{literal}"
    );
    let mut out = Vec::new();
    let mut chars = literal[1..literal.len() - 1].chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
            continue;
        }
        match chars.next().unwrap() {
            'u' => {
                let hex: String = chars.by_ref().take(4).collect();
                let n = u32::from_str_radix(&hex, 16).unwrap();
                match n {
                    0xdc80..=0xdcff => out.push((n & 0xff) as u8),
                    _ => {
                        let c = char::from_u32(n).expect("no other surrogate");
                        out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                    }
                }
            }
            'n' => out.push(b'\n'),
            'r' => out.push(b'\r'),
            't' => out.push(b'\t'),
            'b' => out.push(8),
            'f' => out.push(12),
            c @ ('"' | '\\' | '/') => out.push(c as u8),
            other => panic!("unknown escape \\{other}"),
        }
    }
    out
}

pub async fn answers_text_cannot_hold_land_exactly_and_never_block_the_batch<S: Backend>(
    store: &S,
) {
    let weird: [(&str, u16, &[u8]); 5] = [
        ("nul-escape", 200, NUL_ESCAPE),
        ("nul-raw", 200, NUL_RAW),
        ("nul-text", 200, NUL_TEXT),
        ("not-utf8", 200, NOT_UTF8),
        ("nul-400", 400, NUL_400),
    ];
    let answers: HashMap<String, (u16, Vec<u8>)> = weird
        .iter()
        .map(|(id, status, body)| (id.to_string(), (*status, body.to_vec())))
        .collect();
    let mock = MockUpstream::start(MockBehavior::default().respond(move |call| {
        match answers.get(call.custom_id.as_deref().unwrap_or("")) {
            Some((status, body)) => {
                MockReply::bytes(*status, body.clone()).with_delay(Duration::from_millis(20))
            }
            None => MockReply::ok_for(call).with_delay(Duration::from_millis(20)),
        }
    }))
    .await;
    // The odd answers sit among hundreds of healthy ones, so that each is
    // written in the same statements as many of them.
    let healthy = 400;
    let mut lines = lines_for("m", "ok-", healthy);
    for (i, (id, ..)) in weird.iter().enumerate() {
        lines.insert(40 + i * 70, line_with(id, CHAT, &chat_body("x", "m")));
    }
    let batch = batch_from_lines(store, &lines).await;
    // A generous stale window: this test is about the writes, and a daemon
    // starved of CPU must not be declared dead meanwhile.
    let cfg = config(
        &mock.url(),
        "concurrency = 64",
        "heartbeat_ms = 500\nstale_after_ms = 30000",
        "",
    );
    let daemon = start(store, cfg);
    let b = finished_batch(store, batch, LONG).await;
    daemon.stop().await;
    assert_eq!(b.status, BatchStatus::Completed);
    assert_eq!(
        (b.request_counts.completed, b.request_counts.failed),
        (healthy as i64 + 4, 1),
        "{:?}",
        b.request_counts
    );

    let output = String::from_utf8(collect(store.output_stream(batch)).await).unwrap();
    let errors = String::from_utf8(collect(store.error_stream(batch)).await).unwrap();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut bodies: HashMap<String, (u16, &str)> = HashMap::new();
    for text in output.lines().chain(errors.lines()) {
        let line: Line = serde_json::from_str(text).expect(text);
        *seen.entry(line.custom_id.clone()).or_default() += 1;
        let response = line.response.expect("every line here has a response");
        if line.custom_id.starts_with("ok-") {
            let body: serde_json::Value = serde_json::from_str(response.body.get()).unwrap();
            assert_eq!(body["object"], "chat.completion");
            assert_eq!(line.error, None);
        } else {
            bodies.insert(line.custom_id, (response.status_code, response.body.get()));
        }
    }
    assert_eq!(seen.len(), healthy + weird.len());
    assert!(seen.values().all(|&n| n == 1), "each line once");
    assert_eq!(output.lines().count(), healthy + 4);
    assert_eq!(errors.lines().count(), 1);

    // A JSON body goes out as the same JSON, byte for byte.
    assert_eq!(
        bodies["nul-escape"],
        (200, std::str::from_utf8(NUL_ESCAPE).unwrap())
    );
    // Anything else as a string that carries exactly the bytes sent.
    for (id, status, sent) in &weird[1..] {
        let (got_status, literal) = bodies[*id];
        assert_eq!(got_status, *status, "{id}");
        assert_eq!(string_bytes(literal), *sent, "{id}: {literal}");
    }
    assert_eq!(
        bodies["not-utf8"].1,
        r#""\udcff\udcfe bad \udcc3( \u0000 \"q\" \udce2\udc82""#
    );
    let failed: serde_json::Value = serde_json::from_str(errors.trim()).unwrap();
    assert_eq!(failed["custom_id"], "nul-400");
    assert_eq!(failed["error"]["code"], "upstream_error");
}

pub async fn an_oversized_answer_fails_its_line_without_a_retry<S: Backend>(store: &S) {
    // `big-*` lines get an answer of about 2 KB, over the 1,000-byte limit.
    let mock = MockUpstream::start(MockBehavior::default().respond(|call| {
        let mut answer = MockReply::ok_for(call);
        if call
            .custom_id
            .as_deref()
            .is_some_and(|c| c.starts_with("big-"))
        {
            let mut v: Value = serde_json::from_str(&answer.body).unwrap();
            v["choices"][0]["message"]["content"] = "word ".repeat(400).into();
            answer.body = v.to_string();
        }
        answer
    }))
    .await;
    let mut lines = lines_for("m", "big-", 2);
    lines.extend(lines_for("m", "ok-", 3));
    let batch = batch_from_lines(store, &lines).await;
    let daemon = start(
        store,
        config(
            &mock.url(),
            "max_response_bytes = 1000",
            "max_retries = 3",
            "",
        ),
    );
    let b = finished_batch(store, batch, LONG).await;
    daemon.stop().await;
    assert_eq!(b.status, BatchStatus::Completed);
    assert_eq!(
        (b.request_counts.completed, b.request_counts.failed),
        (3, 2)
    );
    let errors = json_lines(store.error_stream(batch)).await;
    assert_eq!(errors.len(), 2);
    for e in &errors {
        assert!(e["custom_id"].as_str().unwrap().starts_with("big-"), "{e}");
        assert_eq!(e["error"]["code"], "upstream_error", "{e}");
        assert_eq!(
            e["error"]["message"], "the upstream's answer was larger than 1000 bytes",
            "{e}"
        );
    }
    // Asked once each: a retry would fetch the same oversized answer.
    let stats = mock.stats();
    for i in 0..2 {
        assert_eq!(stats.call_times(&format!("big-{i}")).len(), 1, "big-{i}");
    }
    assert_eq!(stats.total_calls, 5);
}
