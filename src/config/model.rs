//! The typed configuration: one struct per table of the format, every value
//! already parsed (durations, rates, sizes, networks, compiled regexes).
//!
//! Built by `parse.rs`, checked by `check.rs`; the per-queue view that
//! merges `[domain]` layers is in `policy.rs`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use regex::Regex;

use super::values::{Rate, SmtpHost};

/// `[spool]`
#[derive(Clone, Debug, PartialEq)]
pub struct SpoolConfig {
    /// Directory holding the segment files. Default "./spate-spool".
    pub path: PathBuf,
    /// Size of one segment file, in bytes. Default 64 MiB.
    pub segment_bytes: u64,
    /// Durability mode.
    pub sync: SpoolSync,
    /// A sealed segment whose live (undelivered) bytes fall below this
    /// fraction of its size is compacted: live records are copied forward
    /// and the file is reclaimed. 0.0..=1.0, default 0.25.
    pub compact_live_ratio: f64,
    /// Whether segments made ahead of need are written full of zeros:
    /// "auto" (default), "always" or "never".
    pub zero_fill: crate::spool::ZeroFill,
    /// Reuse the files of finished segments for new ones (default true).
    pub recycle_segments: bool,
}

/// `[spool] sync`
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpoolSync {
    /// 250 only after the message is fdatasync'ed (batched across messages).
    Group,
    /// No fsync at all: benchmarks only (a warning at start).
    None,
}

/// `[runtime]`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// Number of shard threads; `None` means "auto" (one per available core).
    pub shards: Option<usize>,
    /// Pin each shard thread to one core. Default true.
    pub pin_cores: bool,
    /// I/O driver choice.
    pub io_driver: IoDriver,
    /// Capacity, in messages, of each cross-shard handoff queue. When full,
    /// the receiving side slows the SMTP transaction. Default 4096.
    pub handoff_queue_capacity: usize,
    /// How long SIGTERM waits for in-flight transactions before aborting
    /// them. Default 25 s (the contract is exit within 30 s).
    pub shutdown_timeout: Duration,
}

/// `[runtime] io_driver`
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoDriver {
    /// io_uring when the kernel allows it, else the polling fallback with a warning.
    Auto,
    /// io_uring or refuse to start.
    IoUring,
    /// Always the polling (epoll) driver.
    Polling,
}

/// `[admin]`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminConfig {
    /// Address of the HTTP admin API. Default 127.0.0.1:8025.
    pub listen: SocketAddr,
    /// File holding the bearer token. `None`: no token (accepted only when
    /// `listen` is a loopback address).
    pub token_file: Option<PathBuf>,
}

/// `[dns]`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsConfig {
    /// Empty: the system resolver configuration (/etc/resolv.conf).
    pub nameservers: Vec<SocketAddr>,
    /// Per-query timeout. Default 5 s.
    pub timeout: Duration,
    /// Retries after the first attempt. Default 2.
    pub attempts: u32,
    /// Answers cached (each up to its TTL). Default 100000.
    pub cache_size: usize,
}

/// `[[listener]]`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerConfig {
    pub address: SocketAddr,
    /// Default 10000.
    pub max_connections: u32,
    /// Default 200; 421 4.7.0 at greeting beyond it.
    pub max_connections_per_ip: u32,
    /// Advertised with SIZE and enforced while receiving. Default 50 MiB.
    pub max_message_bytes: u64,
    /// 452 4.5.3 beyond it. Default 1000.
    pub max_rcpt_per_message: u32,
    /// Certificate chain (PEM); with `tls_key`, STARTTLS is offered.
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// Refuse MAIL before STARTTLS (530 5.7.0). Default false.
    pub require_tls: bool,
    /// Refuse MAIL before AUTH (530 5.7.0). Default false.
    pub require_auth: bool,
    /// Offer AUTH on a plaintext connection. Default false (AUTH only after STARTTLS).
    pub allow_auth_without_tls: bool,
    /// Close the session (421 4.7.0) after this many error replies. Default 20.
    pub max_errors_per_session: u32,
    /// Failed AUTH attempts allowed per client IP. Default "10/m".
    pub max_auth_failure_rate: Rate,
    /// Idle time allowed between commands. Default 5 min.
    pub command_timeout: Duration,
    /// Time allowed for receiving the message data. Default 10 min.
    pub data_timeout: Duration,
}

