//! This daemon's upstream slots per model, and the requests claimed ahead
//! that wait for one.
//!
//! The database grants the slots (so that all daemons together stay within
//! each model's limit; see `QueueStore::claim`); here they are spent. A call
//! that ends hands its slot straight to the next waiting request of its
//! model, so slots stay busy while the database writes the result and the
//! next claim runs.
//!
//! Waiting requests are queued per owner, and a freed slot goes to the
//! waiting owner with the fewest calls in flight per unit of weight (the
//! same rule the claims share by, see `domain::schedule`): a newcomer's
//! first requests do not wait behind everything claimed before them, and an
//! urgent owner, which the claims give every request, has every slot once
//! the others' claimed requests are sent.
//!
//! A request escalated to another model (see `escalate`) waits in that
//! model's queue and runs in its slots; its own model counts it as lent
//! until it starts or falls back, so that its claims do not run ahead.

use super::abort::Abort;
use crate::store::ClaimedRequest;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// A claimed request and the token that stops it.
#[derive(Debug)]
pub(super) struct Job {
    /// The request.
    pub req: ClaimedRequest,
    /// Thrown when its lease is lost, its batch cancelled, on release, or
    /// when the daemon loses its standing.
    pub abort: Abort,
    /// Set when it is sent as another model than its own (`req.model` and
    /// `req.body` are then the new model's; see `escalate`).
    pub escalated: Option<Escalated>,
}

/// What an escalated request needs to fall back to its own model.
#[derive(Debug, Clone)]
pub(super) struct Escalated {
    /// Its own model.
    pub from: String,
    /// Its body as written.
    pub body: String,
    /// When it started to wait for a slot of the model it escalated to.
    pub since: Instant,
    /// Most time it waits for one.
    pub wait: Duration,
}

/// One owner's requests of a model in this daemon.
#[derive(Debug, Default)]
struct OwnerQueue {
    /// Claimed, waiting for a slot, in claim order.
    waiting: VecDeque<Job>,
    /// Calls being made now.
    in_flight: u32,
}

impl OwnerQueue {
    /// Whether this owner (of weight `w`) should have the next slot before
    /// `o` (of weight `wo`): fewer calls in flight per unit of weight, then
    /// the earlier deadline of its next request.
    fn before(&self, w: u64, o: &OwnerQueue, wo: u64) -> bool {
        let (a, b) = (u64::from(self.in_flight), u64::from(o.in_flight));
        match (a * wo).cmp(&(b * w)) {
            std::cmp::Ordering::Less => true,
            std::cmp::Ordering::Greater => false,
            std::cmp::Ordering::Equal => {
                let d = |q: &OwnerQueue| q.waiting.front().and_then(|j| j.req.deadline);
                match (d(self), d(o)) {
                    (Some(x), Some(y)) => x < y,
                    (Some(_), None) => true,
                    _ => false,
                }
            }
        }
    }
}

#[derive(Debug, Default)]
struct Model {
    /// Calls this daemon may make at once (granted by the last claim).
    granted: u32,
    /// Calls being made now.
    in_flight: u32,
    /// Requests per owner.
    owners: BTreeMap<String, OwnerQueue>,
    /// Requests waiting, over all owners.
    n_waiting: usize,
    /// Its last claim had embeddings lines (which may share calls).
    embeddings: bool,
    /// Mean time of a call lately (an exponential average), once known.
    call_time: Option<Duration>,
    /// Its requests escalated to other models, waiting in their queues.
    lent: u32,
}

impl Model {
    /// Takes the next waiting request (see the module docs) and counts it
    /// in flight.
    fn start_next(&mut self, weights: &BTreeMap<String, u32>) -> Option<Job> {
        let weight = |o: &str| u64::from(weights.get(o).copied().unwrap_or(1).max(1));
        let mut best: Option<(&String, &OwnerQueue)> = None;
        for (name, q) in &self.owners {
            if q.waiting.is_empty() {
                continue;
            }
            if best.is_none_or(|(b_name, b)| q.before(weight(name), b, weight(b_name))) {
                best = Some((name, q));
            }
        }
        let name = best?.0.clone();
        let q = self.owners.get_mut(&name).expect("just found");
        let job = q.waiting.pop_front().expect("not empty");
        q.in_flight += 1;
        self.in_flight += 1;
        self.n_waiting -= 1;
        Some(job)
    }

    /// Counts a call of `owner` ended.
    fn end(&mut self, owner: &str) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if let Some(q) = self.owners.get_mut(owner) {
            q.in_flight = q.in_flight.saturating_sub(1);
        }
    }

    /// Forgets owners with nothing here.
    fn tidy(&mut self) {
        self.owners
            .retain(|_, q| q.in_flight > 0 || !q.waiting.is_empty());
    }
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
    /// Mean time of a call lately, once known.
    pub call_time: Option<Duration>,
}

