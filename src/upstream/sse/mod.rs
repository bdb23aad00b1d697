//! Server-sent events: an incremental parser over byte chunks, and the
//! reassembly of a streamed OpenAI answer into the shape the same call would
//! have had without `"stream": true`.
//!
//! Both are pure: the client feeds them the chunks as they arrive.
//!
//! - `chat.completion.chunk` events become one `chat.completion` object:
//!   string deltas (`content`, `refusal`, `reasoning_content`, ...) are
//!   concatenated per choice, `tool_calls` are merged by their `index`
//!   (`function.arguments` concatenated), `logprobs` arrays are joined, and
//!   the `usage` of the final chunk is kept.
//! - `text_completion` events (`/v1/completions`) become one
//!   `text_completion` object with each choice's `text` concatenated.
//! - Responses API events: the `response` of `response.completed` (or
//!   `response.incomplete` / `response.failed`) is the answer.
//! - An `error` event is reported as [`StreamEnd::UpstreamError`].

use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Incremental SSE parser: feed it chunks split anywhere, and it hands out
/// the `data` of each complete event (multi-line data joined with `\n`).
/// Comments (`: keepalive`) and the `event`, `id` and `retry` fields are
/// ignored.
#[derive(Debug, Default)]
pub struct SseParser {
    /// The unfinished line carried over from the previous chunk.
    line: Vec<u8>,
    /// The data of the event being built, each line followed by `\n`.
    data: Vec<u8>,
    has_data: bool,
    /// The previous chunk ended in `\r`: a `\n` opening the next one belongs to it.
    after_cr: bool,
    /// The first line, which may open with a BOM, is done: the BOM is
    /// stripped from the whole line, since it may come cut across chunks.
    past_first_line: bool,
}

impl SseParser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one chunk; `on_data` receives each event completed by it.
    pub fn feed(&mut self, mut chunk: &[u8], on_data: &mut impl FnMut(&[u8])) {
        // An empty read says nothing about the byte after a CR.
        if self.after_cr && !chunk.is_empty() {
            self.after_cr = false;
            chunk = chunk.strip_prefix(b"\n").unwrap_or(chunk);
        }
        while let Some(i) = memchr::memchr2(b'\n', b'\r', chunk) {
            if self.line.is_empty() {
                self.line_done(&chunk[..i], on_data);
            } else {
                self.line.extend_from_slice(&chunk[..i]);
                let line = std::mem::take(&mut self.line);
                self.line_done(&line, on_data);
                self.line = line;
                self.line.clear();
            }
            if chunk[i] == b'\r' {
                match chunk.get(i + 1) {
                    Some(b'\n') => chunk = &chunk[i + 2..],
                    Some(_) => chunk = &chunk[i + 1..],
                    None => {
                        self.after_cr = true;
                        chunk = &[];
                    }
                }
            } else {
                chunk = &chunk[i + 1..];
            }
        }
        self.line.extend_from_slice(chunk);
    }

    /// Ends the stream: an event left without its closing blank line is
    /// still handed out (lenient with servers that stop right after it).
    pub fn finish(&mut self, on_data: &mut impl FnMut(&[u8])) {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.line_done(&line, on_data);
        }
        self.dispatch(on_data);
    }

    /// Bytes held for an unfinished event, to cap memory.
    pub fn pending_len(&self) -> usize {
        self.line.len() + self.data.len()
    }

    fn line_done(&mut self, mut line: &[u8], on_data: &mut impl FnMut(&[u8])) {
        if !self.past_first_line {
            self.past_first_line = true;
            line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
        }
        if line.is_empty() {
            self.dispatch(on_data);
            return;
        }
        if line[0] == b':' {
            return; // a comment, such as a keepalive
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        if field == b"data" {
            self.data.extend_from_slice(value);
            self.data.push(b'\n');
            self.has_data = true;
        }
    }

    fn dispatch(&mut self, on_data: &mut impl FnMut(&[u8])) {
        if self.has_data {
            self.data.pop(); // the last line's `\n`
            on_data(&self.data);
        }
        self.data.clear();
        self.has_data = false;
    }
}

