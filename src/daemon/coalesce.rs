//! Identical deterministic requests sent once.
//!
//! Two lines with the same endpoint and body (the custom_id is not part of
//! the body) that are deterministic (temperature 0 and at most one choice,
//! or any embeddings or moderations line) get the same answer, so only one
//! is sent: a request whose twin is in flight joins it and is settled with
//! its outcome when it ends, without holding a slot meanwhile; one whose
//! twin was answered a moment ago takes that answer. Lines at another
//! temperature (or none: OpenAI's default is 1) are always sent.
//!
//! Twins are found within one batch only. Across batches, and so across
//! owners, a reused answer would tell one owner that someone sent the same
//! prompt a moment ago (it comes back at once, and with no usage of its own).

use super::abort::Abort;
use crate::store::ClaimedRequest;
use crate::upstream::CallOutcome;
use serde::Deserialize;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long an answer is reused for later twins.
const RECENT_FOR: Duration = Duration::from_secs(120);
/// Most answers kept for reuse.
const RECENT_MAX: usize = 8192;
/// Most bytes of answers (and their keys) kept for reuse.
const RECENT_MAX_BYTES: usize = 64 << 20;

/// The fields that make a chat or completions body deterministic.
#[derive(Deserialize)]
struct Sampling {
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    n: Option<u64>,
}

/// The key twins share, when the request is deterministic.
pub(super) fn key(req: &ClaimedRequest) -> Option<String> {
    let path = req.path.trim_end_matches('/');
    let always = path.ends_with("/embeddings") || path.ends_with("/moderations");
    if !always {
        let s: Sampling = serde_json::from_str(&req.body).ok()?;
        if s.temperature != Some(0.0) || s.n.is_some_and(|n| n != 1) {
            return None;
        }
    }
    let batch = req.batch_id.map(|b| b.to_string()).unwrap_or_default();
    Some(format!(
        "{batch}\n{}\n{}\n{}",
        req.endpoint, req.path, req.body
    ))
}

/// A request waiting for its twin's outcome.
#[derive(Debug)]
pub(super) struct Follower {
    pub req: ClaimedRequest,
    pub abort: Abort,
}

/// What a request with a key does.
pub(super) enum Role {
    /// No twin in flight: it makes the call, then hands its outcome on.
    Leader,
    /// A twin is in flight: it was handed to it.
    Joined,
    /// A twin was answered a moment ago: this is the answer.
    Answered(Box<(Follower, CallOutcome)>),
}

#[derive(Default)]
struct Inner {
    in_flight: HashMap<String, Vec<Follower>>,
    recent: HashMap<String, (Instant, CallOutcome)>,
    order: VecDeque<(Instant, String)>,
    bytes: usize,
}

/// Twins in flight and answers kept for reuse.
#[derive(Default)]
pub(super) struct Coalescer {
    inner: Mutex<Inner>,
}

fn size(key: &str, o: &CallOutcome) -> usize {
    key.len()
        + match o {
            CallOutcome::Answered { body, .. } => body.len(),
            _ => 0,
        }
}

impl Coalescer {
    /// Decides the request's role; a follower is taken in.
    pub(super) fn begin(
        &self,
        key: &str,
        req: ClaimedRequest,
        abort: Abort,
    ) -> (Role, Option<(ClaimedRequest, Abort)>) {
        let mut inner = self.inner.lock().expect("coalescer lock");
        inner.expire(Instant::now());
        if let Some((_, o)) = inner.recent.get(key) {
            let o = o.clone();
            return (Role::Answered(Box::new((Follower { req, abort }, o))), None);
        }
        match inner.in_flight.get_mut(key) {
            Some(followers) => {
                followers.push(Follower { req, abort });
                (Role::Joined, None)
            }
            None => {
                inner.in_flight.insert(key.to_owned(), Vec::new());
                (Role::Leader, Some((req, abort)))
            }
        }
    }

    /// The leader's call ended: returns its followers, and keeps a
    /// successful answer (`outcome`) for twins to come.
    pub(super) fn end(&self, key: &str, outcome: Option<&CallOutcome>) -> Vec<Follower> {
        let mut inner = self.inner.lock().expect("coalescer lock");
        let followers = inner.in_flight.remove(key).unwrap_or_default();
        if let Some(o @ CallOutcome::Answered { status, .. }) = outcome
            && (200..300).contains(status)
        {
            let bytes = size(key, o);
            if bytes <= RECENT_MAX_BYTES / 16 {
                let now = Instant::now();
                if let Some((_, old)) = inner.recent.insert(key.to_owned(), (now, o.clone())) {
                    inner.bytes -= size(key, &old);
                }
                inner.bytes += bytes;
                inner.order.push_back((now, key.to_owned()));
                while inner.recent.len() > RECENT_MAX || inner.bytes > RECENT_MAX_BYTES {
                    if !inner.pop_oldest() {
                        break;
                    }
                }
            }
        }
        followers
    }
}

