//! Store functions added for the HTTP API: the user's retry of failed
//! requests (the one documented exception to terminal states never
//! changing), live request counts for `/metrics`, the health ping, and file
//! expiry set after upload.

use super::*;
use crate::common::{CHAT, collect, new_batch, valid_file};
use fusillade::store::{LiveRequestCounts, Owner};
use fusillade::{BatchStatus, StoreError};
use futures_util::StreamExt;
use serde_json::json;
use std::time::Duration;

pub async fn retry_reopens_a_completed_batch_and_requeues_only_failed_requests<S: Backend>(
    store: &S,
) {
    let file = upload(store, "alice", &valid_file("r", 3)).await;
    let batch = store
        .create_batch(new_batch("alice", file.id, CHAT))
        .await
        .unwrap();
    let mut reqs = claim_all(store, batch.id).await;
    // One completed, two failed by the upstream, one of them after two retries.
    finish_one(
        store,
        result(&reqs[0], Some(200), Some(r#"{"ok":true}"#), None),
    )
    .await;
    let no = json!({"code": "upstream_error", "message": "no"});
    finish_one(
        store,
        result(&reqs[1], Some(400), Some("{}"), Some(no.clone())),
    )
    .await;
    let d = reqs[2].clone();
    for _ in 0..2 {
        let again = Requeue {
            id: d.id,
            attempt: reqs[2].attempt,
            delay: Duration::ZERO,
            is_retry: true,
        };
        assert_eq!(store.requeue(&[again]).await.unwrap(), vec![d.id]);
        reqs[2] = claim_all(store, batch.id).await.remove(0);
    }
    assert_eq!(reqs[2].retries, 2);
    finish_one(store, result(&reqs[2], Some(500), Some("{}"), Some(no))).await;
    assert_eq!(store.finalize(10).await.unwrap().completed, vec![batch.id]);
    let ended = super::batch(store, batch.id).await;
    assert_eq!(ended.status, BatchStatus::Completed);
    assert_eq!(ended.request_counts.failed, 2);

    let mut signals = store.listen_for_work().await.unwrap();
    let (reopened, n) = store
        .retry_failed(Owner::Only("alice"), batch.id)
        .await
        .unwrap();
    assert_eq!(n, 2);
    assert_eq!(reopened.status, BatchStatus::InProgress);
    assert_eq!(reopened.completed_at, None);
    let new_deadline = reopened.expires_at.unwrap();
    assert!(new_deadline > chrono::Utc::now() + chrono::Duration::hours(23));
    assert_eq!(reopened.request_counts.unfinished(), 2);
    assert_eq!(reopened.request_counts.completed, 1);
    assert_eq!(reopened.request_counts.failed, 0);
    // A signal for idle daemons, sent with the commit.
    tokio::time::timeout(Duration::from_secs(5), signals.next())
        .await
        .expect("a work signal")
        .unwrap();

    let states: Vec<RequestState> = requests_of(store, batch.id)
        .await
        .iter()
        .map(|r| r.state)
        .collect();
    assert_eq!(
        states,
        [
            RequestState::Completed,
            RequestState::Pending,
            RequestState::Pending
        ]
    );
    // Claimed again, with their retries reset and the new deadline.
    let again = claim_all(store, batch.id).await;
    assert_eq!(
        again.iter().map(|c| c.id).collect::<Vec<_>>(),
        [reqs[1].id, reqs[2].id]
    );
    for c in &again {
        assert_eq!((c.retries, c.deadline), (0, Some(new_deadline)));
    }
    // Only the completed request keeps its result line.
    assert_eq!(lines_of(store.output_stream(batch.id)).await, 1);
    assert_eq!(collect(store.error_stream(batch.id)).await, b"");
}

pub async fn retry_is_a_conflict_unless_completed_or_expired<S: Backend>(store: &S) {
    let file = upload(store, "alice", &valid_file("c", 1)).await;
    let running = store
        .create_batch(new_batch("alice", file.id, CHAT))
        .await
        .unwrap();
    let err = store
        .retry_failed(Owner::Only("alice"), running.id)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    store
        .cancel_batch(Owner::Only("alice"), running.id)
        .await
        .unwrap();
    let err = store
        .retry_failed(Owner::Only("alice"), running.id)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    // The cancelled request stays cancelled.
    assert_eq!(
        requests_of(store, running.id).await[0].state,
        RequestState::Canceled
    );
    // Another owner's batch is not found.
    let err = store
        .retry_failed(Owner::Only("bob"), running.id)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
}

pub async fn retry_of_a_completed_batch_without_failures_changes_nothing<S: Backend>(store: &S) {
    let file = upload(store, "alice", &valid_file("n", 1)).await;
    let batch = store
        .create_batch(new_batch("alice", file.id, CHAT))
        .await
        .unwrap();
    let r = claim_all(store, batch.id).await;
    finish_one(store, result(&r[0], Some(200), Some("{}"), None)).await;
    store.finalize(10).await.unwrap();
    let before = super::batch(store, batch.id).await;
    assert_eq!(before.status, BatchStatus::Completed);
    let (after, n) = store
        .retry_failed(Owner::Only("alice"), batch.id)
        .await
        .unwrap();
    assert_eq!(n, 0);
    assert_eq!(after, before);
}

pub async fn live_counts_come_from_unfinished_requests_only<S: Backend>(store: &S) {
    store.ping().await.unwrap();
    assert_eq!(
        store.live_request_counts().await.unwrap(),
        LiveRequestCounts::default()
    );
    let file = upload(store, "", &valid_file("l", 5)).await;
    let batch = store
        .create_batch(new_batch("", file.id, CHAT))
        .await
        .unwrap();
    let d = daemon(store).await;
    let r = store
        .claim(&claim_request(d, 3, Some(batch.id)))
        .await
        .unwrap()
        .requests;
    finish_one(store, result(&r[2], Some(200), Some("{}"), None)).await;
    assert_eq!(
        store.live_request_counts().await.unwrap(),
        LiveRequestCounts {
            pending: 2,
            claimed: 2,
            processing: 0
        }
    );
}

pub async fn file_expiry_can_be_set_after_upload<S: Backend>(store: &S) {
    let file = upload(store, "alice", &valid_file("e", 1)).await;
    let at = chrono::DateTime::from_timestamp(2_000_000_000, 0).unwrap();
    assert!(
        !store
            .set_file_expiry(Owner::Only("bob"), file.id, Some(at))
            .await
            .unwrap()
    );
    assert!(
        store
            .set_file_expiry(Owner::Only("alice"), file.id, Some(at))
            .await
            .unwrap()
    );
    let got = store.get_file(Owner::Any, file.id).await.unwrap().unwrap();
    assert_eq!(got.expires_at, Some(at));
}
