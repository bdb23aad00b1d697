//! The progress display of `fusillade run`, and the log writer that keeps
//! log lines off it.
//!
//! On a terminal the bar is drawn by indicatif on stderr; every log line is
//! written through [`LogWriter`], which hides the bar while it writes, so a
//! line is never glued onto the bar. Elsewhere (a file, a pipe) plain lines
//! are printed every few seconds, without colours.

use fusillade::daemon::RouteLimit;
use fusillade::domain::batch::BatchCounts;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The bar being drawn, if any, so that log lines can be written above it.
static ACTIVE: OnceLock<Mutex<Option<ProgressBar>>> = OnceLock::new();

fn active() -> &'static Mutex<Option<ProgressBar>> {
    ACTIVE.get_or_init(|| Mutex::new(None))
}

/// Whether stderr is a terminal that may get colours (`NO_COLOR` unset).
pub fn colours_on_stderr() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// A tracing writer for stderr that hides the progress bar while it writes.
#[derive(Debug, Default)]
pub struct LogWriter {
    buf: Vec<u8>,
}

impl Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.buf);
        let write = || {
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(&buf);
            let _ = err.flush();
        };
        // Cloned out of the lock: suspend redraws, and must not hold it.
        let bar = active().lock().ok().and_then(|b| b.clone());
        match bar {
            Some(bar) => bar.suspend(write),
            None => write(),
        }
        Ok(())
    }
}

impl Drop for LogWriter {
    // One event is formatted into one writer: it goes out whole, at once.
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// Plain lines are printed this often when stderr is not a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

/// Draws progress of one batch.
pub struct Progress {
    bar: Option<ProgressBar>,
    started: Instant,
    first_done: Option<(Instant, i64)>,
    last_line: Instant,
    quiet: bool,
}

impl Progress {
    /// Starts the clock; `quiet` shows nothing.
    pub fn new(total: i64, quiet: bool) -> Self {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(
                Some(total.max(0) as u64),
                ProgressDrawTarget::stderr(),
            );
            let template = if colours_on_stderr() {
                "{bar:24.cyan/blue} {percent:>3}%  {msg}"
            } else {
                "{bar:24} {percent:>3}%  {msg}"
            };
            bar.set_style(
                ProgressStyle::with_template(template)
                    .expect("a valid template")
                    .progress_chars("#>-"),
            );
            *active().lock().expect("progress lock") = Some(bar.clone());
            bar
        });
        Self {
            bar,
            started: Instant::now(),
            first_done: None,
            last_line: Instant::now() - PLAIN_EVERY,
            quiet,
        }
    }

    /// Shows the counts; `in_flight` is the calls the upstream is answering,
    /// `limits` the routes' adaptive limits (shown while below their
    /// ceilings). Off a terminal only every few seconds, unless `force`.
    pub fn show(&mut self, c: &BatchCounts, in_flight: u32, limits: &[RouteLimit], force: bool) {
        if self.quiet {
            return;
        }
        let line = self.render(c, in_flight) + &limits_text(limits);
        match &self.bar {
            Some(bar) => {
                bar.set_length(c.total.max(0) as u64);
                bar.set_position(c.finished().max(0) as u64);
                bar.set_message(line);
            }
            None => {
                if force || self.last_line.elapsed() >= PLAIN_EVERY {
                    self.last_line = Instant::now();
                    eprintln!("{}", plain(c, &line));
                }
            }
        }
    }

    /// Ends the bar and prints the final counts as a line of their own.
    pub fn finish(&mut self, c: &BatchCounts) {
        if self.quiet {
            return;
        }
        let line = plain(c, &self.render(c, 0));
        if let Some(bar) = self.bar.take() {
            *active().lock().expect("progress lock") = None;
            // Cleared, then printed as a whole line: a bar left on screen
            // keeps the cursor at its end, where the next log line would go.
            bar.finish_and_clear();
        }
        eprintln!("{line}");
    }

    fn render(&mut self, c: &BatchCounts, in_flight: u32) -> String {
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
        format!(
            "done {}  failed {}  in flight {in_flight}  {rate:.0} req/s  ETA {eta}  elapsed {}",
            c.completed,
            c.failed + c.canceled,
            format_duration(self.started.elapsed()),
        )
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            *active().lock().expect("progress lock") = None;
            bar.finish_and_clear();
        }
    }
}

/// `  limit 40/256` for each route held below its ceiling (with the model
/// named when there are several routes); empty when none is.
fn limits_text(limits: &[RouteLimit]) -> String {
    let named = limits.len() > 1;
    limits
        .iter()
        .filter(|l| l.limit < l.ceiling)
        .map(|l| {
            let model = if named {
                format!(" {}", l.model)
            } else {
                String::new()
            };
            format!("  limit{model} {}/{}", l.limit, l.ceiling)
        })
        .collect()
}

/// The line printed off a terminal: the fraction first, as a bar would show.
fn plain(c: &BatchCounts, line: &str) -> String {
    let pct = if c.total > 0 {
        100.0 * c.finished() as f64 / c.total as f64
    } else {
        100.0
    };
    format!("{}/{} ({pct:.1}%)  {line}", c.finished(), c.total)
}

fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
    } else {
        format!("{:02}:{:02}", s / 60, s % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(model: &str, limit: u32, ceiling: u32) -> RouteLimit {
        RouteLimit {
            model: model.into(),
            limit,
            ceiling,
        }
    }

    #[test]
    fn route_limits_show_while_below_their_ceilings() {
        assert_eq!(limits_text(&[]), "");
        assert_eq!(limits_text(&[limit("m", 256, 256)]), "");
        assert_eq!(limits_text(&[limit("m", 40, 256)]), "  limit 40/256");
        assert_eq!(
            limits_text(&[limit("a", 8, 8), limit("b", 3, 16)]),
            "  limit b 3/16"
        );
    }
}