impl ListenerConfig {
    /// True when both `tls_cert` and `tls_key` are set (STARTTLS is offered).
    pub fn tls(&self) -> bool {
        self.tls_cert.is_some() && self.tls_key.is_some()
    }
}

/// `[[source]]`: who may inject, matched by client address (most specific wins).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceConfig {
    pub networks: Vec<IpNet>,
    /// Default false.
    pub allow_relaying: bool,
    /// Honour and strip X-Virtual-MTA. Default false.
    pub process_x_virtual_mta: bool,
    /// Honour and strip X-Job. Default false.
    pub process_x_job: bool,
    /// A vMTA or pool name.
    pub default_vmta: Option<String>,
}

/// `[[user]]`: an SMTP AUTH identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserConfig {
    pub name: String,
    /// argon2id PHC string (validated as such at load).
    pub password_hash: String,
    /// A vMTA or pool name.
    pub default_vmta: Option<String>,
}

/// `[vmta.NAME]`: a virtual MTA (one source IP, one EHLO name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmtaConfig {
    pub name: String,
    /// Outbound sockets bind here; 0.0.0.0 / :: means "any".
    pub source_ip: IpAddr,
    /// EHLO name; defaults to the top-level `hostname`.
    pub ehlo: String,
    /// DKIM domains signing in addition to the From domain (each has a
    /// `[dkim."d"]` entry), e.g. an ESP's domain.
    pub dkim_also_sign: Vec<String>,
    /// `[vmta.NAME.domain."D"]` overrides by lowercase domain ("*" allowed).
    pub domains: BTreeMap<String, DomainSettings>,
}

/// `[pool.NAME]`: weighted rotation over vMTAs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    pub name: String,
    pub vmtas: Vec<String>,
    /// Same length as `vmtas`; all 1 when not configured.
    pub weights: Vec<u32>,
}

/// Where a `default_vmta` or X-Virtual-MTA name points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetRef<'a> {
    Vmta(&'a VmtaConfig),
    Pool(&'a PoolConfig),
}

/// `starttls` for outbound connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartTls {
    Off,
    /// Use it when offered; plaintext when not offered.
    Opportunistic,
    /// Defer when not offered or when the handshake fails.
    Required,
    /// As `Required`, and the server's certificate must chain to a trusted
    /// root (`tls_ca_file`, or the system's) and name the host connected to
    /// (the MX name, or the `smtp_hosts` entry).
    Verify,
}

/// One layer of domain settings as written (`[domain."D"]`,
/// `[vmta.X.domain."D"]`): `None` means "not set here, inherit".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DomainSettings {
    pub max_smtp_out: Option<u32>,
    pub max_msg_per_connection: Option<u32>,
    pub max_rcpt_per_transaction: Option<u32>,
    pub max_msg_rate: Option<Rate>,
    pub max_connect_rate: Option<Rate>,
    pub retry_after: Option<Vec<Duration>>,
    pub bounce_after: Option<Duration>,
    pub dsn_delay_after: Option<Option<Duration>>,
    pub starttls: Option<StartTls>,
    pub dkim_sign: Option<bool>,
    pub smtp_pattern_list: Option<Option<String>>,
    pub connect_timeout: Option<Duration>,
    pub greeting_timeout: Option<Duration>,
    pub command_timeout: Option<Duration>,
    pub data_timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub backoff_max_smtp_out: Option<u32>,
    pub backoff_max_msg_rate: Option<Rate>,
    pub backoff_retry_after: Option<Duration>,
    pub backoff_to_normal_after: Option<Option<Duration>>,
    pub backoff_to_normal_after_delivery: Option<bool>,
    pub backoff_ramp_up: Option<Duration>,
    pub mx_rollup: Option<bool>,
    pub use_chunking: Option<bool>,
    pub max_transactions_in_flight: Option<u32>,
    pub smtp_hosts: Option<Vec<SmtpHost>>,
    pub tls_ca_file: Option<PathBuf>,
}

