//! How the domain's types are stored in SQLite: ids as 16-byte blobs (the
//! bytes of their uuid, so they sort as PostgreSQL sorts uuids), state enums
//! as their `text` words, and times as unix microseconds.

use crate::domain::batch::BatchStatus;
use crate::domain::daemon::DaemonStatus;
use crate::domain::file::{FileKind, FilePurpose, LineErrorCode};
use crate::domain::ids::{BatchId, DaemonId, FileId, RequestId, StepId, TemplateId};
use crate::domain::request::RequestState;
use crate::domain::step::{StepKind, StepState};
use chrono::{DateTime, Utc};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::sqlite::{SqliteArgumentValue, SqliteTypeInfo, SqliteValueRef};
use sqlx::{Database, Sqlite};
use uuid::Uuid;

type Args<'q> = <Sqlite as Database>::ArgumentBuffer<'q>;

/// An enum of the domain as `text`: its `as_str` word, parsed back with `FromStr`.
macro_rules! lite_text {
    ($($name:ty),+ $(,)?) => {$(
        impl sqlx::Type<Sqlite> for $name {
            fn type_info() -> SqliteTypeInfo {
                <&str as sqlx::Type<Sqlite>>::type_info()
            }
            fn compatible(ty: &SqliteTypeInfo) -> bool {
                <&str as sqlx::Type<Sqlite>>::compatible(ty)
            }
        }

        impl<'q> sqlx::Encode<'q, Sqlite> for $name {
            fn encode_by_ref(&self, buf: &mut Args<'q>) -> Result<IsNull, BoxDynError> {
                buf.push(SqliteArgumentValue::Text(std::borrow::Cow::Borrowed(self.as_str())));
                Ok(IsNull::No)
            }
        }

        impl<'r> sqlx::Decode<'r, Sqlite> for $name {
            fn decode(value: SqliteValueRef<'r>) -> Result<Self, BoxDynError> {
                let s = <&str as sqlx::Decode<Sqlite>>::decode(value)?;
                Ok(s.parse()?)
            }
        }
    )+};
}

/// An id newtype of the domain as the blob of the uuid it wraps.
macro_rules! lite_id {
    ($($name:ty),+ $(,)?) => {$(
        impl sqlx::Type<Sqlite> for $name {
            fn type_info() -> SqliteTypeInfo {
                <Uuid as sqlx::Type<Sqlite>>::type_info()
            }
            fn compatible(ty: &SqliteTypeInfo) -> bool {
                <Uuid as sqlx::Type<Sqlite>>::compatible(ty)
            }
        }

        impl<'q> sqlx::Encode<'q, Sqlite> for $name {
            fn encode_by_ref(&self, buf: &mut Args<'q>) -> Result<IsNull, BoxDynError> {
                <Uuid as sqlx::Encode<Sqlite>>::encode_by_ref(&self.0, buf)
            }
        }

        impl<'r> sqlx::Decode<'r, Sqlite> for $name {
            fn decode(value: SqliteValueRef<'r>) -> Result<Self, BoxDynError> {
                Ok(Self(<Uuid as sqlx::Decode<Sqlite>>::decode(value)?))
            }
        }
    )+};
}

lite_text!(
    BatchStatus,
    DaemonStatus,
    FileKind,
    FilePurpose,
    LineErrorCode,
    RequestState,
    StepKind,
    StepState,
);

lite_id!(FileId, TemplateId, BatchId, RequestId, DaemonId, StepId);

/// A deadline of "never", as stored (PostgreSQL's `infinity`).
pub(super) const NEVER: i64 = i64::MAX;

/// A time as stored: unix microseconds.
pub(super) fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// A stored time back as a time.
pub(super) fn time(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// A stored optional time back as a time.
pub(super) fn time_opt(us: Option<i64>) -> Option<DateTime<Utc>> {
    us.map(time)
}

/// A duration in microseconds, saturating.
pub(super) fn duration_us(d: chrono::Duration) -> i64 {
    d.num_microseconds().unwrap_or(i64::MAX)
}

/// Microseconds of a std duration, saturating.
pub(super) fn std_us(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// The last request id of a batch's range: its id with the low six bytes all
/// ones (the first is the batch id itself, whose low six bytes are zero).
pub(super) fn batch_hi(batch: BatchId) -> RequestId {
    batch.request_range().1
}

/// The first request id of a batch's range.
pub(super) fn batch_lo(batch: BatchId) -> RequestId {
    batch.request_range().0
}
