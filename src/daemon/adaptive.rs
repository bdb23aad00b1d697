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
//! Latency is the second signal, a gradient in the manner of Netflix's
//! concurrency-limits: each answer feeds a short-window average of the call
//! time (an eighth of the ceiling's worth of answers, at least 10) and a
//! long-window baseline (four ceilings' worth, at least 500, after a warm-up
//! of as many answers whose mean it starts from; it follows a falling call
//! time at once). While the route is loaded (at least half of
//! its limit in flight) and the short average exceeds [`TOLERANCE`] times
//! the baseline, the limit becomes `limit · g + √limit` with the gradient
//! `g = TOLERANCE · baseline / short` (at least one half), at most once per
//! call time: the upstream is queueing the calls, and fewer of them finish
//! as fast. The `√limit` (Gradient2's queue allowance) keeps a rise barely
//! past the tolerance from cutting anything, and a rise under
//! [`LEAST_RISE`] never cuts (a busy client's own noise). A steady call
//! time, however high, never cuts the limit, and each answer adds back as
//! above, so a route whose latency falls again climbs back to its ceiling.
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
/// How far the short-window call time may rise above the long-window
/// baseline before the limit is cut for latency: generous, because a busy
/// client also stretches the call times it measures.
pub const TOLERANCE: f64 = 2.0;
/// The short window, in answers: an eighth of the ceiling's worth (a
/// fraction of a round trip, so that a busy client's bursts of answers
/// average out), at least 10.
fn short_window(ceiling: u32) -> u32 {
    (ceiling / 8).max(10)
}
/// The long window, in answers: four round trips at the ceiling, at least 500.
fn long_window(ceiling: u32) -> u32 {
    ceiling.saturating_mul(4).max(500)
}
/// Answers a route must have had before latency may cut its limit: the
/// start, while the calls pile up to the ceiling, sets the baseline.
fn warm_up(ceiling: u32) -> u32 {
    ceiling.saturating_mul(4).max(50)
}
/// The most one latency cut takes off (the limit keeps at least this share).
const LEAST_GRADIENT: f64 = 0.5;
/// The least rise of the call time over its baseline that counts as the
/// upstream queueing: below it, the rise is the client's own scheduling
/// (a 0 ms upstream on busy cores doubles its call times many times a
/// second, and cutting for that only made claims smaller: 35% fewer
/// requests a second at 0 ms), while a model server's queue adds seconds.
const LEAST_RISE: Duration = Duration::from_millis(100);

#[derive(Debug)]
struct Route {
    /// The current limit (at least 1, at most the ceiling).
    limit: f64,
    /// When the limit was last cut.
    last_cut: Option<Instant>,
    /// Mean time of an answered call lately (the short window).
    call: Option<Duration>,
    /// The long-window call time the short one is compared with.
    baseline: Option<Duration>,
    /// Answers taken in so far.
    answers: u32,
    /// The ceiling last given.
    ceiling: u32,
    /// No call of the route starts before this.
    paused_until: Option<Instant>,
}

impl Route {
    fn new(limit: f64, paused_until: Option<Instant>) -> Self {
        Self {
            limit,
            last_cut: None,
            call: None,
            baseline: None,
            answers: 0,
            ceiling: 0,
            paused_until,
        }
    }

    /// Takes a healthy answer's call time into both windows.
    fn answered(&mut self, took: Duration) {
        let blend = |avg: Option<Duration>, window: u32| match avg {
            None => took,
            Some(a) => {
                let w = 1.0 / f64::from(window.max(1));
                a.mul_f64(1.0 - w) + took.mul_f64(w)
            }
        };
        let ceiling = self.ceiling.max(1);
        self.answers = self.answers.saturating_add(1);
        self.call = Some(blend(self.call, short_window(ceiling)));
        let short = self.call.expect("just set");
        // During the warm-up the baseline is the mean of every answer so
        // far; then a long window. It follows a falling call time at once.
        let long = if self.answers < warm_up(ceiling) {
            self.answers
        } else {
            long_window(ceiling)
        };
        self.baseline = Some(blend(self.baseline, long).min(short));
    }

    /// The factor to cut the limit by for latency, if it is to be cut now:
    /// the route is warm and loaded, the short-window call time is above
    /// [`TOLERANCE`] times the baseline, and no cut came within a call time.
    fn gradient(&self, in_flight: u32) -> Option<f64> {
        let (short, base) = (self.call?, self.baseline?);
        if self.answers < warm_up(self.ceiling.max(1)) || f64::from(in_flight) < self.limit / 2.0 {
            return None;
        }
        let g = TOLERANCE * base.as_secs_f64() / short.as_secs_f64().max(1e-9);
        if g >= 1.0
            || short.saturating_sub(base) < LEAST_RISE
            || self.last_cut.is_some_and(|t| t.elapsed() < short)
        {
            return None;
        }
        Some(g.max(LEAST_GRADIENT))
    }
}

