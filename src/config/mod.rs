//! The configuration format: parsing with spans, validation that reports
//! every error as `file:line: key: reason`, cross-checks, inheritance of
//! destination-domain settings, and the embedded default.
//!
//! The reference for operators is `docs/configuration.md`; the contract is
//! `spate.example.toml` in the shared spec. Loading never panics on any
//! input: a TOML document is parsed with toml's span-preserving `DeTable`,
//! walked key by key (`walk.rs`, `parse.rs`, `parse_domain.rs`), then
//! cross-checked (`check.rs`). What each subsystem does with the values is
//! left to it; this module only guarantees they are well-formed and
//! consistent.

mod check;
mod error;
mod files;
mod model;
mod parse;
mod parse_domain;
mod parse_service;
mod policy;
pub mod values;
mod walk;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ipnet::IpNet;

pub use error::{ConfigError, ConfigErrorKind, ConfigErrors, ConfigWarning};
pub use model::{
    AccountingConfig, AccountingFormat, AdminConfig, BounceCategory, Canonicalization,
    DKIM_DEFAULT_HEADERS, DkimConfig, DnsConfig, DomainSettings, IoDriver, ListenerConfig,
    PatternList, PatternRule, PoolConfig, QueueMode, RecordType, RuleScope, RuntimeConfig,
    SourceConfig, SpoolConfig, SpoolSync, StartTls, TargetRef, UserConfig, VmtaConfig,
};
pub use parse_domain::{NO_PATTERN_LIST, PATTERN_RULES_MAX};
pub use policy::DomainPolicy;
pub use values::{Rate, SmtpHost};

/// Pattern lists shipped with spate (defined by the shaper). A config may
/// refer to them by name, or define its own list of the same name, which
/// then replaces the built-in one.
pub const BUILTIN_PATTERN_LISTS: &[&str] = &["gmail", "yahoo", "microsoft"];

/// The embedded default configuration (see `default.toml`).
pub const EMBEDDED_DEFAULT: &str = include_str!("default.toml");

/// The name errors in the embedded default would carry.
pub const EMBEDDED_DEFAULT_NAME: &str = "<embedded default>";

/// sysexits.h EX_CONFIG: the exit status for configuration errors.
pub const EX_CONFIG: i32 = 78;

/// Largest configuration file read (a config is text; this stops a wrong
/// path to a huge file from eating memory).
pub const CONFIG_FILE_BYTES_MAX: u64 = 16 << 20;

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it came from; `None` for the embedded default.
    pub origin: Option<PathBuf>,
    /// Default EHLO name, Received: host and DSN reporting MTA
    /// (default: this machine's host name).
    pub hostname: String,
    /// Domains any client may send to, even one matching no `[[source]]`.
    pub relay_domains: Vec<String>,
    /// The vMTA or pool used when neither header, user nor source names one:
    /// top-level `default_vmta`, else the vMTA named "default", else the
    /// first vMTA in the file.
    pub default_vmta: String,
    pub spool: SpoolConfig,
    pub runtime: RuntimeConfig,
    pub admin: AdminConfig,
    pub dns: DnsConfig,
    pub listeners: Vec<ListenerConfig>,
    pub sources: Vec<SourceConfig>,
    pub users: Vec<UserConfig>,
    /// By name. Never empty: with no `[vmta]` table a vMTA "default" bound to
    /// 0.0.0.0 with `ehlo = hostname` is provided.
    pub vmtas: BTreeMap<String, VmtaConfig>,
    pub pools: BTreeMap<String, PoolConfig>,
    /// `[domain]` layers as written, by lowercase domain ("*" included).
    pub domains: BTreeMap<String, DomainSettings>,
    /// Configured pattern lists by name (built-ins are the shaper's).
    pub pattern_lists: BTreeMap<String, PatternList>,
    /// DKIM keys by signing domain (lowercase).
    pub dkim: BTreeMap<String, DkimConfig>,
    pub accounting: Vec<AccountingConfig>,
    /// Accepted but suspicious settings.
    pub warnings: Vec<ConfigWarning>,
    policies: policy::PolicyIndex,
    /// (network, index into `sources`), most specific first.
    source_index: Vec<(IpNet, usize)>,
}

impl Config {
    /// True when this is the embedded default (no `--config`).
    pub fn is_embedded_default(&self) -> bool {
        self.origin.is_none()
    }

    /// The settings in force for the queue (destination domain, vMTA); see
    /// `policy.rs` for the layer order. `destination_domain` is matched
    /// case-insensitively; an unknown vMTA gets the domain-level policy.
    pub fn domain_policy(&self, destination_domain: &str, vmta: &str) -> Arc<DomainPolicy> {
        self.policies.lookup(destination_domain, vmta)
    }

