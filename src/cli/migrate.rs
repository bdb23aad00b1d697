//! `fusillade migrate`: applies the schema.

use super::{CliError, connect, database_url, runtime};

/// Arguments of `fusillade migrate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// PostgreSQL URL (default: $DATABASE_URL).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
}

/// Applies every migration not yet applied, then says how many there are.
pub async fn run(args: Args) -> Result<(), CliError> {
    let url = database_url(args.database_url)?;
    let pool = connect(&url).await?;
    fusillade::store::migrate(&pool).await.map_err(runtime)?;
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&pool)
        .await
        .map_err(runtime)?;
    println!("database is up to date ({applied} migrations applied)");
    Ok(())
}
