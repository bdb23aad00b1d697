//! `fusillade-bench dashboard`: how fast the dashboard's pages load with
//! 1,000 batches and a 1,000,000-request batch in the database.
//!
//! 1. Seeds a fresh benchmark database through the store: one owner with
//!    `--batches` small batches (every third cancelled) and one batch of
//!    `--requests` lines, of which 60% have ended (1% of those failed) and
//!    the rest wait, as in the middle of a run.
//! 2. Starts `fusillade serve --api-only` (no daemon: the numbers stay
//!    still) with a key for that owner.
//! 3. Times, `--rounds` times each, every HTTP call each page makes (the
//!    page, its script and style, `/v1/me` and the page's data), and prints
//!    the median and 95th percentile per call and per page (the page's
//!    calls one after another, with no cache: an upper bound of a cold load).
//! 4. With `--browser`, also loads each page in headless Chromium
//!    (tests/browser/page_timing.py) and prints the time from navigation to
//!    the page showing its data.

use super::connect_bench_db;
use super::procs::{ServeOptions, Server};
use anyhow::{Context, Result, bail};
use fusillade::store::{BatchStore, FileStore, NewBatch, NewFile, Owner, PostgresStore};
use futures_util::stream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The bench's own database by default, so it never drops another bench's.
const DEFAULT_DB: &str = "postgres://postgres@127.0.0.1:5432/fusillade_bench_dashboard";
const KEY: &str = "sk-bench-dashboard";
const OWNER: &str = "bench";

/// Arguments of `fusillade-bench dashboard`.
#[derive(clap::Args)]
pub struct Args {
    /// Small batches to create.
    #[arg(long, default_value_t = 1000)]
    batches: u64,
    /// Lines of the large batch.
    #[arg(long, default_value_t = 1_000_000)]
    requests: u64,
    /// Times each call is repeated.
    #[arg(long, default_value_t = 30)]
    rounds: usize,
    /// Also time full page loads in headless Chromium (needs Playwright).
    #[arg(long)]
    browser: bool,
    /// A database for benchmarks only: dropped and created afresh.
    #[arg(long = "database-url", default_value = DEFAULT_DB)]
    database_url: String,
}

fn line(i: u64, model: &str) -> String {
    format!(
        "{{\"custom_id\":\"r-{i}\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\",\
         \"body\":{{\"model\":\"{model}\",\"messages\":[{{\"role\":\"user\",\
         \"content\":\"Say something about the number {i}.\"}}],\"max_tokens\":32}}}}\n"
    )
}

async fn upload(
    store: &PostgresStore,
    lines: u64,
    model: &str,
) -> Result<fusillade::domain::file::File> {
    let chunks = (0..lines).step_by(10_000).map(move |start| {
        let end = (start + 10_000).min(lines);
        let text: String = (start..end).map(|i| line(i, model)).collect();
        Ok::<_, std::io::Error>(bytes::Bytes::from(text))
    });
    let file = store
        .create_file(
            NewFile {
                owner: OWNER.into(),
                filename: format!("{model}.jsonl"),
                expires_at: None,
            },
            stream::iter(chunks),
        )
        .await?;
    if file.error_count > 0 {
        bail!("the generated file has refused lines");
    }
    Ok(file)
}

fn new_batch(file: fusillade::domain::ids::FileId) -> NewBatch<'static> {
    NewBatch {
        owner: OWNER,
        input_file_id: file,
        endpoint: "/v1/chat/completions",
        completion_window: "24h",
        metadata: None,
        idempotency_key: None,
        private: false,
    }
}

