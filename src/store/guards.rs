//! SQL guards derived from the domain's transition tables: the state words
//! in a statement's `WHERE` come from `domain`, so the table there stays
//! the one truth. They are spliced in as literals, not bound, so that the
//! planner can match them against partial indexes (`batches_live`).

use crate::domain::batch::BatchStatus;
use crate::domain::request::RequestState;

/// Words as the items of an SQL `IN (...)` list. Only the domain's own
/// constant words ever reach here, never input.
pub(super) fn in_list<'a>(words: impl IntoIterator<Item = &'a str>) -> String {
    let quoted: Vec<String> = words
        .into_iter()
        .map(|w| {
            debug_assert!(w.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
            format!("'{w}'")
        })
        .collect();
    quoted.join(", ")
}

/// The statuses a batch may become `to` from.
pub(super) fn batch_from(to: BatchStatus) -> String {
    in_list(BatchStatus::sources_of(to))
}

/// A status word as an SQL literal.
pub(super) fn batch_word(s: BatchStatus) -> String {
    in_list([s.as_str()])
}

/// The request states a daemon holds a lease on.
pub(super) fn in_flight() -> String {
    in_list(
        RequestState::ALL
            .iter()
            .filter(|s| s.is_in_flight())
            .map(|s| s.as_str()),
    )
}

/// A request state word as an SQL literal.
pub(super) fn request_word(s: RequestState) -> String {
    in_list([s.as_str()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_are_the_tables_words() {
        assert_eq!(
            batch_from(BatchStatus::Expired),
            "'validating', 'in_progress', 'finalizing'"
        );
        assert_eq!(batch_word(BatchStatus::Cancelled), "'cancelled'");
        assert_eq!(in_flight(), "'claimed', 'processing'");
        assert_eq!(request_word(RequestState::Pending), "'pending'");
    }
}
