//! `fusillade-bench queue`: the daemon's database hot path alone (claim, then
//! finish), without HTTP, to see what each request costs PostgreSQL and how
//! the claim behaves as history grows.

use crate::procstat::GroupCpu;
use anyhow::Result;
use fusillade::domain::ids::DaemonId;
use fusillade::domain::request::RequestState;
use fusillade::store::{
    ClaimRequest, DaemonStore, Finished, ModelDemand, NewDaemon, PostgresStore, QueueStore,
};
use std::time::{Duration, Instant};

/// What to measure.
pub struct QueueBench {
    pub requests: u64,
    pub history: u64,
    pub backlog: u64,
    pub claim_batch: u32,
    pub in_flight: u32,
    pub explain: bool,
    pub database_url: String,
}

/// Inserts a batch of `n` requests (and templates) in `state`, by SQL;
/// `backlog` is pending with a deadline after every other batch's.
async fn seed(pool: &sqlx::PgPool, n: u64, state: &str) -> Result<()> {
    let (state, deadline) = match state {
        "backlog" => ("pending", "now() + interval '30 days'"),
        s => (s, "now() + interval '1 day'"),
    };
    let batch = fusillade::BatchId::new();
    let file = fusillade::domain::ids::FileId::new();
    sqlx::query(
        "INSERT INTO files (id, filename, purpose, kind) VALUES ($1, 'bench', 'batch', 'input')",
    )
    .bind(file)
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO batches (id, input_file_id, endpoint, completion_window, status, total, \
         in_progress_at, expires_at) VALUES ($1, $2, '/v1/chat/completions', '24h', 'in_progress', $3, \
         now(), now() + interval '1 day')",
    )
    .bind(batch)
    .bind(file)
    .bind(n as i64)
    .execute(pool)
    .await?;
    // In chunks, so that 10M rows do not make one giant transaction.
    let chunk = 1_000_000u64;
    let mut done = 0u64;
    while done < n {
        let k = chunk.min(n - done);
        // Live requests sit in the queue; ended ones only in request_results.
        let target = if state == "pending" {
            format!(
                "INSERT INTO requests (id, batch_id, template_id, model, custom_id, state, deadline) \
             SELECT fusillade_request_id($2, t.line_number), \
                    $2, t.id, 'bench-model', t.custom_id, $5, {deadline} \
             FROM t"
            )
        } else {
            "INSERT INTO request_results (request_id, batch_id, template_id, model, custom_id, \
                                          state, ok, status_code, body, not_before, created_at) \
             SELECT fusillade_request_id($2, t.line_number), \
                    $2, t.id, 'bench-model', t.custom_id, $5, true, 200, '{}', now(), now() \
             FROM t"
                .to_owned()
        };
        sqlx::query(&format!(
            "WITH t AS ( \
                 INSERT INTO request_templates (id, file_id, line_number, custom_id, path, body, model) \
                 SELECT gen_random_uuid(), $1, g, 'r-' || g, '/v1/chat/completions', \
                        '{{\"model\":\"bench-model\",\"messages\":[]}}', 'bench-model' \
                 FROM generate_series($3::bigint + 1, $3::bigint + $4::bigint) g \
                 RETURNING id, line_number, custom_id) \
             {target}"
        ))
        .bind(file)
        .bind(batch)
        .bind(done as i64)
        .bind(k as i64)
        .bind(state)
        .execute(pool)
        .await?;
        done += k;
    }
    sqlx::query("VACUUM ANALYZE requests").execute(pool).await?;
    sqlx::query("VACUUM ANALYZE request_results")
        .execute(pool)
        .await?;
    sqlx::query("VACUUM ANALYZE request_templates")
        .execute(pool)
        .await?;
    Ok(())
}

