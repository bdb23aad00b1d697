//! `TestDbPools`: the replica pool is read-only, so a store write sent to it
//! would fail its test instead of passing unnoticed.

use fusillade::{DbPools, IngestLimits, PostgresStore, TestDbPools};
use sqlx::PgPool;

#[sqlx::test]
async fn the_replica_refuses_writes_and_serves_reads(pool: PgPool) {
    let pools = TestDbPools::new(pool.clone()).await.unwrap();
    let insert = "INSERT INTO daemons (id, hostname, pid, version) \
                  VALUES (gen_random_uuid(), 'h', 1, 'v')";

    let err = sqlx::query(insert)
        .execute(pools.replica())
        .await
        .unwrap_err();
    let db = err.as_database_error().expect("a database error");
    assert_eq!(db.code().as_deref(), Some("25006"), "{db}"); // read_only_sql_transaction
    // Every connection of the replica is read-only, not just the first.
    let mut conns = Vec::new();
    for _ in 0..3 {
        conns.push(pools.replica().acquire().await.unwrap());
    }
    for conn in &mut conns {
        assert!(sqlx::query(insert).execute(&mut **conn).await.is_err());
        let ro: String = sqlx::query_scalar("SHOW transaction_read_only")
            .fetch_one(&mut **conn)
            .await
            .unwrap();
        assert_eq!(ro, "on");
    }
    drop(conns);

    // The primary writes; the replica reads what it wrote.
    sqlx::query(insert).execute(pools.primary()).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM daemons")
        .fetch_one(pools.replica())
        .await
        .unwrap();
    assert_eq!(n, 1);

    let split: DbPools = pools.into();
    assert!(sqlx::query(insert).execute(&split.replica).await.is_err());
    sqlx::query(insert).execute(&split.primary).await.unwrap();

    // A single pool plays both roles and writes through either.
    let single = DbPools::single(pool);
    sqlx::query(insert).execute(&single.replica).await.unwrap();
}

#[sqlx::test]
async fn a_store_over_test_pools_reads_from_the_read_only_replica(pool: PgPool) {
    let store = PostgresStore::new(TestDbPools::new(pool).await.unwrap());
    assert_eq!(store.limits(), &IngestLimits::default());
    let read_only = |p: &PgPool| {
        let p = p.clone();
        async move {
            sqlx::query_scalar::<_, String>("SHOW transaction_read_only")
                .fetch_one(&p)
                .await
                .unwrap()
        }
    };
    assert_eq!(read_only(&store.pools().replica).await, "on");
    assert_eq!(read_only(&store.pools().primary).await, "off");
    let limits = IngestLimits {
        max_line_bytes: 10,
        ..Default::default()
    };
    let store = store.with_limits(limits.clone());
    assert_eq!(store.limits(), &limits);
}

#[sqlx::test]
async fn a_connection_cut_by_the_server_is_unavailable_a_refused_statement_is_not(pool: PgPool) {
    use fusillade::store::StoreError;
    use std::time::{Duration, Instant};
    let mut conn = pool.acquire().await.unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    // A refused statement: the database is there.
    let refused = sqlx::query("SELECT 1 / 0").execute(&mut *conn).await;
    assert!(!StoreError::from(refused.unwrap_err()).is_unavailable());

    // The server ends the session, as a shutdown or restart does.
    let ended: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(ended);
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let alive: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)")
                .bind(pid)
                .fetch_one(&pool)
                .await
                .unwrap();
        if !alive {
            break;
        }
        assert!(Instant::now() < until, "the session did not end");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cut = sqlx::query("SELECT 1")
        .execute(&mut *conn)
        .await
        .unwrap_err();
    let code = cut
        .as_database_error()
        .and_then(|d| d.code().map(|c| c.into_owned()));
    let e = StoreError::from(cut);
    assert!(e.is_unavailable(), "{e} ({code:?})");
    assert!(StoreError::from(sqlx::Error::PoolTimedOut).is_unavailable());
}

/// The application names of the connections open on this test's database.
async fn names_on(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT application_name FROM pg_stat_activity WHERE datname = current_database()",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

#[sqlx::test]
async fn each_pool_names_its_role_in_pg_stat_activity(pool: PgPool) {
    use fusillade::store::MaintenanceStore;
    // No name in the URL: "fusillade" and the role.
    let store = PostgresStore::new(pool.clone());
    store.finalize(10).await.unwrap();
    let names = names_on(&pool).await;
    assert!(
        names.iter().any(|n| n == "fusillade background"),
        "{names:?}"
    );

    // A name the URL gives comes first.
    let named = pool
        .connect_options()
        .as_ref()
        .clone()
        .application_name("billing");
    let named = sqlx::postgres::PgPoolOptions::new().connect_lazy_with(named);
    let store = PostgresStore::new(named);
    store.finalize(10).await.unwrap();
    let names = names_on(&pool).await;
    assert!(names.iter().any(|n| n == "billing background"), "{names:?}");
}
