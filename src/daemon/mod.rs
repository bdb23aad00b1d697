//! The runtime: claims requests, calls the upstream, records outcomes, and
//! keeps batches moving. One file per role:
//!
//! - `slots`: this daemon's upstream slots per model, and the requests
//!   claimed ahead that wait for one.
//! - `producer`: the claim loop (slots and requests -> calls).
//! - `executor`: one request: call the upstream, decide what follows.
//! - `completer`: outcomes written many rows per statement.
//! - `abort`: the switch that stops one call, and why.
//! - `heartbeat`: liveness, on a thread of its own.
//! - `standing`: whether the daemon may work, and dropping everything when
//!   it may not (declared dead).
//! - `leases`: stopping calls whose lease was lost or batch cancelled.
//! - `rescuer`: returns claims of dead daemons to the queue.
//! - `finalizer`: completes, expires and cancels batches.
//! - `adaptive`: each route's concurrency limit (AIMD on refusals and a
//!   latency gradient, under the configured one) and `Retry-After` pauses
//!   shared through the database.
//! - `monitor`: what the daemon's owner sees while it runs (calls in
//!   flight, the routes' limits, a broken upstream).
//!
//! Shutdown is passed in as a [`CancellationToken`]; every spawned task is
//! tracked and awaited.

mod abort;
mod adaptive;
mod coalesce;
mod completer;
mod escalate;
mod executor;
mod finalizer;
mod heartbeat;
mod leases;
mod monitor;
mod pack;
mod producer;
mod rescuer;
mod slots;
mod standing;

use crate::config::Config;
pub use crate::config::DaemonSettings as DaemonConfig;
use crate::domain::batch::BatchId;
use crate::domain::daemon::{DaemonStats, NewDaemon};
use crate::domain::ids::DaemonId;
use crate::domain::request::RequestId;
use crate::store::{
    DaemonStore, MaintenanceStore, QueueStore, RouteStore, StoreError, WorkNotifier,
};
use crate::upstream::UpstreamClient;
use abort::{Abort, AbortReason};
pub use monitor::{Monitor, RouteLimit, UpstreamFailure};
use slots::Slots;
use standing::Standing;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Everything the daemon needs from storage.
pub trait DaemonBackend:
    QueueStore
    + MaintenanceStore
    + DaemonStore
    + RouteStore
    + crate::store::EscalationStore
    + WorkNotifier
    + Clone
    + Send
    + Sync
    + 'static
{
}
impl<T> DaemonBackend for T where
    T: QueueStore
        + MaintenanceStore
        + DaemonStore
        + RouteStore
        + crate::store::EscalationStore
        + WorkNotifier
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// A request this daemon holds, with the switch that aborts its call.
#[derive(Debug)]
struct Held {
    attempt: i32,
    abort: Abort,
}

/// State shared by the daemon's tasks.
struct Shared<S> {
    store: S,
    slots: Arc<Slots>,
    /// The owner's view: calls in flight, and the first calls' failures.
    monitor: Monitor,
    /// The one batch this daemon works on, if it is scoped.
    scope: Option<BatchId>,
    held: Mutex<HashMap<RequestId, Held>>,
    id: RwLock<DaemonId>,
    config: watch::Receiver<Arc<Config>>,
    client: RwLock<(Arc<Config>, Arc<UpstreamClient>)>,
    /// Whether the daemon may claim, and what it does when it may not.
    standing: Standing,
    /// Live daemons sharing the database (at least 1): each takes a fair
    /// share of every model's limit, so one daemon cannot starve the others.
    peers: AtomicU32,
    done: AtomicU64,
    failed: AtomicU64,
    abandoned: AtomicU64,
    /// Identical deterministic requests in flight, and answers to reuse.
    coalescer: coalesce::Coalescer,
    /// Each route's adaptive limit and pause.
    routes: Arc<adaptive::Routes>,
    /// Batches whose last result was just written, for the finalizer.
    filled: finalizer::Filled,
}

impl<S> Shared<S> {
    fn id(&self) -> DaemonId {
        *self.id.read().expect("id lock")
    }

    /// The current configuration, and a client built for it.
    fn current(&self) -> (Arc<Config>, Arc<UpstreamClient>) {
        let latest = self.config.borrow().clone();
        {
            let c = self.client.read().expect("client lock");
            if Arc::ptr_eq(&c.0, &latest) {
                return c.clone();
            }
        }
        let client = Arc::new(UpstreamClient::new(latest.clone()));
        let mut c = self.client.write().expect("client lock");
        *c = (latest, client);
        c.clone()
    }

