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
    /// Generate a DKIM key: writes the private key PEM (mode 0600) and prints
    /// the DNS TXT record to publish.
    DkimKeygen {
        /// Signing domain (d=).
        #[arg(long)]
        domain: String,
        /// Selector (s=); the record goes at SELECTOR._domainkey.DOMAIN.
        #[arg(long)]
        selector: String,
        #[arg(long, value_enum, default_value = "rsa")]
        algorithm: DkimAlgorithmArg,
        /// RSA modulus size, 2048 or 4096 (ignored for ed25519).
        #[arg(long, default_value_t = 2048)]
        bits: u32,
        /// Key file to create (never overwritten); default SELECTOR.DOMAIN.pem.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum DkimAlgorithmArg {
    Rsa,
    Ed25519,
}

fn dkim_keygen(
    domain: &str,
    selector: &str,
    algorithm: DkimAlgorithmArg,
    bits: u32,
    out: Option<PathBuf>,
) -> ExitCode {
    let algorithm = match algorithm {
        DkimAlgorithmArg::Rsa => spate::dkim::KeyAlgorithm::RsaSha256,
        DkimAlgorithmArg::Ed25519 => spate::dkim::KeyAlgorithm::Ed25519Sha256,
    };
    let out = out.unwrap_or_else(|| PathBuf::from(format!("{selector}.{domain}.pem")));
    match spate::dkim::keygen(domain, selector, algorithm, bits, &out) {
        Ok(record) => {
            eprintln!("spate: wrote private key {}", out.display());
            println!("{record}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("spate: {error}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::DkimKeygen {
            domain,
            selector,
            algorithm,
            bits,
            out,
        } => dkim_keygen(&domain, &selector, algorithm, bits, out),
        Command::Run { .. } | Command::Check { .. } => {
            eprintln!("spate: not yet implemented");
            ExitCode::from(70)
        }
    }
}
