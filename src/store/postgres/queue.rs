//! The daemon's hot path over `requests`: claim many, then settle many.
//!
//! Every write after the claim is guarded by `(state, attempt)`: the claim
//! bumps `attempt`, so a daemon that lost its lease (rescued, expired,
//! cancelled) finds its late writes rejected rather than applied.

use super::PostgresStore;
use super::ending::{DELETED_RECORD, RECORD, RESULT_RECORD};
use crate::domain::batch::BatchId;
use crate::domain::ids::DaemonId;
use crate::domain::output::ResultError;
use crate::domain::request::{RequestId, RequestState};
use crate::domain::schedule::{OwnerLoad, catch_up, split};
use crate::domain::usage::Usage;
use crate::store::{
    Claim, ClaimRequest, ClaimedRequest, FinishReport, Finished, ModelDemand, QueueStore, Requeue,
    Result, StoreError,
};
use chrono::Utc;
use sqlx::Row;
use sqlx::types::Json;
use std::sync::LazyLock;

/// Key of the advisory lock that serializes claims across daemons.
const CLAIM_LOCK: i64 = 0x66_75_73_69_6c_6c; // "fusill"

/// The slots statement around a `pending_models` query: one text, so that
/// the scoped and unscoped statements cannot drift apart.
macro_rules! slots_sql {
    ($pending_models:literal) => {
        concat!(
            "
WITH RECURSIVE pending_models AS (",
            $pending_models,
            "
),
asked AS (
    SELECT * FROM unnest($2::text[], $3::int[], $4::int[], $5::int[], $6::int[])
        AS a(model, cap, share, in_flight, waiting)
),
models AS (
    SELECT a.model, a.cap, a.share, a.in_flight, a.waiting,
           EXISTS (SELECT 1 FROM pending_models p WHERE p.model = a.model) AS pending
    FROM asked a
    UNION ALL
    SELECT p.model, $7, $8, 0, 0, true
    FROM pending_models p
    WHERE p.model IS NOT NULL AND NOT EXISTS (SELECT 1 FROM asked a WHERE a.model = p.model)
),
-- A daemon that is not running (declared dead) gets no slots and claims nothing.
me AS (
    SELECT EXISTS (SELECT 1 FROM daemons WHERE id = $1 AND status = 'running') AS running
),
-- A dead daemon's slots count until the rescuer forgets them: it may still
-- be making calls until it learns it is dead.
others AS (
    SELECT s.model, sum(s.held) AS held
    FROM model_slots s JOIN daemons d ON d.id = s.daemon_id
    WHERE s.daemon_id <> $1 AND d.status IN ('running', 'dead') AND s.held > 0
    GROUP BY s.model
),
granted AS MATERIALIZED (
    SELECT m.model, m.pending, m.in_flight, m.waiting, m.share,
           CASE WHEN me.running THEN GREATEST(m.in_flight, LEAST(
               CASE WHEN m.pending OR m.waiting > 0 THEN GREATEST(m.share, m.in_flight)
                    ELSE m.in_flight END,
               m.cap - COALESCE(o.held, 0))) ELSE 0 END::int AS held
    FROM models m CROSS JOIN me LEFT JOIN others o ON o.model = m.model
),
kept AS (
    INSERT INTO model_slots (model, daemon_id, held)
    SELECT model, $1, held FROM granted WHERE (SELECT running FROM me)
    ON CONFLICT (model, daemon_id) DO UPDATE SET held = EXCLUDED.held
    WHERE model_slots.held <> EXCLUDED.held
)
SELECT model, pending, LEAST(held, share) AS usable,
       GREATEST(0, 2 * LEAST(held, share) - in_flight - waiting) AS claim,
       (SELECT count(*) FROM daemons WHERE status = 'running') AS peers
FROM granted"
        )
    };
}
/// Sets this daemon's slots (see [`QueueStore::claim`]); returns, per model,
/// whether it has pending work (never a private batch's: those are run only
/// by a daemon scoped to them, see [`NewBatch::private`](super::NewBatch)), the slots the daemon may use (its share of
/// those it holds: it holds more only while calls beyond its share run), and
/// how many to claim; and the number of running daemons.
const SLOTS_SQL: &str = slots_sql!(
    "
    (SELECT model FROM requests WHERE state = 'pending' AND NOT private
     ORDER BY model LIMIT 1)
    UNION ALL
    SELECT (SELECT r.model FROM requests r
            WHERE r.state = 'pending' AND NOT r.private AND r.model > p.model
            ORDER BY r.model LIMIT 1)
    FROM pending_models p WHERE p.model IS NOT NULL"
);