    fn stats(&self) -> DaemonStats {
        DaemonStats {
            in_flight: self.slots.in_flight() as i32,
            requests_done: self.done.load(Ordering::Relaxed) as i64,
            requests_failed: self.failed.load(Ordering::Relaxed) as i64,
        }
    }
}

/// What a daemon did before it stopped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DaemonReport {
    /// Requests it completed.
    pub completed: u64,
    /// Requests it ended as failed or cancelled.
    pub failed: u64,
    /// Calls it dropped without writing anything, having lost its standing
    /// (declared dead, or unable to heartbeat): their requests went back to
    /// the queue.
    pub abandoned: u64,
}

/// A worker: register, then claim and run requests until shut down.
pub struct Daemon<S> {
    store: S,
    config: watch::Receiver<Arc<Config>>,
    scope: Option<BatchId>,
    slots: Arc<Slots>,
    monitor: Monitor,
}

impl<S: DaemonBackend> Daemon<S> {
    /// A daemon over `store`, following configuration updates sent on `config`
    /// (send a new value to apply a reloaded file).
    pub fn new(store: S, config: watch::Receiver<Arc<Config>>) -> Self {
        let slots = Arc::new(Slots::new());
        Self {
            store,
            config,
            scope: None,
            monitor: Monitor::new(slots.clone(), 0),
            slots,
        }
    }

    /// Claims only requests of `batch` (the daemon inside `fusillade run`),
    /// leaving every other batch to other daemons.
    pub fn scoped_to(mut self, batch: BatchId) -> Self {
        self.scope = Some(batch);
        self
    }

    /// Until a call is answered usably, calls that fail like a
    /// misconfigured upstream go back to the queue instead of failing their
    /// lines; once `calls` of them failed the same way, the upstream is
    /// judged broken ([`Monitor::broken_upstream`]) and nothing more is
    /// sent: the owner is expected to stop the daemon then.
    pub fn holding_misconfigured_calls(mut self, calls: u32) -> Self {
        self.monitor = Monitor::new(self.slots.clone(), calls.max(1));
        self
    }

    /// A live view of this daemon, to read while it runs.
    pub fn monitor(&self) -> Monitor {
        self.monitor.clone()
    }

    /// Runs until `shutdown` fires, then stops claiming, lets calls in flight
    /// finish within the grace period, releases the rest, and deregisters.
    /// Database errors never end it; it backs off and goes on.
    pub async fn run(self, shutdown: CancellationToken) -> Result<DaemonReport, StoreError> {
        let initial = self.config.borrow().clone();
        let registered = std::time::Instant::now();
        let id = register(&self.store, &initial, &shutdown).await?;
        let routes = self.monitor.routes();
        let shared = Arc::new(Shared {
            store: self.store,
            slots: self.slots,
            monitor: self.monitor,
            scope: self.scope,
            held: Mutex::new(HashMap::new()),
            id: RwLock::new(id),
            client: RwLock::new((
                initial.clone(),
                Arc::new(UpstreamClient::new(initial.clone())),
            )),
            config: self.config,
            standing: Standing::new(),
            peers: AtomicU32::new(1),
            done: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            abandoned: AtomicU64::new(0),
            coalescer: coalesce::Coalescer::default(),
            routes,
            filled: finalizer::Filled::default(),
        });
        if let Ok(n) = shared.store.live_daemons(initial.daemon.stale_after).await {
            shared.peers.store(n.max(1), Ordering::Relaxed);
        }
        tracing::info!(daemon = %id, peers = shared.peers.load(Ordering::Relaxed), "daemon started");

        let background = CancellationToken::new();
        // Also fired if this future is dropped unfinished (its runtime shut
        // down, its task aborted): the heartbeat thread must not outlive the
        // daemon and keep a dead daemon's claims looking alive.
        let _background_guard = background.clone().drop_guard();
        let tasks = TaskTracker::new();
        let executors = TaskTracker::new();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let completer = tokio::spawn(completer::run(shared.clone(), rx, shutdown.clone()));
        match heartbeat::spawn(shared.clone(), registered, background.clone()) {
            Ok(ended) => {
                let (shared, background) = (shared.clone(), background.clone());
                tasks.spawn(async move {
                    let _ = ended.await;
                    if !background.is_cancelled() {
                        // Nobody proves this daemon alive any more: it must
                        // not hold a call past its stale window.
                        tracing::error!("the heartbeat thread ended; this daemon stops working");
                        standing::abandon_all(&shared);
                    }
                });
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot start the heartbeat thread; this daemon will not work");
                standing::abandon_all(&shared);
            }
        }
        tasks.spawn(leases::run(shared.clone(), background.clone()));
        tasks.spawn(rescuer::run(shared.clone(), background.clone()));
        tasks.spawn(finalizer::run(shared.clone(), background.clone()));
        tasks.spawn(adaptive::run(shared.clone(), background.clone()));

        let tx_release = tx.clone();
        producer::run(shared.clone(), tx, executors.clone(), shutdown.clone()).await;

        // Stopping: calls in flight may finish within the grace period.
        let grace = shared.config.borrow().daemon.shutdown_grace;
        // Requests claimed but not started go back at once.
        for job in shared.slots.drain_waiting() {
            let _ = tx_release.send(executor::Outcome::Requeue(crate::store::Requeue {
                id: job.req.id,
                attempt: job.req.attempt,
                delay: Duration::ZERO,
                is_retry: false,
            }));
        }
        drop(tx_release);
        let _ = tokio::time::timeout(grace, shared.slots.idle()).await;
        for held in shared.held.lock().expect("held lock").values() {
            held.abort.fire(AbortReason::Released);
        }
        executors.close();
        executors.wait().await;
        // The completer ends once every sender (the executors') is gone.
        if let Err(e) = completer.await {
            tracing::error!(error = %e, "completer task failed");
        }
        background.cancel();
        tasks.close();
        tasks.wait().await;
        let id = shared.id();
        if let Err(e) = shared.store.mark_daemon_stopped(id).await {
            tracing::warn!(daemon = %id, error = %e, "could not record the stop");
        }
        let report = DaemonReport {
            completed: shared.done.load(Ordering::Relaxed),
            failed: shared.failed.load(Ordering::Relaxed),
            abandoned: shared.abandoned.load(Ordering::Relaxed),
        };
        tracing::info!(
            daemon = %id,
            completed = report.completed,
            failed = report.failed,
            abandoned = report.abandoned,
            "daemon stopped"
        );
        Ok(report)
    }
}

