//! The schema for the service tables: `[spool]`, `[runtime]`, `[admin]`,
//! `[dns]`, and the inbound side: `[[listener]]`, `[[source]]`, `[[user]]`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::error::ConfigErrorKind;
use super::model::{
    AdminConfig, DnsConfig, IoDriver, ListenerConfig, RuntimeConfig, SourceConfig, SpoolConfig,
    SpoolSync, UserConfig,
};
use super::parse::{FileKind, Refs, count, file, name_ref, path_buf, positive_duration, rate};
use super::values::{self, Rate};
use super::walk::{Ctx, Table};
use crate::spool::ZeroFill;

pub(crate) fn default_spool() -> SpoolConfig {
    SpoolConfig {
        path: PathBuf::from("./spate-spool"),
        segment_bytes: 64 << 20,
        sync: SpoolSync::Group,
        compact_live_ratio: 0.25,
        zero_fill: ZeroFill::Auto,
        recycle_segments: true,
    }
}

pub(crate) fn parse_spool(ctx: &mut Ctx, t: &mut Table<'_, '_>) -> SpoolConfig {
    let d = default_spool();
    let sync = t.opt(ctx, "sync", |c, it| {
        c.choice(
            it,
            &[("group", SpoolSync::Group), ("none", SpoolSync::None)],
        )
    });
    if sync == Some(SpoolSync::None) {
        if let Some(span) = t.key_span("sync") {
            ctx.warn(
                &span,
                "spool.sync",
                "\"none\" acknowledges mail before it is on disk: a crash loses it (benchmarks only)",
            );
        }
    }
    SpoolConfig {
        path: t.opt(ctx, "path", path_buf).unwrap_or(d.path),
        segment_bytes: t
            .opt(ctx, "segment_size", |c, it| c.size(it, 1 << 20, 1 << 32))
            .unwrap_or(d.segment_bytes),
        sync: sync.unwrap_or(d.sync),
        compact_live_ratio: t
            .opt(ctx, "compact_live_ratio", |c, it| c.number(it, 0.0, 1.0))
            .unwrap_or(d.compact_live_ratio),
        zero_fill: t
            .opt(ctx, "zero_fill", |c, it| {
                c.choice(
                    it,
                    &[
                        ("auto", ZeroFill::Auto),
                        ("always", ZeroFill::Always),
                        ("never", ZeroFill::Never),
                    ],
                )
            })
            .unwrap_or(d.zero_fill),
        recycle_segments: t
            .opt(ctx, "recycle_segments", |c, it| c.bool(it))
            .unwrap_or(d.recycle_segments),
    }
}

pub(crate) fn default_runtime() -> RuntimeConfig {
    RuntimeConfig {
        shards: None,
        pin_cores: true,
        io_driver: IoDriver::Auto,
        handoff_queue_capacity: 4096,
        shutdown_timeout: Duration::from_secs(25),
    }
}

pub(crate) fn parse_runtime(ctx: &mut Ctx, t: &mut Table<'_, '_>) -> RuntimeConfig {
    let d = default_runtime();
    let shards = match t.get("shards") {
        None => d.shards,
        Some(it) => match it.value.get_ref() {
            toml::de::DeValue::String(s) if s == "auto" => None,
            toml::de::DeValue::Integer(_) => {
                ctx.uint(&it, 1, 1024).and_then(|v| usize::try_from(v).ok())
            }
            _ => {
                ctx.error(
                    &it.span(),
                    &it.path,
                    ConfigErrorKind::WrongType,
                    "expected \"auto\" or a number of shards (1 to 1024)",
                );
                None
            }
        },
    };
    let shutdown_timeout = t
        .opt(ctx, "shutdown_timeout", positive_duration)
        .unwrap_or(d.shutdown_timeout);
    if shutdown_timeout > Duration::from_secs(30) {
        if let Some(span) = t.key_span("shutdown_timeout") {
            ctx.warn(
                &span,
                "runtime.shutdown_timeout",
                "longer than 30s: service managers may kill spate before it finishes",
            );
        }
    }
    RuntimeConfig {
        shards,
        pin_cores: t
            .opt(ctx, "pin_cores", |c, it| c.bool(it))
            .unwrap_or(d.pin_cores),
        io_driver: t
            .opt(ctx, "io_driver", |c, it| {
                c.choice(
                    it,
                    &[
                        ("auto", IoDriver::Auto),
                        ("io_uring", IoDriver::IoUring),
                        ("polling", IoDriver::Polling),
                    ],
                )
            })
            .unwrap_or(d.io_driver),
        handoff_queue_capacity: t
            .opt(ctx, "handoff_queue_capacity", |c, it| {
                c.uint(it, 16, 1 << 20)
            })
            .and_then(|v| usize::try_from(v).ok())
            .unwrap_or(d.handoff_queue_capacity),
        shutdown_timeout,
    }
}

