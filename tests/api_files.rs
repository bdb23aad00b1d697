//! The `/v1/files` routes through the router: success shapes, every error
//! status in OpenAI's envelope, and owner isolation.

mod api_support;

use api_support::*;
use axum::body::Body;
use axum::http::{Method, Request, header};
use fusillade::IngestLimits;
use serde_json::{Value, json};
use sqlx::PgPool;

fn assert_file_shape(f: &Value) {
    assert_eq!(f["object"], "file");
    assert!(f["id"].as_str().unwrap().starts_with("file-"));
    assert!(f["bytes"].is_i64());
    assert!(f["created_at"].is_i64());
    assert!(f["filename"].is_string());
    assert_eq!(f["status"], "processed");
    let obj = f.as_object().unwrap();
    assert!(obj.contains_key("expires_at") && obj.contains_key("status_details"));
}

#[sqlx::test]
async fn upload_get_list_content_delete(pool: PgPool) {
    let api = Api::new(&pool).await;
    let content = valid_file("a", 3);
    let f = api.upload(ALICE, &content).await;
    assert_file_shape(&f);
    assert_eq!(f["purpose"], "batch");
    assert_eq!(f["filename"], "input.jsonl");
    assert_eq!(f["bytes"], content.len());
    assert_eq!(f["status_details"], Value::Null);
    let id = id(&f);

    let got = api.get(&format!("/v1/files/{id}"), ALICE).await.ok();
    assert_eq!(got, f);
    // The bare uuid names the same file.
    let bare = id.trim_start_matches("file-");
    assert_eq!(
        api.get(&format!("/v1/files/{bare}"), ALICE).await.ok()["id"],
        id
    );

    let body = api.get(&format!("/v1/files/{id}/content"), ALICE).await;
    assert_eq!(body.status, 200);
    assert_eq!(body.text(), content);
    assert_eq!(
        body.headers[header::CONTENT_LENGTH],
        content.len().to_string().as_str()
    );

    let list = api.get("/v1/files", ALICE).await.ok();
    assert_eq!(list["object"], "list");
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert_eq!(list["first_id"], id);
    assert_eq!(list["last_id"], id);
    assert_eq!(list["has_more"], false);

    let deleted = api.delete(&format!("/v1/files/{id}"), ALICE).await.ok();
    assert_eq!(
        deleted,
        json!({"id": id, "object": "file", "deleted": true})
    );
    api.get(&format!("/v1/files/{id}"), ALICE)
        .await
        .error(404, Some("not_found"));
    api.delete(&format!("/v1/files/{id}"), ALICE)
        .await
        .error(404, Some("not_found"));
    api.get(&format!("/v1/files/{id}/content"), ALICE)
        .await
        .error(404, Some("not_found"));
}

#[sqlx::test]
async fn file_field_may_come_before_purpose_and_expiry_is_kept(pool: PgPool) {
    let api = Api::new(&pool).await;
    let content = valid_file("n", 2);
    // The Node SDK's order: file first.
    let f = api
        .post_multipart(
            Some(ALICE),
            &[
                Part::file("file", "node.jsonl", content.as_bytes()),
                Part::text("purpose", "batch"),
                Part::text("expires_after[anchor]", "created_at"),
                Part::text("expires_after[seconds]", "3600"),
            ],
        )
        .await
        .ok();
    assert_eq!(f["filename"], "node.jsonl");
    assert_eq!(
        f["expires_at"].as_i64().unwrap(),
        f["created_at"].as_i64().unwrap() + 3600
    );
    let got = api.get(&format!("/v1/files/{}", id(&f)), ALICE).await.ok();
    assert_eq!(got["expires_at"], f["expires_at"]);

    // Expiry before the file works too; unknown fields are skipped.
    let f = api
        .post_multipart(
            Some(ALICE),
            &[
                Part::text("purpose", "batch"),
                Part::text("expires_after[anchor]", "created_at"),
                Part::text("expires_after[seconds]", "7200"),
                Part::text("something_new", "x"),
                Part::file("file", "py.jsonl", content.as_bytes()),
            ],
        )
        .await
        .ok();
    assert_eq!(
        f["expires_at"].as_i64().unwrap(),
        f["created_at"].as_i64().unwrap() + 7200
    );
}

#[sqlx::test]
async fn refused_lines_are_reported_in_status_details(pool: PgPool) {
    let api = Api::new(&pool).await;
    // Two good lines, then two refused ones (lines 3 and 4).
    let f = api
        .upload(ALICE, &format!("{}not json\n[1]\n", valid_file("r", 2)))
        .await;
    assert_eq!(
        f["status_details"],
        "2 of its lines were refused; a batch created from this file fails validation \
         and lists them in errors",
        "{f}"
    );
    let got = api.get(&format!("/v1/files/{}", id(&f)), ALICE).await.ok();
    assert_eq!(got["status_details"], f["status_details"]);
    // A clean file has none.
    let clean = api.upload(ALICE, &valid_file("c", 2)).await;
    assert_eq!(clean["status_details"], Value::Null, "{clean}");
}

