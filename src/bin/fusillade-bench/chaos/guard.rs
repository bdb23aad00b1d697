//! Cleanup that happens whatever becomes of the bench: a small process of
//! its own (`fusillade-bench chaos-guard`) that is told, line by line on
//! its standard input, what the bench started (process ids, the
//! PostgreSQL cluster, temporary directories), and that undoes all of it
//! once that input closes. The input closes when the bench ends in any
//! way: normally, on an error, on Ctrl-C, or killed by SIGKILL. The guard
//! runs in a process group of its own, so a Ctrl-C at the terminal or a
//! test runner killing the bench's group does not reach it.
//!
//! At the end the bench does not clean up by itself: it closes the pipe
//! and waits for the guard, so there is one cleanup path, the one that an
//! interrupted run also takes.

use anyhow::{Context, Result};
use std::io::{BufRead, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;

/// The bench's end of the pipe to its guard.
pub struct Guard {
    child: Child,
    to_guard: Mutex<Option<ChildStdin>>,
}

impl Guard {
    /// Starts the guard process.
    pub fn start() -> Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg("chaos-guard")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()
            .context("starting the cleanup guard")?;
        let stdin = child.stdin.take().context("the guard has no stdin")?;
        Ok(Self {
            child,
            to_guard: Mutex::new(Some(stdin)),
        })
    }

    fn tell(&self, words: &[&str]) {
        let mut line = words.join("\t");
        line.push('\n');
        let mut to = self.to_guard.lock().expect("no panic while held");
        if let Some(pipe) = to.as_mut() {
            // A guard that is gone cannot be helped; the run goes on.
            let _ = pipe.write_all(line.as_bytes()).and_then(|()| pipe.flush());
        }
    }

    /// The guard SIGKILLs `pid` at the end unless told it is gone.
    pub fn watch_pid(&self, pid: u32) {
        self.tell(&["pid", &pid.to_string()]);
    }

    /// `pid` was reaped by the bench: the guard forgets it.
    pub fn forget_pid(&self, pid: u32) {
        self.tell(&["done", &pid.to_string()]);
    }

    /// The guard stops this cluster at the end (`pg_ctl` run as `run_as`).
    pub fn watch_cluster(&self, pg_ctl: &Path, data: &Path, run_as: Option<&str>) {
        self.tell(&[
            "pg",
            &pg_ctl.display().to_string(),
            &data.display().to_string(),
            run_as.unwrap_or(""),
        ]);
    }

    /// The guard removes this directory at the end.
    pub fn remove_dir(&self, dir: &Path) {
        self.tell(&["dir", &dir.display().to_string()]);
    }

    /// Closes the pipe and waits for the guard to have cleaned up.
    pub fn finish(mut self) {
        drop(self.to_guard.lock().expect("no panic while held").take());
        let _ = self.child.wait();
    }
}

/// What the guard has been told to undo.
#[derive(Debug, Default)]
struct Chores {
    pids: Vec<u32>,
    clusters: Vec<(PathBuf, PathBuf, String)>,
    dirs: Vec<PathBuf>,
}

impl Chores {
    fn note(&mut self, line: &str) {
        let words: Vec<&str> = line.split('\t').collect();
        match words.as_slice() {
            ["pid", pid] => self.pids.extend(pid.parse::<u32>().ok()),
            ["done", pid] => {
                if let Ok(pid) = pid.parse::<u32>() {
                    self.pids.retain(|p| *p != pid);
                }
            }
            ["pg", pg_ctl, data, run_as] => {
                self.clusters
                    .push((pg_ctl.into(), data.into(), (*run_as).to_owned()));
            }
            ["dir", dir] => self.dirs.push(dir.into()),
            _ => eprintln!("chaos-guard: ignoring {line:?}"),
        }
    }

    fn undo(&self) {
        if !self.pids.is_empty() {
            let _ = Command::new("kill")
                .arg("-KILL")
                .args(self.pids.iter().map(u32::to_string))
                .stderr(Stdio::null())
                .status();
        }
        for (pg_ctl, data, run_as) in &self.clusters {
            let mut stop = as_user((!run_as.is_empty()).then_some(run_as.as_str()), pg_ctl);
            stop.args(["stop", "-m", "immediate", "-w", "-D"])
                .arg(data)
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if let Some(dir) = data.parent() {
                stop.current_dir(dir);
            }
            let _ = stop.status();
        }
        for dir in &self.dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// `program` as a command run by `user` (as is when `None`): PostgreSQL
/// refuses to run as root.
pub fn as_user(user: Option<&str>, program: &Path) -> Command {
    match user {
        None => Command::new(program),
        Some(user) => {
            let mut c = Command::new("runuser");
            c.args(["-u", user, "--"]).arg(program);
            c
        }
    }
}

/// The guard itself: reads its chores until its input closes, then does them.
pub fn serve() -> Result<()> {
    // Signals sent to the bench's process group are not for the guard; it
    // is in a group of its own, and ignores the rest until its work is done.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let _entered = runtime.enter();
    let _ignored = {
        use tokio::signal::unix::{SignalKind, signal};
        [
            SignalKind::interrupt(),
            SignalKind::terminate(),
            SignalKind::hangup(),
        ]
        .map(signal)
    };
    let mut chores = Chores::default();
    for line in std::io::stdin().lock().lines() {
        match line {
            Ok(line) => chores.note(&line),
            Err(_) => break,
        }
    }
    chores.undo();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reaped_pids_are_forgotten() {
        let mut c = Chores::default();
        for line in [
            "pid\t10",
            "pid\t11",
            "done\t10",
            "dir\t/tmp/x",
            "pg\t/b/pg_ctl\t/d\t",
        ] {
            c.note(line);
        }
        assert_eq!(c.pids, vec![11]);
        assert_eq!(c.dirs, vec![PathBuf::from("/tmp/x")]);
        assert_eq!(c.clusters.len(), 1);
        assert_eq!(c.clusters[0].2, "");
    }
}
