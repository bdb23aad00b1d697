//! Who gets a model's slots: fair share between owners, and deadline
//! urgency. Written once here; every store calls [`split`] inside its claim,
//! with the loads it reads from its own rows, so the rule holds across all
//! daemons on one database (it counts every daemon's claimed rows, not one
//! process's).
//!
//! The rules, for one model and one claim of `want` requests:
//!
//! 1. **Urgency first.** An owner whose earliest-deadline batch cannot
//!    drain in time at its fair share is urgent: with `c` the observed time
//!    of one call, `n` the requests its batch has left and `t` the time to
//!    its deadline, it needs `n·c / (URGENCY_MARGIN·t)` slots (it plans to
//!    finish with half of the time left to spare). When that is more
//!    than its fair share it is topped up to that many (at most the model's
//!    limit), earliest deadline first, ahead of everyone else.
//! 2. **Then fair share.** The rest goes, one request at a time, to the
//!    owner holding the fewest claimed-or-in-flight requests per unit of
//!    weight (water filling): an owner alone gets everything, and a newcomer
//!    (holding none) gets every request of the next claims until it holds
//!    its share.
//! 3. **Caps.** An owner never holds more than its cap of claimed-or-in-
//!    flight requests of one model, urgent or not.
//! 4. **Catching up.** While one owner holds more than its fair share of
//!    the rows (`AHEAD` per slot) and another less, and none is urgent, a
//!    claim also takes the short owner's rows up to its fair share, at most
//!    its part of this daemon's slots' worth, even when the daemon asked
//!    for nothing (its queue full of the long owner's rows): a newcomer is
//!    claimed at once and takes the next freed slots, instead of waiting
//!    until the rows claimed ahead for the others have started.
//!
//! Within an owner, requests are taken earliest deadline first, then by
//! prefix group, then in line order (see `domain::prefix`): a tight-window
//! batch of an owner goes before its own 24 h batch whatever the shares.

use chrono::{DateTime, Utc};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::Duration;

/// Claimed-or-in-flight requests per slot: daemons claim about as many
/// requests ahead as they have slots (see `store::QueueStore::claim`), so
/// an owner holding `k` slots holds about twice as many rows.
pub const AHEAD: u32 = 2;

/// The share of the time left to a deadline that an urgent batch plans to
/// drain in: the rest is kept as margin against a slowing upstream and the
/// time slots spend between calls (the call time does not count it).
pub const URGENCY_MARGIN: f64 = 0.5;

/// The scheduling knobs a claim is made with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Schedule {
    /// Weight per owner (1 for owners not named; 0 is read as 1).
    pub weights: BTreeMap<String, u32>,
    /// Most claimed-or-in-flight requests of one model per owner (no cap
    /// for owners not named).
    pub caps: BTreeMap<String, u32>,
    /// The observed time of one call, per model (no urgency for models
    /// without one: nothing is known of their rate yet).
    pub call_times: BTreeMap<String, Duration>,
    /// Look for owners to catch up (rule 4) also in models this claim asks
    /// nothing of; that reads every owner's load, so daemons ask it only
    /// now and then.
    pub catch_up: bool,
}

impl Schedule {
    /// The owner's weight (at least 1).
    pub fn weight(&self, owner: &str) -> u32 {
        self.weights.get(owner).copied().unwrap_or(1).max(1)
    }

    /// The owner's cap per model, if any.
    pub fn cap(&self, owner: &str) -> Option<u32> {
        self.caps.get(owner).copied()
    }

    /// The weights of the owners of `loads` (in their order), and their sum.
    fn weights_of(&self, loads: &[OwnerLoad]) -> (Vec<u64>, u64) {
        let weights: Vec<u64> = loads
            .iter()
            .map(|l| u64::from(self.weight(&l.owner)))
            .collect();
        let total = weights.iter().sum();
        (weights, total)
    }

