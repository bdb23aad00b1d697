//! The switch that stops one call, and why it was thrown: the reason decides
//! what (if anything) the executor writes for the request.

use std::sync::{Arc, OnceLock};
use tokio_util::sync::CancellationToken;

/// Why a call was stopped before it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AbortReason {
    /// Its batch is being cancelled, or its lease is gone: it ends as
    /// cancelled (a write the lease guard rejects if the lease is gone).
    Cancelled,
    /// The daemon is stopping and the grace period is over: it goes back to
    /// the queue for another daemon.
    Released,
    /// This daemon was declared dead (or fenced itself): its claims belong to
    /// the queue again, so nothing at all is written for it.
    Abandoned,
}

/// Stops a call; the first reason given is the one that counts.
#[derive(Debug, Clone, Default)]
pub(super) struct Abort {
    token: CancellationToken,
    reason: Arc<OnceLock<AbortReason>>,
}

impl Abort {
    /// A switch not yet thrown.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stops the call for `reason`, unless it was already stopped.
    pub fn fire(&self, reason: AbortReason) {
        // The reason is set before the token fires, so whoever wakes on the
        // token always finds it.
        let _ = self.reason.set(reason);
        self.token.cancel();
    }

    /// Decides that the call stops for `reason` (unless it was already
    /// stopped) without waking it yet. A call not yet sent sees the decision
    /// and is not sent, so a group of calls can all be decided before any
    /// is woken: otherwise a woken call's slot could start the next call of
    /// the group before its switch is thrown (see `leases`).
    pub fn decide(&self, reason: AbortReason) {
        let _ = self.reason.set(reason);
    }

    /// Why the call was stopped, if it was.
    pub fn reason(&self) -> Option<AbortReason> {
        self.reason.get().copied()
    }

    /// Waits until the call is stopped (or decided to be), and says why.
    pub async fn fired(&self) -> AbortReason {
        if let Some(decided) = self.reason() {
            return decided;
        }
        self.token.cancelled().await;
        self.reason()
            .expect("the reason is set before the token fires")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decided_stop_is_seen_before_it_is_fired() {
        use futures_util::FutureExt;
        let a = Abort::new();
        assert_eq!(a.fired().now_or_never(), None);
        a.decide(AbortReason::Cancelled);
        assert_eq!(a.fired().now_or_never(), Some(AbortReason::Cancelled));
        // Firing later keeps the decided reason.
        a.fire(AbortReason::Released);
        assert_eq!(a.reason(), Some(AbortReason::Cancelled));
    }

    #[tokio::test]
    async fn the_first_reason_wins() {
        let a = Abort::new();
        assert_eq!(a.reason(), None);
        a.fire(AbortReason::Abandoned);
        a.clone().fire(AbortReason::Cancelled);
        assert_eq!(a.fired().await, AbortReason::Abandoned);
        assert_eq!(a.reason(), Some(AbortReason::Abandoned));
    }
}
