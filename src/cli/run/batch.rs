//! Which batch a `fusillade run` works on: the resume rules.
//!
//! Every run of an input is named by the input's digest and completion
//! window; `--fresh` adds a generation (`#2`, `#3`, ...), so a fresh batch
//! is found again by the next plain rerun. A rerun takes the latest
//! generation: it resumes it if unfinished, re-queues its failed lines with
//! `--retry-failed`, and otherwise reports it as it finished.

use crate::cli::{CliError, runtime, usage};
use anyhow::anyhow;
use fusillade::domain::batch::{Batch, BatchStatus};
use fusillade::store::{BatchStore, FileStore, NewBatch, NewFile, Owner, Store};
use std::path::Path;

/// A line for the user on stderr, unless `--quiet`.
macro_rules! note {
    ($quiet:expr, $($arg:tt)*) => {
        if !$quiet {
            eprintln!($($arg)*);
        }
    };
}

/// How far the generations are searched; a user will not `--fresh` more often.
const MAX_GENERATIONS: u32 = 10_000;

/// What to do with an earlier run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Resume or report the latest run, or start one.
    Resume,
    /// Start a new batch whatever ran before.
    Fresh,
    /// Re-queue the failed lines of the latest finished run.
    RetryFailed,
}

/// The batch picked, and whether it still has to run.
#[derive(Debug)]
pub struct Picked {
    /// The batch.
    pub batch: Batch,
    /// It had already finished and nothing was re-queued: only its results
    /// are written again.
    pub already_finished: bool,
}

/// The idempotency key of a generation.
fn key(base: &str, generation: u32) -> String {
    match generation {
        1 => base.to_owned(),
        n => format!("{base}#{n}"),
    }
}

/// The latest generation run of `base`, with its number (0: none).
async fn latest(store: &Store, base: &str) -> Result<(u32, Option<Batch>), CliError> {
    let mut found = (0, None);
    for g in 1..=MAX_GENERATIONS {
        match store
            .find_batch_by_key("", &key(base, g))
            .await
            .map_err(runtime)?
        {
            Some(b) => found = (g, Some(b)),
            None => break,
        }
    }
    Ok(found)
}

/// Picks (and if needed creates) the batch for this run.
pub async fn pick(
    store: &Store,
    base: &str,
    mode: Mode,
    quiet: bool,
    upload: impl AsyncFnOnce(Option<&str>) -> Result<Batch, CliError>,
) -> Result<Picked, CliError> {
    let (generation, last) = latest(store, base).await?;
    let next_key = key(base, generation + 1);
    let last = match (mode, last) {
        (Mode::Fresh, _) | (_, None) => {
            let batch = upload(Some(&next_key)).await?;
            return Ok(Picked {
                batch,
                already_finished: false,
            });
        }
        (_, Some(b)) => b,
    };
    let c = &last.request_counts;
    if !last.status.is_terminal() {
        note!(
            quiet,
            "resuming batch {} ({} of {} requests already finished)",
            last.id,
            c.finished(),
            c.total
        );
        return Ok(Picked {
            batch: last,
            already_finished: false,
        });
    }
    if mode == Mode::RetryFailed && last.status != BatchStatus::Failed {
        if c.failed == 0 {
            note!(quiet, "batch {} has no failed lines to retry", last.id);
        } else {
            let (batch, n) =
                store
                    .retry_failed(Owner::Any, last.id)
                    .await
                    .map_err(|e| match e {
                        fusillade::StoreError::Conflict(_) => usage(anyhow!(
                            "batch {} ended {} and its failed lines cannot be retried; use --fresh",
                            last.id,
                            last.status
                        )),
                        e => runtime(e),
                    })?;
            note!(quiet, "re-queued {n} failed lines of batch {}", batch.id);
            return Ok(Picked {
                batch,
                already_finished: false,
            });
        }
    } else if last.status != BatchStatus::Failed {
        note!(
            quiet,
            "batch {} of this input already ended {} ({} succeeded, {} failed); writing its results again",
            last.id,
            last.status,
            c.completed,
            c.failed + c.canceled
        );
    }
    Ok(Picked {
        batch: last,
        already_finished: true,
    })
}

/// Uploads the input and creates its batch under `key`.
pub async fn start(
    store: &Store,
    input: &Path,
    name: &str,
    completion_window: &str,
    key: Option<&str>,
    quiet: bool,
) -> Result<Batch, CliError> {
    let file = tokio::fs::File::open(input)
        .await
        .map_err(|e| usage(anyhow!("cannot read {}: {e}", input.display())))?;
    let body = tokio_util::io::ReaderStream::with_capacity(file, 256 << 10);
    tracing::info!(file = %name, "uploading");
    let uploaded = store
        .create_file(
            NewFile {
                owner: String::new(),
                filename: name.to_owned(),
                expires_at: None,
            },
            body,
        )
        .await
        .map_err(|e| match e {
            // The input breaks `[api]`'s limit, as an upload to `serve` would.
            fusillade::StoreError::TooLarge { .. } => usage(anyhow!("{name}: {e}")),
            e => runtime(e),
        })?;
    let endpoint = match uploaded.urls.as_slice() {
        [one] => one.clone(),
        [] => fusillade::domain::file::DEFAULT_ENDPOINTS[0].to_owned(),
        many => {
            return Err(usage(anyhow!(
                "{name} mixes endpoints ({}); a batch runs one endpoint, so split the file",
                many.join(", ")
            )));
        }
    };
    let batch = store
        .create_batch(NewBatch {
            owner: "",
            input_file_id: uploaded.id,
            endpoint: &endpoint,
            completion_window,
            metadata: None,
            idempotency_key: key,
            // Sent with this run's routes and keys only: other daemons on
            // the database never take its work.
            private: true,
        })
        .await
        .map_err(|e| match e {
            fusillade::StoreError::Invalid(_) => usage(e),
            e => runtime(e),
        })?;
    note!(
        quiet,
        "batch {}: {} requests to {endpoint}",
        batch.id,
        batch.request_counts.total
    );
    Ok(batch)
}

/// The error for an input that did not validate, listing the first problems.
pub fn refused(batch: &Batch) -> CliError {
    let errors = batch.errors.as_deref().unwrap_or_default();
    let mut msg = format!("the input was refused ({} problems):", errors.len());
    for e in errors.iter().take(20) {
        match e.line {
            Some(l) => msg.push_str(&format!("\n  line {l}: {} ({})", e.message, e.code)),
            None => msg.push_str(&format!("\n  {} ({})", e.message, e.code)),
        }
    }
    if errors.len() > 20 {
        msg.push_str(&format!("\n  ... and {} more", errors.len() - 20));
    }
    usage(anyhow!(msg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_generation_keeps_the_old_key() {
        // Batches started before generations existed are found again.
        assert_eq!(key("run:ab:24h", 1), "run:ab:24h");
        assert_eq!(key("run:ab:24h", 3), "run:ab:24h#3");
    }
}