/// [`SLOTS_SQL`] for a daemon scoped to the batch `$9`: only that batch's
/// pending models count as work. They are read from the batch's own range
/// of ids (see `fusillade_batch_lo`), so other batches' backlogs cost
/// nothing; the cost grows with what is left of this batch. Used with the
/// line-order claim, which also runs batches that are not private; a
/// private batch in group order has [`SLOTS_SCOPED_PRIVATE_SQL`].
const SLOTS_SCOPED_SQL: &str = slots_sql!(
    "
    SELECT DISTINCT model FROM requests
    WHERE id BETWEEN fusillade_batch_lo($9) AND fusillade_batch_hi($9)
      AND batch_id = $9 AND state = 'pending'"
);

/// [`SLOTS_SCOPED_SQL`] for a private batch (`fusillade run`'s): its
/// pending models are walked one at a time down `requests_claim_private`,
/// as in [`SLOTS_SQL`], so the cost is one index probe per model whatever
/// the batch's backlog (the `DISTINCT` read every pending row of the batch
/// on every claim: a 1M-line `fusillade run` slowed to 1,000 requests a
/// second).
const SLOTS_SCOPED_PRIVATE_SQL: &str = slots_sql!(
    "
    (SELECT model FROM requests
     WHERE batch_id = $9 AND state = 'pending' AND private
     ORDER BY model LIMIT 1)
    UNION ALL
    SELECT (SELECT r.model FROM requests r
            WHERE r.batch_id = $9 AND r.state = 'pending' AND r.private AND r.model > p.model
            ORDER BY r.model LIMIT 1)
    FROM pending_models p WHERE p.model IS NOT NULL"
);

/// The claim statement over a list of (model, how many) rows `d` with an
/// extra filter on the pending rows and the order they are taken in.
macro_rules! claim_sql {
    ($demand:literal, $filter:literal, $order:literal) => {
        concat!(
            "
WITH picked AS (
    SELECT x.id FROM ",
            $demand,
            " CROSS JOIN LATERAL (
        SELECT r.id FROM requests r
        WHERE r.state = 'pending' AND r.model = d.model",
            $filter,
            "
          AND r.not_before <= now() AND r.deadline > now()
        ORDER BY ",
            $order,
            "
        LIMIT d.k
        FOR UPDATE SKIP LOCKED) x
    WHERE d.k > 0
    LIMIT $4
)
UPDATE requests q
SET state = 'claimed', attempt = q.attempt + 1, daemon_id = $1, claimed_at = now()
FROM picked p, request_templates t
WHERE q.id = p.id AND q.state = 'pending' AND t.id = q.template_id
RETURNING q.id, q.batch_id, q.template_id, q.attempt, q.retries, q.model, q.custom_id,
          q.prefix_key, q.owner,
          CASE WHEN q.deadline = 'infinity' THEN NULL ELSE q.deadline END AS deadline,
          t.path, t.body, t.endpoint"
        )
    };
}
/// The claim statement, for `EXPLAIN` in benchmarks: `$2` models, `$3` how
/// many of each, `$5` whose (one owner per row: see `domain::schedule`).
/// Private batches' requests are left to their own daemon.
#[doc(hidden)]
pub const CLAIM_SQL: &str = claim_sql!(
    "unnest($2::text[], $3::int[], $5::text[]) AS d(model, k, owner)",
    "
          AND r.owner = d.owner AND NOT r.private",
    "r.deadline, r.id"
);

/// [`CLAIM_SQL`] in prefix-group order within each owner and deadline: a
/// batch with an earlier deadline still goes first, whatever its groups.
#[doc(hidden)]
pub const CLAIM_GROUPED_SQL: &str = claim_sql!(
    "unnest($2::text[], $3::int[], $5::text[]) AS d(model, k, owner)",
    "
          AND r.owner = d.owner AND NOT r.private",
    "r.deadline, r.prefix_key, r.id"
);

