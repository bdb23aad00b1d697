//! The cache-modelling mode's answers: service times follow the
//! [`CacheModel`](super::CacheModel), answers are derived from the prompt.

use super::*;

pub(super) async fn serve(
    shared: &Shared,
    cache: &cache::PrefixCache,
    path: &str,
    bytes: &[u8],
) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(bytes) else {
        cache.refuse();
        return error(400, "the body is not JSON");
    };
    let model = body.get("model").and_then(Value::as_str).unwrap_or("");
    let counters = shared.model(model);
    let _in_flight = InFlight::enter(shared, &counters);
    shared.total.fetch_add(1, Relaxed);
    let seq = shared.seq.fetch_add(1, Relaxed);
    let answer = if path.ends_with("/embeddings") {
        let inputs: Vec<&str> = match body.get("input") {
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(a)) => {
                let texts: Vec<&str> = a.iter().filter_map(Value::as_str).collect();
                if texts.len() != a.len() {
                    cache.refuse();
                    return error(400, "every input must be a string");
                }
                texts
            }
            _ => {
                cache.refuse();
                return error(400, "input is missing");
            }
        };
        if inputs.is_empty() || inputs.iter().any(|t| t.trim().is_empty()) {
            cache.refuse();
            return error(400, "an input is empty");
        }
        let due = cache.serve_embeddings(inputs.len());
        if wait(shared, due).await.is_err() {
            return plain(StatusCode::SERVICE_UNAVAILABLE, "mock shutting down");
        }
        let tokens: usize = inputs.iter().map(|t| t.split_whitespace().count()).sum();
        let data: Vec<Value> = inputs
            .iter()
            .enumerate()
            .map(|(i, t)| {
                serde_json::json!({"object": "embedding", "index": i,
                                   "embedding": cache::embedding_for(t)})
            })
            .collect();
        serde_json::json!({"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})
    } else {
        let tokens = cache::prompt_tokens(&body);
        let (_slot, due, served) = cache.serve_completion(&tokens).await;
        if wait(shared, due).await.is_err() {
            return plain(StatusCode::SERVICE_UNAVAILABLE, "mock shutting down");
        }
        let p = served.prompt_tokens;
        serde_json::json!({
            "id": format!("chatcmpl-mock-{seq}"), "object": "chat.completion",
            "created": shared.created, "model": model, "system_fingerprint": "fp_mock",
            "choices": [{"index": 0, "message": {"role": "assistant",
                "content": cache::answer_for(&body)}, "logprobs": null,
                "finish_reason": "stop"}],
            "usage": {"prompt_tokens": p, "completion_tokens": MOCK_COMPLETION_TOKENS,
                "total_tokens": p + MOCK_COMPLETION_TOKENS,
                "prompt_tokens_details": {"cached_tokens": served.cached_tokens}}})
    };
    shared
        .last_answer
        .fetch_max(shared.nanos(Instant::now()), Relaxed);
    let mut r = json_response(answer.to_string());
    let id = HeaderValue::try_from(format!("mock-{seq}")).expect("ascii");
    r.headers_mut().insert("x-request-id", id);
    r
}

async fn wait(shared: &Shared, due: Instant) -> Result<(), ()> {
    tokio::select! {
        () = shared.alarm.until(due) => Ok(()),
        () = shared.stop.cancelled() => Err(()),
    }
}

fn error(status: u16, message: &str) -> Response {
    let body = serde_json::json!({"error": {"message": message,
        "type": "invalid_request_error", "code": null}});
    let mut r = json_response(body.to_string());
    *r.status_mut() = StatusCode::from_u16(status).expect("a valid status");
    r
}
