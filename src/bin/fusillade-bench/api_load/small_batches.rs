//! Scenario `small-batches`: the same work as one big batch or as many
//! small ones, created by many clients at once (each its own owner). Every
//! case runs on a fresh system: all files are uploaded first (concurrently,
//! not measured), then every client creates its batches one after another.
//!
//! Measured per case: wall time from the first create to the last batch
//! finished (the batches' own timestamps), creates per second over the
//! `POST /v1/batches` calls alone, every non-2xx answer, whether every
//! batch completed, and whether every output line's `id` is distinct.

use super::client::Api;
use super::stack::{Stack, StackOptions};
use super::stats::Percentiles;
use super::summary::Summary;
use anyhow::{Context, Result, bail};
use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// One case: how many batches of how many lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Case {
    /// Batches created.
    pub batches: usize,
    /// Lines of each.
    pub lines: u64,
}

impl FromStr for Case {
    type Err = anyhow::Error;

    /// `BATCHESxLINES`, such as `1000x20`.
    fn from_str(s: &str) -> Result<Self> {
        let (b, l) = s
            .split_once('x')
            .with_context(|| format!("{s:?} is not BATCHESxLINES"))?;
        let case = Case {
            batches: b.trim().parse()?,
            lines: l.trim().parse()?,
        };
        if case.batches == 0 || case.lines == 0 {
            bail!("{s:?}: a case needs at least one batch of one line");
        }
        Ok(case)
    }
}

impl std::fmt::Display for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}", self.batches, self.lines)
    }
}

/// The flags of this scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct SmallOptions {
    /// small-batches: concurrent clients, each its own owner.
    #[arg(long, default_value_t = 20)]
    pub clients: usize,
    /// small-batches: the cases as BATCHESxLINES, in order; the first is
    /// the one the others are compared with.
    #[arg(long, value_delimiter = ',', default_value = "1x20000,1000x20,10000x1")]
    pub cases: Vec<Case>,
    /// small-batches: stop waiting when no batch has finished for this many seconds.
    #[arg(long, default_value_t = 30)]
    pub stall_secs: u64,
}

