//! The lines of a batch's output and error files, in OpenAI's shape.
//!
//! # How an upstream body is written
//!
//! The store keeps the body's bytes exactly as the upstream sent them, and
//! a line carries them back exactly:
//!
//! - a body that is JSON goes out as that JSON, unchanged (escapes such as
//!   `\u0000` included), except that line breaks between its tokens
//!   become spaces so the line stays one line;
//! - any other UTF-8 text goes out as a JSON string (a NUL byte as
//!   `\u0000`, other control characters escaped likewise);
//! - bytes that are not UTF-8 go out as a JSON string whose valid UTF-8
//!   runs are kept and whose every other byte `0xXY` is written
//!   `\udcXY`, a lone low surrogate, as Python's `surrogateescape` does
//!   (PEP 383). No UTF-8 text can produce such an escape, so nothing is
//!   ambiguous, and `body.encode("utf-8", "surrogateescape")` in Python
//!   gives the original bytes back. JavaScript's `JSON.parse` and
//!   Python's `json` accept the line; parsers that refuse lone surrogates
//!   (serde_json into a `String`) refuse that one line, which is still
//!   better than a file that is not UTF-8 or a body silently altered.

use super::ids::RequestId;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Error codes that fusillade itself writes into error lines.
pub mod codes {
    /// The batch's completion window ran out before the request finished.
    pub const BATCH_EXPIRED: &str = "batch_expired";
    /// The batch was cancelled before the request finished.
    pub const BATCH_CANCELLED: &str = "batch_cancelled";
    /// The upstream did not answer in time, and retries ran out.
    pub const REQUEST_TIMEOUT: &str = "request_timeout";
    /// The upstream answered with a non-2xx status that is final.
    pub const UPSTREAM_ERROR: &str = "upstream_error";
    /// The upstream could not be reached, and retries ran out.
    pub const CONNECTION_ERROR: &str = "connection_error";
    /// The database refused to store the request's outcome as it was (the
    /// message says why); the request was failed instead.
    pub const STORAGE_REFUSED: &str = "storage_refused";
}

/// Why a request did not complete: `{"code", "message"}` in an error line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultError {
    /// A short machine-readable code (see [`codes`]).
    pub code: String,
    /// A sentence for people.
    pub message: String,
}

impl ResultError {
    /// An error with this code and message.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
        }
    }
}

/// The `id` OpenAI gives each output line: `batch_req_` and the request id.
pub fn line_id(id: RequestId) -> String {
    format!("batch_req_{}", id.0.simple())
}

/// One stored result, borrowed from a database row, ready to be written as a line.
#[derive(Debug, Clone, Copy)]
pub struct ResultRow<'a> {
    /// The request the line is for.
    pub request_id: RequestId,
    /// The caller's id for the input line.
    pub custom_id: Option<&'a str>,
    /// The upstream's HTTP status, when it answered.
    pub status_code: Option<i32>,
    /// The upstream's request id header, when it sent one.
    pub upstream_request_id: Option<&'a str>,
    /// The upstream's body as received: any bytes.
    pub body: Option<&'a [u8]>,
    /// Why the request did not complete.
    pub error: Option<&'a ResultError>,
}

#[derive(Serialize)]
struct Line<'a> {
    id: String,
    custom_id: Option<&'a str>,
    response: Option<Response<'a>>,
    error: Option<&'a ResultError>,
}

#[derive(Serialize)]
struct Response<'a> {
    status_code: i32,
    request_id: &'a str,
    body: Body<'a>,
}

/// A JSON body goes out as JSON; anything else (an HTML error page, say) as a string.
#[derive(Serialize)]
#[serde(untagged)]
enum Body<'a> {
    Json(&'a RawValue),
    Text(&'a str),
}

/// A JSON string literal (quotes included) carrying `bytes` that are not
/// all UTF-8: valid runs as text, every other byte `0xXY` as `\udcXY`
/// (see the module docs).
pub fn json_string_of_bytes(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() + 2);
    out.push('"');
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if c < ' ' => {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\u{:04x}", 0xdc00 | u32::from(*b));
        }
    }
    out.push('"');
    out
}

