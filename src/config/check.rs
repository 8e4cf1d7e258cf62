//! Cross-checks run after every key has been read: names refer to things
//! that exist, names and addresses do not collide, and files named by keys
//! exist and can be read.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};

use super::BUILTIN_PATTERN_LISTS;
use super::error::ConfigErrorKind;
use super::parse::Parsed;
use super::walk::Ctx;

pub(crate) fn cross_check(ctx: &mut Ctx, p: &Parsed, check_files: bool) {
    // Names of vMTAs and pools share one namespace (default_vmta, X-Virtual-MTA).
    for (name, (path, span)) in &p.refs.pool_spans {
        if p.refs.declared_vmtas.contains(name) {
            ctx.error(
                span,
                path,
                ConfigErrorKind::Duplicate,
                format!("\"{name}\" is both a vmta and a pool; names must be distinct"),
            );
        }
    }
    for r in &p.refs.targets {
        if !p.refs.declared_vmtas.contains(&r.name) && !p.refs.pool_spans.contains_key(&r.name) {
            ctx.error(
                &r.span,
                &r.path,
                ConfigErrorKind::UnknownReference,
                format!("\"{}\" is neither a vmta nor a pool", r.name),
            );
        }
    }
    for r in &p.refs.vmtas {
        if !p.refs.declared_vmtas.contains(&r.name) {
            let extra = if p.refs.pool_spans.contains_key(&r.name) {
                " (it is a pool; pools cannot contain pools)"
            } else {
                ""
            };
            ctx.error(
                &r.span,
                &r.path,
                ConfigErrorKind::UnknownReference,
                format!("no vmta named \"{}\"{extra}", r.name),
            );
        }
    }
    for r in &p.refs.pattern_lists {
        if !p.refs.declared_pattern_lists.contains(&r.name)
            && !BUILTIN_PATTERN_LISTS.contains(&r.name.as_str())
        {
            ctx.error(
                &r.span,
                &r.path,
                ConfigErrorKind::UnknownReference,
                format!(
                    "no smtp_pattern_list named \"{}\" (built-in lists: {})",
                    r.name,
                    BUILTIN_PATTERN_LISTS.join(", ")
                ),
            );
        }
    }
    for r in &p.refs.dkim_domains {
        if !p.refs.declared_dkim.contains(&r.name) {
            ctx.error(
                &r.span,
                &r.path,
                ConfigErrorKind::UnknownReference,
                format!("no [dkim.\"{}\"] key is configured", r.name),
            );
        }
    }
    check_listeners(ctx, p);
    check_networks(ctx, p);
    check_users(ctx, p);
    check_admin(ctx, p);
    let mut acct: HashMap<&std::path::Path, &str> = HashMap::new();
    for (a, (path, span)) in p.accounting.iter().zip(&p.refs.accounting_spans) {
        if let Some(first) = acct.insert(a.path.as_path(), path) {
            ctx.error(
                span,
                path,
                ConfigErrorKind::Duplicate,
                format!("same file as {first}"),
            );
        }
    }
    if check_files {
        check_file_refs(ctx, p);
    }
}

fn overlaps(a: &SocketAddr, b: &SocketAddr) -> bool {
    if a.port() != b.port() {
        return false;
    }
    let unspecified = |ip: &IpAddr| ip.is_unspecified();
    a.ip() == b.ip()
        || (unspecified(&a.ip()) && a.is_ipv4() == b.is_ipv4())
        || (unspecified(&b.ip()) && a.is_ipv4() == b.is_ipv4())
}

fn check_listeners(ctx: &mut Ctx, p: &Parsed) {
    // listener_spans holds one entry per listener whose address parsed, in
    // order; listeners without a valid address were not built.
    let addrs: Vec<(SocketAddr, &(String, std::ops::Range<usize>))> = p
        .listeners
        .iter()
        .map(|l| l.address)
        .zip(&p.refs.listener_spans)
        .collect();
    for (i, (a, (path, span))) in addrs.iter().enumerate() {
        if let Some((b, (first, _))) = addrs[..i].iter().find(|(b, _)| overlaps(a, b)) {
            let reason = if a == b {
                format!("{a} is already used by {first}")
            } else {
                format!("{a} overlaps {b} ({first}) on the same port")
            };
            ctx.error(span, path, ConfigErrorKind::Duplicate, reason);
        }
    }
}

fn check_networks(ctx: &mut Ctx, p: &Parsed) {
    let mut seen: BTreeMap<ipnet::IpNet, String> = BTreeMap::new();
    for (source, spans) in p.sources.iter().zip(&p.refs.network_spans) {
        for (net, (path, span)) in source.networks.iter().zip(spans) {
            if let Some(first) = seen.get(net) {
                ctx.error(
                    span,
                    path,
                    ConfigErrorKind::Duplicate,
                    format!("{net} is already listed at {first}; the most specific match would be ambiguous"),
                );
            } else {
                seen.insert(*net, path.clone());
            }
        }
    }
}

fn check_users(ctx: &mut Ctx, p: &Parsed) {
    let mut seen: HashMap<&str, &str> = HashMap::new();
    // user_spans holds one (path, span) per user built, in order.
    for (user, (path, span)) in p.users.iter().zip(&p.refs.user_spans) {
        if let Some(first) = seen.insert(user.name.as_str(), path.as_str()) {
            ctx.error(
                span,
                path,
                ConfigErrorKind::Duplicate,
                format!("user \"{}\" is already defined at {first}", user.name),
            );
        }
    }
}

fn check_admin(ctx: &mut Ctx, p: &Parsed) {
    let (path, span) = p
        .refs
        .admin_listen_span
        .clone()
        .unwrap_or_else(|| ("admin.listen".to_string(), 0..0));
    // Listeners bind with SO_REUSEPORT: an admin API on a listener's port
    // could share it silently, HTTP and SMTP clients landing on either.
    let listeners = p.listeners.iter().zip(&p.refs.listener_spans);
    for (l, (first, _)) in listeners {
        if overlaps(&p.admin.listen, &l.address) {
            ctx.error(
                &span,
                &path,
                ConfigErrorKind::Duplicate,
                format!(
                    "{} is also the SMTP listener address {} ({first})",
                    p.admin.listen, l.address
                ),
            );
        }
    }
    if p.admin.token_file.is_none() && !p.admin.listen.ip().is_loopback() {
        ctx.error(
            &span,
            &path,
            ConfigErrorKind::BadValue,
            format!(
                "{} is not a loopback address: set admin.token_file so the API is not open to the network",
                p.admin.listen
            ),
        );
    }
}

fn check_file_refs(ctx: &mut Ctx, p: &Parsed) {
    for f in &p.refs.files {
        super::files::check_file(ctx, f);
    }
}