/// Ends the first `done` lines of the large batch (every 100th as failed),
/// as a daemon would have.
async fn end_lines(pool: &sqlx::PgPool, batch: uuid::Uuid, done: u64) -> Result<()> {
    let mut tx = pool.begin().await?;
    let ended: (i64, i64) = sqlx::query_as(
        "WITH d AS ( \
             DELETE FROM requests \
             WHERE id BETWEEN fusillade_batch_lo($1) AND fusillade_request_id($1, $2) \
               AND batch_id = $1 \
             RETURNING *), \
         i AS ( \
             INSERT INTO request_results \
                 (request_id, batch_id, template_id, model, custom_id, state, attempt, \
                  not_before, created_at, claimed_at, started_at, finished_at, ok, status_code, \
                  upstream_request_id, body, error) \
             SELECT id, batch_id, template_id, model, custom_id, \
                    CASE WHEN n % 100 = 0 THEN 'failed' ELSE 'completed' END, 1, not_before, \
                    created_at, f - interval '400 ms', f - interval '350 ms' \
                        + (n % 7) * interval '40 ms', f, n % 100 <> 0, \
                    CASE WHEN n % 100 = 0 THEN (ARRAY[429, 500, 503])[n % 3 + 1] ELSE 200 END, \
                    'req-' || left(md5(id::text), 16), \
                    CASE WHEN n % 100 = 0 THEN '{\"error\":{\"message\":\"busy\"}}' ELSE \
                    '{\"id\":\"chatcmpl-' || left(md5(id::text), 24) || \
                    '\",\"object\":\"chat.completion\",\"model\":\"' || model || \
                    '\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\
                    \"content\":\"A short answer.\"},\"finish_reason\":\"stop\"}]}' END, \
                    CASE WHEN n % 100 = 0 THEN jsonb_build_object('code', \
                        CASE WHEN n % 3 = 0 THEN 'rate_limited' ELSE 'upstream_error' END, \
                        'message', 'retries exhausted') END \
             FROM (SELECT d.*, \
                          ('x' || right(d.id::text, 12))::bit(48)::bigint AS n, \
                          now() - interval '30 minutes' \
                              + (('x' || right(d.id::text, 12))::bit(48)::bigint % 1800) \
                                * interval '1 second' AS f \
                   FROM d) x \
             RETURNING ok) \
         SELECT count(*) FILTER (WHERE ok), count(*) FILTER (WHERE NOT ok) FROM i",
    )
    .bind(batch)
    .bind(done as i64)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query("UPDATE batches SET n_completed = $2, n_failed = $3 WHERE id = $1")
        .bind(batch)
        .bind(ended.0)
        .bind(ended.1)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[i - 1]
}