    /// How many more requests of the model its cap lets the owner of
    /// `load` hold.
    fn room(&self, load: &OwnerLoad) -> u32 {
        self.cap(&load.owner)
            .map_or(u32::MAX, |c| c.saturating_sub(load.active))
    }
}

/// One owner with claimable work of a model, as the database sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerLoad {
    /// The owner ("" when auth is off).
    pub owner: String,
    /// Its requests of the model claimed or in flight, over all daemons.
    pub active: u32,
    /// The earliest deadline of its claimable pending requests (`None`:
    /// no deadline).
    pub deadline: Option<DateTime<Utc>>,
    /// Requests not yet ended (pending or in flight) of the batch with that
    /// deadline (1 for requests without a batch).
    pub remaining: u64,
}

/// Slots an owner needs for its earliest-deadline batch to drain within
/// [`URGENCY_MARGIN`] of the time left, when that is more than `fair` (its
/// fair share of the slots); `None` when its fair share will do, when its
/// deadline is past or absent, or when no call time is known.
pub fn urgent_slots(
    load: &OwnerLoad,
    fair: f64,
    limit: u32,
    call_time: Option<Duration>,
    now: DateTime<Utc>,
) -> Option<u32> {
    let c = call_time?.as_secs_f64();
    let left = (load.deadline? - now).to_std().ok()?.as_secs_f64();
    if left <= 0.0 || c <= 0.0 {
        return None;
    }
    let need = load.remaining as f64 * c / (URGENCY_MARGIN * left);
    (need > fair).then(|| (need.ceil() as u32).clamp(1, limit.max(1)))
}

/// How many of `want` requests of a model (whose limit is `limit` calls at
/// once) each owner of `loads` gets, by the rules of this module; the
/// result is parallel to `loads` and sums to at most `want` (less only when
/// caps leave no room).
pub fn split(
    limit: u32,
    want: u32,
    loads: &[OwnerLoad],
    schedule: &Schedule,
    call_time: Option<Duration>,
    now: DateTime<Utc>,
) -> Vec<u32> {
    let mut given = vec![0u32; loads.len()];
    if loads.is_empty() || want == 0 {
        return given;
    }
    let (weights, total_weight) = schedule.weights_of(loads);
    let room: Vec<u32> = loads.iter().map(|l| schedule.room(l)).collect();
    let mut left = want;

    // 1. Urgent owners, earliest deadline first, up to what they need.
    let mut urgent: Vec<(DateTime<Utc>, usize, u32)> = loads
        .iter()
        .enumerate()
        .filter_map(|(i, l)| {
            let fair = f64::from(limit) * weights[i] as f64 / total_weight as f64;
            let need = urgent_slots(l, fair, limit, call_time, now)?;
            Some((l.deadline?, i, need))
        })
        .collect();
    urgent.sort();
    for (_, i, need) in urgent {
        let target = need.saturating_mul(AHEAD);
        let n = target
            .saturating_sub(loads[i].active)
            .min(room[i])
            .min(left);
        given[i] += n;
        left -= n;
    }

    // 2. Water filling by held requests per unit of weight. The heap key is
    // compared as a fraction (held/weight) through cross multiplication, so
    // that no rounding decides between owners.
    #[derive(PartialEq, Eq)]
    struct Level {
        held: u64,
        weight: u64,
        deadline: Reverse<Option<DateTime<Utc>>>,
        index: Reverse<usize>,
    }
    impl Ord for Level {
        fn cmp(&self, o: &Self) -> std::cmp::Ordering {
            // Lower held/weight is better (comes out of the max-heap first).
            (o.held * self.weight)
                .cmp(&(self.held * o.weight))
                .then_with(|| deadline_first(&self.deadline.0, &o.deadline.0))
                .then_with(|| self.index.cmp(&o.index))
        }
    }
    impl PartialOrd for Level {
        fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(o))
        }
    }
    let mut heap: BinaryHeap<Level> = loads
        .iter()
        .enumerate()
        .filter(|(i, _)| given[*i] < room[*i])
        .map(|(i, l)| Level {
            held: u64::from(l.active) + u64::from(given[i]),
            weight: weights[i],
            deadline: Reverse(l.deadline),
            index: Reverse(i),
        })
        .collect();
    while left > 0 {
        let Some(mut top) = heap.pop() else { break };
        let i = top.index.0;
        given[i] += 1;
        left -= 1;
        top.held += 1;
        if given[i] < room[i] {
            heap.push(top);
        }
    }
    given
}

