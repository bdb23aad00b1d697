//! `fusillade::store::migrate`: applies the schema, and is safe to run again.

use fusillade::store::migrate;
use sqlx::PgPool;

/// The tables the schema creates, sorted.
const TABLES: &[&str] = &[
    "batches",
    "daemons",
    "file_parts",
    "files",
    "model_slots",
    "request_results",
    "request_templates",
    "requests",
    "response_steps",
    "route_pauses",
];

async fn tables(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = 'public' AND table_name NOT LIKE '\\_sqlx%' ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn applied(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test]
async fn migrate_on_a_migrated_database_is_a_no_op(pool: PgPool) {
    let before = applied(&pool).await;
    assert!(before >= 1);
    migrate(&pool).await.unwrap();
    migrate(&pool).await.unwrap();
    assert_eq!(applied(&pool).await, before);
    assert_eq!(tables(&pool).await, TABLES);
}

#[sqlx::test(migrations = false)]
async fn migrate_from_scratch_twice(pool: PgPool) {
    assert!(tables(&pool).await.is_empty());
    migrate(&pool).await.unwrap();
    assert_eq!(tables(&pool).await, TABLES);
    let count = applied(&pool).await;
    assert_eq!(count, fusillade::store::MIGRATOR.iter().count() as i64);
    migrate(&pool).await.unwrap();
    assert_eq!(applied(&pool).await, count);
    assert_eq!(tables(&pool).await, TABLES);
}
