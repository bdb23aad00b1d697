//! Request coalescing of identical lines: identical deterministic requests
//! sent once, and single-input embeddings packed.

use super::*;
use crate::common::daemon::*;
use crate::common::{CHAT, EMBEDDINGS, jsonl, line_with, new_batch};
use fusillade::domain::batch::{Coalesced, CoalescedCounts};
use fusillade::domain::request::RequestState;
use fusillade::mock::{CacheModel, MockBehavior, MockUpstream, answer_for, embedding_for};
use fusillade::store::{ClaimedRequest, Finished, Owner};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(120);

fn chat(custom_id: &str, question: &str, temperature: f64) -> (String, Value) {
    let body = json!({"model": "m", "temperature": temperature, "messages": [
        {"role": "system", "content": "be brief"}, {"role": "user", "content": question}]});
    (line_with(custom_id, CHAT, &body.to_string()), body)
}

fn slow_cache_mock() -> MockBehavior {
    MockBehavior::with_cache(CacheModel {
        decode: Duration::from_millis(150),
        ..CacheModel::default()
    })
}

fn by_custom_id(lines: &[Value]) -> std::collections::HashMap<String, Value> {
    lines
        .iter()
        .map(|l| (l["custom_id"].as_str().unwrap().to_owned(), l.clone()))
        .collect()
}

async fn run<S: Backend>(
    store: &S,
    mock: &MockUpstream,
    lines: &[String],
    extra: &str,
) -> (Vec<Value>, Vec<Value>, fusillade::domain::batch::Batch) {
    let batch = batch_from_lines(store, lines).await;
    let cfg = config(&mock.url(), &format!("concurrency = 4\n{extra}"), "", "");
    let daemon = start(store, cfg);
    let done = finished_batch(store, batch, LONG).await;
    daemon.stop().await;
    let out = json_lines(store.output_stream(batch)).await;
    let err = json_lines(store.error_stream(batch)).await;
    let b = store.get_batch(Owner::Any, batch).await.unwrap().unwrap();
    assert_eq!(done.id, b.id);
    (out, err, b)
}