/// Slots and waiting requests of every model.
#[derive(Debug, Default)]
pub(super) struct Slots {
    models: Mutex<HashMap<String, Model>>,
    /// Owners' weights (see `domain::schedule`); 1 for owners not named.
    weights: Mutex<BTreeMap<String, u32>>,
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
                    waiting: m.n_waiting as u32 + m.lent,
                    embeddings: m.embeddings,
                    call_time: m.call_time,
                };
                (name.clone(), state)
            })
            .collect()
    }

    /// Takes the slots a claim granted and the requests it claimed; returns
    /// the requests to start now (their slots are taken).
    pub fn refill(&self, granted: &[(String, u32)], claimed: Vec<Job>) -> Vec<Job> {
        let mut models = self.models.lock().expect("slots lock");
        let weights = self.weights.lock().expect("weights lock");
        for (name, n) in granted {
            models.entry(name.clone()).or_default().granted = *n;
        }
        for job in claimed {
            if let Some(e) = &job.escalated {
                models.entry(e.from.clone()).or_default().lent += 1;
            }
            let m = models.entry(job.req.model.clone()).or_default();
            m.embeddings = job.req.path.trim_end_matches('/').ends_with("/embeddings");
            m.n_waiting += 1;
            let owner = m.owners.entry(job.req.owner.clone()).or_default();
            owner.waiting.push_back(job);
        }
        let mut start = Vec::new();
        for m in models.values_mut() {
            while m.in_flight < m.granted {
                let Some(job) = m.start_next(&weights) else {
                    break;
                };
                start.push(job);
            }
        }
        for job in &start {
            unlend(&mut models, job);
        }
        models.retain(|_, m| m.granted > 0 || m.in_flight > 0 || m.n_waiting > 0 || m.lent > 0);
        start
    }

    /// Takes out the escalated requests that waited their longest for a
    /// slot of the model they escalated to (as of `now`), to go back to
    /// their own model.
    pub fn overdue_escalations(&self, now: Instant) -> Vec<Job> {
        let mut models = self.models.lock().expect("slots lock");
        let mut out = Vec::new();
        for m in models.values_mut() {
            for q in m.owners.values_mut() {
                let overdue = |j: &Job| {
                    j.escalated
                        .as_ref()
                        .is_some_and(|e| now.duration_since(e.since) >= e.wait)
                };
                if !q.waiting.iter().any(overdue) {
                    continue;
                }
                let (gone, kept): (VecDeque<Job>, VecDeque<Job>) =
                    q.waiting.drain(..).partition(overdue);
                q.waiting = kept;
                m.n_waiting -= gone.len();
                out.extend(gone);
            }
            m.tidy();
        }
        for job in &out {
            unlend(&mut models, job);
        }
        out
    }

    /// Sets the owners' weights a freed slot is given by.
    pub fn set_weights(&self, weights: BTreeMap<String, u32>) {
        *self.weights.lock().expect("weights lock") = weights;
    }

    /// Lowers the slots of `model` this daemon may use to `n` at once (its
    /// route's limit was cut): calls beyond it run on, and their slots are
    /// not handed on when they end.
    pub fn lower(&self, model: &str, n: u32) {
        let mut models = self.models.lock().expect("slots lock");
        if let Some(m) = models.get_mut(model) {
            m.granted = m.granted.min(n);
        }
    }

    /// Records how long a call of `model` took, for the call time that
    /// deadline urgency is judged by.
    pub fn observe(&self, model: &str, took: Duration) {
        let mut models = self.models.lock().expect("slots lock");
        if let Some(m) = models.get_mut(model) {
            // An exponential average over about the last ten calls.
            m.call_time = Some(match m.call_time {
                None => took,
                Some(t) => t.mul_f64(0.9) + took.mul_f64(0.1),
            });
        }
    }

    /// A call of `model` for `owner` ended: returns the request to run in
    /// its slot, if one waits and the slot is still granted; else frees the
    /// slot. Wakes the claim loop when fewer than half the slots' worth of
    /// requests still wait (a claim tops them up to the slots' worth).
    pub fn next_after(&self, model: &str, owner: &str) -> Option<Job> {
        let next = {
            let mut models = self.models.lock().expect("slots lock");
            let weights = self.weights.lock().expect("weights lock");
            let m = models.get_mut(model)?;
            let hand_on = m.in_flight <= m.granted;
            m.end(owner);
            let next = if hand_on {
                m.start_next(&weights)
            } else {
                None
            };
            m.tidy();
            if next.is_none() || (m.n_waiting as u32) < m.granted.div_ceil(2) {
                self.low.notify_one();
            }
            if let Some(job) = &next {
                unlend(&mut models, job);
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
        'owners: for q in m.owners.values_mut() {
            let mut i = 0;
            while i < q.waiting.len() && taken.len() < max {
                match fits(&q.waiting[i].req) {
                    None => break 'owners,
                    Some(true) => taken.push(q.waiting.remove(i).expect("in range")),
                    Some(false) => i += 1,
                }
            }
        }
        m.n_waiting -= taken.len();
        if (m.n_waiting as u32) < m.granted.div_ceil(2) {
            self.low.notify_one();
        }
        for job in &taken {
            unlend(&mut models, job);
        }
        taken
    }

    /// Calls of `model` being made now.
    pub fn in_flight_of(&self, model: &str) -> u32 {
        let models = self.models.lock().expect("slots lock");
        models.get(model).map_or(0, |m| m.in_flight)
    }

    /// Calls being made now, over all models.
    pub fn in_flight(&self) -> u32 {
        let models = self.models.lock().expect("slots lock");
        models.values().map(|m| m.in_flight).sum()
    }

    /// Removes every waiting request (to release them on shutdown).
    pub fn drain_waiting(&self) -> Vec<Job> {
        let mut models = self.models.lock().expect("slots lock");
        let mut drained = Vec::new();
        for m in models.values_mut() {
            for q in m.owners.values_mut() {
                drained.extend(q.waiting.drain(..));
            }
            m.n_waiting = 0;
            m.lent = 0;
            m.tidy();
        }
        drained
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

/// An escalated request left the queue it waited in: its own model no
/// longer counts it as lent.
fn unlend(models: &mut HashMap<String, Model>, job: &Job) {
    if let Some(m) = job.escalated.as_ref().and_then(|e| models.get_mut(&e.from)) {
        m.lent = m.lent.saturating_sub(1);
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
                owner: String::new(),
            },
            abort: Abort::new(),
            escalated: None,
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
        assert!(s.next_after("a", "").is_some());
        assert_eq!(s.in_flight(), 2);
        assert!(s.next_after("a", "").is_some());
        assert!(s.next_after("a", "").is_some());
        // Nothing waits any more: the slot frees.
        assert!(s.next_after("a", "").is_none());
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
        assert!(s.next_after("a", "").is_none(), "3 in flight > 1 usable");
        assert!(s.next_after("a", "").is_none(), "2 in flight > 1 usable");
        assert!(s.next_after("a", "").is_some(), "1 in flight: hand on");
        assert_eq!(s.in_flight(), 1);
        assert_eq!(s.drain_waiting().len(), 2);
    }

    fn job_of(owner: &str) -> Job {
        let mut j = job("a");
        j.req.owner = owner.into();
        j
    }

    #[test]
    fn a_freed_slot_goes_to_the_owner_with_the_least_in_flight() {
        let s = Slots::new();
        let jobs = (0..4).map(|_| job_of("big")).collect();
        assert_eq!(s.refill(&[("a".into(), 2)], jobs).len(), 2);
        // A newcomer's request is claimed behind two waiting ones of "big".
        assert!(s.refill(&[("a".into(), 2)], vec![job_of("new")]).is_empty());
        let next = s.next_after("a", "big").expect("a slot was freed");
        assert_eq!(next.req.owner, "new", "it does not wait behind them");
        assert_eq!(s.next_after("a", "big").unwrap().req.owner, "big");
    }

    #[test]
    fn forgotten_grants_start_nothing() {
        let s = Slots::new();
        assert_eq!(s.refill(&[("a".into(), 1)], vec![job("a")]).len(), 1);
        s.forget_grants();
        assert!(s.refill(&[], vec![job("a")]).is_empty());
        assert!(s.next_after("a", "").is_none());
        assert_eq!(s.in_flight(), 0);
    }

    fn escalated(wait: Duration) -> Job {
        let mut j = job("y");
        j.escalated = Some(Escalated {
            from: "x".into(),
            body: "{}".into(),
            since: Instant::now(),
            wait,
        });
        j
    }

    fn waiting_of(s: &Slots, model: &str) -> u32 {
        s.prepare_claim(|_| 100)
            .into_iter()
            .find(|(m, _)| m == model)
            .map_or(0, |(_, st)| st.waiting)
    }

    #[test]
    fn an_escalated_request_waits_for_its_new_models_slot_and_counts_for_both() {
        let s = Slots::new();
        let long = Duration::from_secs(3600);
        assert!(
            s.refill(&[], vec![escalated(long)]).is_empty(),
            "no slot of y yet"
        );
        assert_eq!(waiting_of(&s, "y"), 1, "y is asked for slots");
        assert_eq!(waiting_of(&s, "x"), 1, "x does not claim ahead for it");
        assert!(s.overdue_escalations(Instant::now()).is_empty());
        let started = s.refill(&[("y".into(), 1)], vec![escalated(long)]);
        assert_eq!(started.len(), 1, "in y's slot");
        assert_eq!(s.in_flight_of("y"), 1);
        assert_eq!(waiting_of(&s, "x"), 1, "one started, one waits");
        assert!(
            s.next_after("y", "").is_some(),
            "the next one takes the slot"
        );
        assert_eq!(waiting_of(&s, "x"), 0);
    }

    #[test]
    fn an_escalated_request_that_waited_too_long_is_taken_back() {
        let s = Slots::new();
        assert!(s.refill(&[], vec![escalated(Duration::ZERO)]).is_empty());
        let back = s.overdue_escalations(Instant::now());
        assert_eq!(back.len(), 1);
        assert_eq!(waiting_of(&s, "x"), 0);
        assert_eq!(waiting_of(&s, "y"), 0);
    }
}
