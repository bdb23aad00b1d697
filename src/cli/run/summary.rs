//! The end of a run: one summary (a line on stderr, or `--json` on stdout)
//! and the exit status it implies (0 all lines succeeded, 3 some failed).

use super::output::Targets;
use crate::cli::{CliError, Kind};
use anyhow::anyhow;
use fusillade::domain::batch::Batch;
use std::time::Duration;

/// What the run wrote.
#[derive(Debug)]
pub struct Written {
    /// Where results and errors went.
    pub targets: Targets,
    /// Bytes of results.
    pub output_bytes: u64,
    /// Bytes of failed lines.
    pub error_bytes: u64,
    /// Time the command took.
    pub elapsed: Duration,
}

/// Lines that did not succeed.
pub fn error_lines(b: &Batch) -> i64 {
    b.request_counts.failed + b.request_counts.canceled
}

/// The one-line summary for stderr.
pub fn line(b: &Batch, w: &Written) -> String {
    format!(
        "batch {} {}: {} of {} lines succeeded ({} in {}), {} failed ({} in {}), {}{:.1}s",
        b.id,
        b.status,
        b.request_counts.completed,
        b.request_counts.total,
        bytes(w.output_bytes),
        w.targets.output.describe(),
        error_lines(b),
        bytes(w.error_bytes),
        w.targets.errors.describe(),
        coalesced(b),
        w.elapsed.as_secs_f64(),
    )
}

/// The summary's part on lines answered by a shared call ("" for none).
fn coalesced(b: &Batch) -> String {
    let c = &b.coalesced;
    if c.total() == 0 {
        return String::new();
    }
    format!(
        "{} answered by a shared call ({} identical, {} packed), ",
        c.total(),
        c.identical,
        c.packed
    )
}

fn bytes(n: u64) -> String {
    format!("{n} bytes")
}

/// The `--json` summary object.
pub fn json(b: &Batch, w: &Written) -> serde_json::Value {
    let c = &b.request_counts;
    serde_json::json!({
        "batch_id": b.id.to_string(),
        "status": b.status.as_str(),
        "request_counts": {
            "total": c.total,
            "completed": c.completed,
            "failed": c.failed,
            "canceled": c.canceled,
        },
        "output": w.targets.output.describe(),
        "errors": w.targets.errors.describe(),
        "output_bytes": w.output_bytes,
        "error_bytes": w.error_bytes,
        "elapsed_seconds": w.elapsed.as_secs_f64(),
        "created_at": b.created_at,
        "completed_at": b.completed_at,
        "coalesced_lines": b.coalesced.total(),
        "coalesced_lines_details": {
            "identical": b.coalesced.identical,
            "packed": b.coalesced.packed,
        },
        "usage": {
            "input_tokens": b.usage.input_tokens,
            "cached_tokens": b.usage.cached_tokens,
            "output_tokens": b.usage.output_tokens,
            "reasoning_tokens": b.usage.reasoning_tokens,
            "total_tokens": b.usage.total_tokens,
        },
    })
}

/// The exit status: success only when every line succeeded; `hint` is added
/// to the message of a batch with failed lines.
pub fn outcome(b: &Batch, w: &Written, hint: &str) -> Result<(), CliError> {
    let failed = error_lines(b);
    if failed == 0 && b.request_counts.completed == b.request_counts.total {
        return Ok(());
    }
    Err(CliError {
        kind: Kind::ErrorLines,
        error: anyhow!(
            "{failed} of {} lines failed (batch {}); they are in {}{hint}",
            b.request_counts.total,
            b.status,
            w.targets.errors.describe()
        ),
    })
}
