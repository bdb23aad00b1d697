//! The upload path's pure half: [`LineSplitter`] cutting a byte stream into
//! lines, and [`parse_line`] checking each. What they make of a file must
//! not depend on how the bytes were cut into chunks, and must agree with a
//! plain reading of the file (split at LF, one CR before it dropped, a BOM
//! dropped from line 1, blank lines skipped).

use crate::domain::file::{LineError, LineSplitter, RawLine, parse_line};

/// What the splitter and the parser made of one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineOutcome {
    /// A valid line, and where its bytes start in the stream.
    Parsed {
        /// 1-based line number.
        number: u64,
        /// Where the line's bytes start.
        offset: u64,
        /// `custom_id`.
        custom_id: String,
        /// `url`.
        url: String,
        /// `body`, as written.
        body: String,
        /// `body.model`.
        model: String,
    },
    /// A refused line.
    Refused(LineError),
}

impl LineOutcome {
    /// The line's number.
    pub fn number(&self) -> u64 {
        match self {
            Self::Parsed { number, .. } => *number,
            Self::Refused(e) => e.line.unwrap_or(0),
        }
    }
}

/// The outcome of every line of `data` fed in the chunks [`super::chunks`]
/// makes of `cuts`, with lines of at most `max_line` bytes.
pub fn outcomes(
    data: &[u8],
    cuts: &[usize],
    max_line: usize,
    endpoints: &[String],
) -> Vec<LineOutcome> {
    let mut out = Vec::new();
    let mut splitter = LineSplitter::new(max_line);
    let mut take = |raw: RawLine<'_>| out.push(outcome(raw, max_line, endpoints));
    for chunk in super::chunks(data, cuts) {
        splitter.push(chunk, &mut take);
    }
    splitter.finish(&mut take);
    out
}

fn outcome(raw: RawLine<'_>, max_line: usize, endpoints: &[String]) -> LineOutcome {
    match raw {
        RawLine::TooLong { number, len } => LineOutcome::Refused(LineError {
            line: Some(number),
            code: crate::domain::file::LineErrorCode::LineTooLong,
            message: format!("line is {len} bytes long; the limit is {max_line}"),
        }),
        RawLine::Line {
            number,
            offset,
            bytes,
        } => match parse_line(number, bytes, endpoints) {
            Ok(p) => LineOutcome::Parsed {
                number,
                offset,
                custom_id: p.custom_id.into_owned(),
                url: p.url.into_owned(),
                body: p.body.to_owned(),
                model: p.model.into_owned(),
            },
            Err(e) => LineOutcome::Refused(e),
        },
    }
}

/// One line of a plain reading: its number, where its bytes start, and the
/// bytes, or `Err(len)` for a line over the limit.
pub type PlainLine<'a> = (u64, u64, Result<&'a [u8], u64>);

/// The lines of `data` read plainly, all at once, with lines of at most
/// `max_line` bytes.
pub fn plain_lines(data: &[u8], max_line: usize) -> Vec<PlainLine<'_>> {
    let mut out = Vec::new();
    let mut offset = 0u64;
    let pieces: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    let last = pieces.len() - 1;
    for (i, piece) in pieces.into_iter().enumerate() {
        let start = offset;
        offset += piece.len() as u64 + 1;
        if i == last && piece.is_empty() {
            break;
        }
        let number = i as u64 + 1;
        let mut line = piece.strip_suffix(b"\r").unwrap_or(piece);
        let mut at = start;
        if number == 1
            && let Some(rest) = line.strip_prefix(b"\xEF\xBB\xBF")
        {
            line = rest;
            at += 3;
        }
        if line.len() > max_line {
            out.push((number, at, Err(line.len() as u64)));
        } else if !line.iter().all(u8::is_ascii_whitespace) {
            out.push((number, at, Ok(line)));
        }
    }
    out
}

/// The property: `data` cut at `cuts`, one byte at a time (with empty reads
/// between), and in one piece
/// gives the same lines, which agree with [`plain_lines`]; every refusal
/// names its line and says what is wrong; every accepted line holds what a
/// store can keep. Panics when any of it fails.
pub fn check(data: &[u8], cuts: &[usize], max_line: usize) {
    let endpoints = crate::domain::file::IngestLimits::default().endpoints;
    let whole = outcomes(data, &[], max_line, &endpoints);
    let cut = outcomes(data, cuts, max_line, &endpoints);
    assert_eq!(cut, whole, "cut at {cuts:?}: not the same as one chunk");
    // One byte at a time, with an empty read between any two.
    let every: Vec<usize> = (1..data.len()).flat_map(|i| [i, i]).collect();
    let bytewise = outcomes(data, &every, max_line, &endpoints);
    assert_eq!(
        bytewise, whole,
        "fed byte by byte: not the same as one chunk"
    );

    let plain = plain_lines(data, max_line);
    assert_eq!(
        whole.iter().map(LineOutcome::number).collect::<Vec<_>>(),
        plain.iter().map(|p| p.0).collect::<Vec<_>>(),
        "not the lines a plain reading finds"
    );
    for (got, (number, offset, bytes)) in whole.iter().zip(&plain) {
        match (got, bytes) {
            (LineOutcome::Parsed { offset: o, .. }, Ok(_)) => {
                assert_eq!(o, offset, "line {number}: offset");
            }
            (LineOutcome::Refused(e), Err(len)) => {
                assert_eq!(
                    e.message,
                    format!("line is {len} bytes long; the limit is {max_line}"),
                    "line {number}: length"
                );
            }
            (LineOutcome::Refused(e), Ok(line)) => {
                assert_ne!(
                    e.code,
                    crate::domain::file::LineErrorCode::LineTooLong,
                    "line {number} of {} bytes refused as too long",
                    line.len()
                );
            }
            (LineOutcome::Parsed { .. }, Err(len)) => {
                panic!("line {number} of {len} bytes accepted over the limit {max_line}")
            }
        }
    }
    for o in &whole {
        match o {
            LineOutcome::Refused(e) => {
                assert!(e.line.is_some_and(|n| n > 0), "{e:?}");
                assert!(!e.message.trim().is_empty(), "{e:?}");
                assert!(!e.message.contains('\n'), "a message of one line: {e:?}");
            }
            LineOutcome::Parsed {
                number,
                offset,
                custom_id,
                url,
                body,
                model,
            } => {
                for (name, text) in [("custom_id", custom_id), ("model", model)] {
                    assert!(!text.is_empty(), "line {number}: empty {name}");
                    assert!(!text.contains('\0'), "line {number}: NUL in {name}");
                }
                assert!(endpoints.contains(url), "line {number}: url {url:?}");
                assert!(
                    matches!(
                        serde_json::from_str::<serde_json::Value>(body),
                        Ok(serde_json::Value::Object(_))
                    ),
                    "line {number}: the body is not a JSON object: {body:?}"
                );
                // The body is a slice of the line as it was sent.
                let at = *offset as usize;
                let line = &data[at..];
                let line = &line[..memchr::memchr(b'\n', line).unwrap_or(line.len())];
                assert!(
                    memchr::memmem::find(line, body.as_bytes()).is_some(),
                    "line {number}: the body is not in the line"
                );
            }
        }
    }
}

/// The fuzz target's entry: [`check`] on an input read by
/// [`super::split_input`], its number giving the line limit.
pub fn fuzz(input: &[u8]) {
    let (max_line, cuts, data) = super::split_input(input);
    check(data, &cuts, usize::from(max_line).max(1));
}
