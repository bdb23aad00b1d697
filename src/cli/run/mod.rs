//! `fusillade run`: one input file to completion, with a progress line, and
//! resumable: a rerun with the same input continues the same batch.

use super::progress::Progress;
use super::setup::{Common, database, load_config, shutdown_on_signals};
use super::{CliError, Kind, runtime, usage};
use anyhow::anyhow;
use fusillade::daemon::Daemon;
use fusillade::domain::batch::{Batch, BatchStatus};
use fusillade::store::{
    BatchStore, ByteStream, FileStore, NewBatch, NewFile, Owner, PostgresStore, RequestStore,
};
use futures_util::TryStreamExt;
use sha2::Digest;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// Arguments of `fusillade run`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The input JSONL file (OpenAI batch format).
    input: PathBuf,
    /// Where to write successful results.
    #[arg(long, value_name = "OUT.jsonl")]
    output: PathBuf,
    /// Where to write failed requests (default: OUT with `.errors` before its extension).
    #[arg(long, value_name = "ERR.jsonl")]
    errors: Option<PathBuf>,
    /// Send every model to this base URL (overrides the config's routes).
    #[arg(long, value_name = "URL")]
    upstream: Option<String>,
    /// The batch's completion window (`24h`, `90m`, ...).
    #[arg(long, default_value = "24h")]
    completion_window: String,
    /// Start a new batch even if this input was run before.
    #[arg(long)]
    fresh: bool,
    #[command(flatten)]
    common: Common,
}

/// How often progress is read from the database.
const POLL: Duration = Duration::from_millis(500);

/// Runs the file, writes both result files.
pub async fn run(args: Args) -> Result<(), CliError> {
    let mut config = load_config(args.common.config.as_deref())?;
    if let Some(url) = &args.upstream {
        config = config.with_upstream_url(url).map_err(usage)?;
    }
    let errors_path = args
        .errors
        .clone()
        .unwrap_or_else(|| errors_path_for(&args.output));
    let digest = file_digest(&args.input).await?;
    let pool = database(&args.common, &config).await?;
    let store = PostgresStore::new(pool);
    let key = format!("run:{digest}:{}", args.completion_window);

    let existing = if args.fresh {
        None
    } else {
        store.find_batch_by_key("", &key).await.map_err(runtime)?
    };
    let batch = match existing {
        Some(b) => {
            eprintln!(
                "resuming batch {} ({} of {} requests already finished)",
                b.id,
                b.request_counts.finished(),
                b.request_counts.total
            );
            b
        }
        None => start(&store, &args, (!args.fresh).then_some(key.as_str())).await?,
    };
    if batch.status == BatchStatus::Failed {
        return Err(refused(&batch));
    }

    let shutdown = shutdown_on_signals();
    let (_tx, config_rx) = tokio::sync::watch::channel(Arc::new(config));
    let daemon_stop = shutdown.child_token();
    let daemon = tokio::spawn(Daemon::new(store.clone(), config_rx).run(daemon_stop.clone()));

    let mut progress = Progress::new();
    let last = loop {
        let b = store
            .get_batch(Owner::Any, batch.id)
            .await
            .map_err(runtime)?
            .ok_or_else(|| runtime(anyhow!("batch {} disappeared", batch.id)))?;
        if b.status.is_terminal() || shutdown.is_cancelled() {
            progress.finish(&b.request_counts);
            break b;
        }
        progress.show(&b.request_counts, false);
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = shutdown.cancelled() => {}
        }
    };
    daemon_stop.cancel();
    match daemon.await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "daemon stopped with an error"),
        Err(e) => tracing::warn!(error = %e, "daemon task failed"),
    }
    if !last.status.is_terminal() {
        return Err(CliError {
            kind: Kind::Interrupted,
            error: anyhow!(
                "interrupted with {} of {} requests finished; run the same command again to resume",
                last.request_counts.finished(),
                last.request_counts.total
            ),
        });
    }

    let written_ok = write_stream(store.output_stream(batch.id), &args.output).await?;
    let written_err = write_stream(store.error_stream(batch.id), &errors_path).await?;
    eprintln!(
        "batch {} {}: {} results in {} ({written_ok} bytes), {} errors in {} ({written_err} bytes)",
        last.id,
        last.status,
        last.request_counts.completed,
        args.output.display(),
        last.request_counts.failed + last.request_counts.canceled,
        errors_path.display(),
    );
    match last.status {
        BatchStatus::Completed => Ok(()),
        other => Err(runtime(anyhow!(
            "the batch ended {other}; finished results were written"
        ))),
    }
}

