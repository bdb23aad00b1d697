//! A throwaway PostgreSQL cluster: `initdb` into the run's temporary
//! directory, started with `pg_ctl` on a free loopback port, restarted in
//! immediate mode when the chaos asks, and stopped and removed by the
//! guard. The binaries are found as `scripts/with-postgres` finds them (on
//! the PATH, else the newest `/usr/lib/postgresql/*/bin`), and as root the
//! cluster runs as `postgres` (or `nobody`), since PostgreSQL refuses root.

use super::guard::{Guard, as_user};
use anyhow::{Context, Result, bail};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A running cluster.
pub struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    run_as: Option<String>,
    port: u16,
    settings: Vec<String>,
    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub url: String,
    /// The PostgreSQL version, as `pg_ctl --version` says it.
    pub version: String,
}

/// Settings every run gets: durability settings that only matter for a
/// crash of the machine (the chaos restarts the server, not the machine),
/// and room for every process's pools.
pub const DEFAULT_SETTINGS: &[&str] = &["max_connections=300", "fsync=off", "full_page_writes=off"];

/// The directory holding `initdb` and `pg_ctl`.
fn find_bin() -> Result<PathBuf> {
    let on_path = |name: &str| {
        std::env::var_os("PATH").and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .find(|f| f.is_file())
        })
    };
    if let (Some(_), Some(pg_ctl)) = (on_path("initdb"), on_path("pg_ctl")) {
        let real = std::fs::canonicalize(&pg_ctl)?;
        return Ok(real.parent().context("pg_ctl has a directory")?.to_owned());
    }
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, bin)| bin.join("initdb").is_file() && bin.join("pg_ctl").is_file())
        .collect();
    dirs.sort();
    match dirs.pop() {
        Some((_, bin)) => Ok(bin),
        None => bail!(
            "PostgreSQL's initdb and pg_ctl were not found (on the PATH or under \
             /usr/lib/postgresql/*/bin): install postgresql"
        ),
    }
}

/// Who runs the cluster: nobody else unless we are root.
fn cluster_user() -> Result<Option<String>> {
    if std::fs::metadata("/proc/self")?.uid() != 0 {
        return Ok(None);
    }
    let has_postgres = Command::new("id")
        .arg("postgres")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    Ok(Some(
        if has_postgres { "postgres" } else { "nobody" }.to_owned(),
    ))
}

/// A port that was free a moment ago.
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Cluster {
    /// Creates and starts a cluster under `dir` (which the guard removes),
    /// with `settings` (`name=value`) after the defaults.
    pub fn start(dir: &Path, settings: &[String], guard: &Guard) -> Result<Self> {
        let bin = find_bin()?;
        let run_as = cluster_user()?;
        if let Some(user) = &run_as {
            let owned = Command::new("chown")
                .arg(user)
                .arg(dir)
                .status()
                .context("running chown")?;
            if !owned.success() {
                bail!("could not give {} to {user}", dir.display());
            }
        }
        let mut all: Vec<String> = DEFAULT_SETTINGS.iter().map(|s| s.to_string()).collect();
        all.extend(settings.iter().cloned());
        let mut cluster = Self {
            bin,
            dir: dir.to_owned(),
            run_as,
            port: 0,
            settings: all,
            url: String::new(),
            version: String::new(),
        };
        let version = cluster.pg("pg_ctl").arg("--version").output()?;
        cluster.version = String::from_utf8_lossy(&version.stdout).trim().to_owned();
        let init = cluster
            .pg("initdb")
            .arg("-D")
            .arg(cluster.data())
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ])
            .output()
            .context("running initdb")?;
        if !init.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&init.stderr));
        }
        guard.watch_cluster(
            &cluster.bin.join("pg_ctl"),
            &cluster.data(),
            cluster.run_as.as_deref(),
        );
        // Another process may take the port between the check and the start.
        for _ in 0..5 {
            cluster.port = free_port()?;
            if cluster.start_server().is_ok() {
                cluster.url = format!("postgres://postgres@127.0.0.1:{}/postgres", cluster.port);
                return Ok(cluster);
            }
        }
        bail!("could not start PostgreSQL: {}", cluster.log_tail())
    }

    /// Where the cluster's files are.
    fn data(&self) -> PathBuf {
        self.dir.join("pg")
    }

    /// One of the cluster's programs, run as its user from its directory.
    fn pg(&self, program: &str) -> Command {
        let mut c = as_user(self.run_as.as_deref(), &self.bin.join(program));
        c.current_dir(&self.dir);
        c
    }

    fn start_server(&self) -> Result<()> {
        let mut options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories='{}'",
            self.port,
            self.dir.display()
        );
        for s in &self.settings {
            options.push_str(" -c ");
            options.push_str(s);
        }
        let status = self
            .pg("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.join("postgres.log"))
            .args(["-w", "-t", "120", "-o", &options, "start"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if !status.success() {
            bail!("pg_ctl start failed");
        }
        Ok(())
    }

    fn stop_server(&self, mode: &str) -> Result<()> {
        let status = self
            .pg("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", mode, "-w", "-t", "120", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if !status.success() {
            bail!("pg_ctl stop -m {mode} failed: {}", self.log_tail());
        }
        Ok(())
    }

    /// Stops the server in immediate mode (no checkpoint, as a crash would)
    /// and starts it again after `outage`; returns how long it was down.
    pub fn restart_immediate(&self, outage: Duration) -> Result<Duration> {
        let began = Instant::now();
        self.stop_server("immediate")?;
        std::thread::sleep(outage);
        self.start_server()
            .with_context(|| format!("restarting PostgreSQL: {}", self.log_tail()))?;
        Ok(began.elapsed())
    }

    /// The last lines of the server's log.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }
}