#[sqlx::test]
async fn upload_errors(pool: PgPool) {
    let api = Api::new(&pool).await;
    let content = valid_file("e", 1);
    // Wrong purpose first: refused before the bytes are read.
    let e = api
        .post_multipart(
            Some(ALICE),
            &[
                Part::text("purpose", "fine-tune"),
                Part::file("file", "x.jsonl", content.as_bytes()),
            ],
        )
        .await
        .error(400, Some("invalid_value"));
    assert_eq!(e["param"], "purpose");
    // Wrong purpose after the file: refused, and the file is not kept.
    api.post_multipart(
        Some(ALICE),
        &[
            Part::file("file", "x.jsonl", content.as_bytes()),
            Part::text("purpose", "assistants"),
        ],
    )
    .await
    .error(400, Some("invalid_value"));
    // No purpose at all.
    api.post_multipart(
        Some(ALICE),
        &[Part::file("file", "x.jsonl", content.as_bytes())],
    )
    .await
    .error(400, None);
    // No file.
    let e = api
        .post_multipart(Some(ALICE), &[Part::text("purpose", "batch")])
        .await
        .error(400, None);
    assert_eq!(e["param"], "file");
    // Two files.
    api.post_multipart(
        Some(ALICE),
        &[
            Part::text("purpose", "batch"),
            Part::file("file", "x.jsonl", content.as_bytes()),
            Part::file("file", "y.jsonl", content.as_bytes()),
        ],
    )
    .await
    .error(400, None);
    // Bad expiry.
    let e = api
        .post_multipart(
            Some(ALICE),
            &[
                Part::text("purpose", "batch"),
                Part::text("expires_after[anchor]", "created_at"),
                Part::text("expires_after[seconds]", "5"),
                Part::file("file", "x.jsonl", content.as_bytes()),
            ],
        )
        .await
        .error(400, None);
    assert_eq!(e["param"], "expires_after[seconds]");
    // Not multipart at all.
    api.post("/v1/files", ALICE, json!({"purpose": "batch"}))
        .await
        .error(400, None);
    // Truncated multipart.
    let (ct, body) = multipart(&[
        Part::text("purpose", "batch"),
        Part::file("file", "x.jsonl", content.as_bytes()),
    ]);
    let cut = body[..body.len() - 20].to_vec();
    let req = Request::builder()
        .method(Method::POST)
        .uri("/v1/files")
        .header(header::AUTHORIZATION, format!("Bearer {ALICE}"))
        .header(header::CONTENT_TYPE, ct)
        .body(Body::from(cut))
        .unwrap();
    api.send(req).await.error(400, None);
    // Nothing was kept by any refused upload.
    let list = api.get("/v1/files", ALICE).await.ok();
    assert_eq!(list["data"], json!([]), "{list}");
}

#[sqlx::test]
async fn uploads_over_the_limit_answer_413(pool: PgPool) {
    let limits = IngestLimits {
        max_file_bytes: 1000,
        ..IngestLimits::default()
    };
    let api = Api::with(
        &pool,
        config_with_auth("[api]\nmax_upload_bytes = 1000"),
        limits,
    )
    .await;
    // Streamed past the limit.
    let big = valid_file("big", 40);
    assert!(big.len() > 1000);
    let e = api
        .post_multipart(
            Some(ALICE),
            &[
                Part::text("purpose", "batch"),
                Part::file("file", "big.jsonl", big.as_bytes()),
            ],
        )
        .await
        .error(413, Some("file_too_large"));
    assert!(e["message"].as_str().unwrap().contains("1000"));
    // Declared too large: refused before reading.
    let req = Request::builder()
        .method(Method::POST)
        .uri("/v1/files")
        .header(header::AUTHORIZATION, format!("Bearer {ALICE}"))
        .header(header::CONTENT_TYPE, "multipart/form-data; boundary=x")
        .header(header::CONTENT_LENGTH, (10u64 << 20).to_string())
        .body(Body::empty())
        .unwrap();
    api.send(req).await.error(413, Some("file_too_large"));
    // Under the limit is fine.
    api.upload(ALICE, &valid_file("s", 2)).await;
}