pub(crate) fn default_admin() -> AdminConfig {
    AdminConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 8025)),
        token_file: None,
    }
}

pub(crate) fn parse_admin(ctx: &mut Ctx, t: &mut Table<'_, '_>, refs: &mut Refs) -> AdminConfig {
    let d = default_admin();
    let listen = t.get("listen").and_then(|it| {
        refs.admin_listen_span = Some((it.path.clone(), it.span()));
        ctx.parse(&it, values::parse_socket_addr)
    });
    AdminConfig {
        listen: listen.unwrap_or(d.listen),
        token_file: t.opt(ctx, "token_file", |c, it| {
            file(c, refs, it, FileKind::AdminToken)
        }),
    }
}

pub(crate) fn default_dns() -> DnsConfig {
    DnsConfig {
        nameservers: Vec::new(),
        timeout: Duration::from_secs(5),
        attempts: 2,
        cache_size: 100_000,
    }
}

pub(crate) fn parse_dns(ctx: &mut Ctx, t: &mut Table<'_, '_>) -> DnsConfig {
    let d = default_dns();
    DnsConfig {
        nameservers: t
            .opt(ctx, "nameservers", |c, it| {
                c.list(it, |c, it| c.parse(it, values::parse_nameserver))
            })
            .unwrap_or(d.nameservers),
        timeout: t
            .opt(ctx, "timeout", positive_duration)
            .unwrap_or(d.timeout),
        attempts: t
            .opt(ctx, "attempts", |c, it| c.uint(it, 0, 10))
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(d.attempts),
        cache_size: t
            .opt(ctx, "cache_size", |c, it| c.uint(it, 0, 100_000_000))
            .and_then(|v| usize::try_from(v).ok())
            .unwrap_or(d.cache_size),
    }
}

pub(crate) fn parse_listener(
    ctx: &mut Ctx,
    t: &mut Table<'_, '_>,
    refs: &mut Refs,
) -> Option<ListenerConfig> {
    let address = t.req(ctx, "address", |c, it| {
        let a = c.parse(it, values::parse_socket_addr)?;
        refs.listener_spans.push((it.path.clone(), it.span()));
        Some(a)
    });
    let tls_cert = t.opt(ctx, "tls_cert", |c, it| {
        file(c, refs, it, FileKind::TlsCert)
    });
    let tls_key = t.opt(ctx, "tls_key", |c, it| file(c, refs, it, FileKind::TlsKey));
    if tls_cert.is_some() != tls_key.is_some() {
        let (present, missing) = if tls_cert.is_some() {
            ("tls_cert", "tls_key")
        } else {
            ("tls_key", "tls_cert")
        };
        let span = t.key_span(present).unwrap_or(t.span.clone());
        ctx.error(
            &span,
            &super::walk::join(&t.path, missing),
            ConfigErrorKind::Missing,
            format!("{present} is set but {missing} is not; set both to offer STARTTLS"),
        );
    }
    let require_tls = t
        .opt(ctx, "require_tls", |c, it| c.bool(it))
        .unwrap_or(false);
    let require_auth = t
        .opt(ctx, "require_auth", |c, it| c.bool(it))
        .unwrap_or(false);
    let allow_auth_without_tls = t
        .opt(ctx, "allow_auth_without_tls", |c, it| c.bool(it))
        .unwrap_or(false);
    let has_tls = tls_cert.is_some() && tls_key.is_some();
    if require_tls && !has_tls {
        let span = t.key_span("require_tls").unwrap_or(t.span.clone());
        ctx.error(
            &span,
            &super::walk::join(&t.path, "require_tls"),
            ConfigErrorKind::BadValue,
            "require_tls needs tls_cert and tls_key on this listener",
        );
    }
    if require_auth && !has_tls && !allow_auth_without_tls {
        let span = t.key_span("require_auth").unwrap_or(t.span.clone());
        ctx.warn(
            &span,
            &super::walk::join(&t.path, "require_auth"),
            "this listener has no tls_cert/tls_key and AUTH is offered only after STARTTLS: \
             no client can authenticate (set the certificate, or allow_auth_without_tls)",
        );
    }
    // Every key is read before `?` so none is mistaken for unknown.
    let listener = ListenerConfig {
        max_connections: t.opt(ctx, "max_connections", count).unwrap_or(10_000),
        max_connections_per_ip: t.opt(ctx, "max_connections_per_ip", count).unwrap_or(200),
        max_message_bytes: t
            .opt(ctx, "max_message_size", |c, it| c.size(it, 1024, 1 << 32))
            .unwrap_or(50 << 20),
        max_rcpt_per_message: t.opt(ctx, "max_rcpt_per_message", count).unwrap_or(1000),
        tls_cert,
        tls_key,
        require_tls,
        require_auth,
        allow_auth_without_tls,
        max_errors_per_session: t.opt(ctx, "max_errors_per_session", count).unwrap_or(20),
        max_auth_failure_rate: t
            .opt(ctx, "max_auth_failure_rate", rate)
            .unwrap_or(Rate::Limited {
                count: 10,
                per: Duration::from_secs(60),
            }),
        command_timeout: t
            .opt(ctx, "command_timeout", positive_duration)
            .unwrap_or(Duration::from_secs(300)),
        data_timeout: t
            .opt(ctx, "data_timeout", positive_duration)
            .unwrap_or(Duration::from_secs(600)),
        address: address?,
    };
    Some(listener)
}

