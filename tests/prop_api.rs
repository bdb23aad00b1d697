//! Property tests of every input path that needs the database: uploads fed
//! in any chunking (through the store and through `POST /v1/files`),
//! multipart bodies right and wrong, and every API request body, query and
//! id. The rule: the same bytes give the same file however they were cut;
//! no answer is a 5xx; every error is OpenAI's envelope with a message.
//! Each runs a bounded number of cases and prints how many (see
//! FUZZING.md for longer runs).

mod prop_support;

use axum::body::Body;
use axum::http::{Method, Request, header};
use bytes::Bytes;
use fusillade::domain::file::{LineError, LineErrorCode};
use fusillade::fuzzing::api::{KEYS, encode};
use fusillade::fuzzing::{self, jsonl::LineOutcome};
use fusillade::store::{FileStore, NewFile, Owner};
use fusillade::{IngestLimits, PostgresStore, TestDbPools};
use futures_util::{StreamExt, TryStreamExt, stream};
use prop_support::db::ScratchDb;
use prop_support::harness::{Answer, Harness};
use prop_support::{Data, check, inputs};
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap};

/// `data` cut at `cuts`, as the chunks of a body.
fn chunked(data: &[u8], cuts: &[usize]) -> Vec<std::io::Result<Bytes>> {
    fuzzing::chunks(data, cuts)
        .into_iter()
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect()
}

/// `chunks` as a body that makes its reader wait before each one, as a
/// network does: a reader that takes whatever is ready would otherwise see
/// them as one.
fn trickle(
    chunks: Vec<std::io::Result<Bytes>>,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    stream::iter(chunks).then(|c| async move {
        tokio::task::yield_now().await;
        c
    })
}

/// What a file's upload should give, worked out from the pure parser:
/// (templates as (line, custom_id, url, body, model), error count, kept
/// errors as (line, code), urls).
type Expected = (
    Vec<(i64, String, String, String, String)>,
    i64,
    Vec<(Option<u64>, LineErrorCode)>,
    Vec<String>,
);

fn expected(data: &[u8], limits: &IngestLimits) -> Expected {
    let outcomes = fuzzing::jsonl::outcomes(data, &[], limits.max_line_bytes, &limits.endpoints);
    let mut first_use: HashMap<String, u64> = HashMap::new();
    let mut templates = Vec::new();
    let mut errors: Vec<LineError> = Vec::new();
    let mut urls = BTreeSet::new();
    for o in outcomes {
        match o {
            LineOutcome::Refused(e) => errors.push(e),
            LineOutcome::Parsed {
                number,
                custom_id,
                url,
                body,
                model,
                ..
            } => {
                urls.insert(url.clone());
                if first_use.contains_key(&custom_id) {
                    errors.push(LineError {
                        line: Some(number),
                        code: LineErrorCode::DuplicateCustomId,
                        message: String::new(),
                    });
                } else {
                    first_use.insert(custom_id.clone(), number);
                    templates.push((number as i64, custom_id, url, body, model));
                }
            }
        }
    }
    let mut count = errors.len() as i64;
    let mut kept: Vec<_> = errors.iter().map(|e| (e.line, e.code)).collect();
    kept.sort_by_key(|e| e.0);
    kept.truncate(limits.max_kept_errors);
    if templates.is_empty() && count == 0 {
        count = 1;
        kept.push((None, LineErrorCode::EmptyFile));
    }
    (templates, count, kept, urls.into_iter().collect())
}