/// [`CLAIM_SCOPED_SQL`] in prefix-group order, over the batch's pending rows
/// in `requests_claim_private` (a scoped daemon runs a private batch).
#[doc(hidden)]
pub const CLAIM_SCOPED_GROUPED_SQL: &str = claim_sql!(
    "unnest($2::text[], $3::int[]) AS d(model, k)",
    "
          AND r.batch_id = $5 AND r.private",
    "r.prefix_key, r.id"
);

/// The claim for a daemon scoped to the batch `$5`: the batch's own
/// range of ids, walked in id (line) order, so that other batches' backlogs
/// are never scanned. (A batch's lines share one deadline, except failed
/// lines re-queued by a user's retry, whose later deadline does not need to
/// put them last.)
#[doc(hidden)]
pub const CLAIM_SCOPED_SQL: &str = claim_sql!(
    "unnest($2::text[], $3::int[]) AS d(model, k)",
    "
          AND r.id BETWEEN fusillade_batch_lo($5) AND fusillade_batch_hi($5) AND r.batch_id = $5",
    "r.id"
);

/// The owners with claimable work of each model `$1`, with what
/// `domain::schedule::split` needs of each: the rows of the model it holds
/// claimed or in flight (over all daemons), the earliest deadline of its
/// claimable rows, and the requests not yet ended of that row's batch.
/// Owners are found by a skip scan of `requests_claim` (one probe per
/// owner), so a large backlog costs no more than a small one.
const OWNERS_SQL: &str = "
WITH RECURSIVE owners(model, owner) AS (
    SELECT m.model, (SELECT r.owner FROM requests r
                     WHERE r.state = 'pending' AND NOT r.private AND r.model = m.model
                     ORDER BY r.owner LIMIT 1)
    FROM unnest($1::text[]) AS m(model)
    UNION ALL
    SELECT o.model, (SELECT r.owner FROM requests r
                     WHERE r.state = 'pending' AND NOT r.private AND r.model = o.model
                       AND r.owner > o.owner
                     ORDER BY r.owner LIMIT 1)
    FROM owners o WHERE o.owner IS NOT NULL
),
active AS (
    SELECT model, owner, count(*) AS n FROM requests
    WHERE state IN ('claimed', 'processing') AND model = ANY($1)
    GROUP BY model, owner
)
SELECT o.model, o.owner, COALESCE(a.n, 0)::int AS active, h.deadline, h.remaining
FROM owners o
LEFT JOIN active a ON a.model = o.model AND a.owner = o.owner
CROSS JOIN LATERAL (
    SELECT CASE WHEN r.deadline = 'infinity' THEN NULL ELSE r.deadline END AS deadline,
           COALESCE((SELECT b.total - b.n_completed - b.n_failed - b.n_canceled
                     FROM batches b WHERE b.id = r.batch_id), 1)::int8 AS remaining
    FROM requests r
    WHERE r.state = 'pending' AND NOT r.private AND r.model = o.model AND r.owner = o.owner
      AND r.not_before <= now() AND r.deadline > now()
    ORDER BY r.deadline
    LIMIT 1) h
WHERE o.owner IS NOT NULL";

/// Rounds of sharing one claim: an owner that had fewer claimable rows
/// than it was given drops out, and what it left is shared again.
const SHARE_ROUNDS: usize = 3;

