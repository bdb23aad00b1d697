//! Pure types and rules: no SQL, no I/O. Everything else speaks in these terms.

#[macro_use]
mod text_enum;

pub mod batch;
pub mod daemon;
pub mod escalation;
pub mod file;
pub mod ids;
pub mod output;
pub mod prefix;
pub mod request;
pub mod retry;
pub mod schedule;
pub mod step;
pub mod usage;

/// A stored word that names no variant of the enum it was read as.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} word {word:?}")]
pub struct UnknownWord {
    /// The enum's name.
    pub kind: &'static str,
    /// The word that was read.
    pub word: String,
}

/// A state change that the transition table does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} cannot go from {from} to {to}")]
pub struct IllegalTransition {
    /// What kind of thing was changed (request, step, batch).
    pub kind: &'static str,
    /// The state it was in.
    pub from: &'static str,
    /// The state that was asked for.
    pub to: &'static str,
}
