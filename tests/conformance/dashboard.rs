//! What the dashboard reads beyond the OpenAI objects: a batch's requests in
//! one state, one request with its input and answer, a batch's statistics,
//! and the load of each model.

use super::*;
use crate::common::{CHAT, chat_body, jsonl, line_with, model_of, new_batch, valid_file};

use serde_json::json;

/// A batch of `n` lines `r0..` (a model each), claimed in line order.
async fn claimed<S: Backend>(store: &S, n: usize) -> (BatchId, Vec<ClaimedRequest>) {
    let file = upload(store, "alice", &valid_file("r", n)).await;
    let batch = store
        .create_batch(new_batch("alice", file.id, CHAT))
        .await
        .unwrap();
    (batch.id, claim_all(store, batch.id).await)
}

pub async fn requests_in_one_state_page_in_line_order<S: Backend>(store: &S) {
    let (batch, reqs) = claimed(store, 6).await;
    let ok = |i: usize| result(&reqs[i], Some(200), Some("{}"), None);
    let no = json!({"code": "upstream_error", "message": "no"});
    let results = [ok(1), ok(3), result(&reqs[4], Some(400), None, Some(no))];
    assert_eq!(store.finish(&results).await.unwrap().len(), 3);
    release(store, &[reqs[0].clone(), reqs[2].clone()]).await;

    let ids = |page: &fusillade::store::Page<fusillade::domain::request::RequestRecord>| {
        page.items.iter().map(|r| r.id).collect::<Vec<_>>()
    };
    let in_state = async |state, after, limit| {
        store
            .list_requests_in_state(batch, state, after, limit)
            .await
            .unwrap()
    };
    let pending = in_state(RequestState::Pending, None, 10).await;
    assert_eq!(ids(&pending), [reqs[0].id, reqs[2].id]);
    assert!(!pending.has_more);
    assert_eq!(
        ids(&in_state(RequestState::Claimed, None, 10).await),
        [reqs[5].id]
    );
    assert_eq!(
        ids(&in_state(RequestState::Failed, None, 10).await),
        [reqs[4].id]
    );
    // Page by page.
    let first = in_state(RequestState::Completed, None, 1).await;
    assert_eq!((ids(&first), first.has_more), (vec![reqs[1].id], true));
    let second = in_state(RequestState::Completed, Some(reqs[1].id), 1).await;
    assert_eq!((ids(&second), second.has_more), (vec![reqs[3].id], false));
    assert!(
        in_state(RequestState::Canceled, None, 10)
            .await
            .items
            .is_empty()
    );
}

pub async fn a_request_detail_shows_its_input_and_answer<S: Backend>(store: &S) {
    let (batch, reqs) = claimed(store, 2).await;
    let answer = r#"{"answer":"hi"}"#;
    finish_one(store, result(&reqs[0], Some(200), Some(answer), None)).await;

    let done = store
        .request_detail(batch, reqs[0].id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.record.id, reqs[0].id);
    assert_eq!(done.record.state, RequestState::Completed);
    let input = chat_body("r0", &model_of("r0"));
    assert_eq!(done.input_body.as_deref(), Some(input.as_str()));
    assert_eq!(done.input_bytes, input.len() as i64);
    assert_eq!(done.response_body.as_deref(), Some(answer));
    assert_eq!(done.response_bytes, answer.len() as i64);
    let upstream = format!("upstream-{}", reqs[0].id.0.simple());
    assert_eq!(done.upstream_request_id, Some(upstream));

    let waiting = store
        .request_detail(batch, reqs[1].id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(waiting.record.state, RequestState::Claimed);
    assert_eq!(waiting.response_body, None);
    assert_eq!(waiting.upstream_request_id, None);
    // Only through its own batch.
    let other = batch_of(store, 1).await;
    assert_eq!(
        store.request_detail(other.id, reqs[0].id).await.unwrap(),
        None
    );
}

pub async fn a_batch_sample_counts_calls_in_flight_and_groups_failures<S: Backend>(store: &S) {
    let (batch, reqs) = claimed(store, 5).await;
    let bad = json!({"code": "upstream_error", "message": "HTTP 500"});
    let slow = json!({"code": "request_timeout", "message": "slow"});
    let results = [
        result(&reqs[0], Some(200), Some("{}"), None),
        result(&reqs[1], Some(500), Some("{}"), Some(bad.clone())),
        result(&reqs[2], Some(500), Some("{}"), Some(bad)),
        result(&reqs[3], None, None, Some(slow)),
    ];
    assert_eq!(store.finish(&results).await.unwrap().len(), 4);

    let sample = store.batch_sample(batch, 5).await.unwrap();
    assert_eq!((sample.claimed, sample.processing, sample.step), (1, 0, 1));
    assert_eq!(sample.results.len(), 4);
    assert_eq!(sample.results.iter().filter(|r| r.ok).count(), 1);
    assert!(sample.results.iter().all(|r| r.started_at.is_some()));
    let mut groups: Vec<(String, Option<i32>, i64)> = sample
        .errors
        .iter()
        .map(|g| (g.code.clone(), g.status_code, g.count))
        .collect();
    groups.sort();
    assert_eq!(
        groups,
        [
            ("request_timeout".to_string(), None, 1),
            ("upstream_error".to_string(), Some(500), 2)
        ]
    );
    assert_eq!(sample.errors_examined, 3);
}

pub async fn model_loads_show_waiting_and_running_work<S: Backend>(store: &S) {
    assert!(store.model_loads().await.unwrap().is_empty());
    let mut lines: Vec<String> = (0..3)
        .map(|i| line_with(&format!("a{i}"), CHAT, &chat_body("x", "a")))
        .collect();
    lines.extend((0..2).map(|i| line_with(&format!("b{i}"), CHAT, &chat_body("x", "b"))));
    let file = upload(store, "", &jsonl(&lines)).await;
    let batch = store
        .create_batch(new_batch("", file.id, CHAT))
        .await
        .unwrap();
    let load = |m: &str, in_flight, slots_held, pending| fusillade::store::ModelLoad {
        model: m.into(),
        in_flight,
        slots_held,
        pending,
    };
    assert_eq!(
        store.model_loads().await.unwrap(),
        [load("a", 0, 0, 3), load("b", 0, 0, 2)]
    );
    // One daemon claims everything, holding a slot per request.
    let d = daemon(store).await;
    let got = store
        .claim(&ClaimRequest {
            daemon: d,
            models: Vec::new(),
            default_limit: 10,
            default_share: 3,
            max_total: 10,
            scope: Some(batch.id),
            grouped: false,
            schedule: Default::default(),
        })
        .await
        .unwrap();
    assert_eq!(got.requests.len(), 5);
    assert_eq!(
        store.model_loads().await.unwrap(),
        [load("a", 3, 3, 0), load("b", 2, 3, 0)]
    );
}
