//! PostgreSQL's binary COPY format, written by hand: it is the fastest way to
//! load many rows, and the encoding of the few types we load is simple.
//! <https://www.postgresql.org/docs/current/sql-copy.html#id-1.9.3.55.9.4>

use uuid::Uuid;

const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// A buffer of rows in binary COPY format.
pub(crate) struct BinaryCopy {
    buf: Vec<u8>,
    rows: u64,
}

impl BinaryCopy {
    /// An empty buffer with the header written.
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(capacity);
        buf.extend_from_slice(SIGNATURE);
        buf.extend_from_slice(&0i32.to_be_bytes()); // flags
        buf.extend_from_slice(&0i32.to_be_bytes()); // header extension length
        Self { buf, rows: 0 }
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

    /// The finished buffer, trailer included.
    pub(crate) fn finish(mut self) -> Vec<u8> {
        self.buf.extend_from_slice(&(-1i16).to_be_bytes());
        self.buf
    }
}
