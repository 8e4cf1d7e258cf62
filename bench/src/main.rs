//! `spate-bench`: load generator, scriptable sink, test DNS server and benchmark scenarios.

mod shaper;

use clap::Parser;

/// `spate-bench shaper ...` (minimal wiring until the bench owner adds the full CLI).
#[derive(Parser, Debug)]
#[command(
    name = "spate-bench shaper",
    about = "Rate controller accuracy and cost, simulated"
)]
struct ShaperCli {
    #[command(flatten)]
    args: shaper::ShaperArgs,
}

fn main() -> anyhow::Result<()> {
    if std::env::args().nth(1).as_deref() == Some("shaper") {
        let cli = ShaperCli::parse_from(std::env::args().skip(1));
        return shaper::run(cli.args);
    }
    println!("usage: spate-bench sink|inject|dns|relay|shaper ...");
    Ok(())
}
