//! The schema, second half: destination-domain settings, SMTP pattern
//! lists, DKIM keys and accounting files.

use std::collections::BTreeMap;
use std::time::Duration;

use super::error::ConfigErrorKind;
use super::model::{
    AccountingConfig, AccountingFormat, BounceCategory, Canonicalization, DKIM_DEFAULT_HEADERS,
    DkimConfig, DomainSettings, PatternList, PatternRule, QueueMode, RecordType, RuleScope,
    StartTls,
};
use super::parse::{
    FileKind, FileRef, Ref, Refs, count, duration, file, path_buf, positive_duration, rate,
};
use super::values;
use super::walk::{Ctx, Item, Table};

/// Rules in one pattern list: matching is linear, so keep it bounded.
pub const PATTERN_RULES_MAX: usize = 1000;

/// The pattern-list name that means "no list".
pub const NO_PATTERN_LIST: &str = "none";

/// Reads one `[domain."D"]` / `[vmta.X.domain."D"]` table.
pub(crate) fn parse_domain_table(
    ctx: &mut Ctx,
    t: &mut Table<'_, '_>,
    refs: &mut Refs,
) -> DomainSettings {
    let retry_after = t.opt(ctx, "retry_after", |c, it| {
        let list = c.list(it, positive_duration)?;
        if list.is_empty() {
            c.error(
                &it.span(),
                &it.path,
                ConfigErrorKind::BadValue,
                "needs at least one delay",
            );
            return None;
        }
        Some(list)
    });
    let smtp_pattern_list = t.opt(ctx, "smtp_pattern_list", |c, it| {
        let name = c.str(it)?;
        if name == NO_PATTERN_LIST {
            return Some(None);
        }
        if let Err(reason) = values::check_name(name) {
            c.error(&it.span(), &it.path, ConfigErrorKind::BadValue, reason);
            return None;
        }
        refs.pattern_lists.push(Ref {
            name: name.to_string(),
            path: it.path.clone(),
            span: it.span(),
        });
        Some(Some(name.to_string()))
    });
    let smtp_hosts = t.opt(ctx, "smtp_hosts", |c, it| {
        let list = c.list(it, |c, it| c.parse(it, values::parse_smtp_host))?;
        if list.is_empty() {
            c.error(
                &it.span(),
                &it.path,
                ConfigErrorKind::BadValue,
                "empty list: remove the key to use MX lookups",
            );
            return None;
        }
        Some(list)
    });
    DomainSettings {
        max_smtp_out: t.opt(ctx, "max_smtp_out", count),
        max_msg_per_connection: t.opt(ctx, "max_msg_per_connection", count),
        max_rcpt_per_transaction: t.opt(ctx, "max_rcpt_per_transaction", count),
        max_msg_rate: t.opt(ctx, "max_msg_rate", rate),
        max_connect_rate: t.opt(ctx, "max_connect_rate", rate),
        retry_after,
        bounce_after: t.opt(ctx, "bounce_after", positive_duration),
        dsn_delay_after: t.opt(ctx, "dsn_delay_after", duration_or_never),
        starttls: t.opt(ctx, "starttls", |c, it| {
            c.choice(
                it,
                &[
                    ("off", StartTls::Off),
                    ("opportunistic", StartTls::Opportunistic),
                    ("required", StartTls::Required),
                    ("verify", StartTls::Verify),
                ],
            )
        }),
        dkim_sign: t.opt(ctx, "dkim_sign", |c, it| c.bool(it)),
        smtp_pattern_list,
        connect_timeout: t.opt(ctx, "connect_timeout", positive_duration),
        greeting_timeout: t.opt(ctx, "greeting_timeout", positive_duration),
        command_timeout: t.opt(ctx, "command_timeout", positive_duration),
        data_timeout: t.opt(ctx, "data_timeout", positive_duration),
        idle_timeout: t.opt(ctx, "idle_timeout", duration),
        backoff_max_smtp_out: t.opt(ctx, "backoff_max_smtp_out", count),
        backoff_max_msg_rate: t.opt(ctx, "backoff_max_msg_rate", rate),
        backoff_retry_after: t.opt(ctx, "backoff_retry_after", positive_duration),
        backoff_to_normal_after: t.opt(ctx, "backoff_to_normal_after", duration_or_never),
        backoff_to_normal_after_delivery: t.opt(
            ctx,
            "backoff_to_normal_after_delivery",
            |c, it| c.bool(it),
        ),
        backoff_ramp_up: t.opt(ctx, "backoff_ramp_up", duration),
        mx_rollup: t.opt(ctx, "mx_rollup", |c, it| c.bool(it)),
        use_chunking: t.opt(ctx, "use_chunking", |c, it| c.bool(it)),
        max_transactions_in_flight: t.opt(ctx, "max_transactions_in_flight", count),
        smtp_hosts,
        tls_ca_file: t.opt(ctx, "tls_ca_file", |c, it| {
            file(c, refs, it, FileKind::TlsCert)
        }),
    }
}

