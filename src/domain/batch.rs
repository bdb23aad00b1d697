//! Batches: their OpenAI status words, completion windows, metadata rules and
//! request counts.

use super::IllegalTransition;
pub use super::ids::BatchId;
use super::ids::FileId;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

text_enum!(
    /// A batch's status, in OpenAI's words. The same words are enforced by a
    /// CHECK constraint on `batches.status`.
    ///
    /// `validating` and `finalizing` are OpenAI's words that this engine
    /// never writes: an input is validated as it is uploaded, so a batch is
    /// created `in_progress` (or `failed`, see [`BatchStatus::initial`]);
    /// and its output and error files are views of its results, with
    /// nothing to settle, so it goes from `in_progress` to `completed`
    /// directly. They stay in the table so that rows written by another
    /// implementation are still moved on.
    BatchStatus {
        /// The input is being checked.
        Validating => "validating",
        /// The input did not validate; nothing was run. Terminal.
        Failed => "failed",
        /// Requests are being run.
        InProgress => "in_progress",
        /// Every request has ended; output files are being settled.
        Finalizing => "finalizing",
        /// Done (even if every request failed). Terminal.
        Completed => "completed",
        /// The completion window ran out; finished results are kept. Terminal.
        Expired => "expired",
        /// Cancel was asked for; in-flight calls are being stopped.
        Cancelling => "cancelling",
        /// Cancelled; finished results are kept. Terminal.
        Cancelled => "cancelled",
    }
);

impl BatchStatus {
    /// Whether nothing can change this status any more.
    pub const fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Failed | Self::Completed | Self::Expired | Self::Cancelled
        )
    }

    /// The transition table for batches: the only place that says which
    /// changes are legal. The stores derive their SQL guards from it
    /// ([`BatchStatus::sources_of`]); what each change means:
    ///
    /// - `-> expired`: the finalizer, once the deadline passed (unfinished
    ///   requests end as failed);
    /// - `-> completed`: the finalizer, once every request has ended;
    /// - `-> cancelling`: a user's cancel; `-> cancelled`: the cancel itself
    ///   or the finalizer, once nothing is in flight.
    pub const fn can_become(self, to: Self) -> bool {
        use BatchStatus::*;
        matches!(
            (self, to),
            (Validating, InProgress | Failed | Cancelling | Expired)
                | (InProgress, Finalizing | Completed | Cancelling | Expired)
                | (Finalizing, Completed | Expired)
                | (Cancelling, Cancelled)
        )
    }

    /// The status a batch is created in: validation happened at upload, so
    /// it runs at once, unless its input was refused.
    pub const fn initial(valid: bool) -> Self {
        if valid {
            Self::InProgress
        } else {
            Self::Failed
        }
    }

    /// `Ok` when `self -> to` is legal, else the typed error.
    pub fn check(self, to: Self) -> Result<(), IllegalTransition> {
        if self.can_become(to) {
            Ok(())
        } else {
            Err(IllegalTransition {
                kind: "batch",
                from: self.as_str(),
                to: to.as_str(),
            })
        }
    }

    /// Whether a user's retry of failed requests (`POST
    /// /v1/batches/{id}/retry`) may reopen a batch in this status: the one
    /// documented exception to "terminal statuses never change". A
    /// `completed` or `expired` batch with failed requests goes back to
    /// `in_progress` with a new deadline (now + its completion window), and
    /// the finalizer settles it again. Batches still running are refused (the
    /// finalizer may be settling them at that moment), and so are `failed`
    /// (nothing ran), `cancelling` and `cancelled` ones (the user stopped
    /// them).
    pub const fn reopens_on_user_retry(self) -> bool {
        matches!(self, Self::Completed | Self::Expired)
    }

    /// The statuses a user's retry may reopen, for SQL guards.
    pub fn reopenable() -> Vec<&'static str> {
        Self::ALL
            .iter()
            .filter(|s| s.reopens_on_user_retry())
            .map(|s| s.as_str())
            .collect()
    }

    /// The statuses from which `to` may be reached, for SQL guards.
    pub fn sources_of(to: Self) -> Vec<&'static str> {
        Self::ALL
            .iter()
            .filter(|from| from.can_become(to))
            .map(|s| s.as_str())
            .collect()
    }
}

/// The longest completion window accepted (a year), so deadlines stay sane.
pub const MAX_COMPLETION_WINDOW: Duration = Duration::days(366);

/// A completion window such as `24h` or `90m`, as a duration, with the
/// service tier it stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompletionWindow {
    duration: Duration,
    tier: ServiceTier,
}