/// Why a stream gave no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEnd {
    /// The stream stopped before its answer was complete.
    Incomplete(&'static str),
    /// The upstream sent an error event; this is its JSON.
    UpstreamError(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Text,
    Responses,
}

/// One choice being put together.
#[derive(Debug, Default)]
struct ChoiceAcc {
    /// Choice-level fields (`finish_reason`, `text`, `stop_reason`, ...).
    fields: Map<String, Value>,
    /// The merged `delta`s (chat only).
    message: Map<String, Value>,
    /// Tool calls by their index.
    tool_calls: BTreeMap<u64, Map<String, Value>>,
    logprobs: Option<Map<String, Value>>,
}

/// Reassembles the events of one streamed answer; see the module docs.
#[derive(Debug, Default)]
pub struct Reassembler {
    kind: Option<Kind>,
    /// Top-level fields of the chunks (`id`, `created`, `model`, ...).
    top: Map<String, Value>,
    choices: BTreeMap<u64, ChoiceAcc>,
    usage: Option<Value>,
    /// The final object of a Responses API stream.
    response: Option<Value>,
    error: Option<Value>,
    done: bool,
    size: usize,
}

/// Delta fields that are set rather than concatenated: servers may repeat them.
const SET_KEYS: [&str; 5] = ["role", "id", "type", "name", "index"];

impl Reassembler {
    /// An empty reassembler.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the stream said it is over (`[DONE]` or a final response event).
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Roughly the size of the answer so far, in bytes, to cap memory.
    pub fn approx_size(&self) -> usize {
        self.size
    }

    /// Takes the data of one event. Events that are not JSON, or come after
    /// the end, are ignored.
    pub fn event(&mut self, data: &[u8]) {
        if self.done || self.error.is_some() {
            return;
        }
        let data = data.trim_ascii();
        if data == b"[DONE]" {
            self.done = true;
            return;
        }
        let Ok(Value::Object(mut event)) = serde_json::from_slice::<Value>(data) else {
            return;
        };
        let ty = event.get("type").and_then(Value::as_str);
        if ty == Some("error") || (event.contains_key("error") && !event.contains_key("choices")) {
            self.error = Some(Value::Object(event));
            return;
        }
        if let Some(ty) = ty.filter(|t| t.starts_with("response.")) {
            self.kind = Some(Kind::Responses);
            if matches!(
                ty,
                "response.completed" | "response.incomplete" | "response.failed"
            ) && let Some(response) = event.remove("response")
            {
                self.size = data.len();
                self.response = Some(response);
                self.done = true;
            }
            return;
        }
        let Some(Value::Array(choices)) = event.remove("choices") else {
            // A chunk without choices may still carry the usage.
            self.take_top(event);
            return;
        };
        if self.kind.is_none() {
            let object = event.get("object").and_then(Value::as_str);
            self.kind = Some(match object {
                Some("text_completion") => Kind::Text,
                Some("chat.completion.chunk") => Kind::Chat,
                _ if choices.iter().any(|c| c.get("text").is_some()) => Kind::Text,
                _ => Kind::Chat,
            });
        }
        for choice in choices {
            let Value::Object(choice) = choice else {
                continue;
            };
            let index = choice.get("index").and_then(Value::as_u64).unwrap_or(0);
            let acc = self.choices.entry(index).or_default();
            for (k, v) in choice {
                match k.as_str() {
                    "index" => {}
                    "delta" => {
                        if let Value::Object(delta) = v {
                            self.size += merge_delta(acc, delta);
                        }
                    }
                    "logprobs" => {
                        if let Value::Object(lp) = v {
                            self.size += merge_logprobs(acc.logprobs.get_or_insert_default(), lp);
                        }
                    }
                    "text" => {
                        if let Value::String(s) = v {
                            self.size += s.len();
                            append(&mut acc.fields, k, &s);
                        }
                    }
                    _ if v.is_null() => {}
                    _ => {
                        acc.fields.insert(k, v);
                    }
                }
            }
        }
        self.take_top(event);
    }

    fn take_top(&mut self, event: Map<String, Value>) {
        for (k, v) in event {
            match k.as_str() {
                "object" => {}
                "usage" if !v.is_null() => self.usage = Some(v),
                _ if v.is_null() => {}
                _ => {
                    self.top.insert(k, v);
                }
            }
        }
    }

    /// Ends the stream: the answer's JSON, or why there is none.
    pub fn finish(self) -> Result<String, StreamEnd> {
        if let Some(error) = self.error {
            return Err(StreamEnd::UpstreamError(error.to_string()));
        }
        let kind = match self.kind {
            Some(Kind::Responses) => {
                return match self.response {
                    Some(r) => Ok(r.to_string()),
                    None => Err(StreamEnd::Incomplete(
                        "the stream ended without a final response event",
                    )),
                };
            }
            Some(kind) => kind,
            None if self.done => {
                return Err(StreamEnd::Incomplete(
                    "the stream held no chunk before [DONE]",
                ));
            }
            None => return Err(StreamEnd::Incomplete("the stream held no chunk")),
        };
        let finished = self
            .choices
            .values()
            .any(|c| c.fields.get("finish_reason").is_some_and(|f| !f.is_null()));
        if !self.done && !finished {
            return Err(StreamEnd::Incomplete(
                "the stream ended before [DONE] or a finish_reason",
            ));
        }
        let mut out = self.top;
        out.insert(
            "object".into(),
            match kind {
                Kind::Text => "text_completion",
                _ => "chat.completion",
            }
            .into(),
        );
        let choices = self
            .choices
            .into_iter()
            .map(|(index, acc)| {
                let mut c = acc.fields;
                c.insert("index".into(), index.into());
                c.entry("finish_reason").or_insert(Value::Null);
                c.insert(
                    "logprobs".into(),
                    acc.logprobs.map_or(Value::Null, Value::Object),
                );
                if kind == Kind::Chat {
                    let mut m = acc.message;
                    m.entry("role").or_insert_with(|| "assistant".into());
                    m.entry("content").or_insert(Value::Null);
                    if !acc.tool_calls.is_empty() {
                        let calls = acc
                            .tool_calls
                            .into_values()
                            .map(|mut t| {
                                t.remove("index");
                                Value::Object(t)
                            })
                            .collect();
                        m.insert("tool_calls".into(), Value::Array(calls));
                    }
                    c.insert("message".into(), Value::Object(m));
                } else {
                    c.entry("text").or_insert_with(|| "".into());
                }
                Value::Object(c)
            })
            .collect();
        out.insert("choices".into(), Value::Array(choices));
        if let Some(usage) = self.usage {
            out.insert("usage".into(), usage);
        }
        Ok(Value::Object(out).to_string())
    }
}

/// Appends `s` to the string at `key`, creating it (or replacing a non-string).
fn append(map: &mut Map<String, Value>, key: String, s: &str) {
    match map.get_mut(&key) {
        Some(Value::String(t)) => t.push_str(s),
        _ => {
            map.insert(key, Value::String(s.to_owned()));
        }
    }
}

/// Merges one object of deltas into `target`: strings concatenated (except
/// the [`SET_KEYS`], which are set), objects merged, nulls skipped, anything
/// else set. Returns the bytes added.
fn merge_object(target: &mut Map<String, Value>, delta: Map<String, Value>) -> usize {
    let mut added = 0;
    for (k, v) in delta {
        match v {
            Value::Null => {}
            Value::String(s) if !SET_KEYS.contains(&k.as_str()) => {
                added += s.len();
                append(target, k, &s);
            }
            Value::Object(o) => match target.get_mut(&k) {
                Some(Value::Object(t)) => added += merge_object(t, o),
                _ => {
                    let mut t = Map::new();
                    added += merge_object(&mut t, o);
                    target.insert(k, Value::Object(t));
                }
            },
            v => {
                if let Value::String(s) = &v {
                    added += s.len();
                }
                target.insert(k, v);
            }
        }
    }
    added
}

fn merge_delta(acc: &mut ChoiceAcc, mut delta: Map<String, Value>) -> usize {
    let mut added = 0;
    if let Some(Value::Array(calls)) = delta.remove("tool_calls") {
        for (position, call) in calls.into_iter().enumerate() {
            let Value::Object(call) = call else { continue };
            let index = call
                .get("index")
                .and_then(Value::as_u64)
                .unwrap_or(position as u64);
            added += merge_object(acc.tool_calls.entry(index).or_default(), call);
        }
    }
    added + merge_object(&mut acc.message, delta)
}

/// Joins the arrays of `lp` onto those of `target`; sets its other values.
fn merge_logprobs(target: &mut Map<String, Value>, lp: Map<String, Value>) -> usize {
    let mut added = 0;
    for (k, v) in lp {
        match (target.get_mut(&k), v) {
            (_, Value::Null) => {}
            (Some(Value::Array(t)), Value::Array(a)) => {
                added += a.len() * 32;
                t.extend(a);
            }
            (_, v) => {
                if let Value::Array(a) = &v {
                    added += a.len() * 32;
                }
                target.insert(k, v);
            }
        }
    }
    added
}

/// Reassembles a whole stream given as chunks (a convenience over
/// [`SseParser`] and [`Reassembler`]).
pub fn reassemble<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> Result<String, StreamEnd> {
    let mut parser = SseParser::new();
    let mut r = Reassembler::new();
    for chunk in chunks {
        parser.feed(chunk, &mut |d| r.event(d));
    }
    parser.finish(&mut |d| r.event(d));
    r.finish()
}

#[cfg(test)]
mod tests;
