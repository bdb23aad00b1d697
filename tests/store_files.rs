//! `FileStore` against a real PostgreSQL: uploads parsed line by line with
//! OpenAI's validation rules, and downloads of the exact bytes uploaded.

mod common;

use chrono::{Duration, Utc};
use common::*;
use fusillade::domain::file::{FileKind, FilePurpose, LineError, LineErrorCode};
use fusillade::store::{NewFile, Owner};
use fusillade::{FileStore, IngestLimits, StoreError};
use sqlx::PgPool;

/// A file's errors as (line, code) pairs.
fn errors_of(errors: &[LineError]) -> Vec<(Option<u64>, LineErrorCode)> {
    errors.iter().map(|e| (e.line, e.code)).collect()
}

#[sqlx::test]
async fn a_valid_file_becomes_templates(pool: PgPool) {
    let store = store(&pool).await;
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
    // PostgreSQL keeps microseconds.
    let stored = file.expires_at.unwrap();
    assert!((stored - expires).num_microseconds().unwrap().abs() <= 1);

    let rows = templates(&pool, file.id).await;
    assert_eq!(rows.len(), 3);
    for (i, t) in rows.iter().enumerate() {
        let id = format!("r{i}");
        assert_eq!(t.line_number, i as i64 + 1);
        assert_eq!(t.custom_id, id);
        assert_eq!(t.method, "POST");
        assert_eq!(t.path, CHAT);
        assert_eq!(t.model, model_of(&id));
        assert_eq!(t.body, chat_body(&id, &model_of(&id)));
        assert_eq!(t.body_byte_size, t.body.len() as i64);
    }
    assert_eq!(
        store.get_file(Owner::Any, file.id).await.unwrap(),
        Some(file)
    );
}

#[sqlx::test]
async fn each_refused_line_is_numbered_and_the_other_lines_are_kept(pool: PgPool) {
    let store = store(&pool).await;
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
        let file = upload(&store, "alice", &jsonl(&[line("a"), bad, line("c")])).await;
        assert_eq!((file.template_count, file.error_count), (2, 1), "{name}");
        assert_eq!(errors_of(&file.errors), vec![(Some(2), code)], "{name}");
        assert!(!file.errors[0].message.is_empty(), "{name}");
        let rows = templates(&pool, file.id).await;
        let kept: Vec<(i64, &str)> = rows
            .iter()
            .map(|t| (t.line_number, t.custom_id.as_str()))
            .collect();
        assert_eq!(kept, vec![(1, "a"), (3, "c")], "{name}");
        assert_eq!(rows[1].body, chat_body("c", &model_of("c")), "{name}");
    }
}

#[sqlx::test]
async fn a_duplicate_custom_id_refuses_the_later_line(pool: PgPool) {
    let store = store(&pool).await;
    let text = jsonl(&[
        line_with("a", CHAT, &chat_body("first", "m1")),
        line("b"),
        line_with("a", CHAT, &chat_body("second", "m3")),
        line("c"),
        line_with("a", CHAT, &chat_body("third", "m5")),
    ]);
    let file = upload(&store, "alice", &text).await;
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
    let rows = templates(&pool, file.id).await;
    let kept: Vec<(i64, &str, &str)> = rows
        .iter()
        .map(|t| (t.line_number, t.custom_id.as_str(), t.model.as_str()))
        .collect();
    assert_eq!(kept, vec![(1, "a", "m1"), (2, "b", "m-b"), (4, "c", "m-c")]);
    assert_eq!(rows[0].body, chat_body("first", "m1"));
    // The refused lines' bodies are gone from the templates but not from the file.
    let content = collect(store.file_content(Owner::Any, file.id).await.unwrap()).await;
    assert!(content == text.as_bytes());
}

#[sqlx::test]
async fn an_empty_file_is_one_error_without_a_line(pool: PgPool) {
    let store = store(&pool).await;
    for text in ["", "\n", "\n\n   \n\t\r\n\r\n"] {
        let file = upload(&store, "alice", text).await;
        assert_eq!(file.bytes, text.len() as i64, "{text:?}");
        assert_eq!((file.template_count, file.error_count), (0, 1), "{text:?}");
        assert_eq!(
            errors_of(&file.errors),
            vec![(None, LineErrorCode::EmptyFile)],
            "{text:?}"
        );
        assert!(templates(&pool, file.id).await.is_empty());
    }
}

#[sqlx::test]
async fn blank_lines_are_skipped_but_counted(pool: PgPool) {
    let store = store(&pool).await;
    let text = format!("\n{}\n\n   \n{}\n{}\n\n", line("a"), "oops", line("b"));
    let file = upload(&store, "alice", &text).await;
    assert_eq!((file.template_count, file.error_count), (2, 1));
    assert_eq!(
        errors_of(&file.errors),
        vec![(Some(5), LineErrorCode::InvalidJsonLine)]
    );
    assert_eq!(template_lines(&pool, file.id).await, vec![2, 6]);
}

