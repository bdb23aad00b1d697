//! `[models."X"] escalate_to`, `escalate_within` and `escalate_wait`: the
//! escalation rules (see `domain::escalation`), read and checked.

use super::{ConfigError, RawRoute, invalid};
use crate::domain::escalation::{self, BadRules, Rule, Rules};
use std::collections::BTreeMap;
use std::time::Duration;

/// Parses a human duration: a whole number and a unit, `ms`, `s`, `m` or
/// `h` (`"15m"`, `"90s"`).
pub fn parse_duration(text: &str) -> Option<Duration> {
    let at = text.find(|c: char| !c.is_ascii_digit())?;
    let (digits, unit) = text.split_at(at);
    let n: u64 = digits.parse().ok()?;
    let per = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return None,
    };
    Some(Duration::from_millis(n.checked_mul(per)?))
}

fn duration(text: &str, key: &str) -> Result<Duration, ConfigError> {
    parse_duration(text).ok_or_else(|| {
        invalid(
            key,
            format!("is {text:?}; it must be a whole number with a unit, as \"15m\", \"90s\", \"2h\" or \"500ms\""),
        )
    })
}

/// The rules of the `[models]` sections. `routable` tells whether a model
/// without a section has a route (the file named the default upstream).
pub(super) fn rules(
    upstream: &RawRoute,
    models: &BTreeMap<String, RawRoute>,
    routable: bool,
) -> Result<Rules, ConfigError> {
    for (name, set) in [
        ("escalate_to", upstream.escalate_to.is_some()),
        ("escalate_within", upstream.escalate_within.is_some()),
        ("escalate_wait", upstream.escalate_wait.is_some()),
    ] {
        if set {
            return Err(invalid(
                format!("upstream.{name}"),
                "belongs in a [models.\"X\"] section: escalation is per model",
            ));
        }
    }
    let mut rules = Rules::new();
    for (model, raw) in models {
        let key = |k: &str| format!("models.{model:?}.{k}");
        let Some(to) = &raw.escalate_to else {
            for (name, v) in [
                ("escalate_within", &raw.escalate_within),
                ("escalate_wait", &raw.escalate_wait),
            ] {
                if v.is_some() {
                    return Err(invalid(
                        key(name),
                        "needs escalate_to, the model to escalate to",
                    ));
                }
            }
            continue;
        };
        if to.is_empty() {
            return Err(invalid(key("escalate_to"), "must name a model"));
        }
        if !models.contains_key(to) && !routable {
            return Err(invalid(
                key("escalate_to"),
                format!(
                    "names {to:?}, which has no [models.{to:?}] section, and no [upstream] url is \
                     given to route it by"
                ),
            ));
        }
        let within = match &raw.escalate_within {
            Some(w) => duration(w, &key("escalate_within"))?,
            None => {
                return Err(invalid(
                    key("escalate_within"),
                    "is required with escalate_to: how close to its deadline a request escalates",
                ));
            }
        };
        if within.is_zero() {
            return Err(invalid(key("escalate_within"), "must be more than 0"));
        }
        let wait = match &raw.escalate_wait {
            Some(w) => duration(w, &key("escalate_wait"))?,
            None => escalation::DEFAULT_WAIT,
        };
        rules.insert(
            model.clone(),
            Rule {
                to: to.clone(),
                within,
                wait,
            },
        );
    }
    escalation::check(&rules).map_err(|e| {
        let from = match &e {
            BadRules::ToItself(m) => m.clone(),
            BadRules::Cycle(path) => path[0].clone(),
        };
        invalid(format!("models.{from:?}.escalate_to"), e.to_string())
    })?;
    Ok(rules)
}