/// Runs it and prints the numbers.
pub async fn run(b: QueueBench) -> Result<()> {
    let pool = crate::connect_bench_db(&b.database_url).await?;
    let extra = [
        (
            "backlog",
            b.backlog,
            "backlog",
            "pending requests (later deadline)",
        ),
        ("history", b.history, "completed", "terminal requests"),
    ];
    for (label, n, kind, what) in extra.into_iter().filter(|e| e.1 > 0) {
        let t = Instant::now();
        seed(&pool, n, kind).await?;
        let secs = t.elapsed().as_secs_f64();
        println!("{label:<15} {n} {what} inserted in {secs:.1} s");
    }
    seed(&pool, b.requests, "pending").await?;
    // Flush the seeding's dirty pages first, so the checkpoint it triggers
    // does not land in the measurement.
    sqlx::query("CHECKPOINT").execute(&pool).await?;
    let store = PostgresStore::new(pool.clone());
    let daemon: DaemonId = store
        .register_daemon(NewDaemon {
            hostname: "bench".into(),
            pid: std::process::id() as i32,
            version: "bench".into(),
            config: serde_json::json!({}),
        })
        .await?
        .id;
    // Steady state, as in the daemon: `in_flight` requests held; each step
    // finishes the oldest `claim_batch` of them and claims as many again.
    // Claims fill free slots plus the slots' worth of waiting requests:
    // saying that much already waits makes each claim take exactly the
    // slots freed.
    let capacity = b.in_flight.max(b.claim_batch);
    let req = |held: u32| ClaimRequest {
        daemon,
        models: vec![ModelDemand {
            model: "bench-model".into(),
            limit: capacity,
            share: capacity,
            in_flight: held,
            waiting: capacity,
            per_call: 1,
        }],
        default_limit: 0,
        default_share: 0,
        max_total: capacity,
        scope: None,
        grouped: true,
        schedule: Default::default(),
    };
    let mut pg = GroupCpu::start("postgres");
    let mut claim_times: Vec<Duration> = Vec::new();
    let mut finish_time = Duration::ZERO;
    let mut finishes = 0u32;
    let started = Instant::now();
    let mut total = 0u64;
    let mut held: std::collections::VecDeque<fusillade::store::ClaimedRequest> = Default::default();
    let mut explained = false;
    let mut explained_finish = false;
    loop {
        let want = capacity - held.len() as u32;
        if b.explain && !explained && total > b.requests / 2 {
            explained = true;
            explain(&pool, daemon, want).await?;
        }
        // With a backlog, stop claiming once N are claimed.
        if total < b.requests {
            let t = Instant::now();
            let claimed = store.claim(&req(held.len() as u32)).await?;
            claim_times.push(t.elapsed());
            total += claimed.requests.len() as u64;
            held.extend(claimed.requests);
        }
        if held.is_empty() {
            break;
        }
        let n = held.len().min(b.claim_batch as usize);
        let finished: Vec<Finished> = held
            .drain(..n)
            .map(|c| Finished {
                id: c.id,
                attempt: c.attempt,
                state: RequestState::Completed,
                status_code: Some(200),
                upstream_request_id: Some("req-bench".into()),
                body: Some(r#"{"id":"x","object":"chat.completion","choices":[]}"#.into()),
                error: None,
                usage: None,
                coalesced: None,
            })
            .collect();
        if b.explain && explained && !explained_finish {
            explained_finish = true;
            explain_finish(&pool, &finished).await?;
        }
        let t = Instant::now();
        store.finish(&finished).await?;
        finish_time += t.elapsed();
        finishes += 1;
        pg.sample();
    }
    pg.sample();
    let wall = started.elapsed().as_secs_f64();
    claim_times.sort();
    let pct = |p: f64| claim_times[((claim_times.len() - 1) as f64 * p) as usize];
    println!(
        "requests        {total} claimed and finished, {} per step, {} held",
        b.claim_batch, capacity
    );
    println!(
        "rate            {:.0} req/s ({wall:.2} s)",
        total as f64 / wall
    );
    println!(
        "claim latency   median {:.2} ms, p90 {:.2} ms, max {:.2} ms ({} claims)",
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.9).as_secs_f64() * 1e3,
        pct(1.0).as_secs_f64() * 1e3,
        claim_times.len()
    );
    println!(
        "finish          {:.2} ms per statement ({finishes} statements)",
        finish_time.as_secs_f64() * 1e3 / f64::from(finishes.max(1))
    );
    println!(
        "PostgreSQL CPU  {:.1} µs per request",
        pg.used() * 1e6 / total.max(1) as f64
    );
    Ok(())
}

/// Plans the transaction's statements as the daemon's hot path does.
async fn queue_session(tx: &mut sqlx::PgConnection) -> Result<()> {
    for (name, value) in fusillade::store::queue_session_settings() {
        sqlx::query("SELECT set_config($1, $2, true)")
            .bind(name)
            .bind(value)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

/// Prints the plan of one claim, run inside a transaction that is rolled back.
async fn explain(pool: &sqlx::PgPool, daemon: DaemonId, want: u32) -> Result<()> {
    let mut tx = pool.begin().await?;
    queue_session(&mut tx).await?;
    let rows = sqlx::query(&format!(
        "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {}",
        fusillade::store::CLAIM_SQL
    ))
    .bind(daemon)
    .bind(vec!["bench-model"])
    .bind(vec![want as i32])
    .bind(i64::from(want.max(1)))
    .bind(vec![""])
    .fetch_all(&mut *tx)
    .await?;
    print_plan(rows, tx).await
}

/// Prints the plan of one finish (the daemon's own statement), rolled back.
async fn explain_finish(pool: &sqlx::PgPool, items: &[Finished]) -> Result<()> {
    let n = items.len();
    let ids: Vec<uuid::Uuid> = items.iter().map(|i| i.id.0).collect();
    let attempts: Vec<i32> = items.iter().map(|i| i.attempt).collect();
    let mut tx = pool.begin().await?;
    queue_session(&mut tx).await?;
    let rows = sqlx::query(&format!(
        "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {}",
        fusillade::store::finish_sql()
    ))
    .bind(&ids)
    .bind(&attempts)
    .bind(vec!["completed"; n])
    .bind(vec![200i32; n])
    .bind(vec![None::<String>; n])
    .bind(vec!["{}"; n])
    .bind(vec![None::<serde_json::Value>; n])
    .bind(vec![0i64; n])
    .bind(vec![0i64; n])
    .bind(vec![0i64; n])
    .bind(vec![0i64; n])
    .bind(vec![0i64; n])
    .bind(vec![None::<Vec<u8>>; n])
    .fetch_all(&mut *tx)
    .await?;
    print_plan(rows, tx).await
}

/// Prints an EXPLAIN's lines and rolls back the statement it ran.
async fn print_plan(
    rows: Vec<sqlx::postgres::PgRow>,
    tx: sqlx::Transaction<'_, sqlx::Postgres>,
) -> Result<()> {
    use sqlx::Row;
    for r in rows {
        println!("  {}", r.try_get::<String, _>(0)?);
    }
    tx.rollback().await?;
    Ok(())
}
