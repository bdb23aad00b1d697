//! `fusillade migrate`: applies the schema, of PostgreSQL or of an embedded
//! database alike (the default one when nothing names a database).

use super::setup::{Common, load_config, store};
use super::{CliError, runtime};

/// Arguments of `fusillade migrate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    common: Common,
}

/// Applies every migration not yet applied, then says how many there are.
pub async fn run(args: Args) -> Result<(), CliError> {
    let config = load_config(args.common.config.as_deref())?;
    let db = args.common.database(&config)?;
    let store = store(&db, &config).await?;
    let applied = store.migrations_applied().await.map_err(runtime)?;
    println!("database is up to date ({applied} migrations applied)");
    Ok(())
}
