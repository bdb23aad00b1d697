//! `fusillade worker`: the daemon alone, for scaling out. Several workers
//! share one PostgreSQL database; an embedded one is refused.

use super::setup::{Common, load_config, reload_on_sighup, shutdown_on_signals, store};
use super::{CliError, runtime};
use fusillade::daemon::Daemon;

/// Arguments of `fusillade worker`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    common: Common,
}

/// Runs a daemon until SIGTERM or Ctrl-C; SIGHUP reloads the config.
pub async fn run(args: Args) -> Result<(), CliError> {
    let config = load_config(args.common.config.as_deref())?;
    let db = args.common.database(&config)?;
    db.require_shared("fusillade worker")?;
    let store = store(&db, &config).await?;
    let config = reload_on_sighup(args.common.config.clone(), config, Ok);
    let shutdown = shutdown_on_signals();
    Daemon::new(store, config)
        .run(shutdown)
        .await
        .map_err(runtime)?;
    Ok(())
}
