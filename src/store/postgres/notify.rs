//! Wake-ups for idle daemons: PostgreSQL's LISTEN/NOTIFY on one channel.
//! Writers that make work claimable notify once the work is visible: the
//! hot path's rescues and releases in the statement that makes it so, and
//! batch creation through a [`WorkBell`] after its commit.
//!
//! Why batch creation does not notify in its own transaction: a transaction
//! that has notified takes a database-wide lock at commit, held until the
//! commit is flushed, so every create queued its commit behind every other
//! (measured: a fifth of a small batch's database time). The bell sends one
//! notification for all the batches one process creates within a few
//! milliseconds, outside their transactions.

use super::PostgresStore;
use crate::store::{Result, WorkNotifier, WorkSignals};
use futures_util::StreamExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The channel name.
pub const WORK_CHANNEL: &str = "fusillade_work";

impl WorkNotifier for PostgresStore {
    async fn listen_for_work(&self) -> Result<WorkSignals> {
        // A daemon's role: never waits behind the API's connections.
        let mut listener = sqlx::postgres::PgListener::connect_with(&self.background).await?;
        listener.listen(WORK_CHANNEL).await?;
        let stream = futures_util::stream::unfold(listener, |mut l| async move {
            loop {
                match l.recv().await {
                    Ok(_) => return Some(((), l)),
                    Err(e) => {
                        tracing::debug!(error = %e, "work listener lost its connection");
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    }
                }
            }
        });
        Ok(stream.boxed())
    }
}

/// The statement that signals new work.
pub(crate) const NOTIFY_WORK: &str = "SELECT pg_notify('fusillade_work', '')";

/// How long a bell waits for more work to announce before it notifies.
const COALESCE: Duration = Duration::from_millis(2);

/// One process's announcer of new work: [`WorkBell::ring`] after a commit
/// makes work claimable; within [`COALESCE`] of the first ring, one
/// notification goes out for all of them.
#[derive(Debug, Default)]
pub(crate) struct WorkBell {
    /// Set while a notification is due; the ring that sets it sends it.
    due: AtomicBool,
}

impl WorkBell {
    /// Announces work committed before this call. Rings while a
    /// notification is due join it: it is sent after they were made.
    pub(crate) fn ring(self: &Arc<Self>, pool: &sqlx::PgPool) {
        if self.due.swap(true, Ordering::AcqRel) {
            return;
        }
        let bell = Arc::clone(self);
        let pool = pool.clone();
        tokio::spawn(async move {
            tokio::time::sleep(COALESCE).await;
            // Cleared before sending: a ring from now on sends its own.
            bell.due.store(false, Ordering::Release);
            if let Err(e) = sqlx::query(NOTIFY_WORK).execute(&pool).await {
                // Idle daemons also poll; a lost signal only delays them.
                tracing::debug!(error = %e, "could not announce new work");
            }
        });
    }
}
