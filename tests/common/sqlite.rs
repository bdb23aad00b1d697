//! Throwaway embedded databases: each in a fresh directory under the
//! system's temp dir, removed when dropped.

use fusillade::store::SqliteStore;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A directory holding one embedded database, removed on drop.
pub struct TempDb {
    dir: PathBuf,
}

impl TempDb {
    /// A fresh, empty directory.
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("fusillade-sqlite-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("a temp dir");
        Self { dir }
    }

    /// The database file's path (it exists once a store has opened it).
    pub fn path(&self) -> PathBuf {
        self.dir.join("fusillade.db")
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Opens (creating on first use) the store over this database.
    pub async fn open(&self) -> Result<SqliteStore, fusillade::store::OpenError> {
        SqliteStore::open(&self.path(), Duration::from_secs(10)).await
    }

    /// Like [`TempDb::open`], expecting success.
    pub async fn store(&self) -> SqliteStore {
        self.open().await.expect("the embedded database opens")
    }
}

impl Default for TempDb {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
