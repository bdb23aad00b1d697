//! Reads of one batch by many clients at once share their query.
//!
//! Clients poll `GET /v1/batches/{id}` in loops, often a hundred on one
//! batch. Each read waits for the next query of that batch that *starts
//! after it arrived*, so it never answers a state older than its own arrival
//! (a read that follows a cancel sees the cancel), while however many clients
//! poll, at most two queries per batch run at a time: the one running and the
//! one queued behind it for everyone who arrived meanwhile. The answer's JSON
//! is rendered once per query and shared as well.
//!
//! While readers overlap, a batch's queries also start at most once per
//! interval (`[api] batch_read_interval_ms`, 25 ms by default). Sharing the
//! query alone leaves each read's HTTP work: clients that poll without pause
//! then read as fast as the server answers, thousands of times a second,
//! and take that CPU from the batch they watch. Pacing the queries paces
//! such loops, so a hundred of them cost a few thousand cheap reads a second
//! at most, and no read waits much longer than one interval. A read of a
//! batch whose last query started longer ago than that (a client polling
//! every second, say) starts its query at once.
//!
//! The interval trades the latency of such loops against what they cost:
//! with 100 clients reading one batch without pause during a 50,000-line
//! batch (`fusillade-bench api-load --scenario poll`, BENCHMARKS.md), 20 ms
//! gave 4,500 reads/s, the batch 0.84-0.94 of its rate and reads' p99
//! 35-42 ms; 25 ms gave 3,700 reads/s, 0.85-0.99 and 35-43 ms.

use super::ApiBackend;
use super::wire::BatchObject;
use crate::domain::batch::{Batch, BatchId};
use crate::store::{Owner, StoreError};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// One batch as a shared query found it, with its JSON rendered on first use.
#[derive(Debug)]
pub struct SharedBatch {
    /// The batch.
    pub batch: Batch,
    json: OnceLock<Bytes>,
}

impl SharedBatch {
    /// The batch as the API's JSON object.
    pub fn json(&self) -> Bytes {
        self.json
            .get_or_init(|| {
                serde_json::to_vec(&BatchObject::from(&self.batch))
                    .expect("a batch object serializes")
                    .into()
            })
            .clone()
    }
}

/// What one query found; `Failed` sends each reader to ask on its own, so
/// the error it answers is its own.
#[derive(Debug, Clone)]
enum Found {
    Batch(Arc<SharedBatch>),
    Missing,
    /// The database is away: every reader answers so at once, rather than
    /// waiting out its own query's timeout after the shared one's.
    Unavailable,
    Failed,
}

type Outcome = watch::Receiver<Option<Found>>;
type Key = (Arc<str>, BatchId);

/// The queries of one batch: the one running, and the one that starts when
/// it ends.
#[derive(Default)]
struct Flights {
    running: Option<Outcome>,
    queued: Option<Outcome>,
    /// When the last query of the batch started.
    started: Option<Instant>,
}

/// Shared reads of batches, keyed by owner and batch.
#[derive(Default, Clone)]
pub struct BatchReads {
    flights: Arc<Mutex<HashMap<Key, Flights>>>,
    counts: Arc<ReadCounts>,
    interval: Duration,
}

/// Reads served and queries run, since start.
#[derive(Debug, Default)]
pub struct ReadCounts {
    /// Reads answered.
    pub reads: AtomicU64,
    /// Queries run for them.
    pub queries: AtomicU64,
}

