//! Claims as the queue tests make them: a batch of one model's lines, the
//! demand of a daemon that is alone, and a request's successful result.

use super::{CHAT, chat_body, jsonl, line_with, new_batch, upload};
use fusillade::domain::batch::{BatchId, BatchStatus};
use fusillade::domain::ids::DaemonId;
use fusillade::domain::request::RequestState;
use fusillade::store::{
    BatchStore, ClaimRequest, ClaimedRequest, FileStore, Finished, ModelDemand, QueueStore,
};

/// Uploads `n` lines for `model` and makes a batch of them.
pub async fn batch_for<S: FileStore + BatchStore>(
    store: &S,
    model: &str,
    n: usize,
    window: &str,
) -> BatchId {
    let lines: Vec<String> = (0..n)
        .map(|i| line_with(&format!("{model}-{i}"), CHAT, &chat_body("x", model)))
        .collect();
    let file = upload(store, "", &jsonl(&lines)).await;
    let mut nb = new_batch("", file.id, CHAT);
    nb.completion_window = window;
    let b = store.create_batch(nb).await.unwrap();
    assert_eq!(b.status, BatchStatus::InProgress);
    b.id
}

/// A claim of `want` requests of each `(model, limit, want)` by a daemon
/// that holds none yet and is alone: its share is the whole limit, and the
/// requests it says are waiting make the claim take exactly `want` once it
/// holds the whole limit (a claim fills free slots plus the slots' worth of
/// waiting requests).
pub fn demand(daemon: DaemonId, models: &[(&str, u32, u32)], max_total: u32) -> ClaimRequest {
    ClaimRequest {
        daemon,
        models: models
            .iter()
            .map(|&(m, limit, want)| ModelDemand {
                model: m.into(),
                limit,
                share: limit,
                in_flight: 0,
                waiting: (2 * limit).saturating_sub(want),
                per_call: 1,
            })
            .collect(),
        default_limit: 0,
        default_share: 0,
        max_total,
        scope: None,
        grouped: false,
        schedule: Default::default(),
    }
}

/// What a daemon with `in_flight` calls and `waiting` requests of `model` asks.
pub fn slots_demand(
    daemon: DaemonId,
    model: &str,
    limit: u32,
    share: u32,
    in_flight: u32,
    waiting: u32,
) -> ClaimRequest {
    ClaimRequest {
        daemon,
        models: vec![ModelDemand {
            model: model.into(),
            limit,
            share,
            in_flight,
            waiting,
            per_call: 1,
        }],
        default_limit: 0,
        default_share: 0,
        max_total: 1000,
        scope: None,
        grouped: false,
        schedule: Default::default(),
    }
}

/// The requests claimed by [`demand`] for one model.
pub async fn claim_of<S: QueueStore>(
    store: &S,
    daemon: DaemonId,
    model: &str,
    limit: u32,
    want: u32,
    max_total: u32,
) -> Vec<ClaimedRequest> {
    store
        .claim(&demand(daemon, &[(model, limit, want)], max_total))
        .await
        .unwrap()
        .requests
}

/// A claimed request's successful result.
pub fn done(c: &ClaimedRequest) -> Finished {
    Finished {
        id: c.id,
        attempt: c.attempt,
        state: RequestState::Completed,
        status_code: Some(200),
        upstream_request_id: Some("up-1".into()),
        body: Some(r#"{"ok":true}"#.into()),
        error: None,
        usage: None,
        coalesced: None,
    }
}
