//! The registry of daemons: registration, heartbeats, stops and the
//! listing.

use super::*;
use fusillade::StoreError;
use fusillade::domain::daemon::DaemonId;
use fusillade::store::{DaemonRecord, DaemonStats, DaemonStatus};
use serde_json::json;
use std::time::Duration;

fn new_daemon(host: &str, pid: i32) -> NewDaemon {
    NewDaemon {
        hostname: host.into(),
        pid,
        version: "1.2.3".into(),
        config: json!({"upstream": {"url": "http://127.0.0.1:8000", "concurrency": 64}}),
    }
}

/// Asserts `err` is a conflict of a daemon going `from` -> `to`.
fn assert_conflict(err: StoreError, from: &str, to: &str) {
    match err {
        StoreError::Conflict(t) => assert_eq!((t.kind, t.from, t.to), ("daemon", from, to)),
        other => panic!("expected a conflict, got {other:?}"),
    }
}

pub async fn register_records_a_running_daemon<S: Backend>(store: &S) {
    let d = store
        .register_daemon(new_daemon("host-a", 4242))
        .await
        .unwrap();
    assert_eq!(d.hostname, "host-a");
    assert_eq!(d.pid, 4242);
    assert_eq!(d.version, "1.2.3");
    assert_eq!(d.config, new_daemon("host-a", 4242).config);
    assert_eq!(d.status, DaemonStatus::Running);
    assert_eq!(d.stopped_at, None);
    assert_eq!(d.stats, DaemonStats::default());
    assert_eq!(d.last_heartbeat, d.started_at);
    assert_eq!(store.list_daemons().await.unwrap(), vec![d.clone()]);

    let other = store
        .register_daemon(new_daemon("host-a", 4242))
        .await
        .unwrap();
    assert_ne!(other.id, d.id, "every registration is a new daemon");
}

pub async fn heartbeat_updates_counters_and_time<S: Backend>(store: &S) {
    let d = store.register_daemon(new_daemon("h", 1)).await.unwrap();
    let bystander = store.register_daemon(new_daemon("h", 2)).await.unwrap();
    let before = store.list_daemons().await.unwrap();
    let then = |id| {
        before
            .iter()
            .find(|x: &&DaemonRecord| x.id == id)
            .unwrap()
            .last_heartbeat
    };
    let stats = DaemonStats {
        in_flight: 12,
        requests_done: 3400,
        requests_failed: 56,
    };
    store.heartbeat(d.id, stats).await.unwrap();
    let all = store.list_daemons().await.unwrap();
    let got = all.iter().find(|x| x.id == d.id).unwrap();
    assert_eq!(got.stats, stats);
    assert_eq!(got.status, DaemonStatus::Running);
    assert!(got.last_heartbeat > then(d.id));
    let other = all.iter().find(|x| x.id == bystander.id).unwrap();
    assert_eq!(other.stats, DaemonStats::default());
    assert_eq!(other.last_heartbeat, then(bystander.id));

    // Counters are replaced, not added.
    let later = DaemonStats {
        in_flight: 0,
        requests_done: 3500,
        requests_failed: 56,
    };
    store.heartbeat(d.id, later).await.unwrap();
    let all = store.list_daemons().await.unwrap();
    assert_eq!(all.iter().find(|x| x.id == d.id).unwrap().stats, later);
}

