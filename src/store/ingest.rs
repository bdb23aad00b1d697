//! The upload parser's running state, which is not storage and is the same
//! for every backend: the byte count against the size limit, the refused
//! lines, the endpoints seen, the custom_id fingerprints, and the original
//! bytes with each first-used template's body cut out (see `store::holes`).
//! A backend feeds it the upload and stores what [`Parse::line`] hands back
//! and the [`Part`]s it settles.

use crate::domain::file::{
    IngestLimits, LineError, LineErrorCode, LineSplitter, ParsedLine, RawLine, parse_line,
};
use crate::store::fingerprints::{Fingerprints, Seen};
use crate::store::holes::push_hole;
use crate::store::{Result, StoreError};
use std::collections::BTreeSet;
use std::hash::{BuildHasher, RandomState};

/// A piece of the original file with the bodies of its templates cut out:
/// each template's body is stored once, with its template, and spliced back
/// in on download.
#[derive(Debug, Default)]
pub(crate) struct Part {
    /// The bytes, bodies removed.
    pub data: Vec<u8>,
    /// For each body removed, in order: see `store::holes`.
    pub holes: Vec<u8>,
}

impl Part {
    /// Bytes held, data and holes.
    pub fn len(&self) -> usize {
        self.data.len() + self.holes.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty() && self.holes.is_empty()
    }
}

/// The parser's running state for one upload.
pub(crate) struct Parse<'l> {
    /// The limits the upload is held to.
    pub limits: &'l IngestLimits,
    /// Original bytes not yet moved into `part`, from stream offset
    /// `raw_base`; those before `raw_pos` are settled (moved or cut out).
    raw: Vec<u8>,
    raw_base: u64,
    raw_pos: usize,
    /// Settled original bytes not yet handed to the backend.
    pub part: Part,
    /// Bytes received.
    pub bytes: u64,
    /// The first refused lines (up to the limit's count), and how many in all.
    pub errors: Vec<LineError>,
    pub error_count: u64,
    /// The endpoints of the valid lines.
    pub urls: BTreeSet<String>,
    /// Fingerprints of the custom_ids seen, to find duplicates without the
    /// database; a repeated fingerprint is only a suspicion, confirmed there.
    fingerprints: Fingerprints,
    hasher: RandomState,
    /// Whether the database must look for duplicates: a fingerprint repeated,
    /// or lines came after the last fingerprint kept.
    pub check_duplicates: bool,
}

impl<'l> Parse<'l> {
    /// A fresh state for one upload under `limits`.
    pub fn new(limits: &'l IngestLimits, slice_bytes: usize) -> Self {
        Self {
            limits,
            raw: Vec::with_capacity(slice_bytes),
            raw_base: 0,
            raw_pos: 0,
            part: Part::default(),
            bytes: 0,
            errors: Vec::new(),
            error_count: 0,
            urls: BTreeSet::new(),
            fingerprints: Fingerprints::new(limits.max_fingerprints),
            hasher: RandomState::new(),
            check_duplicates: false,
        }
    }

    /// Counts a chunk received; refuses the upload once it passes the size limit.
    pub fn received(&mut self, len: usize) -> Result<()> {
        self.bytes += len as u64;
        if self.bytes > self.limits.max_file_bytes {
            return Err(StoreError::TooLarge {
                limit: self.limits.max_file_bytes,
            });
        }
        Ok(())
    }

    /// Keeps `slice`, about to be given to the splitter, until it is settled.
    pub fn keep(&mut self, slice: &[u8]) {
        self.raw.extend_from_slice(slice);
    }

    /// Whether every byte kept has been settled (true at the end of an upload).
    pub fn all_settled(&self) -> bool {
        self.raw.is_empty()
    }

    fn error(&mut self, e: LineError) {
        self.error_count += 1;
        if self.errors.len() < self.limits.max_kept_errors {
            self.errors.push(e);
        }
    }

    /// Moves the original bytes before stream offset `to` into the part.
    fn settle(&mut self, to: u64) {
        let end = (to - self.raw_base) as usize;
        if end > self.raw_pos {
            self.part
                .data
                .extend_from_slice(&self.raw[self.raw_pos..end]);
            self.raw_pos = end;
        }
    }

    /// Settles what the splitter will not look at again and drops it from `raw`.
    pub fn compact(&mut self, splitter: &LineSplitter) {
        self.settle(splitter.pending_start());
        self.raw.drain(..self.raw_pos);
        self.raw_base += self.raw_pos as u64;
        self.raw_pos = 0;
    }

    /// One line from the splitter: a refused line is counted here; a valid
    /// one is returned with its number, for the backend to store as a
    /// template. The first use of a custom_id keeps its template (the
    /// database's duplicate check deletes later ones, never the first), so
    /// only such a line's body is cut out of the stored bytes and stays
    /// downloadable.
    pub fn line<'b>(&mut self, raw: RawLine<'b>) -> Option<(u64, ParsedLine<'b>)> {
        let (number, offset, bytes) = match raw {
            RawLine::Line {
                number,
                offset,
                bytes,
            } => (number, offset, bytes),
            RawLine::TooLong { number, len } => {
                let max = self.limits.max_line_bytes;
                self.error(LineError {
                    line: Some(number),
                    code: LineErrorCode::LineTooLong,
                    message: format!("line is {len} bytes long; the limit is {max}"),
                });
                return None;
            }
        };
        let p = match parse_line(number, bytes, &self.limits.endpoints) {
            Ok(p) => p,
            Err(e) => {
                self.error(e);
                return None;
            }
        };
        if !self.urls.contains(p.url.as_ref()) {
            self.urls.insert(p.url.to_string());
        }
        match self
            .fingerprints
            .insert(self.hasher.hash_one(&*p.custom_id))
        {
            Seen::New => {
                // The body borrows from the line, so its place in the
                // stream follows from the line's.
                let start = offset + (p.body.as_ptr() as usize - bytes.as_ptr() as usize) as u64;
                self.settle(start);
                push_hole(&mut self.part.holes, self.part.data.len(), number);
                self.raw_pos = (start - self.raw_base) as usize + p.body.len();
            }
            Seen::Again | Seen::Full => self.check_duplicates = true,
        }
        Some((number, p))
    }
}
