//! The primary (read-write) and replica (read-only) pools.

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

/// Connections of the pool `fusillade serve` and `worker` give a store as
/// its primary (the API's own reads and writes, with `serve`).
pub const API_CONNECTIONS: u32 = 8;

/// A primary pool for writes and reads that decide writes, and a replica
/// pool for API reads. Both may point at the same server.
#[derive(Debug, Clone)]
pub struct DbPools {
    /// Takes every write.
    pub primary: PgPool,
    /// Serves reads that may lag a little.
    pub replica: PgPool,
}

impl DbPools {
    /// One pool for both roles.
    pub fn single(pool: PgPool) -> Self {
        Self {
            primary: pool.clone(),
            replica: pool,
        }
    }
}

impl From<PgPool> for DbPools {
    fn from(pool: PgPool) -> Self {
        Self::single(pool)
    }
}

/// Pools for tests: the given pool as primary, and a second pool on the same
/// database whose sessions are read-only, so a write sent to the replica
/// fails the test instead of passing unnoticed.
#[derive(Debug, Clone)]
pub struct TestDbPools {
    pools: DbPools,
}

impl TestDbPools {
    /// Builds the read-only companion of `pool`.
    pub async fn new(pool: PgPool) -> Result<Self, sqlx::Error> {
        let options = pool.connect_options().as_ref().clone();
        let replica = PgPoolOptions::new()
            .max_connections(4)
            .after_connect(|conn, _meta| {
                Box::pin(async move {
                    sqlx::query("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
                        .execute(conn)
                        .await?;
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        Ok(Self {
            pools: DbPools {
                primary: pool,
                replica,
            },
        })
    }

    /// The primary pool (read-write).
    pub fn primary(&self) -> &PgPool {
        &self.pools.primary
    }

    /// The replica pool (read-only).
    pub fn replica(&self) -> &PgPool {
        &self.pools.replica
    }
}

impl From<TestDbPools> for DbPools {
    fn from(t: TestDbPools) -> Self {
        t.pools
    }
}
