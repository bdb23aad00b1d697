//! Batches made from files, or refused with line-numbered errors.

use super::*;
use crate::common::{CHAT, EMBEDDINGS, jsonl, line, line_with, model_of, new_batch, valid_file};
use chrono::Duration;

use fusillade::domain::batch::BatchError;
use fusillade::domain::file::{FileKind, FilePurpose};
use fusillade::store::{BatchListQuery, NewBatch, Owner};
use fusillade::{BatchCounts, BatchStatus, FileId, RequestCounts, StoreError};
use std::collections::{BTreeMap, HashSet};

/// A batch's errors as (code, line) pairs.
fn codes(errors: &Option<Vec<BatchError>>) -> Vec<(String, Option<i64>)> {
    errors
        .as_ref()
        .expect("the batch has errors")
        .iter()
        .map(|e| (e.code.clone(), e.line))
        .collect()
}

/// Every batch of every owner, newest first.
async fn all_batches<S: Backend>(store: &S) -> Vec<Batch> {
    let q = BatchListQuery {
        owner: Owner::Any,
        status: None,
        after: None,
        limit: 1000,
    };
    store.list_batches(q).await.unwrap().items
}

/// How many requests all batches hold, counted from their rows.
async fn all_requests<S: Backend>(store: &S) -> i64 {
    let mut n = 0;
    for b in all_batches(store).await {
        n += store.request_counts(b.id).await.unwrap().total;
    }
    n
}

/// The counters of a new batch of `n` requests, none ended.
fn unstarted(n: i64) -> BatchCounts {
    BatchCounts {
        total: n,
        ..Default::default()
    }
}

