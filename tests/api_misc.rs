//! Auth, unknown routes, `/healthz`, `/metrics`, and server faults, through
//! the router.

mod api_support;

use api_support::*;
use axum::body::Body;
use axum::http::{Method, Request, header};
use fusillade::IngestLimits;
use fusillade::config::Config;
use serde_json::json;
use sqlx::PgPool;

/// Every `/v1` route, with a method and a path naming objects that exist
/// (so a 401 is not confused with a 404).
fn v1_routes(file: &str, batch: &str) -> Vec<(Method, String)> {
    vec![
        (Method::POST, "/v1/files".into()),
        (Method::GET, "/v1/files".into()),
        (Method::GET, format!("/v1/files/{file}")),
        (Method::DELETE, format!("/v1/files/{file}")),
        (Method::GET, format!("/v1/files/{file}/content")),
        (Method::POST, "/v1/batches".into()),
        (Method::GET, "/v1/batches".into()),
        (Method::GET, format!("/v1/batches/{batch}")),
        (Method::POST, format!("/v1/batches/{batch}/cancel")),
        (Method::POST, format!("/v1/batches/{batch}/retry")),
        (Method::GET, format!("/v1/batches/{batch}/requests")),
    ]
}

#[sqlx::test]
async fn every_v1_route_needs_a_known_key(pool: PgPool) {
    let api = Api::new(&pool).await;
    let b = api.batch_of(ALICE, "a", 1).await;
    let file = b["input_file_id"].as_str().unwrap().to_owned();
    for (method, path) in v1_routes(&file, &id(&b)) {
        // No header.
        api.call(method.clone(), &path, None, None)
            .await
            .error(401, Some("invalid_api_key"));
        // Unknown key; the key is never echoed.
        let a = api
            .call(method.clone(), &path, Some("sk-mallory"), None)
            .await;
        a.error(401, Some("invalid_api_key"));
        assert!(!a.text().contains("sk-mallory"));
        // Not a bearer header.
        let req = Request::builder()
            .method(method.clone())
            .uri(&path)
            .header(header::AUTHORIZATION, format!("Basic {ALICE}"))
            .body(Body::empty())
            .unwrap();
        api.send(req).await.error(401, Some("invalid_api_key"));
    }
    // The scheme is case-insensitive, as HTTP says.
    let req = Request::builder()
        .uri("/v1/files")
        .header(header::AUTHORIZATION, format!("bearer {ALICE}"))
        .body(Body::empty())
        .unwrap();
    api.send(req).await.ok();
}

#[sqlx::test]
async fn without_auth_everyone_is_the_empty_owner(pool: PgPool) {
    let api = Api::with(&pool, Config::default(), IngestLimits::default()).await;
    let f = api
        .post_multipart(
            None,
            &[
                Part::text("purpose", "batch"),
                Part::file("file", "x.jsonl", valid_file("n", 1).as_bytes()),
            ],
        )
        .await
        .ok();
    let b = api
        .call(
            Method::POST,
            "/v1/batches",
            None,
            Some(json!({"input_file_id": id(&f), "endpoint": CHAT, "completion_window": "24h"})),
        )
        .await
        .ok();
    // Any key (or none) sees the same objects.
    api.call(
        Method::GET,
        &format!("/v1/batches/{}", id(&b)),
        Some("whatever"),
        None,
    )
    .await
    .ok();
    let owner: String = sqlx::query_scalar("SELECT owner FROM batches")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(owner, "");
}

#[sqlx::test]
async fn unknown_routes_and_methods_answer_json(pool: PgPool) {
    let api = Api::new(&pool).await;
    // (`/` is the dashboard, SPEC §3.)
    for path in [
        "/v1",
        "/v1/fine_tuning/jobs",
        "/v2/files",
        "/v1/files/x/y/z",
    ] {
        let e = api.get(path, ALICE).await.error(404, Some("unknown_url"));
        assert!(e["message"].as_str().unwrap().contains(path));
    }
    // Without a key too: an unknown route is unknown to everyone.
    api.call(Method::GET, "/v1/nothing", None, None)
        .await
        .error(404, None);
    let a = api.call(Method::PUT, "/v1/files", Some(ALICE), None).await;
    a.error(405, Some("method_not_allowed"));
    api.call(Method::DELETE, "/v1/batches/x", Some(ALICE), None)
        .await
        .error(405, None);
}