/// Records results: deletes the queue rows whose lease holds, adds to their
/// batches' counters and token totals, and appends their results. Returns
/// the requests written, then the batches whose counters now hold every
/// request.
static FINISH_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH o AS (
                 SELECT *, state = 'completed' AS ok
                 FROM unnest($1::uuid[], $2::int[], $3::text[], $4::int[], $5::text[],
                             $6::text[], $7::jsonb[], $8::int8[], $9::int8[], $10::int8[],
                             $11::int8[], $12::int8[], $13::bytea[], $14::text[])
                     AS o(id, attempt, state, status_code, upstream_request_id, body, error,
                          input_tokens, cached_tokens, output_tokens, reasoning_tokens,
                          total_tokens, body_bytes, coalesced)),
             -- The queue row goes; its whole record moves into the result.
             done AS (
                 DELETE FROM requests q
                 USING o
                 WHERE q.id = o.id AND q.attempt = o.attempt
                   -- In flight, i.e. not pending (the only other live state).
                   -- Written so, the partial index of in-flight rows does not
                   -- match: with stale statistics the planner would scan all
                   -- of it (dead entries too) for every row of o.
                   AND q.state <> 'pending'
                 RETURNING {DELETED_RECORD},
                           o.state, o.ok, o.status_code, o.upstream_request_id, o.body,
                           o.body_bytes, o.error, o.input_tokens, o.cached_tokens,
                           o.output_tokens, o.reasoning_tokens, o.total_tokens, o.coalesced),
             tally AS (
                 UPDATE batches b
                 SET n_completed = b.n_completed + s.n_completed,
                     n_failed = b.n_failed + s.n_failed,
                     n_canceled = b.n_canceled + s.n_canceled,
                     input_tokens = b.input_tokens + s.input_tokens,
                     cached_tokens = b.cached_tokens + s.cached_tokens,
                     output_tokens = b.output_tokens + s.output_tokens,
                     reasoning_tokens = b.reasoning_tokens + s.reasoning_tokens,
                     total_tokens = b.total_tokens + s.total_tokens,
                     n_coalesced_identical = b.n_coalesced_identical + s.n_identical,
                     n_coalesced_packed = b.n_coalesced_packed + s.n_packed
                 FROM (SELECT batch_id,
                              count(*) FILTER (WHERE state = 'completed') AS n_completed,
                              count(*) FILTER (WHERE state = 'failed') AS n_failed,
                              count(*) FILTER (WHERE state = 'canceled') AS n_canceled,
                              sum(input_tokens) AS input_tokens,
                              sum(cached_tokens) AS cached_tokens,
                              sum(output_tokens) AS output_tokens,
                              sum(reasoning_tokens) AS reasoning_tokens,
                              sum(total_tokens) AS total_tokens,
                              count(*) FILTER (WHERE coalesced = 'identical') AS n_identical,
                              count(*) FILTER (WHERE coalesced = 'packed') AS n_packed
                       FROM done WHERE batch_id IS NOT NULL
                       GROUP BY batch_id) s
                 WHERE b.id = s.batch_id
                 RETURNING b.id, b.n_completed + b.n_failed + b.n_canceled >= b.total AS filled),
             written AS (
                 INSERT INTO request_results
                     ({RESULT_RECORD}, state, ok, status_code, upstream_request_id, body,
                      body_bytes, error)
                 SELECT {RECORD}, state, ok, status_code, upstream_request_id, body, body_bytes,
                        CASE WHEN ok THEN NULL
                             ELSE COALESCE(error, '{{\"code\":\"upstream_error\",\"message\":\"\"}}') END
                 FROM done
                 RETURNING request_id)
             -- The results written, then the batches they filled.
             SELECT request_id, NULL::uuid AS filled FROM written
             UNION ALL
             SELECT NULL, id FROM tally WHERE filled"
    )
});

/// Each result's [`Coalesced`](crate::domain::batch::Coalesced) as the
/// finish statement's text parameter.
fn coalesced_words(items: &[Finished]) -> Vec<Option<&'static str>> {
    use crate::domain::batch::Coalesced;
    items
        .iter()
        .map(|i| match i.coalesced {
            None => None,
            Some(Coalesced::Identical) => Some("identical"),
            Some(Coalesced::Packed) => Some("packed"),
        })
        .collect()
}

/// The finish statement, for `EXPLAIN` in benchmarks.
#[doc(hidden)]
pub fn finish_sql() -> &'static str {
    FINISH_SQL.as_str()
}