/// The service tier of a batch, derived from its completion window and
/// shown as `service_tier` (OpenAI's values) on the batch object:
/// `0s` (or `priority`) is the priority tier, a window of an hour or less
/// (`flex` is `1h`) the flex tier, a longer one the default tier.
///
/// The tier changes nothing by itself: scheduling goes by the window's
/// deadline (earliest first, and urgency when a batch cannot drain in time
/// at its fair share), and the priority tier's window is the shortest the
/// queue holds, [`PRIORITY_WINDOW`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceTier {
    /// `0s` or `priority`: due as soon as it can be.
    Priority,
    /// An hour or less.
    Flex,
    /// Longer windows, such as `24h`.
    Default,
}

impl ServiceTier {
    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Priority => "priority",
            Self::Flex => "flex",
            Self::Default => "default",
        }
    }
}

/// The names of the priority tier's window.
pub const PRIORITY_WINDOWS: [&str; 2] = ["0s", "priority"];

/// The window a priority batch is given: the shortest the queue holds (a
/// request past its deadline is never claimed, so `0s` cannot be taken
/// literally). Its deadline is then earlier than any other batch's made
/// since, and deadline urgency gives it the slots it needs.
pub const PRIORITY_WINDOW: Duration = Duration::minutes(1);

/// The longest window of the flex tier.
pub const FLEX_WINDOW: Duration = Duration::hours(1);

/// Why a completion window was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "completion_window must look like `24h` or `90m` (a positive whole number of hours or minutes, at most a year), or be `0s`, `priority` or `flex`, not {0:?}"
)]
pub struct BadCompletionWindow(pub String);

impl CompletionWindow {
    /// Parses `Nh`, `Nm`, `0s`, `priority` or `flex`.
    pub fn parse(text: &str) -> Result<Self, BadCompletionWindow> {
        if PRIORITY_WINDOWS.contains(&text) {
            return Ok(Self {
                duration: PRIORITY_WINDOW,
                tier: ServiceTier::Priority,
            });
        }
        if text == "flex" {
            return Ok(Self::of(FLEX_WINDOW));
        }
        let bad = || BadCompletionWindow(text.to_owned());
        // The unit is the last character, which need not be one byte.
        let (digits, unit) = match text.char_indices().next_back() {
            Some((at, unit)) => (&text[..at], unit),
            None => return Err(bad()),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let n: i64 = digits.parse().map_err(|_| bad())?;
        let duration = match unit {
            'h' => Duration::try_hours(n),
            'm' => Duration::try_minutes(n),
            _ => None,
        }
        .ok_or_else(bad)?;
        if n == 0 || duration > MAX_COMPLETION_WINDOW {
            return Err(bad());
        }
        Ok(Self::of(duration))
    }

    fn of(duration: Duration) -> Self {
        let tier = if duration <= FLEX_WINDOW {
            ServiceTier::Flex
        } else {
            ServiceTier::Default
        };
        Self { duration, tier }
    }

    /// The window's length.
    pub fn duration(self) -> Duration {
        self.duration
    }

    /// The service tier it stands for.
    pub fn tier(self) -> ServiceTier {
        self.tier
    }
}

/// The most metadata pairs a batch may carry (as OpenAI).
pub const MAX_METADATA_PAIRS: usize = 16;
/// The longest metadata key.
pub const MAX_METADATA_KEY: usize = 64;
/// The longest metadata value.
pub const MAX_METADATA_VALUE: usize = 512;

/// Why metadata was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadMetadata(pub String);

/// Checks metadata against OpenAI's limits (16 pairs, keys ≤ 64, values ≤ 512 characters).
pub fn check_metadata(metadata: &BTreeMap<String, String>) -> Result<(), BadMetadata> {
    if metadata.len() > MAX_METADATA_PAIRS {
        return Err(BadMetadata(format!(
            "metadata has {} pairs; at most {MAX_METADATA_PAIRS} are allowed",
            metadata.len()
        )));
    }
    for (k, v) in metadata {
        // Text columns refuse NUL; refused here as a bad parameter.
        if k.contains('\0') || v.contains('\0') {
            return Err(BadMetadata(format!(
                "metadata {} {k:?} contains a NUL character (\\u0000)",
                if k.contains('\0') { "key" } else { "value of" }
            )));
        }
        if k.chars().count() > MAX_METADATA_KEY {
            return Err(BadMetadata(format!(
                "metadata key {k:?} is longer than {MAX_METADATA_KEY} characters"
            )));
        }
        if v.chars().count() > MAX_METADATA_VALUE {
            return Err(BadMetadata(format!(
                "metadata value of {k:?} is longer than {MAX_METADATA_VALUE} characters"
            )));
        }
    }
    Ok(())
}

/// One reason a batch failed validation: `errors.data[]` in OpenAI's batch object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchError {
    /// A short machine-readable code.
    pub code: String,
    /// A sentence for people.
    pub message: String,
    /// The parameter at fault, if any.
    #[serde(default)]
    pub param: Option<String>,
    /// The 1-based line of the input file, if any.
    #[serde(default)]
    pub line: Option<i64>,
}

