//! The custom_ids an upload has seen, as compact fingerprints.
//!
//! An upload cuts a line's body out of the stored bytes only when no earlier
//! line can share its custom_id, and asks the database for the exact check
//! only when a fingerprint repeats. A `HashSet<u64>` cost 9 to 18 bytes per
//! line and briefly twice that while it grew, so it was capped at 917,504
//! lines; past the cap every body was stored twice and the database checked
//! the whole file (a 1 GB upload fell from 150 to 72 MB/s). Here each line
//! costs 4 bytes and a little growth room: the top 16 bits of a 64-bit hash
//! pick one of 65,536 sorted buckets, which keeps the next 32 bits.

/// Buckets, picked by the top bits of a fingerprint.
const BUCKET_BITS: u32 = 16;

/// What [`Fingerprints::insert`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Seen {
    /// Not seen before: no earlier line has this custom_id.
    New,
    /// Seen before: an earlier line may have this custom_id (48 bits agree).
    Again,
    /// The set is full, so nothing is known.
    Full,
}

/// A set of 48-bit fingerprints with a fixed capacity.
pub(super) struct Fingerprints {
    /// Empty until the first insert, so small uploads pay nothing.
    buckets: Vec<Vec<u32>>,
    len: usize,
    cap: usize,
}

impl Fingerprints {
    /// A set that holds at most `cap` fingerprints.
    pub(super) fn new(cap: usize) -> Self {
        Self {
            buckets: Vec::new(),
            len: 0,
            cap,
        }
    }

    /// Adds the fingerprint of `hash` unless it is there or the set is full.
    pub(super) fn insert(&mut self, hash: u64) -> Seen {
        if self.buckets.is_empty() {
            self.buckets = vec![Vec::new(); 1 << BUCKET_BITS];
        }
        let bucket = &mut self.buckets[(hash >> (64 - BUCKET_BITS)) as usize];
        let key = (hash >> (32 - BUCKET_BITS)) as u32;
        let Err(at) = bucket.binary_search(&key) else {
            return Seen::Again;
        };
        if self.len >= self.cap {
            return Seen::Full;
        }
        if bucket.len() == bucket.capacity() {
            // Grow by a quarter rather than double: memory is the point.
            bucket.reserve_exact((bucket.len() / 4).max(4));
        }
        bucket.insert(at, key);
        self.len += 1;
        Seen::New
    }

    /// Fingerprints held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::{BuildHasher, RandomState};

    #[test]
    fn a_repeat_is_seen_and_distinct_ids_are_new() {
        let hasher = RandomState::new();
        let mut set = Fingerprints::new(1 << 20);
        for i in 0..200_000 {
            assert_eq!(set.insert(hasher.hash_one(format!("id-{i}"))), Seen::New);
        }
        for i in (0..200_000).step_by(997) {
            assert_eq!(set.insert(hasher.hash_one(format!("id-{i}"))), Seen::Again);
        }
        assert_eq!(set.len(), 200_000);
    }

    #[test]
    fn a_full_set_knows_only_what_it_holds() {
        let mut set = Fingerprints::new(2);
        assert_eq!(set.insert(1 << 40), Seen::New);
        assert_eq!(set.insert(2 << 40), Seen::New);
        assert_eq!(set.insert(3 << 40), Seen::Full);
        assert_eq!(set.insert(1 << 40), Seen::Again);
        assert_eq!(set.len(), 2);
    }

    #[test]
    fn only_the_top_48_bits_count() {
        let mut set = Fingerprints::new(8);
        assert_eq!(set.insert(0xABCD_0123_4567_0001), Seen::New);
        assert_eq!(set.insert(0xABCD_0123_4567_FFFF), Seen::Again);
        assert_eq!(set.insert(0xABCD_0123_4568_0001), Seen::New);
        assert_eq!(set.insert(0xABCE_0123_4567_0001), Seen::New);
    }
}
