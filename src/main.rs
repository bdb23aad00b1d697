//! The `fusillade` binary: parses arguments and hands over to `cli`.

mod cli;

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
