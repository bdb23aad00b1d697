//! The chaos suite's short run (`fusillade-bench chaos`, see RELIABILITY.md):
//! 2,000 lines through the API and 3 workers on a throwaway PostgreSQL
//! cluster, with a few SIGKILLs, one immediate database restart, one
//! rolling SIGTERM restart, upstream faults and bad requests; the bench
//! checks every line, the counts, the limits and the logs, and exits 1 on
//! any violation. It starts its own cluster, so it needs PostgreSQL's
//! binaries (initdb, pg_ctl), not DATABASE_URL.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Far above what the run needs on a loaded machine (about a minute), so
/// only a stuck run reaches it; the bench's own limit on the batch comes first.
const LIMIT: Duration = Duration::from_secs(600);

#[test]
fn a_short_chaos_run_loses_nothing_and_breaks_no_promise() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fusillade-bench"))
        .args([
            "chaos",
            "--lines",
            "2000",
            "--models",
            "chaos-a=4,chaos-b=8,chaos-c=12",
            "--max-kills",
            "3",
            "--bad-inputs",
            "200",
            "--timeout-secs",
            "300",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting fusillade-bench chaos");
    // Read both pipes on threads, so that a full pipe never blocks the bench.
    let pipe = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = pipe(Box::new(child.stdout.take().unwrap()));
    let err = pipe(Box::new(child.stderr.take().unwrap()));
    let began = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if began.elapsed() > LIMIT {
            // Its cleanup guard stops the cluster and the processes.
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    println!("{out}");
    eprintln!("{err}");
    let status = status.unwrap_or_else(|| panic!("the chaos run took over {LIMIT:?}"));
    assert!(
        status.success(),
        "the chaos run found violations ({status}):\n{out}\n{err}"
    );
    assert!(out.contains("chaos: no violation"), "{out}");
}