#[test]
fn prop_uploads_do_not_depend_on_chunking_and_match_the_parser() {
    let db = ScratchDb::fresh();
    let limits = IngestLimits {
        max_line_bytes: 160,
        max_kept_errors: 4,
        ..IngestLimits::default()
    };
    let store = db.rt.block_on(async {
        PostgresStore::new(TestDbPools::new(db.pool.clone()).await.unwrap())
            .with_limits(limits.clone())
    });
    check(
        "uploads_do_not_depend_on_chunking_and_match_the_parser",
        40,
        (inputs::jsonl_file(), inputs::cuts()),
        |(data, cuts)| {
            db.rt.block_on(async {
                let (templates, count, kept, urls) = expected(&data.0, &limits);
                for cuts in [&[][..], &cuts] {
                    let new = NewFile {
                        owner: "o".into(),
                        filename: "f.jsonl".into(),
                        expires_at: None,
                    };
                    let file = store
                        .create_file(new, stream::iter(chunked(&data.0, cuts)))
                        .await
                        .map_err(|e| TestCaseError::fail(format!("upload failed: {e}")))?;
                    prop_assert_eq!(file.bytes, data.0.len() as i64);
                    prop_assert_eq!(file.template_count, templates.len() as i64);
                    prop_assert_eq!(file.error_count, count);
                    let got: Vec<_> = file.errors.iter().map(|e| (e.line, e.code)).collect();
                    prop_assert_eq!(&got, &kept, "cut at {:?}: {:?}", cuts, file.errors);
                    prop_assert_eq!(&file.urls, &urls);
                    let rows: Vec<(i64, String, String, String, String)> = sqlx::query_as(
                        "SELECT line_number, custom_id, path, body, model FROM request_templates \
                         WHERE file_id = $1 ORDER BY line_number",
                    )
                    .bind(file.id)
                    .fetch_all(&db.pool)
                    .await
                    .unwrap();
                    prop_assert_eq!(&rows, &templates);
                    // The original bytes come back, bodies spliced in again.
                    let content: Vec<Bytes> = store
                        .file_content(Owner::Any, file.id)
                        .await
                        .unwrap()
                        .try_collect()
                        .await
                        .map_err(|e| TestCaseError::fail(format!("download failed: {e}")))?;
                    prop_assert_eq!(Data(content.concat()), data.clone());
                }
                Ok(())
            })
        },
    );
}

fn harness(db: &ScratchDb) -> Harness {
    db.rt.block_on(Harness::new(&db.pool))
}

/// The answer's fields that must not depend on how the body was cut.
fn upload_summary(a: &Answer) -> (u16, Value) {
    let mut v = a.json();
    if let Some(o) = v.as_object_mut() {
        for k in ["id", "created_at", "expires_at"] {
            o.remove(k);
        }
    }
    (a.status, v)
}

#[test]
fn prop_multipart_uploads_do_not_depend_on_chunking_and_never_fail_the_server() {
    let db = ScratchDb::fresh();
    let h = harness(&db);
    let boundary = prop_oneof![
        3 => Just("fuzzboundary".to_owned()),
        1 => "[a-zA-Z0-9'()+_,-./:=?]{1,70}",
    ];
    check(
        "multipart_uploads_do_not_depend_on_chunking_and_never_fail_the_server",
        100,
        (
            inputs::upload_fields(),
            boundary,
            inputs::multipart_content_type(),
            inputs::damage(),
            inputs::cuts(),
        ),
        |(fields, boundary, content_type, damage, cuts)| {
            let body = damage.apply(inputs::multipart(&fields, &boundary));
            let content_type = content_type.map(|c| c.replace("BOUNDARY", &boundary));
            let request = |body: Body| {
                let mut b = Request::post("/v1/files")
                    .header(header::AUTHORIZATION, format!("Bearer {}", KEYS[0]));
                if let Some(c) = &content_type {
                    b = b.header(header::CONTENT_TYPE, c);
                }
                b.body(body).unwrap()
            };
            db.rt.block_on(async {
                let whole = h
                    .check(request(Body::from(body.clone())))
                    .await
                    .map_err(TestCaseError::fail)?;
                let cut = h
                    .check(request(Body::from_stream(trickle(chunked(&body, &cuts)))))
                    .await
                    .map_err(TestCaseError::fail)?;
                prop_assert_eq!(upload_summary(&whole), upload_summary(&cut));
                Ok(())
            })
        },
    );
}

