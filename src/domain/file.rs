//! Files and the parsing of their JSONL lines, with OpenAI's validation rules.
//!
//! Parsing is split in two so that memory never grows with the file:
//! [`LineSplitter`] cuts a byte stream into numbered lines (holding at most one
//! partial line), and [`parse_line`] checks one line, borrowing from it.

use super::ids::BatchId;
pub use super::ids::FileId;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::borrow::Cow;

text_enum!(
    /// What a file is for, in OpenAI's words.
    FilePurpose {
        /// An uploaded input file of request lines.
        Batch => "batch",
        /// A batch's output or error file.
        BatchOutput => "batch_output",
    }
);

text_enum!(
    /// What a file holds, kept apart internally although OpenAI shows the
    /// output and the error file with the same purpose.
    FileKind {
        /// Uploaded request lines.
        Input => "input",
        /// A batch's successful results.
        Output => "output",
        /// A batch's failed results.
        Error => "error",
    }
);

text_enum!(
    /// Why one input line was refused.
    LineErrorCode {
        /// The line is not a JSON object.
        InvalidJsonLine => "invalid_json_line",
        /// The line's bytes are not UTF-8.
        InvalidUtf8 => "invalid_utf8",
        /// `custom_id` is absent, empty or not a string.
        MissingCustomId => "missing_custom_id",
        /// An earlier line has the same `custom_id`.
        DuplicateCustomId => "duplicate_custom_id",
        /// `custom_id` holds a character no store can keep (NUL, `\u0000`).
        InvalidCustomId => "invalid_custom_id",
        /// `method` is not `POST`.
        InvalidMethod => "invalid_method",
        /// `url` is not one of the allowed endpoints.
        InvalidUrl => "invalid_url",
        /// `body` is absent or not a JSON object.
        InvalidBody => "invalid_body",
        /// `body.model` is absent, empty or not a string.
        MissingModel => "missing_model",
        /// `body.model` holds a character no store can keep (NUL, `\u0000`).
        InvalidModel => "invalid_model",
        /// The line is longer than the limit.
        LineTooLong => "line_too_long",
        /// The file holds no request lines at all.
        EmptyFile => "empty_file",
    }
);

/// One refused line (or, with no line, a fault of the whole file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineError {
    /// The 1-based line number, or `None` for the whole file.
    pub line: Option<u64>,
    /// What is wrong.
    pub code: LineErrorCode,
    /// A sentence for people.
    pub message: String,
}

impl LineError {
    fn at(line: u64, code: LineErrorCode, message: impl Into<String>) -> Self {
        Self {
            line: Some(line),
            code,
            message: message.into(),
        }
    }
}

/// The endpoints a line's `url` may name unless configured otherwise.
pub const DEFAULT_ENDPOINTS: &[&str] = &[
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/moderations",
];

/// Limits and rules that uploads are checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestLimits {
    /// The longest accepted line, in bytes, without its line ending.
    pub max_line_bytes: usize,
    /// The largest accepted file, in bytes.
    pub max_file_bytes: u64,
    /// How many line errors are kept with the file (all are counted).
    pub max_kept_errors: usize,
    /// The `url` values a line may have.
    pub endpoints: Vec<String>,
    /// How many custom_id fingerprints an upload keeps in memory to find
    /// duplicates itself (about 5 bytes each); later lines are checked by
    /// the database, which is slower, and stored twice.
    pub max_fingerprints: usize,
}

impl Default for IngestLimits {
    fn default() -> Self {
        Self {
            max_line_bytes: 16 << 20,
            max_file_bytes: 4 << 30,
            max_kept_errors: 1000,
            endpoints: DEFAULT_ENDPOINTS.iter().map(|s| s.to_string()).collect(),
            // At most about 40 MiB: eight million lines, a 4 GB file of
            // 500-byte lines.
            max_fingerprints: 1 << 23,
        }
    }
}