#[sqlx::test]
async fn healthz_says_ok_then_unavailable(pool: PgPool) {
    let api = Api::new(&pool).await;
    let f = api.upload(ALICE, &valid_file("h", 1)).await;
    let a = api.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json(), json!({"status": "ok"}));
    pool.close().await;
    let a = api.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(a.status, 503);
    assert_eq!(a.json()["status"], "unavailable");
    // API calls that need the (closed) primary say unavailable too, in the envelope.
    api.delete(&format!("/v1/files/{}", id(&f)), ALICE)
        .await
        .error(503, Some("unavailable"));
}

#[sqlx::test]
async fn metrics_render_routes_and_request_states(pool: PgPool) {
    let api = Api::new(&pool).await;
    let b = api.batch_of(ALICE, "m", 3).await;
    api.get(&format!("/v1/batches/{}", id(&b)), ALICE)
        .await
        .ok();
    api.get("/v1/batches/nope", ALICE).await.error(404, None);
    api.get("/nowhere", ALICE).await.error(404, None);
    let a = api.call(Method::GET, "/metrics", None, None).await;
    assert_eq!(a.status, 200);
    assert!(
        a.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = a.text();
    // Routes are templates, never raw ids.
    assert!(
        text.contains(r#"fusillade_api_requests_total{route="/v1/batches/{id}",status="200"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"fusillade_api_requests_total{route="/v1/batches/{id}",status="404"} 1"#)
    );
    assert!(text.contains(r#"route="unmatched",status="404""#));
    assert!(text.contains(r#"fusillade_api_latency_seconds_bucket{route="/v1/files""#));
    assert!(!text.contains(&id(&b)));
    assert!(
        text.contains(r#"fusillade_requests{state="pending"} 3"#),
        "{text}"
    );
    assert!(text.contains(r#"fusillade_requests{state="claimed"} 0"#));
    assert!(text.contains(r#"fusillade_requests{state="processing"} 0"#));
}

#[sqlx::test]
async fn server_faults_answer_500_without_details(pool: PgPool) {
    let api = Api::new(&pool).await;
    api.batch_of(ALICE, "f", 1).await;
    sqlx::query("ALTER TABLE batches RENAME TO batches_gone")
        .execute(&pool)
        .await
        .unwrap();
    let a = api.get("/v1/batches", ALICE).await;
    let e = a.error(500, None);
    assert_eq!(e["type"], "api_error");
    let text = a.text();
    assert!(!text.contains("batches"), "{text}");
    assert!(!text.contains("relation"), "{text}");
}

#[sqlx::test]
async fn auth_keys_follow_a_reloaded_config(pool: PgPool) {
    use fusillade::api::{ApiState, router};
    use std::sync::Arc;
    use tower::ServiceExt;
    let store =
        fusillade::PostgresStore::new(fusillade::TestDbPools::new(pool.clone()).await.unwrap());
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(config_with_auth("")));
    let app = router(ApiState::new(store, rx));
    let call = |key: &'static str| {
        let app = app.clone();
        async move {
            let req = Request::builder()
                .uri("/v1/files")
                .header(header::AUTHORIZATION, format!("Bearer {key}"))
                .body(Body::empty())
                .unwrap();
            app.oneshot(req).await.unwrap().status().as_u16()
        }
    };
    assert_eq!(call(ALICE).await, 200);
    assert_eq!(call("sk-carol").await, 401);
    let reloaded = Config::parse("[auth]\nkeys = { \"sk-carol\" = \"carol\" }", "t", &|_| {
        None
    })
    .unwrap();
    tx.send(Arc::new(reloaded)).unwrap();
    assert_eq!(call("sk-carol").await, 200);
    assert_eq!(call(ALICE).await, 401);
}
