//! A request's life: one template inside one batch, and the one table of the
//! state changes it may make.

pub use super::ids::RequestId;
use super::ids::{BatchId, DaemonId, TemplateId};
use super::{IllegalTransition, output::ResultError};
use chrono::{DateTime, Utc};

text_enum!(
    /// Where a request is in its life. The same words are enforced by a CHECK
    /// constraint on `requests.state`.
    RequestState {
        /// Waiting to be claimed (first time or after a retry/rescue).
        Pending => "pending",
        /// Claimed by a daemon, not yet sent upstream.
        Claimed => "claimed",
        /// Sent upstream; the daemon is waiting for the answer.
        Processing => "processing",
        /// Answered with a 2xx; terminal.
        Completed => "completed",
        /// Ended with an error (final upstream error, retries exhausted, expiry); terminal.
        Failed => "failed",
        /// Ended because its batch was cancelled; terminal.
        Canceled => "canceled",
    }
);

impl RequestState {
    /// Whether nothing can change this state any more.
    pub const fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Canceled)
    }

    /// Whether a daemon holds this request (it has a lease on it).
    pub const fn is_in_flight(self) -> bool {
        matches!(self, Self::Claimed | Self::Processing)
    }

    /// The transition table: the only place that says which changes are legal.
    /// SQL updates repeat the `from` side in their `WHERE state = ...` guard.
    pub const fn can_become(self, to: Self) -> bool {
        use RequestState::*;
        match (self, to) {
            (Pending, Claimed) => true,
            (Claimed, Processing) => true,
            // The daemon may skip writing `processing` (one write less per
            // request); the lease is held from the claim either way.
            (Claimed | Processing, Completed) => true,
            // Released by a stopping daemon, rescued from a dead one, or retried.
            (Claimed | Processing, Pending) => true,
            // Expired or cancelled before or while running, or a final error.
            (Pending | Claimed | Processing, Failed | Canceled) => true,
            _ => false,
        }
    }

    /// The one documented exception to "terminal states never change": a
    /// user may ask (`POST /v1/batches/{id}/retry`) for the failed requests
    /// of a finished batch to run again. Such a request goes back to
    /// `pending` with its retries reset and its result deleted, in one
    /// transaction guarded by `WHERE state = 'failed'`. Nothing else (the
    /// daemon, the finalizer, the rescuer) ever moves a terminal request;
    /// completed and cancelled requests are never retried.
    pub const fn can_be_retried_by_user(self) -> bool {
        matches!(self, Self::Failed)
    }

    /// `Ok` when `self -> to` is legal, else the typed error.
    pub fn check(self, to: Self) -> Result<(), IllegalTransition> {
        if self.can_become(to) {
            Ok(())
        } else {
            Err(IllegalTransition {
                kind: "request",
                from: self.as_str(),
                to: to.as_str(),
            })
        }
    }
}

/// A request as stored, with its final result once it has one.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestRecord {
    /// The request's id.
    pub id: RequestId,
    /// The batch it belongs to (absent for requests made outside a batch).
    pub batch_id: Option<BatchId>,
    /// The parsed input line it runs.
    pub template_id: TemplateId,
    /// The model it is routed by.
    pub model: String,
    /// The caller's id for the line.
    pub custom_id: Option<String>,
    /// Where it is in its life.
    pub state: RequestState,
    /// How many times it has been claimed; guards every state write.
    pub attempt: i32,
    /// Earliest time it may be claimed again (retry backoff).
    pub not_before: DateTime<Utc>,
    /// The daemon holding it, while claimed or processing.
    pub daemon_id: Option<DaemonId>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it was last claimed.
    pub claimed_at: Option<DateTime<Utc>>,
    /// When it was last sent upstream.
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached a terminal state.
    pub finished_at: Option<DateTime<Utc>>,
    /// The upstream's HTTP status, when there was an answer.
    pub status_code: Option<i32>,
    /// Why it did not complete, for failed and canceled requests.
    pub error: Option<ResultError>,
    /// The model its last attempt was sent as, when its model has an
    /// escalation rule (see `domain::escalation`); `None`: sent as `model`,
    /// or not sent yet.
    pub routed_model: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip() {
        for s in RequestState::ALL {
            assert_eq!(s.as_str().parse::<RequestState>().unwrap(), *s);
        }
        assert!("done".parse::<RequestState>().is_err());
    }

    #[test]
    fn transition_table_is_exactly_this() {
        use RequestState::*;
        let allowed = [
            (Pending, Claimed),
            (Pending, Failed),
            (Pending, Canceled),
            (Claimed, Processing),
            (Claimed, Completed),
            (Claimed, Pending),
            (Claimed, Failed),
            (Claimed, Canceled),
            (Processing, Completed),
            (Processing, Pending),
            (Processing, Failed),
            (Processing, Canceled),
        ];
        for from in RequestState::ALL {
            for to in RequestState::ALL {
                let expected = allowed.contains(&(*from, *to));
                assert_eq!(from.can_become(*to), expected, "{from} -> {to}");
                assert_eq!(from.check(*to).is_ok(), expected);
            }
        }
    }

    #[test]
    fn only_failed_requests_can_be_retried_by_users() {
        for s in RequestState::ALL {
            assert_eq!(
                s.can_be_retried_by_user(),
                *s == RequestState::Failed,
                "{s}"
            );
        }
    }

    #[test]
    fn terminal_states_never_change() {
        for from in RequestState::ALL.iter().filter(|s| s.is_terminal()) {
            for to in RequestState::ALL {
                assert!(!from.can_become(*to), "{from} -> {to}");
            }
        }
    }
}
