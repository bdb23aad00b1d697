//! A model server's behaviour in a few numbers, for `fusillade mock` and
//! tests: how long an answer takes (a latency with a distribution, plus
//! decode time at so many tokens a second), how often it fails (shares of
//! calls answered with error statuses, a `Retry-After` on 429s), and which
//! requests it refuses outright (a `max_tokens` above its limit gets a 400,
//! as a server refuses a request longer than its context).
//!
//! Draws come from a counter through a mixing function, so a given seed
//! gives the same sequence of latencies and faults on every run.

use super::{MOCK_COMPLETION_TOKENS, MockBehavior, MockCall, MockReply};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How latencies are spread around their mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LatencyDistribution {
    /// Every call takes the mean.
    #[default]
    Fixed,
    /// Uniform between 0 and twice the mean.
    Uniform,
    /// Exponential with that mean (a long tail), cut at ten times the mean.
    Exponential,
}

/// The longest decode a call may be given, whatever its `max_tokens`.
const MAX_DECODE: Duration = Duration::from_secs(600);

/// A share of calls answered with an error status.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fault {
    /// Share of calls, 0 to 1.
    pub rate: f64,
    /// Their status (429 comes with `Retry-After: 1`).
    pub status: u16,
}

/// A simulated model server.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Simulation {
    /// Mean time before the first byte of an answer.
    pub latency: Duration,
    /// How that time is spread.
    pub distribution: LatencyDistribution,
    /// Calls answered with an error instead, drawn independently of the
    /// request (so a retry may succeed); the rates add up to at most 1.
    pub faults: Vec<Fault>,
    /// Decode speed: a call also takes its `max_tokens` (else the mock's
    /// own answer length) divided by this; `None` for no decode time.
    pub tokens_per_second: Option<f64>,
    /// A call asking for more `max_tokens` than this is refused with a 400
    /// (`context_length_exceeded`), on every attempt; `None` for no limit.
    pub max_tokens_limit: Option<u64>,
    /// Seed of the draws.
    pub seed: u64,
}

