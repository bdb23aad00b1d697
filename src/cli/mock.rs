//! `fusillade mock`: the built-in model simulator as a server, to try
//! configurations and write tests against without a model server.

use super::{CliError, runtime, usage};
use anyhow::anyhow;
use fusillade::mock::{
    CacheArgs, Fault, LatencyDistribution, MockBehavior, MockUpstream, Simulation,
};
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

/// Arguments of `fusillade mock`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Every path answers: POST /v1/chat/completions (or any other) gets an OpenAI
chat.completion echoing the request's model, with usage 10 prompt + 7
completion tokens. A request with \"stream\": true is answered as SSE.
GET /_stats answers what the mock saw, as JSON: calls in all, per model
and per custom_id, and the most in flight at once (with --cache: calls,
prompt and cached tokens, embeddings calls).

With --cache the mock models a server with a prefix cache instead (the
--cache-* and other flags marked \"With --cache\"); the latency, error and
token flags are then not used.

Examples:
  fusillade mock --listen 127.0.0.1:8000 --latency-ms 50
  fusillade mock --latency-ms 200 --latency-dist exponential --error-rate 0.05 --error-status 429
  fusillade mock --cache --cache-blocks 4096 --max-seqs 32
  fusillade run input.jsonl -o out.jsonl --upstream http://127.0.0.1:8000")]
pub struct Args {
    /// Address to listen on; port 0 picks a free one. The address is
    /// printed as `listening on URL` once the server is up.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8000",
          value_parser = super::setup::parse_listen)]
    listen: SocketAddr,
    /// Mean time before an answer, in milliseconds.
    #[arg(long, value_name = "N", default_value_t = 0)]
    latency_ms: u64,
    /// How latencies are spread around the mean: every call the mean
    /// (fixed), uniform from 0 to twice the mean, or exponential (a long
    /// tail, cut at ten times the mean).
    #[arg(long, value_enum, value_name = "DIST", default_value_t = LatencyDistribution::Fixed)]
    latency_dist: LatencyDistribution,
    /// Share of calls (0 to 1) answered with --error-status instead.
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    error_rate: f64,
    /// Status of the failed calls (a 429 comes with `Retry-After: 1`).
    #[arg(long, value_name = "CODE", default_value_t = 500)]
    error_status: u16,
    /// Decode speed: each call also takes its `max_tokens` (else 7) divided
    /// by this many tokens a second.
    #[arg(long, value_name = "T")]
    tokens_per_second: Option<f64>,
    /// Refuse with a 400 (context_length_exceeded) every call whose
    /// max_tokens is above N, as a server does with a request longer than
    /// its context.
    #[arg(long, value_name = "N")]
    max_tokens_limit: Option<u64>,
    /// Seed of the latency and fault draws (the same seed, the same sequence).
    #[arg(long, value_name = "N", default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    cache: CacheArgs,
}

impl Args {
    /// The simulation the flags describe, or why they describe none.
    fn simulation(&self) -> Result<Simulation, CliError> {
        if !(0.0..=1.0).contains(&self.error_rate) {
            return Err(usage(anyhow!(
                "--error-rate must be between 0 and 1, not {}",
                self.error_rate
            )));
        }
        if !(400..=599).contains(&self.error_status) {
            return Err(usage(anyhow!(
                "--error-status must be a 4xx or 5xx status, not {}",
                self.error_status
            )));
        }
        if let Some(t) = self.tokens_per_second
            && !(t.is_finite() && t > 0.0)
        {
            return Err(usage(anyhow!(
                "--tokens-per-second must be above 0, not {t}"
            )));
        }
        Ok(Simulation {
            latency: Duration::from_millis(self.latency_ms),
            distribution: self.latency_dist,
            faults: vec![Fault {
                rate: self.error_rate,
                status: self.error_status,
            }],
            tokens_per_second: self.tokens_per_second,
            max_tokens_limit: self.max_tokens_limit,
            seed: self.seed,
        })
    }

    /// The mock's behaviour: the cache model with `--cache`, else the
    /// simulation; flags that one would ignore are refused.
    fn behavior(&self) -> Result<MockBehavior, CliError> {
        let simulation = self.simulation()?;
        let Some(model) = self.cache.model() else {
            return Ok(simulation.behavior());
        };
        let simulated = self.latency_ms > 0
            || self.latency_dist != LatencyDistribution::Fixed
            || self.error_rate > 0.0
            || self.tokens_per_second.is_some()
            || self.max_tokens_limit.is_some();
        if simulated {
            return Err(usage(anyhow!(
                "--cache models its own service times and never fails a call: \
                 --latency-ms, --latency-dist, --error-rate, --tokens-per-second and \
                 --max-tokens-limit are not used with it"
            )));
        }
        if model.block_tokens == 0 || model.capacity_blocks == 0 || model.max_seqs == 0 {
            return Err(usage(anyhow!(
                "--block-tokens, --cache-blocks and --max-seqs must be above 0"
            )));
        }
        Ok(MockBehavior::with_cache(model))
    }
}

/// Serves until SIGTERM or Ctrl-C, then says how many calls it answered.
pub async fn run(args: Args) -> Result<(), CliError> {
    let behavior = args.behavior()?;
    let server = MockUpstream::start_at(args.listen, behavior)
        .await
        .map_err(|e| usage(anyhow!("cannot listen on {}: {e}", args.listen)))?;
    println!("listening on {}", server.url());
    std::io::stdout().flush().map_err(runtime)?;
    super::setup::shutdown_on_signals().cancelled().await;
    let calls = server.counters().total_calls;
    let cache = server.cache_stats();
    server.shutdown().await;
    match cache {
        Some(c) => eprintln!(
            "fusillade mock: answered {calls} calls; prefix cache hit rate {:.1}% \
             ({} of {} prompt tokens)",
            100.0 * c.hit_rate(),
            c.cached_tokens,
            c.prompt_tokens
        ),
        None => eprintln!("fusillade mock: answered {calls} calls"),
    }
    Ok(())
}
