//! Returns the claims of dead daemons to the queue. Every daemon runs it; the
//! statement is idempotent, so several at once do no harm.
//!
//! A daemon never declares itself dead, and declares others dead only while
//! its own heartbeats have been going through steadily for a whole stale
//! window (see `Standing::may_declare_dead`): after a stall that held every
//! heartbeat back, its own included, the others get a fair chance to beat
//! again first. A dead daemon's slots are forgotten one stale window after
//! its death: by then a daemon that was merely slow has stopped its calls on
//! its own (see `heartbeat`).

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
        if shared.standing.is_fenced() {
            continue; // this daemon is the one in trouble
        }
        run_once(&shared, stale_after).await;
    }
}

/// One rescue pass.
pub(super) async fn run_once<S: DaemonBackend>(shared: &Shared<S>, stale_after: Duration) {
    let declare = shared.standing.may_declare_dead(stale_after);
    match shared
        .store
        .rescue(shared.id(), declare.then_some(stale_after), stale_after)
        .await
    {
        Ok(r) if r.requests > 0 || r.dead_daemons > 0 => tracing::info!(
            dead_daemons = r.dead_daemons,
            requests = r.requests,
            "rescued claims of dead daemons"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "rescue failed"),
    }
}