/// SplitMix64: a good 64-bit mix of a counter, enough for simulation.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A draw in [0, 1).
fn unit(bits: u64) -> f64 {
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

impl Simulation {
    /// The time one call waits before its answer, from a draw in [0, 1).
    fn delay(&self, call: &MockCall, u: f64) -> Duration {
        self.first_byte(u) + self.decode(call)
    }

    /// The time before the first byte, from a draw in [0, 1).
    fn first_byte(&self, u: f64) -> Duration {
        let mean = self.latency.as_secs_f64();
        Duration::from_secs_f64(match self.distribution {
            LatencyDistribution::Fixed => mean,
            LatencyDistribution::Uniform => 2.0 * mean * u,
            LatencyDistribution::Exponential => (-mean * (1.0 - u).ln()).min(10.0 * mean),
        })
    }

    /// The decode time of the call's `max_tokens` (else the mock's answer).
    fn decode(&self, call: &MockCall) -> Duration {
        match self.tokens_per_second {
            Some(tps) if tps > 0.0 => {
                let tokens = call
                    .json()
                    .get("max_tokens")
                    .or_else(|| call.json().get("max_completion_tokens"))
                    .and_then(|v| v.as_u64())
                    .unwrap_or(MOCK_COMPLETION_TOKENS);
                Duration::from_secs_f64((tokens as f64 / tps).min(MAX_DECODE.as_secs_f64()))
            }
            _ => Duration::ZERO,
        }
    }

    /// The status drawn for a call from `u` in [0, 1), if it is a fault.
    fn fault(&self, u: f64) -> Option<u16> {
        let mut below = 0.0;
        self.faults.iter().find_map(|f| {
            below += f.rate;
            (u < below).then_some(f.status)
        })
    }

    /// The answer to the `n`th call.
    fn reply(&self, n: u64, call: &MockCall) -> MockReply {
        let a = mix(self.seed ^ mix(n));
        if let Some(refused) = self.refusal(call) {
            // Refused before any work: a server validates before it decodes.
            return refused.with_delay(self.first_byte(unit(mix(a))));
        }
        let delay = self.delay(call, unit(mix(a)));
        let reply = match self.fault(unit(a)) {
            Some(status) => {
                let body = format!(
                    r#"{{"error":{{"message":"simulated failure","type":"server_error","code":{status}}}}}"#
                );
                let r = MockReply::status(status, body);
                if status == 429 {
                    r.with_header("retry-after", "1")
                } else {
                    r
                }
            }
            None => MockReply::ok_for(call),
        };
        reply.with_delay(delay)
    }

    /// The 400 for a request above [`Simulation::max_tokens_limit`].
    fn refusal(&self, call: &MockCall) -> Option<MockReply> {
        let limit = self.max_tokens_limit?;
        let asked = call
            .json()
            .get("max_tokens")
            .or_else(|| call.json().get("max_completion_tokens"))
            .and_then(|v| v.as_u64())?;
        (asked > limit).then(|| {
            let body = serde_json::json!({"error": {
                "message": format!(
                    "max_tokens is too large: {asked}. This model's maximum context length is {limit} tokens."
                ),
                "type": "invalid_request_error",
                "param": "max_tokens",
                "code": "context_length_exceeded",
            }});
            MockReply::status(400, body.to_string())
        })
    }

    /// The mock's behaviour: each call drawn in turn.
    pub fn behavior(self) -> MockBehavior {
        let calls = AtomicU64::new(0);
        let latency = self.latency;
        let sim = Arc::new(self);
        MockBehavior {
            latency,
            responder: Some(Arc::new(move |call: &MockCall| {
                let n = calls.fetch_add(1, Ordering::Relaxed);
                sim.reply(n, call)
            })),
            cache: None,
            overload: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(body: serde_json::Value) -> MockCall {
        MockCall {
            model: "m".into(),
            custom_id: None,
            request_id: None,
            path: "/v1/chat/completions".into(),
            attempt: 1,
            authorization: None,
            body,
            traceparent: None,
        }
    }

    #[test]
    fn the_error_rate_is_the_share_of_failed_calls() {
        let sim = Simulation {
            faults: vec![Fault {
                rate: 0.25,
                status: 429,
            }],
            seed: 7,
            ..Simulation::default()
        };
        let c = call(serde_json::json!({}));
        let replies: Vec<MockReply> = (0..4000).map(|n| sim.reply(n, &c)).collect();
        let failed = replies.iter().filter(|r| r.status == 429).count();
        assert!((800..1200).contains(&failed), "{failed} of 4000");
        assert!(
            replies
                .iter()
                .filter(|r| r.status == 429)
                .all(|r| r.headers.iter().any(|(k, _)| k == "retry-after"))
        );
        // The same seed draws the same faults.
        let again: Vec<u16> = (0..4000).map(|n| sim.reply(n, &c).status).collect();
        assert_eq!(again, replies.iter().map(|r| r.status).collect::<Vec<_>>());
    }

    #[test]
    fn faults_of_several_statuses_each_take_their_share() {
        let sim = Simulation {
            faults: vec![
                Fault {
                    rate: 0.1,
                    status: 429,
                },
                Fault {
                    rate: 0.2,
                    status: 503,
                },
            ],
            ..Simulation::default()
        };
        let c = call(serde_json::json!({}));
        let statuses: Vec<u16> = (0..10_000).map(|n| sim.reply(n, &c).status).collect();
        let share = |s| statuses.iter().filter(|&&x| x == s).count();
        assert!((800..1200).contains(&share(429)), "{}", share(429));
        assert!((1700..2300).contains(&share(503)), "{}", share(503));
        assert_eq!(share(200) + share(429) + share(503), 10_000);
    }

    #[test]
    fn a_request_above_the_token_limit_is_refused_every_time() {
        let sim = Simulation {
            max_tokens_limit: Some(100),
            faults: vec![Fault {
                rate: 0.5,
                status: 500,
            }],
            ..Simulation::default()
        };
        let big = call(serde_json::json!({"max_tokens": 101}));
        for n in 0..50 {
            let r = sim.reply(n, &big);
            assert_eq!(r.status, 400);
            assert!(r.body.contains("context_length_exceeded"), "{}", r.body);
        }
        let fits = call(serde_json::json!({"max_tokens": 100}));
        assert!((0..50).any(|n| sim.reply(n, &fits).status == 200));
    }

    #[test]
    fn latencies_follow_their_distribution() {
        let c = call(serde_json::json!({}));
        for distribution in [
            LatencyDistribution::Fixed,
            LatencyDistribution::Uniform,
            LatencyDistribution::Exponential,
        ] {
            let sim = Simulation {
                latency: Duration::from_millis(100),
                distribution,
                ..Simulation::default()
            };
            let delays: Vec<f64> = (0..4000)
                .map(|n| sim.reply(n, &c).delay.unwrap().as_secs_f64())
                .collect();
            let mean = delays.iter().sum::<f64>() / delays.len() as f64;
            assert!((0.09..0.11).contains(&mean), "{distribution:?}: {mean}");
            let max = delays.iter().copied().fold(0.0, f64::max);
            match distribution {
                LatencyDistribution::Fixed => assert!((max - 0.1).abs() < 1e-9),
                LatencyDistribution::Uniform => assert!(max <= 0.2),
                LatencyDistribution::Exponential => assert!(max > 0.25 && max <= 1.0),
            }
        }
    }

    #[test]
    fn decode_time_is_max_tokens_over_the_rate() {
        let sim = Simulation {
            tokens_per_second: Some(100.0),
            ..Simulation::default()
        };
        let d = |body| sim.reply(0, &call(body)).delay.unwrap();
        assert_eq!(
            d(serde_json::json!({"max_tokens": 50})),
            Duration::from_millis(500)
        );
        assert_eq!(d(serde_json::json!({})), Duration::from_millis(70));
    }
}