impl QueueStore for PostgresStore {
    async fn claim(&self, req: &ClaimRequest) -> Result<Claim> {
        let m = &req.models;
        let names: Vec<&str> = m.iter().map(|m| m.model.as_str()).collect();
        let field = |f: fn(&ModelDemand) -> u32| -> Vec<i32> {
            m.iter().map(|m| clamp_i32(f(m))).collect()
        };

        // Claims of all daemons take turns: each reads the slots the others
        // hold and then changes its own.
        let mut tx = self.queue.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(CLAIM_LOCK)
            .execute(&mut *tx)
            .await?;
        let slots_sql = match req.scope {
            None => SLOTS_SQL,
            // The grouped scoped claim takes private rows only (see
            // `CLAIM_SCOPED_GROUPED_SQL`), and so may its slots.
            Some(_) if req.grouped => SLOTS_SCOPED_PRIVATE_SQL,
            Some(_) => SLOTS_SCOPED_SQL,
        };
        let mut slots = sqlx::query(slots_sql)
            .bind(req.daemon)
            .bind(&names)
            .bind(field(|m| m.limit))
            .bind(field(|m| m.share))
            .bind(field(|m| m.in_flight))
            .bind(field(|m| m.waiting))
            .bind(clamp_i32(req.default_limit))
            .bind(clamp_i32(req.default_share));
        if let Some(batch) = req.scope {
            slots = slots.bind(batch);
        }
        let rows = slots.fetch_all(&mut *tx).await?;
        let mut claim = Claim::default();
        let (mut models, mut wants, mut usables) = (Vec::new(), Vec::new(), Vec::new());
        // An unscoped claim may find owners to catch up in a model it asks
        // nothing of (see `domain::schedule`, rule 4).
        let catch_up = req.scope.is_none() && req.schedule.catch_up;
        for r in &rows {
            let model: String = r.try_get("model")?;
            let held: i32 = r.try_get("usable")?;
            claim.peers = u32::try_from(r.try_get::<i64, _>("peers")?).unwrap_or(u32::MAX);
            let want: i32 = r.try_get("claim")?;
            let per_call = m
                .iter()
                .find(|d| d.model == model)
                .map_or(1, |d| d.per_call.max(1));
            let want = want.saturating_mul(clamp_i32(per_call));
            if r.try_get("pending")? && held > 0 && (want > 0 || catch_up) {
                models.push(model.clone());
                wants.push(want);
                usables.push(held as u32);
                claim.asked = claim.asked.saturating_add(want as u32);
            }
            claim.slots.push((model, held.max(0) as u32));
        }
        claim.asked = claim.asked.min(req.max_total);
        if !models.is_empty() {
            claim.requests = match req.scope {
                Some(batch) => {
                    let sql = if req.grouped {
                        CLAIM_SCOPED_GROUPED_SQL
                    } else {
                        CLAIM_SCOPED_SQL
                    };
                    let rows = sqlx::query(sql)
                        .bind(req.daemon)
                        .bind(&models)
                        .bind(&wants)
                        .bind(i64::from(req.max_total))
                        .bind(batch)
                        .fetch_all(&mut *tx)
                        .await?;
                    rows.iter().map(claimed_from_row).collect::<Result<_>>()?
                }
                None => {
                    let limits: Vec<u32> = models
                        .iter()
                        .map(|model| {
                            m.iter()
                                .find(|d| &d.model == model)
                                .map_or(req.default_limit, |d| d.limit)
                        })
                        .collect();
                    claim_shared(&mut tx, req, &models, &limits, &usables, &wants).await?
                }
            };
            if req.grouped {
                // The UPDATE returns rows in no promised order; the daemon
                // sends them in this one.
                claim
                    .requests
                    .sort_by_key(|r| (r.deadline.is_none(), r.deadline, r.prefix_key, r.id));
            }
        }
        tx.commit().await?;
        Ok(claim)
    }

    async fn finish_report(&self, items: &[Finished]) -> Result<FinishReport> {
        if items.is_empty() {
            return Ok(FinishReport::default());
        }
        let ids: Vec<RequestId> = items.iter().map(|i| i.id).collect();
        let attempts: Vec<i32> = items.iter().map(|i| i.attempt).collect();
        let states: Vec<RequestState> = items
            .iter()
            .map(|i| {
                assert!(i.state.is_terminal(), "finish needs a terminal state");
                i.state
            })
            .collect();
        let statuses: Vec<Option<i32>> = items.iter().map(|i| i.status_code).collect();
        let upstream_ids: Vec<Option<&str>> = items
            .iter()
            .map(|i| i.upstream_request_id.as_deref())
            .collect();
        let (bodies, body_bytes): (Vec<Option<&str>>, Vec<Option<&[u8]>>) = items
            .iter()
            .map(|i| i.body.as_deref().map_or((None, None), body_param))
            .unzip();
        let errors: Vec<Option<Json<&ResultError>>> =
            items.iter().map(|i| i.error.as_ref().map(Json)).collect();
        let usage = |f: fn(&Usage) -> i64| -> Vec<i64> {
            items
                .iter()
                .map(|i| i.usage.as_ref().map_or(0, f))
                .collect()
        };
        let rows: Vec<(Option<RequestId>, Option<BatchId>)> = sqlx::query_as(FINISH_SQL.as_str())
            .bind(&ids)
            .bind(&attempts)
            .bind(&states)
            .bind(&statuses)
            .bind(&upstream_ids)
            .bind(&bodies)
            .bind(&errors)
            .bind(usage(|u| u.input_tokens))
            .bind(usage(|u| u.cached_tokens))
            .bind(usage(|u| u.output_tokens))
            .bind(usage(|u| u.reasoning_tokens))
            .bind(usage(|u| u.total_tokens))
            .bind(&body_bytes)
            .bind(coalesced_words(items))
            .fetch_all(&self.queue)
            .await
            .map_err(StoreError::from_write)?;
        let mut report = FinishReport::default();
        for row in rows {
            match row {
                (Some(id), _) => report.accepted.push(id),
                (None, Some(batch)) => report.filled.push(batch),
                (None, None) => {}
            }
        }
        Ok(report)
    }