/// A file as stored. Output and error files are virtual: their lines come
/// from the batch's requests when they are downloaded.
#[derive(Debug, Clone, PartialEq)]
pub struct File {
    /// The file's id.
    pub id: FileId,
    /// Who owns it ("" when auth is off).
    pub owner: String,
    /// The name it was uploaded with.
    pub filename: String,
    /// OpenAI's purpose word.
    pub purpose: FilePurpose,
    /// Input, output or error.
    pub kind: FileKind,
    /// For output and error files, their batch.
    pub batch_id: Option<BatchId>,
    /// Size in bytes (for virtual files, what has been produced so far).
    pub bytes: i64,
    /// Lines that parsed into request templates.
    pub template_count: i64,
    /// Lines that were refused.
    pub error_count: i64,
    /// The first refused lines, in line order (at most `max_kept_errors`).
    pub errors: Vec<LineError>,
    /// The distinct `url`s of the valid lines, sorted.
    pub urls: Vec<String>,
    /// When it was uploaded.
    pub created_at: DateTime<Utc>,
    /// When it may be deleted.
    pub expires_at: Option<DateTime<Utc>>,
}

/// One line cut from a stream, before parsing.
#[derive(Debug, PartialEq, Eq)]
pub enum RawLine<'a> {
    /// A non-blank line without its line ending.
    Line {
        /// 1-based line number.
        number: u64,
        /// Where `bytes` starts in the stream (after a BOM, if any).
        offset: u64,
        /// The line's bytes.
        bytes: &'a [u8],
    },
    /// A line longer than the limit; its bytes were dropped as they came.
    TooLong {
        /// 1-based line number.
        number: u64,
        /// How long it was.
        len: u64,
    },
}

/// The UTF-8 byte order mark, dropped from the start of a file.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Cuts a byte stream into numbered lines. Holds at most one partial line of
/// at most `max_line_bytes`, so memory stays bounded whatever the input.
/// Accepts LF and CRLF endings, skips blank lines, drops a leading BOM.
#[derive(Debug)]
pub struct LineSplitter {
    carry: Vec<u8>,
    max_line: usize,
    line_no: u64,
    /// Bytes pushed so far.
    consumed: u64,
    /// Where the current, unfinished line starts in the stream.
    line_start: u64,
    /// While dropping an over-long line: how many bytes of it were seen, and
    /// whether the last of them was a CR (not counted if a LF follows).
    skipping: Option<(u64, bool)>,
}

impl LineSplitter {
    /// A splitter refusing lines longer than `max_line_bytes`.
    pub fn new(max_line_bytes: usize) -> Self {
        Self {
            carry: Vec::new(),
            max_line: max_line_bytes,
            line_no: 0,
            consumed: 0,
            line_start: 0,
            skipping: None,
        }
    }

    /// How many lines (blank ones included) have been cut so far.
    pub fn lines_seen(&self) -> u64 {
        self.line_no
    }

    /// Where the bytes that may still end up in a [`RawLine::Line`] start:
    /// every byte before it has been given to `f` or will never be.
    pub fn pending_start(&self) -> u64 {
        if self.skipping.is_some() {
            self.consumed
        } else {
            self.line_start
        }
    }

