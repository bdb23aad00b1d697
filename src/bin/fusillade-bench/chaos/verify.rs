//! What is checked once the batch has ended: every input line exactly once
//! across the output and error files, with the body the upstream gave it;
//! the batch's counts and usage against the files; the per-model limits
//! against what the upstream saw in flight; the calls the upstream did
//! not ask for; retries sooner than a 429's `Retry-After`; panics in any
//! process's log.

use super::lines::{Model, Plan, line_of};
use super::upstream::{Fault, Log, Served};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The figures of the files and the batch.
#[derive(Debug, Default, Clone)]
pub struct Lines {
    /// Output lines.
    pub output: u64,
    /// Error lines.
    pub errors: u64,
    /// Error lines by `error.code`.
    pub error_codes: BTreeMap<String, u64>,
    /// Input lines with no line in either file.
    pub lost: u64,
    /// Lines beyond the first for an input line.
    pub duplicated: u64,
    /// Output lines whose status or body is not the upstream's answer.
    pub wrong: u64,
    /// Lines (or line ids) that are not the batch's.
    pub foreign: u64,
    /// Lines that could not be read as JSON.
    pub unreadable: u64,
    /// The first few problems, for people.
    pub examples: Vec<String>,
    /// `request_counts` and `usage` differences from the files.
    pub count_mismatches: Vec<String>,
}

impl Lines {
    fn note(&mut self, example: String) {
        if self.examples.len() < 8 {
            self.examples.push(example);
        }
    }
}

/// Checks the output and error files and the batch object.
pub fn files(plan: &Plan, batch: &Value, output: &[u8], errors: &[u8]) -> Lines {
    let mut r = Lines::default();
    let mut seen = vec![0u32; plan.lines as usize];
    let mut ids = std::collections::HashSet::new();
    let (mut input_tokens, mut output_tokens) = (0u64, 0u64);
    let mut each = |text: &[u8], is_output: bool, r: &mut Lines| {
        for raw in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let Ok(v) = serde_json::from_slice::<Value>(raw) else {
                r.unreadable += 1;
                r.note(format!("unreadable line: {}", String::from_utf8_lossy(raw)));
                continue;
            };
            if !ids.insert(v["id"].as_str().unwrap_or("").to_owned()) {
                r.foreign += 1;
                r.note(format!("line id repeated or missing: {}", v["id"]));
            }
            let Some(i) = v["custom_id"]
                .as_str()
                .and_then(line_of)
                .filter(|i| *i < plan.lines)
            else {
                r.foreign += 1;
                r.note(format!("foreign custom_id {}", v["custom_id"]));
                continue;
            };
            seen[i as usize] += 1;
            if seen[i as usize] > 1 {
                r.duplicated += 1;
                r.note(format!("chaos-{i} appears more than once"));
            }
            if is_output {
                r.output += 1;
                let (want, usage) = plan.expected(i);
                let response = &v["response"];
                if response["status_code"] != 200
                    || response["body"] != want
                    || !v["error"].is_null()
                {
                    r.wrong += 1;
                    r.note(format!(
                        "chaos-{i}: wrong answer {}",
                        truncate(&v.to_string())
                    ));
                } else if let Some((p, c)) = usage {
                    input_tokens += p;
                    output_tokens += c;
                }
            } else {
                r.errors += 1;
                let code = v["error"]["code"].as_str().unwrap_or("(none)").to_owned();
                r.note(format!(
                    "chaos-{i}: error line {}",
                    truncate(&v["error"].to_string())
                ));
                *r.error_codes.entry(code).or_default() += 1;
            }
        }
    };
    each(output, true, &mut r);
    each(errors, false, &mut r);
    r.lost = seen.iter().filter(|n| **n == 0).count() as u64;
    if let Some(i) = seen.iter().position(|n| *n == 0) {
        r.note(format!("chaos-{i} is in neither file"));
    }
    let counts = &batch["request_counts"];
    let usage = &batch["usage"];
    let checks = [
        ("request_counts.total", counts["total"].as_u64(), plan.lines),
        (
            "request_counts.completed",
            counts["completed"].as_u64(),
            r.output,
        ),
        ("request_counts.failed", counts["failed"].as_u64(), r.errors),
        (
            "usage.input_tokens",
            usage["input_tokens"].as_u64(),
            input_tokens,
        ),
        (
            "usage.output_tokens",
            usage["output_tokens"].as_u64(),
            output_tokens,
        ),
        (
            "usage.total_tokens",
            usage["total_tokens"].as_u64(),
            input_tokens + output_tokens,
        ),
    ];
    for (name, got, want) in checks {
        if got != Some(want) {
            r.count_mismatches
                .push(format!("{name} is {got:?}, the files say {want}"));
        }
    }
    r
}