pub async fn a_valid_file_gives_a_running_batch_with_one_request_per_line<S: Backend>(store: &S) {
    let file = upload(store, "alice", &valid_file("r", 3)).await;
    let metadata = BTreeMap::from([("team".to_string(), "search".to_string())]);
    let batch = store
        .create_batch(NewBatch {
            metadata: Some(metadata.clone()),
            ..new_batch("alice", file.id, CHAT)
        })
        .await
        .unwrap();

    assert_eq!(batch.owner, "alice");
    assert_eq!(batch.input_file_id, file.id);
    assert_eq!(batch.endpoint, CHAT);
    assert_eq!(batch.completion_window, "24h");
    assert_eq!(batch.metadata, Some(metadata));
    assert_eq!(batch.status, BatchStatus::InProgress);
    assert_eq!(batch.errors, None);
    assert_eq!(batch.request_counts, unstarted(3));
    assert_eq!(batch.request_counts.unfinished(), 3);
    assert_eq!(batch.in_progress_at, Some(batch.created_at));
    assert_eq!(
        batch.expires_at,
        Some(batch.created_at + Duration::hours(24))
    );
    for t in [
        batch.finalizing_at,
        batch.completed_at,
        batch.failed_at,
        batch.expired_at,
        batch.cancelling_at,
        batch.cancelled_at,
    ] {
        assert_eq!(t, None);
    }

    // The output and error files exist, virtual, with OpenAI's purpose.
    let output = batch.output_file_id.unwrap();
    let error = batch.error_file_id.unwrap();
    assert_ne!(output, error);
    for (id, kind) in [(output, FileKind::Output), (error, FileKind::Error)] {
        let f = store
            .get_file(Owner::Only("alice"), id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(f.purpose, FilePurpose::BatchOutput);
        assert_eq!(f.kind, kind);
        assert_eq!(f.batch_id, Some(batch.id));
        assert_eq!(f.owner, "alice");
        let suffix = if kind == FileKind::Output {
            "output"
        } else {
            "error"
        };
        let name = format!("batch_{}_{suffix}.jsonl", batch.id.0.simple());
        assert_eq!(f.filename, name);
    }

    // One pending request per line, in line order, due at the batch's deadline.
    assert_eq!(
        store
            .get_batch(Owner::Any, batch.id)
            .await
            .unwrap()
            .as_ref(),
        Some(&batch)
    );
    let reqs = requests_of(store, batch.id).await;
    assert_eq!(reqs.len(), 3);
    for (i, r) in reqs.iter().enumerate() {
        let id = format!("r{i}");
        assert_eq!(r.id, RequestId::of_line(batch.id, i as u64 + 1));
        assert_eq!(r.batch_id, Some(batch.id));
        assert_eq!(r.custom_id.as_deref(), Some(id.as_str()));
        assert_eq!(r.model, model_of(&id));
        assert_eq!(r.state, RequestState::Pending);
        assert_eq!((r.attempt, r.daemon_id), (0, None));
    }
    let d = daemon(store).await;
    let claimed = claim(store, d, 10).await;
    assert_eq!(claimed.len(), 3);
    for c in claimed {
        let r = reqs.iter().find(|r| r.id == c.id).unwrap();
        assert_eq!(c.template_id, r.template_id);
        assert_eq!(c.deadline, batch.expires_at);
    }
}

pub async fn the_window_sets_the_deadline<S: Backend>(store: &S) {
    let d = daemon(store).await;
    for (window, length) in [
        ("90m", Duration::minutes(90)),
        ("1h", Duration::hours(1)),
        ("0s", Duration::minutes(1)),
        ("priority", Duration::minutes(1)),
        ("flex", Duration::hours(1)),
    ] {
        // A model of its own each time, so the claim has a free slot.
        let file = upload(store, "alice", &valid_file(window, 1)).await;
        let batch = store
            .create_batch(NewBatch {
                completion_window: window,
                ..new_batch("alice", file.id, CHAT)
            })
            .await
            .unwrap();
        assert_eq!(batch.completion_window, window);
        assert_eq!(batch.expires_at, Some(batch.created_at + length));
        let claimed = store
            .claim(&claim_request(d, 1, Some(batch.id)))
            .await
            .unwrap()
            .requests;
        assert_eq!(claimed[0].deadline, batch.expires_at);
    }
}

pub async fn a_file_with_refused_lines_gives_a_failed_batch<S: Backend>(store: &S) {
    let text = jsonl(&[
        line("a"),
        "not json".into(),
        line("b"),
        line("a"),
        line_with("c", CHAT, r#"{"messages":[]}"#),
    ]);
    let file = upload(store, "alice", &text).await;
    let batch = store
        .create_batch(new_batch("alice", file.id, CHAT))
        .await
        .unwrap();
    assert_eq!(batch.status, BatchStatus::Failed);
    assert!(batch.failed_at.is_some());
    assert_eq!(batch.in_progress_at, None);
    assert_eq!(
        codes(&batch.errors),
        vec![
            ("invalid_json_line".into(), Some(2)),
            ("duplicate_custom_id".into(), Some(4)),
            ("missing_model".into(), Some(5)),
        ]
    );
    assert!(batch.errors.unwrap().iter().all(|e| !e.message.is_empty()));
    assert_eq!(batch.request_counts, BatchCounts::default());
    assert_eq!((batch.output_file_id, batch.error_file_id), (None, None));
    assert_eq!(all_requests(store).await, 0);
    assert_eq!(
        store.request_counts(batch.id).await.unwrap(),
        RequestCounts::default()
    );
}

pub async fn only_the_first_errors_are_listed_with_a_note<S: Backend>(store: &S) {
    let limits = IngestLimits {
        max_kept_errors: 2,
        ..Default::default()
    };
    let store = &store.with_limits(limits);
    let lines: Vec<String> = (0..5).map(|i| format!("bad {i}")).collect();
    let file = upload(store, "alice", &jsonl(&lines)).await;
    let batch = store
        .create_batch(new_batch("alice", file.id, CHAT))
        .await
        .unwrap();
    assert_eq!(batch.status, BatchStatus::Failed);
    assert_eq!(
        codes(&batch.errors),
        vec![
            ("invalid_json_line".into(), Some(1)),
            ("invalid_json_line".into(), Some(2)),
            ("too_many_errors".into(), None),
        ]
    );
    assert!(batch.errors.unwrap()[2].message.contains('5'));
}

pub async fn endpoint_mismatches_beyond_the_cap_are_noted_too<S: Backend>(store: &S) {
    let limits = IngestLimits {
        max_kept_errors: 2,
        ..Default::default()
    };
    let store = &store.with_limits(limits);
    let emb = |i: usize| line_with(&format!("e{i}"), EMBEDDINGS, r#"{"model":"e","input":"x"}"#);
    let lines: Vec<String> = (0..4).map(emb).collect();
    let file = upload(store, "alice", &jsonl(&lines)).await;
    assert_eq!(file.error_count, 0);
    let batch = store
        .create_batch(new_batch("alice", file.id, CHAT))
        .await
        .unwrap();
    assert_eq!(
        codes(&batch.errors),
        vec![
            ("invalid_url".into(), Some(1)),
            ("invalid_url".into(), Some(2)),
            ("too_many_errors".into(), None),
        ]
    );
    assert!(batch.errors.unwrap()[2].message.starts_with("4 lines"));
}

pub async fn lines_for_another_endpoint_fail_the_batch<S: Backend>(store: &S) {
    let emb = |id: &str| line_with(id, EMBEDDINGS, r#"{"model":"e","input":"x"}"#);
    let text = jsonl(&[line("a"), emb("b"), line("c"), emb("d"), "oops".into()]);
    let file = upload(store, "alice", &text).await;
    assert_eq!((file.template_count, file.error_count), (4, 1));

    let batch = store
        .create_batch(new_batch("alice", file.id, CHAT))
        .await
        .unwrap();
    assert_eq!(batch.status, BatchStatus::Failed);
    assert_eq!(
        codes(&batch.errors),
        vec![
            ("invalid_url".into(), Some(2)),
            ("invalid_url".into(), Some(4)),
            ("invalid_json_line".into(), Some(5)),
        ]
    );
    let errors = batch.errors.unwrap();
    assert!(
        errors[0].message.contains(EMBEDDINGS),
        "{}",
        errors[0].message
    );
    assert_eq!(errors[0].param.as_deref(), Some("url"));

    let batch = store
        .create_batch(new_batch("alice", file.id, EMBEDDINGS))
        .await
        .unwrap();
    let lines: Vec<Option<i64>> = batch.errors.unwrap().iter().map(|e| e.line).collect();
    assert_eq!(lines, vec![Some(1), Some(3), Some(5)]);
    assert_eq!(all_requests(store).await, 0);

    // A file whose every line targets the batch's endpoint runs.
    let file = upload(store, "alice", &jsonl(&[emb("x"), emb("y")])).await;
    let batch = store
        .create_batch(new_batch("alice", file.id, EMBEDDINGS))
        .await
        .unwrap();
    assert_eq!(batch.status, BatchStatus::InProgress);
    assert_eq!(batch.request_counts, unstarted(2));
}

pub async fn an_empty_file_gives_a_failed_batch<S: Backend>(store: &S) {
    let file = upload(store, "alice", "\n\n").await;
    let batch = store
        .create_batch(new_batch("alice", file.id, CHAT))
        .await
        .unwrap();
    assert_eq!(batch.status, BatchStatus::Failed);
    assert_eq!(codes(&batch.errors), vec![("empty_file".into(), None)]);
    assert_eq!(batch.request_counts.total, 0);
}

pub async fn bad_parameters_are_refused_before_anything_is_stored<S: Backend>(store: &S) {
    let file = upload(store, "alice", &valid_file("r", 1)).await;
    let too_many: BTreeMap<String, String> =
        (0..17).map(|i| (format!("k{i}"), "v".into())).collect();
    let long_key = BTreeMap::from([("k".repeat(65), "v".into())]);
    let long_value = BTreeMap::from([("k".into(), "v".repeat(513))]);
    let cases = [
        NewBatch {
            completion_window: "24d",
            ..new_batch("alice", file.id, CHAT)
        },
        NewBatch {
            completion_window: "0h",
            ..new_batch("alice", file.id, CHAT)
        },
        NewBatch {
            completion_window: "",
            ..new_batch("alice", file.id, CHAT)
        },
        new_batch("alice", file.id, "/v1/images/generations"),
        new_batch("alice", file.id, "v1/chat/completions"),
        NewBatch {
            metadata: Some(too_many),
            ..new_batch("alice", file.id, CHAT)
        },
        NewBatch {
            metadata: Some(long_key),
            ..new_batch("alice", file.id, CHAT)
        },
        NewBatch {
            metadata: Some(long_value),
            ..new_batch("alice", file.id, CHAT)
        },
    ];
    for new in cases {
        let shown = format!("{new:?}");
        let err = store.create_batch(new).await.unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)), "{shown}: {err:?}");
    }
    // Invalid on an unknown file too: parameters are checked first.
    let err = store
        .create_batch(NewBatch {
            completion_window: "1d",
            ..new_batch("alice", FileId::new(), CHAT)
        })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
    assert_eq!(all_batches(store).await.len(), 0);
}

pub async fn the_input_file_must_be_the_owners_live_input_file<S: Backend>(store: &S) {
    let file = upload(store, "alice", &valid_file("r", 1)).await;
    let gone = upload(store, "alice", &valid_file("r", 1)).await;
    assert!(store.delete_file(Owner::Any, gone.id).await.unwrap());
    for new in [
        new_batch("alice", FileId::new(), CHAT),
        new_batch("bob", file.id, CHAT),
        new_batch("alice", gone.id, CHAT),
    ] {
        let err = store.create_batch(new).await.unwrap_err();
        assert!(
            matches!(err, StoreError::NotFound { what: "file", .. }),
            "{err:?}"
        );
    }
    let batch = store
        .create_batch(new_batch("alice", file.id, CHAT))
        .await
        .unwrap();
    for output in [batch.output_file_id.unwrap(), batch.error_file_id.unwrap()] {
        let err = store
            .create_batch(new_batch("alice", output, CHAT))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
    }
    assert_eq!(all_batches(store).await.len(), 1);
}

pub async fn an_idempotency_key_returns_the_first_batch<S: Backend>(store: &S) {
    let file = upload(store, "alice", &valid_file("r", 2)).await;
    let keyed = |key| NewBatch {
        idempotency_key: Some(key),
        ..new_batch("alice", file.id, CHAT)
    };
    let first = store.create_batch(keyed("k1")).await.unwrap();
    let again = store.create_batch(keyed("k1")).await.unwrap();
    assert_eq!(again, first);
    let other = store.create_batch(keyed("k2")).await.unwrap();
    assert_ne!(other.id, first.id);
    assert_eq!(all_batches(store).await.len(), 2);
    assert_eq!(all_requests(store).await, 4);
}

pub async fn concurrent_creates_with_one_key_make_one_batch<S: Backend>(store: &S) {
    let file = upload(store, "alice", &valid_file("r", 20)).await;
    let keyed = || NewBatch {
        idempotency_key: Some("same"),
        ..new_batch("alice", file.id, CHAT)
    };
    let results = futures_util::future::join_all((0..6).map(|_| store.create_batch(keyed()))).await;
    let ids: HashSet<_> = results.into_iter().map(|r| r.unwrap().id).collect();
    assert_eq!(ids.len(), 1);
    assert_eq!(all_batches(store).await.len(), 1);
    assert_eq!(all_requests(store).await, 20);
}

pub async fn batches_of_one_file_have_their_own_requests<S: Backend>(store: &S) {
    let file = upload(store, "alice", &valid_file("r", 50)).await;
    let mut ids = HashSet::new();
    for _ in 0..3 {
        let batch = store
            .create_batch(new_batch("alice", file.id, CHAT))
            .await
            .unwrap();
        let reqs = requests_of(store, batch.id).await;
        assert_eq!(reqs.len(), 50);
        let custom: Vec<String> = reqs.iter().map(|r| r.custom_id.clone().unwrap()).collect();
        let want: Vec<String> = (0..50).map(|i| format!("r{i}")).collect();
        assert_eq!(custom, want, "request ids follow line order");
        ids.extend(reqs.iter().map(|r| r.id));
    }
    assert_eq!(ids.len(), 150);
}

/// Creates sent at once (which PostgreSQL writes in groups) each get their
/// own answer: every valid file its own batch of its own lines, a file with
/// refused lines a failed batch, a file that is not the caller's, or is
/// gone, "not found", and the creates sharing a key one batch.
pub async fn creates_sent_at_once_each_get_their_own_answer<S: Backend>(store: &S) {
    let mut sizes = Vec::new();
    let mut files = Vec::new();
    for n in 1..=24 {
        files.push(upload(store, "alice", &valid_file(&format!("f{n}-"), n)).await);
        sizes.push(n as i64);
    }
    let refused = upload(store, "alice", &jsonl(&[line("a"), "not json".into()])).await;
    let bobs = upload(store, "bob", &valid_file("b", 2)).await;
    let gone = upload(store, "alice", &valid_file("g", 2)).await;
    assert!(store.delete_file(Owner::Any, gone.id).await.unwrap());

    let mut news: Vec<NewBatch> = files
        .iter()
        .map(|f| new_batch("alice", f.id, CHAT))
        .collect();
    news.push(new_batch("alice", refused.id, CHAT));
    news.push(new_batch("alice", bobs.id, CHAT));
    news.push(new_batch("alice", gone.id, CHAT));
    for _ in 0..3 {
        news.push(NewBatch {
            idempotency_key: Some("once"),
            ..new_batch("alice", files[0].id, CHAT)
        });
    }
    news.push(new_batch("bob", bobs.id, CHAT));
    let results =
        futures_util::future::join_all(news.into_iter().map(|n| store.create_batch(n))).await;

    let mut made = HashSet::new();
    for (i, r) in results.iter().take(24).enumerate() {
        let b = r.as_ref().unwrap();
        assert_eq!(
            b.input_file_id, files[i].id,
            "create {i} got another's batch"
        );
        assert_eq!(b.status, BatchStatus::InProgress);
        assert_eq!(b.request_counts.total, sizes[i]);
        let custom: Vec<String> = requests_of(store, b.id)
            .await
            .iter()
            .map(|r| r.custom_id.clone().unwrap())
            .collect();
        let want: Vec<String> = (0..sizes[i]).map(|k| format!("f{}-{k}", i + 1)).collect();
        assert_eq!(custom, want);
        made.insert(b.id);
    }
    let failed = results[24].as_ref().unwrap();
    assert_eq!(failed.status, BatchStatus::Failed);
    assert_eq!(
        codes(&failed.errors),
        vec![("invalid_json_line".into(), Some(2))]
    );
    for r in &results[25..27] {
        let err = r.as_ref().unwrap_err();
        assert!(
            matches!(err, StoreError::NotFound { what: "file", .. }),
            "{err:?}"
        );
    }
    let keyed: HashSet<BatchId> = results[27..30]
        .iter()
        .map(|r| r.as_ref().unwrap().id)
        .collect();
    assert_eq!(keyed.len(), 1);
    let bobs_batch = results[30].as_ref().unwrap();
    assert_eq!(
        (bobs_batch.owner.as_str(), bobs_batch.request_counts.total),
        ("bob", 2)
    );
    made.extend(keyed);
    made.insert(failed.id);
    made.insert(bobs_batch.id);
    assert_eq!(made.len(), 24 + 3);
    assert_eq!(all_batches(store).await.len(), 24 + 3);
    assert_eq!(all_requests(store).await, (1..=24).sum::<i64>() + 1 + 2);
}
