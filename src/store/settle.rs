//! Poison isolation for the daemon's batched writes: outcomes are written
//! hundreds per statement, and one row the database refuses must not hold
//! the others back.
//!
//! A [`Settlement`] writes its results and requeues with
//! [`QueueStore::finish`] and [`QueueStore::requeue`], one statement each
//! while all goes well (the common case costs nothing more). When a
//! statement is refused for its data ([`StoreError::Rejected`]), its rows
//! are split in halves and written again, down to the single row at fault,
//! which ends as a failed request with a `storage_refused` error line
//! instead. Any other error leaves the work as it was and is handed back,
//! for the caller to call again after a pause; the database being away
//! leaves it untouched, while the database answering errors that are not
//! rejections counts against the rows, so that a row that keeps failing
//! for a reason of its own is also split off and failed after a few tries
//! ([`FAILURES_BEFORE_SPLIT`]). A row whose failure cannot be written
//! either is given up and reported: nothing is retried forever.

use super::{BackendError, FinishReport, Finished, QueueStore, Requeue, Result, StoreError};
use crate::domain::batch::BatchId;
use crate::domain::output::{ResultError, codes};
use crate::domain::request::{RequestId, RequestState};

/// Failures of one group of rows, answered by the database with something
/// other than a rejection (a statement timeout, a lack of memory, an
/// internal error), before the group is split; and of one row, before it
/// is failed instead. A database that refuses every write (disk full,
/// read-only) fails the failure too, so its rows are kept, not failed.
pub const FAILURES_BEFORE_SPLIT: u32 = 5;

/// The longest database reason kept in an error line.
const MAX_REASON: usize = 500;

/// Which write refused a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    /// Recording a final result.
    Finish,
    /// Returning a request to pending.
    Requeue,
}

impl WriteKind {
    /// The name used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            WriteKind::Finish => "finish",
            WriteKind::Requeue => "requeue",
        }
    }
}

/// What became of a refused row's request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusedEnd {
    /// It was failed instead, with a `storage_refused` error line.
    FailedInstead,
    /// Its lease was gone by then (rescued, expired, cancelled): whoever
    /// holds it now decides.
    LeaseLost,
    /// Even its failure could not be written: it is given up (and stays
    /// claimed until its daemon stops).
    GivenUp,
}

/// A row the database refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The request.
    pub id: RequestId,
    /// The write that refused it.
    pub write: WriteKind,
    /// The database's reason.
    pub reason: String,
    /// What became of the request.
    pub end: RefusedEnd,
}

/// What a settlement wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settled {
    /// Requests ended while their lease held, with the state written
    /// (`Failed` for a refused row failed instead).
    pub finished: Vec<(RequestId, RequestState)>,
    /// Requests returned to pending while their lease held.
    pub requeued: Vec<RequestId>,
    /// Rows the database refused.
    pub refused: Vec<Refused>,
    /// Batches whose last results these were (see [`FinishReport`]).
    pub filled: Vec<BatchId>,
}

#[derive(Debug)]
enum Rows {
    Finish(Vec<Finished>),
    Requeue(Vec<Requeue>),
}

impl Rows {
    fn len(&self) -> usize {
        match self {
            Rows::Finish(f) => f.len(),
            Rows::Requeue(r) => r.len(),
        }
    }

    fn split(self) -> (Rows, Rows) {
        match self {
            Rows::Finish(mut f) => {
                let back = f.split_off(f.len() / 2);
                (Rows::Finish(f), Rows::Finish(back))
            }
            Rows::Requeue(mut r) => {
                let back = r.split_off(r.len() / 2);
                (Rows::Requeue(r), Rows::Requeue(back))
            }
        }
    }
}

/// A group of rows written by one statement.
#[derive(Debug)]
struct Chunk {
    rows: Rows,
    /// Failures answered by the database that were not rejections.
    failures: u32,
    /// Set on the failure written in place of a refused row: why, and
    /// which write refused it.
    replaces: Option<(WriteKind, String)>,
}