pub async fn a_stopped_daemon_cannot_heartbeat_or_stop_again<S: Backend>(store: &S) {
    let d = store.register_daemon(new_daemon("h", 1)).await.unwrap();
    let busy = DaemonStats {
        in_flight: 5,
        requests_done: 9,
        requests_failed: 1,
    };
    store.heartbeat(d.id, busy).await.unwrap();
    store.mark_daemon_stopped(d.id).await.unwrap();

    let got = store.list_daemons().await.unwrap().remove(0);
    assert_eq!(got.status, DaemonStatus::Stopped);
    assert!(got.stopped_at.is_some());
    assert_eq!(got.stats.in_flight, 0);
    assert_eq!((got.stats.requests_done, got.stats.requests_failed), (9, 1));

    let err = store.heartbeat(d.id, busy).await.unwrap_err();
    assert_conflict(err, "stopped", "running");
    let err = store.mark_daemon_stopped(d.id).await.unwrap_err();
    assert_conflict(err, "stopped", "stopped");
    // The refused heartbeat changed nothing.
    assert_eq!(store.list_daemons().await.unwrap(), vec![got]);
}

pub async fn a_dead_daemon_gets_a_conflict<S: Backend>(store: &S) {
    let d = store.register_daemon(new_daemon("h", 1)).await.unwrap();
    // A daemon that lost its standing retires itself as dead.
    assert_eq!(store.retire_daemon(d.id).await.unwrap(), 0);
    let err = store
        .heartbeat(d.id, DaemonStats::default())
        .await
        .unwrap_err();
    assert_conflict(err, "dead", "running");
    let err = store.mark_daemon_stopped(d.id).await.unwrap_err();
    assert_conflict(err, "dead", "stopped");
}

pub async fn an_unknown_daemon_is_not_found<S: Backend>(store: &S) {
    store.register_daemon(new_daemon("h", 1)).await.unwrap();
    let id = DaemonId::new();
    for err in [
        store
            .heartbeat(id, DaemonStats::default())
            .await
            .unwrap_err(),
        store.mark_daemon_stopped(id).await.unwrap_err(),
    ] {
        match err {
            StoreError::NotFound { what, id: shown } => {
                assert_eq!((what, shown), ("daemon", id.to_string()))
            }
            other => panic!("expected not found, got {other:?}"),
        }
    }
}

pub async fn list_daemons_puts_running_ones_first_newest_first<S: Backend>(store: &S) {
    assert!(store.list_daemons().await.unwrap().is_empty());
    let mut ids = Vec::new();
    for pid in 1..=5 {
        ids.push(
            store
                .register_daemon(new_daemon("h", pid))
                .await
                .unwrap()
                .id,
        );
    }
    store.mark_daemon_stopped(ids[1]).await.unwrap();
    store.mark_daemon_stopped(ids[3]).await.unwrap();
    store.retire_daemon(ids[4]).await.unwrap();

    let all = store.list_daemons().await.unwrap();
    let order: Vec<(i32, DaemonStatus)> = all.iter().map(|d| (d.pid, d.status)).collect();
    use DaemonStatus::*;
    assert_eq!(
        order,
        vec![
            (3, Running),
            (1, Running),
            (5, Dead),
            (4, Stopped),
            (2, Stopped)
        ]
    );
}

pub async fn live_daemons_counts_running_ones_with_fresh_heartbeats<S: Backend>(store: &S) {
    let a = store.register_daemon(new_daemon("h", 1)).await.unwrap();
    let b = store.register_daemon(new_daemon("h", 2)).await.unwrap();
    let c = store.register_daemon(new_daemon("h", 3)).await.unwrap();
    let fresh = Duration::from_secs(60);
    assert_eq!(store.live_daemons(fresh).await.unwrap(), 3);
    store.mark_daemon_stopped(a.id).await.unwrap();
    assert_eq!(store.live_daemons(fresh).await.unwrap(), 2);
    // Once b's heartbeat is a second old, only c's new one is fresh.
    let old = std::time::Duration::from_secs(1);
    crate::common::daemon::eventually(Duration::from_secs(10), "a second to pass", || async {
        let age = chrono::Utc::now() - b.last_heartbeat;
        age.to_std().is_ok_and(|age| age > old)
    })
    .await;
    store.heartbeat(c.id, DaemonStats::default()).await.unwrap();
    assert_eq!(store.live_daemons(old / 2).await.unwrap(), 1);
}
