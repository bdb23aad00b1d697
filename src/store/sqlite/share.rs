//! The unscoped claim's sharing of each model's requests between owners:
//! the loads are read here, the rule is `domain::schedule::split` (see
//! `QueueStore::claim`).

use super::types::{NEVER, time};
use crate::domain::schedule::{OwnerLoad, catch_up, split};
use crate::store::guards::in_flight;
use crate::store::{ClaimRequest, ClaimedRequest, Result};
use sqlx::Row;
use sqlx::sqlite::{SqliteConnection, SqliteRow};
use std::sync::LazyLock;

/// Rounds of sharing one claim: an owner that had fewer claimable rows
/// than it was given drops out, and what it left is shared again.
const SHARE_ROUNDS: usize = 3;

/// The owners with claimable work of model `?1` at `?2`, each with the
/// earliest deadline of its claimable rows and the requests not yet ended
/// of that row's batch. Owners are found by a skip scan of the claim index
/// (one seek each), and each owner's head row by one more.
const OWNERS: &str = "WITH RECURSIVE o(owner) AS ( \
     SELECT (SELECT owner FROM requests INDEXED BY requests_claim \
             WHERE state = 'pending' AND NOT private AND model = ?1 ORDER BY owner LIMIT 1) \
     UNION ALL \
     SELECT (SELECT r.owner FROM requests r INDEXED BY requests_claim \
             WHERE r.state = 'pending' AND NOT r.private AND r.model = ?1 AND r.owner > o.owner \
             ORDER BY r.owner LIMIT 1) \
     FROM o WHERE o.owner IS NOT NULL) \
     SELECT o.owner, h.deadline, \
            coalesce((SELECT b.total - b.n_completed - b.n_failed - b.n_canceled \
                      FROM batches b WHERE b.id = h.batch_id), 1) AS remaining \
     FROM o JOIN requests h ON h.id = ( \
         SELECT r.id FROM requests r INDEXED BY requests_claim \
         WHERE r.state = 'pending' AND NOT r.private AND r.model = ?1 AND r.owner = o.owner \
           AND r.not_before <= ?2 AND r.deadline > ?2 \
         ORDER BY r.deadline LIMIT 1) \
     WHERE o.owner IS NOT NULL";

/// Each owner's rows of model `?1` claimed or in flight, by any daemon.
static ACTIVE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT owner, count(*) FROM requests INDEXED BY requests_in_flight \
         WHERE model = ?1 AND state IN ({}) GROUP BY owner",
        in_flight()
    )
});

/// Claims up to `?3` claimable rows of model `?1` of owner `?5` at `?2` for
/// daemon `?4`, in the order `{order}`, which `index` holds them in (so
/// that the claim reads only the rows it takes, whatever the backlog).
fn claim_sql(index: &str, order: &str) -> String {
    format!(
        "UPDATE requests SET state = 'claimed', attempt = attempt + 1, daemon_id = ?4, \
             claimed_at = ?2 \
         WHERE id IN (SELECT id FROM requests INDEXED BY {index} \
             WHERE state = 'pending' AND NOT private AND model = ?1 AND owner = ?5 \
               AND not_before <= ?2 AND deadline > ?2 ORDER BY {order} LIMIT ?3) \
           AND state = 'pending' \
         RETURNING id, batch_id, template_id, attempt, retries, model, custom_id, \
                   prefix_key, deadline, owner"
    )
}

/// A claimed row, its line (path, body, endpoint) still to be read.
pub(super) fn claimed_from_row(r: &SqliteRow) -> Result<ClaimedRequest> {
    let deadline: i64 = r.try_get("deadline")?;
    Ok(ClaimedRequest {
        id: r.try_get("id")?,
        batch_id: r.try_get("batch_id")?,
        template_id: r.try_get("template_id")?,
        attempt: r.try_get("attempt")?,
        retries: r.try_get("retries")?,
        model: r.try_get("model")?,
        custom_id: r.try_get("custom_id")?,
        deadline: (deadline != NEVER).then(|| time(deadline)),
        path: String::new(),
        body: String::new(),
        endpoint: String::new(),
        prefix_key: r.try_get("prefix_key")?,
        owner: r.try_get("owner")?,
    })
}

/// One model of a shared claim: its limit and how many to claim of it.
pub(super) struct Wanted {
    /// The model.
    pub model: String,
    /// Its limit of calls at once, over all daemons.
    pub limit: u32,
    /// Requests to claim of it.
    pub want: u32,
    /// Its slots this daemon may use.
    pub usable: u32,
}

/// Claims each model's wanted requests, shared between their owners, at
/// most `budget` in all, at `now` (unix microseconds).
pub(super) async fn claim_shared(
    tx: &mut SqliteConnection,
    req: &ClaimRequest,
    wanted: &[Wanted],
    mut budget: u32,
    now: i64,
) -> Result<Vec<ClaimedRequest>> {
    let at = time(now);
    let mut loads: Vec<Vec<OwnerLoad>> = Vec::with_capacity(wanted.len());
    for w in wanted {
        let active: Vec<(String, i64)> = sqlx::query_as(&ACTIVE)
            .bind(&w.model)
            .fetch_all(&mut *tx)
            .await?;
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(OWNERS)
            .bind(&w.model)
            .bind(now)
            .fetch_all(&mut *tx)
            .await?;
        loads.push(
            rows.into_iter()
                .map(|(owner, deadline, remaining)| OwnerLoad {
                    active: active
                        .iter()
                        .find(|a| a.0 == owner)
                        .map_or(0, |a| u32::try_from(a.1).unwrap_or(u32::MAX)),
                    owner,
                    deadline: (deadline != NEVER).then(|| time(deadline)),
                    remaining: u64::try_from(remaining).unwrap_or(0),
                })
                .collect(),
        );
    }
    let sql = if req.grouped {
        claim_sql("requests_claim", "deadline, prefix_key, id")
    } else {
        claim_sql("requests_claim_line", "deadline, id")
    };
    let mut left: Vec<u32> = wanted.iter().map(|w| w.want).collect();
    let mut claimed = Vec::new();
    for round in 0..SHARE_ROUNDS {
        let mut dry = false;
        for (i, w) in wanted.iter().enumerate() {
            let call_time = req.schedule.call_times.get(&w.model).copied();
            let s = &req.schedule;
            let given = split(w.limit, left[i], &loads[i], s, call_time, at);
            let extra = if round == 0 {
                catch_up(w.limit, w.usable, &loads[i], &given, s, call_time, at)
            } else {
                vec![0; given.len()]
            };
            let mut keep = Vec::with_capacity(loads[i].len());
            let taken = std::mem::take(&mut loads[i]);
            for ((mut load, k), extra) in taken.into_iter().zip(given).zip(extra) {
                let k = (k + extra).min(budget);
                if k == 0 {
                    keep.push(load);
                    continue;
                }
                let rows = sqlx::query(&sql)
                    .bind(&w.model)
                    .bind(now)
                    .bind(i64::from(k))
                    .bind(req.daemon)
                    .bind(&load.owner)
                    .fetch_all(&mut *tx)
                    .await?;
                let got = rows.len() as u32;
                budget -= got;
                left[i] -= got.saturating_sub(extra).min(left[i]);
                for r in &rows {
                    claimed.push(claimed_from_row(r)?);
                }
                if got < k {
                    // Its claimable rows are all taken: it drops out.
                    dry = true;
                } else {
                    load.active = load.active.saturating_add(got);
                    keep.push(load);
                }
            }
            loads[i] = keep;
        }
        if !dry || budget == 0 {
            break;
        }
    }
    Ok(claimed)
}