fn truncate(s: &str) -> String {
    if s.len() <= 300 {
        return s.to_owned();
    }
    let mut end = 300;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// What the upstream's log says.
#[derive(Debug, Default, Clone)]
pub struct Calls {
    /// Calls received for the batch's lines.
    pub total: u64,
    /// Calls the upstream asked to be made again (it served a fault).
    pub asked: u64,
    /// Hangs among them (each ended by the client's timeout).
    pub hangs: u64,
    /// Calls beyond one per line that the upstream did not ask for.
    pub extra: u64,
    /// The extra calls by the event that came first after the answer
    /// they repeat (`unexplained` when none did).
    pub extra_by_cause: BTreeMap<&'static str, u64>,
    /// Lines whose final answer was served more than once.
    pub answered_twice: u64,
    /// Retries that came sooner than a 429's `Retry-After`.
    pub early_retries: u64,
    /// Calls for no line of the batch.
    pub strays: u64,
    /// Some of their custom_ids.
    pub stray_ids: Vec<String>,
}

/// Counts the calls by what the upstream served; `marks` are the times of
/// the chaos events, in order.
pub fn calls(log: &Log, retry_after: Duration, marks: &[(Instant, &'static str)]) -> Calls {
    let mut c = Calls {
        strays: log.strays,
        stray_ids: log.stray_ids.clone(),
        ..Calls::default()
    };
    for line in &log.calls {
        let n = line.len() as u64;
        let asked = line
            .iter()
            .filter(|x| matches!(x.served, Served::Fault(_)))
            .count() as u64;
        c.total += n;
        c.asked += asked;
        c.hangs += line
            .iter()
            .filter(|x| x.served == Served::Fault(Fault::Hang))
            .count() as u64;
        c.extra += n.saturating_sub(1 + asked);
        let answers = line.iter().filter(|x| x.served == Served::Answer).count();
        c.answered_twice += u64::from(answers > 1);
        for pair in line.windows(2) {
            if pair[0].served == Served::Answer {
                // The answer was lost: to the first event after it was asked for.
                let cause = marks
                    .iter()
                    .find(|(t, _)| *t >= pair[0].at)
                    .map_or("unexplained", |(_, what)| *what);
                *c.extra_by_cause.entry(cause).or_default() += 1;
            }
            if pair[0].served == Served::Fault(Fault::TooMany)
                && pair[1].at.duration_since(pair[0].at) < retry_after
            {
                c.early_retries += 1;
            }
        }
    }
    c
}

/// The calls that found their model over its limit, apart from those
/// that hangs the client had just given up on can account for.
#[derive(Debug, Default, Clone)]
pub struct Passes {
    /// Calls that found their model over its limit, unexplained.
    pub unexcused: u64,
    /// Calls over the limit by no more than the hangs that had just timed out.
    pub excused: u64,
    /// The first few unexplained ones, placed among the chaos events.
    pub examples: Vec<String>,
}

/// Sorts the passes of a limit, and places the unexplained ones after the
/// last kill, database restart and SIGTERM before them.
pub fn passes(log: &Log, began: Instant, marks: &[(Instant, &'static str)]) -> Passes {
    let mut p = Passes::default();
    for pass in &log.passes {
        if pass.excused {
            p.excused += 1;
            continue;
        }
        p.unexcused += 1;
        if p.examples.len() >= 6 {
            continue;
        }
        let mut events = Vec::new();
        for kind in ["SIGKILL", "PostgreSQL restart", "SIGTERM"] {
            if let Some((t, _)) = marks
                .iter()
                .rev()
                .find(|(t, w)| *t <= pass.at && *w == kind)
            {
                events.push(format!(
                    "{:.1} s after the last {kind}",
                    pass.at.duration_since(*t).as_secs_f64()
                ));
            }
        }
        if events.is_empty() {
            events.push("before any kill or restart".to_owned());
        }
        p.examples.push(format!(
            "{}: {} in flight at {:.1} s, {}",
            pass.model,
            pass.in_flight,
            pass.at.saturating_duration_since(began).as_secs_f64(),
            events.join(", ")
        ));
    }
    p
}

/// Per model: (most calls in flight at once, the limit).
pub fn limits(models: &[Model], max_in_flight: &BTreeMap<String, u64>) -> Vec<(String, u64, u32)> {
    models
        .iter()
        .map(|m| {
            (
                m.name.clone(),
                max_in_flight.get(&m.name).copied().unwrap_or(0),
                m.limit,
            )
        })
        .collect()
}

/// What the processes' logs say.
#[derive(Debug, Default, Clone)]
pub struct Logs {
    /// Panic messages, with the log they are in.
    pub panics: Vec<String>,
    /// Times a live worker was declared dead (it says so when it learns it).
    pub declared_dead: u64,
    /// Lines at ERROR level.
    pub errors: u64,
    /// Lines at WARN level.
    pub warnings: u64,
}

/// Reads every log.
pub fn logs(paths: &[PathBuf]) -> Logs {
    let mut l = Logs::default();
    for path in paths {
        let text = std::fs::read(path).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        for line in text.lines() {
            if line.contains("panicked at") {
                l.panics.push(format!("{}: {line}", path.display()));
            }
            if line.contains("was declared dead") {
                l.declared_dead += 1;
            }
            if line.contains(" ERROR ") {
                l.errors += 1;
            }
            if line.contains(" WARN ") {
                l.warnings += 1;
            }
        }
    }
    l
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::lines::parse_model;
    use crate::chaos::upstream::Call;
    use serde_json::json;

    fn plan() -> Plan {
        Plan {
            lines: 3,
            models: vec![parse_model("m=2").unwrap()],
            seed: 3,
            odd_per_mille: 0,
            nul_bodies: false,
        }
    }

    fn out_line(p: &Plan, i: u64, id: &str) -> String {
        json!({"id": id, "custom_id": format!("chaos-{i}"),
            "response": {"status_code": 200, "request_id": "x", "body": p.expected(i).0},
            "error": null})
        .to_string()
    }

    fn batch(total: u64, completed: u64, failed: u64, p: &Plan, lines: &[u64]) -> Value {
        let (mut i, mut o) = (0, 0);
        for l in lines {
            let (a, b) = p.expected(*l).1.unwrap();
            i += a;
            o += b;
        }
        json!({"request_counts": {"total": total, "completed": completed, "failed": failed},
            "usage": {"input_tokens": i, "output_tokens": o, "total_tokens": i + o}})
    }

    #[test]
    fn a_clean_run_has_nothing_to_report() {
        let p = plan();
        let out = [0, 1, 2]
            .map(|i| out_line(&p, i, &format!("r{i}")))
            .join("\n");
        let r = files(&p, &batch(3, 3, 0, &p, &[0, 1, 2]), out.as_bytes(), b"");
        assert_eq!(
            (r.output, r.lost, r.duplicated, r.wrong, r.foreign),
            (3, 0, 0, 0, 0)
        );
        assert!(r.count_mismatches.is_empty(), "{:?}", r.count_mismatches);
    }

    #[test]
    fn lost_duplicated_wrong_and_miscounted_lines_are_found() {
        let p = plan();
        let mut wrong = out_line(&p, 1, "r1");
        wrong = wrong.replace("answer to", "answer for");
        let out = [out_line(&p, 0, "r0"), out_line(&p, 0, "r0b"), wrong].join("\n");
        let err = r#"{"id":"r9","custom_id":"chaos-9","response":null,"error":{"code":"x","message":"y"}}"#;
        let r = files(
            &p,
            &batch(3, 2, 0, &p, &[0, 1]),
            out.as_bytes(),
            err.as_bytes(),
        );
        assert_eq!(r.lost, 1, "chaos-2 is missing");
        assert_eq!(r.duplicated, 1);
        assert_eq!(r.wrong, 1);
        assert_eq!(r.foreign, 1, "chaos-9 is not a line of the batch");
        assert!(
            r.count_mismatches
                .iter()
                .any(|m| m.starts_with("request_counts.completed"))
        );
        assert!(
            r.count_mismatches
                .iter()
                .any(|m| m.starts_with("usage.input_tokens"))
        );
    }

    #[test]
    fn only_calls_nobody_asked_for_are_extra() {
        let t = Instant::now();
        let at = |ms| Call {
            at: t + Duration::from_millis(ms),
            served: Served::Answer,
        };
        let fault = |ms, f| Call {
            at: t + Duration::from_millis(ms),
            served: Served::Fault(f),
        };
        let log = Log {
            calls: vec![
                vec![at(0)],
                vec![fault(0, Fault::TooMany), at(1500)],
                vec![fault(0, Fault::TooMany), at(200), at(300)],
            ],
            strays: 2,
            ..Log::default()
        };
        let marks = [(t + Duration::from_millis(250), "SIGKILL")];
        let c = calls(&log, Duration::from_secs(1), &marks);
        assert_eq!((c.total, c.asked, c.extra), (6, 2, 1));
        assert_eq!(c.extra_by_cause.get("SIGKILL"), Some(&1));
        assert_eq!(c.early_retries, 1);
        assert_eq!(c.answered_twice, 1);
        assert_eq!(c.strays, 2);
    }

    #[test]
    fn passes_of_a_limit_are_placed_among_the_events() {
        use crate::chaos::upstream::Pass;
        let t = Instant::now();
        let ms = Duration::from_millis;
        let pass = |at: u64, excused| Pass {
            model: "m".into(),
            at: t + ms(at),
            in_flight: 3,
            excused,
        };
        let log = Log {
            passes: vec![pass(4_300, false), pass(5_000, true)],
            ..Log::default()
        };
        let marks = [
            (t + ms(100), "SIGKILL"),
            (t + ms(200), "PostgreSQL restart"),
        ];
        let p = passes(&log, t, &marks);
        assert_eq!((p.unexcused, p.excused), (1, 1));
        assert_eq!(
            p.examples,
            [
                "m: 3 in flight at 4.3 s, 4.2 s after the last SIGKILL, 4.1 s after the last \
              PostgreSQL restart"
            ]
        );
        assert_eq!(
            passes(&log, t, &[]).examples,
            ["m: 3 in flight at 4.3 s, before any kill or restart"]
        );
    }
}