impl BatchReads {
    /// Shared reads whose queries of one batch start at most once per
    /// `interval` while readers overlap.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            ..Self::default()
        }
    }

    /// The owner's batch as of a query started after this call began, or
    /// `None` when the owner has no such batch.
    pub async fn get<S: ApiBackend>(
        &self,
        store: &S,
        owner: &str,
        id: BatchId,
    ) -> Result<Option<Arc<SharedBatch>>, StoreError> {
        self.counts.reads.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("fusillade_api_batch_reads_total").increment(1);
        let key: Key = (Arc::from(owner), id);
        let mut outcome = self.join(store, key);
        let found = match outcome.wait_for(Option::is_some).await {
            Ok(found) => found.clone().expect("waited for an outcome"),
            // The query's task ended without an answer (it panicked).
            Err(_) => Found::Failed,
        };
        match found {
            Found::Batch(b) => Ok(Some(b)),
            Found::Missing => Ok(None),
            // The shared query logged the cause.
            Found::Unavailable => Err(StoreError::unavailable("the database is unavailable")),
            Found::Failed => {
                self.counted();
                let batch = store.get_batch(Owner::Only(owner), id).await?;
                Ok(batch.map(|batch| {
                    Arc::new(SharedBatch {
                        batch,
                        json: OnceLock::new(),
                    })
                }))
            }
        }
    }

    /// The outcome of the next query of `key` to start, starting one when
    /// none is queued. The query runs on a task of its own, so a reader that
    /// goes away does not strand the others.
    fn join<S: ApiBackend>(&self, store: &S, key: Key) -> Outcome {
        let mut flights = self.flights.lock().expect("batch reads lock");
        let f = flights.entry(key.clone()).or_default();
        if let Some(queued) = &f.queued {
            return queued.clone();
        }
        let (tx, rx) = watch::channel(None);
        let before = f.running.clone();
        let recent = f.started.is_some_and(|t| t.elapsed() < self.interval);
        let queued = before.is_some() || recent;
        if queued {
            f.queued = Some(rx.clone());
        } else {
            f.running = Some(rx.clone());
            f.started = Some(Instant::now());
        }
        tokio::spawn(self.clone().query(store.clone(), key, queued, before, tx));
        rx
    }

    /// Runs the query of one flight: a queued one first waits for the
    /// running one and for the interval since the last start.
    async fn query<S: ApiBackend>(
        self,
        store: S,
        key: Key,
        queued: bool,
        before: Option<Outcome>,
        tx: watch::Sender<Option<Found>>,
    ) {
        if let Some(mut before) = before {
            let _ = before.wait_for(Option::is_some).await;
        }
        if queued {
            // Readers arriving during this pause still join this query,
            // which has not started yet.
            let last = self.started(&key);
            if let Some(due) = last.map(|t| t + self.interval) {
                tokio::time::sleep_until(due.into()).await;
            }
            // From here on, a new reader must not join this query: it
            // starts now, maybe before that reader arrived.
            let mut flights = self.flights.lock().expect("batch reads lock");
            let f = flights.entry(key.clone()).or_default();
            f.running = f.queued.take();
            f.started = Some(Instant::now());
        }
        self.counted();
        let found = match store.get_batch(Owner::Only(&key.0), key.1).await {
            Ok(Some(batch)) => Found::Batch(Arc::new(SharedBatch {
                batch,
                json: OnceLock::new(),
            })),
            Ok(None) => Found::Missing,
            Err(e) if e.is_unavailable() => {
                tracing::warn!(error = %e, "batch read: database unavailable");
                Found::Unavailable
            }
            Err(_) => Found::Failed,
        };
        let mine = tx.subscribe();
        tx.send_replace(Some(found));
        let idle = {
            let mut flights = self.flights.lock().expect("batch reads lock");
            let Some(f) = flights.get_mut(&key) else {
                return;
            };
            if f.running.as_ref().is_some_and(|r| r.same_channel(&mine)) {
                f.running = None;
            }
            f.running.is_none() && f.queued.is_none()
        };
        if idle {
            // The entry remembers when its last query started until the
            // interval has passed, so the next read waits out the rest.
            tokio::time::sleep(self.interval).await;
            self.forget_if_idle(&key);
        }
    }

    /// Drops `key`'s entry when no query of it runs, waits or started
    /// within the interval.
    fn forget_if_idle(&self, key: &Key) {
        let mut flights = self.flights.lock().expect("batch reads lock");
        if flights.get(key).is_some_and(|f| {
            f.running.is_none()
                && f.queued.is_none()
                && f.started.is_none_or(|t| t.elapsed() >= self.interval)
        }) {
            flights.remove(key);
        }
    }

    /// When the last query of `key` started.
    fn started(&self, key: &Key) -> Option<Instant> {
        let flights = self.flights.lock().expect("batch reads lock");
        flights.get(key).and_then(|f| f.started)
    }

    /// Counts one query, for [`BatchReads::counts`] and the metric.
    fn counted(&self) {
        self.counts.queries.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("fusillade_api_batch_read_queries_total").increment(1);
    }

    /// Reads served and queries run so far.
    pub fn counts(&self) -> &ReadCounts {
        &self.counts
    }

    /// Batches with a query running or queued.
    pub fn in_flight(&self) -> usize {
        let flights = self.flights.lock().expect("batch reads lock");
        flights
            .values()
            .filter(|f| f.running.is_some() || f.queued.is_some())
            .count()
    }
}
