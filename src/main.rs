//! The `fusillade` binary: parses arguments and hands over to `cli`.

mod cli;

// glibc's allocator showed up as the largest item in the daemon's profile
// (about a sixth of its CPU); mimalloc is faster under many threads.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    cli::init_tracing();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fusillade: {:#}", e.error);
            ExitCode::from(e.exit_code())
        }
    }
}
