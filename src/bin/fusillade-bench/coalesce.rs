//! `fusillade-bench coalesce`: what request coalescing buys against an
//! upstream with a prefix cache. A mixed-prefix chat workload (many long
//! system prompts behind one preamble, many questions each, shuffled, with
//! exact duplicates) runs through the real `fusillade run` against
//! cache-modelling mocks (`fusillade-bench mock --cache`, one process per
//! replica), once with coalescing off (file order, round-robin over the
//! replicas) and once on; then every output line is checked against the
//! answer its own prompt gets.

use crate::procs::{MockProcess, sibling};
use anyhow::{Context, Result, bail};
use fusillade::mock::{CacheArgs, CacheStats, answer_for};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// Arguments of `fusillade-bench coalesce`.
#[derive(clap::Args)]
pub struct Args {
    /// Distinct system prompts (400-800 words each, behind one preamble).
    #[arg(long, default_value_t = 150)]
    prompts: u64,
    /// Questions per system prompt.
    #[arg(long, default_value_t = 50)]
    questions: u64,
    /// Share of the file's lines that are exact temperature-0 copies of
    /// other lines.
    #[arg(long, default_value_t = 0.10)]
    duplicates: f64,
    /// Share of the file's lines that are copies of temperature-0.7 lines.
    #[arg(long, default_value_t = 0.01)]
    warm_duplicates: f64,
    /// Upstream replicas (one mock process each).
    #[arg(long, default_value_t = 1)]
    replicas: u32,
    /// Calls in flight per replica.
    #[arg(long, default_value_t = 64)]
    concurrency: u32,
    /// Run only this mode (`off` or `on`); both by default.
    #[arg(long)]
    only: Option<String>,
    /// Instead of the chat workload: this many single-input embedding lines.
    #[arg(long)]
    embeddings: Option<u64>,
    /// `throughput`: the workload with coalescing off, then on; `window`: a
    /// tight-window batch submitted during a large 24 h batch of the same
    /// model (coalescing on), timed against its window.
    #[arg(long, default_value = "throughput", value_parser = ["throughput", "window"])]
    scenario: String,
    #[command(flatten)]
    window: crate::coalesce_window::WindowArgs,
    #[command(flatten)]
    cache: CacheArgs,
    #[command(flatten)]
    db: crate::BenchDb,
}

/// A small deterministic generator, so every run sends the same workload.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

const WORDS: [&str; 32] = [
    "river", "stone", "light", "cloud", "engine", "garden", "signal", "market", "winter", "silver",
    "planet", "forest", "harbor", "letter", "camera", "bridge", "ladder", "copper", "meadow",
    "lantern", "thunder", "orbit", "canvas", "pillow", "rocket", "saddle", "timber", "violet",
    "walnut", "yellow", "zephyr", "quartz",
];

fn words(rng: &mut Rng, n: u64) -> String {
    let mut s = String::new();
    for i in 0..n {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(WORDS[rng.below(WORDS.len() as u64) as usize]);
    }
    s
}

/// One input line and what it must be answered.
struct Line {
    custom_id: String,
    body: Value,
    warm: bool,
}

/// The mixed-prefix chat workload, shuffled.
fn chat_workload(a: &Args) -> Vec<Line> {
    let mut rng = Rng(14);
    let preamble = format!(
        "You are a helpful assistant of the fusillade benchmark. {}",
        words(&mut rng, 120)
    );
    let mut lines = Vec::new();
    for p in 0..a.prompts {
        let n = 400 + rng.below(401);
        let system = format!("{preamble}\n\nPersona {p}: {}", words(&mut rng, n));
        for q in 0..a.questions {
            let body = json!({"model": "bench-model", "temperature": 0,
                "max_tokens": 16, "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": format!("Question {q} for persona {p}: {}?",
                                                    words(&mut rng, 8))}]});
            lines.push(Line {
                custom_id: format!("p{p}-q{q}"),
                body,
                warm: false,
            });
        }
    }
    // The shares are of the whole file: base lines plus the copies.
    let base = lines.len();
    let total = (base as f64 / (1.0 - a.duplicates - a.warm_duplicates)).round() as usize;
    let warm = (a.warm_duplicates * total as f64).round() as usize;
    let dups = (a.duplicates * total as f64).round() as usize;
    let mut extra = Vec::new();
    let mut made_warm = 0;
    while made_warm < warm.min(base) {
        let i = rng.below(base as u64) as usize;
        if lines[i].warm {
            continue;
        }
        lines[i].body["temperature"] = json!(0.7);
        lines[i].warm = true;
        extra.push(Line {
            custom_id: format!("{}-warm-dup", lines[i].custom_id),
            body: lines[i].body.clone(),
            warm: true,
        });
        made_warm += 1;
    }
    let mut n = 0;
    while n < dups {
        let i = rng.below(base as u64) as usize;
        if lines[i].warm {
            continue;
        }
        extra.push(Line {
            custom_id: format!("{}-dup{n}", lines[i].custom_id),
            body: lines[i].body.clone(),
            warm: false,
        });
        n += 1;
    }
    lines.extend(extra);
    for i in (1..lines.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        lines.swap(i, j);
    }
    lines
}