#[sqlx::test]
async fn crlf_endings_bom_and_a_last_line_without_newline_are_accepted(pool: PgPool) {
    let store = store(&pool).await;
    let text = format!(
        "\u{feff}{}\r\n\r\n{}\r\nnope\r\n{}",
        line("a"),
        line("b"),
        line("c")
    );
    let file = upload(&store, "alice", &text).await;
    assert_eq!((file.template_count, file.error_count), (3, 1));
    assert_eq!(
        errors_of(&file.errors),
        vec![(Some(4), LineErrorCode::InvalidJsonLine)]
    );
    let rows = templates(&pool, file.id).await;
    let kept: Vec<(i64, &str)> = rows
        .iter()
        .map(|t| (t.line_number, t.custom_id.as_str()))
        .collect();
    assert_eq!(kept, vec![(1, "a"), (3, "b"), (5, "c")]);
    for t in &rows {
        assert_eq!(t.body, chat_body(&t.custom_id, &model_of(&t.custom_id)));
        assert!(!t.body.contains('\r'));
    }
    // The download is the upload, BOM and CRs included.
    let content = collect(store.file_content(Owner::Any, file.id).await.unwrap()).await;
    assert_eq!(content, text.as_bytes());
}

#[sqlx::test]
async fn body_text_is_stored_exactly_as_written(pool: PgPool) {
    let store = store(&pool).await;
    let body = "{ \"model\" : \"m\",\t\"messages\" : [ {\"role\":\"user\", \
                \"content\":\"caf\\u00e9 \u{e9} \\\"q\\\"\"} ] , \"n\": 1.50 }";
    let text = format!(
        "{{ \"custom_id\" : \"a\" , \"method\":\"POST\", \"url\":\"{CHAT}\", \"body\" :{body} }}\n"
    );
    let file = upload(&store, "alice", &text).await;
    assert_eq!((file.template_count, file.error_count), (1, 0));
    let rows = templates(&pool, file.id).await;
    assert_eq!(rows[0].body, body);
    assert_eq!(rows[0].body_byte_size, body.len() as i64);
    assert_eq!(rows[0].model, "m");
}

