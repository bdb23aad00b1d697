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
mod tests {
    use super::*;
    use serde_json::json;

    fn events(chunks: &[&[u8]]) -> Vec<String> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, &mut |d| out.push(String::from_utf8(d.to_vec()).unwrap()));
        }
        p.finish(&mut |d| out.push(String::from_utf8(d.to_vec()).unwrap()));
        out
    }

    /// Every way of cutting `text` in two, and one byte at a time.
    fn all_splits(text: &[u8]) -> Vec<Vec<&[u8]>> {
        let mut v: Vec<Vec<&[u8]>> = (0..=text.len())
            .map(|i| vec![&text[..i], &text[i..]])
            .collect();
        v.push(text.chunks(1).collect());
        v
    }

    #[test]
    fn parser_basic_events() {
        assert_eq!(
            events(&[b"data: a\n\ndata: b\n\n"]),
            vec!["a".to_owned(), "b".to_owned()]
        );
        // No space after the colon, and a value that holds colons.
        assert_eq!(events(&[b"data:{\"a\":1}\n\n"]), vec!["{\"a\":1}"]);
        // Only one leading space is removed.
        assert_eq!(events(&[b"data:  x\n\n"]), vec![" x"]);
        // A field without a colon is a field with an empty value.
        assert_eq!(events(&[b"data\n\n"]), vec![""]);
    }

    #[test]
    fn parser_multi_line_data_and_other_fields() {
        assert_eq!(
            events(&[b"event: message\nid: 7\nretry: 100\ndata: one\ndata: two\n\n"]),
            vec!["one\ntwo"]
        );
    }

    #[test]
    fn parser_ignores_comments_and_empty_events() {
        assert_eq!(
            events(&[b": keepalive\n\n:\n\nevent: ping\n\ndata: x\n\n: bye\n\n"]),
            vec!["x"]
        );
    }

    #[test]
    fn parser_line_endings() {
        assert_eq!(
            events(&[b"data: a\r\n\r\ndata: b\r\rdata: c\n\n"]),
            vec!["a", "b", "c"]
        );
    }

    #[test]
    fn parser_cr_lf_split_across_chunks_is_one_line_end() {
        assert_eq!(
            events(&[b"data: a\r", b"\n\r", b"\ndata: b\r\n\r\n"]),
            vec!["a", "b"]
        );
    }

    #[test]
    fn parser_events_split_anywhere() {
        let text: &[u8] = b": hi\r\ndata: {\"x\": 1}\r\n\r\ndata: l1\ndata: l2\n\ndata: [DONE]\n\n";
        for split in all_splits(text) {
            assert_eq!(
                events(&split),
                vec!["{\"x\": 1}", "l1\nl2", "[DONE]"],
                "split {split:?}"
            );
        }
    }

    #[test]
    fn parser_hands_out_a_last_event_without_blank_line() {
        assert_eq!(events(&[b"data: a\n\ndata: [DONE]"]), vec!["a", "[DONE]"]);
        assert_eq!(events(&[b"data: a\n\ndata: [DONE]\n"]), vec!["a", "[DONE]"]);
    }

    #[test]
    fn parser_strips_a_bom_and_reports_pending() {
        assert_eq!(events(&[b"\xEF\xBB\xBFdata: a\n\n"]), vec!["a"]);
        let mut p = SseParser::new();
        p.feed(b"data: abc", &mut |_| panic!("not complete"));
        assert_eq!(p.pending_len(), 9);
        p.feed(b"\n", &mut |_| panic!("not complete"));
        assert_eq!(p.pending_len(), 4);
    }

    #[test]
    fn parser_strips_a_bom_cut_across_chunks() {
        // Found by tests/prop_parsers.rs: a BOM split over two reads was
        // kept, and the first event lost.
        let text = b"\xEF\xBB\xBFdata: a\n\n";
        for split in all_splits(text) {
            assert_eq!(events(&split), vec!["a"], "split {split:?}");
        }
        assert_eq!(events(&[b"", b"\xEF", b"\xBB\xBFdata: a\n\n"]), vec!["a"]);
    }

    #[test]
    fn parser_keeps_a_cr_lf_together_across_an_empty_read() {
        // Found by tests/prop_parsers.rs: an empty read between the CR and
        // the LF made them two line ends, and so ended the event early.
        assert_eq!(events(&[b"data: a\r", b"", b"\ndata: b\n\n"]), vec!["a\nb"]);
    }

    fn sse(events: &[Value]) -> String {
        let mut s = String::from(": connected\n\n");
        for e in events {
            s.push_str(&format!("data: {e}\n\n"));
        }
        s.push_str("data: [DONE]\n\n");
        s
    }

    fn parsed(r: Result<String, StreamEnd>) -> Value {
        serde_json::from_str(&r.expect("an answer")).unwrap()
    }

    fn chunk(choices: Value) -> Value {
        json!({
            "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1700000000,
            "model": "m", "system_fingerprint": "fp_1", "choices": choices
        })
    }

    #[test]
    fn chat_content_is_concatenated() {
        let text = sse(&[
            chunk(
                json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]),
            ),
            chunk(json!([{"index": 0, "delta": {"content": "Hel"}, "finish_reason": null}])),
            chunk(json!([{"index": 0, "delta": {"content": "lo ✓"}, "finish_reason": null}])),
            chunk(json!([{"index": 0, "delta": {}, "finish_reason": "stop"}])),
            {
                let mut u = chunk(json!([]));
                u["usage"] = json!({"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5});
                u
            },
        ]);
        let want = json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1700000000,
            "model": "m", "system_fingerprint": "fp_1",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello ✓"},
                         "finish_reason": "stop", "logprobs": null}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
        });
        for split in all_splits(text.as_bytes()) {
            assert_eq!(parsed(reassemble(split)), want);
        }
    }

    #[test]
    fn chat_tool_calls_are_merged_by_index() {
        let text = sse(&[
            chunk(
                json!([{"index": 0, "delta": {"role": "assistant", "content": null,
                "tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                                "function": {"name": "get_weather", "arguments": ""}}]}}]),
            ),
            chunk(json!([{"index": 0, "delta": {"tool_calls": [
                {"index": 0, "function": {"arguments": "{\"city\":"}}]}}])),
            chunk(json!([{"index": 0, "delta": {"tool_calls": [
                {"index": 1, "id": "call_b", "type": "function",
                 "function": {"name": "get_time", "arguments": "{}"}}]}}])),
            // Some servers repeat id and type in every delta: they are set, not joined.
            chunk(json!([{"index": 0, "delta": {"tool_calls": [
                {"index": 0, "id": "call_a", "type": "function",
                 "function": {"arguments": "\"Paris\"}"}}]}}])),
            chunk(json!([{"index": 0, "delta": {}, "finish_reason": "tool_calls"}])),
        ]);
        let got = parsed(reassemble([text.as_bytes()]));
        assert_eq!(
            got["choices"][0],
            json!({
                "index": 0, "finish_reason": "tool_calls", "logprobs": null,
                "message": {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_a", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "call_b", "type": "function",
                     "function": {"name": "get_time", "arguments": "{}"}}
                ]}
            })
        );
        assert!(got.get("usage").is_none());
    }

    #[test]
    fn chat_several_choices_refusal_reasoning_and_logprobs() {
        let lp = |t: &str| json!({"content": [{"token": t, "logprob": -0.1}], "refusal": null});
        let text = sse(&[
            chunk(json!([
                {"index": 1, "delta": {"role": "assistant", "content": "B"}, "logprobs": lp("B")},
                {"index": 0, "delta": {"role": "assistant", "reasoning_content": "think"}, "logprobs": lp("x")},
            ])),
            chunk(json!([
                {"index": 0, "delta": {"reasoning_content": "ing", "content": "A"}, "logprobs": lp("A")},
                {"index": 1, "delta": {"refusal": "no"}, "finish_reason": "stop"},
            ])),
            chunk(json!([{"index": 0, "delta": {}, "finish_reason": "length", "stop_reason": 7}])),
        ]);
        let got = parsed(reassemble([text.as_bytes()]));
        assert_eq!(
            got["choices"],
            json!([
                {"index": 0, "finish_reason": "length", "stop_reason": 7,
                 "message": {"role": "assistant", "content": "A", "reasoning_content": "thinking"},
                 "logprobs": {"content": [{"token": "x", "logprob": -0.1}, {"token": "A", "logprob": -0.1}]}},
                {"index": 1, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": "B", "refusal": "no"},
                 "logprobs": {"content": [{"token": "B", "logprob": -0.1}]}},
            ])
        );
    }

    #[test]
    fn text_completions_are_concatenated() {
        let c = |choices: Value| {
            json!({"id": "cmpl-1", "object": "text_completion", "created": 5, "model": "m",
                   "choices": choices})
        };
        let text = sse(&[
            c(
                json!([{"index": 0, "text": "Once", "logprobs": null, "finish_reason": null},
                     {"index": 1, "text": "A", "logprobs": null, "finish_reason": null}]),
            ),
            c(
                json!([{"index": 0, "text": " upon", "logprobs": null, "finish_reason": "length"},
                     {"index": 1, "text": "B", "logprobs": null, "finish_reason": "stop"}]),
            ),
            {
                let mut u = c(json!([]));
                u["usage"] = json!({"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4});
                u
            },
        ]);
        assert_eq!(
            parsed(reassemble([text.as_bytes()])),
            json!({
                "id": "cmpl-1", "object": "text_completion", "created": 5, "model": "m",
                "choices": [
                    {"index": 0, "text": "Once upon", "finish_reason": "length", "logprobs": null},
                    {"index": 1, "text": "AB", "finish_reason": "stop", "logprobs": null},
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}
            })
        );
    }

    #[test]
    fn responses_api_returns_the_completed_response() {
        let final_response = json!({"id": "resp_1", "object": "response", "status": "completed",
                                    "output": [{"type": "message", "content": [{"type": "output_text", "text": "Hi"}]}],
                                    "usage": {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2}});
        let mut text = String::new();
        for e in [
            json!({"type": "response.created", "response": {"id": "resp_1", "status": "in_progress"}}),
            json!({"type": "response.output_text.delta", "delta": "Hi"}),
            json!({"type": "response.completed", "response": final_response}),
        ] {
            let ty = e["type"].as_str().unwrap().to_owned();
            text.push_str(&format!("event: {ty}\ndata: {e}\n\n"));
        }
        for split in all_splits(text.as_bytes()) {
            assert_eq!(parsed(reassemble(split)), final_response);
        }
        // Without the final event, there is no answer.
        let cut = &text[..text.find("event: response.completed").unwrap()];
        assert!(matches!(
            reassemble([cut.as_bytes()]),
            Err(StreamEnd::Incomplete(_))
        ));
    }

    #[test]
    fn an_error_event_is_reported() {
        let text = sse(&[
            chunk(json!([{"index": 0, "delta": {"content": "x"}}])),
            json!({"error": {"message": "overloaded", "type": "server_error"}}),
        ]);
        match reassemble([text.as_bytes()]) {
            Err(StreamEnd::UpstreamError(body)) => assert!(body.contains("overloaded")),
            other => panic!("{other:?}"),
        }
        let text = "data: {\"type\":\"error\",\"code\":\"x\",\"message\":\"bad\"}\n\n";
        assert!(matches!(
            reassemble([text.as_bytes()]),
            Err(StreamEnd::UpstreamError(_))
        ));
    }

    #[test]
    fn truncated_or_empty_streams_give_no_answer() {
        let cut = format!(
            "data: {}\n\n",
            chunk(json!([{"index": 0, "delta": {"content": "x"}}]))
        );
        assert!(matches!(
            reassemble([cut.as_bytes()]),
            Err(StreamEnd::Incomplete(_))
        ));
        assert!(matches!(
            reassemble([&b"data: [DONE]\n\n"[..]]),
            Err(StreamEnd::Incomplete(_))
        ));
        assert!(matches!(
            reassemble([&b": only a comment\n\n"[..]]),
            Err(StreamEnd::Incomplete(_))
        ));
        // A finish_reason without [DONE] is enough.
        let ended = format!(
            "data: {}\n\n",
            chunk(json!([{"index": 0, "delta": {"content": "x"}, "finish_reason": "stop"}]))
        );
        assert_eq!(
            parsed(reassemble([ended.as_bytes()]))["choices"][0]["message"]["content"],
            "x"
        );
    }

    #[test]
    fn events_after_done_and_non_json_events_are_ignored() {
        let text = format!(
            "data: not json\n\ndata: {}\n\ndata: [DONE]\n\ndata: {}\n\n",
            chunk(json!([{"index": 0, "delta": {"content": "a"}}])),
            chunk(json!([{"index": 0, "delta": {"content": "b"}}])),
        );
        assert_eq!(
            parsed(reassemble([text.as_bytes()]))["choices"][0]["message"]["content"],
            "a"
        );
    }

    #[test]
    fn size_grows_with_the_content() {
        let mut r = Reassembler::new();
        r.event(
            chunk(json!([{"index": 0, "delta": {"content": "x".repeat(1000)}}]))
                .to_string()
                .as_bytes(),
        );
        assert!(r.approx_size() >= 1000);
        assert!(!r.is_done());
        r.event(b"[DONE]");
        assert!(r.is_done());
    }
}
