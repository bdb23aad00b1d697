//! A model of an inference server's prefix cache, for the mock: what makes
//! the order calls arrive in matter on a real server.
//!
//! A prompt is cut into words (one word counts as one token) and the words
//! into blocks of [`CacheModel::block_tokens`]; each block is named by a hash
//! chained on the previous block's, so a block is only reused behind the same
//! whole prefix. The server keeps at most [`CacheModel::capacity_blocks`]
//! blocks, least recently used out first. A call waits for one of
//! [`CacheModel::max_seqs`] sequence slots, then for the one prefill engine
//! to work through its uncached tokens (a cost per token), then decodes for a
//! fixed time in its slot. Embeddings calls cost a fixed time per call plus
//! a time per input, on the same engine.

use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// The cache and the costs a cache-modelling mock serves with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheModel {
    /// Tokens per cached block.
    pub block_tokens: usize,
    /// Blocks the cache holds (least recently used out first).
    pub capacity_blocks: usize,
    /// Prefill cost of one uncached token (the one engine works through
    /// calls one at a time).
    pub prefill_per_token: Duration,
    /// Decode time of a call, spent in its sequence slot.
    pub decode: Duration,
    /// Sequences served at once; more calls wait for a slot.
    pub max_seqs: usize,
    /// Engine time of an embeddings call.
    pub embed_per_call: Duration,
    /// Engine time of each input of an embeddings call.
    pub embed_per_input: Duration,
}

impl Default for CacheModel {
    fn default() -> Self {
        Self {
            block_tokens: 16,
            capacity_blocks: 2048,
            prefill_per_token: Duration::from_micros(2),
            decode: Duration::from_millis(20),
            max_seqs: 64,
            embed_per_call: Duration::from_millis(5),
            embed_per_input: Duration::from_micros(50),
        }
    }
}

/// What a cache-modelling mock has served (read at `GET /_stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CacheStats {
    /// Completion calls served.
    pub calls: u64,
    /// Prompt tokens of those calls.
    pub prompt_tokens: u64,
    /// Of those, tokens found in the cache.
    pub cached_tokens: u64,
    /// Embeddings calls served.
    pub embedding_calls: u64,
    /// Inputs of those calls.
    pub embedding_inputs: u64,
    /// Calls refused (400) without being served.
    #[serde(default)]
    pub refused: u64,
}

impl CacheStats {
    /// Share of prompt tokens found in the cache (0 with no calls).
    pub fn hit_rate(&self) -> f64 {
        if self.prompt_tokens == 0 {
            0.0
        } else {
            self.cached_tokens as f64 / self.prompt_tokens as f64
        }
    }
}

/// Least recently used set of block hashes.
#[derive(Debug, Default)]
struct Lru {
    stamp_of: HashMap<u64, u64>,
    by_stamp: BTreeMap<u64, u64>,
    next: u64,
}

impl Lru {
    fn contains(&self, block: u64) -> bool {
        self.stamp_of.contains_key(&block)
    }

    fn touch(&mut self, block: u64, capacity: usize) {
        self.next += 1;
        if let Some(old) = self.stamp_of.insert(block, self.next) {
            self.by_stamp.remove(&old);
        }
        self.by_stamp.insert(self.next, block);
        while self.stamp_of.len() > capacity {
            let Some((_, evicted)) = self.by_stamp.pop_first() else {
                break;
            };
            self.stamp_of.remove(&evicted);
        }
    }
}

/// The live state of one cache-modelling mock (one replica).
#[derive(Debug)]
pub(super) struct PrefixCache {
    model: CacheModel,
    lru: Mutex<Lru>,
    /// When the prefill engine is next free.
    engine_free: Mutex<Instant>,
    seqs: Semaphore,
    calls: AtomicU64,
    prompt_tokens: AtomicU64,
    cached_tokens: AtomicU64,
    embedding_calls: AtomicU64,
    embedding_inputs: AtomicU64,
    refused: AtomicU64,
}

/// What serving one call took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Served {
    /// Prompt tokens (inputs, for embeddings).
    pub prompt_tokens: u64,
    /// Of those, found in the cache.
    pub cached_tokens: u64,
}

