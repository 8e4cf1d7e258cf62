//! The `spate` binary: the MTA service and its management client.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "spate",
    version,
    about = "A durable, thread-per-core mail transfer agent"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the MTA in the foreground.
    Run {
        /// Configuration file; without it spate runs on its embedded default.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Validate a configuration without starting anything.
    Check {
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { .. } | Command::Check { .. } => {
            eprintln!("spate: not yet implemented");
            ExitCode::from(70)
        }
    }
}
