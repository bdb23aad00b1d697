//! `RequestStore` against a real PostgreSQL: single requests, lists, and the
//! output and error files in OpenAI's line shapes. Results are written by hand
//! in SQL, as the daemon will write them.

mod common;

use common::*;
use fusillade::domain::ids::TemplateId;
use fusillade::domain::output::ResultError;
use fusillade::request::{RequestId, RequestState};
use fusillade::store::Owner;
use fusillade::{Batch, BatchId, BatchStore, FileStore, PostgresStore, RequestStore};
use serde_json::{Value, json};
use sqlx::PgPool;
use std::collections::HashSet;
use uuid::Uuid;

/// A running batch of `n` chat lines `r0..`, and its requests in line order.
async fn batch_of(store: &PostgresStore, pool: &PgPool, n: usize) -> (Batch, Vec<RequestRow>) {
    let file = upload(store, "alice", &valid_file("r", n)).await;
    let batch = store
        .create_batch(new_batch("alice", file.id, CHAT))
        .await
        .unwrap();
    let reqs = requests(pool, batch.id).await;
    assert_eq!(reqs.len(), n);
    (batch, reqs)
}

/// Every line of a JSONL download, parsed; each must be one JSON object.
fn parse_lines(bytes: &[u8]) -> Vec<Value> {
    let text = std::str::from_utf8(bytes).unwrap();
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "ends with a newline"
    );
    text.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}"));
            assert!(v.is_object(), "{l}");
            v
        })
        .collect()
}

/// The `id` of a request's output line.
fn line_id(id: Uuid) -> String {
    format!("batch_req_{}", id.simple())
}