/// `[smtp_pattern_list.NAME]`
#[derive(Clone, Debug)]
pub struct PatternList {
    pub name: String,
    /// Ordered; first match wins.
    pub rules: Vec<PatternRule>,
}

/// One rule of a pattern list.
#[derive(Clone, Debug)]
pub struct PatternRule {
    /// Case-insensitive, matched against the whole reply (code, enhanced code, text).
    pub reply: Regex,
    /// Mode change of the queue, if any.
    pub mode: Option<QueueMode>,
    /// Bounce category for a 5xx reply matching this rule.
    pub bounce_category: Option<BounceCategory>,
    /// Stop this vMTA sending to this destination (hard block).
    pub disable_source_ip: bool,
    /// With `disable_source_ip`: re-enable after this long. Default 1 h.
    pub reenable_after: Option<Duration>,
    /// Stop attempting the queue until its next retry time.
    pub defer_queue: bool,
    /// Whether the rule acts on the queue or only on the recipient.
    pub scope: RuleScope,
}

impl PartialEq for PatternRule {
    fn eq(&self, other: &Self) -> bool {
        self.reply.as_str() == other.reply.as_str()
            && self.mode == other.mode
            && self.bounce_category == other.bounce_category
            && self.disable_source_ip == other.disable_source_ip
            && self.reenable_after == other.reenable_after
            && self.defer_queue == other.defer_queue
            && self.scope == other.scope
    }
}

/// What a matching rule's actions apply to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleScope {
    /// The whole queue (domain/vmta). Default.
    Queue,
    /// Only the recipient the reply was for (e.g. Gmail 450 4.2.1 per-user
    /// rate): never changes the queue's mode.
    Recipient,
}

/// A queue's mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueMode {
    Normal,
    Backoff,
}

/// PowerMTA's bounce categories: the one vocabulary lives in
/// `delivery::bounce`. `admin-deleted` is not configurable; `parse_domain`
/// refuses it.
pub use crate::delivery::bounce::BounceCategory;

/// DKIM canonicalisation (header/body).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Canonicalization {
    Simple,
    Relaxed,
}

/// `[dkim."domain"]`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DkimConfig {
    /// Signing domain (d=), lowercase.
    pub domain: String,
    pub selector: String,
    /// PEM private key, RSA or Ed25519 (checked readable at load; parsed by `dkim`).
    pub key: PathBuf,
    /// Headers to sign; From is always signed and over-signed by the signer.
    pub headers: Vec<String>,
    /// Header canonicalisation. Default relaxed.
    pub header_canonicalization: Canonicalization,
    /// Body canonicalisation. Default relaxed.
    pub body_canonicalization: Canonicalization,
    /// `x=` is `t=` plus this, when set.
    pub expire: Option<Duration>,
}

/// Default DKIM header list.
pub const DKIM_DEFAULT_HEADERS: &[&str] = &[
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "Reply-To",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
];

/// `[[accounting]]`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountingConfig {
    pub path: PathBuf,
    pub format: AccountingFormat,
    /// Record types written; default all four.
    pub records: Vec<RecordType>,
    /// Rotation interval; `None` ("never") keeps one file.
    pub rotate: Option<Duration>,
}

/// `[[accounting]] format`
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccountingFormat {
    Csv,
    Jsonl,
}

/// Accounting record types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordType {
    /// `r`
    Received,
    /// `d`
    Delivered,
    /// `b`
    Bounced,
    /// `t`
    TransientFailure,
}

impl RecordType {
    /// The one-letter code written in the `type` field.
    pub fn code(&self) -> &'static str {
        match self {
            RecordType::Received => "r",
            RecordType::Delivered => "d",
            RecordType::Bounced => "b",
            RecordType::TransientFailure => "t",
        }
    }
}
