//! Deadline hints written into request bodies, so that a server that
//! schedules by priority serves tight windows first (`priority_hint` per
//! route).
//!
//! Bodies are the caller's JSON text, and are sent as written: a hint is
//! spliced in at the level of the object's members, each member's value
//! kept byte for byte and in its place; only the whitespace between members
//! is not kept. A body that is not a JSON object is sent unchanged.

use chrono::{DateTime, Utc};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;

/// Which field carries the hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PriorityHint {
    /// NVIDIA Dynamo's `nvext.agent_hints.priority`: higher is sooner.
    /// Written as [`HORIZON_SECS`] less the seconds left to the deadline
    /// (0 without one), merged into `nvext` and `agent_hints` objects the
    /// body already has; an existing priority there is replaced.
    Nvext,
    /// vLLM's `priority` request field: lower is sooner. Written as the
    /// seconds left to the deadline ([`HORIZON_SECS`] without one), unless
    /// the body already sets it.
    Vllm,
}

/// The longest completion window (a year) in seconds: the range hints take.
pub const HORIZON_SECS: i64 = 366 * 24 * 3600;

/// The body with the hint for a request due at `deadline`, as of `now`;
/// `None` when it is not a JSON object (it is then sent as is).
pub fn with_hint(
    hint: PriorityHint,
    body: &str,
    deadline: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Option<String> {
    let left = deadline.map_or(HORIZON_SECS, |d| {
        (d - now).num_seconds().clamp(0, HORIZON_SECS)
    });
    let mut members = Members::parse(body)?;
    match hint {
        PriorityHint::Vllm => {
            if !members.has("priority") {
                members.set("priority", left.to_string());
            }
        }
        PriorityHint::Nvext => {
            let value = (HORIZON_SECS - left).to_string();
            let nvext = match members.get("nvext") {
                Some(raw) => Members::parse(raw)?,
                None => Members::default(),
            };
            let mut nvext = nvext;
            let mut hints = match nvext.get("agent_hints") {
                Some(raw) => Members::parse(raw)?,
                None => Members::default(),
            };
            hints.set("priority", value);
            nvext.set("agent_hints", hints.render());
            members.set("nvext", nvext.render());
        }
    }
    Some(members.render())
}

/// The body with its `model` member set to `model`, in its place (or
/// appended), every other member kept as written (used by escalation, see
/// `domain::escalation`); `None` when it is not a JSON object.
pub fn with_model(body: &str, model: &str) -> Option<String> {
    let mut members = Members::parse(body)?;
    members.set(
        "model",
        serde_json::to_string(model).expect("a string serializes"),
    );
    Some(members.render())
}

/// A JSON object's members in order: keys as written (escaped), values as
/// raw text.
#[derive(Debug, Default)]
struct Members<'a>(Vec<(Cow<'a, str>, Cow<'a, str>)>);

impl<'a> Members<'a> {
    fn parse(text: &'a str) -> Option<Self> {
        let mut de = serde_json::Deserializer::from_str(text);
        let m = Members::deserialize(&mut de).ok()?;
        de.end().ok()?;
        Some(m)
    }

    fn has(&self, key: &str) -> bool {
        self.0.iter().any(|(k, _)| k == key)
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_ref())
    }

    /// Replaces the value in place (every member of that key), or appends.
    fn set(&mut self, key: &str, value: String) {
        let mut found = false;
        for (k, v) in &mut self.0 {
            if k == key {
                *v = Cow::Owned(value.clone());
                found = true;
            }
        }
        if !found {
            self.0.push((Cow::Owned(key.to_owned()), Cow::Owned(value)));
        }
    }

    fn render(&self) -> String {
        let mut out = String::from("{");
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&serde_json::to_string(k.as_ref()).expect("a string serializes"));
            out.push(':');
            out.push_str(v);
        }
        out.push('}');
        out
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Members<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Members<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(k) = map.next_key::<Cow<'de, str>>()? {
                    let v: &'de RawValue = map.next_value()?;
                    out.push((k, Cow::Borrowed(v.get())));
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        "2026-01-01T00:00:00Z".parse().unwrap()
    }

    fn in_secs(s: i64) -> Option<DateTime<Utc>> {
        Some(now() + chrono::Duration::seconds(s))
    }

    #[test]
    fn the_model_is_replaced_in_place() {
        let body = r#"{"messages":[{"role":"user","content":"hi"}],"model":"x","n":1}"#;
        assert_eq!(
            with_model(body, "y\"z").unwrap(),
            r#"{"messages":[{"role":"user","content":"hi"}],"model":"y\"z","n":1}"#
        );
        assert!(with_model("[1]", "y").is_none());
    }

    #[test]
    fn vllm_priority_is_the_seconds_left_and_keeps_the_order() {
        let body =
            r#"{"model":"m", "messages":[{"role":"user","content":"hi"}],"temperature":0.50}"#;
        let out = with_hint(PriorityHint::Vllm, body, in_secs(600), now()).unwrap();
        assert_eq!(
            out,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0.50,"priority":600}"#
        );
        // A priority the caller set wins.
        let own = r#"{"priority":3,"model":"m"}"#;
        assert_eq!(
            with_hint(PriorityHint::Vllm, own, in_secs(600), now()).unwrap(),
            own
        );
    }

    #[test]
    fn nvext_hints_merge_into_existing_objects_in_place() {
        let body =
            r#"{"model":"m","nvext":{"ignore_eos":true,"agent_hints":{"osl":10}},"top_p":1}"#;
        let out = with_hint(PriorityHint::Nvext, body, in_secs(60), now()).unwrap();
        let want = format!(
            r#"{{"model":"m","nvext":{{"ignore_eos":true,"agent_hints":{{"osl":10,"priority":{}}}}},"top_p":1}}"#,
            HORIZON_SECS - 60
        );
        assert_eq!(out, want);
        // Earlier deadline, higher priority.
        let later = with_hint(PriorityHint::Nvext, body, in_secs(3600), now()).unwrap();
        assert!(later < out, "{later} sorts below {out}");
    }

    #[test]
    fn nvext_is_added_when_absent_and_non_objects_are_left_alone() {
        let out = with_hint(PriorityHint::Nvext, r#"{"model":"m"}"#, None, now()).unwrap();
        assert_eq!(
            out,
            r#"{"model":"m","nvext":{"agent_hints":{"priority":0}}}"#
        );
        assert_eq!(with_hint(PriorityHint::Nvext, "[1]", None, now()), None);
        assert_eq!(
            with_hint(PriorityHint::Nvext, r#"{"nvext":5}"#, None, now()),
            None
        );
    }
}