pub(crate) fn parse_source(
    ctx: &mut Ctx,
    t: &mut Table<'_, '_>,
    refs: &mut Refs,
) -> Option<SourceConfig> {
    let mut spans = Vec::new();
    let networks = t.req(ctx, "networks", |c, it| {
        let items = c.array(it)?;
        if items.is_empty() {
            c.error(
                &it.span(),
                &it.path,
                ConfigErrorKind::BadValue,
                "no networks listed",
            );
            return None;
        }
        let mut nets = Vec::new();
        let mut ok = true;
        for item in &items {
            match c.parse(item, values::parse_network) {
                Some(n) => {
                    spans.push((item.path.clone(), item.span()));
                    nets.push(n);
                }
                None => ok = false,
            }
        }
        ok.then_some(nets)
    });
    let default_vmta = t.opt(ctx, "default_vmta", name_ref).map(|r| {
        refs.targets.push(r.clone());
        r.name
    });
    let source = SourceConfig {
        allow_relaying: t
            .opt(ctx, "allow_relaying", |c, it| c.bool(it))
            .unwrap_or(false),
        process_x_virtual_mta: t
            .opt(ctx, "process_x_virtual_mta", |c, it| c.bool(it))
            .unwrap_or(false),
        process_x_job: t
            .opt(ctx, "process_x_job", |c, it| c.bool(it))
            .unwrap_or(false),
        default_vmta,
        networks: networks?,
    };
    refs.network_spans.push(spans);
    Some(source)
}

pub(crate) fn parse_user(
    ctx: &mut Ctx,
    t: &mut Table<'_, '_>,
    refs: &mut Refs,
) -> Option<UserConfig> {
    let name = t.req(ctx, "name", |c, it| {
        let s = c.str(it)?;
        if s.is_empty() || s.len() > 256 || s.chars().any(char::is_control) {
            c.error(
                &it.span(),
                &it.path,
                ConfigErrorKind::BadValue,
                "user names are 1 to 256 printable characters",
            );
            return None;
        }
        Some((s.to_string(), (it.path.clone(), it.span())))
    });
    let password_hash = t.req(ctx, "password_hash", |c, it| {
        c.parse(it, |s| match argon2::PasswordHash::new(s) {
            Ok(h) if h.algorithm.as_str() == "argon2id" => Ok(s.to_string()),
            Ok(h) => Err(format!(
                "hash algorithm is {}, expected argon2id (make one with `spate hash-password`)",
                h.algorithm
            )),
            Err(e) => Err(format!(
                "not a PHC password hash ({e}); make one with `spate hash-password`"
            )),
        })
    });
    let default_vmta = t.opt(ctx, "default_vmta", name_ref).map(|r| {
        refs.targets.push(r.clone());
        r.name
    });
    let (name, name_span) = name?;
    let password_hash = password_hash?;
    refs.user_spans.push(name_span);
    Some(UserConfig {
        name,
        password_hash,
        default_vmta,
    })
}
