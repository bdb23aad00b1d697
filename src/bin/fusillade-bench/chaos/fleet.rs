//! The processes under test: one `fusillade serve --api-only` and the
//! workers (`fusillade worker`), each with its stderr in a log file of its
//! own, so that every incarnation's panics and warnings can be read after.
//! Every process is registered with the guard, and killed when its handle
//! is dropped.

use super::guard::Guard;
use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A child process that is SIGKILLed when dropped.
pub struct Proc {
    child: Child,
    /// What it is (`api`, `worker-3`), for messages.
    pub name: String,
    /// Its stderr.
    pub log: PathBuf,
    guard: Arc<Guard>,
    reaped: bool,
}

impl Proc {
    /// Starts `command` with its stderr in `log`, in a process group of its
    /// own (a Ctrl-C meant for the bench is not for it).
    pub fn spawn(mut command: Command, name: &str, log: &Path, guard: &Arc<Guard>) -> Result<Self> {
        let child = command
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(log)?)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        guard.watch_pid(child.id());
        Ok(Self {
            child,
            name: name.to_owned(),
            log: log.to_owned(),
            guard: guard.clone(),
            reaped: false,
        })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn reaped(&mut self, status: ExitStatus) -> ExitStatus {
        if !self.reaped {
            self.reaped = true;
            self.guard.forget_pid(self.pid());
        }
        status
    }

    /// SIGKILL, and wait for it.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        if !self.reaped {
            let _ = self.child.kill();
        }
        let status = self.child.wait()?;
        Ok(self.reaped(status))
    }

    /// Its exit status, if it has ended (by itself or not).
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        match self.child.try_wait()? {
            Some(status) => Ok(Some(self.reaped(status))),
            None => Ok(None),
        }
    }

    /// SIGTERM, then waits up to `within` for it to end (`None`: it did not).
    pub async fn terminate(&mut self, within: Duration) -> Result<Option<ExitStatus>> {
        self.term()?;
        self.wait_within(within).await
    }

    /// Sends SIGTERM.
    pub fn term(&self) -> Result<()> {
        signal(self.pid(), "TERM")
    }

    /// Waits up to `within` for it to end (`None`: it did not).
    pub async fn wait_within(&mut self, within: Duration) -> Result<Option<ExitStatus>> {
        let end = Instant::now() + within;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= end {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// Sends signal `name` (`TERM`, `KILL`) to `pid`.
pub fn signal(pid: u32, name: &str) -> Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .context("running kill")?;
    if !status.success() {
        bail!("kill -{name} {pid} failed");
    }
    Ok(())
}

/// How to start fusillade's processes.
pub struct Launcher {
    /// The `fusillade` binary.
    pub exe: PathBuf,
    /// The config file every process reads.
    pub config: PathBuf,
    /// The database.
    pub database_url: String,
    /// Where logs go.
    pub log_dir: PathBuf,
    /// The cleanup guard.
    pub guard: Arc<Guard>,
    /// Workers started so far, to name the next.
    started: u64,
}

impl Launcher {
    /// A launcher for `exe` with this config and database.
    pub fn new(
        exe: PathBuf,
        config: PathBuf,
        database_url: String,
        log_dir: PathBuf,
        guard: Arc<Guard>,
    ) -> Self {
        Self {
            exe,
            config,
            database_url,
            log_dir,
            guard,
            started: 0,
        }
    }

    fn command(&self, subcommand: &str) -> Command {
        let mut c = Command::new(&self.exe);
        c.arg(subcommand)
            .arg("--config")
            .arg(&self.config)
            .arg("--database-url")
            .arg(&self.database_url)
            .env("RUST_LOG", "warn");
        c
    }

    /// Applies the schema, once, before anything else runs.
    pub fn migrate(&self) -> Result<()> {
        let out = self.command("migrate").output()?;
        if !out.status.success() {
            bail!(
                "fusillade migrate failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Starts the API alone on a free loopback port; returns it and its URL.
    pub fn api(&self) -> Result<(Proc, String)> {
        let mut c = self.command("serve");
        c.args(["--api-only", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped());
        let mut p = Proc::spawn(c, "api", &self.log_dir.join("api.log"), &self.guard)?;
        let out = p.child.stdout.take().context("no stdout")?;
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line)?;
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .with_context(|| {
                let log = std::fs::read_to_string(&p.log).unwrap_or_default();
                format!("the API did not start ({line:?}): {log}")
            })?
            .to_owned();
        Ok((p, url))
    }

    /// Starts one more worker.
    pub fn worker(&mut self) -> Result<Proc> {
        self.started += 1;
        let name = format!("worker-{}", self.started);
        let log = self.log_dir.join(format!("{name}.log"));
        let mut c = self.command("worker");
        c.stdout(Stdio::null());
        Proc::spawn(c, &name, &log, &self.guard)
    }

    /// Workers started so far.
    pub fn workers_started(&self) -> u64 {
        self.started
    }
}

/// A process that keeps a core busy (`sh` spinning), to starve the others.
pub fn busy_loop(n: usize, log_dir: &Path, guard: &Arc<Guard>) -> Result<Proc> {
    let mut c = Command::new("sh");
    c.args(["-c", "while :; do :; done"]).stdout(Stdio::null());
    Proc::spawn(
        c,
        &format!("busy-{n}"),
        &log_dir.join(format!("busy-{n}.log")),
        guard,
    )
}