#[sqlx::test]
async fn list_pagination_order_and_purpose(pool: PgPool) {
    let api = Api::new(&pool).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(id(&api
            .upload(ALICE, &valid_file(&format!("p{i}-"), 1))
            .await));
    }
    // Newest first, two at a time, following last_id.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(a) => format!("/v1/files?limit=2&after={a}"),
            None => "/v1/files?limit=2".into(),
        };
        let page = api.get(&path, ALICE).await.ok();
        let data = page["data"].as_array().unwrap();
        seen.extend(data.iter().map(id));
        if page["has_more"] == false {
            break;
        }
        assert_eq!(data.len(), 2);
        after = Some(page["last_id"].as_str().unwrap().to_owned());
    }
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first);
    let asc = api.get("/v1/files?order=asc&limit=3", ALICE).await.ok();
    let asc: Vec<String> = asc["data"].as_array().unwrap().iter().map(id).collect();
    assert_eq!(asc, ids[..3]);
    // Purpose filter: the batch's output files are `batch_output`.
    let b = api.create_batch(ALICE, &ids[0]).await;
    let out = api.get("/v1/files?purpose=batch_output", ALICE).await.ok();
    let out: Vec<String> = out["data"].as_array().unwrap().iter().map(id).collect();
    assert_eq!(out.len(), 2);
    assert!(out.contains(&b["output_file_id"].as_str().unwrap().to_owned()));
    assert!(out.contains(&b["error_file_id"].as_str().unwrap().to_owned()));
    let inputs = api.get("/v1/files?purpose=batch", ALICE).await.ok();
    assert_eq!(inputs["data"].as_array().unwrap().len(), 5);
    // Bad parameters.
    for q in [
        "limit=0",
        "limit=10001",
        "limit=x",
        "order=sideways",
        "purpose=fine-tune",
        "after=nope",
    ] {
        api.get(&format!("/v1/files?{q}"), ALICE)
            .await
            .error(400, None);
    }
}

#[sqlx::test]
async fn output_and_error_files_have_openai_shapes(pool: PgPool) {
    let api = Api::new(&pool).await;
    let b = api.batch_of(ALICE, "o", 2).await;
    let out = api
        .get(
            &format!("/v1/files/{}", b["output_file_id"].as_str().unwrap()),
            ALICE,
        )
        .await
        .ok();
    assert_file_shape(&out);
    assert_eq!(out["purpose"], "batch_output");
    assert_eq!(out["bytes"], 0);
    let err = api
        .get(
            &format!("/v1/files/{}", b["error_file_id"].as_str().unwrap()),
            ALICE,
        )
        .await
        .ok();
    assert_eq!(err["purpose"], "batch_output");
    // Nothing has run yet: both are empty.
    let content = api
        .get(&format!("/v1/files/{}/content", id(&out)), ALICE)
        .await;
    assert_eq!(content.status, 200);
    assert_eq!(content.text(), "");
}

#[sqlx::test]
async fn another_owners_files_are_not_found(pool: PgPool) {
    let api = Api::new(&pool).await;
    let f = api.upload(ALICE, &valid_file("iso", 1)).await;
    let fid = id(&f);
    let b = api.create_batch(ALICE, &fid).await;
    let out = b["output_file_id"].as_str().unwrap();
    for path in [
        format!("/v1/files/{fid}"),
        format!("/v1/files/{fid}/content"),
        format!("/v1/files/{out}"),
        format!("/v1/files/{out}/content"),
    ] {
        api.get(&path, BOB).await.error(404, Some("not_found"));
    }
    api.delete(&format!("/v1/files/{fid}"), BOB)
        .await
        .error(404, Some("not_found"));
    // Bob's lists do not show them, even with Alice's id as cursor.
    let list = api.get("/v1/files", BOB).await.ok();
    assert_eq!(list["data"], json!([]));
    let list = api.get(&format!("/v1/files?after={fid}"), BOB).await.ok();
    assert_eq!(list["data"], json!([]));
    // Bob cannot run Alice's file either.
    let e = api
        .post(
            "/v1/batches",
            BOB,
            json!({"input_file_id": fid, "endpoint": CHAT, "completion_window": "24h"}),
        )
        .await
        .error(404, Some("not_found"));
    assert_eq!(e["param"], "input_file_id");
    // Bob's upload is his alone.
    let mine = api.upload(BOB, &valid_file("bob", 1)).await;
    api.get(&format!("/v1/files/{}", id(&mine)), ALICE)
        .await
        .error(404, None);
    // And Alice still has hers.
    api.get(&format!("/v1/files/{fid}"), ALICE).await.ok();
}

#[sqlx::test]
async fn unparsable_ids_are_not_found(pool: PgPool) {
    let api = Api::new(&pool).await;
    for path in [
        "/v1/files/file-nope",
        "/v1/files/batch_0123",
        "/v1/files/x/content",
    ] {
        api.get(path, ALICE).await.error(404, Some("not_found"));
    }
    api.delete("/v1/files/zzz", ALICE)
        .await
        .error(404, Some("not_found"));
}
