//! The mock's SSE answers: a `chat.completion` cut into stream events.

use bytes::Bytes;
use serde_json::{Value, json};

/// Pieces of about `n` bytes, cut at char boundaries.
fn pieces(s: &str, n: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let mut i = n.min(rest.len());
        while !rest.is_char_boundary(i) {
            i += 1;
        }
        out.push(&rest[..i]);
        rest = &rest[i..];
    }
    out
}

/// The SSE events of an answer: a `chat.completion` is cut into
/// `chat.completion.chunk` events (role, content in pieces, tool calls with
/// their arguments in pieces, finish, usage) and `[DONE]`; any other body is
/// sent as is.
pub(super) fn sse_events(body: &str) -> Vec<Bytes> {
    let Ok(Value::Object(answer)) = serde_json::from_str::<Value>(body) else {
        return vec![Bytes::copy_from_slice(body.as_bytes())];
    };
    if answer.get("object").and_then(Value::as_str) != Some("chat.completion") {
        return vec![Bytes::copy_from_slice(body.as_bytes())];
    }
    let mut head = answer.clone();
    head.remove("choices");
    head.remove("usage");
    head.insert("object".into(), "chat.completion.chunk".into());
    let chunk = |choices: Value| {
        let mut c = head.clone();
        c.insert("choices".into(), choices);
        Bytes::from(format!("data: {}\n\n", Value::Object(c)))
    };
    let mut events = vec![Bytes::from_static(b": mock keepalive\n\n")];
    let choices = answer
        .get("choices")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (position, choice) in choices.iter().enumerate() {
        let index = choice.get("index").cloned().unwrap_or(position.into());
        let message = choice.get("message").cloned().unwrap_or(Value::Null);
        let role = message.get("role").cloned().unwrap_or("assistant".into());
        events.push(chunk(
            json!([{"index": index, "delta": {"role": role, "content": ""},
                                   "logprobs": null, "finish_reason": null}]),
        ));
        if let Some(content) = message.get("content").and_then(Value::as_str) {
            for p in pieces(content, 8) {
                events.push(chunk(json!([{"index": index, "delta": {"content": p},
                                           "logprobs": null, "finish_reason": null}])));
            }
        }
        let calls = message.get("tool_calls").and_then(Value::as_array);
        for (ti, call) in calls.into_iter().flatten().enumerate() {
            let function = call.get("function").cloned().unwrap_or(Value::Null);
            events.push(chunk(json!([{"index": index, "delta": {"tool_calls": [{
                "index": ti, "id": call.get("id"), "type": "function",
                "function": {"name": function.get("name"), "arguments": ""}}]}}])));
            let args = function
                .get("arguments")
                .and_then(Value::as_str)
                .unwrap_or("");
            for p in pieces(args, 5) {
                events.push(chunk(json!([{"index": index, "delta": {"tool_calls": [{
                    "index": ti, "function": {"arguments": p}}]}}])));
            }
        }
        let finish = choice
            .get("finish_reason")
            .cloned()
            .unwrap_or("stop".into());
        events.push(chunk(
            json!([{"index": index, "delta": {}, "logprobs": null,
                                   "finish_reason": finish}]),
        ));
    }
    if let Some(usage) = answer.get("usage") {
        let mut c = head.clone();
        c.insert("choices".into(), json!([]));
        c.insert("usage".into(), usage.clone());
        events.push(Bytes::from(format!("data: {}\n\n", Value::Object(c))));
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::completion_json_at;

    #[test]
    fn sse_events_reassemble_to_the_answer() {
        let mut answer: Value = serde_json::from_str(&completion_json_at("m", 1, 2)).unwrap();
        answer["choices"][0]["message"]["tool_calls"] = json!([
            {"id": "call_1", "type": "function",
             "function": {"name": "f", "arguments": "{\"a\": \"héllo wörld\"}"}}
        ]);
        answer["choices"][0]["finish_reason"] = "tool_calls".into();
        let events = sse_events(&answer.to_string());
        assert!(events.len() > 8);
        let back = crate::upstream::sse::reassemble(events.iter().map(|b| b.as_ref())).unwrap();
        assert_eq!(serde_json::from_str::<Value>(&back).unwrap(), answer);
        // Anything else is sent as is.
        assert_eq!(sse_events("data: x\n\n"), vec![Bytes::from("data: x\n\n")]);
    }

    #[test]
    fn pieces_keep_chars_whole() {
        assert_eq!(pieces("ab✓cd", 3), vec!["ab✓", "cd"]);
        assert_eq!(pieces("", 3), Vec::<&str>::new());
    }
}