/// Every route's limit and pause in this daemon.
#[derive(Debug, Default)]
pub(super) struct Routes {
    routes: Mutex<HashMap<String, Route>>,
}

impl Routes {
    fn with<T>(&self, model: &str, ceiling: u32, f: impl FnOnce(&mut Route) -> T) -> T {
        let mut routes = self.routes.lock().expect("routes lock");
        let r = routes
            .entry(model.to_owned())
            .or_insert_with(|| Route::new(f64::from(ceiling.max(1)), None));
        r.limit = r.limit.min(f64::from(ceiling.max(1)));
        r.ceiling = ceiling.max(1);
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
            let before = r.limit;
            if !refused {
                r.answered(took);
                // As in Gradient2, a queue of √limit calls is allowed on
                // top: a rise barely past the tolerance cuts nothing.
                if let Some(g) = r.gradient(in_flight)
                    && r.limit * g + r.limit.sqrt() < r.limit
                {
                    r.last_cut = Some(Instant::now());
                    r.limit = (r.limit * g + r.limit.sqrt()).max(1.0);
                    return (r.limit.floor() < before.floor()).then(|| r.limit.floor() as u32);
                }
                r.limit = (r.limit + 1.0 / r.limit).min(f64::from(ceiling.max(1)));
                return None;
            }
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
        routes.insert(model.to_owned(), Route::new(f64::MAX, Some(until)));
    }

    /// Every route's current limit and ceiling, by model (routes that have
    /// had a call only).
    pub fn limits(&self) -> Vec<(String, u32, u32)> {
        let routes = self.routes.lock().expect("routes lock");
        let mut out: Vec<(String, u32, u32)> = routes
            .iter()
            .filter(|(_, r)| r.ceiling > 0)
            .map(|(m, r)| (m.clone(), (r.limit.floor() as u32).max(1), r.ceiling))
            .collect();
        out.sort();
        out
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

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_steady_call_time_at_full_load_keeps_the_ceiling() {
        let r = Routes::default();
        for i in 0..5_000u64 {
            // Jitter of ±20% around 50 ms, every slot taken.
            let took = ms(40 + (i * 7919) % 21);
            assert_eq!(r.record("m", 512, 200, took, 512), None, "answer {i}");
        }
        assert_eq!(r.limit("m", 512), 512);
    }

    #[test]
    fn latency_rising_under_load_cuts_and_healthy_answers_climb_back() {
        let r = Routes::default();
        for _ in 0..500 {
            r.record("m", 100, 200, ms(50), 100);
        }
        let mut cut = None;
        for _ in 0..50 {
            cut = cut.or(r.record("m", 100, 200, ms(400), 100));
        }
        let cut = cut.expect("a queueing upstream cuts the limit");
        assert!(cut < 100, "{cut}");
        assert!(
            r.limit("m", 100) <= cut + 1,
            "once per call time: the rest of the burst is one signal"
        );
        for _ in 0..2_000 {
            assert_eq!(r.record("m", 100, 200, ms(50), 100), None);
        }
        assert_eq!(r.limit("m", 100), 100, "back at the ceiling");
    }

    #[test]
    fn latency_without_load_or_before_warm_up_cuts_nothing() {
        let r = Routes::default();
        for _ in 0..500 {
            r.record("m", 100, 200, ms(50), 100);
        }
        for _ in 0..100 {
            assert_eq!(r.record("m", 100, 200, ms(400), 10), None, "10 of 100");
        }
        let cold = Routes::default();
        for t in [50, 50, 50, 400, 400, 400] {
            assert_eq!(cold.record("m", 100, 200, ms(t), 100), None);
        }
        assert_eq!(r.limits(), [("m".to_owned(), 100, 100)]);
    }

    #[test]
    fn a_fast_route_s_jitter_cuts_nothing() {
        let r = Routes::default();
        for i in 0..5_000u64 {
            // A 0 ms upstream timed by a busy client: 1 ms, with bursts of 40.
            let took = if i % 300 < 100 { ms(40) } else { ms(1) };
            assert_eq!(r.record("m", 256, 200, took, 256), None, "answer {i}");
        }
        assert_eq!(r.limit("m", 256), 256);
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
