//! Generators of inputs that look enough like the real thing to get past the
//! first check, and go wrong in the ways clients and upstreams do: cut
//! short, mistyped, with NULs, multi-byte characters, stray CRs and BOMs.

use super::Data;
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{Value, json};

/// Strings that tend to break things, beside plain ones.
pub fn nasty_string() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z0-9_-]{1,12}",
        2 => any::<String>().prop_map(|s| s.chars().take(40).collect()),
        3 => select(vec![
            "", " ", "\0", "a\0b", "é", "✓", "😀", "\u{feff}", "\r\n", "\\", "\"",
            "24h", "1h", "90m", "0h", "1é", "é", "99999999999999999999h", "-1h", "h",
            "/v1/chat/completions", "/v1/embeddings", "/v1/other", "POST", "GET",
            "batch", "batch_output", "created_at", "asc", "desc", "null", "%00", "%FF",
            "file-", "batch_", "batch_req_", "00000000-0000-0000-0000-000000000000",
        ])
        .prop_map(str::to_owned),
        1 => "[a-z]{1,4}".prop_map(|s| s.repeat(200)),
    ]
}

/// Any JSON value, nested a little.
pub fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        nasty_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(nasty_string(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A string in JSON, sometimes with escapes for what it holds.
fn json_string() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => nasty_string().prop_map(|s| Value::String(s).to_string()),
        1 => select(vec![r#""\u0000""#, r#""\u00e9x""#, r#""a\"b""#, r#""\ud83d\ude00""#, r#""\ud800""#, r#""\x""#])
            .prop_map(str::to_owned),
        1 => json_value().prop_map(|v| v.to_string()),
    ]
}

/// One input line (without its ending): valid, or wrong in one of many ways.
pub fn jsonl_line() -> impl Strategy<Value = Vec<u8>> {
    let url = prop_oneof![
        4 => Just(r#""/v1/chat/completions""#.to_owned()),
        1 => Just(r#""/v1/embeddings""#.to_owned()),
        1 => json_string(),
    ];
    let method = prop_oneof![5 => Just(r#""POST""#.to_owned()), 1 => json_string()];
    let body = prop_oneof![
        5 => (json_string(), nasty_string()).prop_map(|(model, text)| {
            format!(r#"{{"model":{model},"messages":[{{"role":"user","content":{}}}]}}"#, Value::String(text))
        }),
        1 => json_value().prop_map(|v| v.to_string()),
    ];
    let valid =
        (json_string(), method, url, body, any::<bool>()).prop_map(|(id, m, u, b, spaced)| {
            let line = format!(r#"{{"custom_id":{id},"method":{m},"url":{u},"body":{b}}}"#);
            if spaced {
                line.replace(',', " , ").replace(':', ": ")
            } else {
                line
            }
            .into_bytes()
        });
    prop_oneof![
        8 => valid,
        1 => json_value().prop_map(|v| v.to_string().into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..40),
        1 => prop::collection::vec(select(b"{}[]\":, \r\t\xEF\xBB\xBF\xC3\xA9\xE2\x9C\x93abc\\".to_vec()), 0..40),
        1 => Just(b"   \t ".to_vec()),
    ]
}

/// A whole JSONL file: lines with LF, CRLF or no ending (the last one), a
/// BOM sometimes, a few duplicate custom ids, and every valid line's
/// custom id made unique unless it is meant to repeat.
pub fn jsonl_file() -> impl Strategy<Value = Data> {
    let ending = select(vec![&b"\n"[..], b"\r\n", b"\n\n", b"\r\n\r\n", b"\r\r\n"]);
    (
        any::<bool>(),
        prop::collection::vec((jsonl_line(), ending), 0..10),
        select(vec![&b""[..], b"\n", b"\r\n", b"\r"]),
    )
        .prop_map(|(bom, lines, last)| {
            let mut out = Vec::new();
            if bom {
                out.extend_from_slice(b"\xEF\xBB\xBF");
            }
            for (line, end) in lines {
                out.extend_from_slice(&line);
                out.extend_from_slice(end);
            }
            if last != b"" && out.ends_with(b"\n") {
                out.pop();
                out.extend_from_slice(last);
            }
            Data(out)
        })
}

/// Bytes of any kind, with the ones that matter to `parser` more often.
pub fn bytes(special: &'static [u8], max: usize) -> impl Strategy<Value = Data> {
    prop::collection::vec(prop_oneof![any::<u8>(), select(special)], 0..max).prop_map(Data)
}

/// Where to cut a stream into chunks (see `fusillade::fuzzing::chunks`).
/// Some cuts repeat, for empty reads.
pub fn cuts() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec((any::<usize>(), any::<bool>()), 0..12).prop_map(|cuts| {
        cuts.into_iter()
            .flat_map(|(at, twice)| std::iter::repeat_n(at, 1 + usize::from(twice)))
            .collect()
    })
}

/// One SSE line (without ending).
fn sse_line() -> impl Strategy<Value = String> {
    let chunk = (nasty_string(), prop::option::of(select(vec!["stop", "length"])), 0u64..3).prop_map(
        |(text, finish, index)| {
            json!({"id": "c1", "object": "chat.completion.chunk", "model": "m",
                   "choices": [{"index": index, "delta": {"content": text}, "finish_reason": finish}]})
            .to_string()
        },
    );
    let text_chunk = (nasty_string(), prop::option::of(Just("stop"))).prop_map(|(text, finish)| {
        json!({"object": "text_completion", "choices": [{"index": 0, "text": text, "finish_reason": finish}]})
            .to_string()
    });
    let data = prop_oneof![
        4 => chunk,
        1 => text_chunk,
        1 => Just("[DONE]".to_owned()),
        1 => Just(json!({"type": "response.completed", "response": {"id": "r", "output": []}}).to_string()),
        1 => Just(json!({"error": {"message": "overloaded"}}).to_string()),
        1 => json_value().prop_map(|v| v.to_string()),
        1 => nasty_string(),
    ];
    prop_oneof![
        6 => (data, select(vec!["data: ", "data:", "data:  "])).prop_map(|(d, f)| format!("{f}{d}")),
        1 => nasty_string().prop_map(|s| format!(": {s}")),
        1 => select(vec!["event: message", "id: 7", "retry: 10", "data", "bogus: x", ""]).prop_map(str::to_owned),
    ]
}

/// A server-sent event stream: lines with LF, CRLF or CR endings, blank
/// lines between events, a BOM sometimes.
pub fn sse_stream() -> impl Strategy<Value = Data> {
    let ending = select(vec!["\n", "\r\n", "\r"]);
    (
        any::<bool>(),
        prop::collection::vec((sse_line(), ending.clone(), any::<bool>(), ending), 0..12),
    )
        .prop_map(|(bom, lines)| {
            let mut out = Vec::new();
            if bom {
                out.extend_from_slice(b"\xEF\xBB\xBF");
            }
            for (line, end, blank, blank_end) in lines {
                out.extend_from_slice(line.as_bytes());
                out.extend_from_slice(end.as_bytes());
                if blank {
                    out.extend_from_slice(blank_end.as_bytes());
                }
            }
            Data(out)
        })
}

/// A TOML value, well-typed or not.
fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        select(vec![
            "0",
            "1",
            "-1",
            "18446744073709551615",
            "9223372036854775807",
            "4294967296",
            "1.5",
            "inf",
            "nan"
        ])
        .prop_map(str::to_owned),
        any::<bool>().prop_map(|b| b.to_string()),
        nasty_string().prop_map(|s| toml_string(&s)),
        select(vec![
            "\"http://127.0.0.1:8000\"",
            "\"https://api.example.com/\"",
            "\"ftp://x\"",
            "\"http://\"",
            "\"127.0.0.1:0\"",
            "\"[::1]:8080\"",
            "\"localhost:0\"",
            "\"nowhere\"",
            "\"1.2.3.4:99999\"",
            "\"KEY\"",
            "\"KEY_UP\"",
            "\"NOT_SET\"",
            "[\"/v1/chat/completions\"]",
            "[]",
            "[\"v1/x\"]",
            "{ \"sk-a\" = \"alice\" }",
            "{}",
            "\"/tmp\"",
            "\"\"",
        ])
        .prop_map(str::to_owned),
        "[ -~]{0,12}",
    ]
}

/// `s` as a TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A configuration file: known sections and keys with values of any type,
/// some unknown ones, some garbage.
pub fn config_text() -> impl Strategy<Value = String> {
    let section = select(vec![
        "",
        "[upstream]",
        "[models.m]",
        "[models.\"gpt-4o\"]",
        "[daemon]",
        "[auth]",
        "[auth.keys]",
        "[api]",
        "[bogus]",
        "[[upstream]]",
        "[models]",
    ]);
    let key = select(vec![
        "listen",
        "database_url",
        "url",
        "api_key_env",
        "concurrency",
        "connect_timeout_ms",
        "first_byte_timeout_ms",
        "idle_timeout_ms",
        "total_timeout_ms",
        "max_response_bytes",
        "stream_paths",
        "max_retries",
        "backoff_ms",
        "max_backoff_ms",
        "claim_batch",
        "heartbeat_ms",
        "stale_after_ms",
        "shutdown_grace_ms",
        "keys",
        "max_upload_bytes",
        "endpoints",
        "max_concurrent_uploads",
        "upload_idle_timeout_secs",
        "upload_spool_dir",
        "\"sk-a\"",
        "bogus",
    ]);
    let line = prop_oneof![
        8 => (key, toml_value()).prop_map(|(k, v)| format!("{k} = {v}")),
        1 => "[ -~]{0,20}",
        1 => Just(String::new()),
    ];
    prop::collection::vec((section, prop::collection::vec(line, 0..5)), 0..5).prop_map(|sections| {
        let mut out = String::new();
        for (s, lines) in sections {
            out.push_str(s);
            out.push('\n');
            for l in lines {
                out.push_str(&l);
                out.push('\n');
            }
        }
        out
    })
}

/// One field of a multipart body: name, filename, and data.
pub type Field = (String, Option<String>, Vec<u8>);

/// The fields of an upload: purpose, file, expiry and strangers, each there
/// or not, right or not, in any order.
pub fn upload_fields() -> impl Strategy<Value = Vec<Field>> {
    let purpose = prop_oneof![
        4 => Just("batch".to_owned()),
        1 => nasty_string(),
    ];
    let seconds = prop_oneof![
        Just("86400".to_owned()),
        any::<i64>().prop_map(|n| n.to_string()),
        nasty_string(),
    ];
    let anchor = prop_oneof![Just("created_at".to_owned()), nasty_string()];
    let filename = prop_oneof![
        3 => Just(Some("in.jsonl".to_owned())),
        1 => Just(None),
        1 => nasty_string().prop_map(|s| Some(s.replace(['"', '\r', '\n'], "_"))),
    ];
    (
        prop::option::weighted(0.9, purpose),
        prop::option::weighted(0.9, (filename, jsonl_file())),
        prop::option::weighted(0.2, anchor),
        prop::option::weighted(0.2, seconds),
        prop::option::weighted(0.2, (nasty_string(), nasty_string())),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(purpose, file, anchor, seconds, other, turn)| {
            let mut fields: Vec<Field> = Vec::new();
            if let Some(p) = purpose {
                fields.push(("purpose".into(), None, p.into_bytes()));
            }
            if let Some((name, data)) = file {
                fields.push(("file".into(), Some(name.unwrap_or_default()), data.0));
            }
            if let Some(a) = anchor {
                fields.push(("expires_after[anchor]".into(), None, a.into_bytes()));
            }
            if let Some(s) = seconds {
                fields.push(("expires_after[seconds]".into(), None, s.into_bytes()));
            }
            if let Some((k, v)) = other {
                fields.push((k.replace(['"', '\r', '\n'], "_"), None, v.into_bytes()));
            }
            if !fields.is_empty() {
                let n = turn.index(fields.len());
                fields.rotate_left(n);
            }
            fields
        })
}

/// A multipart body of `fields` with `boundary`.
pub fn multipart(fields: &[Field], boundary: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, filename, data) in fields {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        let disposition = match filename {
            Some(f) => format!(
                "Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\n\
                 Content-Type: application/jsonl\r\n\r\n"
            ),
            None => format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n"),
        };
        body.extend_from_slice(disposition.as_bytes());
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    body
}

/// How a body is spoiled, if at all.
#[derive(Debug, Clone)]
pub enum Damage {
    /// Left as it is.
    None,
    /// Cut short at this place.
    Truncate(prop::sample::Index),
    /// Bytes removed from here, this many.
    Remove(prop::sample::Index, usize),
    /// Bytes put in here.
    Insert(prop::sample::Index, Vec<u8>),
}

impl Damage {
    /// `body` spoiled.
    pub fn apply(&self, mut body: Vec<u8>) -> Vec<u8> {
        let len = body.len().max(1);
        match self {
            Damage::None => {}
            Damage::Truncate(at) => body.truncate(at.index(len)),
            Damage::Remove(at, n) => {
                let from = at.index(len).min(body.len());
                let to = (from + n).min(body.len());
                body.drain(from..to);
            }
            Damage::Insert(at, bytes) => {
                let at = at.index(len).min(body.len());
                body.splice(at..at, bytes.iter().copied());
            }
        }
        body
    }
}

/// Mostly no damage.
pub fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        3 => Just(Damage::None),
        1 => any::<prop::sample::Index>().prop_map(Damage::Truncate),
        1 => (any::<prop::sample::Index>(), 1usize..40).prop_map(|(a, n)| Damage::Remove(a, n)),
        1 => (any::<prop::sample::Index>(), bytes(b"\r\n-\"", 30)).prop_map(|(a, b)| Damage::Insert(a, b.0)),
    ]
}

/// A `Content-Type` for a multipart body with `boundary`, or a wrong one.
pub fn multipart_content_type() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        6 => Just(Some("multipart/form-data; boundary=BOUNDARY".to_owned())),
        1 => Just(Some("multipart/form-data; boundary=\"BOUNDARY\"".to_owned())),
        1 => Just(Some("multipart/form-data".to_owned())),
        1 => Just(Some("application/json".to_owned())),
        1 => Just(None),
        1 => "[ -~]{0,30}".prop_map(Some),
    ]
}
