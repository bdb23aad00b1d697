//! The batch's input lines, and the answer the chaos upstream gives each.
//!
//! The answer is a function of what the upstream received (the line's
//! number, taken from its custom_id, its model, and a digest of its
//! messages), so that the checker can derive, from the input alone, the
//! exact body that must appear in the output file for every line: a body
//! that fusillade changed, mixed up with another line's, or sent with a
//! changed request shows as wrong content.

use serde_json::{Value, json};

/// A model and its concurrency limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model {
    /// The name lines give in `body.model`.
    pub name: String,
    /// The most calls of it in flight at once, across all workers.
    pub limit: u32,
}

/// Parses `NAME=LIMIT`.
pub fn parse_model(s: &str) -> Result<Model, String> {
    let (name, limit) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=LIMIT, got {s:?}"))?;
    let limit: u32 = limit
        .parse()
        .map_err(|_| format!("the limit of {name:?} is not a number"))?;
    if name.is_empty() || limit == 0 {
        return Err(format!("expected a name and a limit above 0, got {s:?}"));
    }
    Ok(Model {
        name: name.to_owned(),
        limit,
    })
}

/// How the upstream finally answers a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finale {
    /// A `chat.completion`.
    Json,
    /// A 200 whose body is an HTML page, not JSON.
    Text,
    /// A `chat.completion` whose content carries the JSON escape `\u0000`.
    NulEscaped,
    /// A `chat.completion` with a raw 0x00 byte in its content (so not JSON).
    NulRaw,
}

/// What decides every line's shape and every answer.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Lines in the batch.
    pub lines: u64,
    /// The models, each given lines in proportion to its limit.
    pub models: Vec<Model>,
    /// Seed of every random choice.
    pub seed: u64,
    /// Per mille of lines answered with something other than a `chat.completion`.
    pub odd_per_mille: u64,
    /// Whether odd answers include NUL bytes.
    pub nul_bodies: bool,
}

/// The custom_id of line `i` (0-based).
pub fn custom_id(i: u64) -> String {
    format!("chaos-{i}")
}

/// The line number in a custom_id, if it is one of ours.
pub fn line_of(custom_id: &str) -> Option<u64> {
    custom_id.strip_prefix("chaos-")?.parse().ok()
}

/// A well-mixed 64-bit hash of `x` (splitmix64's finaliser).
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// FNV-1a of `bytes`, for the digest of what was received.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A line's answer as the upstream sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The body, exactly.
    pub text: String,
    /// Whether the body is JSON (otherwise it is `text/html`).
    pub json: bool,
}

impl Plan {
    /// The model of line `i`: each model takes a run of lines as long as
    /// its limit, in turn, so that every model is kept busy.
    pub fn model_of(&self, i: u64) -> &Model {
        let cycle: u64 = self.models.iter().map(|m| u64::from(m.limit)).sum();
        let mut at = i % cycle.max(1);
        for m in &self.models {
            if at < u64::from(m.limit) {
                return m;
            }
            at -= u64::from(m.limit);
        }
        &self.models[0]
    }

