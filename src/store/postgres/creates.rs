//! Batch creation in groups: creates that arrive while others are being
//! written share one statement and one commit.
//!
//! A create of a small batch is mostly fixed cost: the statement's start,
//! its constraint and trigger set-up, the round trip and the commit's flush.
//! Measured with psql on one connection, 1,000 creates of 20-line batches
//! cost 0.73 ms of database CPU each one by one and 0.37 ms each in groups
//! of five. So at most [`LANES`] statements run at once, and each takes
//! every create that waited for a lane (up to [`MOST`]): alone, a create
//! runs at once; under load, creates wait no longer than one statement and
//! then go together.

use super::batches::batch_from_row;
use crate::domain::batch::{Batch, BatchId};
use crate::domain::file::FileId;
use crate::store::{NewBatch, Result, StoreError};
use sqlx::types::Json;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{Semaphore, mpsc, oneshot};

/// Group statements in flight at once: each holds one connection of the
/// `creates` pool. Each busy lane is one more database process competing
/// for the cores with the daemon's claims, which then take longer, and the
/// daemon's rate is bound by them: with 20 clients creating 1,000 batches
/// of 20 lines while the daemon ran them, claims took 25-108 ms each during
/// the creates against 12-25 ms after. Two lanes against four (alternated,
/// `api-load --scenario small-batches`): the 1,000 × 20 wall ratio 1.14 /
/// 1.15 against 1.21 / 1.23 in median, and more creates a second (1,400 to
/// 1,600 against 1,240 to 1,480), the groups being larger.
pub const LANES: usize = 2;

/// The most creates one statement takes.
const MOST: usize = 64;

