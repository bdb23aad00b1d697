//! Returns the claims of dead daemons to the queue. Every daemon runs it; the
//! statement is idempotent, so several at once do no harm.

use super::{DaemonBackend, Shared};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub(super) async fn run<S: DaemonBackend>(shared: Arc<Shared<S>>, stop: CancellationToken) {
    loop {
        let stale_after = shared.config.borrow().daemon.stale_after;
        let every = (stale_after / 3).max(Duration::from_millis(200));
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        run_once(&shared, stale_after).await;
    }
}

/// One rescue pass.
pub(super) async fn run_once<S: DaemonBackend>(shared: &Shared<S>, stale_after: Duration) {
    match shared.store.rescue(stale_after).await {
        Ok(r) if r.requests > 0 || r.dead_daemons > 0 => tracing::info!(
            dead_daemons = r.dead_daemons,
            requests = r.requests,
            "rescued claims of dead daemons"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "rescue failed"),
    }
}
