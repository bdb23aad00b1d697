//! `fusillade completions SHELL`: a completion script for the shell, on stdout.

use super::{Cli, CliError};
use clap::CommandFactory;

/// Arguments of `fusillade completions`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The shell to complete for.
    shell: clap_complete::Shell,
}

/// Prints the script.
pub fn run(args: Args) -> Result<(), CliError> {
    let mut cmd = Cli::command();
    clap_complete::generate(args.shell, &mut cmd, "fusillade", &mut std::io::stdout());
    Ok(())
}