/// Uploads the input and creates its batch.
async fn start(store: &PostgresStore, args: &Args, key: Option<&str>) -> Result<Batch, CliError> {
    let file = tokio::fs::File::open(&args.input)
        .await
        .map_err(|e| usage(anyhow!("cannot read {}: {e}", args.input.display())))?;
    let body = tokio_util::io::ReaderStream::with_capacity(file, 256 << 10);
    eprintln!("uploading {}", args.input.display());
    let uploaded = store
        .create_file(
            NewFile {
                owner: String::new(),
                filename: args
                    .input
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                expires_at: None,
            },
            body,
        )
        .await
        .map_err(runtime)?;
    let endpoint = match uploaded.urls.as_slice() {
        [one] => one.clone(),
        [] => fusillade::domain::file::DEFAULT_ENDPOINTS[0].to_owned(),
        many => {
            return Err(usage(anyhow!(
                "{} mixes endpoints ({}); a batch runs one endpoint, so split the file",
                args.input.display(),
                many.join(", ")
            )));
        }
    };
    let batch = store
        .create_batch(NewBatch {
            owner: "",
            input_file_id: uploaded.id,
            endpoint: &endpoint,
            completion_window: &args.completion_window,
            metadata: None,
            idempotency_key: key,
        })
        .await
        .map_err(|e| match e {
            fusillade::StoreError::Invalid(_) => usage(e),
            e => runtime(e),
        })?;
    eprintln!(
        "batch {}: {} requests to {endpoint}",
        batch.id, batch.request_counts.total
    );
    Ok(batch)
}

/// The error for an input that did not validate, listing the first problems.
fn refused(batch: &Batch) -> CliError {
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

/// `out.jsonl` -> `out.errors.jsonl`.
fn errors_path_for(output: &Path) -> PathBuf {
    let stem = output
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".into());
    let name = match output.extension() {
        Some(ext) => format!("{stem}.errors.{}", ext.to_string_lossy()),
        None => format!("{stem}.errors"),
    };
    output.with_file_name(name)
}

/// The input's SHA-256, which names the batch for resuming.
async fn file_digest(path: &Path) -> Result<String, CliError> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut f = std::fs::File::open(&path)
            .map_err(|e| usage(anyhow!("cannot read {}: {e}", path.display())))?;
        let mut h = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f
                .read(&mut buf)
                .map_err(|e| runtime(anyhow!("reading {}: {e}", path.display())))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
    })
    .await
    .map_err(runtime)?
}

/// Streams `stream` into `path` through a temporary file, so a crash never
/// leaves a half-written file under the final name.
async fn write_stream(mut stream: ByteStream, path: &Path) -> Result<u64, CliError> {
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    let fail = |e: std::io::Error| runtime(anyhow!("writing {}: {e}", path.display()));
    let mut f = tokio::io::BufWriter::new(tokio::fs::File::create(&tmp).await.map_err(fail)?);
    let mut n = 0u64;
    while let Some(chunk) = stream.try_next().await.map_err(runtime)? {
        n += chunk.len() as u64;
        f.write_all(&chunk).await.map_err(fail)?;
    }
    f.flush().await.map_err(fail)?;
    f.get_ref().sync_all().await.map_err(fail)?;
    tokio::fs::rename(&tmp, path).await.map_err(fail)?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_path_sits_beside_the_output() {
        assert_eq!(
            errors_path_for(Path::new("out/r.jsonl")),
            PathBuf::from("out/r.errors.jsonl")
        );
        assert_eq!(errors_path_for(Path::new("r")), PathBuf::from("r.errors"));
    }
}
