//! Fair share of a model's requests between owners (issue 15), and route
//! pauses: the per-owner contract of `QueueStore::claim` and `RouteStore`.

use super::*;
use crate::common::daemon::eventually;
use crate::common::{CHAT, chat_body, jsonl, line_with, new_batch};
use fusillade::domain::schedule::Schedule;
use fusillade::store::ModelDemand;
use std::time::Duration;

/// Uploads `n` lines of model "m" for `owner` and makes a batch of them.
async fn batch_of_owner<S: Backend>(store: &S, owner: &str, n: usize) {
    let lines: Vec<String> = (0..n)
        .map(|i| line_with(&format!("{owner}-{i}"), CHAT, &chat_body("x", "m")))
        .collect();
    let file = upload(store, owner, &jsonl(&lines)).await;
    store
        .create_batch(new_batch(owner, file.id, CHAT))
        .await
        .unwrap();
}

/// A lone daemon's claim of `want` requests of "m" (limit `limit`).
fn share_demand(daemon: DaemonId, limit: u32, want: u32, schedule: Schedule) -> ClaimRequest {
    ClaimRequest {
        daemon,
        models: vec![ModelDemand {
            model: "m".into(),
            limit,
            share: limit,
            in_flight: 0,
            waiting: (2 * limit).saturating_sub(want),
            per_call: 1,
        }],
        default_limit: 0,
        default_share: 0,
        max_total: 1000,
        scope: None,
        grouped: false,
        schedule,
    }
}

/// What [`share_demand`] claims.
async fn claim_of<S: Backend>(
    store: &S,
    daemon: DaemonId,
    limit: u32,
    want: u32,
    schedule: Schedule,
) -> Vec<ClaimedRequest> {
    let demand = share_demand(daemon, limit, want, schedule);
    store.claim(&demand).await.unwrap().requests
}

fn of(claimed: &[ClaimedRequest], owner: &str) -> usize {
    claimed.iter().filter(|c| c.owner == owner).count()
}

pub async fn a_models_requests_are_shared_between_owners_by_weight<S: Backend>(store: &S) {
    batch_of_owner(store, "alice", 20).await;
    batch_of_owner(store, "bob", 20).await;
    let d = daemon(store).await;
    let schedule = Schedule {
        weights: [("alice".to_owned(), 2)].into(),
        ..Schedule::default()
    };
    let got = claim_of(store, d, 6, 12, schedule).await;
    assert_eq!(got.len(), 12);
    assert_eq!((of(&got, "alice"), of(&got, "bob")), (8, 4));
    // Each claimed row names its batch's owner, and is its own line.
    assert!(got.iter().all(|c| {
        c.custom_id
            .as_deref()
            .is_some_and(|id| id.starts_with(&c.owner))
    }));
}

pub async fn what_an_owner_cannot_take_is_shared_again<S: Backend>(store: &S) {
    batch_of_owner(store, "alice", 20).await;
    batch_of_owner(store, "bob", 20).await;
    batch_of_owner(store, "carol", 2).await;
    let d = daemon(store).await;
    let got = claim_of(store, d, 6, 12, Schedule::default()).await;
    // 4 each, carol has 2: her 2 left go to the others in the next round.
    assert_eq!(
        (of(&got, "alice"), of(&got, "bob"), of(&got, "carol")),
        (5, 5, 2)
    );
}

pub async fn an_owner_holding_requests_gets_fewer_of_the_next_claim<S: Backend>(store: &S) {
    batch_of_owner(store, "alice", 20).await;
    let d = daemon(store).await;
    let first = claim_of(store, d, 6, 6, Schedule::default()).await;
    assert_eq!(of(&first, "alice"), 6);
    // Bob arrives: he holds none, so the next claim is all his until he
    // holds as many as alice (counted over rows claimed).
    batch_of_owner(store, "bob", 20).await;
    let next = claim_of(store, d, 6, 6, Schedule::default()).await;
    assert_eq!((of(&next, "alice"), of(&next, "bob")), (0, 6));
}

pub async fn a_newcomer_is_claimed_while_the_queue_is_full_of_others<S: Backend>(store: &S) {
    batch_of_owner(store, "alice", 40).await;
    let d = daemon(store).await;
    let first = claim_of(store, d, 6, 12, Schedule::default()).await;
    assert_eq!(of(&first, "alice"), 12);
    // Bob arrives while the daemon's queue is full of alice's rows: it asks
    // for nothing, and only a claim that catches up takes bob's.
    batch_of_owner(store, "bob", 20).await;
    let catch_up = Schedule {
        catch_up: true,
        ..Schedule::default()
    };
    let plain = claim_of(store, d, 6, 0, Schedule::default()).await;
    assert!(plain.is_empty(), "nothing asked, nothing caught up");
    let next = claim_of(store, d, 6, 0, catch_up.clone()).await;
    // His fair share of the 12 rows a limit of 6 keeps claimed ahead.
    assert_eq!((of(&next, "alice"), of(&next, "bob")), (0, 6));
    let again = claim_of(store, d, 6, 0, catch_up).await;
    assert!(again.is_empty(), "bob holds his share: {again:?}");
}

pub async fn a_route_pause_is_kept_until_it_ends_and_a_shorter_one_does_not_shorten_it<
    S: Backend,
>(
    store: &S,
) {
    assert!(store.route_pauses().await.unwrap().is_empty());
    store
        .pause_route("m", Duration::from_secs(600))
        .await
        .unwrap();
    store
        .pause_route("m", Duration::from_secs(1))
        .await
        .unwrap();
    store
        .pause_route("n", Duration::from_millis(200))
        .await
        .unwrap();
    let pauses = store.route_pauses().await.unwrap();
    let m = pauses.iter().find(|p| p.0 == "m").expect("m is paused").1;
    assert!(
        m > Duration::from_secs(300) && m <= Duration::from_secs(600),
        "{m:?}"
    );
    eventually(Duration::from_secs(10), "n's pause ends", || async {
        let pauses = store.route_pauses().await.unwrap();
        !pauses.iter().any(|p| p.0 == "n") && pauses.iter().any(|p| p.0 == "m")
    })
    .await;
}
