//! A throwaway database: created and migrated on the server of
//! `DATABASE_URL`, dropped when done. Shared by the property tests and the
//! fuzz target `api_request`.

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, Executor, PgPool};

/// A database of its own, migrated, dropped when this is dropped; with the
/// runtime its pool lives on, which the cases block on one at a time.
pub struct ScratchDb {
    /// Runs each case's async part.
    pub rt: tokio::runtime::Runtime,
    /// A pool on the new database.
    pub pool: PgPool,
    admin: PgConnectOptions,
    name: String,
}

impl ScratchDb {
    /// Creates and migrates a database of a new name on the server of
    /// `DATABASE_URL`.
    pub fn fresh() -> Self {
        Self::named(&format!("fusillade_prop_{}", uuid::Uuid::new_v4().simple()))
    }

    /// Like [`ScratchDb::fresh`] with this name; a database left by an
    /// earlier run under the name is dropped first.
    pub fn named(name: &str) -> Self {
        let url = std::env::var("DATABASE_URL").expect("DATABASE_URL names the test server");
        let admin: PgConnectOptions = url.parse().expect("DATABASE_URL is a PostgreSQL URL");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let name = name.to_owned();
        let pool = rt.block_on(async {
            let mut conn = admin.connect().await.expect("connect to DATABASE_URL");
            conn.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                .await
                .expect("drop a database left behind");
            conn.execute(format!("CREATE DATABASE {name}").as_str())
                .await
                .expect("create a scratch database");
            conn.close().await.ok();
            let pool = PgPoolOptions::new()
                .max_connections(8)
                .connect_with(admin.clone().database(&name))
                .await
                .expect("connect to the scratch database");
            fusillade::store::migrate(&pool).await.expect("migrate");
            pool
        });
        Self {
            rt,
            pool,
            admin,
            name,
        }
    }
}

impl Drop for ScratchDb {
    fn drop(&mut self) {
        let pool = self.pool.clone();
        let admin = self.admin.clone();
        let name = self.name.clone();
        self.rt.block_on(async move {
            pool.close().await;
            if let Ok(mut conn) = admin.connect().await {
                let _ = conn
                    .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                    .await;
            }
        });
    }
}
