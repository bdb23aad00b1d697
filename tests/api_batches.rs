//! The `/v1/batches` routes through the router: success shapes, every error
//! status in OpenAI's envelope, owner isolation, and a whole life with a
//! daemon and a mock upstream (usage, downloads, cancel, retry).

mod api_support;
mod common;

use api_support::*;
use axum::body::Body;
use axum::http::{Method, Request, header};
use fusillade::mock::{MockBehavior, MockReply, MockUpstream};
use serde_json::{Value, json};
use sqlx::PgPool;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const TIMESTAMPS: [&str; 9] = [
    "created_at",
    "in_progress_at",
    "expires_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
];

fn assert_batch_shape(b: &Value) {
    assert_eq!(b["object"], "batch");
    assert!(b["id"].as_str().unwrap().starts_with("batch_"));
    assert!(b["input_file_id"].as_str().unwrap().starts_with("file-"));
    assert!(b["status"].is_string());
    assert!(b["endpoint"].is_string());
    assert!(b["completion_window"].is_string());
    let obj = b.as_object().unwrap();
    for k in TIMESTAMPS.iter().chain(&[
        "errors",
        "output_file_id",
        "error_file_id",
        "metadata",
        "usage",
    ]) {
        assert!(obj.contains_key(*k), "missing {k}: {b}");
    }
    for k in TIMESTAMPS {
        assert!(b[k].is_null() || b[k].is_i64(), "{k}: {b}");
    }
    let c = &b["request_counts"];
    for k in ["total", "completed", "failed"] {
        assert!(c[k].is_i64(), "{k}: {b}");
    }
    for k in ["input_tokens", "output_tokens", "total_tokens"] {
        assert!(b["usage"][k].is_i64(), "{k}: {b}");
    }
    assert!(b["usage"]["input_tokens_details"]["cached_tokens"].is_i64());
    assert!(b["usage"]["output_tokens_details"]["reasoning_tokens"].is_i64());
}

#[sqlx::test]
async fn create_get_and_list(pool: PgPool) {
    let api = Api::new(&pool).await;
    let f = api.upload(ALICE, &valid_file("c", 3)).await;
    let b = api
        .post(
            "/v1/batches",
            ALICE,
            json!({
                "input_file_id": id(&f),
                "endpoint": CHAT,
                "completion_window": "90m",
                "metadata": {"project": "x"},
                "output_expires_after": {"anchor": "created_at", "seconds": 86400},
                "some_future_field": true,
            }),
        )
        .await
        .ok();
    assert_batch_shape(&b);
    assert_eq!(b["status"], "in_progress");
    assert_eq!(b["errors"], Value::Null);
    assert_eq!(b["input_file_id"], id(&f));
    assert_eq!(b["completion_window"], "90m");
    assert_eq!(b["metadata"], json!({"project": "x"}));
    assert_eq!(
        b["request_counts"],
        json!({"total": 3, "completed": 0, "failed": 0})
    );
    assert_eq!(
        b["expires_at"].as_i64().unwrap() - b["created_at"].as_i64().unwrap(),
        90 * 60
    );
    assert!(b["in_progress_at"].is_i64());
    let out = api
        .get(
            &format!("/v1/files/{}", b["output_file_id"].as_str().unwrap()),
            ALICE,
        )
        .await
        .ok();
    assert_eq!(
        out["expires_at"].as_i64().unwrap(),
        b["created_at"].as_i64().unwrap() + 86400
    );

    let got = api
        .get(&format!("/v1/batches/{}", id(&b)), ALICE)
        .await
        .ok();
    assert_eq!(got, b);
    let bare = id(&b).trim_start_matches("batch_").to_owned();
    assert_eq!(
        api.get(&format!("/v1/batches/{bare}"), ALICE).await.ok()["id"],
        id(&b)
    );

    let list = api.get("/v1/batches", ALICE).await.ok();
    assert_eq!(list["object"], "list");
    assert_eq!(list["data"][0], b);
    assert_eq!(list["first_id"], id(&b));
    assert_eq!(list["last_id"], id(&b));
    assert_eq!(list["has_more"], false);
}

