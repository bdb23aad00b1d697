//! This daemon's upstream slots per model, and the requests claimed ahead
//! that wait for one.
//!
//! The database grants the slots (so that all daemons together stay within
//! each model's limit; see `QueueStore::claim`); here they are spent. A call
//! that ends hands its slot straight to the next waiting request of its
//! model, so slots stay busy while the database writes the result and the
//! next claim runs.

use super::abort::Abort;
use crate::store::ClaimedRequest;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use tokio::sync::Notify;

/// A claimed request and the token that stops it.
#[derive(Debug)]
pub(super) struct Job {
    /// The request.
    pub req: ClaimedRequest,
    /// Thrown when its lease is lost, its batch cancelled, on release, or
    /// when the daemon loses its standing.
    pub abort: Abort,
}

#[derive(Debug, Default)]
struct Model {
    /// Calls this daemon may make at once (granted by the last claim).
    granted: u32,
    /// Calls being made now.
    in_flight: u32,
    /// Claimed, waiting for a slot, in claim order.
    waiting: VecDeque<Job>,
    /// Its last claim had embeddings lines (which may share calls).
    embeddings: bool,
}

/// What the claim needs to know of one model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct ModelState {
    /// Slots granted.
    pub granted: u32,
    /// Calls being made.
    pub in_flight: u32,
    /// Requests waiting.
    pub waiting: u32,
    /// Its lines are embeddings lines, which may share calls.
    pub embeddings: bool,
}

/// Slots and waiting requests of every model.
#[derive(Debug, Default)]
pub(super) struct Slots {
    models: Mutex<HashMap<String, Model>>,
    /// Wakes the claim loop: waiting requests ran low, or a slot went idle.
    low: Notify,
    /// Signalled whenever a call ends (for the shutdown wait).
    ended: Notify,
}

impl Slots {
    /// No slots, nothing waiting.
    pub fn new() -> Self {
        Self::default()
    }

    /// Each model's state, for the next claim. Before reading, lowers each
    /// model's usable slots to its `share`, so that no call starts under a
    /// grant the claim is about to give back; calls beyond it run on, and
    /// their slots are not handed on when they end.
    pub fn prepare_claim(&self, share: impl Fn(&str) -> u32) -> Vec<(String, ModelState)> {
        let mut models = self.models.lock().expect("slots lock");
        models
            .iter_mut()
            .map(|(name, m)| {
                m.granted = m.granted.min(share(name));
                metrics::gauge!("fusillade_in_flight", "model" => name.clone())
                    .set(f64::from(m.in_flight));
                let state = ModelState {
                    granted: m.granted,
                    in_flight: m.in_flight,
                    waiting: m.waiting.len() as u32,
                    embeddings: m.embeddings,
                };
                (name.clone(), state)
            })
            .collect()
    }

    /// Takes the slots a claim granted and the requests it claimed; returns
    /// the requests to start now (their slots are taken).
    pub fn refill(&self, granted: &[(String, u32)], claimed: Vec<Job>) -> Vec<Job> {
        let mut models = self.models.lock().expect("slots lock");
        for (name, n) in granted {
            models.entry(name.clone()).or_default().granted = *n;
        }
        for job in claimed {
            let m = models.entry(job.req.model.clone()).or_default();
            m.embeddings = job.req.path.trim_end_matches('/').ends_with("/embeddings");
            m.waiting.push_back(job);
        }
        let mut start = Vec::new();
        for m in models.values_mut() {
            while m.in_flight < m.granted {
                let Some(job) = m.waiting.pop_front() else {
                    break;
                };
                m.in_flight += 1;
                start.push(job);
            }
        }
        models.retain(|_, m| m.granted > 0 || m.in_flight > 0 || !m.waiting.is_empty());
        start
    }

    /// A call of `model` ended: returns the request to run in its slot, if
    /// one waits and the slot is still granted; else frees the slot.
    /// Wakes the claim loop when fewer than half the slots' worth of
    /// requests still wait (a claim tops them up to the slots' worth).
    pub fn next_after(&self, model: &str) -> Option<Job> {
        let next = {
            let mut models = self.models.lock().expect("slots lock");
            let m = models.get_mut(model)?;
            let next = if m.in_flight <= m.granted {
                m.waiting.pop_front()
            } else {
                None
            };
            if next.is_none() {
                m.in_flight = m.in_flight.saturating_sub(1);
            }
            if next.is_none() || (m.waiting.len() as u32) < m.granted.div_ceil(2) {
                self.low.notify_one();
            }
            next
        };
        self.ended.notify_waiters();
        next
    }