/// Runs every case, `rounds` times in turn, and prints its figures. A
/// case's wall time varies by 10% or more from one run to the next on a
/// shared machine, so each round's ratios are taken between cases of that
/// round, and their median is the figure.
pub async fn run(
    so: &StackOptions,
    o: &SmallOptions,
    rounds: usize,
    timeout: Duration,
    summary: &mut Summary,
) -> Result<()> {
    let rounds = rounds.max(1);
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); o.cases.len()];
    for round in 1..=rounds {
        let mut first_wall = None;
        for (i, &case) in o.cases.iter().enumerate() {
            let scenario = if rounds > 1 {
                format!("small-batches {case} (round {round})")
            } else {
                format!("small-batches {case}")
            };
            let deadline = Instant::now() + timeout;
            let wall = super::bounded(
                deadline,
                one_case(so, o, case, &scenario, deadline, summary),
            )
            .await
            // One case failing does not stop the next.
            .unwrap_or_else(|e| {
                summary.add(&scenario, "FAILED", format!("{e:#}"));
                None
            });
            match (first_wall, wall) {
                (None, _) => first_wall = Some(wall),
                (Some(Some(a)), Some(b)) => {
                    ratios[i].push(b / a);
                    summary.add(
                        &scenario,
                        &format!("wall ratio to {}", o.cases[0]),
                        format!("{:.2}", b / a),
                    )
                }
                _ => summary.add(&scenario, "wall ratio", "n/a (a case did not finish)"),
            }
        }
    }
    for (case, mut r) in o.cases.iter().zip(ratios).skip(1) {
        if rounds < 2 || r.is_empty() {
            continue;
        }
        r.sort_by(f64::total_cmp);
        summary.add(
            &format!("small-batches {case}"),
            &format!("wall ratio to {}, median of rounds", o.cases[0]),
            format!(
                "{:.2} (rounds: {})",
                r[r.len() / 2],
                r.iter()
                    .map(|x| format!("{x:.2}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    }
    Ok(())
}

/// Runs one case; its wall time in seconds if every batch finished.
async fn one_case(
    so: &StackOptions,
    o: &SmallOptions,
    case: Case,
    scenario: &str,
    deadline: Instant,
    summary: &mut Summary,
) -> Result<Option<f64>> {
    let scenario = scenario.to_owned();
    let stack = Stack::start(so, &format!("small-{case}"), o.clients).await?;
    let api = &stack.api;
    let clients = o.clients.max(1);

    // Every file first, so that creating is measured alone.
    let started = Instant::now();
    let items: Vec<(usize, usize)> = (0..case.batches).map(|i| (i % clients, i)).collect();
    let files = per_client(items, {
        let api = api.clone();
        move |k, i| {
            let api = api.clone();
            let first = i as u64 * case.lines;
            async move {
                let file = api.upload(k, super::input(first, case.lines), 0).await;
                file.map(|f| (k, f))
            }
        }
    })
    .await?;
    let files: Vec<(usize, String)> = files.into_iter().flatten().collect();
    println!(
        "uploads: {} of {} files in {:.2} s (not part of the figures)",
        files.len(),
        case.batches,
        started.elapsed().as_secs_f64()
    );

    stack.checkpoint().await;

    // Every client creates its batches one after another.
    let t0 = Instant::now();
    let t0_wall = chrono::Utc::now();
    let created = per_client(files, {
        let api = api.clone();
        move |k, file| {
            let api = api.clone();
            async move {
                let t = Instant::now();
                let batch = api.create_batch(k, &file).await;
                let id = batch.and_then(|b| b["id"].as_str().map(str::to_owned));
                (id.map(|id| (k, id)), t.elapsed(), Instant::now())
            }
        }
    })
    .await?;
    let creating = created.iter().map(|c| c.2).max().unwrap_or(t0) - t0;
    let mut latencies: Vec<Duration> = created.iter().map(|c| c.1).collect();
    let batches: Vec<(usize, String)> = created.into_iter().filter_map(|c| c.0).collect();
    summary.add(
        &scenario,
        "creates",
        format!(
            "{} of {} in {:.2} s = {:.0} creates/s",
            batches.len(),
            case.batches,
            creating.as_secs_f64(),
            batches.len() as f64 / creating.as_secs_f64().max(1e-9)
        ),
    );
    summary.add(
        &scenario,
        "create latency",
        Percentiles::of(&mut latencies).to_string(),
    );

    let stall = Duration::from_secs(o.stall_secs);
    let (finished, last) = wait_finished(&stack.pool, batches.len(), deadline, stall).await?;
    let all_finished = finished == batches.len() as i64 && batches.len() == case.batches;
    let wall = last
        .filter(|_| all_finished)
        .map(|last| (last - t0_wall).as_seconds_f64());
    summary.add(
        &scenario,
        "wall, first create to last finished",
        match wall {
            Some(w) => format!("{w:.2} s"),
            None => format!(
                "not finished: {} of {} batches final after {:.0} s",
                finished,
                batches.len(),
                t0.elapsed().as_secs_f64()
            ),
        },
    );

    let (statuses, ids) = read_outcomes(api, batches).await?;
    let distinct = ids.iter().collect::<HashSet<_>>().len();
    summary.add(&scenario, "batch statuses", statuses);
    summary.add(
        &scenario,
        "request ids in output files",
        format!(
            "{} lines, {distinct} distinct, {} repeated (expected {} lines)",
            ids.len(),
            ids.len() - distinct,
            case.batches as u64 * case.lines
        ),
    );
    summary.add(&scenario, "non-2xx answers", api.tally.describe());
    stack.finish()?;
    Ok(wall)
}

/// Runs `work(client, item)` for every `(client, item)`, one task per
/// client working through its items in order; the results in no set order.
async fn per_client<T, R, F, Fut>(items: Vec<(usize, T)>, work: F) -> Result<Vec<R>>
where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(usize, T) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = R> + Send,
{
    let mut shares: BTreeMap<usize, Vec<T>> = BTreeMap::new();
    for (k, item) in items {
        shares.entry(k).or_default().push(item);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (k, share) in shares {
        let work = work.clone();
        tasks.spawn(async move {
            let mut out = Vec::with_capacity(share.len());
            for item in share {
                out.push(work(k, item).await);
            }
            out
        });
    }
    let mut results = Vec::new();
    while let Some(r) = tasks.join_next().await {
        results.extend(r?);
    }
    Ok(results)
}

/// Waits until `expected` batches are final, the deadline passes, or none
/// has finished for `stall`; how many are final and when the last did.
async fn wait_finished(
    pool: &sqlx::PgPool,
    expected: usize,
    deadline: Instant,
    stall: Duration,
) -> Result<(i64, Option<chrono::DateTime<chrono::Utc>>)> {
    let mut progress = (0i64, Instant::now());
    loop {
        // From the benchmark's own connection: polling the API for
        // thousands of batches would be load of its own.
        let (finished, last): (i64, Option<chrono::DateTime<chrono::Utc>>) = sqlx::query_as(
            "SELECT count(*), max(coalesce(completed_at, failed_at, expired_at, cancelled_at)) \
             FROM batches WHERE status IN ('completed', 'failed', 'expired', 'cancelled')",
        )
        .fetch_one(pool)
        .await?;
        if finished > progress.0 {
            progress = (finished, Instant::now());
        }
        let now = Instant::now();
        if finished >= expected as i64 || now >= deadline || now - progress.1 >= stall {
            return Ok((finished, last));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every batch's status as the API says, counted ("completed ×1000"), and
/// the `id` of every line of every output and error file.
async fn read_outcomes(api: &Api, batches: Vec<(usize, String)>) -> Result<(String, Vec<String>)> {
    let found = per_client(batches, {
        let api = api.clone();
        move |k, id| {
            let api = api.clone();
            async move {
                let Some(batch) = api.get_batch(k, &id).await else {
                    return ("unreadable".to_owned(), Vec::new());
                };
                let mut ids = Vec::new();
                for file in ["output_file_id", "error_file_id"] {
                    if let Some(file) = batch[file].as_str() {
                        ids.extend(api.line_ids(k, file).await.unwrap_or_default());
                    }
                }
                (batch["status"].as_str().unwrap_or("none").to_owned(), ids)
            }
        }
    })
    .await?;
    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    let mut ids = Vec::new();
    for (status, found) in found {
        *statuses.entry(status).or_default() += 1;
        ids.extend(found);
    }
    let statuses: Vec<String> = statuses.iter().map(|(s, n)| format!("{s} ×{n}")).collect();
    Ok((statuses.join(", "), ids))
}
