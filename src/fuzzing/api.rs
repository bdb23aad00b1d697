//! The HTTP API: requests made from arbitrary bytes for every route, and the
//! rule every answer must keep: never a 5xx, and every error in OpenAI's
//! envelope (`{"error": {"message", "type", "param", "code"}}`) with a
//! message that says what is wrong.

use axum::body::Body;
use axum::http::{Method, Request, Uri, header};

/// Ids of objects that exist, put in for `$FILE`, `$BATCH` and `$REQ` so
/// that made-up requests reach past the id checks.
#[derive(Debug, Clone, Default)]
pub struct KnownIds {
    /// A file id (`file-…`).
    pub file: String,
    /// A batch id (`batch_…`).
    pub batch: String,
    /// A request id (`batch_req_…`).
    pub request: String,
}

/// The bearer keys requests are sent with, chosen by the input.
pub const KEYS: [&str; 2] = ["sk-alice", "sk-bob"];

/// The boundary of a made-up multipart body when the input names none.
pub const BOUNDARY: &str = "fuzzboundary";

/// What the routes are, in the order the input's first byte picks them.
const ROUTES: u8 = 13;

/// A request for one of the API's routes, made from `data`: byte 0 picks
/// the route, byte 1 the key, and the rest is split at its first two
/// newlines into an id (or header value), a query, and a body.
pub fn request(data: &[u8], ids: &KnownIds) -> Request<Body> {
    let route = data.first().copied().unwrap_or(0) % ROUTES;
    let who = data.get(1).copied().unwrap_or(0);
    let rest = data.get(2..).unwrap_or_default();
    let mut fields = rest.splitn(3, |&b| b == b'\n');
    let seg = substitute(fields.next().unwrap_or_default(), ids);
    let query = substitute(fields.next().unwrap_or_default(), ids);
    let body = fields.next().unwrap_or_default().to_vec();
    let id = encode(&seg, b"-._~");
    let q = encode(&query, b"-._~=&%+,;:@/?!$'()*");
    let (method, path) = match route {
        0 => (Method::POST, "/v1/batches".to_owned()),
        1 => (Method::GET, format!("/v1/batches?{q}")),
        2 => (Method::GET, format!("/v1/files?{q}")),
        3 => (Method::POST, "/v1/files".to_owned()),
        4 => (Method::GET, format!("/v1/batches/{id}")),
        5 => (Method::POST, format!("/v1/batches/{id}/cancel")),
        6 => (Method::POST, format!("/v1/batches/{id}/retry")),
        7 => (Method::GET, format!("/v1/batches/{id}/requests?{q}")),
        8 => (Method::GET, format!("/v1/files/{id}")),
        9 => (Method::DELETE, format!("/v1/files/{id}")),
        10 => (Method::GET, format!("/v1/files/{id}/content")),
        11 => (
            Method::from_bytes(&seg).unwrap_or(Method::GET),
            format!("/{}", encode(&query, b"-._~/%?=&")),
        ),
        _ => (Method::GET, "/healthz".to_owned()),
    };
    let uri: Uri = path
        .parse()
        .or_else(|_| "/v1/files".parse())
        .expect("a fixed path is a URI");
    let mut b = Request::builder().method(method).uri(uri);
    b = match who % 4 {
        0 | 1 => b.header(
            header::AUTHORIZATION,
            format!("Bearer {}", KEYS[usize::from(who % 2)]),
        ),
        2 => b,
        _ => b.header(header::AUTHORIZATION, "Bearer sk-nobody"),
    };
    match route {
        0 => {
            b = b.header(header::CONTENT_TYPE, "application/json");
            if !seg.is_empty() {
                b = b.header("idempotency-key", header_value(&seg));
            }
        }
        3 => {
            let boundary = if seg.is_empty() {
                BOUNDARY.as_bytes().to_vec()
            } else {
                seg.clone()
            };
            let mut v = b"multipart/form-data; boundary=".to_vec();
            v.extend_from_slice(&boundary);
            b = b.header(header::CONTENT_TYPE, header_value(&v));
        }
        _ => {}
    }
    b.body(Body::from(body))
        .expect("every part of the request is valid")
}

