//! The daemon's hot path (claims, slots, results, requeues, leases) and the
//! timed maintenance (rescue, retire, finalize).
//!
//! Time is moved by waiting a little, never by writing to the database: a
//! daemon falls silent after [`SILENCE`], and a dead daemon's slots are
//! forgotten with a short fence window.

use super::*;
use crate::common::daemon::eventually;
use crate::common::queue::{batch_for, claim_of, demand, done, slots_demand};
use crate::common::{CHAT, chat_body, collect, jsonl, line_with, new_batch};
use fusillade::domain::batch::BatchStatus;
use fusillade::domain::daemon::DaemonStats;
use fusillade::store::{Claim, DaemonRecord, DaemonStatus, NewBatch, Owner};
use std::collections::HashSet;
use std::time::Duration;

fn slots_of(claim: &Claim, model: &str) -> u32 {
    claim
        .slots
        .iter()
        .find(|(m, _)| m == model)
        .map_or(0, |(_, n)| *n)
}

fn count(claimed: &[ClaimedRequest], model: &str) -> usize {
    claimed.iter().filter(|c| c.model == model).count()
}

pub async fn slots_of_all_daemons_stay_within_each_models_limit<S: Backend>(store: &S) {
    batch_for(store, "a", 10, "24h").await;
    batch_for(store, "b", 5, "24h").await;
    let (d1, d2) = (daemon(store).await, daemon(store).await);

    // Alone with work: the whole limit, its free slots filled plus its
    // slots' worth claimed ahead (3 + 3 of a; all 5 of b).
    let both = |d, a_in, a_waiting, b_in| ClaimRequest {
        models: vec![
            slots_demand(d, "a", 3, 3, a_in, a_waiting).models.remove(0),
            slots_demand(d, "b", 10, 10, b_in, 0).models.remove(0),
        ],
        ..slots_demand(d, "a", 3, 3, 0, 0)
    };
    let first = store.claim(&both(d1, 0, 0, 0)).await.unwrap();
    assert_eq!((slots_of(&first, "a"), slots_of(&first, "b")), (3, 10));
    assert_eq!(count(&first.requests, "a"), 6);
    assert_eq!(count(&first.requests, "b"), 5);
    assert!(
        first
            .requests
            .iter()
            .all(|c| c.attempt == 1 && c.retries == 0)
    );
    assert!(
        first
            .requests
            .iter()
            .all(|c| c.path == CHAT && c.body.contains("\"model\""))
    );

    // Another daemon finds every slot taken: no slots, no requests.
    let second = store.claim(&both(d2, 0, 0, 0)).await.unwrap();
    assert_eq!((slots_of(&second, "a"), slots_of(&second, "b")), (0, 0));
    assert!(second.requests.is_empty());

    // The first keeps its share of a while a has work, and gives back what
    // b's calls in flight do not use once b has none.
    let again = store.claim(&both(d1, 3, 3, 2)).await.unwrap();
    assert_eq!((slots_of(&again, "a"), slots_of(&again, "b")), (3, 2));
    assert!(
        again.requests.is_empty(),
        "3 in flight + 3 waiting is enough"
    );

    // A stopped daemon's slots are free for the others.
    store.mark_daemon_stopped(d1).await.unwrap();
    let third = store
        .claim(&slots_demand(d2, "a", 3, 3, 0, 0))
        .await
        .unwrap();
    assert_eq!(slots_of(&third, "a"), 3);
    assert_eq!(count(&third.requests, "a"), 4, "all that is left");
}