impl Chunk {
    fn new(rows: Rows) -> Self {
        Self {
            rows,
            failures: 0,
            replaces: None,
        }
    }

    fn finishes(&self) -> &[Finished] {
        match &self.rows {
            Rows::Finish(f) => f,
            Rows::Requeue(_) => &[],
        }
    }
}

/// A batched write of outcomes that no row can block (see the module docs).
#[derive(Debug)]
pub struct Settlement {
    /// Groups still to write; the last one goes next.
    todo: Vec<Chunk>,
    done: Settled,
}

impl Settlement {
    /// Results and requeues to write (results first).
    pub fn new(finishes: Vec<Finished>, requeues: Vec<Requeue>) -> Self {
        let mut todo = Vec::with_capacity(2);
        if !requeues.is_empty() {
            todo.push(Chunk::new(Rows::Requeue(requeues)));
        }
        if !finishes.is_empty() {
            todo.push(Chunk::new(Rows::Finish(finishes)));
        }
        Self {
            todo,
            done: Settled::default(),
        }
    }

    /// Whether every row was written, failed instead, or given up.
    pub fn is_done(&self) -> bool {
        self.todo.is_empty()
    }

    /// Rows not yet written.
    pub fn remaining(&self) -> usize {
        self.todo.iter().map(|c| c.rows.len()).sum()
    }

    /// What was written so far.
    pub fn settled(&self) -> &Settled {
        &self.done
    }

    /// What was written, once done (or so far, if given up).
    pub fn into_settled(self) -> Settled {
        self.done
    }

