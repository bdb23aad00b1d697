//! The `fusillade` binary: parses arguments and hands over to `cli`.

mod cli;

// The system allocator: mimalloc was tried (BENCHMARKS.md, issue 4) and
// gave the same speed once the hot path stopped allocating per row, but it
// held more than twice the memory (daemon peak 91-114 MiB against 36-46).

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    cli::init_tracing(args.log_filter());
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fusillade: {:#}", e.error);
            ExitCode::from(e.exit_code())
        }
    }
}
