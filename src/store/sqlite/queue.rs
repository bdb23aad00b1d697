//! The daemon's hot path over `requests`: claim many, then settle many,
//! each in one transaction of the one writer.
//!
//! Every write after the claim is guarded by `(state, attempt)`: the claim
//! bumps `attempt`, so a daemon that lost its lease finds its late writes
//! rejected rather than applied.

use super::SqliteStore;
use super::ending::{RECORD, RESULT_RECORD};
use super::share::{Wanted, claim_shared, claimed_from_row};
use super::types::{batch_hi, batch_lo, micros, std_us};
use crate::domain::batch::{BatchId, Coalesced};
use crate::domain::ids::{DaemonId, TemplateId};
use crate::domain::request::{RequestId, RequestState};
use crate::store::guards::{in_flight, request_word};
use crate::store::{
    Claim, ClaimRequest, ClaimedRequest, FinishReport, Finished, ModelDemand, QueueStore, Requeue,
    Result, StoreError,
};
use sqlx::Row;
use std::collections::{BTreeMap, BTreeSet};

/// The error line of a failure that came without one.
const NO_ERROR: &str = r#"{"code":"upstream_error","message":""}"#;

/// Bytes as lowercase hex, for SQLite's `unhex`.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

fn clamp_i64(v: u32) -> i64 {
    i64::from(v)
}

/// The distinct models of the shared pending work, one seek of the claim
/// index each.
const DISTINCT_PENDING: &str = "WITH RECURSIVE m(model) AS ( \
     SELECT (SELECT model FROM requests INDEXED BY requests_claim \
             WHERE state = 'pending' AND NOT private ORDER BY model LIMIT 1) \
     UNION ALL \
     SELECT (SELECT r.model FROM requests r INDEXED BY requests_claim \
             WHERE r.state = 'pending' AND NOT r.private AND r.model > m.model \
             ORDER BY r.model LIMIT 1) \
     FROM m WHERE m.model IS NOT NULL) \
     SELECT model FROM m WHERE model IS NOT NULL AND ?1 IS NULL";

/// The distinct models of batch `?1`'s pending work.
const DISTINCT_PENDING_SCOPED: &str = "WITH RECURSIVE m(model) AS ( \
     SELECT (SELECT model FROM requests INDEXED BY requests_pending_batch \
             WHERE batch_id = ?1 AND state = 'pending' ORDER BY model LIMIT 1) \
     UNION ALL \
     SELECT (SELECT r.model FROM requests r INDEXED BY requests_pending_batch \
             WHERE r.batch_id = ?1 AND r.state = 'pending' AND r.model > m.model \
             ORDER BY r.model LIMIT 1) \
     FROM m WHERE m.model IS NOT NULL) \
     SELECT model FROM m WHERE model IS NOT NULL";

/// One model as the claim weighs it.
struct Weighed {
    model: String,
    cap: i64,
    share: i64,
    in_flight: i64,
    waiting: i64,
    per_call: i64,
    pending: bool,
}

