//! Helpers shared by the store tests: a store over a read-only replica, uploads
//! fed in small chunks, input-line builders and direct SQL readers.
//!
//! Each test binary uses only part of this module.
#![allow(dead_code)]

pub mod cluster;
pub mod daemon;
pub mod http;
pub mod process;
pub mod queue;
pub mod sqlite;

use bytes::Bytes;
use fusillade::domain::file::File;
use fusillade::domain::ids::FileId;
use fusillade::domain::output::ResultError;
use fusillade::domain::request::{RequestId, RequestState};
use fusillade::store::{ByteStream, Finished, NewBatch, NewFile, QueueStore, Result};
use fusillade::{BatchId, FileStore, IngestLimits, PostgresStore, TestDbPools};
use futures_util::{Stream, TryStreamExt, stream};
use sqlx::PgPool;
use uuid::Uuid;

/// The chat completions endpoint, the one most lines use.
pub const CHAT: &str = "/v1/chat/completions";
/// The embeddings endpoint, for lines that target another endpoint.
pub const EMBEDDINGS: &str = "/v1/embeddings";

/// A store whose replica pool is read-only, so a write sent to it fails.
pub async fn store(pool: &PgPool) -> PostgresStore {
    PostgresStore::new(TestDbPools::new(pool.clone()).await.unwrap())
}

/// Like [`store`], with these upload limits.
pub async fn store_with(pool: &PgPool, limits: IngestLimits) -> PostgresStore {
    store(pool).await.with_limits(limits)
}

