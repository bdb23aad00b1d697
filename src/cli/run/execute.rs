//! The run itself: a daemon scoped to the batch, watched until the batch
//! ends, the upstream proves broken, or a signal stops it.

use crate::cli::progress::Progress;
use crate::cli::setup::shutdown_on_signals;
use crate::cli::{CliError, Kind, runtime};
use anyhow::anyhow;
use fusillade::daemon::{Daemon, Monitor, UpstreamFailure};
use fusillade::domain::batch::Batch;
use fusillade::store::{BatchStore, Owner, PostgresStore};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often progress is read from the database.
const POLL: Duration = Duration::from_millis(250);

/// The first calls that must all fail the same way before the run stops.
const FIRST_CALLS: i64 = 3;

/// Runs `batch` with a daemon scoped to it until it ends, the upstream
/// proves broken, or a signal stops it; returns the ended batch.
pub async fn execute(
    store: &PostgresStore,
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
        fetch(store, batch).await?
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
/// broken upstream.
async fn watch(
    store: &PostgresStore,
    batch: &Batch,
    monitor: &Monitor,
    shutdown: &CancellationToken,
    progress: &mut Progress,
) -> Result<(Batch, Option<UpstreamFailure>), CliError> {
    loop {
        let b = fetch(store, batch).await?;
        if b.status.is_terminal() || shutdown.is_cancelled() {
            return Ok((b, None));
        }
        if let Some(f) = monitor.broken_upstream() {
            return Ok((b, Some(f)));
        }
        progress.show(&b.request_counts, monitor.in_flight(), false);
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = shutdown.cancelled() => {}
        }
    }
}

async fn fetch(store: &PostgresStore, batch: &Batch) -> Result<Batch, CliError> {
    store
        .get_batch(Owner::Any, batch.id)
        .await
        .map_err(runtime)?
        .ok_or_else(|| runtime(anyhow!("batch {} disappeared", batch.id)))
}