    /// Writes what is left. Refused rows are split off and failed instead
    /// as it goes; any other error stops it and is returned, with the rest
    /// of the work kept for the next call (after a pause: see the module
    /// docs for how long a failing row is retried).
    pub async fn resume<S: QueueStore + ?Sized>(&mut self, store: &S) -> Result<()> {
        while let Some(mut chunk) = self.todo.pop() {
            let written = match &chunk.rows {
                Rows::Finish(f) => store.finish_report(f).await.map(|r| self.filled(r)),
                Rows::Requeue(r) => store.requeue(r).await,
            };
            match written {
                Ok(ids) => self.landed(chunk, ids),
                Err(StoreError::Rejected(e)) => self.refused(chunk, &reason(&e)),
                Err(e) if e.is_unavailable() => {
                    self.todo.push(chunk);
                    return Err(e);
                }
                Err(e) => {
                    chunk.failures += 1;
                    if chunk.failures < FAILURES_BEFORE_SPLIT || chunk.replaces.is_some() {
                        self.todo.push(chunk);
                    } else if chunk.rows.len() > 1 {
                        self.push_halves(chunk.rows);
                    } else {
                        // One row keeps failing while the database answers:
                        // its failure is written instead, unless the
                        // database refuses that too (then it is the
                        // database, and the row is kept for the next try).
                        let why = match &e {
                            StoreError::Database(db) => reason(db),
                            other => clip(other.to_string()),
                        };
                        let failure = Chunk {
                            rows: Rows::Finish(failures_of(&chunk.rows, &why)),
                            failures: 0,
                            replaces: Some((kind(&chunk.rows), why)),
                        };
                        match store.finish_report(failure.finishes()).await {
                            Ok(report) => {
                                let ids = self.filled(report);
                                self.landed(failure, ids);
                                continue;
                            }
                            Err(StoreError::Rejected(refused)) => {
                                self.given_up(failure, &reason(&refused));
                                continue;
                            }
                            Err(_) => self.todo.push(chunk),
                        }
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Keeps the batches a finish filled; the requests it wrote.
    fn filled(&mut self, report: FinishReport) -> Vec<RequestId> {
        self.done.filled.extend(report.filled);
        report.accepted
    }

    fn landed(&mut self, chunk: Chunk, ids: Vec<RequestId>) {
        match (chunk.rows, chunk.replaces) {
            (Rows::Finish(rows), replaces) => {
                let states: std::collections::HashMap<RequestId, RequestState> =
                    rows.iter().map(|f| (f.id, f.state)).collect();
                if let Some((write, reason)) = replaces {
                    for f in &rows {
                        let end = if ids.contains(&f.id) {
                            RefusedEnd::FailedInstead
                        } else {
                            RefusedEnd::LeaseLost
                        };
                        self.done.refused.push(Refused {
                            id: f.id,
                            write,
                            reason: reason.clone(),
                            end,
                        });
                    }
                }
                self.done.finished.extend(
                    ids.into_iter()
                        .filter_map(|id| states.get(&id).map(|s| (id, *s))),
                );
            }
            (Rows::Requeue(_), _) => self.done.requeued.extend(ids),
        }
    }

    fn refused(&mut self, chunk: Chunk, why: &str) {
        if chunk.rows.len() > 1 {
            self.push_halves(chunk.rows);
            return;
        }
        match chunk.replaces {
            Some(_) => self.given_up(chunk, why),
            None => {
                let write = kind(&chunk.rows);
                self.todo.push(Chunk {
                    rows: Rows::Finish(failures_of(&chunk.rows, why)),
                    failures: 0,
                    replaces: Some((write, why.to_owned())),
                });
            }
        }
    }

    /// Even the failure written in place of a refused row was refused.
    fn given_up(&mut self, failure: Chunk, why: &str) {
        let Some((write, reason)) = &failure.replaces else {
            return;
        };
        for f in failure.finishes() {
            self.done.refused.push(Refused {
                id: f.id,
                write: *write,
                reason: format!("{reason}; failing it was refused too: {why}"),
                end: RefusedEnd::GivenUp,
            });
        }
    }

    fn push_halves(&mut self, rows: Rows) {
        let (front, back) = rows.split();
        self.todo.push(Chunk::new(back));
        self.todo.push(Chunk::new(front));
    }
}

fn kind(rows: &Rows) -> WriteKind {
    match rows {
        Rows::Finish(_) => WriteKind::Finish,
        Rows::Requeue(_) => WriteKind::Requeue,
    }
}

/// The failed results written in place of refused rows: nothing of what
/// was refused, only the request's lease and why.
fn failures_of(rows: &Rows, why: &str) -> Vec<Finished> {
    let failed = |id, attempt, message: String| Finished {
        id,
        attempt,
        state: RequestState::Failed,
        status_code: None,
        upstream_request_id: None,
        body: None,
        error: Some(ResultError::new(codes::STORAGE_REFUSED, message)),
        usage: None,
        coalesced: None,
    };
    match rows {
        Rows::Finish(f) => f
            .iter()
            .map(|f| {
                let what = match f.status_code {
                    Some(status) => format!(
                        "the database refused to store this request's result \
                         (the upstream answered HTTP {status})"
                    ),
                    None => "the database refused to store this request's result".to_owned(),
                };
                failed(f.id, f.attempt, format!("{what}: {why}"))
            })
            .collect(),
        Rows::Requeue(r) => r
            .iter()
            .map(|r| {
                let what = if r.is_retry {
                    "the database refused to queue this request for a retry"
                } else {
                    "the database refused to return this request to the queue"
                };
                failed(r.id, r.attempt, format!("{what}: {why}"))
            })
            .collect(),
    }
}

/// The database's reason for an error, fit for an error line: its message
/// and SQLSTATE, without NUL (which the line's `jsonb` could not hold),
/// and short.
/// The database's reason, as an error line shows it (its SQLSTATE
/// included, where it gave one).
fn reason(e: &BackendError) -> String {
    clip(e.message().to_owned())
}

fn clip(mut text: String) -> String {
    text.retain(|c| c != '\0');
    if text.len() > MAX_REASON {
        let mut end = MAX_REASON;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}
