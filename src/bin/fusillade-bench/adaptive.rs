//! `fusillade-bench adaptive`: what adaptive concurrency costs against an
//! upstream that refuses calls above what it takes. The mock (in this
//! process, so its in-flight count can be sampled) answers 429 to every call
//! beyond `--takes` in flight; the real `fusillade run` binary sends the same
//! file twice: once configured far above that (`--concurrency`), where it
//! must find the limit itself, and once configured at exactly `--takes`.
//! Each run prints its mean calls in flight, the share of calls refused and
//! its throughput; then the ratio of the two throughputs.

use crate::procs::sibling;
use anyhow::{Context, Result, bail};
use fusillade::mock::{MockBehavior, MockUpstream, Overload};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Arguments of `fusillade-bench adaptive`.
#[derive(clap::Args)]
pub struct Args {
    /// Lines of the file each run sends.
    #[arg(long, default_value_t = 20_000)]
    lines: u64,
    /// Calls in flight the mock takes; it answers 429 to those above.
    #[arg(long, default_value_t = 40)]
    takes: u64,
    /// The concurrency of the adaptive run (the other is `--takes`).
    #[arg(long, default_value_t = 256)]
    concurrency: u32,
    /// The mock's latency per answered call.
    #[arg(long, default_value_t = 100)]
    latency_ms: u64,
    /// The database of both runs (a fresh batch each time); default: an
    /// embedded one under bench-data/.
    #[arg(long = "database-url")]
    database_url: Option<String>,
}

/// What one run showed.
struct Figures {
    mean_in_flight: f64,
    calls: u64,
    refused: u64,
    wall: f64,
}

impl Figures {
    fn refused_share(&self) -> f64 {
        self.refused as f64 / self.calls.max(1) as f64
    }
    /// Lines answered per second, from the first call to the run's end.
    fn throughput(&self, lines: u64) -> f64 {
        lines as f64 / self.wall.max(1e-9)
    }
}

/// Runs both and prints their figures.
pub async fn run(a: Args) -> Result<()> {
    let dir = PathBuf::from("bench-data");
    std::fs::create_dir_all(&dir)?;
    let input = dir.join(format!("adaptive-{}.jsonl", a.lines));
    {
        let mut w = std::io::BufWriter::new(std::fs::File::create(&input)?);
        crate::run::write_requests(&mut w, 0, a.lines)?;
        std::io::Write::flush(&mut w)?;
    }
    let db = match &a.database_url {
        Some(url) => url.clone(),
        None => {
            let path = dir.join("adaptive.db");
            let _ = std::fs::remove_file(&path);
            format!("sqlite://{}", path.display())
        }
    };
    let adaptive = one_run(&a, &dir, &input, &db, a.concurrency).await?;
    let fixed = one_run(&a, &dir, &input, &db, a.takes as u32).await?;
    println!(
        "mock takes {} calls at once, {} ms each; {} lines per run",
        a.takes, a.latency_ms, a.lines
    );
    for (name, f) in [
        (format!("configured {}", a.concurrency), &adaptive),
        (format!("configured {}", a.takes), &fixed),
    ] {
        println!(
            "{name:<16} in flight {:.1} on average; {} of {} calls refused ({:.2}%); {:.0} lines/s ({:.2} s)",
            f.mean_in_flight,
            f.refused,
            f.calls,
            100.0 * f.refused_share(),
            f.throughput(a.lines),
            f.wall
        );
    }
    let ratio = adaptive.throughput(a.lines) / fixed.throughput(a.lines).max(1e-9);
    println!(
        "throughput ratio {ratio:.3} (adaptive / fixed; the target is within 15%: {})",
        if (0.85..=1.15).contains(&ratio) {
            "met"
        } else {
            "missed"
        }
    );
    Ok(())
}

async fn one_run(
    a: &Args,
    dir: &Path,
    input: &Path,
    db: &str,
    concurrency: u32,
) -> Result<Figures> {
    let mock = MockUpstream::start(
        MockBehavior::with_latency(Duration::from_millis(a.latency_ms)).with_overload(Overload {
            max_in_flight: a.takes,
            retry_after: None,
        }),
    )
    .await;
    let config = dir.join(format!("adaptive-{concurrency}.toml"));
    std::fs::write(
        &config,
        format!("[upstream]\nconcurrency = {concurrency}\n[daemon]\nmax_retries = 1000\n"),
    )?;
    let mut child = Command::new(sibling("fusillade")?)
        .arg("run")
        .arg(input)
        .arg("--output")
        .arg(dir.join("adaptive-out.jsonl"))
        .arg("--errors")
        .arg(dir.join("adaptive-err.jsonl"))
        .arg("--config")
        .arg(&config)
        .arg("--upstream")
        .arg(mock.url())
        .arg("--database-url")
        .arg(db)
        .arg("--fresh")
        .arg("--quiet")
        .stdout(Stdio::null())
        .spawn()
        .context("starting fusillade run")?;
    // Sampled from the first call on, so ingest time is not counted.
    let (mut sum, mut samples, mut first) = (0u64, 0u64, None::<Instant>);
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if first.is_none() && mock.total_calls() > 0 {
            first = Some(Instant::now());
        }
        if first.is_some() {
            sum += mock.in_flight();
            samples += 1;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let wall = first.map_or(0.0, |t| t.elapsed().as_secs_f64());
    if !status.success() {
        bail!("fusillade run at concurrency {concurrency} failed: {status}");
    }
    let figures = Figures {
        mean_in_flight: sum as f64 / samples.max(1) as f64,
        calls: mock.total_calls(),
        refused: mock.refused(),
        wall,
    };
    drop(mock);
    Ok(figures)
}
