//! Escalation to a faster model (issue 15): what the store does for it.
//! The decision is the daemon's (`domain::escalation`); the store records
//! the model each attempt is sent as (`EscalationStore`), keeps it in the
//! request's record, and grants slots of a model that only escalated
//! requests wait for, within its limit.

use super::*;
use fusillade::store::{ModelDemand, RoutedAttempt};

fn routed(c: &ClaimedRequest, attempt: i32, model: &str) -> RoutedAttempt {
    RoutedAttempt {
        id: c.id,
        attempt,
        model: model.into(),
    }
}

async fn routed_models<S: Backend>(store: &S, batch: BatchId) -> Vec<(String, Option<String>)> {
    let page = store.list_requests(batch, None, 100).await.unwrap();
    page.items
        .into_iter()
        .map(|r| (r.model, r.routed_model))
        .collect()
}

pub async fn routed_models_are_recorded_per_attempt_and_kept_in_the_result<S: Backend>(store: &S) {
    let b = batch_of(store, 3).await;
    let c = claim_all(store, b.id).await;
    let own = |i: usize| c[i].model.clone();
    // A write naming another attempt (a lost lease) changes nothing.
    let n = store
        .record_routes(&[
            routed(&c[0], c[0].attempt, "fast"),
            routed(&c[1], c[1].attempt, &own(1)),
            routed(&c[2], c[2].attempt + 1, "fast"),
        ])
        .await
        .unwrap();
    assert_eq!(n, 2);
    assert_eq!(
        routed_models(store, b.id).await,
        [
            (own(0), Some("fast".to_owned())),
            (own(1), Some(own(1))),
            (own(2), None),
        ]
    );
    // Ended, the record keeps both models.
    store
        .finish(&[outcome(&c[0], RequestState::Completed)])
        .await
        .unwrap();
    // Released, the next attempt is routed again; the old one's lease is gone.
    release(store, &c[1..2]).await;
    assert_eq!(
        store
            .record_routes(&[routed(&c[1], c[1].attempt, "fast")])
            .await
            .unwrap(),
        0,
        "a pending request is no attempt's"
    );
    let again = claim(store, daemon(store).await, 10).await;
    let c1 = again
        .iter()
        .find(|r| r.id == c[1].id)
        .expect("claimed again");
    assert_eq!(
        store
            .record_routes(&[routed(c1, c[1].attempt, "fast")])
            .await
            .unwrap(),
        0,
        "the old attempt's lease is gone"
    );
    assert_eq!(
        store
            .record_routes(&[routed(c1, c1.attempt, "fast")])
            .await
            .unwrap(),
        1
    );
    store
        .finish(&[outcome(c1, RequestState::Failed)])
        .await
        .unwrap();
    let ended = routed_models(store, b.id).await;
    assert_eq!(ended[0], (own(0), Some("fast".to_owned())));
    assert_eq!(ended[1], (own(1), Some("fast".to_owned())));
    let r0 = store.get_request(c[0].id).await.unwrap().unwrap();
    assert_eq!(r0.state, RequestState::Completed);
    assert_eq!(r0.routed_model.as_deref(), Some("fast"));
    // An ended request is no attempt's either.
    assert_eq!(
        store
            .record_routes(&[routed(&c[0], c[0].attempt, "slow")])
            .await
            .unwrap(),
        0
    );
    assert_eq!(store.record_routes(&[]).await.unwrap(), 0);
}

/// A daemon's demand for `model`, whose only work is `waiting` escalated
/// requests (nothing of it is pending in the database).
fn escalated_demand(daemon: DaemonId, model: &str, limit: u32, waiting: u32) -> ClaimRequest {
    ClaimRequest {
        daemon,
        models: vec![ModelDemand {
            model: model.into(),
            limit,
            share: limit,
            in_flight: 0,
            waiting,
            per_call: 1,
        }],
        default_limit: 0,
        default_share: 0,
        max_total: 100,
        scope: None,
        grouped: false,
        schedule: Default::default(),
    }
}

fn slots_of(claim: &fusillade::store::Claim, model: &str) -> u32 {
    claim
        .slots
        .iter()
        .find(|(m, _)| m == model)
        .map_or(0, |(_, n)| *n)
}

pub async fn a_model_only_escalated_requests_wait_for_gets_slots_within_its_limit<S: Backend>(
    store: &S,
) {
    let (a, b) = (daemon(store).await, daemon(store).await);
    let first = store
        .claim(&escalated_demand(a, "fast", 3, 2))
        .await
        .unwrap();
    assert_eq!(
        slots_of(&first, "fast"),
        3,
        "its share, with nothing pending"
    );
    assert!(first.requests.is_empty());
    // Another daemon's escalated requests find the limit taken.
    let second = store
        .claim(&escalated_demand(b, "fast", 3, 5))
        .await
        .unwrap();
    assert_eq!(slots_of(&second, "fast"), 0, "never beyond the limit");
    // Once the first has nothing of it left, the slots pass on.
    store
        .claim(&escalated_demand(a, "fast", 3, 0))
        .await
        .unwrap();
    let third = store
        .claim(&escalated_demand(b, "fast", 3, 5))
        .await
        .unwrap();
    assert_eq!(slots_of(&third, "fast"), 3);
}

/// One daemon, each backend: a 24 h batch inside a 25 h `escalate_within`
/// is sent as the escalation model, within its limit, a retry is routed
/// again, and both models are listed.
pub async fn a_daemon_sends_requests_near_their_deadline_as_the_escalation_model<S: Backend>(
    store: &S,
) {
    use crate::common::daemon::{batch_from_lines, config, finished_batch, lines_for, start};
    use fusillade::domain::batch::BatchStatus;
    use fusillade::mock::{MockBehavior, MockReply, MockUpstream};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    // (custom_id, attempt, model) of every call.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let behavior = MockBehavior::with_latency(Duration::from_millis(20)).respond(move |call| {
        let id = call.custom_id.clone().unwrap_or_default();
        log.lock()
            .unwrap()
            .push((id.clone(), call.attempt, call.model.clone()));
        if id == "near-0" && call.attempt == 1 {
            return MockReply::status(500, r#"{"error":{"message":"oops"}}"#);
        }
        MockReply::ok_for(call)
    });
    let mock = MockUpstream::start(behavior).await;
    let n = 30;
    let batch = batch_from_lines(store, &lines_for("slow", "near-", n)).await;
    let cfg = config(
        &mock.url(),
        "concurrency = 8",
        "",
        "[models.slow]\nescalate_to = \"fast\"\nescalate_within = \"25h\"\nescalate_wait = \"10m\"\n\
         [models.fast]\nconcurrency = 2\n",
    );
    let daemon = start(store, cfg);
    let b = finished_batch(store, batch, Duration::from_secs(60)).await;
    daemon.stop().await;
    assert_eq!(b.status, BatchStatus::Completed, "{b:?}");
    let stats = mock.stats();
    assert_eq!(
        stats.calls("fast"),
        n as u64 + 1,
        "the retry went to fast again"
    );
    assert_eq!(stats.calls("slow"), 0);
    assert!(stats.max_in_flight_of("fast") <= 2, "fast's limit");
    let retried: Vec<_> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|c| c.0 == "near-0")
        .map(|c| (c.1, c.2.clone()))
        .collect();
    assert_eq!(retried, [(1, "fast".to_owned()), (2, "fast".to_owned())]);
    let listed = routed_models(store, batch).await;
    assert_eq!(listed.len(), n);
    assert!(
        listed
            .iter()
            .all(|(m, r)| m == "slow" && r.as_deref() == Some("fast")),
        "{listed:?}"
    );
}
