//! CPU time and memory of processes, read from /proc (Linux).

use std::collections::HashMap;

/// Clock ticks per second of /proc's CPU counters (USER_HZ, 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

/// CPU seconds (user + system) a process has used, if it is still there.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SEC)
}

/// Peak resident set size of a process in KiB (VmHWM).
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
}

/// Pids of every process named `name`.
fn pids_named(name: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| c.trim() == name)
                .unwrap_or(false)
        })
        .collect()
}

/// CPU used by all processes of one name since `start`, sampled: each
/// process's last seen counter counts, so a process that exits between two
/// samples loses at most one sampling interval.
#[derive(Debug, Default)]
pub struct GroupCpu {
    name: String,
    baseline: HashMap<u32, f64>,
    last: HashMap<u32, f64>,
}

impl GroupCpu {
    /// Starts counting for processes called `name` (e.g. `postgres`).
    pub fn start(name: &str) -> Self {
        let baseline: HashMap<u32, f64> = pids_named(name)
            .into_iter()
            .filter_map(|p| Some((p, cpu_seconds(p)?)))
            .collect();
        Self {
            name: name.to_owned(),
            last: baseline.clone(),
            baseline,
        }
    }

    /// Takes a sample.
    pub fn sample(&mut self) {
        for pid in pids_named(&self.name) {
            if let Some(s) = cpu_seconds(pid) {
                self.last.insert(pid, s);
            }
        }
    }

    /// CPU seconds used since the start, by processes seen in samples.
    pub fn used(&self) -> f64 {
        self.last
            .iter()
            .map(|(pid, s)| s - self.baseline.get(pid).copied().unwrap_or(0.0))
            .sum()
    }

    /// Whether any process of that name was seen at all.
    pub fn seen_any(&self) -> bool {
        !self.last.is_empty()
    }
}
