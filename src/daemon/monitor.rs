//! What the owner of a daemon sees while it runs: the calls the upstream is
//! answering right now, and whether the first calls all failed the same way.
//!
//! `fusillade run` uses the second to stop early on a misconfigured upstream
//! (wrong host, wrong path, wrong key) instead of failing every line: while
//! no call has been answered in a usable way, calls that fail like a
//! misconfiguration are released back to the queue rather than recorded as
//! failed, so the batch stays resumable once the configuration is fixed.

use super::adaptive::Routes;
use super::slots::Slots;
use crate::upstream::CallOutcome;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// How the first calls failed, when they all failed the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamFailure {
    /// The full URL called.
    pub url: String,
    /// What happened, e.g. `HTTP 401: ...` or the connection error.
    pub cause: String,
    /// How many calls failed so.
    pub calls: u32,
}

#[derive(Debug, Default)]
struct FirstCalls {
    /// A call was answered in a way that shows the route works (any status
    /// but 401, 403 and 404), or two calls failed differently: from then on
    /// every outcome is recorded as usual.
    settled: bool,
    /// The failure every call so far has had.
    failure: Option<UpstreamFailure>,
}

/// A live view of one daemon; cheap to clone.
#[derive(Debug, Clone)]
pub struct Monitor {
    slots: Arc<Slots>,
    first: Arc<Mutex<FirstCalls>>,
    /// Set with `FirstCalls::settled`, read without the lock: once the
    /// first calls are judged, recording costs every call one load.
    settled: Arc<AtomicBool>,
    /// How many calls must fail the same way to judge the upstream broken;
    /// until then (and after) such calls are held back. 0: nothing is held.
    stop_after: u32,
    /// The routes' adaptive limits, shared with the daemon.
    routes: Arc<Routes>,
}

/// One route's adaptive limit in a daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteLimit {
    /// The route's model.
    pub model: String,
    /// Calls the daemon lets be in flight now.
    pub limit: u32,
    /// Its ceiling: the route's `concurrency` (this daemon's share of it).
    pub ceiling: u32,
}

impl Monitor {
    pub(super) fn new(slots: Arc<Slots>, stop_after: u32) -> Self {
        Self {
            routes: Arc::default(),
            slots,
            first: Arc::default(),
            settled: Arc::default(),
            stop_after,
        }
    }

    /// Calls being made to the upstream now (not requests claimed ahead).
    pub fn in_flight(&self) -> u32 {
        self.slots.in_flight()
    }

    /// Each route's adaptive limit, by model (routes that had calls).
    pub fn route_limits(&self) -> Vec<RouteLimit> {
        self.routes
            .limits()
            .into_iter()
            .map(|(model, limit, ceiling)| RouteLimit {
                model,
                limit,
                ceiling,
            })
            .collect()
    }

    pub(super) fn routes(&self) -> Arc<Routes> {
        self.routes.clone()
    }

    /// The failure shared by every call so far, once enough calls failed
    /// so and none went otherwise.
    pub fn broken_upstream(&self) -> Option<UpstreamFailure> {
        if self.settled.load(Ordering::Relaxed) {
            return None;
        }
        let first = self.first.lock().expect("first calls lock");
        match &first.failure {
            Some(f) if !first.settled && f.calls >= self.stop_after.max(1) => Some(f.clone()),
            _ => None,
        }
    }

    /// Whether calls must not be sent at all: the upstream was judged
    /// broken, and the owner is about to stop the daemon.
    pub(super) fn tripped(&self) -> bool {
        self.stop_after > 0 && self.broken_upstream().is_some()
    }

    /// Records a call's outcome; `true` if it must go back to the queue
    /// instead of being recorded (it failed like a misconfiguration while
    /// the first calls are still being judged).
    pub(super) fn record(&self, url: impl FnOnce() -> String, outcome: &CallOutcome) -> bool {
        if self.settled.load(Ordering::Relaxed) {
            return false;
        }
        let mut first = self.first.lock().expect("first calls lock");
        if first.settled {
            return false;
        }
        let Some(cause) = misconfiguration(outcome) else {
            first.settled = true;
            self.settled.store(true, Ordering::Relaxed);
            return false;
        };
        match &mut first.failure {
            Some(f) if f.cause == cause => f.calls += 1,
            Some(_) => {
                first.settled = true;
                self.settled.store(true, Ordering::Relaxed);
                return false;
            }
            None => {
                first.failure = Some(UpstreamFailure {
                    url: url(),
                    cause,
                    calls: 1,
                })
            }
        }
        self.stop_after > 0
    }
}

/// The cause, if `outcome` is how a misconfigured route fails: the host
/// cannot be reached or resolved, or the server refuses the key or does not
/// know the path.
fn misconfiguration(outcome: &CallOutcome) -> Option<String> {
    match outcome {
        CallOutcome::ConnectionFailed { message } => Some(message.clone()),
        CallOutcome::Answered { status, body, .. } if matches!(status, 401 | 403 | 404) => {
            let mut snippet: String = String::from_utf8_lossy(body).chars().take(200).collect();
            snippet = snippet.replace(['\n', '\r'], " ");
            Some(format!("HTTP {status}: {}", snippet.trim()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(status: u16, body: &str) -> CallOutcome {
        CallOutcome::Answered {
            status,
            body: body.into(),
            upstream_request_id: None,
            retry_after: None,
        }
    }

    fn url() -> String {
        "http://h/v1/x".into()
    }

    #[test]
    fn the_same_failure_trips_after_enough_calls() {
        let m = Monitor::new(Arc::new(Slots::new()), 2);
        assert!(m.record(url, &answered(401, "no key")));
        assert_eq!(m.broken_upstream(), None);
        assert!(!m.tripped());
        assert!(m.record(url, &answered(401, "no key")));
        assert!(m.tripped());
        let f = m.broken_upstream().unwrap();
        assert_eq!(f.url, "http://h/v1/x");
        assert_eq!(f.cause, "HTTP 401: no key");
    }

    #[test]
    fn an_answer_or_a_different_failure_settles_it() {
        let m = Monitor::new(Arc::new(Slots::new()), 2);
        assert!(m.record(url, &answered(404, "")));
        assert!(!m.record(url, &answered(200, "{}")));
        assert!(!m.record(url, &answered(404, "")));
        assert_eq!(m.broken_upstream(), None);

        let m = Monitor::new(Arc::new(Slots::new()), 1);
        let refused = CallOutcome::ConnectionFailed {
            message: "refused".into(),
        };
        assert!(m.record(url, &refused));
        assert!(!m.record(url, &answered(403, "")));
        assert_eq!(m.broken_upstream(), None);
    }

    #[test]
    fn a_daemon_that_does_not_hold_records_everything() {
        let m = Monitor::new(Arc::new(Slots::new()), 0);
        assert!(!m.record(url, &answered(401, "")));
        assert!(m.broken_upstream().is_some());
        assert!(!m.tripped());
    }
}