impl PrefixCache {
    pub(super) fn new(model: CacheModel) -> Self {
        Self {
            model,
            lru: Mutex::default(),
            engine_free: Mutex::new(Instant::now()),
            seqs: Semaphore::new(model.max_seqs.max(1)),
            calls: AtomicU64::new(0),
            prompt_tokens: AtomicU64::new(0),
            cached_tokens: AtomicU64::new(0),
            embedding_calls: AtomicU64::new(0),
            embedding_inputs: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// Counts a call refused before it was served.
    pub(super) fn refuse(&self) {
        self.refused.fetch_add(1, Relaxed);
    }

    pub(super) fn stats(&self) -> CacheStats {
        CacheStats {
            calls: self.calls.load(Relaxed),
            prompt_tokens: self.prompt_tokens.load(Relaxed),
            cached_tokens: self.cached_tokens.load(Relaxed),
            embedding_calls: self.embedding_calls.load(Relaxed),
            embedding_inputs: self.embedding_inputs.load(Relaxed),
            refused: self.refused.load(Relaxed),
        }
    }

    /// Looks the prompt up, caches its blocks, and returns how many of its
    /// tokens were cached.
    pub(super) fn lookup(&self, tokens: &[u64]) -> Served {
        let bt = self.model.block_tokens.max(1);
        let mut lru = self.lru.lock().expect("not poisoned");
        let mut parent = 0u64;
        let mut cached = 0usize;
        let mut still_hitting = true;
        for block in tokens.chunks_exact(bt) {
            parent = chain(parent, block);
            if still_hitting && lru.contains(parent) {
                cached += bt;
            } else {
                still_hitting = false;
            }
            lru.touch(parent, self.model.capacity_blocks);
        }
        drop(lru);
        let served = Served {
            prompt_tokens: tokens.len() as u64,
            cached_tokens: cached as u64,
        };
        self.calls.fetch_add(1, Relaxed);
        self.prompt_tokens.fetch_add(served.prompt_tokens, Relaxed);
        self.cached_tokens.fetch_add(served.cached_tokens, Relaxed);
        served
    }

    /// Books `work` on the prefill engine from `now`; returns when it is done.
    fn book_engine(&self, now: Instant, work: Duration) -> Instant {
        let mut free = self.engine_free.lock().expect("not poisoned");
        let start = (*free).max(now);
        *free = start + work;
        *free
    }

    /// Serves a completion call of this prompt: waits for a slot, then
    /// returns the slot permit (held until the answer) and when the answer
    /// is due.
    pub(super) async fn serve_completion(
        &self,
        tokens: &[u64],
    ) -> (tokio::sync::SemaphorePermit<'_>, Instant, Served) {
        let permit = self.seqs.acquire().await.expect("never closed");
        let served = self.lookup(tokens);
        let uncached = served.prompt_tokens - served.cached_tokens;
        let prefill = self
            .model
            .prefill_per_token
            .saturating_mul(u32::try_from(uncached).unwrap_or(u32::MAX));
        let prefilled = self.book_engine(Instant::now(), prefill);
        (permit, prefilled + self.model.decode, served)
    }

    /// Serves an embeddings call of `inputs` inputs: returns when it is due.
    pub(super) fn serve_embeddings(&self, inputs: usize) -> Instant {
        self.embedding_calls.fetch_add(1, Relaxed);
        self.embedding_inputs.fetch_add(inputs as u64, Relaxed);
        let work = self.model.embed_per_call
            + self
                .model
                .embed_per_input
                .saturating_mul(u32::try_from(inputs).unwrap_or(u32::MAX));
        self.book_engine(Instant::now(), work)
    }
}

fn chain(parent: u64, block: &[u64]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parent.hash(&mut h);
    block.hash(&mut h);
    h.finish()
}

fn word_hash(word: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    word.hash(&mut h);
    h.finish()
}

/// The prompt's tokens as the cache model counts them: one per word of each
/// message's role and content, in order (chat), or of `prompt` (completions).
pub fn prompt_tokens(body: &Value) -> Vec<u64> {
    let mut tokens = Vec::new();
    let mut push_text = |text: &str| tokens.extend(text.split_whitespace().map(word_hash));
    if let Some(messages) = body.get("messages").and_then(Value::as_array) {
        for m in messages {
            if let Some(role) = m.get("role").and_then(Value::as_str) {
                push_text(role);
            }
            match m.get("content") {
                Some(Value::String(s)) => push_text(s),
                Some(other) => push_text(&other.to_string()),
                None => {}
            }
        }
    } else if let Some(prompt) = body.get("prompt") {
        match prompt {
            Value::String(s) => push_text(s),
            other => push_text(&other.to_string()),
        }
    }
    tokens
}

/// The answer text a cache-modelling mock gives a chat or completion body:
/// a digest of its model and prompt, so a client can check that each line
/// got the answer to its own prompt.
pub fn answer_for(body: &Value) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    body.get("model").and_then(Value::as_str).hash(&mut h);
    prompt_tokens(body).hash(&mut h);
    format!("answer {:016x}", h.finish())
}

/// The vector a cache-modelling mock gives one embeddings input: four
/// numbers derived from the text, so a client can check each line's.
pub fn embedding_for(input: &str) -> [f64; 4] {
    let h = word_hash(input);
    [
        (h & 0xffff) as f64,
        ((h >> 16) & 0xffff) as f64,
        ((h >> 32) & 0xffff) as f64,
        (h >> 48) as f64,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn words(n: usize, tag: &str) -> String {
        (0..n).map(|i| format!("{tag}{i} ")).collect()
    }

    fn chat(system: &str, user: &str) -> Value {
        json!({"model": "m", "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": user}]})
    }

