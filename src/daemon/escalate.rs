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
