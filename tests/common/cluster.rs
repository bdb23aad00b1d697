//! A throwaway PostgreSQL cluster of the test's own, which the test may
//! stop, restart and freeze (to see how fusillade behaves while its database
//! is away), found and started as scripts/with-postgres does: `initdb` and
//! `pg_ctl` on PATH or under /usr/lib/postgresql/*/bin, run as `postgres`
//! when the test runs as root. Stopped and removed on drop.

use super::process::TempDir;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A running cluster on 127.0.0.1 with trust authentication.
#[derive(Debug)]
pub struct Cluster {
    bin: PathBuf,
    dir: TempDir,
    port: u16,
    run_as: Option<&'static str>,
    frozen: bool,
}

/// The directory holding `initdb` and `pg_ctl`, newest version first.
fn pg_bin() -> PathBuf {
    let on_path = |name: &str| {
        std::env::var_os("PATH").and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .find(|f| f.is_file())
        })
    };
    if let (Some(ctl), Some(_)) = (on_path("pg_ctl"), on_path("initdb")) {
        let ctl = std::fs::canonicalize(&ctl).unwrap_or(ctl);
        return ctl.parent().expect("pg_ctl is in a directory").to_owned();
    }
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            (bin.join("pg_ctl").is_file() && bin.join("initdb").is_file()).then_some((version, bin))
        })
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, d)| d).expect(
        "these tests start their own PostgreSQL: install postgresql (initdb and pg_ctl), \
         e.g. apt-get install postgresql",
    )
}

/// Whether this process runs as root (PostgreSQL refuses to).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().next().map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// A port on 127.0.0.1 that nobody listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding a free port")
        .port()
}

impl Cluster {
    /// Creates and starts a cluster on a free port.
    pub fn start() -> Self {
        let run_as = is_root().then_some("postgres");
        let dir = TempDir::new("pg");
        if let Some(user) = run_as {
            let ok = Command::new("chown")
                .arg(user)
                .arg(dir.path())
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "chown {user} {}", dir.display());
        }
        let mut cluster = Self {
            bin: pg_bin(),
            dir,
            port: 0,
            run_as,
            frozen: false,
        };
        let data = cluster.data();
        cluster.pg(
            "initdb",
            &[
                "-D",
                data.to_str().expect("a UTF-8 path"),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ],
        );
        // A port taken between the check and the start is tried again.
        for _ in 0..20 {
            cluster.port = free_port();
            if cluster.try_start() {
                return cluster;
            }
        }
        panic!("could not start PostgreSQL: {}", cluster.log());
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Runs one of PostgreSQL's programs as the cluster's owner.
    fn command(&self, program: &str, args: &[&str]) -> Command {
        let program = self.bin.join(program);
        let mut cmd = match self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(program);
                c
            }
            None => Command::new(program),
        };
        cmd.args(args).current_dir(self.dir.path());
        cmd
    }

    fn pg(&self, program: &str, args: &[&str]) {
        let out = self
            .command(program, args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
        assert!(
            out.status.success(),
            "{program} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn try_start(&self) -> bool {
        // fsync off is safe here: an immediate stop kills the server, not
        // the machine, so what was written survives in the page cache. A
        // commit must still write its WAL before it returns (the default
        // synchronous_commit), or the stop loses commits fusillade was told
        // had happened, which no database promises.
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories='{}' \
             -c max_connections=100 -c fsync=off -c full_page_writes=off",
            self.port,
            self.dir.display()
        );
        let data = self.data();
        let log = self.dir.join("server.log");
        self.command(
            "pg_ctl",
            &[
                "-D",
                data.to_str().expect("a UTF-8 path"),
                "-l",
                log.to_str().expect("a UTF-8 path"),
                "-w",
                "-t",
                "120",
                "-o",
                &options,
                "start",
            ],
        )
        .output()
        .is_ok_and(|o| o.status.success())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops it as a crash would (`pg_ctl stop -m immediate`): every
    /// connection is cut, nothing is shut down cleanly.
    pub fn stop(&self) {
        let data = self.data();
        self.pg(
            "pg_ctl",
            &[
                "-D",
                data.to_str().expect("a UTF-8 path"),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }

    /// Starts it again on the same port (after [`Cluster::stop`]).
    pub fn restart(&self) {
        // The port may have been taken meanwhile: tried for a while.
        for _ in 0..50 {
            if self.try_start() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("could not restart PostgreSQL: {}", self.log());
    }

    /// The server's processes: the postmaster and its children.
    fn pids(&self) -> Vec<u32> {
        // Also called on drop, so a stopped cluster has no processes.
        let Some(main) = std::fs::read_to_string(self.data().join("postmaster.pid"))
            .ok()
            .and_then(|f| f.lines().next()?.trim().parse::<u32>().ok())
        else {
            return Vec::new();
        };
        let mut pids = vec![main];
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            // Field 4 of /proc/PID/stat, after the ")" that ends the name.
            let parent = std::fs::read_to_string(entry.path().join("stat"))
                .ok()
                .and_then(|s| {
                    let rest = s.rsplit_once(')')?.1;
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                });
            if parent == Some(main) {
                pids.push(pid);
            }
        }
        pids
    }

    fn signal_all(&self, signal: &str) {
        for pid in self.pids() {
            let _ = Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(pid.to_string())
                .status();
        }
    }

    /// Freezes every server process (SIGSTOP): connections stay open and
    /// new ones are accepted by the kernel, but nothing ever answers, as
    /// with a server behind a black hole.
    pub fn freeze(&mut self) {
        // A backend forked between the listing and the postmaster's stop
        // would go on answering: list again until no process is new.
        let mut stopped = std::collections::HashSet::new();
        loop {
            let new: Vec<u32> = self
                .pids()
                .into_iter()
                .filter(|p| !stopped.contains(p))
                .collect();
            if new.is_empty() {
                break;
            }
            for pid in new {
                let _ = Command::new("kill")
                    .arg("-STOP")
                    .arg(pid.to_string())
                    .status();
                stopped.insert(pid);
            }
        }
        self.frozen = true;
    }

    /// Lets a frozen server go on (SIGCONT).
    pub fn thaw(&mut self) {
        self.signal_all("CONT");
        self.frozen = false;
    }

    /// Where its files are.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.frozen {
            self.signal_all("CONT");
        }
        let data = self.data();
        let _ = self
            .command(
                "pg_ctl",
                &[
                    "-D",
                    data.to_str().unwrap_or_default(),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ],
            )
            .output();
    }
}
