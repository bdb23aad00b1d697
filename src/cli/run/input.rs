//! The input of `fusillade run`: a file, or standard input (`-`) saved to a
//! temporary file first, as the batch is named by its content's digest.

use crate::cli::{CliError, runtime, usage};
use anyhow::anyhow;
use sha2::Digest;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The input as a readable file.
#[derive(Debug)]
pub struct Input {
    /// The file to upload.
    pub path: PathBuf,
    /// The name shown and stored for the upload.
    pub name: String,
    /// Whether `path` is ours to delete (standard input saved).
    temporary: bool,
}

impl Input {
    /// Opens `arg`: `-` reads all of standard input into a temporary file.
    pub fn open(arg: &Path) -> Result<Self, CliError> {
        if arg != Path::new("-") {
            std::fs::File::open(arg)
                .map_err(|e| usage(anyhow!("cannot read {}: {e}", arg.display())))?;
            return Ok(Self {
                path: arg.to_owned(),
                name: arg
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                temporary: false,
            });
        }
        let path =
            std::env::temp_dir().join(format!("fusillade-stdin-{}.jsonl", uuid::Uuid::new_v4()));
        let mut file = std::fs::File::create(&path).map_err(|e| {
            runtime(anyhow!(
                "cannot save standard input in {}: {e}",
                path.display()
            ))
        })?;
        let input = Self {
            path,
            name: "stdin.jsonl".into(),
            temporary: true,
        };
        std::io::copy(&mut std::io::stdin().lock(), &mut file)
            .map_err(|e| runtime(anyhow!("reading standard input: {e}")))?;
        Ok(input)
    }

    /// The content's SHA-256, which names the batch for resuming.
    pub async fn digest(&self) -> Result<String, CliError> {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
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
}

impl Drop for Input {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
