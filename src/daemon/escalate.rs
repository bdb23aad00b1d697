//! Escalation in the daemon: each claimed request of a model with an
//! escalation rule is routed by `domain::escalation::route` (decided again
//! for every attempt, since each attempt is a new claim), and one that
//! escalates is rewritten to its new model: its body's `model` member is
//! replaced in place, and it queues for the new model's slots, which the
//! database grants within that model's limit across all daemons (the
//! daemon reports it as waiting there; see `slots`), under the new model's
//! adaptive limit and owner shares. One that waits longer than its rule's
//! `escalate_wait` for such a slot goes back to its own model.
//!
//! Where each attempt is sent is recorded (`EscalationStore`) for every
//! request of a model with a rule, so a retry that is not escalated again
//! shows its own model.

use super::slots::{Escalated, Job};
use crate::domain::escalation::{Rules, route};
use crate::store::RoutedAttempt;
use chrono::{DateTime, Utc};
use std::time::Instant;

/// Routes each claimed request of a model with a rule, rewriting those
/// that escalate; returns where each of them is sent, to record.
pub(super) fn decide(rules: &Rules, jobs: &mut [Job], now: DateTime<Utc>) -> Vec<RoutedAttempt> {
    let mut routes = Vec::new();
    for job in jobs.iter_mut() {
        let Some(own) = rules.get(&job.req.model) else {
            continue;
        };
        if let Some(rule) = route(rules, &job.req.model, job.req.deadline, now)
            && let Some(body) = crate::upstream::priority::with_model(&job.req.body, &rule.to)
        {
            let from = std::mem::replace(&mut job.req.model, rule.to.clone());
            metrics::counter!("fusillade_escalations_total", "from" => from.clone(), "to" => rule.to.clone())
                .increment(1);
            job.escalated = Some(Escalated {
                from,
                body: std::mem::replace(&mut job.req.body, body),
                since: Instant::now(),
                wait: own.wait,
            });
        }
        routes.push(RoutedAttempt {
            id: job.req.id,
            attempt: job.req.attempt,
            model: job.req.model.clone(),
        });
    }
    routes
}

/// Sends escalated requests that found no slot in time back to their own
/// model; returns where they are now sent, to record.
pub(super) fn fall_back(jobs: &mut [Job]) -> Vec<RoutedAttempt> {
    jobs.iter_mut()
        .filter_map(|job| {
            let e = job.escalated.take()?;
            metrics::counter!("fusillade_escalation_fallbacks_total", "from" => e.from.clone(), "to" => job.req.model.clone())
                .increment(1);
            job.req.model = e.from;
            job.req.body = e.body;
            Some(RoutedAttempt {
                id: job.req.id,
                attempt: job.req.attempt,
                model: job.req.model.clone(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::abort::Abort;
    use crate::domain::escalation::Rule;
    use crate::domain::ids::TemplateId;
    use crate::domain::request::RequestId;
    use crate::store::ClaimedRequest;
    use std::time::Duration;

    fn job(model: &str, body: &str, deadline: Option<DateTime<Utc>>) -> Job {
        Job {
            req: ClaimedRequest {
                id: RequestId::new(),
                batch_id: None,
                template_id: TemplateId::new(),
                attempt: 2,
                retries: 1,
                model: model.into(),
                custom_id: None,
                deadline,
                path: "/v1/chat/completions".into(),
                body: body.into(),
                endpoint: String::new(),
                prefix_key: 0,
                owner: String::new(),
            },
            abort: Abort::new(),
            escalated: None,
        }
    }

    #[test]
    fn each_attempt_is_routed_and_an_escalated_one_can_go_back() {
        let rules = Rules::from([(
            "x".to_owned(),
            Rule {
                to: "y".into(),
                within: Duration::from_secs(600),
                wait: Duration::from_secs(1),
            },
        )]);
        let now = Utc::now();
        let soon = Some(now + chrono::Duration::minutes(5));
        let later = Some(now + chrono::Duration::hours(5));
        let body = r#"{"model":"x","messages":[]}"#;
        let mut jobs = vec![
            job("x", body, soon),
            job("x", body, later),
            job("z", body, soon),
            job("x", "[]", soon),
        ];
        let routes = decide(&rules, &mut jobs, now);
        let to: Vec<(&str, i32)> = routes
            .iter()
            .map(|r| (r.model.as_str(), r.attempt))
            .collect();
        // Every attempt of a model with a rule is recorded, the others not;
        // a body that is not an object is sent as written.
        assert_eq!(to, [("y", 2), ("x", 2), ("x", 2)]);
        assert_eq!(jobs[0].req.model, "y");
        assert_eq!(jobs[0].req.body, r#"{"model":"y","messages":[]}"#);
        assert!(jobs[1].escalated.is_none() && jobs[3].escalated.is_none());
        let back = fall_back(&mut jobs[..1]);
        assert_eq!(back[0].model, "x");
        assert_eq!(jobs[0].req.model, "x");
        assert_eq!(jobs[0].req.body, body);
        assert!(jobs[0].escalated.is_none());
    }
}
