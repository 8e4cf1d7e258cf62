//! The schema: reads every table of the format into the typed model,
//! reporting each bad or unknown key, and records the references (names and
//! files) that `check.rs` verifies once everything is read.
//!
//! Domain settings, pattern lists, DKIM and accounting are in
//! `parse_domain.rs`.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use toml::de::DeTable;

use super::error::ConfigErrorKind;
use super::model::{
    AccountingConfig, AdminConfig, DkimConfig, DnsConfig, DomainSettings, ListenerConfig,
    PatternList, PoolConfig, RuntimeConfig, SourceConfig, SpoolConfig, UserConfig, VmtaConfig,
};
use super::parse_domain::{parse_accounting, parse_dkim, parse_domain_table, parse_pattern_lists};
use super::parse_service::{
    default_admin, default_dns, default_runtime, default_spool, parse_admin, parse_dns,
    parse_listener, parse_runtime, parse_source, parse_spool, parse_user,
};
use super::values::{self, Rate};
use super::walk::{Ctx, Item, Table};

/// A name used somewhere, to be resolved once everything is read.
#[derive(Clone, Debug)]
pub(crate) struct Ref {
    pub name: String,
    pub path: String,
    pub span: Range<usize>,
}

/// A file or directory a key names.
#[derive(Clone, Debug)]
pub(crate) struct FileRef {
    pub file: PathBuf,
    pub path: String,
    pub span: Range<usize>,
    /// What the file must contain.
    pub kind: FileKind,
}

/// What a referenced file must be; `check.rs` verifies each at load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FileKind {
    /// A non-empty bearer token.
    AdminToken,
    /// At least one PEM certificate.
    TlsCert,
    /// One PEM private key.
    TlsKey,
    /// A PEM RSA (PKCS#1 or PKCS#8) or Ed25519 (PKCS#8) private key.
    DkimKey,
    /// A file that will be created: its directory must exist.
    InExistingDir,
}

/// Names and files to verify after parsing.
#[derive(Clone, Debug, Default)]
pub(crate) struct Refs {
    /// vMTA or pool names (default_vmta).
    pub targets: Vec<Ref>,
    /// vMTA names (pool members).
    pub vmtas: Vec<Ref>,
    pub pattern_lists: Vec<Ref>,
    pub dkim_domains: Vec<Ref>,
    pub files: Vec<FileRef>,
    /// Every name declared, valid or not, so a reference to a declared but
    /// broken entry is not reported a second time as unknown.
    pub declared_vmtas: std::collections::BTreeSet<String>,
    pub declared_pattern_lists: std::collections::BTreeSet<String>,
    pub declared_dkim: std::collections::BTreeSet<String>,
    /// Spans of pool names (for vmta/pool collisions).
    pub pool_spans: BTreeMap<String, (String, Range<usize>)>,
    /// Spans of listener addresses.
    pub listener_spans: Vec<(String, Range<usize>)>,
    /// Spans of source networks.
    pub network_spans: Vec<Vec<(String, Range<usize>)>>,
    pub user_spans: Vec<(String, Range<usize>)>,
    pub accounting_spans: Vec<(String, Range<usize>)>,
    pub admin_listen_span: Option<(String, Range<usize>)>,
}

/// Everything read from one document, before cross-checks.
#[derive(Debug)]
pub(crate) struct Parsed {
    pub hostname: String,
    pub relay_domains: Vec<String>,
    pub default_vmta: Option<String>,
    pub spool: SpoolConfig,
    pub runtime: RuntimeConfig,
    pub admin: AdminConfig,
    pub dns: DnsConfig,
    pub listeners: Vec<ListenerConfig>,
    pub sources: Vec<SourceConfig>,
    pub users: Vec<UserConfig>,
    pub vmtas: BTreeMap<String, VmtaConfig>,
    pub vmta_order: Vec<String>,
    pub pools: BTreeMap<String, PoolConfig>,
    pub domains: BTreeMap<String, DomainSettings>,
    pub pattern_lists: BTreeMap<String, PatternList>,
    pub dkim: BTreeMap<String, DkimConfig>,
    pub accounting: Vec<AccountingConfig>,
    pub refs: Refs,
}

