//! The chaos upstream: fusillade's mock (`fusillade::mock`) with a
//! responder that mixes faults into the answers, and a log of what it
//! served to each line, from which the checker counts the calls that the
//! upstream did not ask for.
//!
//! The first two calls of a line may each meet a fault (5xx, 429 with
//! `Retry-After`, a connection cut mid-answer, or a hang that only the
//! client's timeout ends); later calls never do, so every line can end well
//! within the retry limit. Some answers are slow (still inside the
//! timeout). The final answer of a line is always the same (see
//! [`Plan::answer`]): a `chat.completion`, an HTML page with status 200, or
//! one with NUL bytes.

use super::lines::{Plan, line_of, mix};
use fusillade::mock::{MockBehavior, MockCall, MockReply, MockUpstream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A fault the upstream serves instead of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// 500, 502 or 503.
    ServerError(u16),
    /// 429 with `Retry-After`.
    TooMany,
    /// The connection is cut after half the answer.
    Reset,
    /// No answer until the client gives up.
    Hang,
}

/// What the upstream served one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// A fault: the upstream asked for this call to be made again.
    Fault(Fault),
    /// The line's final answer.
    Answer,
}

/// One call of a line.
#[derive(Debug, Clone, Copy)]
pub struct Call {
    /// When it arrived.
    pub at: Instant,
    /// What it got.
    pub served: Served,
}

/// How the faults are mixed.
#[derive(Debug, Clone, Copy)]
pub struct FaultMix {
    /// Per mille of first and second calls that meet a fault.
    pub fault_per_mille: u64,
    /// Per mille of answers that are slow.
    pub slow_per_mille: u64,
    /// Answer latency: uniform in this range (milliseconds).
    pub latency_ms: (u64, u64),
    /// How long a slow answer takes (milliseconds), at most; below the
    /// client's first-byte timeout.
    pub slow_ms: (u64, u64),
    /// The `Retry-After` of a 429, in seconds.
    pub retry_after_secs: u64,
}

/// Everything the upstream served, by line.
#[derive(Debug, Default)]
pub struct Log {
    /// The calls of each line, in order.
    pub calls: Vec<Vec<Call>>,
    /// Calls whose custom_id is not one of the batch's lines.
    pub strays: u64,
    /// The custom_ids of the first few of them.
    pub stray_ids: Vec<String>,
}

/// The running upstream.
pub struct ChaosUpstream {
    /// The mock; its stats count calls in flight per model.
    pub mock: Arc<MockUpstream>,
    /// What was served, by line.
    pub log: Arc<Mutex<Log>>,
    /// When a model's most calls in flight first went past its limit
    /// (model, when, how many), sampled every few milliseconds.
    pub over_limit: Arc<Mutex<Vec<(String, Instant, u64)>>>,
}

impl ChaosUpstream {
    /// Starts the upstream on a free loopback port.
    pub async fn start(plan: Plan, mix_: FaultMix) -> anyhow::Result<Self> {
        let log = Arc::new(Mutex::new(Log {
            calls: vec![Vec::new(); plan.lines as usize],
            strays: 0,
            stray_ids: Vec::new(),
        }));
        let responder_log = log.clone();
        let responder_plan = plan.clone();
        let behavior = MockBehavior::default()
            .respond(move |call| respond(&responder_plan, &mix_, &responder_log, call));
        let mock = Arc::new(MockUpstream::start_on(0, behavior).await?);
        let over_limit = Arc::new(Mutex::new(Vec::new()));
        tokio::spawn(watch_limits(
            Arc::downgrade(&mock),
            plan.models.clone(),
            over_limit.clone(),
        ));
        Ok(Self {
            mock,
            log,
            over_limit,
        })
    }
}