    /// Feeds the next chunk; calls `f` for every line it completes.
    pub fn push(&mut self, chunk: &[u8], mut f: impl FnMut(RawLine<'_>)) {
        let base = self.consumed;
        self.consumed += chunk.len() as u64;
        let mut rest = chunk;
        while let Some(i) = memchr::memchr(b'\n', rest) {
            let at = base + (chunk.len() - rest.len()) as u64;
            let part = &rest[..i];
            rest = &rest[i + 1..];
            self.line_no += 1;
            let start = std::mem::replace(&mut self.line_start, at + i as u64 + 1);
            if let Some((seen, cr)) = self.skipping.take() {
                let cr = part.last().map_or(cr, |&b| b == b'\r');
                f(RawLine::TooLong {
                    number: self.line_no,
                    len: seen + part.len() as u64 - u64::from(cr),
                });
            } else if self.carry.is_empty() {
                self.emit(part, start, &mut f);
            } else if self.carry.len() + part.len() > self.room(self.line_no) {
                let last = part.last().or(self.carry.last());
                let cr = u64::from(last == Some(&b'\r'));
                let bom = self.bom_len(self.line_no, &self.carry, part);
                let len = (self.carry.len() + part.len()) as u64 - cr - bom;
                self.carry.clear();
                f(RawLine::TooLong {
                    number: self.line_no,
                    len,
                });
            } else {
                let mut line = std::mem::take(&mut self.carry);
                line.extend_from_slice(part);
                self.emit(&line, start, &mut f);
                line.clear();
                self.carry = line;
            }
        }
        if let Some((seen, cr)) = self.skipping.as_mut() {
            *seen += rest.len() as u64;
            *cr = rest.last().map_or(*cr, |&b| b == b'\r');
        } else if self.carry.len() + rest.len() > self.room(self.line_no + 1) {
            let last = rest.last().or(self.carry.last());
            let seen = (self.carry.len() + rest.len()) as u64
                - self.bom_len(self.line_no + 1, &self.carry, rest);
            self.skipping = Some((seen, last == Some(&b'\r')));
            self.carry = Vec::new();
        } else {
            self.carry.extend_from_slice(rest);
        }
    }

    /// Ends the stream: a last line without a newline is still a line.
    pub fn finish(&mut self, mut f: impl FnMut(RawLine<'_>)) {
        if let Some((seen, cr)) = self.skipping.take() {
            self.line_no += 1;
            // A last CR is stripped as `emit` strips it from a line that fits.
            f(RawLine::TooLong {
                number: self.line_no,
                len: seen - u64::from(cr),
            });
        } else if !self.carry.is_empty() {
            self.line_no += 1;
            let line = std::mem::take(&mut self.carry);
            self.emit(&line, self.line_start, &mut f);
        }
        self.line_start = self.consumed;
    }

    /// The bytes of a BOM opening line `number`, whose bytes so far are
    /// `head` then `tail`: 3 on line 1 if it starts with one, else 0. A
    /// line's length never counts them, however the line was cut.
    fn bom_len(&self, number: u64, head: &[u8], tail: &[u8]) -> u64 {
        let bom = number == 1 && head.iter().chain(tail).take(3).eq(BOM.iter());
        if bom { 3 } else { 0 }
    }

    /// The most bytes line `number` may hold before its ending is seen: the
    /// limit, plus a CR that a CRLF ending will strip, plus a BOM on line 1
    /// (`emit` strips both, then checks the limit exactly).
    fn room(&self, number: u64) -> usize {
        let bom = if number == 1 { 3 } else { 0 };
        self.max_line + 1 + bom
    }

    fn emit(&self, mut line: &[u8], mut offset: u64, f: &mut impl FnMut(RawLine<'_>)) {
        if let Some(stripped) = line.strip_suffix(b"\r") {
            line = stripped;
        }
        if self.line_no == 1
            && let Some(stripped) = line.strip_prefix(BOM)
        {
            line = stripped;
            offset += 3;
        }
        if line.len() > self.max_line {
            f(RawLine::TooLong {
                number: self.line_no,
                len: line.len() as u64,
            });
        } else if !line.iter().all(u8::is_ascii_whitespace) {
            f(RawLine::Line {
                number: self.line_no,
                offset,
                bytes: line,
            });
        }
    }
}

/// One valid line, borrowed from its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedLine<'a> {
    /// The caller's id, unique within the file.
    pub custom_id: Cow<'a, str>,
    /// The endpoint path, e.g. `/v1/chat/completions`.
    pub url: Cow<'a, str>,
    /// The request body exactly as written in the line (a JSON object).
    pub body: &'a str,
    /// `body.model`.
    pub model: Cow<'a, str>,
}

#[derive(Deserialize)]
struct LineFields<'a> {
    #[serde(borrow, default)]
    custom_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    method: Option<&'a RawValue>,
    #[serde(borrow, default)]
    url: Option<&'a RawValue>,
    #[serde(borrow, default)]
    body: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct BodyFields<'a> {
    #[serde(borrow, default)]
    model: Option<&'a RawValue>,
}

/// A JSON string value, or `None` when the value is not a string.
/// Borrows when the string has no escapes, which is nearly always.
fn as_str(raw: Option<&RawValue>) -> Option<Cow<'_, str>> {
    let text = raw?.get();
    match serde_json::from_str::<&str>(text) {
        Ok(s) => Some(Cow::Borrowed(s)),
        Err(_) => serde_json::from_str::<String>(text).ok().map(Cow::Owned),
    }
}