/// A body for `POST /v1/batches`: right, nearly right, or anything.
fn batch_body(file: String) -> impl Strategy<Value = Vec<u8>> {
    let file_id = prop_oneof![
        3 => Just(Value::String(file)),
        1 => inputs::nasty_string().prop_map(Value::String),
        1 => inputs::json_value(),
    ];
    let endpoint = prop_oneof![
        3 => Just(json!("/v1/chat/completions")),
        1 => inputs::nasty_string().prop_map(Value::String),
        1 => inputs::json_value(),
    ];
    let window = prop_oneof![
        3 => select(vec!["24h", "1h", "90m", "1m"]).prop_map(Value::from),
        2 => inputs::nasty_string().prop_map(Value::String),
        1 => inputs::json_value(),
    ];
    let metadata = prop_oneof![
        prop::collection::btree_map(inputs::nasty_string(), inputs::nasty_string(), 0..20)
            .prop_map(|m| json!(m)),
        inputs::json_value(),
    ];
    let expiry = prop_oneof![
        Just(json!({"anchor": "created_at", "seconds": 86400})),
        (inputs::json_value(), inputs::json_value())
            .prop_map(|(a, s)| json!({"anchor": a, "seconds": s})),
        inputs::json_value(),
    ];
    let structured = (
        prop::option::weighted(0.9, file_id),
        prop::option::weighted(0.9, endpoint),
        prop::option::weighted(0.9, window),
        prop::option::weighted(0.4, metadata),
        prop::option::weighted(0.3, expiry),
        prop::option::weighted(0.2, (inputs::nasty_string(), inputs::json_value())),
    )
        .prop_map(|(f, e, w, m, x, other)| {
            let mut o = serde_json::Map::new();
            for (k, v) in [
                ("input_file_id", f),
                ("endpoint", e),
                ("completion_window", w),
                ("metadata", m),
                ("output_expires_after", x),
            ] {
                if let Some(v) = v {
                    o.insert(k.into(), v);
                }
            }
            if let Some((k, v)) = other {
                o.insert(k, v);
            }
            serde_json::to_vec(&Value::Object(o)).unwrap()
        });
    prop_oneof![
        6 => structured,
        1 => inputs::json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        1 => inputs::bytes(b"{}[]\":,\\u0", 60).prop_map(|d| d.0),
    ]
}

/// An `Idempotency-Key` header value, or none.
fn idempotency_key() -> impl Strategy<Value = Option<Vec<u8>>> {
    prop_oneof![
        3 => Just(None),
        1 => "[ -~]{0,300}".prop_map(|s| Some(s.into_bytes())),
        1 => prop::collection::vec(0x80u8..=0xff, 1..8).prop_map(Some),
    ]
}

#[test]
fn prop_batch_create_bodies_never_fail_the_server() {
    let db = ScratchDb::fresh();
    let h = harness(&db);
    check(
        "batch_create_bodies_never_fail_the_server",
        150,
        (batch_body(h.ids.file.clone()), idempotency_key(), 0..2usize),
        |(body, key, who)| {
            let mut b = Request::post("/v1/batches")
                .header(header::AUTHORIZATION, format!("Bearer {}", KEYS[who]))
                .header(header::CONTENT_TYPE, "application/json");
            if let Some(k) = key {
                b = b.header(
                    "idempotency-key",
                    header::HeaderValue::from_bytes(&k).unwrap(),
                );
            }
            let request = b.body(Body::from(body)).unwrap();
            db.rt
                .block_on(h.check(request))
                .map_err(TestCaseError::fail)?;
            Ok(())
        },
    );
}

#[test]
fn prop_batch_metadata_never_fails_the_server() {
    let db = ScratchDb::fresh();
    let h = harness(&db);
    let file = h.ids.file.clone();
    // Everything else right, so that the metadata reaches the database.
    let metadata =
        prop::collection::btree_map(inputs::nasty_string(), inputs::nasty_string(), 0..18);
    check(
        "batch_metadata_never_fails_the_server",
        100,
        metadata,
        |metadata| {
            let body = json!({"input_file_id": file, "endpoint": "/v1/chat/completions",
                              "completion_window": "24h", "metadata": metadata});
            let request = Request::post("/v1/batches")
                .header(header::AUTHORIZATION, format!("Bearer {}", KEYS[0]))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string()))
                .unwrap();
            db.rt
                .block_on(h.check(request))
                .map_err(TestCaseError::fail)?;
            Ok(())
        },
    );
}