/// Upper bound for counts such as connections (keeps arithmetic in u32 safe).
const COUNT_MAX: u64 = 1_000_000;

pub(crate) fn duration(ctx: &mut Ctx, it: &Item<'_, '_>) -> Option<Duration> {
    ctx.parse(it, values::parse_duration)
}

/// A duration that must be greater than zero.
pub(crate) fn positive_duration(ctx: &mut Ctx, it: &Item<'_, '_>) -> Option<Duration> {
    let d = duration(ctx, it)?;
    if d.is_zero() {
        ctx.error(
            &it.span(),
            &it.path,
            ConfigErrorKind::BadValue,
            "must be longer than zero",
        );
        return None;
    }
    Some(d)
}

pub(crate) fn rate(ctx: &mut Ctx, it: &Item<'_, '_>) -> Option<Rate> {
    ctx.parse(it, values::parse_rate)
}

pub(crate) fn count(ctx: &mut Ctx, it: &Item<'_, '_>) -> Option<u32> {
    ctx.uint(it, 1, COUNT_MAX)
        .and_then(|v| u32::try_from(v).ok())
}

pub(crate) fn path_buf(ctx: &mut Ctx, it: &Item<'_, '_>) -> Option<PathBuf> {
    let s = ctx.str(it)?;
    if s.is_empty() {
        ctx.error(
            &it.span(),
            &it.path,
            ConfigErrorKind::BadValue,
            "empty path",
        );
        return None;
    }
    Some(PathBuf::from(s))
}

/// A path to a file of `kind`; recorded for the file check.
pub(crate) fn file(
    ctx: &mut Ctx,
    refs: &mut Refs,
    it: &Item<'_, '_>,
    kind: FileKind,
) -> Option<PathBuf> {
    let p = path_buf(ctx, it)?;
    refs.files.push(FileRef {
        file: p.clone(),
        path: it.path.clone(),
        span: it.span(),
        kind,
    });
    Some(p)
}

pub(crate) fn name_ref(ctx: &mut Ctx, it: &Item<'_, '_>) -> Option<Ref> {
    let name = ctx.parse(it, |s| values::check_name(s).map(|()| s.to_string()))?;
    Some(Ref {
        name,
        path: it.path.clone(),
        span: it.span(),
    })
}

/// Reads the whole document.
pub(crate) fn parse_document(ctx: &mut Ctx, root: &DeTable<'_>, system_hostname: &str) -> Parsed {
    let mut refs = Refs::default();
    let mut t = Table::new(root, String::new(), 0..0);

    let hostname = t
        .opt(ctx, "hostname", |c, it| c.parse(it, values::parse_hostname))
        .unwrap_or_else(|| system_hostname.to_string());
    let relay_domains = t
        .opt(ctx, "relay_domains", |c, it| {
            c.list(it, |c, it| c.parse(it, values::parse_domain))
        })
        .unwrap_or_default();
    let default_vmta = t.opt(ctx, "default_vmta", name_ref).map(|r| {
        refs.targets.push(r.clone());
        r.name
    });

    let spool = sub_table(ctx, &mut t, "spool", |c, t| parse_spool(c, t));
    let runtime = sub_table(ctx, &mut t, "runtime", |c, t| parse_runtime(c, t));
    let admin = sub_table(ctx, &mut t, "admin", |c, t| parse_admin(c, t, &mut refs));
    let dns = sub_table(ctx, &mut t, "dns", |c, t| parse_dns(c, t));

    let listeners = array_of_tables(ctx, &mut t, "listener", |c, t| {
        parse_listener(c, t, &mut refs)
    });
    let sources = array_of_tables(ctx, &mut t, "source", |c, t| parse_source(c, t, &mut refs));
    let users = array_of_tables(ctx, &mut t, "user", |c, t| parse_user(c, t, &mut refs));

    let mut vmtas = BTreeMap::new();
    let mut vmta_order = Vec::new();
    named_tables(ctx, &mut t, "vmta", |c, name, tbl| {
        refs.declared_vmtas.insert(name.to_string());
        if let Some(v) = parse_vmta(c, tbl, name, &hostname, &mut refs) {
            vmta_order.push(name.to_string());
            vmtas.insert(name.to_string(), v);
        }
    });
    let mut pools = BTreeMap::new();
    named_tables(ctx, &mut t, "pool", |c, name, tbl| {
        refs.pool_spans
            .insert(name.to_string(), (tbl.path.clone(), tbl.span.clone()));
        if let Some(p) = parse_pool(c, tbl, name, &mut refs) {
            pools.insert(name.to_string(), p);
        }
    });
    let domains = match t.get("domain") {
        Some(it) => parse_domain_map(ctx, &it, &mut refs),
        None => BTreeMap::new(),
    };
    let pattern_lists = match t.get("smtp_pattern_list") {
        Some(it) => parse_pattern_lists(ctx, &it, &mut refs),
        None => BTreeMap::new(),
    };
    let dkim = match t.get("dkim") {
        Some(it) => parse_dkim(ctx, &it, &mut refs),
        None => BTreeMap::new(),
    };
    let accounting = array_of_tables(ctx, &mut t, "accounting", |c, t| {
        parse_accounting(c, t, &mut refs)
    });
    t.finish(ctx);

    Parsed {
        hostname,
        relay_domains,
        default_vmta,
        spool: spool.unwrap_or_else(default_spool),
        runtime: runtime.unwrap_or_else(default_runtime),
        admin: admin.unwrap_or_else(default_admin),
        dns: dns.unwrap_or_else(default_dns),
        listeners,
        sources,
        users,
        vmtas,
        vmta_order,
        pools,
        domains,
        pattern_lists,
        dkim,
        accounting,
        refs,
    }
}