/// Checks one line against the rules of SPEC §4. Duplicate custom ids are a
/// property of the whole file and are found by the store, not here.
pub fn parse_line<'a>(
    number: u64,
    bytes: &'a [u8],
    endpoints: &[String],
) -> Result<ParsedLine<'a>, LineError> {
    use LineErrorCode::*;
    let text = std::str::from_utf8(bytes).map_err(|e| {
        LineError::at(
            number,
            InvalidUtf8,
            format!(
                "line is not valid UTF-8 (bad byte at offset {})",
                e.valid_up_to()
            ),
        )
    })?;
    // serde would read a JSON array as a struct too, so insist on an object first.
    if !text.trim_start().starts_with('{') {
        return Err(LineError::at(
            number,
            InvalidJsonLine,
            "line is not a JSON object",
        ));
    }
    let fields: LineFields<'a> = serde_json::from_str(text).map_err(|e| {
        LineError::at(
            number,
            InvalidJsonLine,
            format!("line is not valid JSON: {e}"),
        )
    })?;
    let custom_id = match as_str(fields.custom_id) {
        // Text columns refuse NUL: refused here, by line, not by the database.
        Some(id) if id.contains('\0') => {
            return Err(LineError::at(
                number,
                InvalidCustomId,
                "custom_id contains a NUL character (\\u0000)",
            ));
        }
        Some(id) if !id.is_empty() => id,
        Some(_) => return Err(LineError::at(number, MissingCustomId, "custom_id is empty")),
        None if fields.custom_id.is_some_and(|r| r.get() != "null") => {
            return Err(LineError::at(
                number,
                MissingCustomId,
                "custom_id must be a string",
            ));
        }
        None => {
            return Err(LineError::at(
                number,
                MissingCustomId,
                "custom_id is missing",
            ));
        }
    };
    match as_str(fields.method) {
        Some(m) if m == "POST" => {}
        Some(m) => {
            return Err(LineError::at(
                number,
                InvalidMethod,
                format!("method must be POST, not {m:?}"),
            ));
        }
        None => {
            return Err(LineError::at(
                number,
                InvalidMethod,
                "method is missing or not a string; it must be POST",
            ));
        }
    }
    let url = match as_str(fields.url) {
        Some(u) if endpoints.iter().any(|e| *e == u) => u,
        Some(u) => {
            return Err(LineError::at(
                number,
                InvalidUrl,
                format!(
                    "url {u:?} is not an allowed endpoint ({})",
                    endpoints.join(", ")
                ),
            ));
        }
        None => {
            return Err(LineError::at(
                number,
                InvalidUrl,
                "url is missing or not a string",
            ));
        }
    };
    let body = match fields.body {
        Some(raw) if raw.get().starts_with('{') => raw.get(),
        Some(_) => {
            return Err(LineError::at(
                number,
                InvalidBody,
                "body must be a JSON object",
            ));
        }
        None => return Err(LineError::at(number, InvalidBody, "body is missing")),
    };
    // The body is a valid object already, so only the type of `model` can fail here.
    let model_raw = serde_json::from_str::<BodyFields<'a>>(body)
        .ok()
        .and_then(|b| b.model);
    let model = match as_str(model_raw) {
        Some(m) if m.contains('\0') => {
            return Err(LineError::at(
                number,
                InvalidModel,
                "body.model contains a NUL character (\\u0000)",
            ));
        }
        Some(m) if !m.is_empty() => m,
        Some(_) => return Err(LineError::at(number, MissingModel, "body.model is empty")),
        None if model_raw.is_some_and(|r| r.get() != "null") => {
            return Err(LineError::at(
                number,
                MissingModel,
                "body.model must be a string",
            ));
        }
        None => return Err(LineError::at(number, MissingModel, "body.model is missing")),
    };
    Ok(ParsedLine {
        custom_id,
        url,
        body,
        model,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints() -> Vec<String> {
        IngestLimits::default().endpoints
    }

    fn split(input: &[u8], max: usize, chunk: usize) -> Vec<(u64, Result<String, u64>)> {
        let mut out = Vec::new();
        let mut s = LineSplitter::new(max);
        let mut collect = |l: RawLine<'_>| match l {
            RawLine::Line {
                number,
                offset,
                bytes,
            } => {
                // The offset points at the line's bytes in the whole input.
                let at = offset as usize;
                assert_eq!(&input[at..at + bytes.len()], bytes, "line {number}");
                out.push((number, Ok(String::from_utf8_lossy(bytes).into_owned())))
            }
            RawLine::TooLong { number, len } => out.push((number, Err(len))),
        };
        for c in input.chunks(chunk.max(1)) {
            s.push(c, &mut collect);
        }
        s.finish(&mut collect);
        out
    }

    #[test]
    fn splitter_handles_endings_blanks_and_bom_at_any_chunk_size() {
        let input = b"\xEF\xBB\xBFa\r\n\r\n  \nbb\ncc";
        let want = vec![
            (1, Ok("a".into())),
            (4, Ok("bb".into())),
            (5, Ok("cc".into())),
        ];
        for chunk in 1..input.len() + 1 {
            assert_eq!(split(input, 10, chunk), want, "chunk {chunk}");
        }
    }

    #[test]
    fn splitter_drops_long_lines_and_keeps_counting() {
        let input = b"ok\n0123456789ABC\r\nfine\n0123456789ABCDEF";
        let want = vec![
            (1, Ok("ok".into())),
            (2, Err(13)),
            (3, Ok("fine".into())),
            (4, Err(16)),
        ];
        for chunk in 1..input.len() + 1 {
            assert_eq!(split(input, 10, chunk), want, "chunk {chunk}");
        }
    }

    #[test]
    fn splitter_accepts_a_line_of_exactly_the_limit_with_crlf() {
        for chunk in 1..16 {
            assert_eq!(
                split(b"0123456789\r\nx", 10, chunk),
                vec![(1, Ok("0123456789".into())), (2, Ok("x".into()))]
            );
        }
    }

    #[test]
    fn a_long_first_line_after_a_bom_has_one_length_at_any_chunk_size() {
        // Found by tests/prop_parsers.rs: dropped while streaming, the line
        // counted the BOM (13), and whole it did not (10).
        let input = b"\xEF\xBB\xBF0123456789\nok";
        for chunk in 1..input.len() + 1 {
            assert_eq!(
                split(input, 8, chunk),
                vec![(1, Err(10)), (2, Ok("ok".into()))],
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn a_long_last_line_does_not_count_a_final_cr() {
        // Found by tests/prop_parsers.rs: a line that fits loses a final CR
        // without a LF, and one over the limit counted it.
        for chunk in 1..12 {
            assert_eq!(split(b"0123456789\r", 4, chunk), vec![(1, Err(10))]);
            assert_eq!(split(b"0123\r", 4, chunk), vec![(1, Ok("0123".into()))]);
        }
    }

    fn line(custom_id: &str, rest: &str) -> String {
        format!(r#"{{"custom_id":{custom_id},{rest}}}"#)
    }

    const GOOD_REST: &str =
        r#""method":"POST","url":"/v1/chat/completions","body":{"model":"m1","messages":[]}"#;

    #[test]
    fn a_good_line_borrows_its_parts() {
        let text = line(r#""req-1""#, GOOD_REST);
        let p = parse_line(1, text.as_bytes(), &endpoints()).unwrap();
        assert_eq!(p.custom_id, "req-1");
        assert_eq!(p.url, "/v1/chat/completions");
        assert_eq!(p.body, r#"{"model":"m1","messages":[]}"#);
        assert_eq!(p.model, "m1");
        assert!(matches!(p.custom_id, Cow::Borrowed(_)));
    }

    #[test]
    fn escaped_strings_are_unescaped() {
        let text = line(r#""a\"b""#, GOOD_REST);
        let p = parse_line(1, text.as_bytes(), &endpoints()).unwrap();
        assert_eq!(p.custom_id, "a\"b");
    }

    fn code_of(text: &str) -> LineErrorCode {
        let e = parse_line(7, text.as_bytes(), &endpoints()).unwrap_err();
        assert_eq!(e.line, Some(7));
        e.code
    }

    #[test]
    fn each_rule_has_its_code() {
        use LineErrorCode::*;
        let cases: &[(&str, LineErrorCode)] = &[
            ("not json", InvalidJsonLine),
            ("[1,2]", InvalidJsonLine),
            (r#"{"custom_id":"a""#, InvalidJsonLine),
            (
                r#"{"method":"POST","url":"/v1/chat/completions","body":{"model":"m"}}"#,
                MissingCustomId,
            ),
            (&line("null", GOOD_REST), MissingCustomId),
            (&line("12", GOOD_REST), MissingCustomId),
            (&line(r#""""#, GOOD_REST), MissingCustomId),
            (&line(r#""a\u0000b""#, GOOD_REST), InvalidCustomId),
            (
                &line(
                    r#""a""#,
                    r#""method":"POST","url":"/v1/chat/completions","body":{"model":"m\u0000"}"#,
                ),
                InvalidModel,
            ),
            (
                &line(
                    r#""a""#,
                    r#""method":"GET","url":"/v1/chat/completions","body":{"model":"m"}"#,
                ),
                InvalidMethod,
            ),
            (
                &line(
                    r#""a""#,
                    r#""url":"/v1/chat/completions","body":{"model":"m"}"#,
                ),
                InvalidMethod,
            ),
            (
                &line(
                    r#""a""#,
                    r#""method":"POST","url":"/v1/other","body":{"model":"m"}"#,
                ),
                InvalidUrl,
            ),
            (
                &line(r#""a""#, r#""method":"POST","body":{"model":"m"}"#),
                InvalidUrl,
            ),
            (
                &line(
                    r#""a""#,
                    r#""method":"POST","url":"/v1/chat/completions","body":"x""#,
                ),
                InvalidBody,
            ),
            (
                &line(r#""a""#, r#""method":"POST","url":"/v1/chat/completions""#),
                InvalidBody,
            ),
            (
                &line(
                    r#""a""#,
                    r#""method":"POST","url":"/v1/chat/completions","body":{}"#,
                ),
                MissingModel,
            ),
            (
                &line(
                    r#""a""#,
                    r#""method":"POST","url":"/v1/chat/completions","body":{"model":5}"#,
                ),
                MissingModel,
            ),
            (
                &line(
                    r#""a""#,
                    r#""method":"POST","url":"/v1/chat/completions","body":{"model":""}"#,
                ),
                MissingModel,
            ),
        ];
        for (text, code) in cases {
            assert_eq!(code_of(text), *code, "{text}");
        }
        let bad_utf8 = b"{\"custom_id\":\"\xff\"}";
        assert_eq!(
            parse_line(3, bad_utf8, &endpoints()).unwrap_err().code,
            InvalidUtf8
        );
    }
}
