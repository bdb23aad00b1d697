//! Uploads parsed line by line with OpenAI's validation rules, and downloads
//! of the exact bytes uploaded.
//!
//! Which lines of a file with refused lines became templates is seen by no
//! caller (a batch of such a file fails without requests), so only files
//! of valid lines have their templates read (see [`templates`]).

use super::*;
use crate::common::{CHAT, chat_body, chunked, jsonl, line, line_with, model_of, valid_file};
use chrono::{Duration, Utc};
use fusillade::StoreError;
use fusillade::domain::file::{FileKind, FilePurpose, LineError, LineErrorCode};
use fusillade::store::{FileListQuery, NewFile, Order, Owner};

/// A file's errors as (line, code) pairs.
fn errors_of(errors: &[LineError]) -> Vec<(Option<u64>, LineErrorCode)> {
    errors.iter().map(|e| (e.line, e.code)).collect()
}

/// Uploads `data` in `chunk`-byte pieces; the store's answer as is.
async fn try_upload<S: Backend>(
    store: &S,
    data: &[u8],
    chunk: usize,
) -> fusillade::store::Result<File> {
    let new = NewFile {
        owner: "alice".into(),
        filename: "input.jsonl".into(),
        expires_at: None,
    };
    store.create_file(new, chunked(data, chunk)).await
}

/// Uploads raw bytes for alice in 7-byte chunks.
async fn upload_bytes<S: Backend>(store: &S, data: &[u8]) -> File {
    try_upload(store, data, 7).await.unwrap()
}

/// What the file downloads as.
async fn content<S: Backend>(store: &S, file: &File) -> Vec<u8> {
    collect(store.file_content(Owner::Any, file.id).await.unwrap()).await
}

/// Every file anyone can see.
async fn all_files<S: Backend>(store: &S) -> Vec<File> {
    let q = FileListQuery {
        owner: Owner::Any,
        purpose: None,
        after: None,
        limit: 1000,
        order: Order::default(),
    };
    store.list_files(q).await.unwrap().items
}

pub async fn a_valid_file_becomes_templates<S: Backend>(store: &S) {
    let expires = Utc::now() + Duration::days(3);
    let text = valid_file("r", 3);
    let new = NewFile {
        owner: "alice".into(),
        filename: "requests.jsonl".into(),
        expires_at: Some(expires),
    };
    let file = store
        .create_file(new, chunked(text.as_bytes(), 7))
        .await
        .unwrap();

    assert_eq!(file.owner, "alice");
    assert_eq!(file.filename, "requests.jsonl");
    assert_eq!(file.purpose, FilePurpose::Batch);
    assert_eq!(file.kind, FileKind::Input);
    assert_eq!(file.batch_id, None);
    assert_eq!(file.bytes, text.len() as i64);
    assert_eq!((file.template_count, file.error_count), (3, 0));
    assert!(file.errors.is_empty());
    assert_eq!(file.urls, vec![CHAT.to_string()]);
    // Kept to the microsecond at least.
    let stored = file.expires_at.unwrap();
    assert!((stored - expires).num_microseconds().unwrap().abs() <= 1);
    assert_eq!(
        store.get_file(Owner::Any, file.id).await.unwrap().as_ref(),
        Some(&file)
    );

    let rows = templates(store, &file).await;
    assert_eq!(rows.len(), 3);
    for (i, t) in rows.iter().enumerate() {
        let id = format!("r{i}");
        assert_eq!(t.line, i as u64 + 1);
        assert_eq!(t.custom_id, id);
        assert_eq!(t.path, CHAT);
        assert_eq!(t.model, model_of(&id));
        assert_eq!(t.body, chat_body(&id, &model_of(&id)));
    }
}