/// Times `rounds` GETs of `path`; the sorted times in milliseconds.
async fn time_get(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    rounds: usize,
) -> Result<Vec<f64>> {
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let started = Instant::now();
        let res = client
            .get(format!("{base}{path}"))
            .bearer_auth(KEY)
            .send()
            .await?;
        let status = res.status();
        let _ = res.bytes().await?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        if !status.is_success() {
            bail!("GET {path}: {status}");
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(times)
}

/// Runs the benchmark.
pub async fn run(a: Args) -> Result<()> {
    let pool = connect_bench_db(&a.database_url).await?;
    let store = PostgresStore::new(pool.clone());
    let seeding = Instant::now();
    let small = upload(&store, 10, "bench-small").await?;
    for i in 0..a.batches {
        let b = store.create_batch(new_batch(small.id)).await?;
        if i % 3 == 0 {
            store.cancel_batch(Owner::Only(OWNER), b.id).await?;
        }
    }
    let big_file = upload(&store, a.requests, "bench-big").await?;
    let big = store.create_batch(new_batch(big_file.id)).await?;
    end_lines(&pool, big.id.0, a.requests * 6 / 10).await?;
    sqlx::query("VACUUM ANALYZE").execute(&pool).await?;
    println!(
        "seeded          {} small batches + 1 of {} lines in {:.1} s",
        a.batches,
        a.requests,
        seeding.elapsed().as_secs_f64()
    );

    let dir = PathBuf::from("bench-data");
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("dashboard-bench.toml");
    std::fs::write(
        &config,
        format!("[auth]\nkeys = {{ \"{KEY}\" = \"{OWNER}\" }}\nadmins = [\"{OWNER}\"]\n"),
    )?;
    let server = Server::start(ServeOptions {
        database_url: &a.database_url,
        config: Some(&config),
        api_only: true,
        log: None,
    })?;
    let base = server.url.clone();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let big_id = format!("batch_{}", big.id.0.simple());
    let failed: serde_json::Value = serde_json::from_slice(
        &client
            .get(format!(
                "{base}/v1/batches/{big_id}/requests?state=failed&limit=1"
            ))
            .bearer_auth(KEY)
            .send()
            .await?
            .bytes()
            .await?,
    )?;
    let failed_id = failed["data"][0]["id"]
        .as_str()
        .context("the large batch has no failed request")?
        .to_owned();

    let shell = [
        "/",
        "/ui/app.js",
        "/ui/app.css",
        "/ui/config.json",
        "/v1/me",
    ];
    let pages: Vec<(&str, Vec<String>)> = vec![
        ("batches", vec!["/v1/batches?limit=20".into()]),
        (
            "batches?status=cancelled",
            vec!["/v1/batches?limit=20&status=cancelled".into()],
        ),
        (
            "batch (1M requests)",
            vec![
                format!("/v1/batches/{big_id}"),
                format!("/v1/batches/{big_id}/stats"),
                format!("/v1/batches/{big_id}/requests?limit=50"),
            ],
        ),
        (
            "batch, failed requests",
            vec![
                format!("/v1/batches/{big_id}"),
                format!("/v1/batches/{big_id}/stats"),
                format!("/v1/batches/{big_id}/requests?limit=50&state=failed"),
            ],
        ),
        (
            "request detail",
            vec![format!("/v1/batches/{big_id}/requests/{failed_id}")],
        ),
        ("models", vec!["/v1/admin/models".into()]),
        ("workers", vec!["/v1/admin/workers".into()]),
    ];
    // One warm-up pass, so the first figures are not the connection's setup.
    for path in shell
        .iter()
        .map(|s| s.to_string())
        .chain(pages.iter().flat_map(|p| p.1.clone()))
    {
        time_get(&client, &base, &path, 1).await?;
    }
    println!("{:<58} {:>9} {:>9}", "call", "median ms", "p95 ms");
    let mut shell_median = 0.0;
    let mut shell_p95 = 0.0;
    for path in shell {
        let t = time_get(&client, &base, path, a.rounds).await?;
        println!(
            "{path:<58} {:>9.1} {:>9.1}",
            quantile(&t, 0.5),
            quantile(&t, 0.95)
        );
        shell_median += quantile(&t, 0.5);
        shell_p95 += quantile(&t, 0.95);
    }
    let mut summary = Vec::new();
    for (page, calls) in &pages {
        let (mut median, mut p95) = (shell_median, shell_p95);
        for path in calls {
            let t = time_get(&client, &base, path, a.rounds).await?;
            let shown = path.replace(&big_id, "{big}").replace(&failed_id, "{req}");
            println!(
                "{shown:<58} {:>9.1} {:>9.1}",
                quantile(&t, 0.5),
                quantile(&t, 0.95)
            );
            median += quantile(&t, 0.5);
            p95 += quantile(&t, 0.95);
        }
        summary.push((page, median, p95));
    }
    println!("\npage (shell + its calls, one after another, no cache)");
    for (page, median, p95) in summary {
        println!("{page:<58} {median:>9.1} {p95:>9.1}");
    }

    if a.browser {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser/page_timing.py");
        let out = std::process::Command::new("python3")
            .arg(&script)
            .args([&base, KEY, &big_id, &failed_id, &a.rounds.to_string()])
            .output()
            .context("running tests/browser/page_timing.py")?;
        print!("\n{}", String::from_utf8_lossy(&out.stdout));
        if !out.status.success() {
            bail!(
                "the browser timing failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    drop(server);
    Ok(())
}