/// A query string of known and unknown keys with values of any kind, some
/// percent-escapes broken on purpose.
fn query(ids: Vec<String>) -> impl Strategy<Value = String> {
    let key = prop_oneof![
        4 => select(vec!["limit", "after", "purpose", "order"]).prop_map(str::to_owned),
        1 => inputs::nasty_string(),
    ];
    let value = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        select(vec![
            "0",
            "1",
            "100",
            "101",
            "10001",
            "-1",
            "1e3",
            "99999999999999999999",
            ""
        ])
        .prop_map(str::to_owned),
        select(ids),
        inputs::nasty_string(),
    ];
    let pair = (key, value, any::<bool>()).prop_map(|(k, v, raw)| {
        if raw {
            // Left as it is: `%` and all, so escapes may be broken.
            format!(
                "{}={}",
                encode(k.as_bytes(), b"%"),
                encode(v.as_bytes(), b"%")
            )
        } else {
            format!(
                "{}={}",
                encode(k.as_bytes(), b""),
                encode(v.as_bytes(), b"")
            )
        }
    });
    prop::collection::vec(pair, 0..4).prop_map(|p| p.join("&"))
}

#[test]
fn prop_list_queries_never_fail_the_server() {
    let db = ScratchDb::fresh();
    let h = harness(&db);
    let ids = vec![
        h.ids.file.clone(),
        h.ids.batch.clone(),
        h.ids.request.clone(),
    ];
    let batch = h.ids.batch.clone();
    let path = select(vec![
        "/v1/batches".to_owned(),
        "/v1/files".to_owned(),
        format!("/v1/batches/{batch}/requests"),
    ]);
    check(
        "list_queries_never_fail_the_server",
        150,
        (path, query(ids), 0..2usize),
        |(path, query, who)| {
            let request = Request::get(format!("{path}?{query}"))
                .header(header::AUTHORIZATION, format!("Bearer {}", KEYS[who]))
                .body(Body::empty())
                .unwrap();
            db.rt
                .block_on(h.check(request))
                .map_err(TestCaseError::fail)?;
            Ok(())
        },
    );
}

#[test]
fn prop_ids_in_paths_never_fail_the_server() {
    let db = ScratchDb::fresh();
    let h = harness(&db);
    let id = prop_oneof![
        2 => select(vec![h.ids.file.clone(), h.ids.batch.clone(), h.ids.request.clone()]),
        2 => inputs::nasty_string(),
        1 => inputs::bytes(b"%-_", 20).prop_map(|d| String::from_utf8_lossy(&d.0).into_owned()),
    ];
    let route = select(vec![
        (Method::GET, "/v1/batches/ID"),
        (Method::POST, "/v1/batches/ID/cancel"),
        (Method::POST, "/v1/batches/ID/retry"),
        (Method::GET, "/v1/batches/ID/requests"),
        (Method::GET, "/v1/files/ID"),
        (Method::DELETE, "/v1/files/ID"),
        (Method::GET, "/v1/files/ID/content"),
    ]);
    check(
        "ids_in_paths_never_fail_the_server",
        150,
        (route, id, any::<bool>(), 0..2usize),
        |((method, path), id, raw, who)| {
            // Raw: `%` left in, so escapes may be broken or not UTF-8.
            let keep: &[u8] = if raw { b"-._~%" } else { b"-._~" };
            let path = path.replace("ID", &encode(id.as_bytes(), keep));
            let Ok(request) = Request::builder()
                .method(method)
                .uri(&path)
                .header(header::AUTHORIZATION, format!("Bearer {}", KEYS[who]))
                .body(Body::empty())
            else {
                return Ok(()); // not a URI a client could send
            };
            db.rt
                .block_on(h.check(request))
                .map_err(TestCaseError::fail)?;
            Ok(())
        },
    );
}

