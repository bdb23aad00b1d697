//! Concurrency that adapts to the upstream, per route (model), and pauses
//! that every daemon honours.
//!
//! The limit follows AIMD (additive increase, multiplicative decrease), as
//! TCP's congestion window does: each answer that is not a refusal adds
//! `1/limit` (one more call per limit's worth of answers); a 429 or 503
//! multiplies it by [`DECREASE`], at most once per call time (the refusals
//! of one burst are one signal, not many), and each refusal also brings it
//! below the calls that were in flight (a refused call gives its slot up,
//! so a burst far above what the upstream takes is not sent again). The configured `concurrency` is
//! its ceiling; it starts there. Each daemon runs its own limit over its
//! own calls: daemons that all see refusals all back off, and AIMD shares
//! converge, so their sum settles near what the upstream takes.
//!
//! A `Retry-After` on a refusal pauses the route on this daemon at once and
//! through the database (`RouteStore`) on every other, which [`run`] polls.

use super::{DaemonBackend, Shared};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The factor a refusal multiplies the limit by.
pub const DECREASE: f64 = 0.8;
/// How often pauses set by other daemons are read.
const POLL: Duration = Duration::from_millis(100);
/// The call time assumed until one is measured.
const DEFAULT_CALL: Duration = Duration::from_millis(100);

#[derive(Debug)]
struct Route {
    /// The current limit (at least 1, at most the ceiling).
    limit: f64,
    /// When the limit was last cut.
    last_cut: Option<Instant>,
    /// Mean time of an answered call lately.
    call: Option<Duration>,
    /// No call of the route starts before this.
    paused_until: Option<Instant>,
}

/// Every route's limit and pause in this daemon.
#[derive(Debug, Default)]
pub(super) struct Routes {
    routes: Mutex<HashMap<String, Route>>,
}

impl Routes {
    fn with<T>(&self, model: &str, ceiling: u32, f: impl FnOnce(&mut Route) -> T) -> T {
        let mut routes = self.routes.lock().expect("routes lock");
        let r = routes.entry(model.to_owned()).or_insert_with(|| Route {
            limit: f64::from(ceiling.max(1)),
            last_cut: None,
            call: None,
            paused_until: None,
        });
        r.limit = r.limit.min(f64::from(ceiling.max(1)));
        f(r)
    }

    /// The route's current limit under `ceiling`.
    pub fn limit(&self, model: &str, ceiling: u32) -> u32 {
        let limit = self.with(model, ceiling, |r| r.limit.floor() as u32).max(1);
        metrics::gauge!("fusillade_route_limit", "model" => model.to_owned()).set(f64::from(limit));
        limit
    }

    /// Takes an answer's status (and how long the call took) into the
    /// limit, with this daemon's calls of the route in flight when it came
    /// (the answered one included); returns the new limit when it went down.
    pub fn record(
        &self,
        model: &str,
        ceiling: u32,
        status: u16,
        took: Duration,
        in_flight: u32,
    ) -> Option<u32> {
        let refused = status == 429 || status == 503;
        self.with(model, ceiling, |r| {
            if !refused {
                r.call = Some(match r.call {
                    None => took,
                    Some(c) => c.mul_f64(0.9) + took.mul_f64(0.1),
                });
                r.limit = (r.limit + 1.0 / r.limit).min(f64::from(ceiling.max(1)));
                return None;
            }
            let before = r.limit;
            // A refused call gives its slot up: the upstream took fewer
            // than were in flight.
            r.limit = r.limit.min(f64::from(in_flight.saturating_sub(1)));
            let window = r.call.unwrap_or(DEFAULT_CALL);
            if r.last_cut.is_none_or(|t| t.elapsed() >= window) {
                r.last_cut = Some(Instant::now());
                r.limit *= DECREASE;
            }
            r.limit = r.limit.max(1.0);
            (r.limit < before).then(|| r.limit.floor() as u32)
        })
    }

    /// Pauses the route until `until` (a later pause already set is kept).
    pub fn pause(&self, model: &str, until: Instant) {
        let mut routes = self.routes.lock().expect("routes lock");
        if let Some(r) = routes.get_mut(model) {
            r.paused_until = Some(r.paused_until.map_or(until, |p| p.max(until)));
            return;
        }
        routes.insert(
            model.to_owned(),
            Route {
                limit: f64::MAX,
                last_cut: None,
                call: None,
                paused_until: Some(until),
            },
        );
    }

    /// When the route's pause ends, if it is paused now.
    pub fn paused_until(&self, model: &str) -> Option<Instant> {
        let routes = self.routes.lock().expect("routes lock");
        routes
            .get(model)?
            .paused_until
            .filter(|&t| t > Instant::now())
    }
}

/// Reads the pauses other daemons set, until `stop`.
pub(super) async fn run<S: DaemonBackend>(shared: Arc<Shared<S>>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = stop.cancelled() => return,
        }
        match shared.store.route_pauses().await {
            Ok(pauses) => {
                let now = Instant::now();
                for (model, left) in pauses {
                    shared.routes.pause(&model, now + left);
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot read route pauses"),
        }
    }
}

/// Pauses `model` for `pause` here and, through the database, everywhere.
pub(super) fn pause_everywhere<S: DaemonBackend>(shared: &Shared<S>, model: &str, pause: Duration) {
    shared.routes.pause(model, Instant::now() + pause);
    tracing::info!(
        model,
        ms = pause.as_millis() as u64,
        "upstream asked to retry later: route paused"
    );
    let (store, model) = (shared.store.clone(), model.to_owned());
    tokio::spawn(async move {
        if let Err(e) = store.pause_route(&model, pause).await {
            tracing::warn!(error = %e, model, "cannot share the route's pause");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_cut_once_per_call_time_and_answers_add_back() {
        let r = Routes::default();
        assert_eq!(r.limit("m", 100), 100);
        assert_eq!(r.record("m", 100, 429, Duration::ZERO, 100), Some(79));
        assert_eq!(
            r.record("m", 100, 429, Duration::ZERO, 90),
            None,
            "same burst"
        );
        assert_eq!(
            r.record("m", 100, 429, Duration::ZERO, 60),
            Some(59),
            "gives its slot up"
        );
        for _ in 0..61 {
            r.record("m", 100, 200, Duration::from_millis(50), 1);
        }
        assert_eq!(
            r.limit("m", 100),
            60,
            "one more per limit's worth of answers"
        );
        assert!(r.limit("m", 10) <= 10, "the ceiling holds");
    }

    #[test]
    fn a_pause_holds_until_it_ends() {
        let r = Routes::default();
        assert!(r.paused_until("m").is_none());
        r.pause("m", Instant::now() + Duration::from_secs(5));
        assert!(r.paused_until("m").is_some());
        r.pause("m", Instant::now() - Duration::from_secs(1));
        assert!(r.paused_until("m").is_some(), "a later pause is kept");
    }
}
