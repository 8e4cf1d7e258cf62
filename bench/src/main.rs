//! `spate-bench`: load generator, scriptable sink, test DNS server and benchmark scenarios.

mod dkim;

fn main() -> anyhow::Result<()> {
    // `spate-bench dkim ...`: DKIM signing rates (see dkim.rs).
    if std::env::args().nth(1).as_deref() == Some("dkim") {
        #[derive(clap::Parser)]
        #[command(name = "spate-bench dkim")]
        struct DkimCli {
            #[command(flatten)]
            args: dkim::DkimArgs,
        }
        let cli = <DkimCli as clap::Parser>::parse_from(std::env::args().skip(1));
        return dkim::run(cli.args);
    }
    println!("usage: spate-bench sink|inject|dns|relay|dkim ...");
    Ok(())
}
