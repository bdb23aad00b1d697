//! Wake-ups for idle daemons: PostgreSQL's LISTEN/NOTIFY on one channel.
//! Writers that make work claimable (a new batch, a rescue, a release)
//! notify in the same transaction, so the signal comes only once the work is
//! visible.

use super::{PostgresStore, Result};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use std::future::Future;

/// The channel name.
pub const WORK_CHANNEL: &str = "fusillade_work";

/// A stream that yields whenever new work may be claimable.
pub type WorkSignals = BoxStream<'static, ()>;

/// Subscribing to new-work signals.
pub trait WorkNotifier: Send + Sync {
    /// A stream of signals. After a lost connection it reconnects; signals
    /// sent meanwhile are lost, which the daemon's polling covers.
    fn listen_for_work(&self) -> impl Future<Output = Result<WorkSignals>> + Send;
}

impl WorkNotifier for PostgresStore {
    async fn listen_for_work(&self) -> Result<WorkSignals> {
        let mut listener = sqlx::postgres::PgListener::connect_with(&self.pools.primary).await?;
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

/// The statement that signals new work; run it inside the writing transaction.
pub(crate) const NOTIFY_WORK: &str = "SELECT pg_notify('fusillade_work', '')";