#[sqlx::test]
async fn get_request_shows_the_request_and_then_its_result(pool: PgPool) {
    let store = store(&pool).await;
    let (batch, reqs) = batch_of(&store, &pool, 3).await;
    let tpl = templates(&pool, batch.input_file_id).await;
    let id = RequestId(reqs[0].id);

    let r = store.get_request(id).await.unwrap().unwrap();
    assert_eq!(r.id, id);
    assert_eq!(r.batch_id, Some(batch.id));
    assert_eq!(r.template_id, TemplateId(tpl[0].id));
    assert_eq!(r.model, "m-r0");
    assert_eq!(r.custom_id.as_deref(), Some("r0"));
    assert_eq!(r.state, RequestState::Pending);
    assert_eq!(r.attempt, 0);
    assert_eq!(r.daemon_id, None);
    assert_eq!(
        (r.claimed_at, r.started_at, r.finished_at),
        (None, None, None)
    );
    assert_eq!((r.status_code, r.error.clone()), (None, None));
    assert!(r.not_before <= r.created_at);

    set_in_flight(&pool, reqs[0].id, "processing").await;
    let r = store.get_request(id).await.unwrap().unwrap();
    assert_eq!(r.state, RequestState::Processing);
    assert_eq!(r.attempt, 1);
    assert!(r.daemon_id.is_some());
    assert!(r.claimed_at.is_some() && r.started_at.is_some());

    finish(&pool, reqs[0].id, Some(200), Some(r#"{"ok":true}"#), None).await;
    let r = store.get_request(id).await.unwrap().unwrap();
    assert_eq!(r.state, RequestState::Completed);
    assert_eq!(r.status_code, Some(200));
    assert_eq!(r.error, None);
    assert_eq!(r.daemon_id, None);
    assert!(r.finished_at.is_some());

    let error = json!({"code": "upstream_error", "message": "no such model"});
    finish(&pool, reqs[1].id, Some(404), Some("{}"), Some(error)).await;
    let r = store
        .get_request(RequestId(reqs[1].id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.state, RequestState::Failed);
    assert_eq!(r.status_code, Some(404));
    assert_eq!(
        r.error,
        Some(ResultError::new("upstream_error", "no such model"))
    );

    assert_eq!(
        store.get_request(RequestId(Uuid::now_v7())).await.unwrap(),
        None
    );
}

#[sqlx::test]
async fn list_requests_pages_in_line_order(pool: PgPool) {
    let store = store(&pool).await;
    let (batch, reqs) = batch_of(&store, &pool, 25).await;
    let (other, _) = batch_of(&store, &pool, 3).await;
    finish(&pool, reqs[4].id, Some(200), Some("{}"), None).await;

    let mut seen = Vec::new();
    let mut after = None;
    let mut pages = 0;
    loop {
        let page = store.list_requests(batch.id, after, 10).await.unwrap();
        pages += 1;
        assert!(page.items.iter().all(|r| r.batch_id == Some(batch.id)));
        seen.extend(
            page.items
                .iter()
                .map(|r| (r.id.0, r.custom_id.clone().unwrap())),
        );
        after = page.items.last().map(|r| r.id);
        if !page.has_more {
            break;
        }
        assert_eq!(page.items.len(), 10);
    }
    assert_eq!(pages, 3);
    let want: Vec<(Uuid, String)> = reqs
        .iter()
        .map(|r| (r.id, r.custom_id.clone().unwrap()))
        .collect();
    assert_eq!(seen, want);

    let page = store.list_requests(batch.id, None, 25).await.unwrap();
    assert_eq!((page.items.len(), page.has_more), (25, false));
    assert_eq!(page.items[4].state, RequestState::Completed);
    assert_eq!(page.items[4].status_code, Some(200));
    assert_eq!(page.items[3].state, RequestState::Pending);
    let last = RequestId(reqs[24].id);
    let page = store.list_requests(batch.id, Some(last), 10).await.unwrap();
    assert_eq!((page.items.len(), page.has_more), (0, false));
    for limit in [0, -3] {
        let page = store.list_requests(batch.id, None, limit).await.unwrap();
        assert_eq!(page.items.len(), 1);
        assert!(page.has_more);
    }
    let page = store.list_requests(other.id, None, 100).await.unwrap();
    assert_eq!(page.items.len(), 3);
    let none = store
        .list_requests(BatchId::new(), None, 100)
        .await
        .unwrap();
    assert!(none.items.is_empty() && !none.has_more);
}

#[sqlx::test]
async fn output_and_error_lines_have_openai_shapes(pool: PgPool) {
    let store = store(&pool).await;
    let (batch, reqs) = batch_of(&store, &pool, 6).await;
    let id = |i: usize| reqs[i].id;
    let upstream = |i: usize| format!("upstream-{}", id(i).simple());

    let ok_body = r#"{"id":"chatcmpl-1","choices":[{"message":{"content":"hi"}}]}"#;
    finish(&pool, id(0), Some(200), Some(ok_body), None).await;
    let bad_request = json!({"code": "upstream_error", "message": "400 from upstream"});
    let body_400 = r#"{"error":{"message":"unknown model","type":"invalid_request_error"}}"#;
    finish(
        &pool,
        id(1),
        Some(400),
        Some(body_400),
        Some(bad_request.clone()),
    )
    .await;
    let timeout = json!({"code": "request_timeout", "message": "no answer in time"});
    finish(&pool, id(2), None, None, Some(timeout.clone())).await;
    let bad_gateway = json!({"code": "upstream_error", "message": "502 from upstream"});
    let html = "<html>\n<body>bad gateway</body>\n</html>";
    finish(
        &pool,
        id(4),
        Some(502),
        Some(html),
        Some(bad_gateway.clone()),
    )
    .await;
    // Some servers pretty-print: the line must still be one line.
    let pretty = "{\n  \"id\": \"chatcmpl-5\",\r\n  \"n\": [1,\n 2]\n}\n";
    finish(&pool, id(5), Some(200), Some(pretty), None).await;
    // r3 is still pending: cancelling the batch ends it.
    let cancelled = store.cancel_batch(Owner::Any, batch.id).await.unwrap();
    assert_eq!(cancelled.status, fusillade::BatchStatus::Cancelled);

    let output = collect(store.output_stream(batch.id)).await;
    assert_eq!(output.iter().filter(|&&b| b == b'\n').count(), 2);
    let want_output = vec![
        json!({
            "id": line_id(id(0)),
            "custom_id": "r0",
            "response": {
                "status_code": 200,
                "request_id": upstream(0),
                "body": {"id": "chatcmpl-1", "choices": [{"message": {"content": "hi"}}]}
            },
            "error": null
        }),
        json!({
            "id": line_id(id(5)),
            "custom_id": "r5",
            "response": {
                "status_code": 200,
                "request_id": upstream(5),
                "body": {"id": "chatcmpl-5", "n": [1, 2]}
            },
            "error": null
        }),
    ];
    assert_eq!(parse_lines(&output), want_output);

    let errors = collect(store.error_stream(batch.id)).await;
    assert_eq!(errors.iter().filter(|&&b| b == b'\n').count(), 4);
    let got = parse_lines(&errors);
    let want_errors = vec![
        json!({
            "id": line_id(id(1)),
            "custom_id": "r1",
            "response": {
                "status_code": 400,
                "request_id": upstream(1),
                "body": {"error": {"message": "unknown model", "type": "invalid_request_error"}}
            },
            "error": bad_request
        }),
        json!({"id": line_id(id(2)), "custom_id": "r2", "response": null, "error": timeout}),
        json!({"id": line_id(id(3)), "custom_id": "r3", "response": null, "error": {
            "code": "batch_cancelled",
            "message": got[2]["error"]["message"].as_str().unwrap(),
        }}),
        json!({
            "id": line_id(id(4)),
            "custom_id": "r4",
            "response": {"status_code": 502, "request_id": upstream(4), "body": html},
            "error": bad_gateway
        }),
    ];
    assert_eq!(got, want_errors);
    assert!(
        !want_errors[2]["error"]["message"]
            .as_str()
            .unwrap()
            .is_empty()
    );

    // The batch's output and error files download as the same bytes.
    let out_file = cancelled.output_file_id.unwrap();
    let err_file = cancelled.error_file_id.unwrap();
    let content = collect(
        store
            .file_content(Owner::Only("alice"), out_file)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(content, output);
    let content = collect(store.file_content(Owner::Any, err_file).await.unwrap()).await;
    assert_eq!(content, errors);
    let err = store
        .file_content(Owner::Only("bob"), out_file)
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, fusillade::StoreError::NotFound { .. }),
        "{err:?}"
    );
}

#[sqlx::test]
async fn streams_cross_pages_and_give_every_line_once(pool: PgPool) {
    let store = store(&pool).await;
    let n = 2600;
    let (batch, reqs) = batch_of(&store, &pool, n).await;
    // Every 13th request fails; the rest complete. One statement for all.
    sqlx::query(
        "WITH d AS (DELETE FROM requests WHERE batch_id = $1 RETURNING *), \
         r AS ( \
             SELECT *, CASE WHEN substring(custom_id FROM 2)::int % 13 = 0 THEN 'failed' \
                            ELSE 'completed' END AS end_state \
             FROM d) \
         INSERT INTO request_results \
             (request_id, batch_id, template_id, model, custom_id, not_before, created_at, \
              state, ok, status_code, upstream_request_id, body, error) \
         SELECT id, batch_id, template_id, model, custom_id, not_before, created_at, \
                end_state, end_state = 'completed', \
                CASE WHEN end_state = 'completed' THEN 200 END, 'up-' || custom_id, \
                CASE WHEN end_state = 'completed' THEN json_build_object('echo', custom_id)::text END, \
                CASE WHEN end_state = 'failed' THEN \
                    jsonb_build_object('code', 'request_timeout', 'message', 'slow') END \
         FROM r",
    )
    .bind(batch.id)
    .execute(&pool)
    .await
    .unwrap();

    let output = collect(store.output_stream(batch.id)).await;
    let errors = collect(store.error_stream(batch.id)).await;
    let out_lines = parse_lines(&output);
    let err_lines = parse_lines(&errors);
    let failing = (0..n).filter(|i| i % 13 == 0).count();
    assert_eq!(out_lines.len(), n - failing);
    assert!(out_lines.len() > 2000, "crosses two page boundaries");
    assert_eq!(err_lines.len(), failing);

    let by_custom: std::collections::HashMap<String, Uuid> = reqs
        .iter()
        .map(|r| (r.custom_id.clone().unwrap(), r.id))
        .collect();
    let mut seen = HashSet::new();
    for v in &out_lines {
        let custom = v["custom_id"].as_str().unwrap();
        assert_eq!(v["id"], line_id(by_custom[custom]));
        assert_eq!(v["response"]["body"], json!({"echo": custom}));
        assert_eq!(v["response"]["request_id"], format!("up-{custom}"));
        assert_eq!(v["error"], Value::Null);
        assert!(custom[1..].parse::<usize>().unwrap() % 13 != 0);
        assert!(seen.insert(custom.to_string()), "{custom} twice");
    }
    for v in &err_lines {
        let custom = v["custom_id"].as_str().unwrap();
        assert_eq!(v["id"], line_id(by_custom[custom]));
        assert_eq!(v["response"], Value::Null);
        assert_eq!(v["error"]["code"], "request_timeout");
        assert!(seen.insert(custom.to_string()), "{custom} twice");
    }
    assert_eq!(seen.len(), n, "every line exactly once in output ∪ error");

    // Lines come in request (= line) order.
    let order: Vec<&str> = out_lines
        .iter()
        .map(|v| v["custom_id"].as_str().unwrap())
        .collect();
    let want: Vec<String> = (0..n)
        .filter(|i| i % 13 != 0)
        .map(|i| format!("r{i}"))
        .collect();
    assert_eq!(order, want);

    let out_file = batch.output_file_id.unwrap();
    let err_file = batch.error_file_id.unwrap();
    let content = collect(
        store
            .file_content(Owner::Only("alice"), out_file)
            .await
            .unwrap(),
    )
    .await;
    assert!(content == output);
    let content = collect(
        store
            .file_content(Owner::Only("alice"), err_file)
            .await
            .unwrap(),
    )
    .await;
    assert!(content == errors);
}

#[sqlx::test]
async fn streams_without_results_are_empty(pool: PgPool) {
    let store = store(&pool).await;
    let (batch, reqs) = batch_of(&store, &pool, 2).await;
    assert!(collect(store.output_stream(batch.id)).await.is_empty());
    assert!(collect(store.error_stream(batch.id)).await.is_empty());
    let file = store
        .file_content(Owner::Any, batch.error_file_id.unwrap())
        .await
        .unwrap();
    assert!(collect(file).await.is_empty());
    assert!(
        collect(store.output_stream(BatchId::new()))
            .await
            .is_empty()
    );

    // Only successes go to the output file, only failures to the error file.
    finish(&pool, reqs[0].id, Some(200), Some("{}"), None).await;
    assert_eq!(
        parse_lines(&collect(store.output_stream(batch.id)).await).len(),
        1
    );
    assert!(collect(store.error_stream(batch.id)).await.is_empty());
}

#[sqlx::test]
async fn large_results_stream_in_pages_bounded_by_bytes(pool: PgPool) {
    use futures_util::TryStreamExt;
    let store = store(&pool).await;
    let (batch, reqs) = batch_of(&store, &pool, 12).await;
    // Eleven answers of 1 MiB and one failure: each file is read in pages
    // of a few MiB of bodies, not in one page of every result.
    let big = format!(r#"{{"content":"{}"}}"#, "z".repeat(1 << 20));
    for r in &reqs[..11] {
        finish(&pool, r.id, Some(200), Some(&big), None).await;
    }
    let error = json!({"code": "upstream_error", "message": "no"});
    finish(&pool, reqs[11].id, Some(400), Some("{}"), Some(error)).await;
    let pages: Vec<bytes::Bytes> = store.output_stream(batch.id).try_collect().await.unwrap();
    let sizes: Vec<usize> = pages.iter().map(|p| p.len()).collect();
    assert!(pages.len() >= 3, "{sizes:?}");
    assert!(
        sizes.iter().all(|&n| n < (5 << 20) + 4096),
        "a page holds at most 4 MiB of bodies and one more: {sizes:?}"
    );
    let lines = parse_lines(&pages.concat());
    let ids: Vec<&str> = lines
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap())
        .collect();
    let want: Vec<String> = (0..11).map(|i| format!("r{i}")).collect();
    assert_eq!(ids, want, "every result once, in line order");
    assert!(
        lines
            .iter()
            .all(|l| l["response"]["body"]["content"].as_str().unwrap().len() == 1 << 20)
    );
    assert_eq!(
        parse_lines(&collect(store.error_stream(batch.id)).await).len(),
        1
    );
}
