//! The chaos itself, driven by the batch's progress: a worker SIGKILLed
//! (and replaced at once) every 1–3 s, one PostgreSQL restart in
//! immediate mode once a share of the lines is done, and one rolling
//! restart of every worker by SIGTERM a little later. The run ends when the
//! batch does, or counts as stuck when it has not ended in time.

use super::client::Api;
use super::cluster::Cluster;
use super::fleet::{Launcher, Proc};
use super::lines::mix;
use anyhow::Result;
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// When the events happen.
#[derive(Debug, Clone)]
pub struct Timing {
    /// Most SIGKILLs (`None`: no limit).
    pub max_kills: Option<u64>,
    /// Milliseconds between kills: uniform in this range.
    pub kill_every_ms: (u64, u64),
    /// No kills once this share of the lines is done.
    pub kill_until: f64,
    /// The database restarts once this share of the lines is done.
    pub restart_at: f64,
    /// How long the database stays stopped at that restart.
    pub outage: Duration,
    /// The rolling restart starts once this share is done (and the
    /// database restart is over).
    pub rolling_at: f64,
    /// How long a SIGTERMed worker may take to stop.
    pub stop_within: Duration,
    /// The batch counts as stuck if it has not ended by then.
    pub timeout: Duration,
    /// Seed of the choices of when and whom to kill.
    pub seed: u64,
}

/// What happened.
#[derive(Debug, Default, Clone)]
pub struct Events {
    /// Workers SIGKILLed.
    pub kills: u64,
    /// PostgreSQL restarts.
    pub pg_restarts: u64,
    /// How long `pg_ctl stop -m immediate` + `start` took.
    pub pg_down: Duration,
    /// From PostgreSQL being back to `/healthz` answering 200.
    pub healthz_back: Option<Duration>,
    /// Workers restarted by SIGTERM.
    pub graceful: u64,
    /// How long the rolling restart took.
    pub rolling: Duration,
    /// Workers that did not exit 0 within the limit after SIGTERM.
    pub unclean_stops: Vec<String>,
    /// Workers that exited by themselves.
    pub crashed: Vec<String>,
    /// Events that could not happen before the batch ended.
    pub skipped: Vec<&'static str>,
    /// The batch's last status.
    pub status: String,
    /// From the batch's creation to its end (or to the timeout).
    pub batch_time: Duration,
    /// When each kill, restart and SIGTERM happened, to tell which one an
    /// extra upstream call is owed to.
    pub marks: Vec<(Instant, &'static str)>,
}

/// The running workers and what starts more.
pub struct Workers {
    /// Starts workers.
    pub launcher: Launcher,
    /// Those running now.
    pub running: Vec<Proc>,
}

/// How often progress is printed.
const REPORT_EVERY: Duration = Duration::from_secs(15);

/// Whether a batch status is final.
pub fn is_terminal(status: &str) -> bool {
    matches!(status, "completed" | "failed" | "expired" | "cancelled")
}

/// Requests of the batch that have ended.
fn ended(batch: &Value) -> u64 {
    let c = &batch["request_counts"];
    c["completed"].as_u64().unwrap_or(0) + c["failed"].as_u64().unwrap_or(0)
}

/// A small deterministic random source.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = mix(self.0);
        self.0 % n.max(1)
    }

    fn between(&mut self, (lo, hi): (u64, u64)) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }
}

