//! The prefix key of a request: requests that share it share the leading
//! part of their prompt, which an upstream with a prefix cache computes
//! once while it stays cached. Claims take requests in key order (see
//! `store::traits::queue`), so calls with the same prefix run close together, and
//! the upstream client sends a key to the same replica.

use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

/// Bytes of a lone prompt (one message, or a completions prompt) that make
/// its key: prompts that differ only after them share a group. A shorter
/// lone prompt has no prefix worth a cache, and is keyed by its model alone:
/// such lines keep their line order, which is also the cheapest for the
/// claim (one key, so the index is walked in id order).
const LONE_PROMPT_BYTES: usize = 512;

#[derive(Deserialize)]
struct PromptFields<'a> {
    #[serde(borrow, default)]
    messages: Option<Vec<&'a RawValue>>,
    #[serde(borrow, default)]
    prompt: Option<&'a RawValue>,
}

/// The key of a line's body: a digest of the model and, for chat, every
/// message but the last (the system prompt and the turns before the
/// question); for a single message or a completions prompt of at least 512
/// bytes, of its first 512 bytes. Other bodies (short lone prompts,
/// embeddings) are keyed by the model alone.
/// Stable across processes and versions: it is stored at upload.
pub fn prefix_key(model: &str, body: &str) -> i64 {
    let mut h = Sha256::new();
    h.update(model.as_bytes());
    h.update([0]);
    if let Ok(fields) = serde_json::from_str::<PromptFields<'_>>(body) {
        match (fields.messages, fields.prompt) {
            (Some(messages), _) if messages.len() > 1 => {
                for m in &messages[..messages.len() - 1] {
                    h.update(m.get().as_bytes());
                    h.update([0]);
                }
            }
            (Some(messages), _) => {
                if let Some(m) = messages.first() {
                    h.update(head(m.get()));
                }
            }
            (None, Some(prompt)) => h.update(head(prompt.get())),
            (None, None) => {}
        }
    }
    let digest = h.finalize();
    i64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

fn head(text: &str) -> &[u8] {
    let bytes = text.as_bytes();
    if bytes.len() < LONE_PROMPT_BYTES {
        return &[];
    }
    &bytes[..LONE_PROMPT_BYTES]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(system: &str, user: &str) -> String {
        serde_json::json!({"model": "m", "messages": [
            {"role": "system", "content": system}, {"role": "user", "content": user}]})
        .to_string()
    }

    #[test]
    fn questions_behind_one_system_prompt_share_a_key() {
        assert_eq!(
            prefix_key("m", &chat("be brief", "one?")),
            prefix_key("m", &chat("be brief", "two?"))
        );
        assert_ne!(
            prefix_key("m", &chat("be brief", "one?")),
            prefix_key("m", &chat("be long", "one?"))
        );
    }

    #[test]
    fn a_shared_preamble_does_not_merge_different_system_prompts() {
        let preamble = "x ".repeat(2000);
        assert_ne!(
            prefix_key("m", &chat(&format!("{preamble} a"), "q")),
            prefix_key("m", &chat(&format!("{preamble} b"), "q"))
        );
    }

    #[test]
    fn the_model_is_part_of_the_key() {
        assert_ne!(
            prefix_key("m", &chat("s", "q")),
            prefix_key("n", &chat("s", "q"))
        );
    }

    #[test]
    fn lone_prompts_are_keyed_by_their_start() {
        let long = "y".repeat(LONE_PROMPT_BYTES);
        let p = |tail: &str| serde_json::json!({"prompt": format!("{long}{tail}")}).to_string();
        assert_eq!(prefix_key("m", &p("1")), prefix_key("m", &p("2")));
        let one = |text: &str| {
            serde_json::json!({"messages": [{"role": "user", "content": text}]}).to_string()
        };
        assert_ne!(
            prefix_key("m", &one(&format!("a{long}"))),
            prefix_key("m", &one(&format!("b{long}")))
        );
        // Short ones share their model's group, in line order.
        assert_eq!(prefix_key("m", &one("a")), prefix_key("m", &one("b")));
        assert_eq!(
            prefix_key("m", "{\"input\":\"a\"}"),
            prefix_key("m", "{\"input\":\"b\"}")
        );
    }
}
