//! SQLite's errors sorted into the store's: the one place that reads its
//! result codes and constraint messages.

use crate::store::{BackendError, StoreError, UniqueKey};

/// SQLite's primary result codes used here (the low byte of an extended code).
const BUSY: i32 = 5;
const LOCKED: i32 = 6;
const NOMEM: i32 = 7;
const READONLY: i32 = 8;
const IOERR: i32 = 10;
const CORRUPT: i32 = 11;
const FULL: i32 = 13;
const CANTOPEN: i32 = 14;
const TOOBIG: i32 = 18;
const CONSTRAINT: i32 = 19;
const MISMATCH: i32 = 20;
/// Extended codes of a broken constraint.
const CONSTRAINT_UNIQUE: i32 = 2067;
const CONSTRAINT_PRIMARYKEY: i32 = 1555;

/// The extended result code of a database error from SQLite, if it is one.
fn code(e: &sqlx::Error) -> Option<i32> {
    let sqlx::Error::Database(db) = e else {
        return None;
    };
    db.try_downcast_ref::<sqlx::sqlite::SqliteError>()?;
    db.code()?.parse().ok()
}

/// Whether this error came from SQLite.
pub(crate) fn is_sqlite(e: &sqlx::Error) -> bool {
    code(e).is_some()
}

fn backend(e: sqlx::Error) -> BackendError {
    let message = match &e {
        sqlx::Error::Database(db) => match db.code() {
            Some(code) => format!("{} (SQLite code {code})", db.message()),
            None => db.message().to_owned(),
        },
        other => other.to_string(),
    };
    BackendError::with_source(message, e)
}

/// Which unique key a broken UNIQUE or PRIMARY KEY constraint names: SQLite
/// says it as "UNIQUE constraint failed: table.column, ...".
fn duplicate(e: &sqlx::Error, code: i32) -> Option<UniqueKey> {
    if code != CONSTRAINT_UNIQUE && code != CONSTRAINT_PRIMARYKEY {
        return None;
    }
    let sqlx::Error::Database(db) = e else {
        return None;
    };
    let what = db.message().split_once("failed: ")?.1;
    match what {
        "batches.id" => Some(UniqueKey::BatchId),
        "requests.id" => Some(UniqueKey::RequestId),
        "batches.owner, batches.idempotency_key" => Some(UniqueKey::IdempotencyKey),
        _ => None,
    }
}

/// Sorts an error of SQLite (see [`is_sqlite`]) as [`From`] does for
/// every store error: busy, locked, out of memory or I/O is the database
/// out of reach for now; a unique key names its [`UniqueKey`].
pub(crate) fn sort(e: sqlx::Error) -> StoreError {
    let Some(code) = code(&e) else {
        return StoreError::Database(backend(e));
    };
    match code & 0xff {
        BUSY | LOCKED | NOMEM | IOERR | FULL | CANTOPEN | READONLY | CORRUPT => {
            return StoreError::Unavailable(backend(e));
        }
        _ => {}
    }
    match duplicate(&e, code) {
        Some(key) => StoreError::Duplicate {
            key,
            source: backend(e),
        },
        None => StoreError::Database(backend(e)),
    }
}

/// Whether a write of many rows was refused for a row's own data: a
/// broken constraint, a value too big, a type mismatch.
pub(crate) fn rejected(e: &sqlx::Error) -> bool {
    code(e).is_some_and(|c| matches!(c & 0xff, CONSTRAINT | TOOBIG | MISMATCH))
}

/// Sorts the error of a write of many rows (see `StoreError::from_write`).
pub(crate) fn sort_write(e: sqlx::Error) -> StoreError {
    if rejected(&e) {
        StoreError::Rejected(backend(e))
    } else {
        sort(e)
    }
}