#[sqlx::test]
async fn escaped_custom_id_and_model_are_unescaped(pool: PgPool) {
    let store = store(&pool).await;
    let text = jsonl(&[line_with(r#"a\"b\u00e9"#, CHAT, r#"{"model":"m\/1"}"#)]);
    let file = upload(&store, "alice", &text).await;
    let rows = templates(&pool, file.id).await;
    assert_eq!(rows[0].custom_id, "a\"b\u{e9}");
    assert_eq!(rows[0].model, "m/1");
}

#[sqlx::test]
async fn a_line_over_the_limit_is_refused_and_parsing_goes_on(pool: PgPool) {
    let limits = IngestLimits {
        max_line_bytes: 200,
        ..Default::default()
    };
    let store = store_with(&pool, limits).await;
    let pad = |id: &str, len: usize| {
        let short = line_with(id, CHAT, r#"{"model":"m","p":""}"#);
        let fill = "x".repeat(len - short.len());
        let l = line_with(id, CHAT, &format!(r#"{{"model":"m","p":"{fill}"}}"#));
        assert_eq!(l.len(), len);
        l
    };
    let text = format!(
        "{}\n{}\n{}\r\n{}\r\n{}\n{}",
        line("a"),
        pad("long", 300),
        pad("exact", 200),
        pad("over", 201),
        line("b"),
        pad("last", 5000),
    );
    let file = upload(&store, "alice", &text).await;
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
    assert_eq!(template_lines(&pool, file.id).await, vec![1, 3, 5]);
    let content = collect(store.file_content(Owner::Any, file.id).await.unwrap()).await;
    assert_eq!(content, text.as_bytes());
}

#[sqlx::test]
async fn invalid_utf8_is_refused_by_line(pool: PgPool) {
    let store = store(&pool).await;
    let mut data = format!("{}\n", line("a")).into_bytes();
    data.extend_from_slice(b"{\"custom_id\":\"\xff\xfe\",\"method\":\"POST\"}\n");
    data.extend_from_slice(format!("{}\n", line("c")).as_bytes());
    let file = upload_bytes(&store, "alice", &data).await;
    assert_eq!((file.template_count, file.error_count), (2, 1));
    assert_eq!(
        errors_of(&file.errors),
        vec![(Some(2), LineErrorCode::InvalidUtf8)]
    );
    assert_eq!(template_lines(&pool, file.id).await, vec![1, 3]);
    let content = collect(store.file_content(Owner::Any, file.id).await.unwrap()).await;
    assert_eq!(content, data);
}

#[sqlx::test]
async fn a_file_over_the_size_limit_stores_nothing(pool: PgPool) {
    let limits = IngestLimits {
        max_file_bytes: 1000,
        ..Default::default()
    };
    let store = store_with(&pool, limits).await;
    let text = valid_file("r", 20);
    assert!(text.len() > 1000);
    for chunk in [7, 1 << 20] {
        let err = try_upload(&store, "alice", text.as_bytes(), chunk)
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::TooLarge { limit: 1000 }),
            "{err:?}"
        );
    }
    for table in ["files", "request_templates", "file_parts"] {
        assert_eq!(count(&pool, table).await, 0, "{table}");
    }
    // Exactly at the limit is fine.
    let mut exact = valid_file("r", 5);
    exact.push_str(&" ".repeat(1000 - exact.len()));
    let file = try_upload(&store, "alice", exact.as_bytes(), 7)
        .await
        .unwrap();
    assert_eq!((file.bytes, file.template_count), (1000, 5));
}

#[sqlx::test]
async fn only_the_first_errors_are_kept_but_all_are_counted(pool: PgPool) {
    // Line-order mix of parse errors and duplicates (found by the store later).
    let mut lines = vec![line("a"), line("a"), "bad".to_string(), line("b")];
    lines.extend((0..10).map(|i| format!("bad {i}")));
    lines.extend([line("b"), line("c")]);
    let text = jsonl(&lines);
    for keep in [0, 1, 3, 1000] {
        let limits = IngestLimits {
            max_kept_errors: keep,
            ..Default::default()
        };
        let store = store_with(&pool, limits).await;
        let file = upload(&store, "alice", &text).await;
        assert_eq!((file.template_count, file.error_count), (3, 13), "{keep}");
        let mut want = vec![
            (Some(2), LineErrorCode::DuplicateCustomId),
            (Some(3), LineErrorCode::InvalidJsonLine),
        ];
        want.extend((5..15).map(|l| (Some(l), LineErrorCode::InvalidJsonLine)));
        want.push((Some(15), LineErrorCode::DuplicateCustomId));
        want.truncate(keep);
        assert_eq!(errors_of(&file.errors), want, "{keep}");
        assert_eq!(template_lines(&pool, file.id).await, vec![1, 4, 16]);
    }
}

#[sqlx::test]
async fn content_of_a_large_input_file_is_the_exact_upload(pool: PgPool) {
    let store = store(&pool).await;
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
    let file = try_upload(&store, "alice", text.as_bytes(), 65_537)
        .await
        .unwrap();
    assert_eq!(file.bytes, text.len() as i64);
    assert_eq!(file.template_count + file.error_count, i);
    assert_eq!(file.error_count, (i + 2) / 5);
    let parts: i64 = sqlx::query_scalar("SELECT count(*) FROM file_parts WHERE file_id = $1")
        .bind(file.id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(parts >= 2, "{parts} parts");
    let content = collect(
        store
            .file_content(Owner::Only("alice"), file.id)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(content.len(), text.len());
    assert!(content == text.as_bytes());
}

#[sqlx::test]
async fn a_bom_does_not_count_towards_the_line_limit(pool: PgPool) {
    let limits = IngestLimits {
        max_line_bytes: 200,
        ..Default::default()
    };
    let store = store_with(&pool, limits).await;
    let short = line_with("a", CHAT, r#"{"model":"m","p":""}"#);
    let fill = "x".repeat(200 - short.len());
    let exact = line_with("a", CHAT, &format!(r#"{{"model":"m","p":"{fill}"}}"#));
    assert_eq!(exact.len(), 200);
    for ending in ["\n", "\r\n", ""] {
        let text = format!("\u{feff}{exact}{ending}");
        for chunk in [1, 7, 64, 1 << 20] {
            let file = try_upload(&store, "alice", text.as_bytes(), chunk)
                .await
                .unwrap();
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
        let file = try_upload(&store, "alice", text.as_bytes(), chunk)
            .await
            .unwrap();
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

#[sqlx::test]
async fn every_kind_of_line_downloads_exactly_at_any_chunk_size(pool: PgPool) {
    let text = mixed_file();
    // A small fingerprint budget sends the later lines to the database's
    // duplicate check; none sends every line there.
    for max_fingerprints in [usize::MAX, 50, 0] {
        let limits = IngestLimits {
            max_line_bytes: 600,
            max_fingerprints,
            ..Default::default()
        };
        let store = store_with(&pool, limits).await;
        let mut seen = None;
        for chunk in [1, 7, 4096, 1 << 20] {
            let file = try_upload(&store, "alice", &text, chunk).await.unwrap();
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
            let content = collect(store.file_content(Owner::Any, file.id).await.unwrap()).await;
            assert!(content == text, "{max_fingerprints} {chunk}");
        }
    }
}