#[sqlx::test]
async fn invalid_input_fails_the_batch_with_line_errors(pool: PgPool) {
    let api = Api::new(&pool).await;
    let content = format!("{}{{\"custom_id\":\"x\"}}\nnot json\n", valid_file("v", 1));
    let f = api.upload(ALICE, &content).await;
    let b = api.create_batch(ALICE, &id(&f)).await;
    assert_batch_shape(&b);
    assert_eq!(b["status"], "failed");
    assert!(b["failed_at"].is_i64());
    assert_eq!(b["errors"]["object"], "list");
    let data = b["errors"]["data"].as_array().unwrap();
    assert_eq!(data.len(), 2, "{b}");
    assert_eq!(data[0]["line"], 2);
    assert_eq!(data[1]["line"], 3);
    for e in data {
        assert!(e["code"].is_string() && e["message"].is_string());
        assert!(e.as_object().unwrap().contains_key("param"));
    }
    assert_eq!(b["output_file_id"], Value::Null);
}

#[sqlx::test]
async fn create_errors(pool: PgPool) {
    let api = Api::new(&pool).await;
    let fid = id(&api.upload(ALICE, &valid_file("e", 1)).await);
    let ok = json!({"input_file_id": fid, "endpoint": CHAT, "completion_window": "24h"});
    let with = |k: &str, v: Value| {
        let mut b = ok.clone();
        b[k] = v;
        b
    };
    let cases: Vec<(Value, u16, Option<&str>)> = vec![
        (
            with("completion_window", json!("48")),
            400,
            Some("completion_window"),
        ),
        (
            with("completion_window", json!("0h")),
            400,
            Some("completion_window"),
        ),
        (
            with("completion_window", json!("30s")),
            400,
            Some("completion_window"),
        ),
        (
            with("endpoint", json!("/v1/images/generations")),
            400,
            Some("endpoint"),
        ),
        (
            with("metadata", json!({"k": "v".repeat(513)})),
            400,
            Some("metadata"),
        ),
        (
            with(
                "metadata",
                Value::Object((0..17).map(|i| (format!("k{i}"), json!("v"))).collect()),
            ),
            400,
            Some("metadata"),
        ),
        (with("metadata", json!({"k": 1})), 400, None),
        (with("endpoint", json!(5)), 400, None),
        (
            with(
                "output_expires_after",
                json!({"anchor": "now", "seconds": 3600}),
            ),
            400,
            Some("output_expires_after"),
        ),
        (
            json!({"endpoint": CHAT, "completion_window": "24h"}),
            400,
            None,
        ),
        (json!([1, 2]), 400, None),
        (
            with("input_file_id", json!("file-nope")),
            404,
            Some("input_file_id"),
        ),
        (
            with(
                "input_file_id",
                json!("file-0190f5a4c2b67d0c9a3c6b1e2d3f4a5b"),
            ),
            404,
            Some("input_file_id"),
        ),
    ];
    for (body, status, param) in cases {
        let e = api
            .post("/v1/batches", ALICE, body.clone())
            .await
            .error(status, None);
        if let Some(p) = param {
            assert_eq!(e["param"], p, "{body}");
        }
    }
    // Not JSON at all, and an empty body.
    for raw in ["{", ""] {
        let req = Request::builder()
            .method(Method::POST)
            .uri("/v1/batches")
            .header(header::AUTHORIZATION, format!("Bearer {ALICE}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(raw))
            .unwrap();
        let e = api.send(req).await.error(400, None);
        assert!(e["message"].as_str().unwrap().contains("JSON"), "{e}");
    }
    // A batch's output file is not an input: 422.
    let b = api.create_batch(ALICE, &fid).await;
    let e = api
        .post(
            "/v1/batches",
            ALICE,
            with("input_file_id", b["output_file_id"].clone()),
        )
        .await
        .error(422, None);
    assert_eq!(e["param"], "input_file_id");
    // Extension windows: minutes and hours, and the tiers' names; each
    // batch shows the service tier its window stands for.
    for (w, tier, secs) in [
        ("1m", "flex", 60),
        ("2h", "default", 7_200),
        ("24h", "default", 86_400),
        ("0s", "priority", 60),
        ("priority", "priority", 60),
        ("flex", "flex", 3_600),
    ] {
        let b = api
            .post("/v1/batches", ALICE, with("completion_window", json!(w)))
            .await
            .ok();
        assert_eq!(b["completion_window"], w);
        assert_eq!(b["service_tier"], tier, "{b}");
        let window = b["expires_at"].as_i64().unwrap() - b["created_at"].as_i64().unwrap();
        assert!((secs..=secs + 1).contains(&window), "{w}: {window} s");
        let read = api
            .get(&format!("/v1/batches/{}", id(&b)), ALICE)
            .await
            .ok();
        assert_eq!(read["service_tier"], tier, "{read}");
    }
}

#[sqlx::test]
async fn idempotency_key_returns_the_first_batch(pool: PgPool) {
    let api = Api::new(&pool).await;
    let fid = id(&api.upload(ALICE, &valid_file("i", 1)).await);
    let body = json!({"input_file_id": fid, "endpoint": CHAT, "completion_window": "24h"});
    let create = |key: &'static str, who: &'static str| {
        let api = api.clone();
        let body = body.clone();
        async move {
            let req = Request::builder()
                .method(Method::POST)
                .uri("/v1/batches")
                .header(header::AUTHORIZATION, format!("Bearer {who}"))
                .header("idempotency-key", key)
                .body(Body::from(serde_json::to_vec(&body).unwrap()))
                .unwrap();
            api.send(req).await
        }
    };
    let first = create("k1", ALICE).await.ok();
    let again = create("k1", ALICE).await.ok();
    assert_eq!(first["id"], again["id"]);
    let other = create("k2", ALICE).await.ok();
    assert_ne!(first["id"], other["id"]);
    // Concurrent repeats all get the same batch.
    let (a, b) = tokio::join!(create("k3", ALICE), create("k3", ALICE));
    assert_eq!(a.ok()["id"], b.ok()["id"]);
    let list = api.get("/v1/batches", ALICE).await.ok();
    assert_eq!(list["data"].as_array().unwrap().len(), 3);
    // Bob cannot use her file, key or not.
    create("k1", BOB).await.error(404, None);
}

#[sqlx::test]
async fn idempotency_keys_are_per_owner(pool: PgPool) {
    let api = Api::new(&pool).await;
    // Each owner has a file of their own, so only the key's owner tells
    // the two batches apart.
    let files = [
        (ALICE, id(&api.upload(ALICE, &valid_file("a", 1)).await)),
        (BOB, id(&api.upload(BOB, &valid_file("b", 2)).await)),
    ];
    let create = |who: &'static str, file: &str| {
        let body = json!({"input_file_id": file, "endpoint": CHAT, "completion_window": "24h"});
        let req = Request::builder()
            .method(Method::POST)
            .uri("/v1/batches")
            .header(header::AUTHORIZATION, format!("Bearer {who}"))
            .header("idempotency-key", "shared-key")
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap();
        let api = api.clone();
        async move { api.send(req).await.ok() }
    };
    let mut first = Vec::new();
    for (who, file) in &files {
        first.push(create(who, file).await);
    }
    assert_ne!(first[0]["id"], first[1]["id"], "Bob got Alice's batch");
    // Each repeat gets its own owner's batch back (the long way: the key
    // is found taken), whoever asked first.
    for ((who, file), made) in files.iter().zip(&first).rev() {
        let again = create(who, file).await;
        assert_eq!(again["id"], made["id"], "{who}'s repeat");
        assert_eq!(again["input_file_id"], json!(file), "{who}'s repeat");
    }
    // A race lost on the key finds the winner by owner and key.
    for ((who, _), made) in files.iter().zip(&first) {
        let owner = if *who == ALICE { "alice" } else { "bob" };
        let found = fusillade::BatchStore::find_batch_by_key(&api.store, owner, "shared-key")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            json!(fusillade::api::wire::batch_id(found.id)),
            made["id"],
            "{who}"
        );
    }
    for (who, _) in &files {
        let list = api.get("/v1/batches", who).await.ok();
        assert_eq!(list["data"].as_array().unwrap().len(), 1, "{who}");
    }
}

