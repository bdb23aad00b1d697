//! PostgreSQL's errors sorted into the store's: the one place that reads
//! SQLSTATE codes and constraint names.

use crate::store::{BackendError, StoreError, UniqueKey};

/// The driver's error as an opaque [`BackendError`], its message carrying
/// the SQLSTATE where the server gave one (error lines and logs show it).
fn backend(e: sqlx::Error) -> BackendError {
    let message = match &e {
        sqlx::Error::Database(db) => match db.code() {
            Some(code) => format!("{} (SQLSTATE {code})", db.message()),
            None => db.message().to_owned(),
        },
        other => other.to_string(),
    };
    BackendError::with_source(message, e)
}

/// Whether the server cannot be reached or cannot take the statement now,
/// as opposed to answering it with an error.
fn unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        // Class 08 is a connection failure; 57P01-57P05 a server that is
        // shutting down, crashed, starting, or ended the session; 53300
        // no free connection slot.
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P") || c == "53300"),
        _ => false,
    }
}

/// Which of the store's unique keys a unique violation broke, by the
/// constraint's name in `migrations/`.
fn duplicate(e: &sqlx::Error) -> Option<UniqueKey> {
    let sqlx::Error::Database(db) = e else {
        return None;
    };
    if db.code().as_deref() != Some("23505") {
        return None;
    }
    match db.constraint()? {
        "batches_pkey" => Some(UniqueKey::BatchId),
        "requests_pkey" => Some(UniqueKey::RequestId),
        "batches_idempotency" => Some(UniqueKey::IdempotencyKey),
        _ => None,
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        // One driver error type serves both backends: SQLite's codes are
        // read by its own module.
        if crate::store::sqlite::is_sqlite(&e) {
            return crate::store::sqlite::sort(e);
        }
        if unavailable(&e) {
            StoreError::Unavailable(backend(e))
        } else if let Some(key) = duplicate(&e) {
            StoreError::Duplicate {
                key,
                source: backend(e),
            }
        } else {
            StoreError::Database(backend(e))
        }
    }
}

impl StoreError {
    /// Sorts the error of a write of many rows: a refusal of the data is
    /// [`StoreError::Rejected`], anything else (the database away, busy,
    /// short of disk, a deadlock, ...) stays as [`From`] sorts it, worth
    /// retrying as it is. The one place that says which failures a row's
    /// own data can cause.
    pub fn from_write(e: sqlx::Error) -> Self {
        if crate::store::sqlite::is_sqlite(&e) {
            return crate::store::sqlite::sort_write(e);
        }
        let rejected = match &e {
            // SQLSTATE classes 22 (data exception: bad encoding, NUL, out
            // of range), 23 (integrity constraint violation) and 54
            // (program limit exceeded: a value too large).
            sqlx::Error::Database(db) => db
                .code()
                .is_some_and(|c| c.starts_with("22") || c.starts_with("23") || c.starts_with("54")),
            // A value the driver cannot even encode.
            sqlx::Error::Encode(_) => true,
            _ => false,
        };
        if rejected {
            StoreError::Rejected(backend(e))
        } else {
            e.into()
        }
    }
}
