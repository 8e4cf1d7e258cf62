//! `spate-bench`: load generator, scriptable sink, test DNS server and benchmark scenarios.

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "spate-bench",
    version,
    about = "Load generator, SMTP sink, test DNS server and benchmarks for spate"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// SMTP sink replying per a script, counting what it accepts.
    Sink(spate_bench::sink::SinkArgs),
    /// SMTP injector: N messages over C connections.
    Inject(spate_bench::inject::InjectArgs),
    /// Authoritative test DNS server (UDP and TCP) from a zone file.
    Dns(spate_bench::dns::DnsArgs),
    /// Plain TCP forwarder (a relay's least work): `relay --compare forward`.
    Forward(spate_bench::forward::ForwardArgs),
    /// Scenario runner: dns + sink + spate (and Postfix / raw) + injector.
    Relay(spate_bench::relay::RelayArgs),
    /// Concurrent outbound connections one spate holds open, with probes.
    Conns(spate_bench::conns::ConnsArgs),
    /// Resident memory per queued (deferred) recipient.
    Memory(spate_bench::memory::MemoryArgs),
    /// Spool append throughput (group commit vs fsync per message) and recovery time.
    Spool(spate_bench::spool::SpoolArgs),
    /// Rate controller accuracy and cost over many simulated queues.
    Shaper(spate_bench::shaper::ShaperArgs),
    /// DKIM signatures per second per core (RSA-2048, Ed25519; 2 KB and 100 KB).
    Dkim(spate_bench::dkim::DkimArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Sinks and injectors hold thousands of sockets: use the hard limit.
    let _ = spate_bench::probe::raise_own_nofile();
    match cli.command {
        Command::Sink(args) => spate_bench::sink::run(args),
        Command::Inject(args) => spate_bench::inject::run(args),
        Command::Dns(args) => spate_bench::dns::run(args),
        Command::Forward(args) => spate_bench::forward::run(args),
        Command::Relay(args) => spate_bench::relay::run(args),
        Command::Conns(args) => spate_bench::conns::run(args),
        Command::Memory(args) => spate_bench::memory::run(args),
        Command::Spool(args) => spate_bench::spool::run(args),
        Command::Shaper(args) => spate_bench::shaper::run(args),
        Command::Dkim(args) => spate_bench::dkim::run(args),
    }
}
