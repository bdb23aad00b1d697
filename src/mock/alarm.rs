//! Precise waits for the mock: one thread wakes each call at its deadline.
//!
//! tokio's timer rounds a sleep up to its next millisecond tick and fires it
//! when the runtime next turns its driver, so a 50 ms sleep in the mock
//! lasted 51.8 ms (median, one client, idle machine). That error counted
//! against the engine in every utilisation figure. A thread blocked on a
//! channel with a timeout wakes within tens of microseconds of the
//! deadline, and one thread serves every call of a mock.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Instant;
use tokio::sync::oneshot;

/// A call waiting for its deadline.
struct Wake {
    at: Instant,
    seq: u64,
    tx: oneshot::Sender<()>,
}

impl PartialEq for Wake {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Wake {}
impl PartialOrd for Wake {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Wake {
    // Reversed: the heap's top is the earliest deadline.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// Hands out waits that end at an exact instant; the thread stops when the
/// alarm is dropped (waits still pending then end at once).
pub(super) struct Alarm {
    tx: mpsc::Sender<(Instant, oneshot::Sender<()>)>,
}

impl Alarm {
    /// Starts the alarm thread.
    pub(super) fn start() -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("mock-alarm".into())
            .spawn(move || ring(&rx))?;
        Ok(Self { tx })
    }

    /// Waits until `at` (at once when the alarm thread is gone).
    pub(super) async fn until(&self, at: Instant) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send((at, tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

fn ring(rx: &mpsc::Receiver<(Instant, oneshot::Sender<()>)>) {
    let mut heap = BinaryHeap::<Wake>::new();
    let mut seq = 0u64;
    loop {
        let now = Instant::now();
        while heap.peek().is_some_and(|w| w.at <= now) {
            let wake = heap.pop().expect("peeked");
            let _ = wake.tx.send(());
        }
        let next = match heap.peek() {
            Some(w) => rx.recv_timeout(w.at - now),
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match next {
            Ok((at, tx)) => {
                seq += 1;
                heap.push(Wake { at, seq, tx });
                // Take everything already queued before sleeping again.
                while let Ok((at, tx)) = rx.try_recv() {
                    seq += 1;
                    heap.push(Wake { at, seq, tx });
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn waits_end_in_deadline_order_and_never_early() {
        let alarm = Alarm::start().unwrap();
        let start = Instant::now();
        let order = std::sync::Mutex::new(Vec::new());
        let wait = |ms: u64| {
            let (alarm, order) = (&alarm, &order);
            async move {
                let at = start + Duration::from_millis(ms);
                alarm.until(at).await;
                assert!(Instant::now() >= at);
                order.lock().unwrap().push(ms);
            }
        };
        // Far enough apart that a stalled test thread cannot swap two.
        tokio::join!(wait(300), wait(100), wait(200), wait(0));
        assert_eq!(*order.lock().unwrap(), vec![0, 100, 200, 300]);
    }

    #[tokio::test]
    async fn a_dropped_alarm_ends_its_thread_and_pending_waits() {
        let alarm = Alarm::start().unwrap();
        let far = Instant::now() + Duration::from_secs(3600);
        let (tx, rx) = oneshot::channel();
        alarm.tx.send((far, tx)).unwrap();
        drop(alarm);
        // The thread drops the pending wait's sender as it stops.
        assert!(rx.await.is_err());
    }
}
