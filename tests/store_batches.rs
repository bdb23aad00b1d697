//! `BatchStore` on PostgreSQL alone: how its unique constraints sort into
//! typed errors. Everything else about batches runs on every backend in
//! tests/conformance/batches.rs.

mod common;

use common::*;
use fusillade::BatchStore;
use fusillade::StoreError;
use fusillade::store::NewBatch;
use sqlx::PgPool;

/// The store names the unique key a write broke, so that no caller reads a
/// constraint's name: a copy of a batch with a new id breaks its owner's
/// idempotency key, and the same id breaks the batch id.
#[sqlx::test]
async fn a_second_row_with_a_unique_key_is_a_typed_duplicate(pool: PgPool) {
    use fusillade::store::UniqueKey;
    let store = store(&pool).await;
    let file = upload(&store, "alice", &valid_file("r", 2)).await;
    let batch = store
        .create_batch(NewBatch {
            idempotency_key: Some("k"),
            ..new_batch("alice", file.id, CHAT)
        })
        .await
        .unwrap();
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("CREATE TEMP TABLE copy ON COMMIT DROP AS SELECT * FROM batches WHERE id = $1")
        .bind(batch.id)
        .execute(&mut *tx)
        .await
        .unwrap();
    let copy = async |tx: &mut sqlx::PgConnection, change: &str| -> StoreError {
        sqlx::query(change).execute(&mut *tx).await.unwrap();
        let e = sqlx::query("INSERT INTO batches SELECT * FROM copy")
            .execute(&mut *tx)
            .await
            .unwrap_err();
        StoreError::from(e)
    };
    sqlx::query("SAVEPOINT s").execute(&mut *tx).await.unwrap();
    let e = copy(&mut tx, "UPDATE copy SET id = gen_random_uuid()").await;
    assert!(
        matches!(
            e,
            StoreError::Duplicate {
                key: UniqueKey::IdempotencyKey,
                ..
            }
        ),
        "{e:?}"
    );
    sqlx::query("ROLLBACK TO SAVEPOINT s")
        .execute(&mut *tx)
        .await
        .unwrap();
    let e = copy(&mut tx, "UPDATE copy SET idempotency_key = NULL").await;
    assert!(
        matches!(
            e,
            StoreError::Duplicate {
                key: UniqueKey::BatchId,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(!e.is_unavailable());
}

/// Creates that arrive together are written by one statement; when that
/// statement fails, each create is written alone, so that only the create at
/// fault fails and the others are made. The fault is planted by a trigger
/// refusing one batch by its metadata.
#[sqlx::test]
async fn a_create_that_fails_in_a_group_fails_alone(pool: PgPool) {
    let store = store(&pool).await;
    let file = upload(&store, "alice", &valid_file("r", 3)).await;
    fail_inserts_where(
        &pool,
        "batches",
        "NEW.metadata ->> 'refuse' = 'yes'",
        "23514",
    )
    .await;
    let new = |refuse: bool| NewBatch {
        metadata: Some(
            [(
                "refuse".to_owned(),
                if refuse { "yes" } else { "no" }.to_owned(),
            )]
            .into(),
        ),
        ..new_batch("alice", file.id, CHAT)
    };
    // Polled together on one thread, the ten are queued before the group
    // writer runs, so they go in one statement.
    let results =
        futures_util::future::join_all((0..10).map(|i| store.create_batch(new(i == 6)))).await;
    for (i, r) in results.iter().enumerate() {
        match r {
            Ok(b) if i != 6 => assert_eq!(b.request_counts.total, 3),
            Err(e) if i == 6 => assert!(e.to_string().contains("planted refusal"), "{e}"),
            other => panic!("create {i}: {other:?}"),
        }
    }
    let counts: (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM batches), (SELECT count(*) FROM requests), \
                (SELECT count(*) FROM files WHERE kind <> 'input')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(counts, (9, 27, 18));
}

/// While every lane of the grouped creates is held (here by a lock that
/// keeps their statements waiting), a create that no lane takes is refused
/// as "unavailable" once the API's wait for a connection is over, instead of
/// waiting for ever; the held creates are made when the lock goes.
#[sqlx::test]
async fn a_create_that_no_lane_takes_in_time_is_refused_as_unavailable(pool: PgPool) {
    let short = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(std::time::Duration::from_millis(500))
        .connect_with(pool.connect_options().as_ref().clone())
        .await
        .unwrap();
    let store = store(&short).await;
    let file = upload(&store, "alice", &valid_file("r", 2)).await;
    let mut lock = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE batches IN EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    // One create at a time, each waiting for the lock before the next is
    // sent, so that each holds a lane of its own.
    let mut held = Vec::new();
    for n in 1..=fusillade::store::CREATE_LANES as i64 {
        let store = store.clone();
        held.push(tokio::spawn(async move {
            store.create_batch(new_batch("alice", file.id, CHAT)).await
        }));
        let what = format!("{n} creates waiting for the lock");
        common::daemon::eventually(std::time::Duration::from_secs(30), &what, || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            waiting == n
        })
        .await;
    }
    let err = store
        .create_batch(new_batch("alice", file.id, CHAT))
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    lock.commit().await.unwrap();
    for create in held {
        assert_eq!(create.await.unwrap().unwrap().request_counts.total, 2);
    }
    let batches: i64 = sqlx::query_scalar("SELECT count(*) FROM batches")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(batches, fusillade::store::CREATE_LANES as i64);
}