impl ResultRow<'_> {
    /// Appends this result as one JSONL line (with its newline) to `out`.
    pub fn write_line(&self, out: &mut Vec<u8>) {
        let text = match self.body.map(|b| (b, std::str::from_utf8(b))) {
            None => None,
            Some((_, Ok(text))) => Some(text),
            Some((bytes, Err(_))) => {
                let escaped = RawValue::from_string(json_string_of_bytes(bytes))
                    .expect("an escaped string is JSON");
                return self.write_with_body(out, Body::Json(&escaped));
            }
        };
        let raw = text.and_then(|text| serde_json::from_str::<&RawValue>(text).ok());
        // Some servers pretty-print. In valid JSON a CR or LF can only be
        // whitespace between tokens, so spaces in their place keep the value
        // and keep the line one line.
        let flat = raw
            .filter(|r| r.get().contains(['\n', '\r']))
            .map(|r| RawValue::from_string(r.get().replace(['\n', '\r'], " ")))
            .transpose()
            .expect("JSON with whitespace changed is still JSON");
        let body = match (flat.as_deref().or(raw), text) {
            (Some(raw), _) => Body::Json(raw),
            (None, Some(text)) => Body::Text(text),
            (None, None) => Body::Text(""),
        };
        self.write_with_body(out, body);
    }

    fn write_with_body(&self, out: &mut Vec<u8>, body: Body<'_>) {
        let response = self.status_code.map(|status_code| Response {
            status_code,
            request_id: self.upstream_request_id.unwrap_or(""),
            body,
        });
        let line = Line {
            id: line_id(self.request_id),
            custom_id: self.custom_id,
            response,
            error: self.error,
        };
        // Writing into a Vec cannot fail, and every field serializes.
        serde_json::to_writer(&mut *out, &line).expect("serialize output line");
        out.push(b'\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};
    use uuid::Uuid;

    fn parse(buf: &[u8]) -> Value {
        assert_eq!(buf.last(), Some(&b'\n'));
        serde_json::from_slice(buf).unwrap()
    }

    #[test]
    fn success_line_has_openai_shape() {
        let id = RequestId(Uuid::nil());
        let mut buf = Vec::new();
        ResultRow {
            request_id: id,
            custom_id: Some("a-1"),
            status_code: Some(200),
            upstream_request_id: Some("req_9"),
            body: Some(br#"{"choices":[]}"#),
            error: None,
        }
        .write_line(&mut buf);
        assert_eq!(
            parse(&buf),
            json!({
                "id": "batch_req_00000000000000000000000000000000",
                "custom_id": "a-1",
                "response": {"status_code": 200, "request_id": "req_9", "body": {"choices": []}},
                "error": null
            })
        );
    }

    #[test]
    fn error_line_without_response() {
        let err = ResultError::new(codes::BATCH_EXPIRED, "expired");
        let mut buf = Vec::new();
        ResultRow {
            request_id: RequestId(Uuid::nil()),
            custom_id: Some("x"),
            status_code: None,
            upstream_request_id: None,
            body: None,
            error: Some(&err),
        }
        .write_line(&mut buf);
        let v = parse(&buf);
        assert_eq!(v["response"], Value::Null);
        assert_eq!(
            v["error"],
            json!({"code": "batch_expired", "message": "expired"})
        );
    }

    fn body_of(body: &[u8]) -> String {
        let mut buf = Vec::new();
        ResultRow {
            request_id: RequestId(Uuid::nil()),
            custom_id: None,
            status_code: Some(200),
            upstream_request_id: None,
            body: Some(body),
            error: None,
        }
        .write_line(&mut buf);
        let line = String::from_utf8(buf).expect("a line is UTF-8");
        assert_eq!(line.matches('\n').count(), 1, "one line: {line}");
        // The body as written, without parsing it (serde_json refuses lone
        // surrogates).
        let start = line.find(r#""body":"#).unwrap() + 7;
        line[start..line.len() - "}}\n".len() - r#","error":null"#.len()].to_owned()
    }

    #[test]
    fn a_json_body_with_escaped_nul_is_kept_byte_for_byte() {
        let body = r#"{"content":"a\u0000b"}"#;
        assert_eq!(body_of(body.as_bytes()), body);
    }

    #[test]
    fn a_raw_nul_byte_becomes_its_escape() {
        assert_eq!(body_of(b"a\0b"), r#""a\u0000b""#);
        // Raw NUL inside what would be JSON: not JSON, so a string.
        assert_eq!(body_of(b"{\"a\":\"\0\"}"), r#""{\"a\":\"\u0000\"}""#);
    }

    #[test]
    fn bytes_that_are_not_utf8_come_back_as_surrogate_escapes() {
        let bytes = b"ok \xff\xfe\"q\"\n\x01 \xc3\xa9 \xe2\x82";
        let written = body_of(bytes);
        assert_eq!(written, r#""ok \udcff\udcfe\"q\"\n\u0001 é \udce2\udc82""#);
        assert_eq!(decode_surrogateescape(&written), bytes);
    }

    #[test]
    fn every_byte_string_round_trips() {
        // Every single byte and every pair: the escapes decode to the bytes.
        let mut cases: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        for a in [0u8, b'"', b'\\', 0x7f, 0x80, 0xc3, 0xe2, 0xf0, 0xff] {
            for b in 0..=255u8 {
                cases.push(vec![a, b, b'x']);
            }
        }
        for bytes in cases {
            let written = body_of(&bytes);
            let back = match std::str::from_utf8(&bytes) {
                // Valid UTF-8 goes through serde_json as usual.
                Ok(_) => {
                    let v: Value = serde_json::from_str(&written).unwrap();
                    match v {
                        Value::String(s) => s.into_bytes(),
                        other => serde_json::to_vec(&other).unwrap(),
                    }
                }
                Err(_) => decode_surrogateescape(&written),
            };
            if std::str::from_utf8(&bytes).is_ok_and(|t| serde_json::from_str::<Value>(t).is_ok()) {
                continue; // a JSON body goes out as JSON, checked elsewhere
            }
            assert_eq!(back, bytes, "{written}");
        }
    }

    /// What Python's `json.loads` then `.encode("utf-8", "surrogateescape")`
    /// does, for the escapes this module writes.
    fn decode_surrogateescape(literal: &str) -> Vec<u8> {
        let inner = &literal[1..literal.len() - 1];
        let mut out = Vec::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                let mut buf = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                continue;
            }
            match chars.next().unwrap() {
                'u' => {
                    let hex: String = chars.by_ref().take(4).collect();
                    let n = u32::from_str_radix(&hex, 16).unwrap();
                    if (0xdc80..=0xdcff).contains(&n) {
                        out.push((n & 0xff) as u8);
                    } else {
                        let mut buf = [0; 4];
                        let c = char::from_u32(n).unwrap();
                        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    }
                }
                'n' => out.push(b'\n'),
                'r' => out.push(b'\r'),
                't' => out.push(b'\t'),
                'b' => out.push(8),
                'f' => out.push(12),
                other => out.push(other as u8),
            }
        }
        out
    }

    #[test]
    fn non_json_body_is_kept_as_a_string() {
        let mut buf = Vec::new();
        ResultRow {
            request_id: RequestId(Uuid::nil()),
            custom_id: None,
            status_code: Some(502),
            upstream_request_id: None,
            body: Some(b"<html>bad gateway</html>"),
            error: None,
        }
        .write_line(&mut buf);
        let v = parse(&buf);
        assert_eq!(v["response"]["body"], json!("<html>bad gateway</html>"));
        assert_eq!(v["custom_id"], Value::Null);
    }
}
