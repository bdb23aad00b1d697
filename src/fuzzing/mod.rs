//! Entry points for fuzzers and property tests: each one feeds arbitrary
//! input to one of the parsers that read what comes from outside, and
//! panics when an invariant breaks (a panic in the parser itself counts).
//!
//! They live in the library, not in `fuzz/`, so that the normal build keeps
//! them compiled: the property tests (`tests/prop_*.rs`) run them a bounded
//! number of times in every test run, and the cargo-fuzz targets in `fuzz/`
//! call the same functions for long runs (see FUZZING.md).
//!
//! - [`jsonl`]: the upload line splitter and line parser, at any chunking.
//! - [`sse`]: the server-sent events parser and the answer reassembly, at
//!   any chunking.
//! - [`config`]: the TOML configuration.
//! - [`api`]: requests built from bytes for the HTTP API, and the check that
//!   an answer is never a 5xx and that an error is OpenAI's envelope.

pub mod api;
pub mod config;
pub mod jsonl;
pub mod sse;

/// A fuzzer's input read as a small number (its first byte), cut points (as
/// many as its second byte says, up to 15, two bytes each), and the data
/// that follows.
pub fn split_input(input: &[u8]) -> (u8, Vec<usize>, &[u8]) {
    let number = input.first().copied().unwrap_or(0);
    let count = usize::from(input.get(1).copied().unwrap_or(0) % 16);
    let rest = input.get(2..).unwrap_or_default();
    let (head, data) = rest.split_at((count * 2).min(rest.len()));
    let cuts = head
        .chunks(2)
        .map(|c| usize::from(c[0]) << 8 | usize::from(c.get(1).copied().unwrap_or(0)))
        .collect();
    (number, cuts, data)
}

/// `data` cut at `cuts` (taken modulo `data.len() + 1`, sorted; a repeated
/// cut gives an empty chunk, as a network read may).
pub fn chunks<'a>(data: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
    at.sort_unstable();
    let mut out = Vec::with_capacity(at.len() + 1);
    let mut from = 0;
    for to in at {
        out.push(&data[from..to]);
        from = to;
    }
    out.push(&data[from..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_input_reads_the_header_and_never_fails() {
        assert_eq!(split_input(b""), (0, vec![], &b""[..]));
        assert_eq!(
            split_input(b"\x05\x02\x00\x03\x01"),
            (5, vec![3, 256], &b""[..])
        );
        assert_eq!(
            split_input(b"\x05\x11\x00\x03data"),
            (5, vec![3], &b"data"[..])
        );
    }

    #[test]
    fn chunks_cover_the_data_in_order() {
        let data = b"abcdef";
        assert_eq!(chunks(data, &[]), vec![&b"abcdef"[..]]);
        assert_eq!(
            chunks(data, &[4, 1, 1, 13]),
            vec![&b"a"[..], b"", b"bcd", b"ef", b""]
        );
        assert_eq!(chunks(b"", &[5]), vec![&b""[..], b""]);
    }
}