/// Notes when each model's most calls in flight grows past its limit, so
/// that the moment can be compared with the chaos events and the hangs.
async fn watch_limits(
    mock: std::sync::Weak<MockUpstream>,
    models: Vec<super::lines::Model>,
    over: Arc<Mutex<Vec<(String, Instant, u64)>>>,
) {
    let mut seen: Vec<u64> = models.iter().map(|m| u64::from(m.limit)).collect();
    while let Some(mock) = mock.upgrade() {
        let stats = mock.counters();
        drop(mock);
        for (m, seen) in models.iter().zip(&mut seen) {
            let max = stats.max_in_flight_of(&m.name);
            if max > *seen {
                *seen = max;
                over.lock().expect("no panic while held").push((
                    m.name.clone(),
                    Instant::now(),
                    max,
                ));
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn respond(plan: &Plan, m: &FaultMix, log: &Mutex<Log>, call: &MockCall) -> MockReply {
    let arrived = Instant::now();
    let line = call
        .custom_id
        .as_deref()
        .and_then(line_of)
        .filter(|i| *i < plan.lines);
    let Some(i) = line else {
        let mut log = log.lock().expect("no panic while held");
        log.strays += 1;
        if log.stray_ids.len() < 5 {
            log.stray_ids
                .push(format!("{:?} ({})", call.custom_id, call.path));
        }
        return MockReply::status(400, r#"{"error":{"message":"unknown custom_id"}}"#);
    };
    // One draw per call: the same line and attempt always meet the same fate.
    let r = mix(plan.seed ^ mix(i.wrapping_mul(31).wrapping_add(u64::from(call.attempt))));
    let fault =
        (call.attempt <= 2 && r % 1000 < m.fault_per_mille).then(|| match (r / 1000) % 20 {
            0..=6 => Fault::ServerError([500, 502, 503][((r / 20_000) % 3) as usize]),
            7..=11 => Fault::TooMany,
            12..=17 => Fault::Reset,
            _ => Fault::Hang,
        });
    let served = fault.map_or(Served::Answer, Served::Fault);
    log.lock().expect("no panic while held").calls[i as usize].push(Call {
        at: arrived,
        served,
    });
    let (lo, hi) = m.latency_ms;
    let latency = lo + (r >> 20) % (hi.saturating_sub(lo) + 1);
    let latency = if (r >> 40) % 1000 < m.slow_per_mille {
        let (lo, hi) = m.slow_ms;
        lo + (r >> 8) % (hi.saturating_sub(lo) + 1)
    } else {
        latency
    };
    let delay = Duration::from_millis(latency);
    let answer = plan.answer(i, &call.model, &call.body["messages"]);
    match fault {
        Some(Fault::ServerError(code)) => {
            MockReply::status(code, r#"{"error":{"message":"chaos: the server failed"}}"#)
                .with_delay(delay)
        }
        // At once, so that the retry's spacing is measured from the answer.
        Some(Fault::TooMany) => {
            MockReply::status(429, r#"{"error":{"message":"chaos: slow down"}}"#)
                .with_header("retry-after", m.retry_after_secs.to_string())
        }
        Some(Fault::Reset) => MockReply::ok_for(call).with_reset().with_delay(delay),
        Some(Fault::Hang) => MockReply::hanging(),
        None if answer.json => MockReply::status(200, answer.text).with_delay(delay),
        None => MockReply::status(200, answer.text)
            .with_header("content-type", "text/html")
            .with_delay(delay),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::lines::parse_model;

    #[tokio::test]
    async fn faults_come_only_on_the_first_two_calls_and_are_logged() {
        let plan = Plan {
            lines: 50,
            models: vec![parse_model("m=4").unwrap()],
            seed: 1,
            odd_per_mille: 0,
            nul_bodies: false,
        };
        let mix_ = FaultMix {
            fault_per_mille: 1000,
            slow_per_mille: 0,
            latency_ms: (0, 0),
            slow_ms: (0, 0),
            retry_after_secs: 0,
        };
        let up = ChaosUpstream::start(plan.clone(), mix_).await.unwrap();
        let http = reqwest::Client::new();
        let line: serde_json::Value = serde_json::from_str(&plan.input_line(5)).unwrap();
        let mut last = None;
        for _ in 0..3 {
            let sent = http
                .post(format!("{}/v1/chat/completions", up.mock.url()))
                .header("x-fusillade-custom-id", "chaos-5")
                .body(line["body"].to_string())
                .timeout(Duration::from_millis(500))
                .send()
                .await;
            last = match sent {
                Ok(r) => Some((r.status().as_u16(), r.text().await.unwrap_or_default())),
                Err(_) => None,
            };
        }
        let want = plan.answer(5, "m", &line["body"]["messages"]).text;
        assert_eq!(last, Some((200, want)));
        let log = up.log.lock().unwrap();
        let served: Vec<Served> = log.calls[5].iter().map(|c| c.served).collect();
        assert_eq!(served.len(), 3);
        assert!(matches!(served[0], Served::Fault(_)));
        assert!(matches!(served[1], Served::Fault(_)));
        assert_eq!(served[2], Served::Answer);
    }
}
