//! `fusillade mock`: the built-in model simulator as a server, to try
//! configurations and write tests against without a model server.

use super::{CliError, runtime, usage};
use anyhow::anyhow;
use fusillade::mock::{LatencyDistribution, MockUpstream, Simulation};
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

/// Arguments of `fusillade mock`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Every path answers: POST /v1/chat/completions (or any other) gets an OpenAI
chat.completion echoing the request's model, with usage 10 prompt + 7
completion tokens. A request with \"stream\": true is answered as SSE.

Examples:
  fusillade mock --listen 127.0.0.1:8000 --latency-ms 50
  fusillade mock --latency-ms 200 --latency-dist exponential --error-rate 0.05 --error-status 429
  fusillade run input.jsonl --upstream http://127.0.0.1:8000")]
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
    /// Seed of the latency and fault draws (the same seed, the same sequence).
    #[arg(long, value_name = "N", default_value_t = 0)]
    seed: u64,
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
            error_rate: self.error_rate,
            error_status: self.error_status,
            tokens_per_second: self.tokens_per_second,
            seed: self.seed,
        })
    }
}

/// Serves until SIGTERM or Ctrl-C, then says how many calls it answered.
pub async fn run(args: Args) -> Result<(), CliError> {
    let simulation = args.simulation()?;
    let server = MockUpstream::start_at(args.listen, simulation.behavior())
        .await
        .map_err(|e| usage(anyhow!("cannot listen on {}: {e}", args.listen)))?;
    println!("listening on {}", server.url());
    std::io::stdout().flush().map_err(runtime)?;
    super::setup::shutdown_on_signals().cancelled().await;
    let calls = server.counters().total_calls;
    server.shutdown().await;
    eprintln!("fusillade mock: answered {calls} calls");
    Ok(())
}
