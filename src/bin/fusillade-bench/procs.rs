//! The processes benchmarks start beside themselves: the mock upstream
//! (`fusillade-bench mock`) and the real `fusillade serve`. Each is killed
//! when its handle is dropped, so a failed benchmark leaves nothing behind.

use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};

/// A binary built next to this benchmark (`fusillade`, say).
pub fn sibling(name: &str) -> Result<PathBuf> {
    let me = std::env::current_exe()?;
    let path = me.with_file_name(name);
    if !path.exists() {
        bail!(
            "{} not found next to this benchmark; run `cargo build --release` first",
            path.display()
        );
    }
    Ok(path)
}

/// Reads the `listening on URL` line a child prints first.
fn listening_url(out: &mut BufReader<ChildStdout>, who: &str) -> Result<String> {
    let mut line = String::new();
    out.read_line(&mut line)?;
    Ok(line
        .trim()
        .strip_prefix("listening on ")
        .with_context(|| format!("unexpected first line from {who}: {line:?}"))?
        .to_owned())
}

/// The mock upstream in its own process, so that its CPU is not the daemon's.
pub struct MockProcess {
    child: Child,
    out: BufReader<ChildStdout>,
    /// Where it listens (`http://127.0.0.1:PORT`).
    pub url: String,
}

impl MockProcess {
    /// Starts `fusillade-bench mock --report-on-eof` with a fixed latency.
    pub fn start(latency_ms: u64) -> Result<Self> {
        Self::start_with(&["--latency-ms".to_owned(), latency_ms.to_string()])
    }

    /// Starts `fusillade-bench mock --report-on-eof` with these flags.
    pub fn start_with(flags: &[String]) -> Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["mock", "--report-on-eof"])
            .args(flags)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the mock upstream")?;
        let mut out = BufReader::new(child.stdout.take().context("no stdout")?);
        let url = listening_url(&mut out, "the mock")?;
        Ok(Self { child, out, url })
    }

    /// The mock's process id, to sample its CPU.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the mock and returns what it saw: calls, and seconds from the
    /// first arrival to the last answer.
    pub fn finish(&mut self) -> Result<(u64, f64)> {
        // Closing its input makes the mock print its report and stop.
        drop(self.child.stdin.take());
        let mut line = String::new();
        self.out.read_line(&mut line)?;
        let _ = self.child.wait();
        parse_mock_report(&line)
    }
}

impl Drop for MockProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads the mock's `calls N span_us S` line: calls and seconds.
fn parse_mock_report(line: &str) -> Result<(u64, f64)> {
    let mut words = line.split_whitespace();
    match (words.next(), words.next(), words.next(), words.next()) {
        (Some("calls"), Some(calls), Some("span_us"), Some(us)) => {
            Ok((calls.parse()?, us.parse::<f64>()? / 1e6))
        }
        _ => bail!("the mock's report is unreadable: {line:?}"),
    }
}

/// How to start `fusillade serve`.
pub struct ServeOptions<'a> {
    /// The database it uses (already created).
    pub database_url: &'a str,
    /// Its config file, if any.
    pub config: Option<&'a Path>,
    /// `--api-only`: no daemon in the process.
    pub api_only: bool,
    /// Where its log (stderr) goes; `None` keeps this process's stderr.
    pub log: Option<&'a Path>,
}

/// A running `fusillade serve`.
pub struct Server {
    child: Child,
    /// Its base URL (`http://127.0.0.1:PORT`).
    pub url: String,
}

impl Server {
    /// Starts the server on a free loopback port and waits until it listens.
    pub fn start(o: ServeOptions<'_>) -> Result<Self> {
        let exe = sibling("fusillade")?;
        let mut command = Command::new(&exe);
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--database-url"])
            .arg(o.database_url)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped());
        if o.api_only {
            command.arg("--api-only");
        }
        if let Some(config) = o.config {
            command.arg("--config").arg(config);
        }
        if let Some(log) = o.log {
            // Plain text in the file, so that it reads (and greps) well.
            command.env("NO_COLOR", "1");
            command.stderr(std::fs::File::create(log)?);
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let mut out = BufReader::new(child.stdout.take().context("no stdout")?);
        let url = listening_url(&mut out, "serve")?;
        Ok(Self { child, url })
    }

    /// The server's process id, to sample its memory and CPU.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