/// Single-input embedding lines, the line `bad` (if any) an empty input.
fn embedding_workload(n: u64) -> Vec<Line> {
    let mut rng = Rng(4);
    (0..n)
        .map(|i| {
            let input = if i == n / 2 {
                String::new()
            } else {
                format!("text {i} {}", words(&mut rng, 12))
            };
            Line {
                custom_id: format!("e{i}"),
                body: json!({"model": "bench-embed", "input": input}),
                warm: false,
            }
        })
        .collect()
}

fn write_input(path: &Path, lines: &[Line], url: &str) -> Result<()> {
    let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
    for l in lines {
        let line = json!({"custom_id": l.custom_id, "method": "POST", "url": url,
                          "body": l.body});
        writeln!(w, "{line}")?;
    }
    w.flush()?;
    Ok(())
}

/// What one mode's run gave.
struct Outcome {
    wall: f64,
    stats: Vec<CacheStats>,
}

/// Runs the benchmark and prints its figures.
pub async fn run(a: Args) -> Result<()> {
    let dir = PathBuf::from("bench-data");
    std::fs::create_dir_all(&dir)?;
    if a.scenario == "window" {
        return crate::coalesce_window::run(&a.window, a.concurrency, &a.cache, &a.db.url, &dir)
            .await;
    }
    let (lines, url) = match a.embeddings {
        Some(n) => (embedding_workload(n), "/v1/embeddings"),
        None => (chat_workload(&a), "/v1/chat/completions"),
    };
    let input = dir.join("coalesce-in.jsonl");
    write_input(&input, &lines, url)?;
    let warm = lines.iter().filter(|l| l.warm).count();
    println!(
        "workload          {} lines ({url}), {warm} at temperature 0.7, {} replica(s), {} in flight each",
        lines.len(),
        a.replicas,
        a.concurrency
    );
    let modes: Vec<bool> = match a.only.as_deref() {
        None => vec![false, true],
        Some("off") => vec![false],
        Some("on") => vec![true],
        Some(other) => bail!("--only takes off or on, not {other}"),
    };
    let mut walls = Vec::new();
    for on in modes {
        let o = run_mode(&a, &dir, &input, &lines, on).await?;
        let calls: u64 = o
            .stats
            .iter()
            .map(|s| s.calls + s.embedding_calls + s.refused)
            .sum();
        let prompt: u64 = o.stats.iter().map(|s| s.prompt_tokens).sum();
        let cached: u64 = o.stats.iter().map(|s| s.cached_tokens).sum();
        let hit = if prompt == 0 {
            0.0
        } else {
            cached as f64 / prompt as f64
        };
        let per: Vec<String> = o
            .stats
            .iter()
            .map(|s| (s.calls + s.embedding_calls + s.refused).to_string())
            .collect();
        println!(
            "coalescing {:<4}   {:.2} s wall, hit rate {:.1}%, upstream calls {calls} = {:.1}% of lines (per replica: {})",
            if on { "on" } else { "off" },
            o.wall,
            100.0 * hit,
            100.0 * calls as f64 / lines.len() as f64,
            per.join(", ")
        );
        walls.push(o.wall);
    }
    if let [off, on] = walls[..] {
        println!("speed-up          {:.2}x (off wall / on wall)", off / on);
    }
    Ok(())
}

