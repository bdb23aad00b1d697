//! Identifier newtypes, so a batch id can never be passed where a file id is
//! expected, and the one place that says how ids are laid out.
//!
//! # Id layout
//!
//! Every id is a UUIDv7: 48 bits of Unix milliseconds, so B-tree inserts stay
//! at the right edge and ids sort by creation, then random bits.
//!
//! A batch's request ids are derived from the batch id, so a batch's requests
//! are one range of the primary key (no per-batch index) and need no id
//! generation at all: **a batch id has its low 48 bits zero, and the request
//! of line `n` is the batch id with `n` in those bits** (see
//! [`RequestId::of_line`]; `fusillade_request_id` in the migrations is the same
//! rule in SQL). The high 80 bits of a batch id (timestamp, version, variant
//! and 26 random bits) are therefore its requests' prefix, and since they are
//! the whole batch id, the batches table's primary key makes them unique
//! across every process and machine sharing a database: a concurrent twin
//! fails its insert and is made again with fresh bits, never reaching the
//! requests or results tables. (Ids made by the uuid crate's `now_v7` count up
//! within a millisecond instead of drawing fresh bits, so two batches made in
//! the same millisecond shared their first ten bytes; that is why batch ids
//! are made here.) Batches created before this layout have random low bits;
//! their ranges are unchanged.

use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl From<Uuid> for $name {
            fn from(id: Uuid) -> Self {
                Self(id)
            }
        }
    };
}

/// A fresh time-ordered id for any table but batches and requests.
macro_rules! plain_new {
    ($($name:ident),*) => {$(
        impl $name {
            /// A fresh time-ordered id (UUIDv7), so B-tree inserts stay local and ids sort by creation.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
        }
    )*};
}

id_type!(
    /// An uploaded input file, or the virtual output or error file of a batch.
    FileId
);
id_type!(
    /// One parsed input line.
    TemplateId
);
id_type!(
    /// One execution of an input file.
    BatchId
);
id_type!(
    /// One template inside one batch.
    RequestId
);
id_type!(
    /// A registered worker process.
    DaemonId
);
id_type!(
    /// One step of a multi-step response.
    StepId
);

plain_new!(FileId, TemplateId, DaemonId, StepId);

/// Bytes of a batch id that are the same in all its request ids.
const PREFIX_BYTES: usize = 10;

/// The random part of a batch id (26 bits: 12 after the version, 14 after
/// the variant).
const BATCH_RANDOM_BITS: u32 = 26;

/// The last batch id this process made, as (milliseconds, random part):
/// within a millisecond the next id adds one to the random part, so ids made
/// by one process never collide; other processes start at their own random
/// points and a rare clash between them fails on the primary key.
static LAST_BATCH: std::sync::Mutex<(u64, u32)> = std::sync::Mutex::new((0, 0));

impl BatchId {
    /// A fresh batch id: UUIDv7 with 26 random bits after the timestamp and
    /// its low 48 bits zero (see the module doc).
    pub fn new() -> Self {
        let now = chrono::Utc::now().timestamp_millis().max(0) as u64;
        let (millis, random) = {
            let mut last = LAST_BATCH.lock().unwrap_or_else(|e| e.into_inner());
            let fresh = || {
                let b = Uuid::new_v4().as_u128() as u32;
                // The top bit stays clear, leaving room to count up.
                b & ((1 << (BATCH_RANDOM_BITS - 1)) - 1)
            };
            let next = if now > last.0 {
                (now, fresh())
            } else if last.1 + 1 < (1 << BATCH_RANDOM_BITS) {
                (last.0, last.1 + 1)
            } else {
                (last.0 + 1, fresh())
            };
            *last = next;
            next
        };
        let mut bytes = [0u8; 16];
        bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
        bytes[6] = 0x70 | ((random >> 22) & 0x0f) as u8;
        bytes[7] = (random >> 14) as u8;
        bytes[8] = 0x80 | ((random >> 8) & 0x3f) as u8;
        bytes[9] = random as u8;
        Self(Uuid::from_bytes(bytes))
    }

    /// The first and last request id of this batch's range (inclusive).
    pub fn request_range(self) -> (RequestId, RequestId) {
        let mut lo = *self.0.as_bytes();
        lo[PREFIX_BYTES..].fill(0);
        let mut hi = lo;
        hi[PREFIX_BYTES..].fill(0xff);
        (
            RequestId(Uuid::from_bytes(lo)),
            RequestId(Uuid::from_bytes(hi)),
        )
    }
}

impl RequestId {
    /// The request of 1-based input line `line` of `batch`.
    pub fn of_line(batch: BatchId, line: u64) -> Self {
        let mut bytes = *batch.0.as_bytes();
        bytes[PREFIX_BYTES..].copy_from_slice(&line.to_be_bytes()[8 - (16 - PREFIX_BYTES)..]);
        Self(Uuid::from_bytes(bytes))
    }

    /// A fresh id outside any batch's range, for requests made without a batch.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn batch_ids_made_together_never_share_a_prefix() {
        // Ids made back to back land in the same millisecond: their request
        // ranges must still differ (the uuid crate's counter made them equal).
        let ids: Vec<BatchId> = (0..100_000).map(|_| BatchId::new()).collect();
        let prefixes: HashSet<[u8; PREFIX_BYTES]> = ids
            .iter()
            .map(|b| b.0.as_bytes()[..PREFIX_BYTES].try_into().unwrap())
            .collect();
        assert_eq!(prefixes.len(), ids.len());
        for b in &ids {
            assert_eq!(b.0.get_version_num(), 7);
            assert_eq!(b.0.get_variant(), uuid::Variant::RFC4122);
            assert_eq!(&b.0.as_bytes()[PREFIX_BYTES..], &[0; 6]);
        }
    }

    #[test]
    fn request_ids_are_the_batch_id_with_the_line_in_the_low_bits() {
        let b = BatchId::new();
        let (lo, hi) = b.request_range();
        assert_eq!(lo.0, b.0);
        let r1 = RequestId::of_line(b, 1);
        let r2 = RequestId::of_line(b, 2);
        assert!(lo < r1 && r1 < r2 && r2 <= hi);
        assert_eq!(
            &r1.0.as_bytes()[..PREFIX_BYTES],
            &b.0.as_bytes()[..PREFIX_BYTES]
        );
        assert_eq!(&r2.0.as_bytes()[PREFIX_BYTES..], &[0, 0, 0, 0, 0, 2]);
        let last = RequestId::of_line(b, (1 << 48) - 1);
        assert_eq!(last, hi);
    }
}