fn duration_or_never(ctx: &mut Ctx, it: &Item<'_, '_>) -> Option<Option<Duration>> {
    ctx.parse(it, values::parse_duration_or_never)
}

/// `[smtp_pattern_list.NAME]` tables.
pub(crate) fn parse_pattern_lists(
    ctx: &mut Ctx,
    it: &Item<'_, '_>,
    refs: &mut Refs,
) -> BTreeMap<String, PatternList> {
    let mut out = BTreeMap::new();
    let Some(mut outer) = ctx.table(it, it.span()) else {
        return out;
    };
    for (k, item) in outer.entries() {
        let name = k.get_ref().as_ref();
        if let Err(reason) = values::check_name(name) {
            ctx.error(&k.span(), &item.path, ConfigErrorKind::BadValue, reason);
            continue;
        }
        if name == NO_PATTERN_LIST {
            ctx.error(
                &k.span(),
                &item.path,
                ConfigErrorKind::BadValue,
                "\"none\" is reserved (smtp_pattern_list = \"none\" means no list)",
            );
            continue;
        }
        refs.declared_pattern_lists.insert(name.to_string());
        let Some(mut t) = ctx.table(&item, k.span()) else {
            continue;
        };
        let rules = t.req(ctx, "rules", |c, it| {
            let items = c.array(it)?;
            if items.len() > PATTERN_RULES_MAX {
                c.error(
                    &it.span(),
                    &it.path,
                    ConfigErrorKind::BadValue,
                    format!("{} rules; at most {PATTERN_RULES_MAX}", items.len()),
                );
                return None;
            }
            let mut rules = Vec::new();
            let mut ok = true;
            for item in &items {
                match parse_rule(c, item) {
                    Some(r) => rules.push(r),
                    None => ok = false,
                }
            }
            ok.then_some(rules)
        });
        t.finish(ctx);
        if let Some(rules) = rules {
            out.insert(
                name.to_string(),
                PatternList {
                    name: name.to_string(),
                    rules,
                },
            );
        }
    }
    out
}

