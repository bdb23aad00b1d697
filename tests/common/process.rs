//! The `fusillade` binary as a child process, and temporary directories,
//! both cleaned up on drop whatever the test's outcome: a failed assertion
//! unwinds through the guards, so no server outlives its test and no
//! directory is left behind.

use sqlx::PgPool;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// The built `fusillade` binary.
pub const BIN: &str = env!("CARGO_BIN_EXE_fusillade");

/// A command running the `fusillade` binary with warnings-only logs.
pub fn fusillade() -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env("RUST_LOG", "warn")
        .env_remove("DATABASE_URL")
        .stdin(Stdio::null());
    cmd
}

/// A child process, killed (SIGKILL) and reaped when dropped unless it has
/// already been waited for.
#[derive(Debug)]
pub struct ChildGuard {
    child: Child,
    done: Option<ExitStatus>,
}

impl ChildGuard {
    /// Spawns `cmd`; panics with the command if it cannot start.
    pub fn spawn(cmd: &mut Command) -> Self {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        Self { child, done: None }
    }

    /// Its process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The child itself, e.g. to take its pipes.
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Sends `signal` (a name such as `TERM`, `INT`, `HUP`) with `kill(1)`.
    pub fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.id().to_string())
            .status()
            .expect("running kill(1)");
        assert!(sent.success(), "kill -{signal} {} failed", self.id());
    }

    /// Its exit status if it has ended.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.done.is_none() {
            self.done = self.child.try_wait().expect("try_wait");
        }
        self.done
    }

    /// Polls until it ends; panics (and so kills it) after `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> ExitStatus {
        let until = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_status() {
                return s;
            }
            assert!(
                Instant::now() < until,
                "process {} did not end within {timeout:?}",
                self.id()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// [`ChildGuard::wait_timeout`] without blocking the async runtime.
    pub async fn wait_async(&mut self, timeout: Duration) -> ExitStatus {
        let until = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_status() {
                return s;
            }
            assert!(
                Instant::now() < until,
                "process {} did not end within {timeout:?}",
                self.id()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The most memory it has held at once (`VmHWM`), in bytes.
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.id()))
            .expect("reading /proc/PID/status");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("a VmHWM line");
        kib * 1024
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.done.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `cmd` to its end, with stdout and stderr captured; killed and a
/// panic after `timeout`.
pub async fn output(mut cmd: Command, timeout: Duration) -> Output {
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut child = ChildGuard::spawn(cmd.stdout(Stdio::piped()).stderr(Stdio::piped()));
        let mut out = child.child().stdout.take().expect("piped stdout");
        let mut err = child.child().stderr.take().expect("piped stderr");
        let reading = std::thread::spawn(move || {
            let mut o = Vec::new();
            let _ = out.read_to_end(&mut o);
            o
        });
        let reading_err = std::thread::spawn(move || {
            let mut e = Vec::new();
            let _ = err.read_to_end(&mut e);
            e
        });
        let status = child.wait_timeout(timeout);
        Output {
            status,
            stdout: reading.join().expect("stdout reader"),
            stderr: reading_err.join().expect("stderr reader"),
        }
    })
    .await
    .expect("the command's thread")
}

/// A fresh directory under the system temp dir, removed with everything in
/// it when dropped.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Makes `<tmp>/fusillade-<what>-<uuid>`.
    pub fn new(what: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("fusillade-{what}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("creating a temp dir");
        Self(dir)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// A path inside it.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.0.join(name)
    }
}

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The URL of the test's own database (the one `pool` is connected to),
/// for the binary.
pub async fn database_url(pool: &PgPool) -> String {
    let db: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(pool)
        .await
        .expect("current_database()");
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let mut url = url::Url::parse(&base).expect("DATABASE_URL is a URL");
    url.set_path(&db);
    url.to_string()
}

/// A `fusillade serve` child and the base URL it printed.
#[derive(Debug)]
pub struct Served {
    /// The process.
    pub process: ChildGuard,
    /// Such as `http://127.0.0.1:41234`.
    pub base: String,
}

/// Starts `cmd` (a `fusillade serve ... --listen 127.0.0.1:0`) with stdout
/// piped, and waits for its `listening on URL` line.
pub async fn serve(mut cmd: Command, timeout: Duration) -> Served {
    let mut process = ChildGuard::spawn(cmd.stdout(Stdio::piped()));
    let stdout = process.child().stdout.take().expect("piped stdout");
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        let mut reader = std::io::BufReader::new(stdout);
        reader.read_line(&mut line).expect("reading serve's stdout");
        // Keep reading, so the server never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
        line
    });
    let line = tokio::time::timeout(timeout, line)
        .await
        .expect("serve printed its address in time")
        .expect("the reading thread");
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line from serve: {line:?}"))
        .to_owned();
    Served { process, base }
}