pub async fn each_refused_line_is_numbered_and_the_other_lines_are_kept<S: Backend>(store: &S) {
    let good_body = chat_body("x", "m");
    let cases: Vec<(&str, String, LineErrorCode)> = vec![
        (
            "not json",
            "this is not json".into(),
            LineErrorCode::InvalidJsonLine,
        ),
        (
            "broken json",
            r#"{"custom_id":"b","#.into(),
            LineErrorCode::InvalidJsonLine,
        ),
        (
            "array",
            r#"[{"custom_id":"b"}]"#.into(),
            LineErrorCode::InvalidJsonLine,
        ),
        ("scalar", "42".into(), LineErrorCode::InvalidJsonLine),
        (
            "no custom_id",
            format!(r#"{{"method":"POST","url":"{CHAT}","body":{good_body}}}"#),
            LineErrorCode::MissingCustomId,
        ),
        (
            "empty custom_id",
            line_with("", CHAT, &good_body),
            LineErrorCode::MissingCustomId,
        ),
        (
            "GET",
            format!(r#"{{"custom_id":"b","method":"GET","url":"{CHAT}","body":{good_body}}}"#),
            LineErrorCode::InvalidMethod,
        ),
        (
            "no method",
            format!(r#"{{"custom_id":"b","url":"{CHAT}","body":{good_body}}}"#),
            LineErrorCode::InvalidMethod,
        ),
        (
            "unknown url",
            line_with("b", "/v1/images/generations", &good_body),
            LineErrorCode::InvalidUrl,
        ),
        (
            "body is a string",
            line_with("b", CHAT, r#""hello""#),
            LineErrorCode::InvalidBody,
        ),
        (
            "body is an array",
            line_with("b", CHAT, r#"[{"model":"m"}]"#),
            LineErrorCode::InvalidBody,
        ),
        (
            "no body",
            format!(r#"{{"custom_id":"b","method":"POST","url":"{CHAT}"}}"#),
            LineErrorCode::InvalidBody,
        ),
        (
            "body without model",
            line_with("b", CHAT, r#"{"messages":[]}"#),
            LineErrorCode::MissingModel,
        ),
        (
            "model not a string",
            line_with("b", CHAT, r#"{"model":7}"#),
            LineErrorCode::MissingModel,
        ),
    ];
    for (name, bad, code) in cases {
        let text = jsonl(&[line("a"), bad, line("c")]);
        let file = upload(store, "alice", &text).await;
        assert_eq!((file.template_count, file.error_count), (2, 1), "{name}");
        assert_eq!(errors_of(&file.errors), vec![(Some(2), code)], "{name}");
        assert!(!file.errors[0].message.is_empty(), "{name}");
        assert_eq!(file.urls, vec![CHAT.to_string()], "{name}");
        assert!(content(store, &file).await == text.as_bytes(), "{name}");
    }
}

pub async fn a_duplicate_custom_id_refuses_the_later_line<S: Backend>(store: &S) {
    let text = jsonl(&[
        line_with("a", CHAT, &chat_body("first", "m1")),
        line("b"),
        line_with("a", CHAT, &chat_body("second", "m3")),
        line("c"),
        line_with("a", CHAT, &chat_body("third", "m5")),
    ]);
    let file = upload(store, "alice", &text).await;
    assert_eq!((file.template_count, file.error_count), (3, 2));
    assert_eq!(
        errors_of(&file.errors),
        vec![
            (Some(3), LineErrorCode::DuplicateCustomId),
            (Some(5), LineErrorCode::DuplicateCustomId)
        ]
    );
    for e in &file.errors {
        assert!(e.message.contains("line 1"), "{}", e.message);
        assert!(e.message.contains("\"a\""), "{}", e.message);
    }
    // The refused lines stay in the file's content.
    assert!(content(store, &file).await == text.as_bytes());
}

pub async fn an_empty_file_is_one_error_without_a_line<S: Backend>(store: &S) {
    for text in ["", "\n", "\n\n   \n\t\r\n\r\n"] {
        let file = upload(store, "alice", text).await;
        assert_eq!(file.bytes, text.len() as i64, "{text:?}");
        assert_eq!((file.template_count, file.error_count), (0, 1), "{text:?}");
        assert_eq!(
            errors_of(&file.errors),
            vec![(None, LineErrorCode::EmptyFile)],
            "{text:?}"
        );
        assert!(file.urls.is_empty(), "{text:?}");
    }
}

pub async fn blank_lines_are_skipped_but_counted<S: Backend>(store: &S) {
    let text = format!("\n{}\n\n   \n{}\n{}\n\n", line("a"), "oops", line("b"));
    let file = upload(store, "alice", &text).await;
    assert_eq!((file.template_count, file.error_count), (2, 1));
    assert_eq!(
        errors_of(&file.errors),
        vec![(Some(5), LineErrorCode::InvalidJsonLine)]
    );
    // Without the refused line, the kept ones keep their numbers.
    let text = format!("\n{}\n\n   \n\n{}\n\n", line("a"), line("b"));
    let file = upload(store, "alice", &text).await;
    assert_eq!(template_lines(store, &file).await, vec![2, 6]);
}

pub async fn crlf_endings_bom_and_a_last_line_without_newline_are_accepted<S: Backend>(store: &S) {
    let text = format!(
        "\u{feff}{}\r\n\r\n{}\r\nnope\r\n{}",
        line("a"),
        line("b"),
        line("c")
    );
    let file = upload(store, "alice", &text).await;
    assert_eq!((file.template_count, file.error_count), (3, 1));
    assert_eq!(
        errors_of(&file.errors),
        vec![(Some(4), LineErrorCode::InvalidJsonLine)]
    );
    // The download is the upload, BOM and CRs included.
    assert_eq!(content(store, &file).await, text.as_bytes());

    let text = format!(
        "\u{feff}{}\r\n\r\n{}\r\n{}",
        line("a"),
        line("b"),
        line("c")
    );
    let file = upload(store, "alice", &text).await;
    let rows = templates(store, &file).await;
    let kept: Vec<(u64, &str)> = rows
        .iter()
        .map(|t| (t.line, t.custom_id.as_str()))
        .collect();
    assert_eq!(kept, vec![(1, "a"), (3, "b"), (4, "c")]);
    for t in &rows {
        assert_eq!(t.body, chat_body(&t.custom_id, &model_of(&t.custom_id)));
        assert!(!t.body.contains('\r'));
    }
}

pub async fn body_text_is_stored_exactly_as_written<S: Backend>(store: &S) {
    let body = "{ \"model\" : \"m\",\t\"messages\" : [ {\"role\":\"user\", \
                \"content\":\"caf\\u00e9 \u{e9} \\\"q\\\"\"} ] , \"n\": 1.50 }";
    let text = format!(
        "{{ \"custom_id\" : \"a\" , \"method\":\"POST\", \"url\":\"{CHAT}\", \"body\" :{body} }}\n"
    );
    let file = upload(store, "alice", &text).await;
    assert_eq!((file.template_count, file.error_count), (1, 0));
    let rows = templates(store, &file).await;
    assert_eq!(rows[0].body, body);
    assert_eq!(rows[0].model, "m");
}

pub async fn escaped_custom_id_and_model_are_unescaped<S: Backend>(store: &S) {
    let text = jsonl(&[line_with(r#"a\"b\u00e9"#, CHAT, r#"{"model":"m\/1"}"#)]);
    let file = upload(store, "alice", &text).await;
    let rows = templates(store, &file).await;
    assert_eq!(rows[0].custom_id, "a\"b\u{e9}");
    assert_eq!(rows[0].model, "m/1");
}

/// A line of exactly `len` bytes with this custom_id.
fn padded(id: &str, len: usize) -> String {
    let short = line_with(id, CHAT, r#"{"model":"m","p":""}"#);
    let fill = "x".repeat(len - short.len());
    let l = line_with(id, CHAT, &format!(r#"{{"model":"m","p":"{fill}"}}"#));
    assert_eq!(l.len(), len);
    l
}

pub async fn a_line_over_the_limit_is_refused_and_parsing_goes_on<S: Backend>(store: &S) {
    let store = &store.with_limits(IngestLimits {
        max_line_bytes: 200,
        ..Default::default()
    });
    let text = format!(
        "{}\n{}\n{}\r\n{}\r\n{}\n{}",
        line("a"),
        padded("long", 300),
        padded("exact", 200),
        padded("over", 201),
        line("b"),
        padded("last", 5000),
    );
    let file = upload(store, "alice", &text).await;
    assert_eq!((file.template_count, file.error_count), (3, 3));
    assert_eq!(
        errors_of(&file.errors),
        vec![
            (Some(2), LineErrorCode::LineTooLong),
            (Some(4), LineErrorCode::LineTooLong),
            (Some(6), LineErrorCode::LineTooLong)
        ]
    );
    assert!(
        file.errors[0].message.contains("300"),
        "{:?}",
        file.errors[0]
    );
    assert!(
        file.errors[1].message.contains("201"),
        "{:?}",
        file.errors[1]
    );
    assert_eq!(content(store, &file).await, text.as_bytes());
    // A line of exactly the limit is kept whole.
    let text = format!("{}\n{}\r\n", line("a"), padded("exact", 200));
    let file = upload(store, "alice", &text).await;
    let rows = templates(store, &file).await;
    assert_eq!(rows.iter().map(|t| t.line).collect::<Vec<_>>(), vec![1, 2]);
    assert!(text.contains(&rows[1].body));
}

pub async fn invalid_utf8_is_refused_by_line<S: Backend>(store: &S) {
    let mut data = format!("{}\n", line("a")).into_bytes();
    data.extend_from_slice(b"{\"custom_id\":\"\xff\xfe\",\"method\":\"POST\"}\n");
    data.extend_from_slice(format!("{}\n", line("c")).as_bytes());
    let file = upload_bytes(store, &data).await;
    assert_eq!((file.template_count, file.error_count), (2, 1));
    assert_eq!(
        errors_of(&file.errors),
        vec![(Some(2), LineErrorCode::InvalidUtf8)]
    );
    assert_eq!(content(store, &file).await, data);
}

pub async fn a_file_over_the_size_limit_stores_nothing<S: Backend>(store: &S) {
    let store = &store.with_limits(IngestLimits {
        max_file_bytes: 1000,
        ..Default::default()
    });
    let text = valid_file("r", 20);
    assert!(text.len() > 1000);
    for chunk in [7, 1 << 20] {
        let err = try_upload(store, text.as_bytes(), chunk).await.unwrap_err();
        assert!(
            matches!(err, StoreError::TooLarge { limit: 1000 }),
            "{err:?}"
        );
    }
    assert!(all_files(store).await.is_empty());
    // Exactly at the limit is fine.
    let mut exact = valid_file("r", 5);
    exact.push_str(&" ".repeat(1000 - exact.len()));
    let file = try_upload(store, exact.as_bytes(), 7).await.unwrap();
    assert_eq!((file.bytes, file.template_count), (1000, 5));
    assert_eq!(all_files(store).await.len(), 1);
}

pub async fn only_the_first_errors_are_kept_but_all_are_counted<S: Backend>(store: &S) {
    // Line-order mix of parse errors and duplicates (found by the store later).
    let mut lines = vec![line("a"), line("a"), "bad".to_string(), line("b")];
    lines.extend((0..10).map(|i| format!("bad {i}")));
    lines.extend([line("b"), line("c")]);
    let text = jsonl(&lines);
    for keep in [0, 1, 3, 1000] {
        let store = &store.with_limits(IngestLimits {
            max_kept_errors: keep,
            ..Default::default()
        });
        let file = upload(store, "alice", &text).await;
        assert_eq!((file.template_count, file.error_count), (3, 13), "{keep}");
        let mut want = vec![
            (Some(2), LineErrorCode::DuplicateCustomId),
            (Some(3), LineErrorCode::InvalidJsonLine),
        ];
        want.extend((5..15).map(|l| (Some(l), LineErrorCode::InvalidJsonLine)));
        want.push((Some(15), LineErrorCode::DuplicateCustomId));
        want.truncate(keep);
        assert_eq!(errors_of(&file.errors), want, "{keep}");
    }
}

pub async fn content_of_a_large_input_file_is_the_exact_upload<S: Backend>(store: &S) {
    // Over 4 MiB, with long refused lines, so several parts even with the
    // bodies cut out of them, and odd chunk edges.
    let big = "y".repeat(3000);
    let mut text = String::new();
    let mut i = 0;
    while text.len() < (9 << 20) {
        let l = match i % 5 {
            2 => format!("not json {i} {big}"),
            _ => line_with(&format!("r{i}"), CHAT, &chat_body(&big, "m")),
        };
        text.push_str(&l);
        text.push('\n');
        i += 1;
    }
    let file = try_upload(store, text.as_bytes(), 65_537).await.unwrap();
    assert_eq!(file.bytes, text.len() as i64);
    assert_eq!(file.template_count + file.error_count, i);
    assert_eq!(file.error_count, (i + 2) / 5);
    let got = collect(
        store
            .file_content(Owner::Only("alice"), file.id)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(got.len(), text.len());
    assert!(got == text.as_bytes());
}

pub async fn a_bom_does_not_count_towards_the_line_limit<S: Backend>(store: &S) {
    let store = &store.with_limits(IngestLimits {
        max_line_bytes: 200,
        ..Default::default()
    });
    let exact = padded("a", 200);
    for ending in ["\n", "\r\n", ""] {
        let text = format!("\u{feff}{exact}{ending}");
        for chunk in [1, 7, 64, 1 << 20] {
            let file = try_upload(store, text.as_bytes(), chunk).await.unwrap();
            assert_eq!(
                (file.template_count, file.error_count),
                (1, 0),
                "{ending:?} chunk {chunk}: {:?}",
                file.errors
            );
        }
    }
    // One byte more is too long, BOM or not.
    let text = format!("\u{feff}{exact}x\n{}\n", line("b"));
    for chunk in [1, 7, 1 << 20] {
        let file = try_upload(store, text.as_bytes(), chunk).await.unwrap();
        assert_eq!(
            errors_of(&file.errors),
            vec![(Some(1), LineErrorCode::LineTooLong)],
            "chunk {chunk}"
        );
        assert_eq!(file.template_count, 1);
    }
}

/// A file with every kind of line: duplicates, refused lines, one over the
/// line limit, invalid UTF-8, escapes, blank lines, CRLF, a BOM.
fn mixed_file() -> Vec<u8> {
    let mut text = b"\xEF\xBB\xBF".to_vec();
    for i in 0..400 {
        let l = match i % 10 {
            1 => line(&format!("r{}", i - 1)),
            2 => format!("not json {i}"),
            3 => line_with("r0", CHAT, &chat_body("again", "m")),
            4 => format!("{}\r", line(&format!("r{i}"))),
            5 => String::new(),
            6 => format!(
                "{{\"custom_id\":\"e\\u00e9{i}\",\"method\":\"POST\",\"url\":\"{CHAT}\",\
                 \"body\": {{ \"model\" : \"m\\u00e9\" }} }}"
            ),
            7 => line_with(&format!("r{i}"), CHAT, &chat_body(&"z".repeat(700), "m")),
            _ => line(&format!("r{i}")),
        };
        text.extend_from_slice(l.as_bytes());
        if i == 8 {
            text.extend_from_slice(b"{\"custom_id\":\"\xff\"}");
        }
        text.push(b'\n');
    }
    text.extend_from_slice(line("last").as_bytes());
    text
}

pub async fn every_kind_of_line_downloads_exactly_at_any_chunk_size<S: Backend>(store: &S) {
    let text = mixed_file();
    // A small fingerprint budget sends the later lines to the store's
    // duplicate check; none sends every line there.
    for max_fingerprints in [usize::MAX, 50, 0] {
        let store = &store.with_limits(IngestLimits {
            max_line_bytes: 600,
            max_fingerprints,
            ..Default::default()
        });
        let mut seen = None;
        for chunk in [1, 7, 4096, 1 << 20] {
            let file = try_upload(store, &text, chunk).await.unwrap();
            assert_eq!(file.bytes, text.len() as i64);
            let counts = (file.template_count, file.error_count, file.errors.clone());
            if let Some(seen) = &seen {
                assert_eq!(&counts, seen, "{max_fingerprints} {chunk}");
            }
            seen = Some(counts);
            let codes: Vec<LineErrorCode> = file.errors.iter().map(|e| e.code).collect();
            for code in [
                LineErrorCode::DuplicateCustomId,
                LineErrorCode::InvalidJsonLine,
                LineErrorCode::LineTooLong,
                LineErrorCode::InvalidUtf8,
            ] {
                assert!(codes.contains(&code), "{code} {max_fingerprints} {chunk}");
            }
            assert!(
                content(store, &file).await == text,
                "{max_fingerprints} {chunk}"
            );
        }
    }
}