fn parse_rule(ctx: &mut Ctx, item: &Item<'_, '_>) -> Option<PatternRule> {
    let mut t = ctx.table(item, item.span())?;
    let reply = t.req(ctx, "reply", |c, it| {
        let s = c.str(it)?;
        if s.is_empty() {
            c.error(
                &it.span(),
                &it.path,
                ConfigErrorKind::BadValue,
                "empty pattern matches every reply",
            );
            return None;
        }
        c.parse(it, values::parse_pattern)
    });
    let mode = t.opt(ctx, "mode", |c, it| {
        c.choice(
            it,
            &[
                ("backoff", QueueMode::Backoff),
                ("normal", QueueMode::Normal),
            ],
        )
    });
    let bounce_category = t.opt(ctx, "bounce_category", |c, it| {
        c.parse(it, |s| {
            // Exact names only; `admin-deleted` is spate's own (set by
            // `spate ctl delete`), never a pattern-list verdict.
            let configurable = || {
                BounceCategory::ALL
                    .into_iter()
                    .filter(|c| *c != BounceCategory::AdminDeleted)
            };
            configurable().find(|c| c.as_str() == s).ok_or_else(|| {
                let names: Vec<&str> = configurable().map(BounceCategory::as_str).collect();
                format!(
                    "unknown bounce category \"{s}\"; one of {}",
                    names.join(", ")
                )
            })
        })
    });
    let disable_source_ip = t
        .opt(ctx, "disable_source_ip", |c, it| c.bool(it))
        .unwrap_or(false);
    let reenable_after = t.opt(ctx, "reenable_after", positive_duration);
    if reenable_after.is_some() && !disable_source_ip {
        if let Some(span) = t.key_span("reenable_after") {
            ctx.error(
                &span,
                &super::walk::join(&t.path, "reenable_after"),
                ConfigErrorKind::BadValue,
                "only meaningful with disable_source_ip = true",
            );
        }
    }
    let defer_queue = t
        .opt(ctx, "defer_queue", |c, it| c.bool(it))
        .unwrap_or(false);
    let scope = t
        .opt(ctx, "scope", |c, it| {
            c.choice(
                it,
                &[
                    ("queue", RuleScope::Queue),
                    ("recipient", RuleScope::Recipient),
                ],
            )
        })
        .unwrap_or(RuleScope::Queue);
    if scope == RuleScope::Recipient && (mode.is_some() || disable_source_ip || defer_queue) {
        let span = t.key_span("scope").unwrap_or(t.span.clone());
        ctx.error(
            &span,
            &super::walk::join(&t.path, "scope"),
            ConfigErrorKind::BadValue,
            "a recipient-scoped rule cannot change the queue (mode, disable_source_ip, defer_queue)",
        );
    }
    t.finish(ctx);
    Some(PatternRule {
        reply: reply?,
        mode,
        bounce_category,
        disable_source_ip,
        reenable_after: if disable_source_ip {
            Some(reenable_after.unwrap_or(Duration::from_secs(3600)))
        } else {
            None
        },
        defer_queue,
        scope,
    })
}

/// `[dkim."domain"]` tables.
pub(crate) fn parse_dkim(
    ctx: &mut Ctx,
    it: &Item<'_, '_>,
    refs: &mut Refs,
) -> BTreeMap<String, DkimConfig> {
    let mut out = BTreeMap::new();
    let Some(mut outer) = ctx.table(it, it.span()) else {
        return out;
    };
    for (k, item) in outer.entries() {
        let domain = match values::parse_domain(k.get_ref()) {
            Ok(d) => d,
            Err(reason) => {
                ctx.error(&k.span(), &item.path, ConfigErrorKind::BadValue, reason);
                continue;
            }
        };
        if !refs.declared_dkim.insert(domain.clone()) {
            ctx.error(
                &k.span(),
                &item.path,
                ConfigErrorKind::Duplicate,
                "this signing domain is configured twice",
            );
            continue;
        }
        let Some(mut t) = ctx.table(&item, k.span()) else {
            continue;
        };
        let selector = t.req(ctx, "selector", |c, it| {
            c.parse(it, |s| {
                if values::is_valid_hostname(s) && !s.ends_with('.') {
                    Ok(s.to_string())
                } else {
                    Err(format!("bad selector \"{s}\": DNS labels only"))
                }
            })
        });
        let key = t.req(ctx, "key", |c, it| file(c, refs, it, FileKind::DkimKey));
        let headers = t
            .opt(ctx, "headers", |c, it| {
                let list = c.list(it, |c, it| {
                    c.parse(it, |s| {
                        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
                            Ok(s.to_string())
                        } else {
                            Err(format!("bad header name \"{s}\""))
                        }
                    })
                })?;
                if list.is_empty() {
                    c.error(
                        &it.span(),
                        &it.path,
                        ConfigErrorKind::BadValue,
                        "empty header list (From is always signed; list it)",
                    );
                    return None;
                }
                Some(list)
            })
            .unwrap_or_else(|| DKIM_DEFAULT_HEADERS.iter().map(|s| s.to_string()).collect());
        let canon = t
            .opt(ctx, "canonicalization", |c, it| {
                c.parse(it, parse_canonicalization)
            })
            .unwrap_or((Canonicalization::Relaxed, Canonicalization::Relaxed));
        let expire = t.opt(ctx, "expire", positive_duration);
        t.finish(ctx);
        if let (Some(selector), Some(key)) = (selector, key) {
            out.insert(
                domain.clone(),
                DkimConfig {
                    domain,
                    selector,
                    key,
                    headers,
                    header_canonicalization: canon.0,
                    body_canonicalization: canon.1,
                    expire,
                },
            );
        }
    }
    out
}

