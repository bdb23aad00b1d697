//! The figures of a run, as a table, and the violations among them.

use super::Args;
use super::client::Tally;
use super::malformed::FloodReport;
use super::schedule::Events;
use super::verify::{Calls, Lines, Logs, Passes};
use std::time::Duration;

/// Everything a run measured.
pub struct Figures {
    /// The flags.
    pub args: Args,
    /// The seed used.
    pub seed: u64,
    /// `pg_ctl --version`.
    pub pg_version: String,
    /// What the chaos did.
    pub events: Events,
    /// The bad requests.
    pub flood: FloodReport,
    /// The files against the input.
    pub files: Lines,
    /// The upstream's calls.
    pub calls: Calls,
    /// Per model: most in flight, limit.
    pub limits: Vec<(String, u64, u32)>,
    /// The calls that found their model over its limit.
    pub passes: Passes,
    /// The logs.
    pub logs: Logs,
    /// Every API answer.
    pub tally: Tally,
    /// Batches not ended.
    pub stuck: u64,
    /// Processes that did not stop cleanly on SIGTERM.
    pub unclean: Vec<String>,
    /// Worker processes started in all.
    pub workers_started: u64,
    /// The whole run.
    pub total_time: Duration,
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

impl Figures {
    /// Every broken promise, one sentence each.
    pub fn violations(&self) -> Vec<String> {
        let mut v = Vec::new();
        let f = &self.files;
        let mut count = |n: u64, what: &str| {
            if n > 0 {
                v.push(format!("{n} {what}"));
            }
        };
        count(f.lost, "lines lost");
        count(f.duplicated, "lines duplicated");
        count(f.wrong, "lines with a wrong answer");
        count(f.errors, "error lines (every line should have succeeded)");
        count(f.foreign + f.unreadable, "foreign or unreadable lines");
        count(self.tally.five_xx(), "5xx answers from the API");
        count(self.stuck, "batches not ended");
        count(self.calls.early_retries, "retries sooner than Retry-After");
        count(self.calls.strays, "upstream calls for no line of the batch");

        count(self.logs.panics.len() as u64, "panics in the logs");
        if self.passes.unexcused > 0 {
            let most: Vec<String> = self
                .limits
                .iter()
                .filter(|(_, max, limit)| *max > u64::from(*limit))
                .map(|(m, max, limit)| format!("{m} {max}/{limit}"))
                .collect();
            v.push(format!(
                "{} calls found their model over its limit (most in flight: {})",
                self.passes.unexcused,
                most.join(", ")
            ));
        }
        v.extend(f.count_mismatches.iter().cloned());
        v.extend(self.events.crashed.iter().cloned());
        v.extend(self.unclean.iter().cloned());
        if self.events.status != "completed" {
            v.push(format!(
                "the batch ended as {:?}, not completed",
                self.events.status
            ));
        }
        for s in &self.events.skipped {
            v.push(format!(
                "the {s} did not happen: the batch ended, or stopped moving, first"
            ));
        }
        v
    }