/// Rows each owner of `loads` may claim on top of `given` (what [`split`]
/// gave it) by rule 4, for a daemon that may use `usable` of the model's
/// `limit` slots; parallel to `loads`.
pub fn catch_up(
    limit: u32,
    usable: u32,
    loads: &[OwnerLoad],
    given: &[u32],
    schedule: &Schedule,
    call_time: Option<Duration>,
    now: DateTime<Utc>,
) -> Vec<u32> {
    let mut extra = vec![0u32; loads.len()];
    let (weights, total) = schedule.weights_of(loads);
    if total == 0 {
        return extra;
    }
    let fair = |i: usize| u64::from(AHEAD) * u64::from(limit) * weights[i] / total;
    let held = |i: usize| u64::from(loads[i].active) + u64::from(given[i]);
    // An urgent owner is meant to have every slot it needs: nobody catches
    // up with it (see rule 1).
    let urgent = loads.iter().enumerate().any(|(i, l)| {
        let share = f64::from(limit) * weights[i] as f64 / total as f64;
        urgent_slots(l, share, limit, call_time, now).is_some()
    });
    let long = (0..loads.len()).any(|i| held(i) > fair(i));
    if urgent || !long {
        return extra;
    }
    for (i, l) in loads.iter().enumerate() {
        let mine = (u64::from(AHEAD) * u64::from(usable) * weights[i]).div_ceil(total);
        let room = u64::from(schedule.room(l));
        let n = fair(i)
            .saturating_sub(held(i))
            .min(mine.saturating_sub(u64::from(given[i])))
            .min(room.saturating_sub(u64::from(given[i])));
        extra[i] = u32::try_from(n).unwrap_or(u32::MAX);
    }
    extra
}

