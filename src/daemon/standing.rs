//! Whether this daemon may work, and what it does the moment it may not.
//!
//! A daemon loses its standing when a heartbeat finds it declared dead, or
//! when it could not heartbeat for so long that others may declare it dead
//! any moment. Either way its claims belong to the queue again (the rescuer,
//! or this daemon itself, returns them), so it drops every call and waiting
//! request without writing anything, gives up its slots, and claims nothing
//! until it is registered again under a new id.

use super::abort::AbortReason;
use super::{DaemonBackend, Shared};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The daemon's standing, shared by its tasks and its heartbeat thread.
#[derive(Debug)]
pub(super) struct Standing {
    /// Bumped each time the standing is lost: a claim that was running at
    /// that moment is void, whatever it returns.
    generation: AtomicU64,
    /// True from losing the standing until registered again.
    fenced: watch::Sender<bool>,
    /// The heartbeats' record, for the rescuer.
    beats: Mutex<Beats>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Beats {
    /// When the last heartbeat that went through was sent.
    last_ok: Option<Instant>,
    /// Since when heartbeats went through without a long gap.
    steady_since: Option<Instant>,
}

impl Standing {
    /// In good standing, with no heartbeat recorded yet.
    pub fn new() -> Self {
        Self {
            generation: AtomicU64::new(0),
            fenced: watch::Sender::new(false),
            beats: Mutex::new(Beats::default()),
        }
    }

    /// Changes each time the standing is lost.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Whether the daemon lost its standing and is not registered again yet.
    pub fn is_fenced(&self) -> bool {
        *self.fenced.borrow()
    }

    /// Waits until the daemon is in good standing.
    pub async fn restored(&self) {
        let mut rx = self.fenced.subscribe();
        // The sender lives as long as `self`, so this cannot fail.
        let _ = rx.wait_for(|fenced| !fenced).await;
    }

    /// Registered again: claims may resume.
    pub fn restore(&self) {
        self.fenced.send_replace(false);
    }

    /// Records a heartbeat sent at `sent` that went through. A gap of more
    /// than `gap` since the previous one starts a new steady run: whatever
    /// held this daemon's heartbeats back (a starved process, a database
    /// away) may have held back other daemons' too.
    pub fn beat_ok(&self, sent: Instant, gap: Duration) {
        let mut b = self.beats.lock().expect("beats lock");
        let steady = b
            .last_ok
            .is_some_and(|last| sent.saturating_duration_since(last) <= gap);
        if !steady {
            b.steady_since = Some(sent);
        }
        b.last_ok = Some(sent);
    }

    /// Whether this daemon may declare others dead after `stale_after`
    /// without a heartbeat: only if its own heartbeats went through, without
    /// a gap longer than half of it, for at least that long, and the last
    /// one is recent. Then every other daemon had the same database for a
    /// whole stale window, and a missing heartbeat is theirs, not a hiccup
    /// that held everyone back (this daemon's rescuer looking late included).
    pub fn may_declare_dead(&self, stale_after: Duration) -> bool {
        let b = *self.beats.lock().expect("beats lock");
        match (b.last_ok, b.steady_since) {
            (Some(last), Some(since)) => {
                last.elapsed() <= stale_after / 2 && since.elapsed() >= stale_after
            }
            _ => false,
        }
    }

    /// Loses the standing: voids running claims and stops new ones.
    fn lose(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.fenced.send_replace(true);
        self.beats.lock().expect("beats lock").steady_since = None;
    }
}

/// Drops everything the daemon holds, writing nothing: every call is
/// abandoned, requests waiting for a slot are forgotten, and no slot is
/// granted any more. Returns at once; the calls end soon after (see
/// `Slots::idle`).
pub(super) fn abandon_all<S: DaemonBackend>(shared: &Shared<S>) {
    shared.standing.lose();
    // Under the held lock, so that a claim finishing now either sees the
    // new generation or has its requests abandoned here (see `producer`).
    let mut held = shared.held.lock().expect("held lock");
    for h in held.values() {
        h.abort.fire(AbortReason::Abandoned);
    }
    held.clear();
    shared.slots.forget_grants();
    let dropped = shared.slots.drain_waiting().len();
    tracing::debug!(dropped, "requests waiting for a slot dropped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_daemon_declares_others_dead_only_after_a_steady_stale_window() {
        let s = Standing::new();
        let stale = Duration::from_millis(600);
        let gap = stale / 2;
        assert!(!s.may_declare_dead(stale), "no heartbeat yet");
        let start = Instant::now() - Duration::from_secs(10);
        s.beat_ok(start, gap);
        for i in 1..=10 {
            s.beat_ok(start + Duration::from_millis(100) * i, gap);
        }
        assert!(!s.may_declare_dead(stale), "the last beat is old");
        // Beats again now, after a gap: a new run starts.
        s.beat_ok(Instant::now(), gap);
        assert!(!s.may_declare_dead(stale), "the steady run just began");

        let s = Standing::new();
        let now = Instant::now();
        let mut t = now - Duration::from_millis(700);
        while t <= now {
            s.beat_ok(t, gap);
            t += Duration::from_millis(100);
        }
        assert!(s.may_declare_dead(stale));
        s.lose();
        assert!(s.is_fenced());
        assert!(
            !s.may_declare_dead(stale),
            "losing the standing ends the run"
        );
    }
}