#[test]
fn prop_requests_made_from_bytes_never_fail_the_server() {
    let db = ScratchDb::fresh();
    let h = harness(&db);
    check(
        "requests_made_from_bytes_never_fail_the_server",
        150,
        (
            any::<u8>(),
            any::<u8>(),
            inputs::bytes(b"\n$FILE$BATCH$REQ{}\"=&%", 120),
        ),
        |(route, who, rest)| {
            let mut data = vec![route, who];
            data.extend_from_slice(&rest.0);
            let request = fuzzing::api::request(&data, &h.ids);
            db.rt
                .block_on(h.check(request))
                .map_err(TestCaseError::fail)?;
            Ok(())
        },
    );
}

/// Regressions the properties above found, each pinned by name.
mod found {
    use super::*;

    fn call(h: &Harness, db: &ScratchDb, method: Method, path: &str, body: Value) -> Answer {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {}", KEYS[0]))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        db.rt.block_on(h.check(request)).unwrap()
    }

    #[test]
    fn a_completion_window_ending_in_a_multibyte_character_is_a_400() {
        // The handler panicked, so the call got no answer at all.
        let db = ScratchDb::fresh();
        let h = harness(&db);
        let body = json!({"input_file_id": h.ids.file, "endpoint": "/v1/chat/completions",
                          "completion_window": "1é"});
        let a = call(&h, &db, Method::POST, "/v1/batches", body);
        assert_eq!(a.status, 400);
        assert_eq!(a.json()["error"]["param"], "completion_window");
    }

    #[test]
    fn an_id_that_is_not_utf8_is_a_404_in_the_envelope() {
        // axum's own rejection answered in plain text.
        let db = ScratchDb::fresh();
        let h = harness(&db);
        for (method, path) in [
            (Method::GET, "/v1/batches/%80"),
            (Method::POST, "/v1/batches/%80/cancel"),
            (Method::POST, "/v1/batches/%FF/retry"),
            (Method::GET, "/v1/batches/%C3/requests"),
            (Method::GET, "/v1/files/%80"),
            (Method::DELETE, "/v1/files/%80"),
            (Method::GET, "/v1/files/%80/content"),
        ] {
            let a = call(&h, &db, method.clone(), path, Value::Null);
            assert_eq!(a.status, 404, "{method} {path}");
            assert_eq!(a.json()["error"]["code"], "not_found", "{method} {path}");
        }
    }

    #[test]
    fn a_batch_body_over_the_size_limit_is_a_413_in_the_envelope() {
        // Seen while writing the checks above, not drawn by them (their
        // bodies are small): axum's own rejection answered in plain text.
        let db = ScratchDb::fresh();
        let h = harness(&db);
        let body = json!({"input_file_id": h.ids.file, "endpoint": "/v1/chat/completions",
                          "completion_window": "24h", "pad": "x".repeat(3 << 20)});
        let a = call(&h, &db, Method::POST, "/v1/batches", body);
        assert_eq!(a.status, 413);
        assert_eq!(a.json()["error"]["code"], "request_too_large");
    }

    #[test]
    fn an_upload_whose_body_comes_whole_after_a_wait_is_read() {
        // multer (under axum's Multipart) took a body whose bytes and end
        // came in the same poll, after a wait, for "incomplete multipart
        // stream": a 400 for a good upload, whenever the last bytes arrive
        // between two polls. Found by the chunking property above.
        let db = ScratchDb::fresh();
        let h = harness(&db);
        let body = prop_support::harness::upload_body(
            format!("{}\n", prop_support::harness::line("x")).as_bytes(),
        );
        for cuts in [&[][..], &[7], &[body.len()]] {
            let request = Request::post("/v1/files")
                .header(header::AUTHORIZATION, format!("Bearer {}", KEYS[0]))
                .header(
                    header::CONTENT_TYPE,
                    format!("multipart/form-data; boundary={}", fuzzing::api::BOUNDARY),
                )
                .body(Body::from_stream(trickle(chunked(&body, cuts))))
                .unwrap();
            let a = db.rt.block_on(h.check(request)).unwrap();
            assert_eq!(a.status, 200, "cut at {cuts:?}: {:?}", a.json());
        }
    }
}
