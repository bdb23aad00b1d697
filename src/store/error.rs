//! The store's errors, in words every backend can say: the rest of the crate
//! matches these variants, never a driver's error or a constraint's name.

use crate::domain::IllegalTransition;

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database is out of reach (stopped, restarting, cut off, or every
    /// connection taken) rather than refusing this statement: nothing can be
    /// written until it is back, and the same call may succeed later.
    #[error("database error (unavailable): {0}")]
    Unavailable(#[source] BackendError),
    /// A write would have made a second row where one must be unique.
    #[error("a {key} with this value exists already: {source}")]
    Duplicate {
        /// Which rule of uniqueness the write broke.
        key: UniqueKey,
        /// The backend's own report.
        #[source]
        source: BackendError,
    },
    /// The database failed or refused a statement for any other reason.
    #[error("database error: {0}")]
    Database(#[source] BackendError),
    /// No such object (or not visible to this owner).
    #[error("no {what} with id {id}")]
    NotFound {
        /// What was looked for.
        what: &'static str,
        /// The id asked for.
        id: String,
    },
    /// The object is in a state that does not allow the change.
    #[error(transparent)]
    Conflict(#[from] IllegalTransition),
    /// The input was refused; the message says why.
    #[error("{0}")]
    Invalid(String),
    /// An upload exceeded the size limit.
    #[error("file is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// Reading an upload failed.
    #[error("reading the upload failed: {0}")]
    Io(#[from] std::io::Error),
    /// The database refused the rows' data itself (a data exception, a
    /// broken constraint, a value over a limit): sent again as they are,
    /// the same rows are refused again. Only the daemon's batched writes
    /// report this; their callers split the rows to find the one at fault.
    #[error("the database refused the data: {0}")]
    Rejected(#[source] BackendError),
}

impl StoreError {
    /// Whether the database is out of reach rather than refusing this
    /// statement (see [`StoreError::Unavailable`]).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }

    /// An [`StoreError::Unavailable`] made by the caller, for a database
    /// already found away (a shared read's outcome, a timed-out ping).
    pub fn unavailable(message: impl Into<String>) -> Self {
        StoreError::Unavailable(BackendError::new(message))
    }
}

/// The rules of uniqueness a caller may need to tell apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UniqueKey {
    /// A batch id (a concurrent twin made in the same millisecond).
    BatchId,
    /// A request id (derived from its batch's id, so the same race).
    RequestId,
    /// An owner's idempotency key of a batch create.
    IdempotencyKey,
}

impl std::fmt::Display for UniqueKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            UniqueKey::BatchId => "batch id",
            UniqueKey::RequestId => "request id",
            UniqueKey::IdempotencyKey => "batch idempotency key",
        })
    }
}

/// A failure as the backend reported it: its message (with the database's
/// own code, where it gave one) and the driver's error as the source, for
/// logs. Deliberately opaque: what callers decide on is the variant of
/// [`StoreError`] it travels in.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct BackendError {
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl BackendError {
    /// A failure with only a message.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            source: None,
        }
    }

    /// A failure with a message and the error that caused it.
    pub fn with_source(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }

    /// The message, without the variant's prefix.
    pub fn message(&self) -> &str {
        &self.message
    }
}
