//! Escalation to a faster model: a request of model X whose batch has less
//! than `escalate_within` left before its deadline is sent as model Y
//! (`[models."X"] escalate_to = "Y"`). Decided here, once, for every
//! backend: the daemon asks [`route`] for each request it claims (so a
//! retried request is decided again), and spends Y's slots on it (see
//! `daemon::escalate`).

use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::time::Duration;

/// How long an escalated request waits for a slot of its new model before
/// it goes back to its own, unless the model's `escalate_wait` says.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(5);

/// One model's escalation rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The model its near-deadline requests are sent as.
    pub to: String,
    /// A request escalates when its batch has less than this left.
    pub within: Duration,
    /// Most time an escalated request waits for a slot of `to` before it
    /// falls back to its own model.
    pub wait: Duration,
}

/// Escalation rules by the model they escalate from.
pub type Rules = BTreeMap<String, Rule>;

/// Why a set of rules was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadRules {
    /// A model escalates to itself.
    #[error("model {0:?} escalates to itself")]
    ToItself(String),
    /// Following the rules from a model comes back to it.
    #[error("escalation goes round in a circle: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
}

/// Checks that no model escalates to itself, directly or through others.
pub fn check(rules: &Rules) -> Result<(), BadRules> {
    for (from, rule) in rules {
        if rule.to == *from {
            return Err(BadRules::ToItself(from.clone()));
        }
        let mut path = vec![from.clone()];
        let mut at = &rule.to;
        loop {
            path.push(at.clone());
            if at == from {
                return Err(BadRules::Cycle(path));
            }
            match rules.get(at) {
                Some(next) if path.len() <= rules.len() + 1 => at = &next.to,
                _ => break,
            }
        }
    }
    Ok(())
}

/// The model a request of `model` due at `deadline` is sent as at `now`,
/// when it escalates: the rules are followed from model to model as long
/// as each one's window applies (rules are checked acyclic). `None`: it is
/// sent as `model`. A request without a deadline never escalates.
pub fn route<'a>(
    rules: &'a Rules,
    model: &str,
    deadline: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Option<&'a Rule> {
    let left = (deadline? - now).to_std().unwrap_or(Duration::ZERO);
    let mut found: Option<&Rule> = None;
    let mut at = model;
    // Bounded even if unchecked rules had a cycle.
    for _ in 0..=rules.len() {
        match rules.get(at) {
            Some(rule) if left < rule.within => {
                found = Some(rule);
                at = &rule.to;
            }
            _ => break,
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(list: &[(&str, &str, u64)]) -> Rules {
        list.iter()
            .map(|(f, t, mins)| {
                (
                    f.to_string(),
                    Rule {
                        to: t.to_string(),
                        within: Duration::from_secs(mins * 60),
                        wait: DEFAULT_WAIT,
                    },
                )
            })
            .collect()
    }

    fn now() -> DateTime<Utc> {
        "2026-01-01T00:00:00Z".parse().unwrap()
    }

    fn in_mins(m: i64) -> Option<DateTime<Utc>> {
        Some(now() + chrono::Duration::minutes(m))
    }

    #[test]
    fn escalates_only_inside_the_window() {
        let r = rules(&[("x", "y", 15)]);
        assert_eq!(route(&r, "x", in_mins(10), now()).unwrap().to, "y");
        assert!(route(&r, "x", in_mins(20), now()).is_none());
        assert!(
            route(&r, "x", in_mins(15), now()).is_none(),
            "exactly 15m left"
        );
        assert!(route(&r, "x", None, now()).is_none(), "no deadline");
        assert!(route(&r, "y", in_mins(1), now()).is_none(), "no rule");
        // Past the deadline: as urgent as can be.
        assert_eq!(route(&r, "x", in_mins(-1), now()).unwrap().to, "y");
    }

    #[test]
    fn follows_a_chain_while_each_window_applies() {
        let r = rules(&[("x", "y", 15), ("y", "z", 5)]);
        assert_eq!(route(&r, "x", in_mins(10), now()).unwrap().to, "y");
        assert_eq!(route(&r, "x", in_mins(3), now()).unwrap().to, "z");
    }

    #[test]
    fn self_escalation_and_cycles_are_refused() {
        assert_eq!(
            check(&rules(&[("x", "x", 1)])),
            Err(BadRules::ToItself("x".into()))
        );
        assert!(matches!(
            check(&rules(&[("x", "y", 1), ("y", "z", 1), ("z", "x", 1)])),
            Err(BadRules::Cycle(p)) if p == ["x", "y", "z", "x"]
        ));
        assert_eq!(check(&rules(&[("x", "y", 1), ("y", "z", 1)])), Ok(()));
        // A cycle among others is found from wherever it is entered.
        assert!(check(&rules(&[("a", "x", 1), ("x", "y", 1), ("y", "x", 1)])).is_err());
    }
}