    fn model(capacity_blocks: usize) -> CacheModel {
        CacheModel {
            capacity_blocks,
            ..CacheModel::default()
        }
    }

    #[test]
    fn a_shared_prefix_is_found_in_whole_blocks() {
        let cache = PrefixCache::new(model(1000));
        let system = words(159, "s"); // with "system": 160 tokens, 10 blocks
        let first = cache.lookup(&prompt_tokens(&chat(&system, "what is one")));
        assert_eq!(first.cached_tokens, 0);
        let second = cache.lookup(&prompt_tokens(&chat(&system, "what is two")));
        // The system prompt's 10 blocks; the question's partial block is not cached.
        assert_eq!(second.cached_tokens, 160);
        assert_eq!(second.prompt_tokens, 164);
        let s = cache.stats();
        assert_eq!(
            (s.calls, s.cached_tokens, s.prompt_tokens),
            (2, 160, 164 + 164)
        );
    }

    #[test]
    fn a_block_is_reused_only_behind_the_same_prefix() {
        let cache = PrefixCache::new(model(1000));
        let tail = words(64, "t");
        cache.lookup(&prompt_tokens(&chat(&format!("a {tail}"), "q")));
        let other = cache.lookup(&prompt_tokens(&chat(&format!("b {tail}"), "q")));
        assert_eq!(other.cached_tokens, 0, "same words after a different start");
    }

    #[test]
    fn the_least_recently_used_prefix_goes_first() {
        let cache = PrefixCache::new(model(20)); // room for two prompts of 10 blocks
        let (a, b, c) = (words(159, "a"), words(159, "b"), words(159, "c"));
        for s in [&a, &b, &a, &c] {
            cache.lookup(&prompt_tokens(&chat(s, "q")));
        }
        // c pushed out b (least recently used), not a.
        assert_eq!(
            cache.lookup(&prompt_tokens(&chat(&a, "q"))).cached_tokens,
            160
        );
        assert_eq!(
            cache.lookup(&prompt_tokens(&chat(&b, "q"))).cached_tokens,
            0
        );
    }

    #[test]
    fn the_engine_serves_prefills_one_after_another() {
        let cache = PrefixCache::new(model(10));
        let now = Instant::now();
        let first = cache.book_engine(now, Duration::from_millis(10));
        let second = cache.book_engine(now, Duration::from_millis(10));
        assert_eq!(second - first, Duration::from_millis(10));
    }

    #[tokio::test]
    async fn a_cached_prompt_is_answered_sooner() {
        let m = CacheModel {
            prefill_per_token: Duration::from_millis(1),
            decode: Duration::ZERO,
            ..model(1000)
        };
        let cache = PrefixCache::new(m);
        let body = chat(&words(159, "s"), "q");
        let t0 = Instant::now();
        let (_p, cold, first) = cache.serve_completion(&prompt_tokens(&body)).await;
        let (_q, warm, second) = cache.serve_completion(&prompt_tokens(&body)).await;
        let t1 = Instant::now();
        // 162 uncached tokens at 1 ms each, then only the 2 of the partial block.
        assert_eq!((first.cached_tokens, second.cached_tokens), (0, 160));
        assert!(cold - t0 >= Duration::from_millis(162));
        assert!(warm <= cold.max(t1) + Duration::from_millis(2));
    }

    #[tokio::test]
    async fn calls_beyond_the_sequence_slots_wait() {
        let cache = PrefixCache::new(CacheModel {
            max_seqs: 1,
            ..model(10)
        });
        let held = cache.serve_completion(&[]).await;
        let waiting =
            tokio::time::timeout(Duration::from_millis(50), cache.serve_completion(&[])).await;
        assert!(waiting.is_err(), "a second sequence got a slot");
        drop(held);
        let _ = cache.serve_completion(&[]).await;
    }

    #[test]
    fn answers_follow_the_prompt() {
        let a = chat("s", "one");
        assert_eq!(answer_for(&a), answer_for(&a.clone()));
        assert_ne!(answer_for(&a), answer_for(&chat("s", "two")));
        assert_ne!(embedding_for("x"), embedding_for("y"));
    }
}
