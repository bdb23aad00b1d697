//! Response steps (the multi-step requests' chain of model and tool calls):
//! created, read, listed by chain and scope, and moved through their states.
//! The seed test (tests/response_steps.rs) checks the same on PostgreSQL and
//! stays as it is; here every backend runs it, with a batch's request as
//! the parent.

use super::*;
use fusillade::StoreError;
use fusillade::response_step::{CreateStepInput, StepKind, StepState};

use serde_json::json;

/// A request to hang steps on: the first line of a new batch.
async fn parent<S: Backend>(store: &S) -> RequestId {
    let batch = batch_of(store, 1).await;
    RequestId::of_line(batch.id, 1)
}

/// A step of `request` after `prev`, under `scope`.
fn step(
    request_id: RequestId,
    prev: Option<fusillade::domain::ids::StepId>,
    scope: Option<fusillade::domain::ids::StepId>,
    kind: StepKind,
    sequence: i64,
) -> CreateStepInput {
    CreateStepInput {
        id: None,
        request_id,
        prev_step_id: prev,
        parent_step_id: scope,
        step_kind: kind,
        step_sequence: sequence,
        request_payload: json!({"step": sequence}),
    }
}

pub async fn steps_are_read_back_and_listed_by_chain_and_scope<S: Backend>(store: &S) {
    let request = parent(store).await;
    // Made out of order: the chain is ordered by sequence.
    let third = store
        .create_step(step(request, None, None, StepKind::ModelCall, 3))
        .await
        .unwrap();
    let first = store
        .create_step(step(request, None, None, StepKind::ToolCall, 1))
        .await
        .unwrap();
    let second = store
        .create_step(step(request, Some(first), None, StepKind::ModelCall, 2))
        .await
        .unwrap();
    let sub = store
        .create_step(step(request, None, Some(second), StepKind::ModelCall, 4))
        .await
        .unwrap();

    let s = store.get_step(first).await.unwrap().unwrap();
    assert_eq!((s.id, s.request_id), (first, request));
    assert_eq!(
        (s.step_kind, s.state),
        (StepKind::ToolCall, StepState::Pending)
    );
    assert_eq!((s.step_sequence, s.retry_attempt), (1, 0));
    assert_eq!(s.request_payload, json!({"step": 1}));
    assert!(s.response_payload.is_none() && s.started_at.is_none());

    let chain: Vec<_> = store
        .list_chain(request)
        .await
        .unwrap()
        .iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(chain, [first, second, third, sub]);
    let top: Vec<_> = store
        .list_scope(request, None)
        .await
        .unwrap()
        .iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(top, [first, second, third]);
    let under: Vec<_> = store
        .list_scope(request, Some(second))
        .await
        .unwrap()
        .iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(under, [sub]);
    assert!(
        store
            .list_scope(request, Some(first))
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn a_step_ends_once_and_a_retry_goes_back_to_pending<S: Backend>(store: &S) {
    let request = parent(store).await;
    let done = store
        .create_step(step(request, None, None, StepKind::ModelCall, 1))
        .await
        .unwrap();
    store.mark_step_processing(done).await.unwrap();
    let s = store.get_step(done).await.unwrap().unwrap();
    assert_eq!(s.state, StepState::Processing);
    assert!(s.started_at.is_some());
    // Idempotent while processing.
    store.mark_step_processing(done).await.unwrap();
    store
        .complete_step(done, json!({"out": "ok"}))
        .await
        .unwrap();
    let s = store.get_step(done).await.unwrap().unwrap();
    assert_eq!(s.state, StepState::Completed);
    assert_eq!(s.response_payload, Some(json!({"out": "ok"})));
    assert!(s.completed_at.is_some());
    assert!(store.complete_step(done, json!({})).await.is_err());

    let failed = store
        .create_step(step(request, Some(done), None, StepKind::ToolCall, 2))
        .await
        .unwrap();
    store.mark_step_processing(failed).await.unwrap();
    let why = json!({"type": "max_iterations_exceeded"});
    store.fail_step(failed, why.clone()).await.unwrap();
    let s = store.get_step(failed).await.unwrap().unwrap();
    assert_eq!((s.state, s.error), (StepState::Failed, Some(why)));
    assert!(s.failed_at.is_some());

    let cancelled = store
        .create_step(step(request, Some(failed), None, StepKind::ModelCall, 3))
        .await
        .unwrap();
    store.cancel_step(cancelled).await.unwrap();
    let s = store.get_step(cancelled).await.unwrap().unwrap();
    assert_eq!(s.state, StepState::Canceled);
    assert!(s.canceled_at.is_some() && s.started_at.is_none());
    assert!(store.complete_step(cancelled, json!({})).await.is_err());
    assert!(store.fail_step(cancelled, json!({})).await.is_err());
    assert!(store.cancel_step(cancelled).await.is_err());

    let retried = store
        .create_step(step(request, Some(cancelled), None, StepKind::ToolCall, 4))
        .await
        .unwrap();
    // Only a step in flight goes back for a retry.
    assert!(store.requeue_step_for_retry(retried).await.is_err());
    store.mark_step_processing(retried).await.unwrap();
    store.requeue_step_for_retry(retried).await.unwrap();
    let s = store.get_step(retried).await.unwrap().unwrap();
    assert_eq!((s.state, s.retry_attempt), (StepState::Pending, 1));
    assert!(s.started_at.is_none());
}

pub async fn a_second_successor_of_one_kind_is_refused<S: Backend>(store: &S) {
    let request = parent(store).await;
    let first = store
        .create_step(step(request, None, None, StepKind::ModelCall, 1))
        .await
        .unwrap();
    store
        .create_step(step(request, Some(first), None, StepKind::ToolCall, 2))
        .await
        .unwrap();
    // Recovery rerunning a transition must not add the same successor twice.
    let again = store
        .create_step(step(request, Some(first), None, StepKind::ToolCall, 3))
        .await;
    assert!(again.is_err(), "{again:?}");
    // Another kind after the same step is fine.
    store
        .create_step(step(request, Some(first), None, StepKind::ModelCall, 4))
        .await
        .unwrap();
}

pub async fn a_refused_step_change_says_why<S: Backend>(store: &S) {
    let request = parent(store).await;
    let done = store
        .create_step(step(request, None, None, StepKind::ModelCall, 1))
        .await
        .unwrap();
    // Pending cannot complete: it must be processing first.
    match store.complete_step(done, json!({})).await {
        Err(StoreError::Conflict(t)) => {
            assert_eq!((t.kind, t.from, t.to), ("step", "pending", "completed"))
        }
        other => panic!("{other:?}"),
    }
    let missing = fusillade::domain::ids::StepId::new();
    match store.cancel_step(missing).await {
        Err(StoreError::NotFound { what, id }) => {
            assert_eq!((what, id), ("response step", missing.to_string()))
        }
        other => panic!("{other:?}"),
    }
}