/// Earlier deadline is greater (preferred); no deadline is last.
fn deadline_first(a: &Option<DateTime<Utc>>, b: &Option<DateTime<Utc>>) -> std::cmp::Ordering {
    match (a, b) {
        (Some(a), Some(b)) => b.cmp(a),
        (Some(_), None) => std::cmp::Ordering::Greater,
        (None, Some(_)) => std::cmp::Ordering::Less,
        (None, None) => std::cmp::Ordering::Equal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(owner: &str, active: u32) -> OwnerLoad {
        OwnerLoad {
            owner: owner.into(),
            active,
            deadline: None,
            remaining: 1_000_000,
        }
    }

    fn now() -> DateTime<Utc> {
        "2026-01-01T00:00:00Z".parse().unwrap()
    }

    #[test]
    fn an_owner_alone_gets_everything() {
        let s = Schedule::default();
        assert_eq!(split(32, 40, &[load("a", 60)], &s, None, now()), [40]);
    }

    #[test]
    fn a_newcomer_gets_the_claim_until_it_holds_its_share() {
        let s = Schedule::default();
        assert_eq!(
            split(32, 20, &[load("a", 64), load("b", 0)], &s, None, now()),
            [0, 20]
        );
        // Level: the rest alternates.
        assert_eq!(
            split(32, 10, &[load("a", 30), load("b", 30)], &s, None, now()),
            [5, 5]
        );
    }

    #[test]
    fn weights_share_in_proportion() {
        let s = Schedule {
            weights: [("a".to_owned(), 3)].into(),
            ..Schedule::default()
        };
        assert_eq!(
            split(32, 64, &[load("a", 0), load("b", 0)], &s, None, now()),
            [48, 16]
        );
    }

    #[test]
    fn caps_bound_what_an_owner_holds() {
        let s = Schedule {
            caps: [("a".to_owned(), 10)].into(),
            ..Schedule::default()
        };
        assert_eq!(split(32, 20, &[load("a", 4)], &s, None, now()), [6]);
        assert_eq!(
            split(32, 20, &[load("a", 4), load("b", 30)], &s, None, now()),
            [6, 14]
        );
    }

    #[test]
    fn an_urgent_batch_gets_the_slots_it_needs() {
        let s = Schedule::default();
        let mut tight = load("b", 0);
        // 300 calls of 0.1 s with 10 s left: 30 call-seconds in 5 s of
        // plan, i.e. 6 slots (all 4 there are); its fair share is 2.
        tight.deadline = Some(now() + chrono::Duration::seconds(10));
        tight.remaining = 300;
        let c = Some(Duration::from_millis(100));
        let got = split(4, 8, &[load("a", 0), tight.clone()], &s, c, now());
        assert_eq!(got, [0, 8], "b needs all 4 slots, 8 rows with those ahead");
        // Plenty of time: fair share.
        tight.deadline = Some(now() + chrono::Duration::seconds(100));
        assert_eq!(split(4, 8, &[load("a", 0), tight], &s, c, now()), [4, 4]);
    }

    #[test]
    fn a_newcomer_catches_up_even_when_nothing_is_asked() {
        let s = Schedule::default();
        let loads = [load("a", 64), load("b", 0)];
        // Limit 32 over two daemons of 16 slots: b's fair share is 32 rows,
        // this daemon's part of it 16.
        assert_eq!(catch_up(32, 16, &loads, &[0, 0], &s, None, now()), [0, 16]);
        // What the claim gave it counts.
        assert_eq!(catch_up(32, 16, &loads, &[0, 10], &s, None, now()), [0, 6]);
        // The other daemon then tops it up to its fair share.
        let loads = [load("a", 64), load("b", 20)];
        assert_eq!(catch_up(32, 16, &loads, &[0, 0], &s, None, now()), [0, 12]);
    }

    #[test]
    fn nobody_catches_up_when_no_owner_holds_more_than_its_share() {
        let s = Schedule::default();
        let even = [load("a", 20), load("b", 10)];
        assert_eq!(catch_up(32, 16, &even, &[0, 0], &s, None, now()), [0, 0]);
        assert_eq!(
            catch_up(32, 16, &[load("a", 0)], &[0], &s, None, now()),
            [0]
        );
    }

    #[test]
    fn catching_up_respects_weights_caps_and_urgency() {
        let weighted = Schedule {
            weights: [("b".to_owned(), 3)].into(),
            ..Schedule::default()
        };
        let loads = [load("a", 64), load("b", 0)];
        // b's fair share is 48 rows, this daemon's part 24.
        assert_eq!(
            catch_up(32, 16, &loads, &[0, 0], &weighted, None, now()),
            [0, 24]
        );
        let capped = Schedule {
            caps: [("b".to_owned(), 5)].into(),
            ..Schedule::default()
        };
        assert_eq!(
            catch_up(32, 16, &loads, &[0, 2], &capped, None, now()),
            [0, 3]
        );
        let mut urgent = load("a", 64);
        urgent.deadline = Some(now() + chrono::Duration::seconds(10));
        urgent.remaining = 10_000;
        let c = Some(Duration::from_millis(100));
        let loads = [urgent, load("b", 0)];
        let s = Schedule::default();
        assert_eq!(catch_up(32, 16, &loads, &[0, 0], &s, c, now()), [0, 0]);
    }

    #[test]
    fn urgency_needs_a_known_rate() {
        let mut tight = load("b", 0);
        tight.deadline = Some(now() + chrono::Duration::seconds(1));
        assert_eq!(urgent_slots(&tight, 1.0, 8, None, now()), None);
        tight.deadline = Some(now() - chrono::Duration::seconds(1));
        let c = Some(Duration::from_millis(100));
        assert_eq!(urgent_slots(&tight, 1.0, 8, c, now()), None, "past");
    }
}