/// How many of a batch's requests are in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestCounts {
    /// All requests of the batch.
    pub total: i64,
    /// Waiting to be claimed.
    pub pending: i64,
    /// Claimed or being processed.
    pub in_progress: i64,
    /// Ended with a 2xx.
    pub completed: i64,
    /// Ended with an error.
    pub failed: i64,
    /// Ended because the batch was cancelled.
    pub canceled: i64,
}

impl RequestCounts {
    /// Requests that have reached a terminal state.
    pub fn finished(&self) -> i64 {
        self.completed + self.failed + self.canceled
    }
}

/// A batch's counters, kept by the statements that end (or reopen) its
/// requests, so reading them costs the same at any batch size and however
/// many dead rows the queue holds. Which unfinished requests are waiting and
/// which are in flight is not kept here (it would cost a write per claim):
/// [`RequestCounts`] from the store's `request_counts` says so, at the cost of
/// reading the batch's requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchCounts {
    /// All requests of the batch.
    pub total: i64,
    /// Ended with a 2xx.
    pub completed: i64,
    /// Ended with an error.
    pub failed: i64,
    /// Ended because the batch was cancelled.
    pub canceled: i64,
}

impl BatchCounts {
    /// Requests that have reached a terminal state.
    pub fn finished(&self) -> i64 {
        self.completed + self.failed + self.canceled
    }

    /// Requests not ended yet: waiting, claimed or in flight.
    pub fn unfinished(&self) -> i64 {
        (self.total - self.finished()).max(0)
    }
}

impl From<RequestCounts> for BatchCounts {
    fn from(c: RequestCounts) -> Self {
        Self {
            total: c.total,
            completed: c.completed,
            failed: c.failed,
            canceled: c.canceled,
        }
    }
}

/// A batch as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// The batch's id.
    pub id: BatchId,
    /// Who owns it ("" when auth is off).
    pub owner: String,
    /// The input file it runs.
    pub input_file_id: FileId,
    /// The endpoint every line must target, e.g. `/v1/chat/completions`.
    pub endpoint: String,
    /// The completion window as given, e.g. `24h`.
    pub completion_window: String,
    /// The caller's key/value pairs.
    pub metadata: Option<BTreeMap<String, String>>,
    /// Where the batch is in its life.
    pub status: BatchStatus,
    /// Validation errors, when the batch failed.
    pub errors: Option<Vec<BatchError>>,
    /// The virtual output file (successes).
    pub output_file_id: Option<FileId>,
    /// The virtual error file (failures).
    pub error_file_id: Option<FileId>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it started running.
    pub in_progress_at: Option<DateTime<Utc>>,
    /// Its deadline: created_at + completion window.
    pub expires_at: Option<DateTime<Utc>>,
    /// When every request had ended.
    pub finalizing_at: Option<DateTime<Utc>>,
    /// When it completed.
    pub completed_at: Option<DateTime<Utc>>,
    /// When it failed validation.
    pub failed_at: Option<DateTime<Utc>>,
    /// When it expired.
    pub expired_at: Option<DateTime<Utc>>,
    /// When cancel was asked for.
    pub cancelling_at: Option<DateTime<Utc>>,
    /// When it was cancelled.
    pub cancelled_at: Option<DateTime<Utc>>,
    /// Its requests' counters.
    pub request_counts: BatchCounts,
    /// Tokens used by its successful requests so far.
    pub usage: super::usage::Usage,
    /// Its completed lines answered without a call of their own.
    pub coalesced: CoalescedCounts,
}

/// How a line was answered without a call of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Coalesced {
    /// It took the answer of an identical line's call.
    Identical,
    /// It went out with other lines in one packed embeddings call.
    Packed,
}

/// A batch's completed lines answered without a call of their own, kept by
/// the statements that record results (a line that failed is not counted,
/// so retrying failed lines never counts one twice).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoalescedCounts {
    /// Lines that took an identical line's answer.
    pub identical: i64,
    /// Lines answered by a packed embeddings call (all of its lines).
    pub packed: i64,
}