pub async fn identical_temperature_zero_lines_are_sent_once_and_each_answered<S: Backend>(
    store: &S,
) {
    let mock = MockUpstream::start(slow_cache_mock()).await;
    let mut lines = Vec::new();
    let mut bodies = Vec::new();
    for i in 0..8 {
        let (l, b) = chat(&format!("same-{i}"), "what is one?", 0.0);
        lines.push(l);
        bodies.push(b);
    }
    for i in 0..3 {
        let (l, b) = chat(&format!("other-{i}"), &format!("what is {i}0?"), 0.0);
        lines.push(l);
        bodies.push(b);
    }
    let (out, err, batch) = run(store, &mock, &lines, "").await;
    assert!(err.is_empty(), "{err:?}");
    assert_eq!(out.len(), 11);
    let stats = mock.cache_stats().unwrap();
    assert_eq!(stats.calls, 4, "8 twins sent once, 3 others once each");
    let out = by_custom_id(&out);
    let mut line_ids = HashSet::new();
    for (i, body) in bodies.iter().enumerate() {
        let id = if i < 8 {
            format!("same-{i}")
        } else {
            format!("other-{}", i - 8)
        };
        let o = &out[&id];
        assert_eq!(
            o["response"]["body"]["choices"][0]["message"]["content"],
            answer_for(body)
        );
        line_ids.insert(o["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(line_ids.len(), 11, "each line has its own id");
    // Usage counts what the upstream billed: 4 calls, not 11 answers.
    let prompt: u64 = stats.prompt_tokens;
    assert_eq!(batch.usage.input_tokens as u64, prompt, "{:?}", batch.usage);
    assert_eq!(
        batch.coalesced,
        CoalescedCounts {
            identical: 7,
            packed: 0
        },
        "7 of the 8 twins took the answer of the one that was sent"
    );
}

pub async fn lines_at_a_temperature_are_always_sent<S: Backend>(store: &S) {
    let mock = MockUpstream::start(slow_cache_mock()).await;
    let mut lines = Vec::new();
    for i in 0..4 {
        lines.push(chat(&format!("warm-{i}"), "tell me a story", 0.7).0);
    }
    // No temperature: OpenAI's default is 1.
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
    for i in 0..2 {
        lines.push(line_with(&format!("none-{i}"), CHAT, &body.to_string()));
    }
    let (out, _, batch) = run(store, &mock, &lines, "").await;
    assert_eq!(out.len(), 6);
    assert_eq!(mock.cache_stats().unwrap().calls, 6);
    assert_eq!(batch.coalesced, CoalescedCounts::default());
}

pub async fn coalesce_never_sends_every_line<S: Backend>(store: &S) {
    let mock = MockUpstream::start(slow_cache_mock()).await;
    let lines: Vec<String> = (0..5)
        .map(|i| chat(&format!("same-{i}"), "q", 0.0).0)
        .collect();
    let (out, _, batch) = run(store, &mock, &lines, "coalesce = \"never\"").await;
    assert_eq!(out.len(), 5);
    assert_eq!(mock.cache_stats().unwrap().calls, 5);
    assert_eq!(batch.coalesced, CoalescedCounts::default());
}

fn embedding_line(i: usize, input: &str) -> String {
    line_with(
        &format!("e{i}"),
        EMBEDDINGS,
        &json!({"model": "e", "input": input}).to_string(),
    )
}

pub async fn single_input_embeddings_share_calls_and_a_bad_input_fails_alone<S: Backend>(
    store: &S,
) {
    let mock = MockUpstream::start(MockBehavior::with_cache(CacheModel::default())).await;
    let inputs: Vec<String> = (0..200)
        .map(|i| {
            if i == 77 {
                String::new()
            } else {
                format!("text number {i}")
            }
        })
        .collect();
    let lines: Vec<String> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| embedding_line(i, t))
        .collect();
    let file = upload(store, "", &jsonl(&lines)).await;
    let batch = store
        .create_batch(new_batch("", file.id, EMBEDDINGS))
        .await
        .unwrap()
        .id;
    let cfg = config(&mock.url(), "concurrency = 4", "", "");
    let daemon = start(store, cfg);
    finished_batch(store, batch, LONG).await;
    daemon.stop().await;
    let out = json_lines(store.output_stream(batch)).await;
    let err = json_lines(store.error_stream(batch)).await;
    assert_eq!(out.len(), 199);
    assert_eq!(err.len(), 1);
    assert_eq!(err[0]["custom_id"], "e77");
    for o in &out {
        let i: usize = o["custom_id"].as_str().unwrap()[1..].parse().unwrap();
        let data = o["response"]["body"]["data"].as_array().unwrap();
        assert_eq!(data.len(), 1);
        let got: Vec<f64> = serde_json::from_value(data[0]["embedding"].clone()).unwrap();
        assert_eq!(got, embedding_for(&inputs[i]));
    }
    let stats = mock.cache_stats().unwrap();
    // Packed calls, the refused pack's lines one by one, nothing more.
    assert!(
        stats.embedding_calls < 100,
        "{} calls for 200 lines",
        stats.embedding_calls
    );
    let b = store.get_batch(Owner::Any, batch).await.unwrap().unwrap();
    assert_eq!(b.usage.input_tokens, 199 * 3, "usage adds up to the calls'");
    // Every completed line came from a pack but those sent alone (at most
    // one per call), and the failed one is not counted.
    assert_eq!(b.coalesced.identical, 0);
    let alone = stats.embedding_calls as i64;
    assert!(
        b.coalesced.packed <= 199 && b.coalesced.packed >= 199 - alone,
        "{} packed lines, {alone} calls",
        b.coalesced.packed
    );
}

/// The counters the finish statement keeps: each result marked as
/// answered by a shared call adds to its own batch's count of its kind.
pub async fn finish_counts_lines_answered_by_a_shared_call<S: Backend>(store: &S) {
    let (a, b) = (batch_of(store, 5).await, batch_of(store, 2).await);
    let d = daemon(store).await;
    let claimed = claim(store, d, 7).await;
    assert_eq!(claimed.len(), 7);
    let marks = |c: &ClaimedRequest, i: usize| {
        let kind = match (c.batch_id == Some(a.id), i) {
            (true, 0) => None,
            (true, 1 | 2) => Some(Coalesced::Identical),
            (true, _) => Some(Coalesced::Packed),
            (false, 0) => Some(Coalesced::Packed),
            (false, _) => None,
        };
        Finished {
            coalesced: kind,
            ..outcome(c, RequestState::Completed)
        }
    };
    let mut seen: std::collections::HashMap<Option<fusillade::domain::ids::BatchId>, usize> =
        Default::default();
    let results: Vec<Finished> = claimed
        .iter()
        .map(|c| {
            let n = seen.entry(c.batch_id).or_default();
            *n += 1;
            marks(c, *n - 1)
        })
        .collect();
    assert_eq!(store.finish(&results).await.unwrap().len(), 7);
    assert_eq!(
        batch(store, a.id).await.coalesced,
        CoalescedCounts {
            identical: 2,
            packed: 2
        }
    );
    assert_eq!(
        batch(store, b.id).await.coalesced,
        CoalescedCounts {
            identical: 0,
            packed: 1
        }
    );
    // A stale write counts nothing.
    let again: Vec<Finished> = results.clone();
    assert!(store.finish(&again).await.unwrap().is_empty());
    assert_eq!(batch(store, a.id).await.coalesced.total(), 4);
}