async fn run_mode(a: &Args, dir: &Path, input: &Path, lines: &[Line], on: bool) -> Result<Outcome> {
    let pool = crate::connect_bench_db(&a.db.url).await?;
    pool.close().await;
    let mut mocks = Vec::new();
    for _ in 0..a.replicas.max(1) {
        mocks.push(MockProcess::start_with(&a.cache.flags())?);
    }
    let urls: Vec<String> = mocks.iter().map(|m| format!("\"{}\"", m.url)).collect();
    let config = dir.join("coalesce-config.toml");
    std::fs::write(
        &config,
        format!(
            "[upstream]\nurls = [{}]\nconcurrency = {}\n{}[daemon]\nprefix_grouping = {on}\n",
            urls.join(", "),
            a.concurrency,
            if on {
                ""
            } else {
                "coalesce = \"never\"\nembeddings_pack = 1\n"
            }
        ),
    )?;
    let out = dir.join("coalesce-out.jsonl");
    let err = dir.join("coalesce-err.jsonl");
    let started = Instant::now();
    let status = Command::new(sibling("fusillade")?)
        .arg("run")
        .arg(input)
        .arg("--output")
        .arg(&out)
        .arg("--errors")
        .arg(&err)
        .arg("--config")
        .arg(&config)
        .arg("--database-url")
        .arg(&a.db.url)
        .arg("--fresh")
        .arg("--quiet")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .status()
        .context("running fusillade run")?;
    let wall = started.elapsed().as_secs_f64();
    let mut stats = Vec::new();
    let http = reqwest::Client::new();
    for m in &mocks {
        let text = http
            .get(format!("{}/_stats", m.url))
            .send()
            .await?
            .text()
            .await?;
        let s: CacheStats = serde_json::from_str(&text)?;
        stats.push(s);
    }
    for m in &mut mocks {
        m.finish()?;
    }
    if !status.success() && a.embeddings.is_none() {
        bail!("fusillade run failed: {status}");
    }
    check(lines, &out, &err, a.embeddings.is_some())?;
    Ok(Outcome { wall, stats })
}

/// Every line answered once, with the answer to its own prompt; the
/// temperature-0.7 twins answered by separate calls; for embeddings, only
/// the empty input failed.
fn check(lines: &[Line], out: &Path, err: &Path, embeddings: bool) -> Result<()> {
    let by_id: HashMap<&str, &Line> = lines.iter().map(|l| (l.custom_id.as_str(), l)).collect();
    let mut seen = HashSet::new();
    let mut warm_calls: HashMap<String, Vec<String>> = HashMap::new();
    for row in std::io::BufReader::new(std::fs::File::open(out)?).lines() {
        let v: Value = serde_json::from_str(&row?)?;
        let id = v["custom_id"].as_str().context("no custom_id")?.to_owned();
        let line = by_id
            .get(id.as_str())
            .with_context(|| format!("unknown {id}"))?;
        if !seen.insert(id.clone()) {
            bail!("{id} answered twice");
        }
        let body = &v["response"]["body"];
        if embeddings {
            let want = fusillade::mock::embedding_for(line.body["input"].as_str().unwrap_or(""));
            let got: Vec<f64> = serde_json::from_value(body["data"][0]["embedding"].clone())?;
            if got != want || body["data"].as_array().map(Vec::len) != Some(1) {
                bail!("{id} got another line's embedding");
            }
        } else {
            let got = body["choices"][0]["message"]["content"].as_str();
            if got != Some(answer_for(&line.body).as_str()) {
                bail!("{id} got another line's answer: {got:?}");
            }
            if line.warm {
                let key = line.body.to_string();
                let call = body["id"].as_str().unwrap_or("").to_owned();
                warm_calls.entry(key).or_default().push(call);
            }
        }
    }
    let failed: Vec<String> = if err.exists() {
        std::io::BufReader::new(std::fs::File::open(err)?)
            .lines()
            .map(|r| {
                let v: Value = serde_json::from_str(&r?)?;
                Ok(v["custom_id"].as_str().unwrap_or("").to_owned())
            })
            .collect::<Result<_>>()?
    } else {
        Vec::new()
    };
    let expected_failed: Vec<String> = lines
        .iter()
        .filter(|l| embeddings && l.body["input"].as_str() == Some(""))
        .map(|l| l.custom_id.clone())
        .collect();
    if failed != expected_failed {
        bail!("failed lines {failed:?}, expected {expected_failed:?}");
    }
    if seen.len() + failed.len() != lines.len() {
        bail!("{} of {} lines answered", seen.len(), lines.len());
    }
    for calls in warm_calls.values() {
        let distinct: HashSet<&String> = calls.iter().collect();
        if distinct.len() != calls.len() {
            bail!("temperature-0.7 twins shared one upstream call");
        }
    }
    println!(
        "checked           {} answers, each its own; {} failed as expected",
        seen.len(),
        failed.len()
    );
    Ok(())
}
