//! The lines of a batch's output and error files, in OpenAI's shape.

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
    /// The upstream's body as received.
    pub body: Option<&'a str>,
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

impl ResultRow<'_> {
    /// Appends this result as one JSONL line (with its newline) to `out`.
    pub fn write_line(&self, out: &mut Vec<u8>) {
        let raw = self
            .body
            .and_then(|text| serde_json::from_str::<&RawValue>(text).ok());
        // Some servers pretty-print. In valid JSON a CR or LF can only be
        // whitespace between tokens, so spaces in their place keep the value
        // and keep the line one line.
        let flat = raw
            .filter(|r| r.get().contains(['\n', '\r']))
            .map(|r| RawValue::from_string(r.get().replace(['\n', '\r'], " ")))
            .transpose()
            .expect("JSON with whitespace changed is still JSON");
        let response = self.status_code.map(|status_code| Response {
            status_code,
            request_id: self.upstream_request_id.unwrap_or(""),
            body: match (flat.as_deref().or(raw), self.body) {
                (Some(raw), _) => Body::Json(raw),
                (None, Some(text)) => Body::Text(text),
                (None, None) => Body::Text(""),
            },
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
            body: Some(r#"{"choices":[]}"#),
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

    #[test]
    fn non_json_body_is_kept_as_a_string() {
        let mut buf = Vec::new();
        ResultRow {
            request_id: RequestId(Uuid::nil()),
            custom_id: None,
            status_code: Some(502),
            upstream_request_id: None,
            body: Some("<html>bad gateway</html>"),
            error: None,
        }
        .write_line(&mut buf);
        let v = parse(&buf);
        assert_eq!(v["response"]["body"], json!("<html>bad gateway</html>"));
        assert_eq!(v["custom_id"], Value::Null);
    }
}