impl Inner {
    fn expire(&mut self, now: Instant) {
        while self
            .order
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > RECENT_FOR)
        {
            self.pop_oldest();
        }
    }

    /// Drops the oldest kept answer; false when none is left.
    fn pop_oldest(&mut self) -> bool {
        let Some((at, key)) = self.order.pop_front() else {
            return false;
        };
        // A key answered again later has a newer entry: keep that one.
        if let Some((kept_at, o)) = self.recent.get(&key)
            && *kept_at == at
        {
            self.bytes -= size(&key, o);
            self.recent.remove(&key);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ids::TemplateId;
    use crate::domain::request::RequestId;

    fn req(path: &str, body: &str) -> ClaimedRequest {
        ClaimedRequest {
            id: RequestId::new(),
            batch_id: None,
            template_id: TemplateId::new(),
            attempt: 1,
            retries: 0,
            model: "m".into(),
            custom_id: None,
            deadline: None,
            path: path.into(),
            body: body.into(),
            endpoint: String::new(),
            prefix_key: 0,
            owner: String::new(),
        }
    }

    const CHAT: &str = "/v1/chat/completions";

    #[test]
    fn twins_are_found_within_one_batch_only() {
        let body = r#"{"model":"m","temperature":0}"#;
        let in_batch = |b: crate::domain::batch::BatchId| ClaimedRequest {
            batch_id: Some(b),
            ..req(CHAT, body)
        };
        let (a, b) = (
            crate::domain::batch::BatchId::new(),
            crate::domain::batch::BatchId::new(),
        );
        assert_eq!(key(&in_batch(a)), key(&in_batch(a)));
        assert_ne!(key(&in_batch(a)), key(&in_batch(b)));
    }

    #[test]
    fn only_deterministic_requests_have_a_key() {
        assert!(key(&req(CHAT, r#"{"model":"m","temperature":0}"#)).is_some());
        assert!(key(&req(CHAT, r#"{"model":"m","temperature":0.0,"n":1}"#)).is_some());
        assert!(key(&req(CHAT, r#"{"model":"m","temperature":0.7}"#)).is_none());
        assert!(
            key(&req(CHAT, r#"{"model":"m"}"#)).is_none(),
            "the default is 1"
        );
        assert!(key(&req(CHAT, r#"{"model":"m","temperature":0,"n":2}"#)).is_none());
        assert!(key(&req("/v1/embeddings", r#"{"model":"e","input":"x"}"#)).is_some());
        assert!(key(&req("/v1/moderations", r#"{"input":"x"}"#)).is_some());
        assert_ne!(
            key(&req(CHAT, r#"{"model":"m","temperature":0,"x":1}"#)),
            key(&req(CHAT, r#"{"model":"m","temperature":0,"x":2}"#))
        );
    }

    fn answer(text: &str) -> CallOutcome {
        CallOutcome::Answered {
            status: 200,
            body: text.as_bytes().to_vec(),
            upstream_request_id: None,
            retry_after: None,
        }
    }

    #[test]
    fn twins_join_the_call_in_flight_then_reuse_its_answer() {
        let c = Coalescer::default();
        let body = r#"{"model":"m","temperature":0}"#;
        let k = key(&req(CHAT, body)).unwrap();
        assert!(matches!(
            c.begin(&k, req(CHAT, body), Abort::new()).0,
            Role::Leader
        ));
        assert!(matches!(
            c.begin(&k, req(CHAT, body), Abort::new()).0,
            Role::Joined
        ));
        assert!(matches!(
            c.begin(&k, req(CHAT, body), Abort::new()).0,
            Role::Joined
        ));
        assert_eq!(c.end(&k, Some(&answer("a"))).len(), 2);
        match c.begin(&k, req(CHAT, body), Abort::new()).0 {
            Role::Answered(b) => assert_eq!(b.1, answer("a")),
            _ => panic!("the answer was not reused"),
        }
    }

    #[test]
    fn a_failed_call_is_not_reused() {
        let c = Coalescer::default();
        let k = "k";
        assert!(matches!(
            c.begin(k, req(CHAT, "{}"), Abort::new()).0,
            Role::Leader
        ));
        let refused = CallOutcome::Answered {
            status: 429,
            body: Vec::new(),
            upstream_request_id: None,
            retry_after: None,
        };
        c.end(k, Some(&refused));
        assert!(matches!(
            c.begin(k, req(CHAT, "{}"), Abort::new()).0,
            Role::Leader
        ));
        c.end(k, None);
        assert!(matches!(
            c.begin(k, req(CHAT, "{}"), Abort::new()).0,
            Role::Leader
        ));
    }
}