    /// Prints the table, then the violations and examples.
    pub fn print(&self) {
        let a = &self.args;
        let e = &self.events;
        let c = &self.calls;
        let f = &self.files;
        let limits: Vec<String> = self
            .limits
            .iter()
            .map(|(m, max, limit)| format!("{m} {max}/{limit}"))
            .collect();
        let causes: Vec<String> = c
            .extra_by_cause
            .iter()
            .map(|(what, n)| match *what {
                "unexplained" => format!("{n} unexplained"),
                what => format!("{n} after a {what}"),
            })
            .collect();
        let per_kill = match (c.extra_by_cause.get("SIGKILL"), e.kills) {
            (Some(n), k) if k > 0 => format!(", {:.2} per SIGKILL", *n as f64 / k as f64),
            _ => String::new(),
        };
        let restarting: u64 = self.tally.restarting.values().sum();
        let rows: Vec<(&str, String)> = vec![
            ("lines", a.lines.to_string()),
            (
                "models (limit)",
                a.models
                    .iter()
                    .map(|m| format!("{}={}", m.name, m.limit))
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
            (
                "workers (started in all)",
                format!("{} ({})", a.workers, self.workers_started),
            ),
            (
                "NUL answers / liveness pressure",
                format!("{} / {}", !a.no_nul_bodies, a.liveness_pressure),
            ),
            ("batch time", secs(e.batch_time)),
            ("worker SIGKILLs", e.kills.to_string()),
            (
                "PostgreSQL restarts (immediate)",
                format!(
                    "{} (down {}, /healthz 200 {} after)",
                    e.pg_restarts,
                    secs(e.pg_down),
                    e.healthz_back.map_or("never".into(), secs)
                ),
            ),
            (
                "rolling restarts (SIGTERM)",
                format!("{} workers in {}", e.graceful, secs(e.rolling)),
            ),
            ("upstream calls", c.total.to_string()),
            (
                "retries asked by the upstream",
                format!("{} ({} hangs ended by the timeout)", c.asked, c.hangs),
            ),
            (
                "extra upstream calls",
                format!("{} ({}{per_kill})", c.extra, causes.join(", ")),
            ),
            (
                "bad inputs tried",
                format!(
                    "{} ({} refused files stored)",
                    self.flood.sent, self.flood.files_stored
                ),
            ),
            (
                "API calls (during the restart)",
                format!("{} ({restarting})", self.tally.total()),
            ),
            (
                "output / error lines",
                format!("{} / {}", f.output, f.errors),
            ),
            ("lost", f.lost.to_string()),
            ("duplicated", f.duplicated.to_string()),
            (
                "wrong content",
                (f.wrong + f.foreign + f.unreadable).to_string(),
            ),
            (
                "counts and usage match",
                if f.count_mismatches.is_empty() {
                    "yes".into()
                } else {
                    format!("no ({})", f.count_mismatches.len())
                },
            ),
            (
                "5xx (no answer)",
                format!("{} ({})", self.tally.five_xx(), self.tally.unanswered()),
            ),
            ("stuck batches", self.stuck.to_string()),
            ("max in flight / limit", limits.join(", ")),
            (
                "calls over a limit (explained by hangs)",
                format!("{} ({})", self.passes.unexcused, self.passes.excused),
            ),
            ("early retries after 429", c.early_retries.to_string()),
            ("panics", self.logs.panics.len().to_string()),
            (
                "live workers declared dead",
                self.logs.declared_dead.to_string(),
            ),
            (
                "log lines WARN / ERROR",
                format!("{} / {}", self.logs.warnings, self.logs.errors),
            ),
            ("total time", secs(self.total_time)),
        ];
        println!("\nchaos figures (seed {}, {})", self.seed, self.pg_version);
        let width = rows
            .iter()
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0);
        for (k, v) in &rows {
            println!("  {k:<width$}  {v}");
        }
        if !f.error_codes.is_empty() {
            println!("  error codes: {:?}", f.error_codes);
        }
        if !self.tally.no_answer.is_empty() {
            println!("  no answer to: {}", self.tally.no_answer.join(", "));
        }
        let violations = self.violations();
        if violations.is_empty() {
            println!("\nchaos: no violation");
            return;
        }
        println!("\nchaos: {} violation(s):", violations.len());
        for v in &violations {
            println!("  - {v}");
        }
        for x in &f.examples {
            println!("  e.g. {x}");
        }
        for x in &self.passes.examples {
            println!("  over the limit: {x}");
        }
        for x in &self.calls.stray_ids {
            println!("  stray call: {x}");
        }
        for x in self.tally.server_errors.iter().take(10) {
            println!("  5xx: {x}");
        }
        for p in self.logs.panics.iter().take(10) {
            println!("  panic: {p}");
        }
    }
}
