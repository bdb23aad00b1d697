//! PostgreSQL's binary COPY format, written by hand: it is the fastest way to
//! load many rows, and the encoding of the few types we load is simple.
//! <https://www.postgresql.org/docs/current/sql-copy.html#id-1.9.3.55.9.4>

use uuid::Uuid;

/// What a binary COPY stream starts with: the signature, then zero flags
/// and an empty header extension.
pub(crate) const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// What a binary COPY stream ends with: a field count of -1.
pub(crate) const TRAILER: &[u8] = &(-1i16).to_be_bytes();

/// A buffer of rows in binary COPY format, without [`HEADER`] and
/// [`TRAILER`], so that one COPY statement can carry many buffers.
pub(crate) struct BinaryCopy {
    buf: Vec<u8>,
    rows: u64,
}

impl BinaryCopy {
    /// An empty buffer.
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Self {
            buf: Vec::with_capacity(capacity),
            rows: 0,
        }
    }

    /// Starts a row of `fields` fields.
    pub(crate) fn row(&mut self, fields: i16) {
        self.rows += 1;
        self.buf.extend_from_slice(&fields.to_be_bytes());
    }

    fn field(&mut self, bytes: &[u8]) {
        let len = i32::try_from(bytes.len()).expect("a field is under 2 GiB");
        self.buf.extend_from_slice(&len.to_be_bytes());
        self.buf.extend_from_slice(bytes);
    }

    /// A `uuid` field.
    pub(crate) fn uuid(&mut self, id: Uuid) {
        self.field(id.as_bytes());
    }

    /// A `text` field.
    pub(crate) fn text(&mut self, s: &str) {
        self.field(s.as_bytes());
    }

    /// A `bigint` field.
    pub(crate) fn int8(&mut self, v: i64) {
        self.field(&v.to_be_bytes());
    }

    /// Rows written so far.
    pub(crate) fn rows(&self) -> u64 {
        self.rows
    }

    /// Bytes written so far.
    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }

    /// The rows written, to be sent after [`HEADER`] and before [`TRAILER`].
    pub(crate) fn into_rows(self) -> Vec<u8> {
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_is_the_documented_one() {
        let mut want = b"PGCOPY\n\xff\r\n\0".to_vec();
        want.extend_from_slice(&0i32.to_be_bytes());
        want.extend_from_slice(&0i32.to_be_bytes());
        assert_eq!(HEADER, want.as_slice());
        assert_eq!(TRAILER, b"\xff\xff");
    }
}
