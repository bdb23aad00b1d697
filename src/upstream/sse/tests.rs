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
