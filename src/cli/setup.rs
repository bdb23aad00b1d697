//! What every long-running subcommand does first: read the config, open the
//! store (see `fusillade::store::open`), and wire signals.

use super::database::Database;
use super::{CliError, DEFAULT_ACQUIRE_TIMEOUT, runtime, usage};
use fusillade::config::Config;
use fusillade::store::{OpenError, Store};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Flags shared by `worker`, `serve`, `migrate` and `run`.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// TOML configuration file (its keys are described in the README).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Database URL: postgres://... or sqlite://PATH (an embedded database).
    /// Default: $DATABASE_URL, then `database_url` in the config, then an
    /// embedded database at $XDG_STATE_HOME/fusillade/fusillade.db (else
    /// ~/.local/state/fusillade/fusillade.db).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_name = "URL")]
    pub database_url: Option<String>,
}

impl Common {
    /// The database these flags and `config` name (see [`Database::resolve`]).
    pub fn database(&self, config: &Config) -> Result<Database, CliError> {
        Database::resolve(self.database_url.as_deref(), config)
    }
}

/// Reads the config file, or the defaults without one.
pub fn load_config(path: Option<&Path>) -> Result<Config, CliError> {
    match path {
        Some(p) if !p.exists() => Err(usage(anyhow::anyhow!(
            "config file {} does not exist",
            p.display()
        ))),
        Some(p) => Config::load(p).map_err(usage),
        None => Ok(Config::default()),
    }
}

/// Opens `db` with its schema up to date and the config's `[api]` limits.
pub async fn store(db: &Database, config: &Config) -> Result<Store, CliError> {
    store_waiting(db, config, DEFAULT_ACQUIRE_TIMEOUT).await
}

/// Like [`store`], with statements waiting at most `acquire_timeout` for a
/// pooled connection.
pub async fn store_waiting(
    db: &Database,
    config: &Config,
    acquire_timeout: std::time::Duration,
) -> Result<Store, CliError> {
    let mut config = config.clone();
    config.database_url = Some(db.url.clone());
    fusillade::store::open(&config, acquire_timeout)
        .await
        .map_err(|e| match e {
            OpenError::NoDatabase => usage(anyhow::anyhow!(
                "no database: pass --database-url, set DATABASE_URL, or set database_url in the config"
            )),
            e if e.is_configuration() => usage(e),
            e => runtime(e),
        })
}

/// Parses a `--listen` address; a host name (`localhost:0`) is resolved,
/// and the first address it resolves to is used.
pub fn parse_listen(s: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    s.to_socket_addrs()
        .map_err(|e| format!("{s:?} is not host:port ({e})"))?
        .next()
        .ok_or_else(|| format!("{s:?} resolves to no address"))
}

/// A token that fires on SIGTERM or Ctrl-C. A second Ctrl-C exits at once.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        wait_for_stop_signal().await;
        tracing::info!("stopping: finishing calls in flight (Ctrl-C again to quit at once)");
        t.cancel();
        wait_for_stop_signal().await;
        eprintln!("fusillade: stopped at once; claims will be recovered by the next daemon");
        std::process::exit(130);
    });
    token
}

async fn wait_for_stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A config channel that reloads the file on SIGHUP (a bad file is logged
/// and the running config kept). `adjust` is applied to every loaded config.
pub fn reload_on_sighup(
    path: Option<PathBuf>,
    initial: Config,
    adjust: impl Fn(Config) -> Result<Config, CliError> + Send + 'static,
) -> watch::Receiver<Arc<Config>> {
    let (tx, rx) = watch::channel(Arc::new(initial));
    #[cfg(unix)]
    if let Some(path) = path {
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut hup) = signal(SignalKind::hangup()) else {
                return;
            };
            while hup.recv().await.is_some() {
                match load_config(Some(&path)).and_then(&adjust) {
                    Ok(c) => {
                        tracing::info!(file = %path.display(), "configuration reloaded");
                        let _ = tx.send(Arc::new(c));
                    }
                    Err(e) => tracing::error!(error = %e.error, "configuration not reloaded"),
                }
            }
        });
    }
    #[cfg(not(unix))]
    let _ = (path, adjust, tx);
    rx
}