    async fn requeue(&self, items: &[Requeue]) -> Result<Vec<RequestId>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<RequestId> = items.iter().map(|i| i.id).collect();
        let attempts: Vec<i32> = items.iter().map(|i| i.attempt).collect();
        let delays: Vec<i64> = items
            .iter()
            .map(|i| i64::try_from(i.delay.as_micros()).unwrap_or(i64::MAX))
            .collect();
        let retries: Vec<i32> = items.iter().map(|i| i32::from(i.is_retry)).collect();
        let accepted: Vec<RequestId> = sqlx::query_scalar(
            "WITH r AS (
             UPDATE requests q
             SET state = 'pending', daemon_id = NULL, started_at = NULL,
                 not_before = now() + o.delay_us * interval '1 microsecond',
                 retries = q.retries + o.retry
             FROM unnest($1::uuid[], $2::int[], $3::bigint[], $4::int[])
                 AS o(id, attempt, delay_us, retry)
             -- Not pending = in flight; see the finish statement.
             WHERE q.id = o.id AND q.attempt = o.attempt AND q.state <> 'pending'
             RETURNING q.id, o.delay_us = 0 AS now)
             -- Released work is claimable at once: wake idle daemons.
             SELECT r.id FROM r, (SELECT CASE WHEN EXISTS (SELECT 1 FROM r WHERE now)
                                  THEN (SELECT 1 FROM pg_notify('fusillade_work', '')) END) n(x)",
        )
        .bind(&ids)
        .bind(&attempts)
        .bind(&delays)
        .bind(&retries)
        .fetch_all(&self.queue)
        .await
        .map_err(StoreError::from_write)?;
        Ok(accepted)
    }

    async fn lost_leases(
        &self,
        daemon: DaemonId,
        held: &[(RequestId, i32)],
    ) -> Result<Vec<RequestId>> {
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<RequestId> = held.iter().map(|h| h.0).collect();
        let attempts: Vec<i32> = held.iter().map(|h| h.1).collect();
        let lost: Vec<RequestId> = sqlx::query_scalar(
            "SELECT h.id FROM unnest($2::uuid[], $3::int[]) AS h(id, attempt)
             LEFT JOIN requests q ON q.id = h.id
             LEFT JOIN batches b ON b.id = q.batch_id
             WHERE q.id IS NULL OR q.attempt <> h.attempt OR q.daemon_id IS DISTINCT FROM $1
                OR q.state NOT IN ('claimed', 'processing')
                OR b.status IN ('cancelling', 'cancelled', 'expired')",
        )
        .bind(daemon)
        .bind(&ids)
        .bind(&attempts)
        .fetch_all(&self.queue)
        .await?;
        Ok(lost)
    }
}

