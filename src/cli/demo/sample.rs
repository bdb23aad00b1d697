//! The demo's sample input: chat lines over two models, a few of them
//! asking for more tokens than the simulated server allows, so that they
//! fail (a 400, never retried) the way a real server refuses them.

use std::io::Write;
use std::path::Path;

/// The model with many slots and short answers.
pub const FAST: &str = "demo-fast";
/// The model with few slots and longer answers.
pub const SLOW: &str = "demo-slow";
/// The simulated server refuses a `max_tokens` above this.
pub const TOKEN_LIMIT: u64 = 4096;
/// The `max_tokens` of the lines meant to fail.
const TOO_MANY_TOKENS: u64 = 100_000;
/// The fewest lines a sample may have (room for the failing ones).
pub const MIN_LINES: u64 = 20;

const TOPICS: [&str; 16] = [
    "a prefix cache",
    "backpressure",
    "a write-ahead log",
    "exponential backoff",
    "a token bucket",
    "consistent hashing",
    "a lease",
    "idempotency",
    "a dead letter queue",
    "head-of-line blocking",
    "a batch window",
    "tail latency",
    "a heartbeat",
    "a retry budget",
    "load shedding",
    "a circuit breaker",
];

const ASKS: [&str; 4] = [
    "In one sentence, what is {}?",
    "Give one example of {} in practice.",
    "What goes wrong without {}?",
    "Explain {} to a new engineer in two sentences.",
];

/// The system prompt every line starts with.
const SYSTEM: &str = "You are a concise assistant for software engineers.";

fn json_string(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// What was written.
#[derive(Debug)]
pub struct Sample {
    /// Lines in the file.
    pub lines: u64,
    /// The custom_ids of the lines the server will refuse.
    pub refused: Vec<String>,
}

/// Writes `lines` lines (at least [`MIN_LINES`]) to `path`: every fifth to
/// [`SLOW`], the rest to [`FAST`], and a few spread through the file asking
/// for more than [`TOKEN_LIMIT`] tokens.
pub fn write(path: &Path, lines: u64) -> std::io::Result<Sample> {
    let lines = lines.max(MIN_LINES);
    let refusing = (lines / 500).clamp(2, 5);
    // Spread out, never first: a run's first calls failing alike would
    // read as a misconfigured upstream.
    let refused_at: Vec<u64> = (1..=refusing).map(|k| k * lines / (refusing + 1)).collect();
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut refused = Vec::new();
    for i in 0..lines {
        let custom_id = format!("demo-{:05}", i + 1);
        let topic = TOPICS[(i as usize / ASKS.len()) % TOPICS.len()];
        let (model, max_tokens, ask) = if refused_at.contains(&i) {
            refused.push(custom_id.clone());
            (
                SLOW,
                TOO_MANY_TOKENS,
                format!("Write a {TOO_MANY_TOKENS}-token novel about {topic}."),
            )
        } else if i % 5 == 4 {
            (SLOW, 48, ASKS[i as usize % ASKS.len()].replace("{}", topic))
        } else {
            (FAST, 16, ASKS[i as usize % ASKS.len()].replace("{}", topic))
        };
        // Written by hand, so the keys come in the order people write them.
        let line = format!(
            r#"{{"custom_id":"{custom_id}","method":"POST","url":"/v1/chat/completions","body":{{"model":"{model}","messages":[{{"role":"system","content":{system}}},{{"role":"user","content":{ask}}}],"max_tokens":{max_tokens}}}}}"#,
            system = json_string(SYSTEM),
            ask = json_string(&ask),
        );
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    Ok(Sample { lines, refused })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_has_both_models_and_a_few_refused_lines_not_first() {
        let dir = std::env::temp_dir().join(format!("fusillade-sample-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("input.jsonl");
        let sample = write(&path, 1000).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 1000);
        assert_eq!(sample.refused.len(), 2);
        let over: Vec<&str> = lines
            .iter()
            .filter(|l| l["body"]["max_tokens"].as_u64().unwrap() > TOKEN_LIMIT)
            .map(|l| l["custom_id"].as_str().unwrap())
            .collect();
        assert_eq!(over, sample.refused);
        assert!(!sample.refused.contains(&"demo-00001".to_owned()));
        let slow = lines.iter().filter(|l| l["body"]["model"] == SLOW).count();
        assert!((190..=210).contains(&slow), "{slow}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