#[sqlx::test]
async fn list_pages_follow_last_id(pool: PgPool) {
    let api = Api::new(&pool).await;
    let fid = id(&api.upload(ALICE, &valid_file("l", 1)).await);
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(id(&api.create_batch(ALICE, &fid).await));
    }
    ids.reverse();
    let mut seen = Vec::new();
    let mut path = "/v1/batches?limit=2".to_owned();
    loop {
        let page = api.get(&path, ALICE).await.ok();
        seen.extend(page["data"].as_array().unwrap().iter().map(id));
        if page["has_more"] == false {
            break;
        }
        path = format!(
            "/v1/batches?limit=2&after={}",
            page["last_id"].as_str().unwrap()
        );
    }
    assert_eq!(seen, ids);
    for q in ["limit=0", "limit=101", "limit=abc", "after=file-x"] {
        api.get(&format!("/v1/batches?{q}"), ALICE)
            .await
            .error(400, None);
    }
}

#[sqlx::test]
async fn cancel_then_cancel_again_then_conflict(pool: PgPool) {
    let api = Api::new(&pool).await;
    let b = api.batch_of(ALICE, "k", 3).await;
    let path = format!("/v1/batches/{}/cancel", id(&b));
    // Nothing in flight: cancelled at once, every request as an error line.
    let c = api.post(&path, ALICE, json!({})).await.ok();
    assert_batch_shape(&c);
    assert_eq!(c["status"], "cancelled");
    assert!(c["cancelling_at"].is_i64() && c["cancelled_at"].is_i64());
    assert_eq!(
        c["request_counts"],
        json!({"total": 3, "completed": 0, "failed": 3})
    );
    let errors = api
        .get(
            &format!("/v1/files/{}/content", c["error_file_id"].as_str().unwrap()),
            ALICE,
        )
        .await
        .text();
    let lines = lines(&errors);
    assert_eq!(lines.len(), 3);
    assert!(
        lines
            .iter()
            .all(|l| l["error"]["code"] == "batch_cancelled")
    );
    // Cancelling a cancelled batch: a conflict retrying cannot fix.
    let answer = api.post(&path, ALICE, json!({})).await;
    answer.error(409, Some("conflict"));
    assert_eq!(answer.headers["x-should-retry"], "false");
}