/// `text` with `$FILE`, `$BATCH` and `$REQ` replaced by the known ids.
fn substitute(text: &[u8], ids: &KnownIds) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut rest = text;
    'outer: while !rest.is_empty() {
        for (name, id) in [
            (&b"$FILE"[..], &ids.file),
            (b"$BATCH", &ids.batch),
            (b"$REQ", &ids.request),
        ] {
            if let Some(after) = rest.strip_prefix(name) {
                out.extend_from_slice(id.as_bytes());
                rest = after;
                continue 'outer;
            }
        }
        out.push(rest[0]);
        rest = &rest[1..];
    }
    out
}

/// Percent-encodes every byte but ASCII letters, digits and `keep`.
pub fn encode(bytes: &[u8], keep: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || keep.contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `bytes` as a header value, with the bytes a header cannot hold dropped.
fn header_value(bytes: &[u8]) -> header::HeaderValue {
    let kept: Vec<u8> = bytes
        .iter()
        .copied()
        .filter(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
        .collect();
    header::HeaderValue::from_bytes(&kept).expect("only bytes a header may hold")
}

/// Whether an answer keeps the rule: never a 5xx; an error is OpenAI's
/// envelope with a message; a JSON answer is JSON. Says what is wrong if not.
pub fn check_answer(status: u16, content_type: Option<&str>, body: &[u8]) -> Result<(), String> {
    let text = || String::from_utf8_lossy(body).into_owned();
    if status >= 500 {
        return Err(format!("answered {status}: {}", text()));
    }
    if status >= 400 {
        let v: serde_json::Value = serde_json::from_slice(body)
            .map_err(|e| format!("{status} whose body is not JSON ({e}): {}", text()))?;
        let e = v
            .get("error")
            .and_then(|e| e.as_object())
            .ok_or_else(|| format!("{status} without an error object: {v}"))?;
        let message = e.get("message").and_then(|m| m.as_str()).unwrap_or("");
        if message.trim().is_empty() {
            return Err(format!("{status} without a message: {v}"));
        }
        if !e.get("type").is_some_and(|t| t.is_string()) {
            return Err(format!("{status} without a type: {v}"));
        }
        for k in ["param", "code"] {
            if !e.get(k).is_some_and(|p| p.is_null() || p.is_string()) {
                return Err(format!("{status} without {k}: {v}"));
            }
        }
        return Ok(());
    }
    if content_type.is_some_and(|c| c.starts_with("application/json"))
        && serde_json::from_slice::<serde_json::Value>(body).is_err()
    {
        return Err(format!("{status} whose JSON body is not JSON: {}", text()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_input_makes_a_request() {
        let ids = KnownIds {
            file: "file-1".into(),
            batch: "batch_2".into(),
            request: "batch_req_3".into(),
        };
        for route in 0..=255u8 {
            for rest in [
                &b""[..],
                b"\xff\n\x00\r\n",
                b"$BATCH\nlimit=1&after=$REQ\n{}",
                b"a b/c%zz\n#?\n",
            ] {
                let mut data = vec![route, route];
                data.extend_from_slice(rest);
                let r = request(&data, &ids);
                assert!(r.uri().path().starts_with('/'));
            }
        }
        let r = request(b"\x04\x00$BATCH", &ids);
        assert_eq!(r.uri().path(), "/v1/batches/batch_2");
        assert_eq!(r.headers()[header::AUTHORIZATION], "Bearer sk-alice");
    }

    #[test]
    fn the_answer_rule() {
        let envelope = br#"{"error":{"message":"m","type":"t","param":null,"code":"c"}}"#;
        assert!(check_answer(400, None, envelope).is_ok());
        assert!(check_answer(500, None, envelope).is_err());
        assert!(check_answer(400, None, b"Invalid URL").is_err());
        assert!(check_answer(404, None, br#"{"error":{"message":"","type":"t"}}"#).is_err());
        assert!(check_answer(200, Some("application/json"), b"{}").is_ok());
        assert!(check_answer(200, Some("application/json"), b"{").is_err());
        assert!(check_answer(200, Some("application/octet-stream"), b"{").is_ok());
    }
}