/// Registers with retries: a database that is down at start is waited for.
async fn register<S: DaemonBackend>(
    store: &S,
    config: &Config,
    shutdown: &CancellationToken,
) -> Result<DaemonId, StoreError> {
    let mut backoff = DbBackoff::default();
    loop {
        let new = NewDaemon {
            hostname: hostname(),
            pid: std::process::id() as i32,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            config: describe(config),
        };
        match store.register_daemon(new).await {
            Ok(d) => return Ok(d.id),
            Err(e) => {
                tracing::warn!(error = %e, "cannot register the daemon; retrying");
                if !backoff.wait(shutdown).await {
                    return Err(e);
                }
            }
        }
    }
}

/// The configuration as recorded in the daemons table: no keys, no URLs' secrets.
fn describe(config: &Config) -> serde_json::Value {
    let routes: serde_json::Map<String, serde_json::Value> = config
        .models
        .iter()
        .map(|(m, r)| (m.clone(), serde_json::json!({"concurrency": r.concurrency})))
        .collect();
    serde_json::json!({
        "default_concurrency": config.upstream.concurrency,
        "models": routes,
        "max_retries": config.daemon.retry.max_retries,
        "claim_batch": config.daemon.claim_batch,
    })
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// Backoff after database errors: 100 ms doubling to 5 s.
#[derive(Debug)]
struct DbBackoff {
    next: Duration,
}

impl Default for DbBackoff {
    fn default() -> Self {
        Self {
            next: Duration::from_millis(100),
        }
    }
}

impl DbBackoff {
    /// Sleeps the next delay; `false` if `stop` fired first.
    async fn wait(&mut self, stop: &CancellationToken) -> bool {
        let d = self.next;
        self.next = (self.next * 2).min(Duration::from_secs(5));
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = stop.cancelled() => false,
        }
    }

    fn reset(&mut self) {
        *self = Self::default();
    }
}

/// A uniform random number in [0, 1) for jitter.
fn jitter() -> f64 {
    // xorshift64, seeded once per thread: every outcome draws one, and the
    // system's random source costs a system call each time.
    thread_local! {
        static STATE: std::cell::Cell<u64> =
            std::cell::Cell::new(uuid::Uuid::new_v4().as_u128() as u64 | 1);
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        (x >> 11) as f64 / (1u64 << 53) as f64
    })
}
