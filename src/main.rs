//! The `spate` binary: the MTA service and its management client.

use clap::{Parser, Subcommand, ValueEnum};
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc instead of glibc malloc: every shard allocates and frees small
/// buffers per message and per command, where glibc's malloc and free took
/// about 6% of the injection CPU.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "spate",
    version,
    about = "A durable, thread-per-core mail transfer agent"
)]
struct Cli {
    /// Log format on stderr (level from RUST_LOG, default info).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
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
    /// Read a password from stdin and print an argon2id hash for `[[user]] password_hash`.
    HashPassword,
    /// Management client for the admin API.
    Ctl(spate::admin::ctl::CtlArgs),
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

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
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
        Command::Check { config } => {
            let code = spate::config::check_command(config.as_deref());
            ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
        Command::Run { config } => {
            init_logging(cli.log_format);
            let config = match spate::config::load(config.as_deref()) {
                Ok(c) => c,
                Err(errors) => {
                    eprint!("{errors}");
                    if !errors.to_string().ends_with('\n') {
                        eprintln!();
                    }
                    return ExitCode::from(spate::config::EX_CONFIG as u8);
                }
            };
            let code = spate::runtime::server::run(config);
            ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
        Command::Ctl(args) => {
            let code = spate::admin::ctl::run(args);
            ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
        Command::DkimKeygen {
            domain,
            selector,
            algorithm,
            bits,
            out,
        } => dkim_keygen(&domain, &selector, algorithm, bits, out),
        Command::HashPassword => {
            let mut input = String::new();
            if let Err(e) = std::io::stdin().read_to_string(&mut input) {
                eprintln!("spate: cannot read the password from stdin: {e}");
                return ExitCode::from(74);
            }
            let password = input.trim_end_matches(['\r', '\n']);
            if password.is_empty() {
                eprintln!("spate: empty password");
                return ExitCode::from(65);
            }
            match spate::session::auth::hash_password(password) {
                Ok(phc) => {
                    println!("{phc}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("spate: cannot hash: {e}");
                    ExitCode::from(70)
                }
            }
        }
    }
}
