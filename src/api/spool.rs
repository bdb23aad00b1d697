//! A spool for one upload: the `file` field is written to a temporary file
//! as it arrives, and read back at disk speed once the client has sent it all.
//!
//! Why: storing an upload holds a database transaction, and so a connection,
//! from its first byte to its last. Fed straight from the client, a slow
//! client held that connection as long as it liked, and eight of them held
//! every connection the API had. A spool costs one write and one read of the
//! file on local disk, which is far less than the database work that
//! follows; memory stays constant (one buffer of [`BUFFER_BYTES`]).
//!
//! The file is readable by this user only, and on Unix it is unlinked as soon
//! as it is created: the open handle is all that keeps it, so it is gone when
//! the upload ends, however it ends, even if the process is killed. Elsewhere
//! a guard removes it when the spool (or the stream read from it) is dropped.

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use std::io;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncSeekExt, AsyncWriteExt, BufWriter};
use tokio_util::io::ReaderStream;

/// Bytes buffered on the way to disk and read back at a time: few system
/// calls per megabyte, and still a small, constant amount of memory.
pub const BUFFER_BYTES: usize = 256 << 10;

/// Why a chunk could not be spooled.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The upload grew past the limit.
    #[error("the upload is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// The disk refused the bytes (full, say).
    #[error("spooling the upload failed: {0}")]
    Io(#[from] io::Error),
}

/// Removes the spool file when dropped, where it could not be unlinked at once.
#[derive(Debug)]
struct Removal(Option<PathBuf>);

impl Drop for Removal {
    fn drop(&mut self) {
        if let Some(path) = self.0.take()
            && let Err(e) = std::fs::remove_file(&path)
        {
            tracing::warn!(path = %path.display(), error = %e, "could not remove an upload spool");
        }
    }
}

/// One upload's bytes on disk, at most `limit` of them.
#[derive(Debug)]
pub struct Spool {
    writer: BufWriter<tokio::fs::File>,
    len: u64,
    limit: u64,
    removal: Removal,
}

impl Spool {
    /// A new, empty spool file in `dir` that refuses to grow past `limit` bytes.
    pub async fn create(dir: &Path, limit: u64) -> io::Result<Self> {
        let path = dir.join(format!("fusillade-upload-{}.jsonl", uuid::Uuid::new_v4()));
        let mut options = tokio::fs::OpenOptions::new();
        options.read(true).write(true).create_new(true);
        #[cfg(unix)]
        options.mode(0o600);
        let file = options.open(&path).await?;
        let removal = if cfg!(unix) {
            tokio::fs::remove_file(&path).await?;
            Removal(None)
        } else {
            Removal(Some(path))
        };
        Ok(Self {
            writer: BufWriter::with_capacity(BUFFER_BYTES, file),
            len: 0,
            limit,
            removal,
        })
    }

    /// Appends a chunk; refuses one that would take the spool past its limit.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), SpoolError> {
        let len = self.len + chunk.len() as u64;
        if len > self.limit {
            return Err(SpoolError::TooLarge { limit: self.limit });
        }
        self.writer.write_all(chunk).await?;
        self.len = len;
        Ok(())
    }

    /// The bytes written, from the start, as a stream; the file goes away
    /// when the stream is dropped.
    pub async fn into_stream(
        self,
    ) -> io::Result<impl Stream<Item = io::Result<Bytes>> + Send + Unpin + 'static> {
        let Self {
            mut writer,
            removal,
            ..
        } = self;
        writer.flush().await?;
        let mut file = writer.into_inner();
        file.seek(io::SeekFrom::Start(0)).await?;
        Ok(
            ReaderStream::with_capacity(file, BUFFER_BYTES).map(move |chunk| {
                // The stream owns the guard, so the file outlives the reading.
                let _ = &removal;
                chunk
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::TryStreamExt;

    /// A fresh directory under the system's temporary one.
    fn scratch() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("fusillade-spool-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir(&dir).unwrap();
        dir
    }

    fn entries(dir: &Path) -> usize {
        std::fs::read_dir(dir).unwrap().count()
    }

    #[tokio::test]
    async fn gives_back_what_was_written_and_leaves_nothing_behind() {
        let dir = scratch();
        let mut spool = Spool::create(&dir, 1 << 20).await.unwrap();
        let data: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        for piece in data.chunks(7_000) {
            spool.write(piece).await.unwrap();
        }
        let stream = spool.into_stream().await.unwrap();
        let read: Vec<Bytes> = stream.try_collect().await.unwrap();
        assert_eq!(read.concat(), data);
        assert_eq!(entries(&dir), 0);
        std::fs::remove_dir(&dir).unwrap();
    }

    #[tokio::test]
    async fn refuses_to_grow_past_its_limit() {
        let dir = scratch();
        let mut spool = Spool::create(&dir, 10).await.unwrap();
        spool.write(b"0123456789").await.unwrap();
        let e = spool.write(b"x").await.unwrap_err();
        assert!(matches!(e, SpoolError::TooLarge { limit: 10 }), "{e}");
        drop(spool);
        assert_eq!(entries(&dir), 0);
        std::fs::remove_dir(&dir).unwrap();
    }
}
