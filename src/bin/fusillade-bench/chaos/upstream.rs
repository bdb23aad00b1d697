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
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
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
    /// The client's first-byte timeout, which ends a hang.
    pub hang_timeout: Duration,
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
    /// When each model's hangs arrived.
    pub hangs: HashMap<String, Vec<Instant>>,
    /// Calls that arrived while their model had more calls in flight than
    /// its limit.
    pub passes: Vec<Pass>,
}

/// A call that found its model over its limit.
#[derive(Debug, Clone)]
pub struct Pass {
    /// The model.
    pub model: String,
    /// When the call arrived.
    pub at: Instant,
    /// Its model's calls in flight then, this one included.
    pub in_flight: u64,
    /// Whether hangs that had just timed out at the client can account for
    /// the excess (the mock sees their connections close a moment late).
    pub excused: bool,
}

/// The running upstream.
pub struct ChaosUpstream {
    /// The mock; its stats count calls in flight per model.
    pub mock: Arc<MockUpstream>,
    /// What was served, by line.
    pub log: Arc<Mutex<Log>>,
}

impl ChaosUpstream {
    /// Starts the upstream on a free loopback port.
    pub async fn start(plan: Plan, mix_: FaultMix) -> anyhow::Result<Self> {
        let log = Arc::new(Mutex::new(Log {
            calls: vec![Vec::new(); plan.lines as usize],
            strays: 0,
            stray_ids: Vec::new(),
            hangs: HashMap::new(),
            passes: Vec::new(),
        }));
        let responder_log = log.clone();
        // The responder reads the mock's own counts of calls in flight.
        let me: Arc<OnceLock<Weak<MockUpstream>>> = Arc::default();
        let responder_me = me.clone();
        let behavior = MockBehavior::default().respond(move |call| {
            let in_flight = responder_me
                .get()
                .and_then(Weak::upgrade)
                .and_then(|m| m.counters().in_flight_per_model.get(&call.model).copied());
            respond(&plan, &mix_, &responder_log, call, in_flight)
        });
        let mock = Arc::new(MockUpstream::start_on(0, behavior).await?);
        let _ = me.set(Arc::downgrade(&mock));
        Ok(Self { mock, log })
    }
}

/// How long after a client gave up on a hanging call the mock may still
/// count it in flight: the client hands its slot on at once, and the mock
/// sees the connection close a moment later.
const DISCONNECT_LAG: Duration = Duration::from_millis(250);

fn respond(
    plan: &Plan,
    m: &FaultMix,
    log: &Mutex<Log>,
    call: &MockCall,
    in_flight: Option<u64>,
) -> MockReply {
    let arrived = Instant::now();
    if let (Some(n), Some(model)) = (in_flight, plan.models.iter().find(|x| x.name == call.model))
        && n > u64::from(model.limit)
    {
        let mut log = log.lock().expect("no panic while held");
        // Hangs whose client gave up just now may still be counted here.
        let lagging = log.hangs.get(&call.model).map_or(0, |hangs| {
            hangs
                .iter()
                .map(|h| *h + m.hang_timeout)
                .filter(|gave_up| {
                    *gave_up <= arrived + Duration::from_millis(50)
                        && arrived.saturating_duration_since(*gave_up) <= DISCONNECT_LAG
                })
                .count() as u64
        });
        log.passes.push(Pass {
            model: call.model.clone(),
            at: arrived,
            in_flight: n,
            excused: n - u64::from(model.limit) <= lagging,
        });
    }
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
    {
        let mut log = log.lock().expect("no panic while held");
        log.calls[i as usize].push(Call {
            at: arrived,
            served,
        });
        if fault == Some(Fault::Hang) {
            log.hangs
                .entry(call.model.clone())
                .or_default()
                .push(arrived);
        }
    }
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
            hang_timeout: Duration::from_millis(500),
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