/// Reads `[key]` with `f` (which must call `finish`); `None` when absent or not a table.
fn sub_table<'a, 'i, T>(
    ctx: &mut Ctx,
    parent: &mut Table<'a, 'i>,
    key: &'static str,
    f: impl FnOnce(&mut Ctx, &mut Table<'a, 'i>) -> T,
) -> Option<T> {
    let it = parent.get(key)?;
    let span = parent.key_span(key).unwrap_or(it.span());
    let mut t = ctx.table(&it, span)?;
    let v = f(ctx, &mut t);
    t.finish(ctx);
    Some(v)
}

/// Reads `[[key]]` (an array of tables), one `f` call per element.
fn array_of_tables<'a, 'i, T>(
    ctx: &mut Ctx,
    parent: &mut Table<'a, 'i>,
    key: &'static str,
    mut f: impl FnMut(&mut Ctx, &mut Table<'a, 'i>) -> Option<T>,
) -> Vec<T> {
    let Some(it) = parent.get(key) else {
        return Vec::new();
    };
    let Some(items) = ctx.array(&it) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for item in items {
        let span = item.span();
        if let Some(mut t) = ctx.table(&item, span) {
            if let Some(v) = f(ctx, &mut t) {
                out.push(v);
            }
            t.finish(ctx);
        }
    }
    out
}

/// Reads `[key.NAME]` tables in file order; names must be valid names.
fn named_tables<'a, 'i>(
    ctx: &mut Ctx,
    parent: &mut Table<'a, 'i>,
    key: &'static str,
    mut f: impl FnMut(&mut Ctx, &str, &mut Table<'a, 'i>),
) {
    let Some(it) = parent.get(key) else {
        return;
    };
    let span = parent.key_span(key).unwrap_or(it.span());
    let Some(mut outer) = ctx.table(&it, span) else {
        return;
    };
    for (k, item) in outer.entries() {
        let name = k.get_ref().as_ref();
        if let Err(reason) = values::check_name(name) {
            ctx.error(&k.span(), &item.path, ConfigErrorKind::BadValue, reason);
            continue;
        }
        if let Some(mut t) = ctx.table(&item, k.span()) {
            f(ctx, name, &mut t);
            t.finish(ctx);
        }
    }
    // Every entry was consumed above; nothing is unknown at this level.
}

