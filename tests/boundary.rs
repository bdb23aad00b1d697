//! The storage boundary, checked on the source: outside `src/store/` no
//! module names the database driver, a pool or the PostgreSQL store, so
//! that a second backend needs no change elsewhere. (`lib.rs` re-exports the
//! store's types for the seed test; the benchmark binaries drive PostgreSQL
//! on purpose; log filters name the driver's target as a string.) Inside
//! `src/store/`, the driver is named only by the backends (`postgres/`,
//! `sqlite/`), and PostgreSQL's types only by `postgres/`.

use std::path::{Path, PathBuf};

/// Words that name the driver or the PostgreSQL backend in code.
const FORBIDDEN: &[&str] = &["sqlx::", "use sqlx", "PgPool", "PostgresStore", "Postgres>"];

/// Words that name the driver's PostgreSQL types.
const POSTGRES_TYPES: &[&str] = &[
    "sqlx::postgres",
    "sqlx::Postgres",
    "Postgres>",
    "PgPool",
    "PgRow",
    "PgConnection",
    "PgExecutor",
    "PgListener",
];

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

/// The lines naming any of `words` in the Rust files under `dir` that are
/// not under one of `exempt`, and how many files were read.
fn leaks(dir: &Path, exempt: &[PathBuf], words: &[&str]) -> (Vec<String>, usize) {
    let mut files = Vec::new();
    rust_files(dir, &mut files);
    let mut found = Vec::new();
    let mut checked = 0;
    for file in files
        .iter()
        .filter(|f| !exempt.iter().any(|e| f.starts_with(e)))
    {
        checked += 1;
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            if words.iter().any(|w| line.contains(w)) {
                found.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
            }
        }
    }
    (found, checked)
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn nothing_outside_the_store_names_the_driver_or_the_postgres_store() {
    let src = src();
    let exempt = [src.join("store"), src.join("bin"), src.join("lib.rs")];
    let (found, checked) = leaks(&src, &exempt, FORBIDDEN);
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

#[test]
fn the_store_outside_its_backends_names_no_driver() {
    let store = src().join("store");
    let exempt = [store.join("postgres"), store.join("sqlite")];
    let (found, checked) = leaks(&store, &exempt, &["sqlx::", "use sqlx"]);
    assert!(
        checked > 10,
        "only {checked} files found under {}",
        store.display()
    );
    assert!(
        found.is_empty(),
        "the shared store names the driver; it belongs in a backend:\n{}",
        found.join("\n")
    );
}

#[test]
fn only_the_postgres_backend_names_postgres_types() {
    let store = src().join("store");
    let exempt = [store.join("postgres")];
    let (found, checked) = leaks(&store, &exempt, POSTGRES_TYPES);
    assert!(
        checked > 20,
        "only {checked} files found under {}",
        store.display()
    );
    assert!(
        found.is_empty(),
        "PostgreSQL's types are named outside store/postgres/:\n{}",
        found.join("\n")
    );
}