/// "relaxed/relaxed", "relaxed/simple", "simple/relaxed", "simple/simple";
/// a single word means header canonicalisation with simple body (RFC 6376 §3.5).
fn parse_canonicalization(s: &str) -> Result<(Canonicalization, Canonicalization), String> {
    let one = |w: &str| match w {
        "relaxed" => Ok(Canonicalization::Relaxed),
        "simple" => Ok(Canonicalization::Simple),
        _ => Err(format!(
            "bad canonicalization \"{s}\": use \"relaxed/relaxed\", \"relaxed/simple\", \"simple/relaxed\" or \"simple/simple\""
        )),
    };
    match s.split_once('/') {
        Some((h, b)) => Ok((one(h)?, one(b)?)),
        None => Ok((one(s)?, Canonicalization::Simple)),
    }
}

/// One `[[accounting]]` table.
pub(crate) fn parse_accounting(
    ctx: &mut Ctx,
    t: &mut Table<'_, '_>,
    refs: &mut Refs,
) -> Option<AccountingConfig> {
    let path = t.req(ctx, "path", |c, it| {
        let p = path_buf(c, it)?;
        refs.files.push(FileRef {
            file: p.clone(),
            path: it.path.clone(),
            span: it.span(),
            kind: FileKind::InExistingDir,
        });
        refs.accounting_spans.push((it.path.clone(), it.span()));
        Some(p)
    });
    let format = t
        .opt(ctx, "format", |c, it| {
            c.choice(
                it,
                &[
                    ("csv", AccountingFormat::Csv),
                    ("jsonl", AccountingFormat::Jsonl),
                ],
            )
        })
        .unwrap_or(AccountingFormat::Csv);
    let records = t
        .opt(ctx, "records", |c, it| {
            let items = c.array(it)?;
            let mut out: Vec<RecordType> = Vec::new();
            let mut ok = true;
            for item in &items {
                let choice = c.choice(
                    item,
                    &[
                        ("r", RecordType::Received),
                        ("d", RecordType::Delivered),
                        ("b", RecordType::Bounced),
                        ("t", RecordType::TransientFailure),
                    ],
                );
                match choice {
                    Some(r) if out.contains(&r) => {
                        c.error(
                            &item.span(),
                            &item.path,
                            ConfigErrorKind::Duplicate,
                            "record type listed twice",
                        );
                        ok = false;
                    }
                    Some(r) => out.push(r),
                    None => ok = false,
                }
            }
            if ok && out.is_empty() {
                c.error(
                    &it.span(),
                    &it.path,
                    ConfigErrorKind::BadValue,
                    "no record types: remove the [[accounting]] entry instead",
                );
                return None;
            }
            ok.then_some(out)
        })
        .unwrap_or_else(|| {
            vec![
                RecordType::Delivered,
                RecordType::Bounced,
                RecordType::TransientFailure,
                RecordType::Received,
            ]
        });
    let rotate = t
        .opt(ctx, "rotate", |c, it| {
            let r = c.parse(it, values::parse_duration_or_never)?;
            if r.is_some_and(|d| d < Duration::from_secs(60)) {
                c.error(
                    &it.span(),
                    &it.path,
                    ConfigErrorKind::BadValue,
                    "rotate at most once a minute",
                );
                return None;
            }
            Some(r)
        })
        .unwrap_or(Some(Duration::from_secs(86_400)));
    Some(AccountingConfig {
        path: path?,
        format,
        records,
        rotate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonicalization() {
        use Canonicalization::*;
        assert_eq!(
            parse_canonicalization("relaxed/relaxed"),
            Ok((Relaxed, Relaxed))
        );
        assert_eq!(
            parse_canonicalization("simple/relaxed"),
            Ok((Simple, Relaxed))
        );
        assert_eq!(parse_canonicalization("relaxed"), Ok((Relaxed, Simple)));
        assert!(parse_canonicalization("relaxed/strict").is_err());
        assert!(parse_canonicalization("").is_err());
    }
}