    pub fn vmta(&self, name: &str) -> Option<&VmtaConfig> {
        self.vmtas.get(name)
    }

    pub fn pool(&self, name: &str) -> Option<&PoolConfig> {
        self.pools.get(name)
    }

    /// Resolves a `default_vmta` / X-Virtual-MTA name.
    pub fn target(&self, name: &str) -> Option<TargetRef<'_>> {
        if let Some(v) = self.vmtas.get(name) {
            return Some(TargetRef::Vmta(v));
        }
        self.pools.get(name).map(TargetRef::Pool)
    }

    /// The `[[source]]` for a client address: the one with the most specific
    /// matching network. IPv4-mapped IPv6 addresses match IPv4 networks.
    pub fn source_for(&self, client: IpAddr) -> Option<&SourceConfig> {
        let client = match client {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(client, IpAddr::V4),
            v4 => v4,
        };
        self.source_index
            .iter()
            .find(|(net, _)| net.contains(&client))
            .and_then(|(_, i)| self.sources.get(*i))
    }

    pub fn user(&self, name: &str) -> Option<&UserConfig> {
        self.users.iter().find(|u| u.name == name)
    }

    /// True when `domain` is in `relay_domains` (case-insensitive).
    pub fn is_relay_domain(&self, domain: &str) -> bool {
        let d = policy::normalize_domain(domain);
        self.relay_domains.iter().any(|r| *r == d)
    }

    /// A configured pattern list (which overrides a built-in of the same name).
    pub fn pattern_list(&self, name: &str) -> Option<&PatternList> {
        self.pattern_lists.get(name)
    }

    /// Settings that differ between `self` (running) and `new` and cannot
    /// change without a restart: listener addresses, the spool's path,
    /// segment size and sync mode, `[runtime]`, and the admin address.
    /// Everything else (vMTAs, pools, domains, pattern lists, DKIM, sources,
    /// users, accounting, listener limits and certificates, DNS) is meant to
    /// apply on reload.
    pub fn restart_required(&self, new: &Config) -> Vec<&'static str> {
        let mut out = Vec::new();
        let addrs = |c: &Config| {
            let mut a: Vec<_> = c.listeners.iter().map(|l| l.address).collect();
            a.sort();
            a
        };
        if addrs(self) != addrs(new) {
            out.push("listener.address");
        }
        if self.spool.path != new.spool.path {
            out.push("spool.path");
        }
        if self.spool.segment_bytes != new.spool.segment_bytes {
            out.push("spool.segment_size");
        }
        if self.spool.sync != new.spool.sync {
            out.push("spool.sync");
        }
        if self.spool.zero_fill != new.spool.zero_fill {
            out.push("spool.zero_fill");
        }
        if self.spool.recycle_segments != new.spool.recycle_segments {
            out.push("spool.recycle_segments");
        }
        if self.runtime != new.runtime {
            out.push("runtime");
        }
        if self.admin.listen != new.admin.listen {
            out.push("admin.listen");
        }
        out
    }

    /// The one-line summary printed by `spate check` and returned by reload.
    pub fn summary(&self) -> String {
        format!(
            "{} vmtas, {} pools, {} domains, {} listeners, {} sources, {} users, {} pattern lists, {} dkim keys, {} accounting files",
            self.vmtas.len(),
            self.pools.len(),
            self.domains.len(),
            self.listeners.len(),
            self.sources.len(),
            self.users.len(),
            self.pattern_lists.len(),
            self.dkim.len(),
            self.accounting.len()
        )
    }
}

/// Loads and validates `path`, or the embedded default when `None`.
/// Every error found is returned, in file order.
pub fn load(path: Option<&Path>) -> Result<Config, ConfigErrors> {
    let Some(path) = path else {
        return load_str(EMBEDDED_DEFAULT_NAME, EMBEDDED_DEFAULT, None);
    };
    let name = path.display().to_string();
    let io_error = |reason: String| ConfigErrors {
        errors: vec![ConfigError {
            file: name.clone(),
            line: None,
            column: None,
            key: String::new(),
            kind: ConfigErrorKind::Io,
            reason,
        }],
    };
    let bytes = read_bounded(path).map_err(io_error)?;
    let text = String::from_utf8(bytes).map_err(|e| {
        io_error(format!(
            "not UTF-8 text (byte {})",
            e.utf8_error().valid_up_to()
        ))
    })?;
    load_str(&name, &text, Some(path.to_path_buf()))
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let io_error = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::NotFound => "file not found".to_string(),
        _ => format!("cannot read: {e}"),
    };
    // Look before opening: opening a FIFO would block forever.
    let meta = std::fs::metadata(path).map_err(io_error)?;
    if !meta.is_file() {
        return Err("not a regular file".to_string());
    }
    let file = std::fs::File::open(path).map_err(io_error)?;
    let mut bytes = Vec::new();
    file.take(CONFIG_FILE_BYTES_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > CONFIG_FILE_BYTES_MAX {
        return Err(format!("larger than {CONFIG_FILE_BYTES_MAX} bytes"));
    }
    Ok(bytes)
}

