//! Per-model slots in this daemon. The global limit (across daemons) is
//! enforced by the claim statement; this keeps one daemon from claiming more
//! than it has slots for, and tells the producer when slots free up.

use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::Notify;

/// Counts this daemon's requests in flight, by model.
#[derive(Debug, Default)]
pub struct Limiter {
    in_flight: Mutex<HashMap<String, u32>>,
    freed: Notify,
}

impl Limiter {
    /// A limiter with nothing in flight.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that a request of `model` was taken.
    pub fn acquire(&self, model: &str) {
        let mut m = self.in_flight.lock().expect("limiter lock");
        let n = m.entry(model.to_owned()).or_default();
        *n += 1;
        metrics::gauge!("fusillade_in_flight", "model" => model.to_owned()).set(f64::from(*n));
    }

    /// Records that `n` requests of `model` ended, and wakes the producer.
    pub fn release(&self, model: &str, n: u32) {
        {
            let mut m = self.in_flight.lock().expect("limiter lock");
            if let Some(c) = m.get_mut(model) {
                *c = c.saturating_sub(n);
                metrics::gauge!("fusillade_in_flight", "model" => model.to_owned())
                    .set(f64::from(*c));
                if *c == 0 {
                    m.remove(model);
                }
            }
        }
        self.freed.notify_one();
    }

    /// Requests of each model in flight now.
    pub fn snapshot(&self) -> HashMap<String, u32> {
        self.in_flight.lock().expect("limiter lock").clone()
    }

    /// All requests in flight now.
    pub fn total(&self) -> u32 {
        self.in_flight.lock().expect("limiter lock").values().sum()
    }

    /// Waits until some slot is released (returns at once if one was released
    /// since the last wait).
    pub async fn freed(&self) {
        self.freed.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_model() {
        let l = Limiter::new();
        l.acquire("a");
        l.acquire("a");
        l.acquire("b");
        assert_eq!(l.total(), 3);
        l.release("a", 2);
        assert_eq!(l.snapshot().get("a"), None);
        assert_eq!(l.snapshot().get("b"), Some(&1));
        l.release("zzz", 1); // unknown models are ignored
        assert_eq!(l.total(), 1);
    }
}
