//! How the domain's types are stored in PostgreSQL: ids as `uuid`, state
//! enums as their `text` words (checked by the schema's CHECK constraints).
//! Kept here so that the domain does not depend on the driver.

use crate::domain::batch::BatchStatus;
use crate::domain::daemon::DaemonStatus;
use crate::domain::file::{FileKind, FilePurpose, LineErrorCode};
use crate::domain::ids::{BatchId, DaemonId, FileId, RequestId, StepId, TemplateId};
use crate::domain::request::RequestState;
use crate::domain::step::{StepKind, StepState};
use sqlx::Postgres;
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgHasArrayType, PgTypeInfo, PgValueRef};
use uuid::Uuid;

/// An enum of the domain as `text`: its `as_str` word, parsed back with `FromStr`.
macro_rules! pg_text {
    ($($name:ty),+ $(,)?) => {$(
        impl sqlx::Type<Postgres> for $name {
            fn type_info() -> PgTypeInfo {
                <&str as sqlx::Type<Postgres>>::type_info()
            }
            fn compatible(ty: &PgTypeInfo) -> bool {
                <&str as sqlx::Type<Postgres>>::compatible(ty)
            }
        }

        impl PgHasArrayType for $name {
            fn array_type_info() -> PgTypeInfo {
                <&str as PgHasArrayType>::array_type_info()
            }
        }

        impl<'q> sqlx::Encode<'q, Postgres> for $name {
            fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
                <&str as sqlx::Encode<Postgres>>::encode(self.as_str(), buf)
            }
        }

        impl<'r> sqlx::Decode<'r, Postgres> for $name {
            fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
                let s = <&str as sqlx::Decode<Postgres>>::decode(value)?;
                Ok(s.parse()?)
            }
        }
    )+};
}

/// An id newtype of the domain as the `uuid` it wraps.
macro_rules! pg_id {
    ($($name:ty),+ $(,)?) => {$(
        impl sqlx::Type<Postgres> for $name {
            fn type_info() -> PgTypeInfo {
                <Uuid as sqlx::Type<Postgres>>::type_info()
            }
            fn compatible(ty: &PgTypeInfo) -> bool {
                <Uuid as sqlx::Type<Postgres>>::compatible(ty)
            }
        }

        impl PgHasArrayType for $name {
            fn array_type_info() -> PgTypeInfo {
                <Uuid as PgHasArrayType>::array_type_info()
            }
        }

        impl<'q> sqlx::Encode<'q, Postgres> for $name {
            fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
                <Uuid as sqlx::Encode<Postgres>>::encode_by_ref(&self.0, buf)
            }
        }

        impl<'r> sqlx::Decode<'r, Postgres> for $name {
            fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
                Ok(Self(<Uuid as sqlx::Decode<Postgres>>::decode(value)?))
            }
        }
    )+};
}

pg_text!(
    BatchStatus,
    DaemonStatus,
    FileKind,
    FilePurpose,
    LineErrorCode,
    RequestState,
    StepKind,
    StepState,
);

pg_id!(FileId, TemplateId, BatchId, RequestId, DaemonId, StepId);