#[sqlx::test]
async fn requests_extension_lists_each_request(pool: PgPool) {
    let api = Api::new(&pool).await;
    let b = api.batch_of(ALICE, "q", 5).await;
    let base = format!("/v1/batches/{}/requests", id(&b));
    let page = api.get(&format!("{base}?limit=2"), ALICE).await.ok();
    assert_eq!(page["object"], "list");
    assert_eq!(page["has_more"], true);
    let first = &page["data"][0];
    assert_eq!(first["object"], "batch.request");
    assert!(first["id"].as_str().unwrap().starts_with("batch_req_"));
    assert_eq!(first["batch_id"], id(&b));
    assert_eq!(first["custom_id"], "q0");
    assert_eq!(first["state"], "pending");
    assert_eq!(first["model"], "m");
    let mut all: Vec<String> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["custom_id"].as_str().unwrap().to_owned())
        .collect();
    let mut after = page["last_id"].as_str().unwrap().to_owned();
    loop {
        let p = api
            .get(&format!("{base}?limit=2&after={after}"), ALICE)
            .await
            .ok();
        all.extend(
            p["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["custom_id"].as_str().unwrap().to_owned()),
        );
        if p["has_more"] == false {
            break;
        }
        after = p["last_id"].as_str().unwrap().to_owned();
    }
    assert_eq!(all, ["q0", "q1", "q2", "q3", "q4"]);
    for q in ["limit=0", "limit=1001", "after=batch_x"] {
        api.get(&format!("{base}?{q}"), ALICE)
            .await
            .error(400, None);
    }
}

#[sqlx::test]
async fn another_owners_batches_are_not_found(pool: PgPool) {
    let api = Api::new(&pool).await;
    let b = api.batch_of(ALICE, "iso", 2).await;
    let bid = id(&b);
    for path in [
        format!("/v1/batches/{bid}"),
        format!("/v1/batches/{bid}/requests"),
    ] {
        api.get(&path, BOB).await.error(404, Some("not_found"));
    }
    for path in [
        format!("/v1/batches/{bid}/cancel"),
        format!("/v1/batches/{bid}/retry"),
    ] {
        api.post(&path, BOB, json!({}))
            .await
            .error(404, Some("not_found"));
    }
    let list = api.get("/v1/batches", BOB).await.ok();
    assert_eq!(list["data"], json!([]));
    let list = api.get(&format!("/v1/batches?after={bid}"), BOB).await.ok();
    assert_eq!(list["data"], json!([]));
    // Untouched by Bob's cancel: still running for Alice.
    let b = api.get(&format!("/v1/batches/{bid}"), ALICE).await.ok();
    assert_eq!(b["status"], "in_progress");
}