    /// Takes up to `max` requests of `model` waiting for a slot that `fits`
    /// (in claim order), to ride along with a call being made; `fits` sees
    /// each candidate once and may stop taking by returning `None`.
    pub fn take_waiting(
        &self,
        model: &str,
        max: usize,
        mut fits: impl FnMut(&ClaimedRequest) -> Option<bool>,
    ) -> Vec<Job> {
        let mut models = self.models.lock().expect("slots lock");
        let Some(m) = models.get_mut(model) else {
            return Vec::new();
        };
        let mut taken = Vec::new();
        let mut i = 0;
        while i < m.waiting.len() && taken.len() < max {
            match fits(&m.waiting[i].req) {
                None => break,
                Some(true) => taken.push(m.waiting.remove(i).expect("in range")),
                Some(false) => i += 1,
            }
        }
        if (m.waiting.len() as u32) < m.granted.div_ceil(2) {
            self.low.notify_one();
        }
        taken
    }

    /// Calls being made now, over all models.
    pub fn in_flight(&self) -> u32 {
        let models = self.models.lock().expect("slots lock");
        models.values().map(|m| m.in_flight).sum()
    }

    /// Removes every waiting request (to release them on shutdown).
    pub fn drain_waiting(&self) -> Vec<Job> {
        let mut models = self.models.lock().expect("slots lock");
        models
            .values_mut()
            .flat_map(|m| m.waiting.drain(..))
            .collect()
    }

    /// Forgets every grant (after this daemon was declared dead: the
    /// database no longer counts its slots). Calls in flight stay counted.
    pub fn forget_grants(&self) {
        let mut models = self.models.lock().expect("slots lock");
        for m in models.values_mut() {
            m.granted = 0;
        }
    }

    /// Waits until waiting requests run low or a slot goes idle.
    pub async fn low(&self) {
        self.low.notified().await;
    }

    /// Waits until no call is in flight.
    pub async fn idle(&self) {
        loop {
            let ended = self.ended.notified();
            if self.in_flight() == 0 {
                return;
            }
            ended.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ids::TemplateId;
    use crate::domain::request::RequestId;

    fn job(model: &str) -> Job {
        Job {
            req: ClaimedRequest {
                id: RequestId::new(),
                batch_id: None,
                template_id: TemplateId::new(),
                attempt: 1,
                retries: 0,
                model: model.into(),
                custom_id: None,
                deadline: None,
                path: "/v1/chat/completions".into(),
                body: "{}".into(),
                endpoint: String::new(),
                prefix_key: 0,
            },
            abort: Abort::new(),
        }
    }

    #[test]
    fn starts_up_to_the_grant_and_hands_slots_on() {
        let s = Slots::new();
        let jobs = (0..5).map(|_| job("a")).collect();
        let started = s.refill(&[("a".into(), 2)], jobs);
        assert_eq!(started.len(), 2);
        assert_eq!(s.in_flight(), 2);
        // An ended call takes the next waiting request into its slot.
        assert!(s.next_after("a").is_some());
        assert_eq!(s.in_flight(), 2);
        assert!(s.next_after("a").is_some());
        assert!(s.next_after("a").is_some());
        // Nothing waits any more: the slot frees.
        assert!(s.next_after("a").is_none());
        assert_eq!(s.in_flight(), 1);
    }

    #[test]
    fn a_lowered_share_is_not_refilled_until_calls_end() {
        let s = Slots::new();
        let jobs = (0..6).map(|_| job("a")).collect();
        assert_eq!(s.refill(&[("a".into(), 3)], jobs).len(), 3);
        // Another daemon came: this one's share drops to 1.
        let state = s.prepare_claim(|_| 1);
        assert_eq!(state[0].1.granted, 1);
        assert_eq!(state[0].1.in_flight, 3, "calls in flight run on");
        assert!(s.refill(&[("a".into(), 1)], Vec::new()).is_empty());
        assert!(s.next_after("a").is_none(), "3 in flight > 1 usable");
        assert!(s.next_after("a").is_none(), "2 in flight > 1 usable");
        assert!(s.next_after("a").is_some(), "1 in flight: hand on");
        assert_eq!(s.in_flight(), 1);
        assert_eq!(s.drain_waiting().len(), 2);
    }

    #[test]
    fn forgotten_grants_start_nothing() {
        let s = Slots::new();
        assert_eq!(s.refill(&[("a".into(), 1)], vec![job("a")]).len(), 1);
        s.forget_grants();
        assert!(s.refill(&[], vec![job("a")]).is_empty());
        assert!(s.next_after("a").is_none());
        assert_eq!(s.in_flight(), 0);
    }
}
