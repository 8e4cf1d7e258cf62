//! `spate-bench`: load generator, scriptable sink, test DNS server and benchmark scenarios.

mod shaper;
mod spool;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "spate-bench")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Spool append throughput (group commit vs fsync per message) and recovery time.
    Spool(spool::SpoolArgs),
    /// Rate controller accuracy and cost over many simulated queues.
    Shaper(shaper::ShaperArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Spool(args) => spool::run(args),
        Command::Shaper(args) => shaper::run(args),
    }
}
