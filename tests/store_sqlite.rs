//! What only the embedded backend promises: one process owns a database,
//! and claims a killed process left behind go back to pending when the
//! next one opens it. Everything else is in `store_conformance`.

mod common;

use common::sqlite::TempDb;
use common::{CHAT, chat_body, chunked, jsonl, line, line_with, new_batch};
use fusillade::domain::request::RequestState;
use fusillade::store::{
    BatchStore, ClaimRequest, DaemonStore, FileStore, NewDaemon, NewFile, OpenError, Owner,
    QueueStore, RequestStore, SqliteStore,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_open_of_the_same_database_is_refused_with_a_clear_error() {
    let db = TempDb::new();
    let first = db.store().await;
    let err = db.open().await.expect_err("a second owner must be refused");
    assert!(matches!(err, OpenError::InUse { .. }), "got {err:?}");
    let message = err.to_string();
    assert!(
        message.contains("in use by another fusillade process")
            && message.contains("scale-out needs PostgreSQL")
            && message.contains(&db.path().display().to_string()),
        "unclear message: {message}"
    );
    // Once the owner is gone, the database opens again.
    drop(first);
    db.store().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_left_by_a_killed_store_are_pending_again_on_reopen() {
    let db = TempDb::new();
    let store = db.store().await;
    let lines: Vec<String> = (0..5).map(|i| line(&format!("r{i}"))).collect();
    let file = store
        .create_file(
            NewFile {
                owner: "alice".into(),
                filename: "in.jsonl".into(),
                expires_at: None,
            },
            chunked(jsonl(&lines).as_bytes(), 7),
        )
        .await
        .unwrap();
    let batch = store
        .create_batch(new_batch("alice", file.id, CHAT))
        .await
        .unwrap();
    let daemon = store
        .register_daemon(NewDaemon {
            hostname: "killed".into(),
            pid: 1,
            version: "0".into(),
            config: serde_json::json!({}),
        })
        .await
        .unwrap()
        .id;
    let claimed = store
        .claim(&ClaimRequest {
            daemon,
            models: Vec::new(),
            default_limit: 3,
            default_share: 3,
            max_total: 3,
            scope: None,
            grouped: false,
            schedule: Default::default(),
        })
        .await
        .unwrap()
        .requests;
    assert_eq!(claimed.len(), 3);
    // The process dies: no stop, no rescue; only its lock goes with it.
    drop(store);

    let reopened: SqliteStore = db.store().await;
    let page = reopened.list_requests(batch.id, None, 100).await.unwrap();
    let states: Vec<RequestState> = page.items.iter().map(|r| r.state).collect();
    assert_eq!(
        states,
        vec![RequestState::Pending; 5],
        "every claim rescued"
    );
    let daemons = reopened.list_daemons().await.unwrap();
    assert_eq!(daemons.len(), 1);
    assert_ne!(
        daemons[0].status,
        fusillade::domain::daemon::DaemonStatus::Running,
        "the dead process's daemon is no longer running"
    );
    let b = reopened
        .get_batch(Owner::Any, batch.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b.request_counts.total, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_files_bodies_are_stored_once() {
    let db = TempDb::new();
    let store = db.store().await;
    let big = "z".repeat(2000);
    let lines: Vec<String> = (0..400)
        .map(|i| line_with(&format!("r{i}"), CHAT, &chat_body(&big, "m")))
        .collect();
    let text = jsonl(&lines);
    let file = store
        .create_file(
            NewFile {
                owner: "alice".into(),
                filename: "in.jsonl".into(),
                expires_at: None,
            },
            chunked(text.as_bytes(), 4099),
        )
        .await
        .unwrap();
    assert_eq!(file.template_count, 400);
    // The templates hold the bodies; the stored original bytes do not
    // hold them again (only what lies around them, and where they go).
    let mut conn = {
        use sqlx::ConnectOptions;
        sqlx::sqlite::SqliteConnectOptions::new()
            .filename(db.path())
            .read_only(true)
            .connect()
            .await
            .unwrap()
    };
    let (parts, bodies): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT sum(length(data)) FROM file_parts), \
                (SELECT sum(length(body)) FROM request_templates)",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert!(bodies >= 400 * 2000, "{bodies}");
    assert!(
        parts < text.len() as i64 / 10,
        "{parts} bytes of parts for a {}-byte file",
        text.len()
    );
    // And it downloads as uploaded.
    let got = common::collect(store.file_content(Owner::Any, file.id).await.unwrap()).await;
    assert!(got == text.as_bytes());
}