/// `data` as a stream of `chunk`-byte pieces, as an HTTP body would arrive.
pub fn chunked(
    data: &[u8],
    chunk: usize,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send + Unpin + use<> {
    let pieces: Vec<std::io::Result<Bytes>> = data
        .chunks(chunk.max(1))
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    stream::iter(pieces)
}

/// Uploads `data` in `chunk`-byte pieces; the store's answer as is.
pub async fn try_upload<S: FileStore>(
    store: &S,
    owner: &str,
    data: &[u8],
    chunk: usize,
) -> Result<File> {
    let new = NewFile {
        owner: owner.into(),
        filename: "input.jsonl".into(),
        expires_at: None,
    };
    store.create_file(new, chunked(data, chunk)).await
}

/// Uploads raw bytes in 7-byte chunks, so lines, BOMs and CRLFs are cut at
/// every possible place.
pub async fn upload_bytes<S: FileStore>(store: &S, owner: &str, data: &[u8]) -> File {
    try_upload(store, owner, data, 7).await.unwrap()
}

/// Uploads `text` in 7-byte chunks.
pub async fn upload<S: FileStore>(store: &S, owner: &str, text: &str) -> File {
    upload_bytes(store, owner, text.as_bytes()).await
}

/// A chat completions body for `model`, with some content naming `tag`.
pub fn chat_body(tag: &str, model: &str) -> String {
    format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hello {tag}"}}]}}"#)
}

/// An input line with this custom_id, url and raw body (no newline).
pub fn line_with(custom_id: &str, url: &str, body: &str) -> String {
    format!(r#"{{"custom_id":"{custom_id}","method":"POST","url":"{url}","body":{body}}}"#)
}

/// A valid chat completions line for model `m-<custom_id>` (no newline).
pub fn line(custom_id: &str) -> String {
    line_with(custom_id, CHAT, &chat_body(custom_id, &model_of(custom_id)))
}

/// The model [`line`] uses for this custom_id.
pub fn model_of(custom_id: &str) -> String {
    format!("m-{custom_id}")
}

/// `lines` joined, each ending with a newline.
pub fn jsonl<S: AsRef<str>>(lines: &[S]) -> String {
    lines.iter().map(|l| format!("{}\n", l.as_ref())).collect()
}

/// A file of valid lines `<prefix>0`, `<prefix>1`, ...
pub fn valid_file(prefix: &str, n: usize) -> String {
    let lines: Vec<String> = (0..n).map(|i| line(&format!("{prefix}{i}"))).collect();
    jsonl(&lines)
}

/// Everything a byte stream yields, concatenated.
pub async fn collect(stream: ByteStream) -> Vec<u8> {
    stream
        .try_fold(Vec::new(), |mut all, chunk| async move {
            all.extend_from_slice(&chunk);
            Ok(all)
        })
        .await
        .unwrap()
}

/// A batch of `file` against `endpoint` with a 24h window.
pub fn new_batch<'a>(owner: &'a str, file: FileId, endpoint: &'a str) -> NewBatch<'a> {
    NewBatch {
        owner,
        input_file_id: file,
        endpoint,
        completion_window: "24h",
        metadata: None,
        idempotency_key: None,
        private: false,
    }
}

/// A `request_templates` row, read directly.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct TemplateRow {
    pub id: Uuid,
    pub line_number: i64,
    pub custom_id: String,
    pub method: String,
    pub path: String,
    pub body: String,
    pub model: String,
    pub body_byte_size: i64,
}

/// The file's templates in line order.
pub async fn templates(pool: &PgPool, file: FileId) -> Vec<TemplateRow> {
    sqlx::query_as(
        "SELECT id, line_number, custom_id, method, path, body, model, body_byte_size \
         FROM request_templates WHERE file_id = $1 ORDER BY line_number",
    )
    .bind(file)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// The line numbers of the file's templates, in order.
pub async fn template_lines(pool: &PgPool, file: FileId) -> Vec<i64> {
    templates(pool, file)
        .await
        .iter()
        .map(|t| t.line_number)
        .collect()
}

/// A `requests` row, read directly.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct RequestRow {
    pub id: Uuid,
    pub template_id: Uuid,
    pub model: String,
    pub custom_id: Option<String>,
    pub state: String,
    /// Live requests only: an ended one keeps no deadline.
    pub deadline: Option<chrono::DateTime<chrono::Utc>>,
}

/// The batch's requests in id order, live (in `requests`) and ended (in
/// `request_results`) alike.
pub async fn requests(pool: &PgPool, batch: BatchId) -> Vec<RequestRow> {
    sqlx::query_as(
        "SELECT id, template_id, model, custom_id, state, deadline \
         FROM requests WHERE batch_id = $1 \
         UNION ALL \
         SELECT request_id, template_id, model, custom_id, state, NULL \
         FROM request_results WHERE batch_id = $1 \
         ORDER BY id",
    )
    .bind(batch)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// How many rows `table` has (for checking that nothing was stored).
pub async fn count(pool: &PgPool, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Puts a request in flight by hand, as a daemon's claim would.
pub async fn set_in_flight(pool: &PgPool, request: Uuid, state: &str) {
    let started = if state == "processing" {
        "now()"
    } else {
        "NULL"
    };
    sqlx::query(&format!(
        "UPDATE requests SET state = $2, daemon_id = $3, attempt = 1, claimed_at = now(), \
         started_at = {started} WHERE id = $1"
    ))
    .bind(request)
    .bind(state)
    .bind(Uuid::now_v7())
    .execute(pool)
    .await
    .unwrap();
}

/// Ends a request with its result through the store's own finish (the
/// daemon's write): `completed` when `error` is `None`, else `failed`. A
/// pending request is put in flight first, as a claim would.
pub async fn finish(
    pool: &PgPool,
    request: Uuid,
    status_code: Option<i32>,
    body: Option<&str>,
    error: Option<serde_json::Value>,
) {
    let state = if error.is_none() {
        RequestState::Completed
    } else {
        RequestState::Failed
    };
    let error = error.map(|e| serde_json::from_value(e).expect("an error object"));
    end(pool, request, state, status_code, body, error).await;
}

/// Cancels a request through the store's own finish, as a daemon records
/// a call stopped by a batch cancel.
pub async fn cancel(pool: &PgPool, request: Uuid) {
    let error = ResultError::new("batch_cancelled", "by hand");
    end(
        pool,
        request,
        RequestState::Canceled,
        None,
        None,
        Some(error),
    )
    .await;
}

/// Hands one result to [`QueueStore::finish`] under the request's current
/// lease, and checks that the store took it.
async fn end(
    pool: &PgPool,
    request: Uuid,
    state: RequestState,
    status_code: Option<i32>,
    body: Option<&str>,
    error: Option<ResultError>,
) {
    let (live_state, attempt): (String, i32) =
        sqlx::query_as("SELECT state, attempt FROM requests WHERE id = $1")
            .bind(request)
            .fetch_one(pool)
            .await
            .expect("a live request");
    let attempt = if live_state == "pending" {
        set_in_flight(pool, request, "processing").await;
        1
    } else {
        attempt
    };
    let result = Finished {
        id: RequestId(request),
        attempt,
        state,
        status_code,
        upstream_request_id: status_code.map(|_| format!("upstream-{}", request.simple())),
        body: body.map(|b| b.as_bytes().to_vec()),
        error,
        usage: None,
        coalesced: None,
    };
    let taken = PostgresStore::new(pool.clone())
        .finish(&[result])
        .await
        .expect("finish");
    assert_eq!(
        taken,
        vec![RequestId(request)],
        "the store refused the result"
    );
}

/// A daemon registered in `store`, as a running one would be.
pub async fn daemon<S: fusillade::store::DaemonStore>(
    store: &S,
) -> fusillade::domain::ids::DaemonId {
    use fusillade::store::NewDaemon;
    store
        .register_daemon(NewDaemon {
            hostname: "test".into(),
            pid: 1,
            version: "0".into(),
            config: serde_json::json!({}),
        })
        .await
        .unwrap()
        .id
}

/// Makes PostgreSQL fail every `request_results` insert for which the SQL
/// `condition` (over `NEW`) holds, with SQLSTATE `code`: `23514` (a check
/// broken) is a refusal of the data, others a fault of the server.
pub async fn fail_results_where(pool: &sqlx::PgPool, condition: &str, code: &str) {
    fail_inserts_where(pool, "request_results", condition, code).await;
}

/// Makes PostgreSQL fail every insert into `table` for which the SQL
/// `condition` (over `NEW`) holds, with SQLSTATE `code` and a message
/// naming it "planted refusal" (classes 22 and 23, the data's fault) or
/// "planted failure" (any other). One such trigger per database.
pub async fn fail_inserts_where(pool: &sqlx::PgPool, table: &str, condition: &str, code: &str) {
    let what = if code.starts_with("22") || code.starts_with("23") {
        "planted refusal"
    } else {
        "planted failure"
    };
    sqlx::query(&format!(
        "CREATE FUNCTION test_fail() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF {condition} THEN
                 RAISE EXCEPTION '{what}' USING ERRCODE = '{code}';
             END IF;
             RETURN NEW;
         END $$"
    ))
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(&format!(
        "CREATE TRIGGER test_fail BEFORE INSERT ON {table} \
         FOR EACH ROW EXECUTE FUNCTION test_fail()"
    ))
    .execute(pool)
    .await
    .unwrap();
}
