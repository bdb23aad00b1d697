//! Bad requests, hundreds of them, sent to the API while the batch runs:
//! uploads with refused lines (bad JSON, NUL in custom_id or model, raw NUL
//! and invalid UTF-8 bytes, missing fields), broken multipart bodies,
//! oversize bodies, batch creations with bad fields (NUL in metadata,
//! unknown files, wrong endpoints and windows), and unknown routes and
//! ids. Any answer but a 5xx is fine (a file with refused lines is stored,
//! and a batch of it fails); what is counted is 5xx and calls left
//! unanswered.

use super::client::Api;
use futures_util::StreamExt;
use reqwest::Method;
use serde_json::json;

/// The boundary of the multipart bodies built here.
const BOUNDARY: &str = "chaosBoundary7d1e";

/// What the flood did.
#[derive(Debug, Default, Clone)]
pub struct FloodReport {
    /// Requests sent.
    pub sent: u64,
    /// Files that were stored although they had refused lines.
    pub files_stored: u64,
}

/// One bad request.
struct Bad {
    route: &'static str,
    method: Method,
    path: String,
    content_type: Option<String>,
    headers: Vec<(&'static str, Vec<u8>)>,
    body: Vec<u8>,
}

impl Bad {
    fn new(route: &'static str, method: Method, path: impl Into<String>) -> Self {
        Self {
            route,
            method,
            path: path.into(),
            content_type: None,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    fn body(mut self, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        self.content_type = Some(content_type.to_owned());
        self.body = body.into();
        self
    }

    fn json(self, body: impl Into<Vec<u8>>) -> Self {
        self.body("application/json", body)
    }

    fn header(mut self, name: &'static str, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

/// A multipart body with these `(headers, content)` parts.
fn multipart(parts: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (headers, content) in parts {
        out.extend_from_slice(format!("--{BOUNDARY}\r\n{headers}\r\n\r\n").as_bytes());
        out.extend_from_slice(content);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    out
}

fn purpose(p: &str) -> (String, Vec<u8>) {
    (
        "Content-Disposition: form-data; name=\"purpose\"".to_owned(),
        p.as_bytes().to_vec(),
    )
}

fn file_part(filename: &[u8], content: &[u8]) -> (String, Vec<u8>) {
    (
        format!(
            "Content-Disposition: form-data; name=\"file\"; filename=\"{}\"\r\nContent-Type: application/jsonl",
            String::from_utf8_lossy(filename)
        ),
        content.to_vec(),
    )
}

/// An upload of `content` as a batch file.
fn upload(content: &[u8]) -> Bad {
    upload_parts(&[purpose("batch"), file_part(b"bad.jsonl", content)])
}

fn upload_parts(parts: &[(String, Vec<u8>)]) -> Bad {
    Bad::new("POST /v1/files", Method::POST, "/v1/files").body(
        &format!("multipart/form-data; boundary={BOUNDARY}"),
        multipart(parts),
    )
}

/// A good line but for `patch`, which edits its JSON text.
fn line(k: u64, patch: impl Fn(String) -> String) -> Vec<u8> {
    let good = json!({
        "custom_id": format!("bad-{k}"),
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "chaos-bad", "messages": [{"role": "user", "content": "hi"}]},
    })
    .to_string();
    let mut l = patch(good).into_bytes();
    l.push(b'\n');
    l
}

/// A good line followed by a refused one: should the upload itself be
/// accepted, a batch of it still fails, so nothing of the flood reaches
/// the upstream (where a call for no line of the chaos batch is a fault).
fn refused(k: u64) -> Vec<u8> {
    let mut l = line(k, |l| l);
    l.extend_from_slice(b"not json\n");
    l
}

fn create(body: impl Into<Vec<u8>>) -> Bad {
    Bad::new("POST /v1/batches", Method::POST, "/v1/batches").json(body)
}

/// A file whose every line is refused (or, for kind 6, whose two lines
/// share a custom_id; for kind 11, with no line at all).
fn bad_file(k: u64) -> Vec<u8> {
    match k % KINDS {
        0 => format!("not json {k}\n").into_bytes(),
        1 => line(k, |l| l.replace("bad-", "bad-\\u0000")),
        2 => line(k, |l| l.replace("chaos-bad", "chaos\\u0000bad")),
        3 => line(k, |l| l.replace("\"hi\"", "\"h\0i\"")),
        4 => {
            let mut l = line(k, |l| l.replace("\"hi\"", "\"h__i\""));
            let at = l.windows(2).position(|w| w == b"__").unwrap_or(0);
            l[at] = 0xff;
            l[at + 1] = 0xfe;
            l
        }
        5 => line(k, |l| l.replace("\"custom_id\"", "\"custom\"")),
        6 => {
            let mut twice = line(k, |l| l);
            twice.extend(line(k, |l| l));
            twice
        }
        7 => line(k, |l| l.replace("\"POST\"", "\"GET\"")),
        8 => line(k, |l| l.replace("/v1/chat/completions", "/v2/nothing")),
        9 => line(k, |l| {
            l.replace(",\"model\":\"chaos-bad\"", "")
                .replace("\"model\":\"chaos-bad\",", "")
        }),
        10 => line(k, |l| {
            let at = l.find("\"body\"").unwrap_or(0);
            format!("{}\"body\":5}}", &l[..at])
        }),
        11 => Vec::new(),
        _ => vec![b'{'; 4096],
    }
}

/// Kinds of bad requests.
const KINDS: u64 = 44;

/// Bad request number `k` (its kind is `k` modulo the number of kinds).
/// `file` is a stored input file's id, `batch` the running batch's id, and
/// `oversize` a size above the API's upload limit.
fn bad(k: u64, file: &str, batch: &str, oversize: usize) -> Bad {
    let kinds = KINDS;
    match k % kinds {
        0..=12 => upload(&bad_file(k)),
        13 => upload_parts(&[purpose("fine-tune"), file_part(b"x.jsonl", &refused(k))]),
        14 => upload_parts(&[file_part(b"x.jsonl", &refused(k))]),
        15 => upload_parts(&[purpose("batch")]),
        16 => Bad::new("POST /v1/files", Method::POST, "/v1/files")
            .body("multipart/form-data", multipart(&[purpose("batch")])),
        17 => {
            let mut body = multipart(&[purpose("batch"), file_part(b"x.jsonl", &refused(k))]);
            body.truncate(body.len() / 2 + (k as usize % 40));
            Bad::new("POST /v1/files", Method::POST, "/v1/files")
                .body(&format!("multipart/form-data; boundary={BOUNDARY}"), body)
        }
        18 => Bad::new("POST /v1/files", Method::POST, "/v1/files").json(refused(k)),
        19 => Bad::new("POST /v1/files", Method::POST, "/v1/files").body(
            &format!("multipart/form-data; boundary={BOUNDARY}"),
            (0..2000u64)
                .map(|b| (b.wrapping_mul(k + 31) % 251) as u8)
                .collect::<Vec<u8>>(),
        ),
        20 => upload_parts(&[
            purpose("batch"),
            file_part(b"a.jsonl", &refused(k)),
            file_part(b"b.jsonl", &refused(k + 1)),
        ]),
        21 => upload_parts(&[purpose("batch"), file_part(b"a\0b.jsonl", &refused(k))]),
        22 => upload_parts(&[purpose("batch"), file_part(b"\xff\xfe.jsonl", &refused(k))]),
        23 => upload(&vec![b'a'; oversize]),
        24 => create("{"),
        25 => create(
            json!({"input_file_id": file, "endpoint": "/v1/chat/completions",
            "completion_window": "24h", "metadata": {"k\u{0}ey": "v"}})
            .to_string(),
        ),
        26 => create(
            json!({"input_file_id": file, "endpoint": "/v1/chat/completions",
            "completion_window": "24h", "metadata": {"key": "va\u{0}lue"}})
            .to_string(),
        ),
        27 => create(
            json!({"input_file_id": "file-00000000000000000000000000000000",
            "endpoint": "/v1/chat/completions", "completion_window": "24h"})
            .to_string(),
        ),
        28 => create(
            json!({"input_file_id": "file-..%2F..%2Fetc", "endpoint": "/v1/chat/completions",
            "completion_window": "24h"})
            .to_string(),
        ),
        29 => create(
            json!({"input_file_id": file, "endpoint": "/v1/nope",
            "completion_window": "24h"})
            .to_string(),
        ),
        30 => {
            let window =
                ["0h", "forever", "-1h", "99999999999h", "", "1s"][(k / kinds % 6) as usize];
            create(
                json!({"input_file_id": file, "endpoint": "/v1/chat/completions",
                "completion_window": window})
                .to_string(),
            )
        }
        31 => {
            let metadata: serde_json::Map<String, serde_json::Value> =
                (0..17).map(|n| (format!("k{n}"), json!("v"))).collect();
            create(
                json!({"input_file_id": file, "endpoint": "/v1/chat/completions",
                "completion_window": "24h", "metadata": metadata})
                .to_string(),
            )
        }
        32 => create(
            json!({"input_file_id": file, "endpoint": "/v1/chat/completions",
            "completion_window": "24h", "metadata": {"x".repeat(65): "y".repeat(513)}})
            .to_string(),
        ),
        33 => create(
            json!({"input_file_id": file, "endpoint": "/v1/chat/completions",
            "completion_window": "24h", "metadata": ["not", "an", "object"]})
            .to_string(),
        ),
        34 => create(
            json!({"input_file_id": 12, "endpoint": true, "completion_window": null}).to_string(),
        ),
        35 => create(format!(
            "{{\"input_file_id\":\"{file}\",\"endpoint\":\"/v1/chat/completions\",\
             \"completion_window\":\"24h\",\"metadata\":{{\"big\":\"{}\"}}}}",
            "z".repeat(3 << 20)
        )),
        36 => Bad::new("POST /v1/batches", Method::POST, "/v1/batches").body("text/plain", ""),
        37 => create(
            json!({"input_file_id": file, "endpoint": "/v1/chat/completions",
            "completion_window": "24h"})
            .to_string(),
        )
        .header("idempotency-key", b"\xff\xfe\x80 key".to_vec())
        .header("content-type", b"application/json; charset=\xff".to_vec()),
        38 => {
            let path = [
                "/v1/batches/batch_%00",
                "/v1/files/file-%00/content",
                "/v1/batches?limit=-1",
                "/v1/batches?limit=abc",
                "/v1/batches?after=%00",
                "/v1/files?order=sideways&purpose=%00",
                "/v1/files?limit=99999999999999999999",
            ][(k / kinds % 7) as usize];
            Bad::new("GET (bad id or query)", Method::GET, path)
        }
        39 => Bad::new(
            "POST /v1/batches/{id}/cancel",
            Method::POST,
            format!("/v1/batches/batch_{:032x}/cancel", k),
        ),
        40 => Bad::new(
            "POST /v1/batches/{id}/retry",
            Method::POST,
            // Never the running batch: a retry of it, once it has ended,
            // would rightly put it back in progress.
            format!(
                "/v1/batches/{}/retry",
                ["nope", "batch_%ff", "batch_"][(k / kinds % 3) as usize]
            ),
        ),
        41 => {
            let (method, path) = [
                (Method::DELETE, "/v1/files/".to_owned()),
                (Method::PUT, "/v1/files".to_owned()),
                (Method::PATCH, "/v1/batches".to_owned()),
                (Method::POST, format!("/v1/files/{file}/content")),
                (Method::PUT, format!("/v1/batches/{batch}")),
            ][(k / kinds % 5) as usize]
                .clone();
            Bad::new("wrong method", method, path)
        }
        42 => {
            let query = [
                "limit=0",
                "limit=100000",
                "after=garbage",
                "after=%00",
                "limit=1&limit=2",
            ][(k / kinds % 5) as usize];
            Bad::new(
                "GET /v1/batches/{id}/requests",
                Method::GET,
                format!("/v1/batches/{batch}/requests?{query}"),
            )
        }
        _ => Bad::new(
            "GET (long path)",
            Method::GET,
            format!("/v1/{}", "x".repeat(10_000)),
        ),
    }
}

/// Sends `count` bad requests, `concurrency` at a time; every answer is
/// counted in the API's tally.
pub async fn flood(
    api: &Api,
    count: u64,
    concurrency: usize,
    file: &str,
    batch: &str,
    oversize: usize,
) -> FloodReport {
    let stored: u64 = futures_util::stream::iter(0..count)
        .map(|k| {
            let api = api.clone();
            let b = bad(k, file, batch, oversize);
            async move {
                let mut request = api
                    .http
                    .request(b.method, format!("{}{}", api.base, b.path))
                    .body(b.body);
                if let Some(ct) = b.content_type {
                    request = request.header("content-type", ct);
                }
                for (name, value) in b.headers {
                    if let Ok(v) = reqwest::header::HeaderValue::from_bytes(&value) {
                        request = request.header(name, v);
                    }
                }
                let answer = api.call(b.route, request).await;
                // A stored file with refused lines: a batch of it must fail, not break.
                let id = answer
                    .filter(|(s, _)| b.route == "POST /v1/files" && *s == 200)
                    .and_then(|(_, body)| serde_json::from_slice::<serde_json::Value>(&body).ok())
                    .and_then(|v| v["id"].as_str().map(str::to_owned));
                if let Some(id) = &id {
                    let create = create(
                        json!({"input_file_id": id, "endpoint": "/v1/chat/completions",
                        "completion_window": "24h"})
                        .to_string(),
                    );
                    let request = api
                        .http
                        .post(format!("{}{}", api.base, create.path))
                        .header("content-type", "application/json")
                        .body(create.body);
                    api.call("POST /v1/batches (of a refused file)", request)
                        .await;
                }
                u64::from(id.is_some())
            }
        })
        .buffer_unordered(concurrency.max(1))
        .fold(0u64, |a, n| async move { a + n })
        .await;
    FloodReport {
        // Each stored file was followed by one batch creation.
        sent: count + stored,
        files_stored: stored,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_bad_file_has_a_line_that_could_run() {
        let endpoints = vec!["/v1/chat/completions".to_owned()];
        for k in (0..=12).chain([6 + KINDS]) {
            let file = bad_file(k);
            let accepted: Vec<_> = file
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .filter(|l| fusillade::domain::file::parse_line(1, l, &endpoints).is_ok())
                .collect();
            let duplicated = k % KINDS == 6 && accepted.len() == 2 && accepted[0] == accepted[1];
            let shown: Vec<_> = accepted
                .iter()
                .map(|l| String::from_utf8_lossy(l))
                .collect();
            assert!(accepted.is_empty() || duplicated, "kind {k}: {shown:?}");
        }
        assert!(refused(1).split(|b| *b == b'\n').any(|l| {
            !l.is_empty() && fusillade::domain::file::parse_line(2, l, &endpoints).is_err()
        }));
    }

    #[test]
    fn every_kind_builds() {
        for k in 0..KINDS * 7 {
            let b = bad(k, "file-1", "batch_1", 10);
            assert!(b.path.starts_with("/v1/"), "{k}: {}", b.path);
        }
        let b = bad(4, "f", "b", 1);
        assert!(b.body.windows(2).any(|w| w == [0xff, 0xfe]));
        let b = bad(3, "f", "b", 1);
        assert!(b.body.contains(&0));
    }
}
