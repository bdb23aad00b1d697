//! `fusillade serve`: the OpenAI-compatible HTTP API and the daemon in one
//! process; `--api-only` runs the API alone, for API replicas in front of
//! separate `fusillade worker`s, and so needs PostgreSQL. Without a
//! database setting it uses the embedded default (see `cli::database`).

use super::setup::{Common, load_config, reload_on_sighup, shutdown_on_signals, store_waiting};
use super::{CliError, runtime, usage};
use anyhow::anyhow;
use fusillade::api::{ApiState, health, router};
use fusillade::config::Config;
use fusillade::daemon::Daemon;
use fusillade::store::API_ACQUIRE_TIMEOUT;
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

/// Where the API listens when neither the flag nor the config says.
const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// How long open connections (a long download, say) may take to finish after
/// a stop is asked for, before the server stops anyway.
const HTTP_GRACE: Duration = Duration::from_secs(30);

/// Arguments of `fusillade serve`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on (default: `listen` in the config, else 127.0.0.1:8080).
    /// Port 0 picks a free port; the address is printed as `listening on URL`.
    #[arg(long, value_name = "ADDR", value_parser = super::setup::parse_listen)]
    listen: Option<SocketAddr>,
    /// Run the API without the daemon (requests are run by `fusillade
    /// worker`s); needs PostgreSQL.
    #[arg(long)]
    api_only: bool,
    #[command(flatten)]
    common: Common,
}

/// Refuses a config that would serve without keys on a reachable address.
fn check_exposure(listen: SocketAddr, config: &Config) -> Result<(), CliError> {
    if config.auth.is_none() && !listen.ip().is_loopback() {
        return Err(usage(anyhow!(
            "refusing to listen on {listen} without [auth] keys: add [auth] keys to the config, \
             or listen on a loopback address such as 127.0.0.1"
        )));
    }
    Ok(())
}

/// Serves until SIGTERM or Ctrl-C; SIGHUP reloads the config (auth keys and
/// the daemon's limits included).
pub async fn run(args: Args) -> Result<(), CliError> {
    let config = load_config(args.common.config.as_deref())?;
    let listen = match (args.listen, config.listen) {
        (Some(l), _) | (None, Some(l)) => l,
        (None, None) => DEFAULT_LISTEN.parse().expect("a valid address"),
    };
    check_exposure(listen, &config)?;
    let db = args.common.database(&config)?;
    if args.api_only {
        db.require_shared("fusillade serve --api-only")?;
    }
    let store = store_waiting(&db, &config, API_ACQUIRE_TIMEOUT).await?;
    // The first line on stderr (stdout's is the address, for scripts).
    eprintln!("{}", db.describe());
    // A reload that would expose the API without keys is refused, and the
    // running config kept.
    let config = reload_on_sighup(args.common.config.clone(), config, move |c| {
        check_exposure(listen, &c)?;
        Ok(c)
    });
    if let Some(handle) = health::install_recorder() {
        tokio::spawn(health::upkeep(handle));
    }
    let shutdown = shutdown_on_signals();

    let listener = std::net::TcpListener::bind(listen)
        .map_err(|e| usage(anyhow!("cannot listen on {listen}: {e}")))?;
    listener.set_nonblocking(true).map_err(runtime)?;
    let bound = listener.local_addr().map_err(runtime)?;
    tracing::info!(address = %bound, daemon = !args.api_only, "serving the API");
    // On stdout, for scripts and tests that start the server on port 0.
    println!("listening on http://{bound}");
    let _ = std::io::stdout().flush();

    let daemon = (!args.api_only).then(|| {
        tokio::spawn(Daemon::new(store.clone(), config.clone()).run(shutdown.child_token()))
    });
    let app = router(ApiState::new(store, config));
    let stop = shutdown.clone();
    // The API runs on a runtime of its own. On one runtime, a hundred
    // clients polling in step put a hundred handler tasks in the queues the
    // daemon's tasks wait in, every few milliseconds; apart, the operating
    // system shares the cores between the two and the daemon's claims,
    // writes and heartbeat never queue behind API calls. Measured with
    // `fusillade-bench api-load --scenario poll`: reads' p99 from 44-53 ms
    // to 32-34 ms.
    let api_runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("fusillade-api")
        .enable_all()
        .build()
        .map_err(runtime)?;
    let server = api_runtime.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
    });
    let served = tokio::select! {
        r = server => r,
        // Open connections get a grace period, then the server stops anyway.
        _ = async { shutdown.cancelled().await; tokio::time::sleep(HTTP_GRACE).await } => {
            tracing::warn!("connections still open after the grace period; closing them");
            Ok(Ok(()))
        }
    };
    let mut failure = match served {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(runtime(anyhow!("the HTTP server failed: {e}"))),
        Err(e) => Some(runtime(anyhow!("the HTTP server task failed: {e}"))),
    };
    // The server stops only on a signal or failure; make sure the daemon stops too.
    shutdown.cancel();
    if let Some(daemon) = daemon {
        match daemon.await {
            Ok(Ok(report)) => tracing::info!(
                completed = report.completed,
                failed = report.failed,
                "daemon stopped"
            ),
            Ok(Err(e)) => {
                failure.get_or_insert(runtime(anyhow!("the daemon failed: {e}")));
            }
            Err(e) => {
                failure.get_or_insert(runtime(anyhow!("the daemon task failed: {e}")));
            }
        }
    }
    // Its tasks have ended or been given their grace period.
    api_runtime.shutdown_background();
    failure.map_or(Ok(()), Err)
}