fn parse_vmta(
    ctx: &mut Ctx,
    t: &mut Table<'_, '_>,
    name: &str,
    hostname: &str,
    refs: &mut Refs,
) -> Option<VmtaConfig> {
    let source_ip = t.req(ctx, "source_ip", |c, it| c.parse(it, values::parse_ip));
    let ehlo = t
        .opt(ctx, "ehlo", |c, it| c.parse(it, values::parse_hostname))
        .unwrap_or_else(|| hostname.to_string());
    let dkim_also_sign = t
        .opt(ctx, "dkim_also_sign", |c, it| {
            c.list(it, |c, it| {
                let d = c.parse(it, values::parse_domain)?;
                refs.dkim_domains.push(Ref {
                    name: d.clone(),
                    path: it.path.clone(),
                    span: it.span(),
                });
                Some(d)
            })
        })
        .unwrap_or_default();
    let domains = match t.get("domain") {
        Some(it) => parse_domain_map(ctx, &it, refs),
        None => BTreeMap::new(),
    };
    Some(VmtaConfig {
        name: name.to_string(),
        source_ip: source_ip?,
        ehlo,
        dkim_also_sign,
        domains,
    })
}

fn parse_pool(
    ctx: &mut Ctx,
    t: &mut Table<'_, '_>,
    name: &str,
    refs: &mut Refs,
) -> Option<PoolConfig> {
    let vmtas_item = t.get("vmtas");
    let vmtas: Option<Vec<String>> = match &vmtas_item {
        None => {
            let span = t.span.clone();
            ctx.error(
                &span,
                &super::walk::join(&t.path, "vmtas"),
                ConfigErrorKind::Missing,
                "required key is missing",
            );
            None
        }
        Some(it) => {
            let list = ctx.list(it, |c, it| name_ref(c, it));
            match list {
                Some(l) if l.is_empty() => {
                    ctx.error(
                        &it.span(),
                        &it.path,
                        ConfigErrorKind::BadValue,
                        "a pool needs at least one vmta",
                    );
                    None
                }
                Some(l) => {
                    let mut names: Vec<String> = Vec::new();
                    for r in l {
                        if names.contains(&r.name) {
                            ctx.error(
                                &r.span,
                                &r.path,
                                ConfigErrorKind::Duplicate,
                                format!("vmta \"{}\" is listed twice", r.name),
                            );
                        }
                        names.push(r.name.clone());
                        refs.vmtas.push(r);
                    }
                    Some(names)
                }
                None => None,
            }
        }
    };
    let weights = t.opt(ctx, "weights", |c, it| {
        let w = c.list(it, |c, it| {
            c.uint(it, 1, 1_000_000).and_then(|v| u32::try_from(v).ok())
        })?;
        Some((w, it.span(), it.path.clone()))
    });
    let vmtas = vmtas?;
    let weights = match weights {
        Some((w, span, path)) => {
            if w.len() != vmtas.len() {
                ctx.error(
                    &span,
                    &path,
                    ConfigErrorKind::BadValue,
                    format!(
                        "{} weights for {} vmtas: give one weight per vmta",
                        w.len(),
                        vmtas.len()
                    ),
                );
                return None;
            }
            w
        }
        None => vec![1; vmtas.len()],
    };
    Some(PoolConfig {
        name: name.to_string(),
        vmtas,
        weights,
    })
}

/// `[domain]` or `[vmta.X.domain]`: a map from "*" or a domain name to settings.
fn parse_domain_map(
    ctx: &mut Ctx,
    it: &Item<'_, '_>,
    refs: &mut Refs,
) -> BTreeMap<String, DomainSettings> {
    let mut out = BTreeMap::new();
    let Some(mut outer) = ctx.table(it, it.span()) else {
        return out;
    };
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for (k, item) in outer.entries() {
        let raw = k.get_ref().as_ref();
        let name = if raw == "*" {
            "*".to_string()
        } else {
            match values::parse_domain(raw) {
                Ok(d) => d,
                Err(reason) => {
                    ctx.error(&k.span(), &item.path, ConfigErrorKind::BadValue, reason);
                    continue;
                }
            }
        };
        if let Some(first) = seen.get(&name) {
            ctx.error(
                &k.span(),
                &item.path,
                ConfigErrorKind::Duplicate,
                format!("same domain as {first} (domain names are case-insensitive)"),
            );
            continue;
        }
        seen.insert(name.clone(), item.path.clone());
        if let Some(mut t) = ctx.table(&item, k.span()) {
            let settings = parse_domain_table(ctx, &mut t, refs);
            t.finish(ctx);
            out.insert(name, settings);
        }
    }
    out
}