pub async fn slots_never_drop_below_calls_in_flight<S: Backend>(store: &S) {
    batch_for(store, "a", 20, "24h").await;
    let (d1, d2) = (daemon(store).await, daemon(store).await);
    let first = store
        .claim(&slots_demand(d1, "a", 4, 4, 0, 0))
        .await
        .unwrap();
    assert_eq!(slots_of(&first, "a"), 4);
    // A second daemon arrives: the first's share drops to 2. It may use 2,
    // but still holds a slot for each of its 3 calls running.
    let shrunk = store
        .claim(&slots_demand(d1, "a", 4, 2, 3, 0))
        .await
        .unwrap();
    assert_eq!(slots_of(&shrunk, "a"), 2);
    assert_eq!(shrunk.peers, 2);
    let other = store
        .claim(&slots_demand(d2, "a", 4, 2, 0, 0))
        .await
        .unwrap();
    assert_eq!(slots_of(&other, "a"), 1, "only what is left of the limit");
    // Its calls ended: the first gives back down to its share, and the
    // second can take its own.
    store
        .claim(&slots_demand(d1, "a", 4, 2, 2, 0))
        .await
        .unwrap();
    let other = store
        .claim(&slots_demand(d2, "a", 4, 2, 1, 0))
        .await
        .unwrap();
    assert_eq!(slots_of(&other, "a"), 2);
}

pub async fn claim_honours_the_total_cap_and_defaults<S: Backend>(store: &S) {
    batch_for(store, "a", 10, "24h").await;
    batch_for(store, "other", 10, "24h").await;
    let d = daemon(store).await;
    let got = store
        .claim(&demand(d, &[("a", 100, 2)], 100))
        .await
        .unwrap();
    assert_eq!(
        count(&got.requests, "a"),
        2,
        "free slots and waiting cap the claim"
    );
    assert_eq!(count(&got.requests, "other"), 0, "default limit is 0");
    assert_eq!(slots_of(&got, "other"), 0);

    let mut req = demand(d, &[], 3);
    req.default_limit = 100;
    req.default_share = 100;
    let got = store.claim(&req).await.unwrap();
    assert_eq!(got.requests.len(), 3, "max_total caps the statement");
    assert_eq!(slots_of(&got, "other"), 100);
}

pub async fn a_private_batch_is_claimed_only_by_its_scoped_daemon<S: Backend>(store: &S) {
    let shared = batch_for(store, "m", 2, "24h").await;
    // A `fusillade run`'s batch, due first, on the same database.
    let lines: Vec<String> = (0..3)
        .map(|i| line_with(&format!("p-{i}"), CHAT, &chat_body("x", "m")))
        .collect();
    let file = upload(store, "", &jsonl(&lines)).await;
    let private = store
        .create_batch(NewBatch {
            private: true,
            completion_window: "1h",
            ..new_batch("", file.id, CHAT)
        })
        .await
        .unwrap()
        .id;
    let d = daemon(store).await;
    // A worker or `serve` takes the shared work, never the private batch's.
    let all = store
        .claim(&demand(d, &[("m", 10, 10)], 100))
        .await
        .unwrap();
    assert_eq!(all.requests.len(), 2, "{:?}", all.requests);
    assert!(all.requests.iter().all(|r| r.batch_id == Some(shared)));
    let none = store
        .claim(&demand(d, &[("m", 10, 10)], 100))
        .await
        .unwrap();
    assert!(none.requests.is_empty());
    // Its own daemon takes all of it.
    let scoped = ClaimRequest {
        scope: Some(private),
        grouped: false,
        schedule: Default::default(),
        ..demand(d, &[("m", 10, 10)], 100)
    };
    let mine = store.claim(&scoped).await.unwrap();
    assert_eq!(mine.requests.len(), 3);
    assert!(mine.requests.iter().all(|r| r.batch_id == Some(private)));
}

pub async fn a_scoped_claim_takes_only_its_batch<S: Backend>(store: &S) {
    let other = batch_for(store, "m", 4, "1h").await;
    let mine = batch_for(store, "m", 3, "24h").await;
    // A model only the other batch has pending is not work for this daemon.
    let only_other = batch_for(store, "x", 2, "1h").await;
    let d = daemon(store).await;
    let scoped = ClaimRequest {
        scope: Some(mine),
        grouped: false,
        schedule: Default::default(),
        default_limit: 10,
        default_share: 10,
        ..demand(d, &[], 100)
    };
    let got = store.claim(&scoped).await.unwrap();
    assert_eq!(got.requests.len(), 3);
    assert!(got.requests.iter().all(|r| r.batch_id == Some(mine)));
    assert_eq!(slots_of(&got, "x"), 0, "{:?}", got.slots);
    // Nothing of it is left: a second claim takes nothing of the others.
    assert!(store.claim(&scoped).await.unwrap().requests.is_empty());
    // Unscoped, the others' work is all there.
    let all = store
        .claim(&demand(d, &[("m", 10, 10), ("x", 10, 10)], 100))
        .await
        .unwrap();
    assert_eq!(all.requests.len(), 6);
    assert!(
        all.requests
            .iter()
            .all(|r| r.batch_id == Some(other) || r.batch_id == Some(only_other))
    );
}

