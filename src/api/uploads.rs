//! What keeps uploads from starving the server: a bound on how many are
//! received at once, and a cut-off for clients that stop sending.
//!
//! - At most `[api] max_concurrent_uploads` uploads run at once. One more
//!   answers 429 at once, in OpenAI's envelope with `Retry-After`, rather
//!   than waiting in a queue: a queued upload would hold its client's
//!   connection while sending nothing, and the SDKs retry a 429 on their own,
//!   after the delay the header gives.
//! - An upload whose client sends nothing for `[api] upload_idle_timeout_secs`
//!   is cut off with a 408 (see [`cut_off_when_idle`]); its spool goes with
//!   it. The clock restarts with every piece of the body that arrives, and
//!   runs only while the server waits for the client, not while it writes.
//!
//! Neither holds a database connection: uploads are spooled to disk first
//! (see [`spool`](super::spool)), and the store takes its turns at its own
//! ingest pool afterwards.

use super::error::{ApiError, ApiResult};
use axum::body::Body;
use futures_util::StreamExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Seconds a client refused for too many uploads is told to wait.
pub const RETRY_AFTER_SECS: u64 = 2;

/// The bound on uploads running at once.
#[derive(Debug)]
pub struct UploadGate {
    permits: Arc<Semaphore>,
    limit: u32,
}

impl UploadGate {
    /// A gate letting `limit` uploads in at once.
    pub fn new(limit: u32) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limit as usize)),
            limit,
        }
    }

    /// How many uploads hold a place now.
    pub fn in_use(&self) -> u32 {
        self.limit
            .saturating_sub(self.permits.available_permits() as u32)
    }

    /// A place for one upload, held until the permit is dropped; 429 when
    /// every place is taken.
    pub fn enter(&self) -> ApiResult<OwnedSemaphorePermit> {
        self.permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::too_many_uploads(self.limit, RETRY_AFTER_SECS))
    }
}

/// Whether a body wrapped by [`cut_off_when_idle`] was cut off.
#[derive(Debug, Clone, Default)]
pub struct Stalled(Arc<AtomicBool>);

impl Stalled {
    /// True once the body was cut off for sending nothing.
    pub fn happened(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// The error a cut-off body ends with.
#[derive(Debug, thiserror::Error)]
#[error("the client sent nothing for {0:?}")]
struct IdleError(Duration);

/// `body`, failing when nothing arrives for `idle`; the flag tells a
/// cut-off apart from a malformed body once the multipart parser reports
/// the failure (it reports both the same way).
pub fn cut_off_when_idle(body: Body, idle: Duration) -> (Body, Stalled) {
    let stalled = Stalled::default();
    let flag = stalled.clone();
    let frames = futures_util::stream::unfold(Some(body.into_data_stream()), move |frames| {
        let flag = flag.clone();
        async move {
            let mut frames = frames?;
            match tokio::time::timeout(idle, frames.next()).await {
                Ok(Some(frame)) => Some((frame, Some(frames))),
                Ok(None) => None,
                Err(_) => {
                    flag.0.store(true, Ordering::Release);
                    // The body ends here: nothing more is read from it.
                    Some((Err(axum::Error::new(IdleError(idle))), None))
                }
            }
        }
    });
    (Body::from_stream(EndApart::new(frames.boxed())), stalled)
}

/// A body that ends only on the poll after its last bytes, never on the
/// same one.
///
/// Why: multer (the multipart parser under axum's `Multipart`), looking for
/// the first boundary, polls the body twice; when the second poll drains the
/// last bytes and the end together, it answers "incomplete multipart
/// stream" without looking at those bytes, so a good upload got a 400
/// whenever its last bytes arrived between the two polls (a fix is open
/// upstream). Holding the end back for one poll keeps the two apart.
struct EndApart<S> {
    inner: S,
    ended: bool,
}

impl<S> EndApart<S> {
    fn new(inner: S) -> Self {
        Self {
            inner,
            ended: false,
        }
    }
}

impl<S: futures_util::Stream + Unpin> futures_util::Stream for EndApart<S> {
    type Item = S::Item;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<S::Item>> {
        use std::task::Poll;
        if self.ended {
            return Poll::Ready(None);
        }
        match self.inner.poll_next_unpin(cx) {
            Poll::Ready(None) => {
                self.ended = true;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_refuses_once_full_and_reopens_when_a_place_is_freed() {
        let gate = UploadGate::new(2);
        let a = gate.enter().unwrap();
        let _b = gate.enter().unwrap();
        assert_eq!(gate.in_use(), 2);
        let refused = gate.enter().unwrap_err();
        assert_eq!(refused.status().as_u16(), 429);
        drop(a);
        assert!(gate.enter().is_ok());
    }

    #[tokio::test]
    async fn a_body_that_stops_sending_is_cut_off() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(1);
        let body = Body::from_stream(tokio_stream_from(rx));
        let (body, stalled) = cut_off_when_idle(body, Duration::from_millis(50));
        tx.send(Ok(bytes::Bytes::from_static(b"abc")))
            .await
            .unwrap();
        let mut frames = body.into_data_stream();
        assert_eq!(&frames.next().await.unwrap().unwrap()[..], b"abc");
        assert!(!stalled.happened());
        // Nothing more is sent, yet the sender stays open.
        assert!(frames.next().await.unwrap().is_err());
        assert!(stalled.happened());
        assert!(frames.next().await.is_none());
        drop(tx);
    }

    fn tokio_stream_from<T: Send + 'static>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> + Send {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
