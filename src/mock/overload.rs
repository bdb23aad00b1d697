//! Overload behaviour of the mock, for scheduling tests: calls in flight
//! counted per batch (from the `X-Fusillade-Batch-Id` header, so a test can
//! tell which owner holds how many of a model's slots), and an upstream that
//! refuses calls beyond a concurrency, as a rate-limited server does.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Refuse calls above a number in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overload {
    /// Calls in flight (this one included) above which a call is answered
    /// 429 at once.
    pub max_in_flight: u64,
    /// Sent as `Retry-After` (whole seconds) with each 429, if any.
    pub retry_after: Option<Duration>,
}

/// Calls in flight per batch, and 429s answered.
#[derive(Debug, Default)]
pub(super) struct Tally {
    batches: RwLock<HashMap<String, Arc<AtomicU64>>>,
    /// Calls answered 429 for overload.
    pub refused: AtomicU64,
}

impl Tally {
    /// Counts a call of `batch` in flight until the guard drops.
    pub fn enter(&self, batch: &str) -> BatchInFlight {
        let counter = self.counter(batch);
        counter.fetch_add(1, Relaxed);
        BatchInFlight(counter)
    }

    fn counter(&self, batch: &str) -> Arc<AtomicU64> {
        if let Some(c) = self.batches.read().expect("not poisoned").get(batch) {
            return c.clone();
        }
        self.batches
            .write()
            .expect("not poisoned")
            .entry(batch.to_owned())
            .or_default()
            .clone()
    }

    /// Calls in flight now, per batch id (batches seen so far, 0 included).
    pub fn in_flight(&self) -> HashMap<String, u64> {
        self.batches
            .read()
            .expect("not poisoned")
            .iter()
            .map(|(b, c)| (b.clone(), c.load(Relaxed)))
            .collect()
    }
}

/// A call of one batch in flight; counted out on drop.
pub(super) struct BatchInFlight(Arc<AtomicU64>);

impl Drop for BatchInFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}
