//! The flags of the cache-modelling mode, one definition for `fusillade
//! mock --cache` and `fusillade-bench mock --cache` (which the benchmarks
//! start as child processes with [`CacheArgs::flags`]).

use super::CacheModel;
use std::time::Duration;

/// The cache model's knobs as command-line flags (see [`CacheModel`]).
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct CacheArgs {
    /// Serve as a server with a prefix cache would: service times follow
    /// the cache (prefill of uncached tokens, decode slots), answers follow
    /// the prompt, and GET /_stats gives calls and the cache hit rate.
    #[arg(long)]
    pub cache: bool,
    /// With --cache: tokens (words) per cached block.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub block_tokens: usize,
    /// With --cache: blocks the cache holds (least recently used go first).
    #[arg(long, value_name = "N", default_value_t = 2048)]
    pub cache_blocks: usize,
    /// With --cache: prefill cost of one uncached prompt token, in microseconds.
    #[arg(long, value_name = "US", default_value_t = 10)]
    pub prefill_us_per_token: u64,
    /// With --cache: decode time of a call, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 100)]
    pub decode_ms: u64,
    /// With --cache: sequences decoded at once (more calls wait for a slot).
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub max_seqs: usize,
    /// With --cache: engine time of an embeddings call, in microseconds.
    #[arg(long, value_name = "US", default_value_t = 5000)]
    pub embed_us_per_call: u64,
    /// With --cache: engine time of each embeddings input, in microseconds.
    #[arg(long, value_name = "US", default_value_t = 50)]
    pub embed_us_per_input: u64,
}

impl CacheArgs {
    /// The model, when `--cache` is given.
    pub fn model(&self) -> Option<CacheModel> {
        self.cache.then(|| CacheModel {
            block_tokens: self.block_tokens,
            capacity_blocks: self.cache_blocks,
            prefill_per_token: Duration::from_micros(self.prefill_us_per_token),
            decode: Duration::from_millis(self.decode_ms),
            max_seqs: self.max_seqs,
            embed_per_call: Duration::from_micros(self.embed_us_per_call),
            embed_per_input: Duration::from_micros(self.embed_us_per_input),
        })
    }

    /// The same settings as flags, to start a mock process with.
    pub fn flags(&self) -> Vec<String> {
        let mut f = vec!["--cache".to_owned()];
        for (name, v) in [
            ("--block-tokens", self.block_tokens as u64),
            ("--cache-blocks", self.cache_blocks as u64),
            ("--prefill-us-per-token", self.prefill_us_per_token),
            ("--decode-ms", self.decode_ms),
            ("--max-seqs", self.max_seqs as u64),
            ("--embed-us-per-call", self.embed_us_per_call),
            ("--embed-us-per-input", self.embed_us_per_input),
        ] {
            f.push(name.to_owned());
            f.push(v.to_string());
        }
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        cache: CacheArgs,
    }

    #[test]
    fn flags_parse_back_to_the_same_settings() {
        let args = Cli::parse_from(["x", "--cache", "--decode-ms", "7", "--max-seqs", "3"]).cache;
        let again = Cli::parse_from(std::iter::once("x".to_owned()).chain(args.flags())).cache;
        assert_eq!(args, again);
        assert_eq!(again.model().unwrap().decode, Duration::from_millis(7));
        assert!(Cli::parse_from(["x"]).cache.model().is_none());
    }
}