/// Creates batches from files that can run as they are, in one statement
/// for any number of them: each caller's own input file, no refused lines,
/// every line for the batch's endpoint. A batch that is not made (no such
/// file, lines to report, a repeated idempotency key) is simply not
/// returned, and its caller takes the long way, which says why. Each
/// batch's output and error files are inserted with it; their rows and the
/// batch's references to them are checked at the end of the statement.
const CREATE_SQL: &str = "
WITH n AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::text[],
                         $6::jsonb[], $7::text[], $8::int8[], $9::uuid[], $10::uuid[],
                         $11::bool[])
        AS n(id, owner, file_id, endpoint, completion_window, metadata, idempotency_key,
             window_ms, output_id, error_id, private)
),
-- One lookup of each file by its key, whatever the plan kept for this
-- statement thinks of the table (as a join, a plan made while the table
-- was small scanned every file for each create).
f AS (
    SELECT n.*, x.template_count FROM n CROSS JOIN LATERAL (
        SELECT template_count FROM files
        WHERE id = n.file_id AND owner = n.owner AND deleted_at IS NULL AND kind = 'input'
          AND error_count = 0 AND urls <@ ARRAY[n.endpoint]
        -- Keeps the file from being deleted while its batch is made.
        FOR SHARE) x
),
b AS (
    INSERT INTO batches (id, owner, input_file_id, endpoint, completion_window, metadata,
                         status, total, idempotency_key, in_progress_at, expires_at,
                         output_file_id, error_file_id, private)
    SELECT id, owner, file_id, endpoint, completion_window, metadata, 'in_progress',
           template_count, idempotency_key, now(),
           now() + window_ms * interval '1 millisecond', output_id, error_id, private
    FROM f
    ON CONFLICT (owner, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING *
),
o AS (
    INSERT INTO files (id, owner, filename, purpose, kind, batch_id)
    SELECT x.id, b.owner, 'batch_' || replace(b.id::text, '-', '') || x.suffix, 'batch_output',
           x.kind, b.id
    FROM b CROSS JOIN LATERAL (VALUES (b.output_file_id, '_output.jsonl', 'output'),
                                      (b.error_file_id, '_error.jsonl', 'error'))
        AS x(id, suffix, kind)
),
-- Request ids are the batch id with the line number in its low bits
-- (domain::ids): in line order, so the primary key grows at its right edge.
r AS (
    INSERT INTO requests (id, batch_id, template_id, model, custom_id, deadline, private,
                          prefix_key, owner)
    SELECT fusillade_request_id(b.id, t.line_number), b.id, t.id, t.model, t.custom_id,
           b.expires_at, b.private, t.prefix_key, b.owner
    FROM b JOIN request_templates t ON t.file_id = b.input_file_id
)
SELECT * FROM b";

/// One batch to create, owned so that it can wait for its group.
#[derive(Debug)]
struct Job {
    id: BatchId,
    owner: String,
    input_file_id: FileId,
    endpoint: String,
    completion_window: String,
    metadata: Option<BTreeMap<String, String>>,
    idempotency_key: Option<String>,
    window_ms: i64,
    private: bool,
    reply: oneshot::Sender<Result<Option<Batch>>>,
    /// [`QUEUED`], then [`TAKEN`] by a group or [`GIVEN_UP`] by its caller.
    state: Arc<AtomicU8>,
}

/// A create waiting for a lane.
const QUEUED: u8 = 0;
/// A create in a group being written: only the group's answer decides it.
const TAKEN: u8 = 1;
/// A create whose caller stopped waiting before any group took it.
const GIVEN_UP: u8 = 2;

impl Job {
    /// Takes the job into a group, unless its caller gave up on it.
    fn take(self) -> Option<Self> {
        self.state
            .compare_exchange(QUEUED, TAKEN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
            .then_some(self)
    }
}

/// The group writer of one store: a queue of creates and the task that
/// sends them to the database in groups.
#[derive(Debug, Clone)]
pub(super) struct CreateGroups {
    pool: sqlx::PgPool,
    /// The running dispatcher's queue; replaced when its task is gone (its
    /// runtime ended, as between tests).
    queue: Arc<Mutex<Option<mpsc::UnboundedSender<Job>>>>,
}

impl CreateGroups {
    /// Groups written on `pool` (one connection per lane).
    pub(super) fn new(pool: sqlx::PgPool) -> Self {
        Self {
            pool,
            queue: Arc::default(),
        }
    }

    /// Creates the batch `id` if its file can run as it is: the batch, or
    /// `None` for the long way (see [`CREATE_SQL`]).
    pub(super) async fn create(
        &self,
        new: &NewBatch<'_>,
        id: BatchId,
        window: chrono::TimeDelta,
    ) -> Result<Option<Batch>> {
        let (reply, answer) = oneshot::channel();
        let mut job = Job {
            id,
            owner: new.owner.to_owned(),
            input_file_id: new.input_file_id,
            endpoint: new.endpoint.to_owned(),
            completion_window: new.completion_window.to_owned(),
            metadata: new.metadata.clone(),
            idempotency_key: new.idempotency_key.map(str::to_owned),
            window_ms: window.num_milliseconds(),
            private: new.private,
            reply,
            state: Arc::new(AtomicU8::new(QUEUED)),
        };
        let state = Arc::clone(&job.state);
        loop {
            let sender = self.sender();
            match sender.send(job) {
                Ok(()) => break,
                // The dispatcher's runtime is gone: start one on ours.
                Err(mpsc::error::SendError(back)) => {
                    job = back;
                    let mut queue = self.queue.lock().expect("create queue lock");
                    if queue.as_ref().is_some_and(|q| q.same_channel(&sender)) {
                        *queue = None;
                    }
                }
            }
        }
        let interrupted = |_| {
            // The task writing the group ended without an answer (its
            // runtime stopped): whether the batch was made is unknown.
            Err(StoreError::unavailable(
                "batch creation was interrupted; list batches to see whether it was made",
            ))
        };
        // While every lane is held (by a database that does not answer, or
        // by huge creates), a create waits no longer than an API call
        // waits for a connection, and is then refused as the pool would
        // refuse it; once taken into a group, only the group decides.
        let mut answer = answer;
        let wait = self.pool.options().get_acquire_timeout();
        match tokio::time::timeout(wait, &mut answer).await {
            Ok(answer) => answer.unwrap_or_else(interrupted),
            Err(_) => {
                let gave_up = state
                    .compare_exchange(QUEUED, GIVEN_UP, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok();
                if gave_up {
                    return Err(StoreError::unavailable(format!(
                        "no batch create could start within {wait:?}: the database is busy"
                    )));
                }
                answer.await.unwrap_or_else(interrupted)
            }
        }
    }

    /// The queue of the running dispatcher, starting one if needed.
    fn sender(&self) -> mpsc::UnboundedSender<Job> {
        let mut queue = self.queue.lock().expect("create queue lock");
        if let Some(q) = queue.as_ref().filter(|q| !q.is_closed()) {
            return q.clone();
        }
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(dispatch(self.pool.clone(), rx));
        *queue = Some(tx.clone());
        tx
    }
}

/// Takes creates off the queue as lanes free up: everything that waited
/// for a lane goes in the next group.
async fn dispatch(pool: sqlx::PgPool, mut queue: mpsc::UnboundedReceiver<Job>) {
    let lanes = Arc::new(Semaphore::new(LANES));
    loop {
        let lane = lanes
            .clone()
            .acquire_owned()
            .await
            .expect("the lanes are never closed");
        let Some(first) = queue.recv().await else {
            return;
        };
        let mut jobs: Vec<Job> = first.take().into_iter().collect();
        while jobs.len() < MOST {
            match queue.try_recv() {
                Ok(job) => jobs.extend(job.take()),
                Err(_) => break,
            }
        }
        if jobs.is_empty() {
            continue;
        }
        let pool = pool.clone();
        // On a task of its own: callers that go away do not stop a group
        // that others wait for.
        tokio::spawn(async move {
            write(&pool, jobs).await;
            drop(lane);
        });
    }
}

/// Writes one group and answers each of its callers. When a group of
/// several fails, each of its creates is written alone, so that only the
/// create at fault gets the error (a clash of ids, say, which its caller
/// retries with fresh ones).
async fn write(pool: &sqlx::PgPool, jobs: Vec<Job>) {
    metrics::histogram!("fusillade_batch_create_group_size").record(jobs.len() as f64);
    match insert(pool, &jobs).await {
        Ok(mut made) => {
            for job in jobs {
                let _ = job.reply.send(Ok(made.remove(&job.id)));
            }
        }
        // The database is away: every create says so at once.
        Err(e) if jobs.len() == 1 || e.is_unavailable() => {
            let message = e.to_string();
            let mut first = Some(e);
            for job in jobs {
                let e = first
                    .take()
                    .unwrap_or_else(|| StoreError::unavailable(message.clone()));
                let _ = job.reply.send(Err(e));
            }
        }
        Err(e) => {
            tracing::debug!(error = %e, creates = jobs.len(), "a group of creates failed; writing each alone");
            for job in jobs {
                let one = std::slice::from_ref(&job);
                let answer = insert(pool, one).await.map(|mut m| m.remove(&job.id));
                let _ = job.reply.send(answer);
            }
        }
    }
}

/// Runs [`CREATE_SQL`] for `jobs`: the batches made, by id.
async fn insert(pool: &sqlx::PgPool, jobs: &[Job]) -> Result<HashMap<BatchId, Batch>> {
    let col = |f: fn(&Job) -> FileId| jobs.iter().map(f).collect::<Vec<_>>();
    let text = |f: fn(&Job) -> &str| jobs.iter().map(f).collect::<Vec<_>>();
    let rows = sqlx::query(CREATE_SQL)
        .bind(jobs.iter().map(|j| j.id).collect::<Vec<_>>())
        .bind(text(|j| &j.owner))
        .bind(col(|j| j.input_file_id))
        .bind(text(|j| &j.endpoint))
        .bind(text(|j| &j.completion_window))
        .bind(
            jobs.iter()
                .map(|j| j.metadata.as_ref().map(Json))
                .collect::<Vec<_>>(),
        )
        .bind(
            jobs.iter()
                .map(|j| j.idempotency_key.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(jobs.iter().map(|j| j.window_ms).collect::<Vec<_>>())
        .bind(jobs.iter().map(|_| FileId::new()).collect::<Vec<_>>())
        .bind(jobs.iter().map(|_| FileId::new()).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.private).collect::<Vec<_>>())
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|row| batch_from_row(row).map(|b| (b.id, b)))
        .collect()
}