/// Parses and validates configuration text. `file_name` is used in errors;
/// `origin` is recorded in the result (`None` marks the embedded default).
/// Files named by keys are checked against the real filesystem.
pub fn load_str(
    file_name: &str,
    text: &str,
    origin: Option<PathBuf>,
) -> Result<Config, ConfigErrors> {
    let mut ctx = walk::Ctx::new(file_name.to_string(), text);
    let (doc, syntax) = toml::de::DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        for e in syntax {
            let span = e.span().unwrap_or(0..0);
            let reason = e.message().trim().to_string();
            ctx.error(
                &span,
                "",
                ConfigErrorKind::Syntax,
                format!("TOML syntax: {reason}"),
            );
        }
        return Err(finish_errors(ctx));
    }
    let root = doc.get_ref();
    let hostname = system_hostname();
    let mut parsed = parse::parse_document(&mut ctx, root, &hostname);
    check::cross_check(&mut ctx, &parsed, true);
    if !ctx.errors.is_empty() {
        return Err(finish_errors(ctx));
    }
    if parsed.vmtas.is_empty() {
        parsed.vmtas.insert(
            "default".to_string(),
            VmtaConfig {
                name: "default".to_string(),
                source_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                ehlo: parsed.hostname.clone(),
                dkim_also_sign: Vec::new(),
                domains: BTreeMap::new(),
            },
        );
        parsed.vmta_order.push("default".to_string());
    }
    let default_vmta = parsed
        .default_vmta
        .clone()
        .or_else(|| {
            parsed
                .vmtas
                .contains_key("default")
                .then(|| "default".to_string())
        })
        .or_else(|| parsed.vmta_order.first().cloned())
        .unwrap_or_else(|| "default".to_string());
    let policies = policy::PolicyIndex::build(&parsed.domains, &parsed.vmtas);
    let mut source_index: Vec<(IpNet, usize)> = parsed
        .sources
        .iter()
        .enumerate()
        .flat_map(|(i, s)| s.networks.iter().map(move |n| (*n, i)))
        .collect();
    source_index.sort_by_key(|(n, _)| std::cmp::Reverse(n.prefix_len()));
    Ok(Config {
        origin,
        hostname: parsed.hostname,
        relay_domains: parsed.relay_domains,
        default_vmta,
        spool: parsed.spool,
        runtime: parsed.runtime,
        admin: parsed.admin,
        dns: parsed.dns,
        listeners: parsed.listeners,
        sources: parsed.sources,
        users: parsed.users,
        vmtas: parsed.vmtas,
        pools: parsed.pools,
        domains: parsed.domains,
        pattern_lists: parsed.pattern_lists,
        dkim: parsed.dkim,
        accounting: parsed.accounting,
        warnings: ctx.warnings,
        policies,
        source_index,
    })
}

fn finish_errors(ctx: walk::Ctx) -> ConfigErrors {
    let mut errors = ctx.errors;
    errors.sort_by_key(|e| (e.line.unwrap_or(0), e.column.unwrap_or(0)));
    ConfigErrors { errors }
}

/// This machine's host name (the kernel's, as gethostname(2) returns it),
/// or "localhost" when it is unavailable or not a valid DNS name. Read from
/// procfs so this module needs no `unsafe`.
pub fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| values::is_valid_hostname(s))
        .unwrap_or_else(|| "localhost".to_string())
}

/// `spate check [--config FILE]`: prints a one-line summary and returns 0
/// when valid; prints every error (`file:line: key: reason`) to stderr and
/// returns 78 (EX_CONFIG) when not. Warnings go to stderr either way.
pub fn check_command(path: Option<&Path>) -> i32 {
    match load(path) {
        Ok(config) => {
            let file = path.map_or_else(
                || EMBEDDED_DEFAULT_NAME.to_string(),
                |p| p.display().to_string(),
            );
            for w in &config.warnings {
                match w.line {
                    Some(line) => eprintln!("{file}:{line}: warning: {}: {}", w.key, w.reason),
                    None => eprintln!("{file}: warning: {}: {}", w.key, w.reason),
                }
            }
            println!("ok: {}", config.summary());
            0
        }
        Err(errors) => {
            for e in errors.iter() {
                eprintln!("{e}");
            }
            EX_CONFIG
        }
    }
}

#[cfg(test)]
mod tests;
