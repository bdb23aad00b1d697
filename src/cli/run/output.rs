//! Where `fusillade run` writes: checked before any work, so a typo in a
//! path fails in a second and not after the whole batch ran.

use crate::cli::{CliError, runtime, usage};
use anyhow::anyhow;
use fusillade::store::ByteStream;
use futures_util::TryStreamExt;
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;

/// Where one result file goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Standard output (`-`).
    Stdout,
    /// A file, written through a temporary file beside it.
    File(PathBuf),
}

impl Target {
    /// `-` is standard output; anything else a path.
    pub fn parse(p: &Path) -> Self {
        if p == Path::new("-") {
            Self::Stdout
        } else {
            Self::File(p.to_owned())
        }
    }

    /// How it is named in messages.
    pub fn describe(&self) -> String {
        match self {
            Self::Stdout => "standard output".into(),
            Self::File(p) => p.display().to_string(),
        }
    }
}

/// The two result files of a run.
#[derive(Debug, Clone)]
pub struct Targets {
    /// Successful results.
    pub output: Target,
    /// Failed lines.
    pub errors: Target,
}

/// Checks the outputs before any work: `-o -` needs `--errors FILE`, no
/// output is the input or the other output, and each one's directory
/// exists and is writable. `input` is `None` for standard input.
pub fn check(
    input: Option<&Path>,
    output: &Path,
    errors: Option<&Path>,
) -> Result<Targets, CliError> {
    let output = Target::parse(output);
    let errors = match (errors, &output) {
        (Some(e), _) => Target::parse(e),
        (None, Target::File(o)) => Target::File(errors_path_for(o)),
        (None, Target::Stdout) => {
            return Err(usage(anyhow!(
                "--output - writes results to standard output; give the failed lines a file with --errors FILE"
            )));
        }
    };
    if output == Target::Stdout && errors == Target::Stdout {
        return Err(usage(anyhow!(
            "--output and --errors cannot both be standard output"
        )));
    }
    let input = input.map(canonical);
    let mut seen: Vec<PathBuf> = Vec::new();
    for (flag, target) in [("--output", &output), ("--errors", &errors)] {
        let Target::File(path) = target else {
            continue;
        };
        let at = canonical(path);
        if input.as_ref() == Some(&at) {
            return Err(usage(anyhow!(
                "{flag} {} is the input file; choose another path",
                path.display()
            )));
        }
        if seen.contains(&at) {
            return Err(usage(anyhow!(
                "--output and --errors are the same file ({})",
                path.display()
            )));
        }
        seen.push(at);
        writable_dir(flag, path)?;
    }
    Ok(Targets { output, errors })
}

/// The path made absolute with its directory resolved (the file itself may
/// not exist yet), for comparing paths.
fn canonical(p: &Path) -> PathBuf {
    if let Ok(c) = std::fs::canonicalize(p) {
        return c;
    }
    let dir = dir_of(p);
    let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
    match p.file_name() {
        Some(name) => dir.join(name),
        None => dir,
    }
}

fn dir_of(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// The directory of `path` exists and a file can be created in it.
fn writable_dir(flag: &str, path: &Path) -> Result<(), CliError> {
    if path.is_dir() {
        return Err(usage(anyhow!(
            "{flag} {} is a directory; give a file name",
            path.display()
        )));
    }
    let dir = dir_of(path);
    if !dir.is_dir() {
        return Err(usage(anyhow!(
            "{flag} {}: the directory {} does not exist",
            path.display(),
            dir.display()
        )));
    }
    // Creating a file is the only sure test (permissions, read-only mounts).
    let probe = dir.join(format!(".fusillade-probe-{}", uuid::Uuid::new_v4()));
    match std::fs::File::create(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => Err(usage(anyhow!(
            "{flag} {}: cannot write in {}: {e}",
            path.display(),
            dir.display()
        ))),
    }
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

/// Streams `stream` to `target`; returns the bytes written.
pub async fn write(stream: ByteStream, target: &Target) -> Result<u64, CliError> {
    match target {
        Target::File(path) => write_file(stream, path).await,
        Target::Stdout => {
            let mut out = tokio::io::stdout();
            let n = copy(stream, &mut out, "standard output").await?;
            out.flush()
                .await
                .map_err(|e| runtime(anyhow!("writing standard output: {e}")))?;
            Ok(n)
        }
    }
}

/// Streams into `path` through a temporary file, so a crash never leaves a
/// half-written file under the final name.
async fn write_file(stream: ByteStream, path: &Path) -> Result<u64, CliError> {
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    let fail = |e: std::io::Error| runtime(anyhow!("writing {}: {e}", path.display()));
    let mut f = tokio::io::BufWriter::new(tokio::fs::File::create(&tmp).await.map_err(fail)?);
    let n = copy(stream, &mut f, &path.display().to_string()).await?;
    f.flush().await.map_err(fail)?;
    f.get_ref().sync_all().await.map_err(fail)?;
    tokio::fs::rename(&tmp, path).await.map_err(fail)?;
    Ok(n)
}

async fn copy(
    mut stream: ByteStream,
    to: &mut (impl tokio::io::AsyncWrite + Unpin),
    name: &str,
) -> Result<u64, CliError> {
    let mut n = 0u64;
    while let Some(chunk) = stream.try_next().await.map_err(runtime)? {
        n += chunk.len() as u64;
        to.write_all(&chunk)
            .await
            .map_err(|e| runtime(anyhow!("writing {name}: {e}")))?;
    }
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

    fn message(r: Result<Targets, CliError>) -> String {
        format!("{:#}", r.unwrap_err().error)
    }

    #[test]
    fn bad_outputs_are_refused_up_front() {
        let dir = std::env::temp_dir().join(format!("fusillade-out-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let input = dir.join("in.jsonl");
        std::fs::write(&input, "").unwrap();
        assert!(message(check(Some(&input), &input, None)).contains("is the input"));
        let missing = dir.join("nope/out.jsonl");
        assert!(message(check(Some(&input), &missing, None)).contains("does not exist"));
        assert!(message(check(None, Path::new("-"), None)).contains("--errors"));
        let out = dir.join("out.jsonl");
        assert!(message(check(None, &out, Some(&out))).contains("same file"));
        let ok = check(Some(&input), Path::new("-"), Some(&dir.join("e.jsonl"))).unwrap();
        assert_eq!(ok.output, Target::Stdout);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
