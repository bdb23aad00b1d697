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