pub async fn claim_prefers_the_earlier_deadline<S: Backend>(store: &S) {
    let late = batch_for(store, "m", 3, "24h").await;
    let soon = batch_for(store, "m", 3, "1h").await;
    let d = daemon(store).await;
    let got = claim_of(store, d, "m", 100, 3, 100).await;
    assert_eq!(got.len(), 3);
    assert!(
        got.iter().all(|c| c.batch_id == Some(soon)),
        "{late} is later"
    );
    assert!(got.iter().all(|c| c.deadline.is_some()));
}

pub async fn finish_writes_results_once_and_rejects_stale_attempts<S: Backend>(store: &S) {
    let batch = batch_for(store, "m", 2, "24h").await;
    let d = daemon(store).await;
    let got = claim_of(store, d, "m", 10, 10, 10).await;
    let (ok, bad) = (&got[0], &got[1]);
    let failed = Finished {
        id: bad.id,
        attempt: bad.attempt,
        state: RequestState::Failed,
        status_code: Some(400),
        upstream_request_id: None,
        body: Some(r#"{"error":{"message":"bad"}}"#.into()),
        error: Some(ResultError::new("upstream_error", "HTTP 400")),
        usage: None,
        coalesced: None,
    };
    let stale = Finished {
        attempt: ok.attempt - 1,
        ..done(ok)
    };
    assert!(store.finish(&[stale]).await.unwrap().is_empty());
    let accepted = store.finish(&[done(ok), failed.clone()]).await.unwrap();
    assert_eq!(accepted.len(), 2);
    // Terminal states never change, even with the right attempt.
    assert!(store.finish(&[failed]).await.unwrap().is_empty());

    let r = store.get_request(ok.id).await.unwrap().unwrap();
    assert_eq!(r.state, RequestState::Completed);
    assert_eq!(r.status_code, Some(200));
    assert!(r.daemon_id.is_none() && r.finished_at.is_some());

    let out = String::from_utf8(collect(store.output_stream(batch)).await).unwrap();
    let errs = String::from_utf8(collect(store.error_stream(batch)).await).unwrap();
    assert_eq!(out.lines().count(), 1);
    assert_eq!(errs.lines().count(), 1);
    let e: serde_json::Value = serde_json::from_str(errs.trim()).unwrap();
    assert_eq!(e["response"]["status_code"], 400);
    assert_eq!(e["response"]["body"]["error"]["message"], "bad");
    assert_eq!(e["error"]["code"], "upstream_error");
}

pub async fn requeue_delays_retries_and_counts_them<S: Backend>(store: &S) {
    batch_for(store, "m", 2, "24h").await;
    let d = daemon(store).await;
    let got = claim_of(store, d, "m", 10, 10, 10).await;
    let accepted = store
        .requeue(&[
            Requeue {
                id: got[0].id,
                attempt: got[0].attempt,
                delay: Duration::from_secs(3600),
                is_retry: true,
            },
            Requeue {
                id: got[1].id,
                attempt: got[1].attempt,
                delay: Duration::ZERO,
                is_retry: false,
            },
        ])
        .await
        .unwrap();
    assert_eq!(accepted.len(), 2);
    // A second requeue of the same attempt is stale.
    let again = Requeue {
        id: got[1].id,
        attempt: got[1].attempt,
        delay: Duration::ZERO,
        is_retry: false,
    };
    assert!(store.requeue(&[again]).await.unwrap().is_empty());

    let next = claim_of(store, d, "m", 10, 10, 10).await;
    assert_eq!(next.len(), 1, "the delayed retry is not claimable yet");
    assert_eq!(next[0].id, got[1].id);
    assert_eq!(next[0].attempt, got[1].attempt + 1);
    assert_eq!(next[0].retries, 0, "a release is not a retry");
    let delayed = store.get_request(got[0].id).await.unwrap().unwrap();
    assert_eq!(delayed.state, RequestState::Pending);
    assert!(delayed.not_before > chrono::Utc::now() + chrono::Duration::minutes(59));
    // Once due, a retry comes back counted.
    let now = Requeue {
        id: next[0].id,
        attempt: next[0].attempt,
        delay: Duration::ZERO,
        is_retry: true,
    };
    assert_eq!(store.requeue(&[now]).await.unwrap().len(), 1);
    let next = claim_of(store, d, "m", 10, 10, 10).await;
    assert_eq!((next.len(), next[0].retries), (1, 1));
}

pub async fn rescue_returns_claims_of_dead_daemons_only<S: Backend>(store: &S) {
    batch_for(store, "m", 4, "24h").await;
    let (alive, dying) = (daemon(store).await, daemon(store).await);
    // Half the limit each; 8 said to wait leaves room to claim 2 each.
    let mine = store
        .claim(&slots_demand(alive, "m", 10, 5, 0, 8))
        .await
        .unwrap()
        .requests;
    let theirs = store
        .claim(&slots_demand(dying, "m", 10, 5, 0, 8))
        .await
        .unwrap()
        .requests;
    go_silent(store, dying).await;
    let report = store
        .rescue(alive, Some(SILENCE), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(report.dead_daemons, 1);
    assert_eq!(report.requests, 2);

    // The dead daemon's late writes are rejected; it learns its leases are gone.
    let held: Vec<(RequestId, i32)> = theirs.iter().map(|c| (c.id, c.attempt)).collect();
    let lost = store.lost_leases(dying, &held).await.unwrap();
    assert_eq!(lost.len(), 2);
    assert!(store.finish(&[done(&theirs[0])]).await.unwrap().is_empty());
    assert!(
        store
            .heartbeat(dying, DaemonStats::default())
            .await
            .is_err()
    );
    // The live daemon keeps its own.
    let held: Vec<(RequestId, i32)> = mine.iter().map(|c| (c.id, c.attempt)).collect();
    assert!(store.lost_leases(alive, &held).await.unwrap().is_empty());
    assert_eq!(store.finish(&[done(&mine[0])]).await.unwrap().len(), 1);

    // An id that never registered claims nothing.
    let ghost = DaemonId::new();
    let ghost_claim = store
        .claim(&slots_demand(ghost, "m", 10, 10, 0, 0))
        .await
        .unwrap();
    assert!(ghost_claim.requests.is_empty());
    assert!(ghost_claim.slots.iter().all(|(_, n)| *n == 0));
    // (The dead daemon's slots still count: the live one keeps its half.)
    let again = store
        .claim(&slots_demand(alive, "m", 10, 5, 0, 0))
        .await
        .unwrap()
        .requests;
    let ids: HashSet<_> = again.iter().map(|c| c.id).collect();
    assert_eq!(ids.len(), 2);
}

/// How long a daemon must be silent here to be declared dead.
const SILENCE: Duration = Duration::from_millis(300);

/// Waits until the daemon's last heartbeat is older than [`SILENCE`].
async fn go_silent<S: Backend>(store: &S, d: DaemonId) {
    let since = record_of(store, d).await.last_heartbeat;
    eventually(
        Duration::from_secs(10),
        "the daemon to fall silent",
        || async {
            (chrono::Utc::now() - since)
                .to_std()
                .is_ok_and(|age| age > SILENCE)
        },
    )
    .await;
}

/// A daemon's row in the registry.
async fn record_of<S: Backend>(store: &S, d: DaemonId) -> DaemonRecord {
    let all = store.list_daemons().await.unwrap();
    all.into_iter().find(|r| r.id == d).expect("registered")
}

async fn status_of<S: Backend>(store: &S, d: DaemonId) -> DaemonStatus {
    record_of(store, d).await.status
}

/// Rescues with a fence window that has passed for every daemon that died
/// before the call, so that their slots are forgotten; polls, since the
/// death and the rescue may fall in one tick of the clock.
async fn forget_the_dead<S: Backend>(store: &S, by: DaemonId, dead: DaemonId) {
    let died = record_of(store, dead).await.stopped_at.expect("dead");
    let fence = Duration::from_millis(50);
    eventually(
        Duration::from_secs(10),
        "the fence window to pass",
        || async {
            (chrono::Utc::now() - died)
                .to_std()
                .is_ok_and(|age| age > fence * 2)
        },
    )
    .await;
    store.rescue(by, None, fence).await.unwrap();
}

pub async fn a_dead_daemon_claims_nothing_and_its_slots_count_until_forgotten<S: Backend>(
    store: &S,
) {
    batch_for(store, "m", 20, "24h").await;
    let (slow, other) = (daemon(store).await, daemon(store).await);
    let first = store
        .claim(&slots_demand(slow, "m", 4, 4, 0, 0))
        .await
        .unwrap();
    assert_eq!(slots_of(&first, "m"), 4);
    go_silent(store, slow).await;
    let minute = Duration::from_secs(60);
    let r = store.rescue(other, Some(SILENCE), minute).await.unwrap();
    assert_eq!((r.dead_daemons, r.requests), (1, 8));

    // Declared dead, it gets nothing more...
    let late = store
        .claim(&slots_demand(slow, "m", 4, 4, 0, 0))
        .await
        .unwrap();
    assert!(late.requests.is_empty());
    assert_eq!(slots_of(&late, "m"), 0);
    // ...and its slots still count: it may be calling until it learns.
    let c = store
        .claim(&slots_demand(other, "m", 4, 4, 0, 0))
        .await
        .unwrap();
    assert_eq!(slots_of(&c, "m"), 0);
    assert!(c.requests.is_empty());
    store.rescue(other, None, minute).await.unwrap();
    let c = store
        .claim(&slots_demand(other, "m", 4, 4, 0, 0))
        .await
        .unwrap();
    assert_eq!(slots_of(&c, "m"), 0, "dead for less than the window");

    // A window after its death they are forgotten.
    forget_the_dead(store, other, slow).await;
    let c = store
        .claim(&slots_demand(other, "m", 4, 4, 0, 0))
        .await
        .unwrap();
    assert_eq!(slots_of(&c, "m"), 4);
    assert_eq!(c.requests.len(), 8);
}

pub async fn a_rescuer_never_declares_itself_dead_nor_anyone_without_a_window<S: Backend>(
    store: &S,
) {
    let (me, them) = (daemon(store).await, daemon(store).await);
    go_silent(store, me).await;
    go_silent(store, them).await;
    let minute = Duration::from_secs(60);
    let r = store.rescue(me, None, minute).await.unwrap();
    assert_eq!(
        r.dead_daemons, 0,
        "no stale window: nobody is declared dead"
    );
    assert_eq!(status_of(store, them).await, DaemonStatus::Running);
    let r = store.rescue(me, Some(SILENCE), minute).await.unwrap();
    assert_eq!(r.dead_daemons, 1);
    assert_eq!(status_of(store, them).await, DaemonStatus::Dead);
    assert_eq!(
        status_of(store, me).await,
        DaemonStatus::Running,
        "never itself"
    );
}

pub async fn a_retired_daemon_returns_its_claims_at_once_and_its_slots_a_window_later<
    S: Backend,
>(
    store: &S,
) {
    batch_for(store, "m", 20, "24h").await;
    let (fenced, other) = (daemon(store).await, daemon(store).await);
    let mine = store
        .claim(&slots_demand(fenced, "m", 4, 4, 0, 0))
        .await
        .unwrap()
        .requests;
    assert_eq!(mine.len(), 8);
    assert_eq!(store.retire_daemon(fenced).await.unwrap(), 8);
    assert_eq!(status_of(store, fenced).await, DaemonStatus::Dead);
    // Its late writes are refused; it cannot heartbeat.
    assert!(store.finish(&[done(&mine[0])]).await.unwrap().is_empty());
    assert!(
        store
            .heartbeat(fenced, DaemonStats::default())
            .await
            .is_err()
    );
    // Its slots count for one window more, like any dead daemon's.
    let minute = Duration::from_secs(60);
    store.rescue(other, None, minute).await.unwrap();
    let c = store
        .claim(&slots_demand(other, "m", 4, 4, 0, 0))
        .await
        .unwrap();
    assert_eq!(slots_of(&c, "m"), 0);
    forget_the_dead(store, other, fenced).await;
    let c = store
        .claim(&slots_demand(other, "m", 4, 4, 0, 0))
        .await
        .unwrap();
    assert_eq!(slots_of(&c, "m"), 4);
    // Its claims are claimable again, first in line.
    let ids: HashSet<_> = c.requests.iter().map(|r| r.id).collect();
    assert_eq!(ids.len(), 8);
    assert!(mine.iter().all(|r| ids.contains(&r.id)));
    // Retiring again changes nothing.
    assert_eq!(store.retire_daemon(fenced).await.unwrap(), 0);
}

pub async fn finalize_completes_and_cancels<S: Backend>(store: &S) {
    let d = daemon(store).await;

    // Completed: every request ended.
    let b1 = batch_for(store, "one", 2, "24h").await;
    let got = claim_of(store, d, "one", 10, 10, 10).await;
    assert!(store.finalize(10).await.unwrap().is_empty());
    let fin: Vec<Finished> = got.iter().map(done).collect();
    store.finish(&fin).await.unwrap();
    let report = store.finalize(10).await.unwrap();
    assert_eq!(report.completed, vec![b1]);
    let b = store.get_batch(Owner::Any, b1).await.unwrap().unwrap();
    assert_eq!(b.status, BatchStatus::Completed);
    assert!(b.completed_at.is_some() && b.finalizing_at.is_some());

    // Cancelled: waits for the in-flight request, which the daemon ends.
    let b3 = batch_for(store, "three", 3, "24h").await;
    let got = claim_of(store, d, "three", 10, 1, 10).await;
    let b = store.cancel_batch(Owner::Any, b3).await.unwrap();
    assert_eq!(b.status, BatchStatus::Cancelling);
    assert!(store.finalize(10).await.unwrap().cancelled.is_empty());
    let lost = store
        .lost_leases(d, &[(got[0].id, got[0].attempt)])
        .await
        .unwrap();
    assert_eq!(lost, vec![got[0].id], "the daemon is told to stop the call");
    let canceled = Finished {
        id: got[0].id,
        attempt: got[0].attempt,
        state: RequestState::Canceled,
        status_code: None,
        upstream_request_id: None,
        body: None,
        error: Some(ResultError::new("batch_cancelled", "cancelled")),
        usage: None,
        coalesced: None,
    };
    assert_eq!(store.finish(&[canceled]).await.unwrap().len(), 1);
    assert_eq!(store.finalize(10).await.unwrap().cancelled, vec![b3]);
    let b = store.get_batch(Owner::Any, b3).await.unwrap().unwrap();
    assert_eq!(b.status, BatchStatus::Cancelled);
    assert_eq!(b.request_counts.canceled, 3);
    let errs = String::from_utf8(collect(store.error_stream(b3)).await).unwrap();
    assert_eq!(errs.lines().count(), 3);
}

pub async fn a_new_batch_wakes_listeners<S: Backend>(store: &S) {
    use futures_util::StreamExt;
    let mut signals = store.listen_for_work().await.unwrap();
    batch_for(store, "m", 1, "24h").await;
    tokio::time::timeout(Duration::from_secs(10), signals.next())
        .await
        .expect("a signal arrives")
        .expect("the stream goes on");
}
