//! `DaemonStore` against a real PostgreSQL: registration, heartbeats, stops
//! and the registry listing.

mod common;

use chrono::{DateTime, Utc};
use common::store;
use fusillade::domain::daemon::DaemonId;
use fusillade::store::{DaemonStats, DaemonStatus, NewDaemon};
use fusillade::{DaemonStore, StoreError};
use serde_json::json;
use sqlx::PgPool;

/// A time as PostgreSQL and chrono both read it.
fn at(text: &str) -> DateTime<Utc> {
    text.parse().unwrap()
}

fn daemon(host: &str, pid: i32) -> NewDaemon {
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

#[sqlx::test]
async fn register_records_a_running_daemon(pool: PgPool) {
    let store = store(&pool).await;
    let d = store.register_daemon(daemon("host-a", 4242)).await.unwrap();
    assert_eq!(d.hostname, "host-a");
    assert_eq!(d.pid, 4242);
    assert_eq!(d.version, "1.2.3");
    assert_eq!(d.config, daemon("host-a", 4242).config);
    assert_eq!(d.status, DaemonStatus::Running);
    assert_eq!(d.stopped_at, None);
    assert_eq!(d.stats, DaemonStats::default());
    assert_eq!(d.last_heartbeat, d.started_at);
    assert_eq!(store.list_daemons().await.unwrap(), vec![d.clone()]);

    let other = store.register_daemon(daemon("host-a", 4242)).await.unwrap();
    assert_ne!(other.id, d.id, "every registration is a new daemon");
}

#[sqlx::test]
async fn heartbeat_updates_counters_and_time(pool: PgPool) {
    let store = store(&pool).await;
    let d = store.register_daemon(daemon("h", 1)).await.unwrap();
    let bystander = store.register_daemon(daemon("h", 2)).await.unwrap();
    // Age the heartbeat so the new one is visibly later, without sleeping.
    sqlx::query("UPDATE daemons SET last_heartbeat = '2000-01-01Z'")
        .execute(&pool)
        .await
        .unwrap();
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
    assert!(got.last_heartbeat > at("2000-01-02T00:00:00Z"));
    let other = all.iter().find(|x| x.id == bystander.id).unwrap();
    assert_eq!(other.stats, DaemonStats::default());
    assert_eq!(other.last_heartbeat, at("2000-01-01T00:00:00Z"));

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

#[sqlx::test]
async fn a_stopped_daemon_cannot_heartbeat_or_stop_again(pool: PgPool) {
    let store = store(&pool).await;
    let d = store.register_daemon(daemon("h", 1)).await.unwrap();
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

#[sqlx::test]
async fn a_dead_daemon_gets_a_conflict(pool: PgPool) {
    let store = store(&pool).await;
    let d = store.register_daemon(daemon("h", 1)).await.unwrap();
    sqlx::query("UPDATE daemons SET status = 'dead', stopped_at = now() WHERE id = $1")
        .bind(d.id)
        .execute(&pool)
        .await
        .unwrap();
    let err = store
        .heartbeat(d.id, DaemonStats::default())
        .await
        .unwrap_err();
    assert_conflict(err, "dead", "running");
    let err = store.mark_daemon_stopped(d.id).await.unwrap_err();
    assert_conflict(err, "dead", "stopped");
}

#[sqlx::test]
async fn an_unknown_daemon_is_not_found(pool: PgPool) {
    let store = store(&pool).await;
    store.register_daemon(daemon("h", 1)).await.unwrap();
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

#[sqlx::test]
async fn list_daemons_puts_running_ones_first_newest_first(pool: PgPool) {
    let store = store(&pool).await;
    assert!(store.list_daemons().await.unwrap().is_empty());
    let mut ids = Vec::new();
    for pid in 1..=5 {
        ids.push(store.register_daemon(daemon("h", pid)).await.unwrap().id);
    }
    store.mark_daemon_stopped(ids[1]).await.unwrap();
    store.mark_daemon_stopped(ids[3]).await.unwrap();
    sqlx::query("UPDATE daemons SET status = 'dead', stopped_at = now() WHERE id = $1")
        .bind(ids[4])
        .execute(&pool)
        .await
        .unwrap();

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

#[sqlx::test]
async fn live_daemons_counts_running_ones_with_fresh_heartbeats(pool: sqlx::PgPool) {
    use fusillade::store::DaemonStore;
    let store = common::store(&pool).await;
    let new = || fusillade::domain::daemon::NewDaemon {
        hostname: "h".into(),
        pid: 1,
        version: "v".into(),
        config: serde_json::json!({}),
    };
    let a = store.register_daemon(new()).await.unwrap().id;
    let b = store.register_daemon(new()).await.unwrap().id;
    let c = store.register_daemon(new()).await.unwrap().id;
    let fresh = std::time::Duration::from_secs(60);
    assert_eq!(store.live_daemons(fresh).await.unwrap(), 3);
    store.mark_daemon_stopped(a).await.unwrap();
    sqlx::query("UPDATE daemons SET last_heartbeat = now() - interval '2 minutes' WHERE id = $1")
        .bind(b)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(store.live_daemons(fresh).await.unwrap(), 1);
    let _ = c;
}