    /// Input line `i`, without its newline. Some lines carry text that
    /// must survive escaping: quotes, tabs, newlines, accents and emoji.
    pub fn input_line(&self, i: u64) -> String {
        let mut content = format!("line {i}: tell me something about the number {i}");
        if i % 7 == 3 {
            content.push_str(" \"quoted\"\ttabbed\nnew line, ünïcödé ✓ 🚀 \\ backslash");
        }
        let line = json!({
            "custom_id": custom_id(i),
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": self.model_of(i).name,
                "messages": [{"role": "user", "content": content}],
                "max_tokens": 16 + i % 48,
            },
        });
        line.to_string()
    }

    /// How line `i` is finally answered.
    pub fn finale(&self, i: u64) -> Finale {
        let r = mix(self.seed ^ mix(i ^ 0x00f1_7a1e));
        if r % 1000 >= self.odd_per_mille {
            return Finale::Json;
        }
        match (self.nul_bodies, (r / 1000) % 3) {
            (false, _) | (true, 0) => Finale::Text,
            (true, 1) => Finale::NulEscaped,
            (true, _) => Finale::NulRaw,
        }
    }

    /// The answer to line `i` for a call with this `model` and `messages`
    /// (as the upstream received them).
    pub fn answer(&self, i: u64, model: &str, messages: &Value) -> Answer {
        let digest = fnv(messages.to_string().as_bytes());
        let (prompt, completion) = usage(i);
        let completion_json = |content: &str| {
            json!({
                "id": format!("chatcmpl-{}", custom_id(i)),
                "object": "chat.completion",
                "created": 1_700_000_000,
                "model": model,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }],
                "usage": {
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": prompt + completion,
                },
            })
            .to_string()
        };
        let content = format!("answer to {} ({digest:016x})", custom_id(i));
        match self.finale(i) {
            Finale::Json => Answer {
                text: completion_json(&content),
                json: true,
            },
            Finale::Text => Answer {
                text: format!("<html><body>{content}</body></html>"),
                json: false,
            },
            // serde_json writes a NUL in a string as the escape `\u0000`.
            Finale::NulEscaped => Answer {
                text: completion_json(&format!("{content}\0after a NUL")),
                json: true,
            },
            Finale::NulRaw => Answer {
                text: completion_json(&content).replace(" (", " \0("),
                json: false,
            },
        }
    }

    /// The `response.body` the output line of line `i` must carry, and the
    /// usage it counts (only a JSON body's usage is counted).
    pub fn expected(&self, i: u64) -> (Value, Option<(u64, u64)>) {
        let line: Value = serde_json::from_str(&self.input_line(i)).expect("our own JSON");
        let body = &line["body"];
        let answer = self.answer(i, body["model"].as_str().unwrap_or(""), &body["messages"]);
        if answer.json {
            let value = serde_json::from_str(&answer.text).expect("our own JSON");
            (value, Some(usage(i)))
        } else {
            (Value::String(answer.text), None)
        }
    }
}

/// The (prompt, completion) tokens the answer to line `i` reports.
fn usage(i: u64) -> (u64, u64) {
    (5 + i % 50, 1 + i % 17)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(nul_bodies: bool) -> Plan {
        Plan {
            lines: 1000,
            models: vec![parse_model("a=1").unwrap(), parse_model("b=3").unwrap()],
            seed: 7,
            odd_per_mille: 200,
            nul_bodies,
        }
    }

    #[test]
    fn models_take_lines_in_proportion_to_their_limits() {
        let p = plan(true);
        let names: Vec<&str> = (0..8).map(|i| p.model_of(i).name.as_str()).collect();
        assert_eq!(names, ["a", "b", "b", "b", "a", "b", "b", "b"]);
        assert_eq!(
            parse_model("x"),
            Err("expected NAME=LIMIT, got \"x\"".into())
        );
        assert!(parse_model("x=0").is_err());
    }

    #[test]
    fn every_finale_occurs_and_each_has_the_bytes_it_names() {
        let p = plan(true);
        let finales: Vec<Finale> = (0..p.lines).map(|i| p.finale(i)).collect();
        for f in [
            Finale::Json,
            Finale::Text,
            Finale::NulEscaped,
            Finale::NulRaw,
        ] {
            let i = finales.iter().position(|x| *x == f).expect("occurs") as u64;
            let (body, usage) = p.expected(i);
            let text = p
                .answer(
                    i,
                    &p.model_of(i).name,
                    &serde_json::from_str::<Value>(&p.input_line(i)).unwrap()["body"]["messages"],
                )
                .text;
            match f {
                Finale::Json => assert!(body["choices"].is_array() && usage.is_some()),
                Finale::Text => assert!(body.as_str().unwrap().starts_with("<html>")),
                Finale::NulEscaped => {
                    assert!(text.contains("\\u0000"), "{text}");
                    assert!(
                        body["choices"][0]["message"]["content"]
                            .as_str()
                            .unwrap()
                            .contains('\0')
                    );
                }
                Finale::NulRaw => {
                    assert!(text.as_bytes().contains(&0));
                    assert!(serde_json::from_str::<Value>(&text).is_err());
                    assert!(body.as_str().unwrap().contains('\0') && usage.is_none());
                }
            }
        }
        let p = plan(false);
        assert!((0..p.lines).all(|i| matches!(p.finale(i), Finale::Json | Finale::Text)));
    }

    #[test]
    fn input_lines_are_json_with_their_custom_id() {
        let p = plan(true);
        for i in [0, 3, 10] {
            let v: Value = serde_json::from_str(&p.input_line(i)).unwrap();
            assert_eq!(line_of(v["custom_id"].as_str().unwrap()), Some(i));
        }
        assert_eq!(line_of("other-1"), None);
    }
}
