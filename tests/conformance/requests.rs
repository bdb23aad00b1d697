//! Single requests, lists, and the output and error files in OpenAI's line
//! shapes. Results are written as a daemon writes them: claimed, then finished.

use super::*;
use crate::common::{CHAT, chat_body, collect, jsonl, line_with, new_batch, valid_file};
use fusillade::BatchStatus;
use fusillade::domain::output::ResultError;
use fusillade::store::Owner;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};

/// A running batch of `n` chat lines `r0..`, and its requests claimed in
/// line order.
async fn batch_with<S: Backend>(store: &S, n: usize) -> (Batch, Vec<ClaimedRequest>) {
    let file = upload(store, "alice", &valid_file("r", n)).await;
    let batch = store
        .create_batch(new_batch("alice", file.id, CHAT))
        .await
        .unwrap();
    let claimed = claim_all(store, batch.id).await;
    assert_eq!(claimed.len(), n);
    (batch, claimed)
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
fn line_id(id: RequestId) -> String {
    format!("batch_req_{}", id.0.simple())
}

pub async fn get_request_shows_the_request_and_then_its_result<S: Backend>(store: &S) {
    let file = upload(store, "alice", &valid_file("r", 3)).await;
    let batch = store
        .create_batch(new_batch("alice", file.id, CHAT))
        .await
        .unwrap();
    let id = RequestId::of_line(batch.id, 1);

    let r = store.get_request(id).await.unwrap().unwrap();
    assert_eq!(r.id, id);
    assert_eq!(r.batch_id, Some(batch.id));
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

    let reqs = claim_all(store, batch.id).await;
    assert_eq!(reqs[0].id, id);
    let r = store.get_request(id).await.unwrap().unwrap();
    assert_eq!(r.template_id, reqs[0].template_id);
    assert_eq!(r.state, RequestState::Claimed);
    assert_eq!(r.attempt, 1);
    assert_eq!(reqs[0].attempt, 1);
    assert!(r.daemon_id.is_some());
    assert!(r.claimed_at.is_some());

    finish_one(
        store,
        result(&reqs[0], Some(200), Some(r#"{"ok":true}"#), None),
    )
    .await;
    let r = store.get_request(id).await.unwrap().unwrap();
    assert_eq!(r.state, RequestState::Completed);
    assert_eq!(r.status_code, Some(200));
    assert_eq!(r.error, None);
    assert_eq!(r.daemon_id, None);
    assert!(r.finished_at.is_some());

    let error = json!({"code": "upstream_error", "message": "no such model"});
    finish_one(store, result(&reqs[1], Some(404), Some("{}"), Some(error))).await;
    let r = store.get_request(reqs[1].id).await.unwrap().unwrap();
    assert_eq!(r.state, RequestState::Failed);
    assert_eq!(r.status_code, Some(404));
    assert_eq!(
        r.error,
        Some(ResultError::new("upstream_error", "no such model"))
    );

    assert_eq!(store.get_request(RequestId::new()).await.unwrap(), None);
}

pub async fn list_requests_pages_in_line_order<S: Backend>(store: &S) {
    let (batch, reqs) = batch_with(store, 25).await;
    let other = batch_of(store, 3).await;
    finish_one(store, result(&reqs[4], Some(200), Some("{}"), None)).await;
    // The others wait again.
    release(store, &reqs[..4]).await;
    release(store, &reqs[5..]).await;

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
                .map(|r| (r.id, r.custom_id.clone().unwrap())),
        );
        after = page.items.last().map(|r| r.id);
        if !page.has_more {
            break;
        }
        assert_eq!(page.items.len(), 10);
    }
    assert_eq!(pages, 3);
    let want: Vec<(RequestId, String)> = reqs
        .iter()
        .map(|r| (r.id, r.custom_id.clone().unwrap()))
        .collect();
    assert_eq!(seen, want);

    let page = store.list_requests(batch.id, None, 25).await.unwrap();
    assert_eq!((page.items.len(), page.has_more), (25, false));
    assert_eq!(page.items[4].state, RequestState::Completed);
    assert_eq!(page.items[4].status_code, Some(200));
    assert_eq!(page.items[3].state, RequestState::Pending);
    let last = reqs[24].id;
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

pub async fn output_and_error_lines_have_openai_shapes<S: Backend>(store: &S) {
    let (batch, reqs) = batch_with(store, 6).await;
    let id = |i: usize| reqs[i].id;
    let upstream = |i: usize| format!("upstream-{}", id(i).0.simple());

    let ok_body = r#"{"id":"chatcmpl-1","choices":[{"message":{"content":"hi"}}]}"#;
    let mut results = vec![result(&reqs[0], Some(200), Some(ok_body), None)];
    let bad_request = json!({"code": "upstream_error", "message": "400 from upstream"});
    let body_400 = r#"{"error":{"message":"unknown model","type":"invalid_request_error"}}"#;
    results.push(result(
        &reqs[1],
        Some(400),
        Some(body_400),
        Some(bad_request.clone()),
    ));
    let timeout = json!({"code": "request_timeout", "message": "no answer in time"});
    results.push(result(&reqs[2], None, None, Some(timeout.clone())));
    let bad_gateway = json!({"code": "upstream_error", "message": "502 from upstream"});
    let html = "<html>\n<body>bad gateway</body>\n</html>";
    results.push(result(
        &reqs[4],
        Some(502),
        Some(html),
        Some(bad_gateway.clone()),
    ));
    // Some servers pretty-print: the line must still be one line.
    let pretty = "{\n  \"id\": \"chatcmpl-5\",\r\n  \"n\": [1,\n 2]\n}\n";
    results.push(result(&reqs[5], Some(200), Some(pretty), None));
    assert_eq!(store.finish(&results).await.unwrap().len(), 5);
    // r3 is pending again: cancelling the batch ends it.
    release(store, &reqs[3..4]).await;
    let cancelled = store.cancel_batch(Owner::Any, batch.id).await.unwrap();
    assert_eq!(cancelled.status, BatchStatus::Cancelled);

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

pub async fn streams_cross_pages_and_give_every_line_once<S: Backend>(store: &S) {
    let n = 2600;
    // One model for all: a claim of thousands of models costs seconds.
    let lines: Vec<String> = (0..n)
        .map(|i| line_with(&format!("r{i}"), CHAT, &chat_body("x", "m")))
        .collect();
    let file = upload(store, "alice", &jsonl(&lines)).await;
    let batch = store
        .create_batch(new_batch("alice", file.id, CHAT))
        .await
        .unwrap();
    let reqs = claim_all(store, batch.id).await;
    // Every 13th request fails; the rest complete. One write for all.
    let results: Vec<Finished> = reqs
        .iter()
        .map(|c| {
            let custom = c.custom_id.clone().unwrap();
            let failing = custom[1..].parse::<usize>().unwrap() % 13 == 0;
            Finished {
                id: c.id,
                attempt: c.attempt,
                state: if failing {
                    RequestState::Failed
                } else {
                    RequestState::Completed
                },
                status_code: (!failing).then_some(200),
                upstream_request_id: Some(format!("up-{custom}")),
                body: (!failing).then(|| json!({"echo": custom}).to_string().into_bytes()),
                error: failing.then(|| ResultError::new("request_timeout", "slow")),
                usage: None,
                coalesced: None,
            }
        })
        .collect();
    assert_eq!(store.finish(&results).await.unwrap().len(), n);

    let output = collect(store.output_stream(batch.id)).await;
    let errors = collect(store.error_stream(batch.id)).await;
    let out_lines = parse_lines(&output);
    let err_lines = parse_lines(&errors);
    let failing = (0..n).filter(|i| i % 13 == 0).count();
    assert_eq!(out_lines.len(), n - failing);
    assert!(out_lines.len() > 2000, "crosses two page boundaries");
    assert_eq!(err_lines.len(), failing);

    let by_custom: HashMap<String, RequestId> = reqs
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

pub async fn streams_without_results_are_empty<S: Backend>(store: &S) {
    let (batch, reqs) = batch_with(store, 2).await;
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
    finish_one(store, result(&reqs[0], Some(200), Some("{}"), None)).await;
    assert_eq!(
        parse_lines(&collect(store.output_stream(batch.id)).await).len(),
        1
    );
    assert!(collect(store.error_stream(batch.id)).await.is_empty());
}

pub async fn large_results_stream_in_pages_bounded_by_bytes<S: Backend>(store: &S) {
    use futures_util::TryStreamExt;
    let (batch, reqs) = batch_with(store, 12).await;
    // Eleven answers of 1 MiB and one failure: each file is read in pages
    // of a few MiB of bodies, not in one page of every result.
    let big = format!(r#"{{"content":"{}"}}"#, "z".repeat(1 << 20));
    for r in &reqs[..11] {
        finish_one(store, result(r, Some(200), Some(&big), None)).await;
    }
    let error = json!({"code": "upstream_error", "message": "no"});
    finish_one(store, result(&reqs[11], Some(400), Some("{}"), Some(error))).await;
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

pub async fn bodies_text_cannot_hold_are_stored_byte_for_byte<S: Backend>(store: &S) {
    let (batch, got) = batch_with(store, 4).await;
    let bodies: [&[u8]; 4] = [
        br#"{"content":"a\u0000b"}"#,
        b"{\"content\":\"a\0b\"}",
        b"not UTF-8: \xff\xfe\x00 \xc3",
        b"plain",
    ];
    let finishes: Vec<Finished> = got
        .iter()
        .zip(bodies)
        .map(|(c, b)| Finished {
            body: Some(b.to_vec()),
            ..result(c, Some(200), None, None)
        })
        .collect();
    assert_eq!(store.finish(&finishes).await.unwrap().len(), 4);
    // Kept exactly: JSON as JSON, other text as a string, bytes that are
    // not UTF-8 as lone surrogates of each byte.
    let out = collect(store.output_stream(batch.id)).await;
    let out = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4);
    assert!(
        lines[0].contains(r#""body":{"content":"a\u0000b"}"#),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains(r#""body":"{\"content\":\"a\u0000b\"}""#),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].contains(r#""body":"not UTF-8: \udcff\udcfe\u0000 \udcc3""#),
        "{}",
        lines[2]
    );
    assert!(lines[3].contains(r#""body":"plain""#), "{}", lines[3]);
}