impl CoalescedCounts {
    /// Both kinds together.
    pub fn total(&self) -> i64 {
        self.identical + self.packed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip() {
        for s in BatchStatus::ALL {
            assert_eq!(s.as_str().parse::<BatchStatus>().unwrap(), *s);
        }
    }

    #[test]
    fn terminal_statuses_never_change() {
        for from in BatchStatus::ALL.iter().filter(|s| s.is_terminal()) {
            for to in BatchStatus::ALL {
                assert!(from.check(*to).is_err(), "{from} -> {to}");
            }
        }
        assert_eq!(
            BatchStatus::sources_of(BatchStatus::Cancelling),
            vec!["validating", "in_progress"]
        );
    }

    #[test]
    fn the_table_allows_every_change_the_finalizer_makes() {
        // A running batch completes or expires without passing through
        // `finalizing`, which is never written; nor is `validating`, but a
        // batch found in it may still expire.
        assert_eq!(
            BatchStatus::sources_of(BatchStatus::Completed),
            vec!["in_progress", "finalizing"]
        );
        assert_eq!(
            BatchStatus::sources_of(BatchStatus::Expired),
            vec!["validating", "in_progress", "finalizing"]
        );
        assert_eq!(
            BatchStatus::sources_of(BatchStatus::Cancelled),
            vec!["cancelling"]
        );
        // A cancelling batch is not expired: its cancel finishes it.
        assert!(BatchStatus::Cancelling.check(BatchStatus::Expired).is_err());
        assert_eq!(BatchStatus::initial(true), BatchStatus::InProgress);
        assert_eq!(BatchStatus::initial(false), BatchStatus::Failed);
    }

    #[test]
    fn only_completed_and_expired_batches_reopen_on_user_retry() {
        assert_eq!(BatchStatus::reopenable(), vec!["completed", "expired"]);
        // The exception is separate from the transition table, which still
        // lets no terminal status change.
        assert!(
            BatchStatus::Completed
                .check(BatchStatus::InProgress)
                .is_err()
        );
    }

    #[test]
    fn windows_give_their_service_tiers() {
        for (window, tier, length) in [
            ("0s", ServiceTier::Priority, Duration::minutes(1)),
            ("priority", ServiceTier::Priority, Duration::minutes(1)),
            ("1m", ServiceTier::Flex, Duration::minutes(1)),
            ("flex", ServiceTier::Flex, Duration::hours(1)),
            ("10m", ServiceTier::Flex, Duration::minutes(10)),
            ("60m", ServiceTier::Flex, Duration::hours(1)),
            ("61m", ServiceTier::Default, Duration::minutes(61)),
            ("24h", ServiceTier::Default, Duration::hours(24)),
        ] {
            let w = CompletionWindow::parse(window).unwrap();
            assert_eq!((w.tier(), w.duration()), (tier, length), "{window}");
        }
        for bad in ["1s", "0m", "Priority", "flex ", "default", "auto"] {
            assert!(CompletionWindow::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn completion_windows() {
        assert_eq!(
            CompletionWindow::parse("24h").unwrap().duration(),
            Duration::hours(24)
        );
        assert_eq!(
            CompletionWindow::parse("90m").unwrap().duration(),
            Duration::minutes(90)
        );
        for bad in [
            "",
            "h",
            "0h",
            "24",
            "24d",
            "-1h",
            "1.5h",
            "h24",
            "99999999h",
            "24H",
        ] {
            assert!(CompletionWindow::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_window_ending_in_a_multibyte_character_is_refused() {
        // Found by tests/prop_api.rs: cutting off the unit by bytes panicked
        // inside the character, and the API call never answered.
        for bad in ["1é", "é", "24✓", "😀"] {
            assert!(CompletionWindow::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn metadata_limits() {
        let mut m: BTreeMap<String, String> =
            (0..16).map(|i| (format!("k{i}"), "v".into())).collect();
        assert!(check_metadata(&m).is_ok());
        m.insert("one-too-many".into(), "v".into());
        assert!(check_metadata(&m).is_err());
        let long_key = BTreeMap::from([("k".repeat(65), String::new())]);
        assert!(check_metadata(&long_key).is_err());
        let long_value = BTreeMap::from([("k".into(), "v".repeat(513))]);
        assert!(check_metadata(&long_value).is_err());
        let nul_key = BTreeMap::from([("a\0b".into(), "v".into())]);
        assert!(check_metadata(&nul_key).unwrap_err().0.contains("NUL"));
        let nul_value = BTreeMap::from([("k".into(), "v\0".into())]);
        assert!(check_metadata(&nul_value).unwrap_err().0.contains("NUL"));
    }
}