/// Runs the chaos until batch `id` (of `lines` lines) ends; `flood` tells
/// whether the bad requests are all sent (the database restart waits for
/// them, so that their 5xx count is not blurred by it).
pub async fn run(
    t: &Timing,
    api: &Api,
    cluster: &Arc<Cluster>,
    workers: &mut Workers,
    id: &str,
    lines: u64,
    flood_done: impl Fn() -> bool,
) -> Result<Events> {
    let mut e = Events::default();
    let mut rng = Rng(t.seed ^ 0x5eed);
    let began = Instant::now();
    let mut next_kill = began + Duration::from_millis(rng.between(t.kill_every_ms));
    let (mut restarted, mut rolled) = (false, false);
    let mut last_report = Instant::now();
    loop {
        // Polls may fail while the database restarts: the last figures stand.
        if let Ok(b) = api.batch(id).await {
            e.status = b["status"].as_str().unwrap_or("").to_owned();
            if is_terminal(&e.status) {
                break;
            }
            let done = ended(&b) as f64 / lines.max(1) as f64;
            if last_report.elapsed() >= REPORT_EVERY {
                last_report = Instant::now();
                println!(
                    "chaos: {:.0} s, {} of {lines} lines ended, {} SIGKILLs",
                    began.elapsed().as_secs_f64(),
                    ended(&b),
                    e.kills
                );
            }
            replace_crashed(workers, &mut e)?;
            if !restarted && done >= t.restart_at && flood_done() {
                restarted = true;
                restart_database(api, cluster, t.outage, &mut e).await?;
            } else if !rolled && restarted && done >= t.rolling_at {
                rolled = true;
                rolling_restart(workers, t.stop_within, &mut e).await?;
            } else if Instant::now() >= next_kill
                && done < t.kill_until
                && t.max_kills.is_none_or(|m| e.kills < m)
            {
                let victim = rng.below(workers.running.len() as u64) as usize;
                e.marks.push((Instant::now(), "SIGKILL"));
                workers.running[victim].kill()?;
                workers.running[victim] = workers.launcher.worker()?;
                e.kills += 1;
                next_kill = Instant::now() + Duration::from_millis(rng.between(t.kill_every_ms));
            }
        }
        if began.elapsed() > t.timeout {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    e.batch_time = began.elapsed();
    if !restarted {
        e.skipped.push("PostgreSQL restart");
    }
    if !rolled {
        e.skipped.push("rolling restart");
    }
    Ok(e)
}

/// A worker that ended although nobody stopped it is noted and replaced.
fn replace_crashed(workers: &mut Workers, e: &mut Events) -> Result<()> {
    for w in &mut workers.running {
        if let Some(status) = w.try_wait()? {
            e.crashed
                .push(format!("{} exited by itself ({status})", w.name));
            *w = workers.launcher.worker()?;
        }
    }
    Ok(())
}

/// Stops PostgreSQL in immediate mode, starts it again, and waits for the
/// API's `/healthz` to say so; API answers in between count apart.
async fn restart_database(
    api: &Api,
    cluster: &Arc<Cluster>,
    outage: Duration,
    e: &mut Events,
) -> Result<()> {
    api.db_restarting.store(true, Ordering::SeqCst);
    e.marks.push((Instant::now(), "PostgreSQL restart"));
    let c = cluster.clone();
    let restarted = tokio::task::spawn_blocking(move || c.restart_immediate(outage)).await?;
    let back = Instant::now();
    let result = match restarted {
        Ok(down) => {
            e.pg_restarts += 1;
            e.pg_down = down;
            while back.elapsed() < Duration::from_secs(60) {
                if api.healthz(Duration::from_secs(5)).await == 200 {
                    e.healthz_back = Some(back.elapsed());
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(())
        }
        Err(err) => Err(err),
    };
    api.db_restarting.store(false, Ordering::SeqCst);
    result
}

/// Each worker in turn: a new one is started, then the old one gets
/// SIGTERM and must exit 0 within `within`.
async fn rolling_restart(workers: &mut Workers, within: Duration, e: &mut Events) -> Result<()> {
    let began = Instant::now();
    for i in 0..workers.running.len() {
        let fresh = workers.launcher.worker()?;
        let mut old = std::mem::replace(&mut workers.running[i], fresh);
        e.marks.push((Instant::now(), "SIGTERM"));
        match old.terminate(within).await? {
            Some(status) if status.success() => e.graceful += 1,
            Some(status) => e
                .unclean_stops
                .push(format!("{} exited with {status} after SIGTERM", old.name)),
            None => {
                e.unclean_stops.push(format!(
                    "{} still running {} s after SIGTERM",
                    old.name,
                    within.as_secs()
                ));
                old.kill()?;
            }
        }
    }
    e.rolling = began.elapsed();
    Ok(())
}