/// Claims `wants[i]` requests of each model `models[i]` (whose limit is
/// `limits[i]`, of which this daemon may use `usables[i]` slots), shared
/// between their owners by `domain::schedule::split`, and those of owners
/// to catch up by `domain::schedule::catch_up` (see [`QueueStore::claim`]).
async fn claim_shared(
    tx: &mut sqlx::PgConnection,
    req: &ClaimRequest,
    models: &[String],
    limits: &[u32],
    usables: &[u32],
    wants: &[i32],
) -> Result<Vec<ClaimedRequest>> {
    let rows = sqlx::query(OWNERS_SQL)
        .bind(models)
        .fetch_all(&mut *tx)
        .await?;
    let mut loads: Vec<Vec<OwnerLoad>> = vec![Vec::new(); models.len()];
    for r in &rows {
        let model: String = r.try_get("model")?;
        let Some(i) = models.iter().position(|m| *m == model) else {
            continue;
        };
        loads[i].push(OwnerLoad {
            owner: r.try_get("owner")?,
            active: u32::try_from(r.try_get::<i32, _>("active")?).unwrap_or(0),
            deadline: r.try_get("deadline")?,
            remaining: u64::try_from(r.try_get::<i64, _>("remaining")?).unwrap_or(0),
        });
    }
    let now = Utc::now();
    let mut left: Vec<u32> = wants.iter().map(|&w| w.max(0) as u32).collect();
    let mut budget = req.max_total;
    let mut claimed = Vec::new();
    let sql = if req.grouped {
        CLAIM_GROUPED_SQL
    } else {
        CLAIM_SQL
    };
    for round in 0..SHARE_ROUNDS {
        // (model index, owner index, how many, how many of them to catch up)
        // of this round.
        let mut asked = Vec::new();
        for (i, model) in models.iter().enumerate() {
            let call_time = req.schedule.call_times.get(model).copied();
            let given = split(limits[i], left[i], &loads[i], &req.schedule, call_time, now);
            let extra = if round == 0 {
                let s = &req.schedule;
                catch_up(limits[i], usables[i], &loads[i], &given, s, call_time, now)
            } else {
                vec![0; given.len()]
            };
            for (j, (k, e)) in given.into_iter().zip(extra).enumerate() {
                if k + e > 0 {
                    asked.push((i, j, k + e, e));
                }
            }
        }
        if asked.is_empty() || budget == 0 {
            break;
        }
        let d_models: Vec<&str> = asked.iter().map(|a| models[a.0].as_str()).collect();
        let d_ks: Vec<i32> = asked.iter().map(|a| clamp_i32(a.2)).collect();
        let d_owners: Vec<&str> = asked
            .iter()
            .map(|a| loads[a.0][a.1].owner.as_str())
            .collect();
        let rows = sqlx::query(sql)
            .bind(req.daemon)
            .bind(&d_models)
            .bind(&d_ks)
            .bind(i64::from(budget))
            .bind(&d_owners)
            .fetch_all(&mut *tx)
            .await?;
        let claimed_now: Vec<ClaimedRequest> =
            rows.iter().map(claimed_from_row).collect::<Result<_>>()?;
        budget = budget.saturating_sub(claimed_now.len() as u32);
        // Owners that had fewer claimable rows than they were given.
        let mut dry = Vec::new();
        for &(i, j, k, extra) in &asked {
            let load = &loads[i][j];
            let got = claimed_now
                .iter()
                .filter(|r| r.model == models[i] && r.owner == load.owner)
                .count() as u32;
            left[i] = left[i].saturating_sub(got.saturating_sub(extra));
            loads[i][j].active = loads[i][j].active.saturating_add(got);
            if got < k {
                dry.push((i, j));
            }
        }
        claimed.extend(claimed_now);
        if dry.is_empty() {
            break;
        }
        // Indices of one model ascend in `asked`: remove from the back.
        for &(i, j) in dry.iter().rev() {
            loads[i].remove(j);
        }
    }
    Ok(claimed)
}

fn claimed_from_row(r: &sqlx::postgres::PgRow) -> Result<ClaimedRequest> {
    Ok(ClaimedRequest {
        id: r.try_get("id")?,
        batch_id: r.try_get("batch_id")?,
        template_id: r.try_get("template_id")?,
        attempt: r.try_get("attempt")?,
        retries: r.try_get("retries")?,
        model: r.try_get("model")?,
        custom_id: r.try_get("custom_id")?,
        deadline: r.try_get("deadline")?,
        path: r.try_get("path")?,
        body: r.try_get("body")?,
        endpoint: r.try_get("endpoint")?,
        prefix_key: r.try_get("prefix_key")?,
        owner: r.try_get("owner")?,
    })
}

/// A body as the finish statement binds it: as text when a `text` column
/// can hold it (UTF-8 without NUL), else as bytes. Checking costs a scan of
/// the body, far less than sending it.
fn body_param(body: &[u8]) -> (Option<&str>, Option<&[u8]>) {
    match std::str::from_utf8(body) {
        Ok(text) if memchr::memchr(0, body).is_none() => (Some(text), None),
        _ => (None, Some(body)),
    }
}

fn clamp_i32(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}
