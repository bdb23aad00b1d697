//! Running daemons against a mock upstream in tests.

use super::*;
use fusillade::BatchStore;
use fusillade::config::Config;
use fusillade::daemon::{Daemon, DaemonBackend, DaemonReport, Monitor};
use fusillade::domain::batch::{Batch, BatchCounts};
use fusillade::store::Owner;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A config pointing every model at `url`, with fast timers for tests, plus
/// `extra` TOML (which may add `[models.x]` sections; `[upstream]` and
/// `[daemon]` keys go in `upstream` and `daemon`).
pub fn config(url: &str, upstream: &str, daemon: &str, extra: &str) -> Arc<Config> {
    // Fast timers, unless the test sets its own.
    let defaults: String = [
        "backoff_ms = 10",
        "max_backoff_ms = 50",
        "heartbeat_ms = 100",
        "stale_after_ms = 600",
        "shutdown_grace_ms = 2000",
    ]
    .iter()
    .filter(|d| !daemon.contains(d.split(' ').next().unwrap()))
    .map(|d| format!("{d}\n"))
    .collect();
    let text =
        format!("[upstream]\nurl = \"{url}\"\n{upstream}\n[daemon]\n{defaults}{daemon}\n{extra}");
    Arc::new(Config::parse(&text, "test", &|_| None).unwrap())
}

/// A daemon running on the test's runtime.
pub struct Running {
    /// A live view of the daemon (calls in flight, route limits).
    pub monitor: Monitor,
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<fusillade::store::Result<DaemonReport>>,
}

/// Starts a daemon.
pub fn start<S: DaemonBackend>(store: &S, config: Arc<Config>) -> Running {
    let (tx, running) = start_reloadable(store, config);
    // The daemon keeps its config for life when nobody can send a new one.
    std::mem::forget(tx);
    running
}

/// Starts a daemon whose config can be replaced while it runs.
pub fn start_reloadable<S: DaemonBackend>(
    store: &S,
    config: Arc<Config>,
) -> (tokio::sync::watch::Sender<Arc<Config>>, Running) {
    let (tx, rx) = tokio::sync::watch::channel(config);
    let stop = CancellationToken::new();
    let daemon = Daemon::new(store.clone(), rx);
    let monitor = daemon.monitor();
    let handle = tokio::spawn(daemon.run(stop.clone()));
    (
        tx,
        Running {
            monitor,
            stop,
            handle,
        },
    )
}

impl Running {
    /// Stops it gracefully and returns its report.
    pub async fn stop(self) -> DaemonReport {
        self.stop.cancel();
        self.handle.await.unwrap().unwrap()
    }
}

/// A daemon on its own runtime and its own pool, which can be killed as a
/// process would be: every task and connection dropped, nothing released.
pub struct Crashable {
    kill: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

/// Starts a daemon that [`Crashable::crash`] can kill.
pub fn start_crashable(pool: &PgPool, config: Arc<Config>) -> Crashable {
    let options = pool.connect_options().as_ref().clone();
    let (kill, killed) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (tx, rx) = tokio::sync::watch::channel(config);
        rt.spawn(async move {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(4)
                .connect_with(options)
                .await
                .unwrap();
            let _keep = tx;
            let _ = Daemon::new(PostgresStore::new(pool), rx)
                .run(CancellationToken::new())
                .await;
        });
        let _ = killed.recv();
        rt.shutdown_background();
    });
    Crashable { kill, thread }
}

impl Crashable {
    /// Kills it without any clean-up.
    pub fn crash(self) {
        let _ = self.kill.send(());
        self.thread.join().unwrap();
    }
}

/// Polls until `f` holds, or panics after `timeout`.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = tokio::time::Instant::now() + timeout;
    loop {
        if f().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for the batch to reach a terminal status.
pub async fn finished_batch<S: BatchStore>(store: &S, id: BatchId, timeout: Duration) -> Batch {
    let until = tokio::time::Instant::now() + timeout;
    loop {
        let b = store.get_batch(Owner::Any, id).await.unwrap().unwrap();
        if b.status.is_terminal() {
            // The batch's kept counters must agree with a full count.
            let exact = store.request_counts(id).await.unwrap();
            assert_eq!(
                b.request_counts,
                BatchCounts::from(exact),
                "kept counts drifted"
            );
            return b;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "timed out waiting for the batch to end; last seen {:?} {:?}",
            b.status,
            b.request_counts
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Uploads lines and creates a batch of them.
pub async fn batch_from_lines<S: BatchStore + FileStore>(store: &S, lines: &[String]) -> BatchId {
    let file = upload(store, "", &jsonl(lines)).await;
    store
        .create_batch(new_batch("", file.id, CHAT))
        .await
        .unwrap()
        .id
}

/// `n` chat lines for `model` with custom ids `<prefix><i>`.
pub fn lines_for(model: &str, prefix: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| line_with(&format!("{prefix}{i}"), CHAT, &chat_body("x", model)))
        .collect()
}

/// The lines of a byte stream, parsed.
pub async fn json_lines(stream: ByteStream) -> Vec<serde_json::Value> {
    let bytes = collect(stream).await;
    String::from_utf8(bytes)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
