//! The `spate` binary: the MTA service and its management client.

use clap::{Parser, Subcommand, ValueEnum};
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

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