impl QueueStore for SqliteStore {
    async fn claim(&self, req: &ClaimRequest) -> Result<Claim> {
        let now = micros(chrono::Utc::now());
        let mut tx = self.write().await?;
        let running: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM daemons WHERE id = ? AND status = 'running')",
        )
        .bind(req.daemon)
        .fetch_one(&mut *tx)
        .await?;
        // Models with work: never a private batch's, unless scoped to it.
        // Each model is one index seek (a loose index scan), whatever the
        // backlog: a plain DISTINCT would read every pending row.
        let pending_models: Vec<String> = sqlx::query_scalar(match req.scope {
            None => DISTINCT_PENDING,
            Some(_) => DISTINCT_PENDING_SCOPED,
        })
        .bind(req.scope)
        .fetch_all(&mut *tx)
        .await?;
        let pending: BTreeSet<&str> = pending_models.iter().map(String::as_str).collect();
        let mut models: Vec<Weighed> = req
            .models
            .iter()
            .map(|m: &ModelDemand| Weighed {
                model: m.model.clone(),
                cap: clamp_i64(m.limit),
                share: clamp_i64(m.share),
                in_flight: clamp_i64(m.in_flight),
                waiting: clamp_i64(m.waiting),
                per_call: clamp_i64(m.per_call.max(1)),
                pending: pending.contains(m.model.as_str()),
            })
            .collect();
        for p in &pending_models {
            if !req.models.iter().any(|m| &m.model == p) {
                models.push(Weighed {
                    model: p.clone(),
                    cap: clamp_i64(req.default_limit),
                    share: clamp_i64(req.default_share),
                    in_flight: 0,
                    waiting: 0,
                    per_call: 1,
                    pending: true,
                });
            }
        }
        // A dead daemon's slots count until the rescuer forgets them.
        let others: BTreeMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
            "SELECT s.model, sum(s.held) FROM model_slots s JOIN daemons d ON d.id = s.daemon_id \
             WHERE s.daemon_id <> ? AND d.status IN ('running', 'dead') AND s.held > 0 \
             GROUP BY s.model",
        )
        .bind(req.daemon)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();
        let peers: i64 =
            sqlx::query_scalar("SELECT count(*) FROM daemons WHERE status = 'running'")
                .fetch_one(&mut *tx)
                .await?;
        let mut claim = Claim {
            peers: u32::try_from(peers).unwrap_or(u32::MAX),
            ..Claim::default()
        };
        // (model, limit, how many to claim, usable slots)
        let mut wants: Vec<(String, i64, i64, i64)> = Vec::new();
        // An unscoped claim may find owners to catch up in a model it asks
        // nothing of (see `domain::schedule`, rule 4).
        let catch_up = req.scope.is_none() && req.schedule.catch_up;
        for m in &models {
            let held = if running {
                let wanted = if m.pending || m.waiting > 0 {
                    m.share.max(m.in_flight)
                } else {
                    m.in_flight
                };
                m.in_flight
                    .max(wanted.min(m.cap - others.get(&m.model).copied().unwrap_or(0)))
            } else {
                0
            };
            if running {
                sqlx::query(
                    "INSERT INTO model_slots (model, daemon_id, held) VALUES (?, ?, ?) \
                     ON CONFLICT (model, daemon_id) DO UPDATE SET held = excluded.held \
                     WHERE model_slots.held <> excluded.held",
                )
                .bind(&m.model)
                .bind(req.daemon)
                .bind(held.max(0))
                .execute(&mut *tx)
                .await?;
            }
            let usable = held.min(m.share);
            let want = (2 * usable - m.in_flight - m.waiting).max(0) * m.per_call;
            if m.pending && usable > 0 && (want > 0 || catch_up) {
                wants.push((m.model.clone(), m.cap, want, usable));
                claim.asked = claim.asked.saturating_add(want.min(u32::MAX as i64) as u32);
            }
            claim
                .slots
                .push((m.model.clone(), usable.clamp(0, u32::MAX as i64) as u32));
        }
        claim.asked = claim.asked.min(req.max_total);
        claim.requests = match req.scope {
            None => {
                let wanted: Vec<Wanted> = wants
                    .into_iter()
                    .map(|(model, limit, want, usable)| Wanted {
                        model,
                        limit: limit.clamp(0, i64::from(u32::MAX)) as u32,
                        want: want.clamp(0, i64::from(u32::MAX)) as u32,
                        usable: usable.clamp(0, i64::from(u32::MAX)) as u32,
                    })
                    .collect();
                claim_shared(&mut tx, req, &wanted, req.max_total, now).await?
            }
            Some(batch) => {
                let wants = wants.into_iter().map(|(m, l, w, _)| (m, l, w)).collect();
                claim_scoped(&mut tx, req, batch, wants, now).await?
            }
        };
        // What to send: each template's line, by primary key, in one statement.
        if !claim.requests.is_empty() {
            let ids: Vec<String> = claim
                .requests
                .iter()
                .map(|c| c.template_id.0.simple().to_string())
                .collect();
            let rows = sqlx::query(
                "SELECT t.id, t.path, t.body, t.endpoint FROM json_each(?) j \
                 JOIN request_templates t ON t.id = unhex(j.value)",
            )
            .bind(serde_json::to_string(&ids).expect("ids serialize"))
            .fetch_all(&mut *tx)
            .await?;
            let mut lines: BTreeMap<TemplateId, (String, String, String)> = BTreeMap::new();
            for t in &rows {
                lines.insert(
                    t.try_get("id")?,
                    (
                        t.try_get("path")?,
                        t.try_get("body")?,
                        t.try_get("endpoint")?,
                    ),
                );
            }
            for c in &mut claim.requests {
                // Requests of one line share its template: the last takes it.
                let line = lines.get(&c.template_id).cloned().ok_or_else(|| {
                    StoreError::Invalid(format!("request {} has no template", c.id))
                })?;
                (c.path, c.body, c.endpoint) = line;
            }
        }
        tx.commit().await?;
        claim.requests.sort_by_key(|r| {
            (
                r.deadline.is_none(),
                r.deadline,
                if req.grouped { r.prefix_key } else { 0 },
                r.id,
            )
        });
        Ok(claim)
    }

    async fn finish_report(&self, items: &[Finished]) -> Result<FinishReport> {
        if items.is_empty() {
            return Ok(FinishReport::default());
        }
        let now = micros(chrono::Utc::now());
        // The rows as one JSON array, so that each step below is one
        // statement whatever their number (bodies as hex: JSON has no bytes).
        let mut rows = Vec::with_capacity(items.len());
        for i in items {
            assert!(i.state.is_terminal(), "finish needs a terminal state");
            let ok = i.state == RequestState::Completed;
            let error = match (&i.error, ok) {
                (_, true) => None,
                (Some(e), false) => Some(serde_json::to_string(e).map_err(|e| {
                    StoreError::Rejected(crate::store::BackendError::with_source(e.to_string(), e))
                })?),
                (None, false) => Some(NO_ERROR.to_owned()),
            };
            rows.push(serde_json::json!([
                i.id.0.simple().to_string(),
                i.attempt,
                i.state.as_str(),
                ok,
                i.status_code,
                i.upstream_request_id,
                i.body.as_deref().map(hex),
                error,
            ]));
        }
        let rows = serde_json::Value::Array(rows).to_string();
        let write = async {
            let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
            // Whose lease holds (in flight = not pending, the only other
            // live state), as one row.
            let held: Option<String> = sqlx::query_scalar(
                "SELECT json_group_array(json_array(lower(hex(q.id)), lower(hex(q.batch_id)))) \
                 FROM json_each(?1) j JOIN requests q ON q.id = unhex(j.value ->> 0) \
                 WHERE q.attempt = j.value ->> 1 AND q.state <> 'pending'",
            )
            .bind(&rows)
            .fetch_one(&mut *tx)
            .await?;
            let held: Vec<(String, Option<String>)> =
                serde_json::from_str(held.as_deref().unwrap_or("[]"))
                    .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
            if held.is_empty() {
                tx.rollback().await?;
                return Ok::<_, sqlx::Error>(FinishReport::default());
            }
            sqlx::query(&format!(
                "INSERT INTO request_results ({RESULT_RECORD}, state, ok, status_code, \
                     upstream_request_id, body, error, finished_at) \
                 SELECT {q_record}, j.value ->> 2, j.value ->> 3, j.value ->> 4, j.value ->> 5, \
                        unhex(j.value ->> 6), j.value ->> 7, ?2 \
                 FROM json_each(?1) j JOIN requests q ON q.id = unhex(j.value ->> 0) \
                 WHERE q.attempt = j.value ->> 1 AND q.state <> 'pending'",
                q_record = RECORD
                    .split(", ")
                    .map(|c| format!("q.{c}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            ))
            .bind(&rows)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            let ids: Vec<&str> = held.iter().map(|h| h.0.as_str()).collect();
            sqlx::query("DELETE FROM requests WHERE id IN (SELECT unhex(value) FROM json_each(?))")
                .bind(serde_json::to_string(&ids).expect("ids serialize"))
                .execute(&mut *tx)
                .await?;
            // Per batch: completed, failed, canceled, the five token totals,
            // then lines coalesced with an identical twin and packed.
            let items_by_id: BTreeMap<RequestId, &Finished> =
                items.iter().rev().map(|i| (i.id, i)).collect();
            let mut tally: BTreeMap<String, [i64; 10]> = BTreeMap::new();
            let mut accepted = Vec::with_capacity(held.len());
            for (id, batch) in &held {
                let id = RequestId(
                    uuid::Uuid::try_parse(id).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
                );
                accepted.push(id);
                let (Some(batch), Some(i)) = (batch, items_by_id.get(&id)) else {
                    continue;
                };
                let t = tally.entry(batch.clone()).or_default();
                match i.state {
                    RequestState::Completed => t[0] += 1,
                    RequestState::Failed => t[1] += 1,
                    _ => t[2] += 1,
                }
                if let Some(u) = &i.usage {
                    t[3] += u.input_tokens;
                    t[4] += u.cached_tokens;
                    t[5] += u.output_tokens;
                    t[6] += u.reasoning_tokens;
                    t[7] += u.total_tokens;
                }
                match i.coalesced {
                    Some(Coalesced::Identical) => t[8] += 1,
                    Some(Coalesced::Packed) => t[9] += 1,
                    None => {}
                }
            }
            let mut filled = Vec::new();
            for (batch, t) in tally {
                let full: Option<bool> = sqlx::query_scalar(
                    "UPDATE batches SET n_completed = n_completed + ?2, n_failed = n_failed + ?3, \
                         n_canceled = n_canceled + ?4, input_tokens = input_tokens + ?5, \
                         cached_tokens = cached_tokens + ?6, output_tokens = output_tokens + ?7, \
                         reasoning_tokens = reasoning_tokens + ?8, \
                         total_tokens = total_tokens + ?9, \
                         n_coalesced_identical = n_coalesced_identical + ?10, \
                         n_coalesced_packed = n_coalesced_packed + ?11 \
                     WHERE id = unhex(?1) \
                     RETURNING n_completed + n_failed + n_canceled >= total",
                )
                .bind(&batch)
                .bind(t[0])
                .bind(t[1])
                .bind(t[2])
                .bind(t[3])
                .bind(t[4])
                .bind(t[5])
                .bind(t[6])
                .bind(t[7])
                .bind(t[8])
                .bind(t[9])
                .fetch_optional(&mut *tx)
                .await?;
                if full == Some(true) {
                    let id = uuid::Uuid::try_parse(&batch)
                        .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
                    filled.push(BatchId(id));
                }
            }
            tx.commit().await?;
            Ok(FinishReport { accepted, filled })
        };
        write.await.map_err(StoreError::from_write)
    }

    async fn requeue(&self, items: &[Requeue]) -> Result<Vec<RequestId>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let now = micros(chrono::Utc::now());
        let write = async {
            let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
            let mut accepted = Vec::with_capacity(items.len());
            let mut due_now = false;
            for i in items {
                let done = sqlx::query(&format!(
                    "UPDATE requests SET state = {pending}, daemon_id = NULL, started_at = NULL, \
                         not_before = ?3, retries = retries + ?4 \
                     WHERE id = ?1 AND attempt = ?2 AND state IN ({in_flight})",
                    pending = request_word(RequestState::Pending),
                    in_flight = in_flight(),
                ))
                .bind(i.id)
                .bind(i.attempt)
                .bind(now.saturating_add(std_us(i.delay)))
                .bind(i32::from(i.is_retry))
                .execute(&mut *tx)
                .await?;
                if done.rows_affected() == 1 {
                    accepted.push(i.id);
                    due_now |= i.delay.is_zero();
                }
            }
            tx.commit().await?;
            Ok::<_, sqlx::Error>((accepted, due_now))
        };
        let (accepted, due_now) = write.await.map_err(StoreError::from_write)?;
        if due_now {
            // Released work is claimable at once: wake idle daemons.
            self.ring();
        }
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
        let list: Vec<(String, i32)> = held
            .iter()
            .map(|(id, attempt)| (id.0.simple().to_string(), *attempt))
            .collect();
        let lost: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT h.value ->> 0 FROM json_each(?2) h \
             LEFT JOIN requests q ON q.id = unhex(h.value ->> 0) \
             LEFT JOIN batches b ON b.id = q.batch_id \
             WHERE q.id IS NULL OR q.attempt <> h.value ->> 1 OR q.daemon_id IS NOT ?1 \
                OR q.state NOT IN ({}) \
                OR b.status IN ('cancelling', 'cancelled', 'expired')",
            in_flight()
        ))
        .bind(daemon)
        .bind(serde_json::to_string(&list).expect("ids serialize"))
        .fetch_all(&self.reader)
        .await?;
        lost.iter()
            .map(|h| {
                uuid::Uuid::try_parse(h)
                    .map(RequestId)
                    .map_err(|e| StoreError::Invalid(format!("a request id is malformed: {e}")))
            })
            .collect()
    }
}

