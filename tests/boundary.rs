//! The storage boundary, checked on the source: outside `src/store/` no
//! module names the database driver, a pool or the PostgreSQL store, so
//! that a second backend needs no change elsewhere. (`lib.rs` re-exports the
//! store's types for the seed test; the benchmark binaries drive PostgreSQL
//! on purpose; log filters name the driver's target as a string.)

use std::path::{Path, PathBuf};

/// Words that name the driver or the PostgreSQL backend in code.
const FORBIDDEN: &[&str] = &["sqlx::", "use sqlx", "PgPool", "PostgresStore", "Postgres>"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn nothing_outside_the_store_names_the_driver_or_the_postgres_store() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let exempt = [src.join("store"), src.join("bin"), src.join("lib.rs")];
    let mut found = Vec::new();
    let mut checked = 0;
    for file in files
        .iter()
        .filter(|f| !exempt.iter().any(|e| f.starts_with(e)))
    {
        checked += 1;
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            if FORBIDDEN.iter().any(|w| line.contains(w)) {
                found.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} files found under {}",
        src.display()
    );
    assert!(
        found.is_empty(),
        "the store's boundary leaks:\n{}",
        found.join("\n")
    );
}
