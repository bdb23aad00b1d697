//! A live progress line for `fusillade run`: redrawn in place on a terminal,
//! plain periodic lines otherwise.

use fusillade::domain::batch::BatchCounts;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Draws progress of one batch.
pub struct Progress {
    tty: bool,
    started: Instant,
    first_done: Option<(Instant, i64)>,
    last_line: Instant,
}

/// Plain lines are printed this often when stderr is not a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

impl Progress {
    /// Starts the clock.
    pub fn new() -> Self {
        Self {
            tty: std::io::stderr().is_terminal(),
            started: Instant::now(),
            first_done: None,
            last_line: Instant::now() - PLAIN_EVERY,
        }
    }

    /// Shows the counts now (on a terminal every call redraws; otherwise
    /// only every few seconds, unless `force`).
    pub fn show(&mut self, c: &BatchCounts, force: bool) {
        if !self.tty && !force && self.last_line.elapsed() < PLAIN_EVERY {
            return;
        }
        self.last_line = Instant::now();
        let line = self.render(c);
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{line}");
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }

    /// Ends the in-place line.
    pub fn finish(&mut self, c: &BatchCounts) {
        self.show(c, true);
        if self.tty {
            eprintln!();
        }
    }

    fn render(&mut self, c: &BatchCounts) -> String {
        let finished = c.finished();
        let now = Instant::now();
        // The rate counts from the first finished request seen, so time spent
        // uploading does not drag it down.
        let (t0, n0) = *self.first_done.get_or_insert((now, finished));
        let secs = now.duration_since(t0).as_secs_f64();
        let rate = if secs > 0.5 {
            (finished - n0) as f64 / secs
        } else {
            0.0
        };
        let left = (c.total - finished).max(0);
        let eta = if rate > 0.0 {
            format_duration(Duration::from_secs_f64(left as f64 / rate))
        } else {
            "--:--".into()
        };
        let pct = if c.total > 0 {
            100.0 * finished as f64 / c.total as f64
        } else {
            100.0
        };
        let width = 24usize;
        let filled = ((pct / 100.0) * width as f64).round() as usize;
        format!(
            "[{}{}] {pct:5.1}%  done {}  failed {}  left {}  {rate:.0} req/s  ETA {eta}  elapsed {}",
            "#".repeat(filled.min(width)),
            "-".repeat(width - filled.min(width)),
            c.completed,
            c.failed + c.canceled,
            c.unfinished(),
            format_duration(self.started.elapsed()),
        )
    }
}

fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
    } else {
        format!("{:02}:{:02}", s / 60, s % 60)
    }
}