#[sqlx::test]
async fn unparsable_batch_ids_are_not_found(pool: PgPool) {
    let api = Api::new(&pool).await;
    for path in [
        "/v1/batches/nope",
        "/v1/batches/file-0190f5a4c2b67d0c9a3c6b1e2d3f4a5b",
        "/v1/batches/batch_req_0190f5a4c2b67d0c9a3c6b1e2d3f4a5b",
        "/v1/batches/x/requests",
    ] {
        api.get(path, ALICE).await.error(404, Some("not_found"));
    }
    for path in ["/v1/batches/x/cancel", "/v1/batches/x/retry"] {
        api.post(path, ALICE, json!({}))
            .await
            .error(404, Some("not_found"));
    }
}

async fn wait_for(api: &Api, batch: &str, status: &str) -> Value {
    for _ in 0..600 {
        let b = api.get(&format!("/v1/batches/{batch}"), ALICE).await.ok();
        if b["status"] == status {
            return b;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("batch {batch} never became {status}");
}

#[sqlx::test]
async fn a_whole_life_with_usage_downloads_and_retry(pool: PgPool) {
    // Requests `bad*` fail with a final 400 until the upstream is "fixed".
    let fixed = Arc::new(AtomicBool::new(false));
    let f = fixed.clone();
    let mock = MockUpstream::start(MockBehavior::default().respond(move |call| {
        let bad = call
            .custom_id
            .as_deref()
            .is_some_and(|c| c.starts_with("bad"));
        if bad && !f.load(Ordering::SeqCst) {
            MockReply::status(400, r#"{"error":{"message":"no"}}"#)
        } else {
            MockReply::ok_for(call)
        }
    }))
    .await;
    let api = Api::new(&pool).await;
    let content = format!(
        "{}{}{}",
        line("good0"),
        "\n",
        line("bad0") + "\n" + &line("good1") + "\n"
    );
    let f = api.upload(ALICE, &content).await;
    let b = api.create_batch(ALICE, &id(&f)).await;
    let bid = id(&b);
    let daemon = common::daemon::start(&api.store, common::daemon::config(&mock.url(), "", "", ""));

    let done = wait_for(&api, &bid, "completed").await;
    assert_batch_shape(&done);
    assert_eq!(
        done["request_counts"],
        json!({"total": 3, "completed": 2, "failed": 1})
    );
    assert!(done["finalizing_at"].is_i64() && done["completed_at"].is_i64());
    // Usage summed from the two answers (the mock reports 10 + 7 tokens each).
    assert_eq!(done["usage"]["input_tokens"], 20);
    assert_eq!(done["usage"]["output_tokens"], 14);
    assert_eq!(done["usage"]["total_tokens"], 34);

    let out = api
        .get(
            &format!(
                "/v1/files/{}/content",
                done["output_file_id"].as_str().unwrap()
            ),
            ALICE,
        )
        .await;
    assert_eq!(out.status, 200);
    let out = lines(&out.text());
    let mut ids: Vec<&str> = out
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, ["good0", "good1"]);
    assert!(
        out.iter()
            .all(|l| l["response"]["status_code"] == 200 && l["error"].is_null())
    );
    let errors = api
        .get(
            &format!(
                "/v1/files/{}/content",
                done["error_file_id"].as_str().unwrap()
            ),
            ALICE,
        )
        .await
        .text();
    let errors = lines(&errors);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["custom_id"], "bad0");
    assert_eq!(errors[0]["response"]["status_code"], 400);

    let reqs = api
        .get(&format!("/v1/batches/{bid}/requests"), ALICE)
        .await
        .ok();
    let states: Vec<(&str, &str)> = reqs["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["custom_id"].as_str().unwrap(),
                r["state"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            ("good0", "completed"),
            ("bad0", "failed"),
            ("good1", "completed")
        ]
    );
    assert_eq!(reqs["data"][1]["status_code"], 400);

    // Cancelling a completed batch is a conflict.
    api.post(&format!("/v1/batches/{bid}/cancel"), ALICE, json!({}))
        .await
        .error(409, Some("conflict"));

    // Retry after the upstream is fixed: reopened, run again, completed.
    fixed.store(true, Ordering::SeqCst);
    let r = api
        .post(&format!("/v1/batches/{bid}/retry"), ALICE, json!({}))
        .await
        .ok();
    assert_eq!(r["retried"], 1);
    assert_eq!(r["status"], "in_progress");
    assert_eq!(r["completed_at"], Value::Null);
    assert!(r["expires_at"].as_i64().unwrap() >= done["expires_at"].as_i64().unwrap());
    let again = wait_for(&api, &bid, "completed").await;
    assert_eq!(
        again["request_counts"],
        json!({"total": 3, "completed": 3, "failed": 0})
    );
    let errors = api
        .get(
            &format!(
                "/v1/files/{}/content",
                done["error_file_id"].as_str().unwrap()
            ),
            ALICE,
        )
        .await
        .text();
    assert_eq!(errors, "");
    let out = api
        .get(
            &format!(
                "/v1/files/{}/content",
                done["output_file_id"].as_str().unwrap()
            ),
            ALICE,
        )
        .await
        .text();
    assert_eq!(lines(&out).len(), 3);
    // Nothing left to retry: the batch is answered unchanged.
    let r = api
        .post(&format!("/v1/batches/{bid}/retry"), ALICE, json!({}))
        .await
        .ok();
    assert_eq!(r["retried"], 0);
    assert_eq!(r["status"], "completed");
    daemon.stop().await;
    mock.shutdown().await;
}

#[sqlx::test]
async fn retry_is_refused_while_running_and_after_cancel(pool: PgPool) {
    let api = Api::new(&pool).await;
    let b = api.batch_of(ALICE, "r", 2).await;
    let path = format!("/v1/batches/{}/retry", id(&b));
    let answer = api.post(&path, ALICE, json!({})).await;
    answer.error(409, Some("conflict"));
    assert_eq!(answer.headers["x-should-retry"], "false");
    api.post(&format!("/v1/batches/{}/cancel", id(&b)), ALICE, json!({}))
        .await
        .ok();
    api.post(&path, ALICE, json!({})).await.error(409, None);
}

#[sqlx::test]
async fn nul_characters_are_refused_at_the_edge_never_a_5xx(pool: PgPool) {
    let api = Api::new(&pool).await;
    // In a line's custom_id or model: that line is refused, by number.
    let good = line("ok");
    let bad_id = good.replacen("\"ok\"", "\"a\\u0000b\"", 1);
    let bad_model = line("m").replacen("\"model\":\"", "\"model\":\"x\\u0000", 1);
    assert_ne!(bad_id, good);
    let content = format!("{good}\n{bad_id}\n{bad_model}\n");
    let file = api.upload(ALICE, &content).await;
    let batch = api.create_batch(ALICE, file["id"].as_str().unwrap()).await;
    assert_eq!(batch["status"], "failed", "{batch}");
    let errors = batch["errors"]["data"].as_array().unwrap();
    let got: Vec<(i64, &str)> = errors
        .iter()
        .map(|e| (e["line"].as_i64().unwrap(), e["code"].as_str().unwrap()))
        .collect();
    assert_eq!(got, [(2, "invalid_custom_id"), (3, "invalid_model")]);
    // In metadata: a 400 naming the parameter.
    let file = api.upload(ALICE, &valid_file("n", 1)).await;
    for metadata in [json!({"a\u{0}b": "v"}), json!({"k": "v\u{0}"})] {
        let answer = api
            .post(
                "/v1/batches",
                ALICE,
                json!({
                    "input_file_id": file["id"],
                    "endpoint": CHAT,
                    "completion_window": "24h",
                    "metadata": metadata,
                }),
            )
            .await;
        let e = answer.error(400, None);
        assert_eq!(e["param"], "metadata", "{e}");
    }
}
