//! The `/v1` extensions the dashboard reads, through the router against real
//! PostgreSQL: `/v1/me`, the status and state filters, one request with its
//! input and answer, a batch's stats, the admin routes, and that each owner
//! sees only their own things.

mod api_support;
mod common;

use api_support::*;
use fusillade::domain::request::RequestId;
use fusillade::store::{DaemonStore, NewDaemon};
use fusillade::{BatchId, IngestLimits};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

/// Alice is an admin, Bob is not.
async fn api(pool: &PgPool) -> Api {
    Api::with(
        pool,
        config_with_auth("admins = [\"alice\"]\n"),
        IngestLimits::default(),
    )
    .await
}

fn batch_uuid(b: &Value) -> BatchId {
    let id = b["id"].as_str().unwrap();
    BatchId(Uuid::try_parse(id.strip_prefix("batch_").unwrap()).unwrap())
}

/// The request of 1-based input line `line`.
fn line_of(b: &Value, line: u64) -> Uuid {
    RequestId::of_line(batch_uuid(b), line).0
}

fn wire(id: Uuid) -> String {
    format!("batch_req_{}", id.simple())
}

fn ids(list: &Value) -> Vec<String> {
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

#[sqlx::test]
async fn me_names_the_owner_and_whether_it_is_an_admin(pool: PgPool) {
    let api = api(&pool).await;
    let alice = api.get("/v1/me", ALICE).await.ok();
    assert_eq!(
        alice,
        json!({"object": "me", "owner": "alice", "admin": true, "auth": true})
    );
    let bob = api.get("/v1/me", BOB).await.ok();
    assert_eq!(bob["owner"], "bob");
    assert_eq!(bob["admin"], false);
    api.call(axum::http::Method::GET, "/v1/me", None, None)
        .await
        .error(401, Some("invalid_api_key"));
    api.get("/v1/me", "sk-nobody")
        .await
        .error(401, Some("invalid_api_key"));
}

#[sqlx::test]
async fn the_batch_list_filters_by_status_within_the_owner(pool: PgPool) {
    let api = api(&pool).await;
    let running = api.batch_of(ALICE, "a", 3).await;
    let cancelled = api.batch_of(ALICE, "b", 3).await;
    let bobs = api.batch_of(BOB, "c", 3).await;
    let id = cancelled["id"].as_str().unwrap();
    api.post(&format!("/v1/batches/{id}/cancel"), ALICE, json!({}))
        .await
        .ok();
    api.post(
        &format!("/v1/batches/{}/cancel", bobs["id"].as_str().unwrap()),
        BOB,
        json!({}),
    )
    .await
    .ok();

    let list = api.get("/v1/batches?status=cancelled", ALICE).await.ok();
    assert_eq!(ids(&list), vec![id.to_owned()]);
    let list = api.get("/v1/batches?status=in_progress", ALICE).await.ok();
    assert_eq!(ids(&list), vec![running["id"].as_str().unwrap().to_owned()]);
    let all = api.get("/v1/batches", ALICE).await.ok();
    assert_eq!(
        ids(&all).len(),
        2,
        "no filter: both of Alice's, none of Bob's"
    );
    let list = api.get("/v1/batches?status=in_progress", BOB).await.ok();
    assert!(ids(&list).is_empty(), "Bob's only batch is cancelled");
    api.get("/v1/batches?status=done", ALICE)
        .await
        .error(400, Some("invalid_value"));
}

/// A batch of six lines: 1 completed, 2 failed (a 400 from upstream),
/// 3 cancelled, 4 being sent, 5 and 6 waiting.
async fn mixed_batch(api: &Api) -> Value {
    let b = api.batch_of(ALICE, "m", 6).await;
    let answer =
        r#"{"id":"chatcmpl-1","object":"chat.completion","model":"routed-model-x","choices":[]}"#;
    common::finish(&api.pool, line_of(&b, 1), Some(200), Some(answer), None).await;
    common::finish(
        &api.pool,
        line_of(&b, 2),
        Some(400),
        Some(r#"{"error":{"message":"bad prompt"}}"#),
        Some(json!({"code": "upstream_client_error", "message": "the prompt was refused"})),
    )
    .await;
    common::cancel(&api.pool, line_of(&b, 3)).await;
    common::set_in_flight(&api.pool, line_of(&b, 4), "processing").await;
    b
}

#[sqlx::test]
async fn the_request_list_filters_by_state(pool: PgPool) {
    let api = api(&pool).await;
    let b = mixed_batch(&api).await;
    let id = b["id"].as_str().unwrap();
    let page = |state: &str| format!("/v1/batches/{id}/requests?state={state}");
    let expect = [
        ("completed", vec![1]),
        ("failed", vec![2]),
        ("canceled", vec![3]),
        ("processing", vec![4]),
        ("claimed", vec![]),
        ("pending", vec![5, 6]),
    ];
    for (state, lines) in expect {
        let list = api.get(&page(state), ALICE).await.ok();
        let want: Vec<String> = lines.iter().map(|l| wire(line_of(&b, *l))).collect();
        assert_eq!(ids(&list), want, "state {state}");
        for r in list["data"].as_array().unwrap() {
            assert_eq!(r["state"], state);
        }
    }
    // Paged within a state.
    let first = api
        .get(&format!("{}&limit=1", page("pending")), ALICE)
        .await
        .ok();
    assert_eq!(ids(&first), vec![wire(line_of(&b, 5))]);
    assert_eq!(first["has_more"], true);
    let last = first["last_id"].as_str().unwrap();
    let next = api
        .get(&format!("{}&limit=1&after={last}", page("pending")), ALICE)
        .await
        .ok();
    assert_eq!(ids(&next), vec![wire(line_of(&b, 6))]);
    assert_eq!(next["has_more"], false);
    // A finished request carries its latency.
    let done = api.get(&page("completed"), ALICE).await.ok();
    assert!(done["data"][0]["latency_ms"].is_i64(), "{done}");

    api.get(&page("done"), ALICE)
        .await
        .error(400, Some("invalid_value"));
    api.get(&page("failed"), BOB)
        .await
        .error(404, Some("not_found"));
}

#[sqlx::test]
async fn one_request_shows_its_input_and_its_answer_or_error(pool: PgPool) {
    let api = api(&pool).await;
    let b = mixed_batch(&api).await;
    let id = b["id"].as_str().unwrap();
    let path = |line: u64| format!("/v1/batches/{id}/requests/{}", wire(line_of(&b, line)));

    let failed = api.get(&path(2), ALICE).await.ok();
    assert_eq!(failed["state"], "failed");
    assert_eq!(failed["status_code"], 400);
    assert_eq!(failed["error"]["code"], "upstream_client_error");
    assert_eq!(failed["error"]["message"], "the prompt was refused");
    assert_eq!(
        failed["response"]["json"]["error"]["message"], "bad prompt",
        "the upstream's body is kept: {failed}"
    );
    assert_eq!(failed["custom_id"], "m1");
    assert_eq!(failed["input"]["json"]["model"], failed["model"]);
    assert!(
        failed["input"]["json"]["messages"][0]["content"]
            .as_str()
            .unwrap()
            .contains("m1")
    );
    assert!(failed["input"]["bytes"].as_i64().unwrap() > 0);

    let done = api.get(&path(1), ALICE).await.ok();
    assert_eq!(done["state"], "completed");
    assert_eq!(done["error"], Value::Null);
    assert_eq!(done["routed_model"], "routed-model-x");
    assert_eq!(done["response"]["json"]["id"], "chatcmpl-1");
    assert!(done["upstream_request_id"].is_string());

    let waiting = api.get(&path(5), ALICE).await.ok();
    assert_eq!(waiting["state"], "pending");
    assert_eq!(waiting["response"], Value::Null);
    assert_eq!(waiting["custom_id"], "m4");
    assert_eq!(waiting["input"]["json"]["model"], waiting["model"]);

    // Another owner, another batch's id, or no such request: 404.
    api.get(&path(2), BOB).await.error(404, Some("not_found"));
    let other = api.batch_of(ALICE, "o", 1).await;
    let foreign = format!("/v1/batches/{id}/requests/{}", wire(line_of(&other, 1)));
    api.get(&foreign, ALICE).await.error(404, Some("not_found"));
    api.get(&path(7), ALICE).await.error(404, Some("not_found"));
    api.get(&format!("/v1/batches/{id}/requests/nope"), ALICE)
        .await
        .error(404, Some("not_found"));
}

#[sqlx::test]
async fn stats_count_states_and_break_failures_down(pool: PgPool) {
    let api = api(&pool).await;
    let b = mixed_batch(&api).await;
    let id = b["id"].as_str().unwrap();
    let s = api
        .get(&format!("/v1/batches/{id}/stats"), ALICE)
        .await
        .ok();
    assert_eq!(s["object"], "batch.stats");
    assert_eq!(
        s["counts"],
        json!({"total": 6, "pending": 2, "in_progress": 1, "completed": 1, "failed": 1,
               "canceled": 1})
    );
    assert_eq!(s["sample"]["step"], 1);
    assert_eq!(s["sample"]["exact"], true);
    assert_eq!(s["sample"]["results_read"], 3);
    let buckets = s["throughput"]["buckets"].as_array().unwrap();
    let sum = |k: &str| buckets.iter().map(|x| x[k].as_f64().unwrap()).sum::<f64>();
    assert_eq!(sum("completed"), 1.0, "{s}");
    assert_eq!(sum("failed"), 2.0, "failed and cancelled: {s}");
    assert!(s["throughput"]["interval_secs"].as_i64().unwrap() >= 1);
    assert_eq!(
        s["latency_ms"]["count"], 2,
        "two were answered upstream: {s}"
    );
    let groups = s["errors"]["groups"].as_array().unwrap();
    assert_eq!(s["errors"]["examined"], 2);
    assert!(
        groups.contains(&json!({"code": "upstream_client_error", "status_code": 400, "count": 1}))
    );
    assert!(groups.contains(&json!({"code": "batch_cancelled", "status_code": null, "count": 1})));
    assert!(s["rate_per_sec"].as_f64().unwrap() > 0.0);
    assert!(
        s["eta_secs"].is_i64(),
        "a live batch with a rate has an ETA: {s}"
    );

    api.get(&format!("/v1/batches/{id}/stats"), BOB)
        .await
        .error(404, Some("not_found"));
}

#[sqlx::test]
async fn stats_of_a_large_batch_read_a_sample(pool: PgPool) {
    let api = api(&pool).await;
    let n = 2 * fusillade::store::STATS_SAMPLE as usize + 1;
    let b = api.batch_of(ALICE, "big", n).await;
    let id = b["id"].as_str().unwrap();
    // Line 1 is in the sample (lines 1, 1 + step, ...), line 2 is not.
    common::finish(&api.pool, line_of(&b, 1), Some(200), Some("{}"), None).await;
    common::finish(&api.pool, line_of(&b, 2), Some(200), Some("{}"), None).await;
    let s = api
        .get(&format!("/v1/batches/{id}/stats"), ALICE)
        .await
        .ok();
    assert_eq!(s["sample"]["step"], 3);
    assert_eq!(s["sample"]["exact"], false);
    assert_eq!(s["sample"]["results_read"], 1);
    let buckets = s["throughput"]["buckets"].as_array().unwrap();
    let done: f64 = buckets
        .iter()
        .map(|x| x["completed"].as_f64().unwrap())
        .sum();
    assert_eq!(done, 3.0, "one sampled line stands for three: {s}");
    assert_eq!(s["counts"]["completed"], 2, "counts are exact: {s}");
    assert_eq!(s["counts"]["pending"], n as i64 - 2);
}

#[sqlx::test]
async fn admin_routes_are_for_admins_only(pool: PgPool) {
    let api = api(&pool).await;
    let b = mixed_batch(&api).await;
    let _ = b;
    let daemon = api
        .store
        .register_daemon(NewDaemon {
            hostname: "host-a".into(),
            pid: 4242,
            version: "1.2.3".into(),
            config: json!({}),
        })
        .await
        .unwrap();

    let models = api.get("/v1/admin/models", ALICE).await.ok();
    let data = models["data"].as_array().unwrap();
    let pending: i64 = data.iter().map(|m| m["pending"].as_i64().unwrap()).sum();
    let in_flight: i64 = data.iter().map(|m| m["in_flight"].as_i64().unwrap()).sum();
    assert_eq!(pending, 2, "{models}");
    assert_eq!(in_flight, 1, "{models}");
    for m in data {
        assert_eq!(m["limit"], 64, "the default route's limit: {m}");
    }

    let workers = api.get("/v1/admin/workers", ALICE).await.ok();
    let w = &workers["data"][0];
    assert_eq!(w["id"], daemon.id.0.to_string());
    assert_eq!(w["hostname"], "host-a");
    assert_eq!(w["status"], "running");
    assert!(w["heartbeat_age_ms"].is_i64());

    for path in ["/v1/admin/models", "/v1/admin/workers"] {
        api.get(path, BOB).await.error(403, Some("forbidden"));
        api.call(axum::http::Method::GET, path, None, None)
            .await
            .error(401, Some("invalid_api_key"));
    }
}

#[sqlx::test]
async fn the_dashboard_is_served_at_the_root_without_a_key(pool: PgPool) {
    let api = api(&pool).await;
    for (path, kind) in [
        ("/", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
    ] {
        let a = api.call(axum::http::Method::GET, path, None, None).await;
        assert_eq!(a.status, 200, "{path}");
        let ct = a.headers["content-type"].to_str().unwrap();
        assert!(ct.starts_with(kind), "{path}: {ct}");
        assert!(a.headers.contains_key("content-security-policy"));
        assert!(!a.body.is_empty());
    }
    let page = api
        .call(axum::http::Method::GET, "/", None, None)
        .await
        .text();
    assert!(page.contains("/ui/app.js"));
    // Unknown paths still answer in the API's envelope.
    api.call(axum::http::Method::GET, "/ui/nope.js", None, None)
        .await
        .error(404, Some("unknown_url"));
}

#[sqlx::test]
async fn an_upload_s_refused_lines_are_listed_by_number(pool: PgPool) {
    let api = api(&pool).await;
    let good = common::line("g1");
    let text = format!("{good}\nnot json\n{}\n", common::line("g2"));
    let file = api.upload(ALICE, &text).await;
    let id = file["id"].as_str().unwrap();
    let v = api
        .get(&format!("/v1/files/{id}/validation"), ALICE)
        .await
        .ok();
    assert_eq!(v["valid_lines"], 2);
    assert_eq!(v["error_count"], 1);
    assert_eq!(v["errors"][0]["line"], 2);
    assert_eq!(v["errors"][0]["code"], "invalid_json_line");
    assert_eq!(v["endpoints"], json!([CHAT]));
    api.get(&format!("/v1/files/{id}/validation"), BOB)
        .await
        .error(404, Some("not_found"));
    let cfg = api
        .call(axum::http::Method::GET, "/ui/config.json", None, None)
        .await
        .ok();
    assert_eq!(cfg, json!({"auth": true}));
}

#[sqlx::test]
async fn a_routes_adaptive_limit_shows_on_the_models_page(pool: PgPool) {
    let api = api(&pool).await;
    // What a daemon of this process sets as it adapts (daemon::adaptive);
    // a model without the gauge has no daemon limit to show.
    metrics::gauge!("fusillade_route_limit", "model" => "m-limited").set(40.0);
    let models = api.get("/v1/admin/models", ALICE).await.ok();
    let data = models["data"].as_array().unwrap();
    let m = data
        .iter()
        .find(|m| m["model"] == "m-limited")
        .unwrap_or_else(|| panic!("the limited route is listed: {models}"));
    assert_eq!(m["route_limit"], 40, "{m}");
    assert_eq!(m["limit"], 64, "the ceiling beside it: {m}");
    for m in data.iter().filter(|m| m["model"] != "m-limited") {
        assert!(m["route_limit"].is_null(), "{m}");
    }
}
