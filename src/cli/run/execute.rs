//! The run itself: a daemon scoped to the batch, watched until the batch
//! ends, the upstream proves broken, or a signal stops it.

use crate::cli::progress::Progress;
use crate::cli::setup::shutdown_on_signals;
use crate::cli::{CliError, Kind, runtime};
use anyhow::anyhow;
use fusillade::daemon::{Daemon, Monitor, UpstreamFailure};
use fusillade::domain::batch::Batch;
use fusillade::store::{BatchStore, Owner, Store};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often progress is read from the database.
const POLL: Duration = Duration::from_millis(250);

/// How long one progress read may take before the run says it is waiting
/// for the database.
const DB_PATIENCE: Duration = Duration::from_secs(3);

/// The first calls that must all fail the same way before the run stops.
const FIRST_CALLS: i64 = 3;

/// Runs `batch` with a daemon scoped to it until it ends, the upstream
/// proves broken, or a signal stops it; returns the ended batch.
pub async fn execute(
    store: &Store,
    config: fusillade::config::Config,
    batch: &Batch,
    quiet: bool,
) -> Result<Batch, CliError> {
    let shutdown = shutdown_on_signals();
    let (_tx, config_rx) = tokio::sync::watch::channel(Arc::new(config));
    // As many calls as must fail the same way before the run stops: the
    // lines left, at most a few.
    let left = batch.request_counts.total - batch.request_counts.finished();
    let first_calls = left.clamp(1, FIRST_CALLS) as u32;
    let daemon = Daemon::new(store.clone(), config_rx)
        .scoped_to(batch.id)
        .holding_misconfigured_calls(first_calls);
    tracing::debug!(batch = %batch.id, first_calls, "starting a daemon scoped to the batch");
    let monitor = daemon.monitor();
    let daemon_stop = CancellationToken::new();
    let running = tokio::spawn(daemon.run(daemon_stop.clone()));

    let mut progress = Progress::new(batch.request_counts.total, quiet);
    let (last, broken) = watch(store, batch, &monitor, &shutdown, &mut progress).await?;
    daemon_stop.cancel();
    match running.await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "daemon stopped with an error"),
        Err(e) => tracing::warn!(error = %e, "daemon task failed"),
    }
    // Counts after the daemon released what it held, so they agree with
    // what the store keeps for the rerun.
    let last = if last.status.is_terminal() {
        last
    } else {
        // With the database away, the last counts seen will do.
        match read(store, batch).await {
            Ok(b) => b,
            Err(Read::Unavailable(_)) => last,
            Err(Read::Failed(e)) => return Err(e),
        }
    };
    progress.finish(&last.request_counts);
    drop(progress);
    let c = &last.request_counts;
    if let Some(f) = broken {
        return Err(runtime(anyhow!(
            "stopped: the first {} calls to {} all failed: {}. Nothing was recorded for them; \
             fix the upstream (--upstream, --api-key-env or the config) and run the same command again to resume",
            f.calls,
            f.url,
            f.cause
        )));
    }
    if !last.status.is_terminal() {
        return Err(CliError {
            kind: Kind::Interrupted,
            error: anyhow!(
                "interrupted with {} of {} requests finished (batch {}); run the same command again to resume",
                c.finished(),
                c.total,
                last.id
            ),
        });
    }
    Ok(last)
}

/// Polls the batch until it ends, a signal fires or the first calls show a
/// broken upstream. While the database is away it says so once, keeps
/// polling, and goes on when it is back (the daemon rides it out too).
async fn watch(
    store: &Store,
    batch: &Batch,
    monitor: &Monitor,
    shutdown: &CancellationToken,
    progress: &mut Progress,
) -> Result<(Batch, Option<UpstreamFailure>), CliError> {
    let mut last = batch.clone();
    let mut waiting = false;
    loop {
        match read(store, batch).await {
            Ok(b) => {
                if waiting {
                    tracing::warn!("the database is back; resuming");
                    waiting = false;
                }
                if b.status.is_terminal() || shutdown.is_cancelled() {
                    return Ok((b, None));
                }
                if let Some(f) = monitor.broken_upstream() {
                    return Ok((b, Some(f)));
                }
                progress.show(
                    &b.request_counts,
                    monitor.in_flight(),
                    &monitor.route_limits(),
                    false,
                );
                last = b;
            }
            Err(Read::Unavailable(why)) => {
                if !waiting {
                    tracing::warn!(
                        error = %why,
                        "waiting for the database; the run goes on when it is back"
                    );
                    waiting = true;
                }
                if shutdown.is_cancelled() {
                    return Ok((last, None));
                }
            }
            Err(Read::Failed(e)) => return Err(e),
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = shutdown.cancelled() => {}
        }
    }
}

/// Why the batch could not be read.
enum Read {
    /// The database is away (or slower than [`DB_PATIENCE`]): try again.
    Unavailable(String),
    /// Anything else ends the run.
    Failed(CliError),
}

/// The batch as stored, waiting at most [`DB_PATIENCE`] (a pool's own
/// wait for a connection is half a minute).
async fn read(store: &Store, batch: &Batch) -> Result<Batch, Read> {
    match tokio::time::timeout(DB_PATIENCE, store.get_batch(Owner::Any, batch.id)).await {
        Err(_) => Err(Read::Unavailable(format!(
            "no answer within {} s",
            DB_PATIENCE.as_secs()
        ))),
        Ok(Err(e)) if e.is_unavailable() => Err(Read::Unavailable(e.to_string())),
        Ok(Err(e)) => Err(Read::Failed(runtime(e))),
        Ok(Ok(Some(b))) => Ok(b),
        Ok(Ok(None)) => Err(Read::Failed(runtime(anyhow!(
            "batch {} disappeared",
            batch.id
        )))),
    }
}
