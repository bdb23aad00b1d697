//! Token usage, read from upstream answers and summed per batch, in the
//! shape OpenAI's batch object reports it.

use serde::{Deserialize, Serialize};

/// Tokens used, summed over a batch's successful requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt (input) tokens.
    pub input_tokens: i64,
    /// Of which served from cache.
    pub cached_tokens: i64,
    /// Completion (output) tokens.
    pub output_tokens: i64,
    /// Of which spent on reasoning.
    pub reasoning_tokens: i64,
    /// All tokens.
    pub total_tokens: i64,
}

#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    usage: Option<RawUsage>,
}

/// Both naming schemes: chat/completions/embeddings (`prompt_tokens`, ...)
/// and the Responses API (`input_tokens`, ...).
#[derive(Deserialize)]
struct RawUsage {
    #[serde(default, alias = "prompt_tokens")]
    input_tokens: Option<i64>,
    #[serde(default, alias = "completion_tokens")]
    output_tokens: Option<i64>,
    #[serde(default)]
    total_tokens: Option<i64>,
    #[serde(default, alias = "prompt_tokens_details")]
    input_tokens_details: Option<Details>,
    #[serde(default, alias = "completion_tokens_details")]
    output_tokens_details: Option<Details>,
}

#[derive(Deserialize)]
struct Details {
    #[serde(default)]
    cached_tokens: Option<i64>,
    #[serde(default)]
    reasoning_tokens: Option<i64>,
}

/// The usage an answer body reports, if it reports any.
pub fn usage_of(body: impl AsRef<[u8]>) -> Option<Usage> {
    let u = serde_json::from_slice::<Answer>(body.as_ref())
        .ok()?
        .usage?;
    let input = u.input_tokens.unwrap_or(0);
    let output = u.output_tokens.unwrap_or(0);
    Some(Usage {
        input_tokens: input,
        cached_tokens: u
            .input_tokens_details
            .and_then(|d| d.cached_tokens)
            .unwrap_or(0),
        output_tokens: output,
        reasoning_tokens: u
            .output_tokens_details
            .and_then(|d| d.reasoning_tokens)
            .unwrap_or(0),
        total_tokens: u.total_tokens.unwrap_or(input + output),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_and_responses_shapes() {
        let chat = r#"{"id":"x","choices":[],"usage":{"prompt_tokens":10,"completion_tokens":5,
            "total_tokens":15,"prompt_tokens_details":{"cached_tokens":4},
            "completion_tokens_details":{"reasoning_tokens":2}}}"#;
        assert_eq!(
            usage_of(chat),
            Some(Usage {
                input_tokens: 10,
                cached_tokens: 4,
                output_tokens: 5,
                reasoning_tokens: 2,
                total_tokens: 15
            })
        );
        let responses = r#"{"usage":{"input_tokens":3,"output_tokens":7,
            "output_tokens_details":{"reasoning_tokens":1}}}"#;
        let u = usage_of(responses).unwrap();
        assert_eq!(
            (u.input_tokens, u.output_tokens, u.total_tokens),
            (3, 7, 10)
        );
        let embeddings = r#"{"data":[],"usage":{"prompt_tokens":8,"total_tokens":8}}"#;
        assert_eq!(usage_of(embeddings).unwrap().input_tokens, 8);
        assert_eq!(usage_of(r#"{"choices":[]}"#), None);
        assert_eq!(usage_of("not json"), None);
        assert_eq!(usage_of(r#"{"usage":null}"#), None);
    }
}