/// Claims `wants` (model, limit, how many) of batch `batch`'s requests, at
/// most `req.max_total` in all, without sharing: a scoped daemon runs its
/// one batch.
async fn claim_scoped(
    tx: &mut sqlx::SqliteConnection,
    req: &ClaimRequest,
    batch: BatchId,
    wants: Vec<(String, i64, i64)>,
    now: i64,
) -> Result<Vec<ClaimedRequest>> {
    let pick = if req.grouped {
        // A private batch's pending rows by prefix group.
        "SELECT id FROM requests INDEXED BY requests_pending_batch \
         WHERE batch_id = ?4 AND model = ?1 AND state = 'pending' \
           AND not_before <= ?2 AND deadline > ?2 ORDER BY prefix_key, id LIMIT ?3"
    } else {
        // The batch's own range of ids, walked in line order.
        "SELECT id FROM requests NOT INDEXED \
         WHERE id BETWEEN ?5 AND ?6 AND batch_id = ?4 AND model = ?1 \
           AND state = 'pending' AND not_before <= ?2 AND deadline > ?2 \
         ORDER BY id LIMIT ?3"
    };
    let update = format!(
        "UPDATE requests SET state = 'claimed', attempt = attempt + 1, daemon_id = ?7, \
             claimed_at = ?2 \
         WHERE id IN ({pick}) AND state = 'pending' \
         RETURNING id, batch_id, template_id, attempt, retries, model, custom_id, \
                   prefix_key, deadline, owner"
    );
    let mut left = i64::from(req.max_total);
    let mut claimed = Vec::new();
    for (model, _, want) in wants {
        if left <= 0 {
            break;
        }
        let rows = sqlx::query(&update)
            .bind(&model)
            .bind(now)
            .bind(want.min(left))
            .bind(batch)
            .bind(batch_lo(batch))
            .bind(batch_hi(batch))
            .bind(req.daemon)
            .fetch_all(&mut *tx)
            .await?;
        left -= rows.len() as i64;
        for r in &rows {
            claimed.push(claimed_from_row(r)?);
        }
    }
    Ok(claimed)
}
