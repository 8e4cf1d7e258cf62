//! `GET /metrics`: the Prometheus text exposition (format 0.0.4), rendered
//! from a snapshot the control thread gathers (process counters, queue
//! views from every shard, spool, DNS and accounting figures). Pure: the
//! snapshot in, the text out, so tests check the format without a server.
//!
//! Label cardinality is bounded: per-queue series are written for at most
//! [`QUEUE_SERIES_MAX`] queues (those with the most recipients waiting);
//! `spate_queue_series_omitted` says how many were left out. Per-vMTA
//! series are bounded by the configuration (one per configured vMTA).

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::dns::DnsMetricsSnapshot;
use crate::queue::engine::QueueView;

/// Most queues that get per-queue series in one scrape.
pub const QUEUE_SERIES_MAX: usize = 1000;

/// Everything one scrape shows.
#[derive(Debug, Default, Clone)]
pub struct MetricsSnapshot {
    pub uptime_seconds: u64,
    pub received_messages: u64,
    pub received_recipients: u64,
    pub rejected_messages: u64,
    pub delivered: u64,
    pub bounced: u64,
    /// (category, count) for every bounce category.
    pub bounced_by_category: Vec<(&'static str, u64)>,
    pub deferred: u64,
    pub expired: u64,
    pub signing_failures: u64,
    pub connections_in: i64,
    pub connections_out: i64,
    pub queued_messages: i64,
    pub queued_recipients: i64,
    pub queues: Vec<QueueView>,
    pub spool_bytes_used: u64,
    pub spool_bytes_free: Option<u64>,
    /// Segments made ahead of need, by fill ("zeros", "allocated" or "recycled").
    pub spool_segments_prepared: Vec<(&'static str, u64)>,
    pub dns: DnsMetricsSnapshot,
    pub accounting_written: u64,
    pub accounting_dropped: u64,
    pub accounting_errors: u64,
    pub rate_limit_waits: u64,
    pub spool_fsync: crate::util::histogram::HistogramSnapshot,
    pub spool_commit: crate::util::histogram::HistogramSnapshot,
}

/// A per-queue gauge: name, type, help and how to read it from a view.
type QueueGauge = (
    &'static str,
    &'static str,
    &'static str,
    fn(&QueueView) -> u64,
);

/// Escapes a label value: backslash, double quote and line feed.
pub fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape_label(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// A latency histogram in seconds (cumulative buckets, sum, count).
    fn histogram(&mut self, name: &str, help: &str, h: &crate::util::histogram::HistogramSnapshot) {
        self.family(name, "histogram", help);
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0u64;
        for (i, n) in h.buckets.iter().enumerate() {
            cumulative += n;
            let le = match crate::util::histogram::LATENCY_BUCKETS_US.get(i) {
                Some(us) => format!("{}", *us as f64 / 1e6),
                None => "+Inf".to_string(),
            };
            self.sample(&bucket, &[("le", &le)], cumulative);
        }
        self.sample(&format!("{name}_sum"), &[], h.sum_us as f64 / 1e6);
        self.sample(&format!("{name}_count"), &[], h.count);
    }
}

/// Renders the exposition text.
pub fn render(s: &MetricsSnapshot) -> String {
    let mut o = Out(String::with_capacity(
        4096 + s.queues.len().min(QUEUE_SERIES_MAX) * 400,
    ));
    let c = "counter";
    let g = "gauge";
    o.single(
        "spate_uptime_seconds",
        g,
        "Seconds since the process started.",
        s.uptime_seconds,
    );
    o.single(
        "spate_rate_limit_waits_total",
        c,
        "Times a queue with work waited for its rate limit (max_msg_rate, max_connect_rate).",
        s.rate_limit_waits,
    );
    o.histogram(
        "spate_spool_fsync_seconds",
        "Latency of the spool's group-commit fdatasync.",
        &s.spool_fsync,
    );
    o.histogram(
        "spate_spool_commit_seconds",
        "From a new message's record queued in the spool to its commit (batch wait, write and fdatasync): the spool's part of the 250's latency.",
        &s.spool_commit,
    );
    o.single(
        "spate_received_messages_total",
        c,
        "Messages accepted and spooled.",
        s.received_messages,
    );
    o.single(
        "spate_received_recipients_total",
        c,
        "Recipients of accepted messages.",
        s.received_recipients,
    );
    o.single(
        "spate_rejected_messages_total",
        c,
        "Messages refused at the end of DATA or BDAT.",
        s.rejected_messages,
    );
    o.single(
        "spate_delivered_total",
        c,
        "Recipients delivered.",
        s.delivered,
    );
    o.single(
        "spate_bounced_total",
        c,
        "Recipients bounced (permanent failure, expiry or admin delete).",
        s.bounced,
    );
    o.family(
        "spate_bounced_by_category_total",
        c,
        "Recipients bounced, by bounce category.",
    );
    for (category, n) in &s.bounced_by_category {
        o.sample(
            "spate_bounced_by_category_total",
            &[("category", category)],
            n,
        );
    }
    o.single(
        "spate_deferred_total",
        c,
        "Delivery attempts that ended in a transient failure.",
        s.deferred,
    );
    o.single(
        "spate_expired_total",
        c,
        "Recipients bounced because they stayed queued past bounce_after.",
        s.expired,
    );
    o.single(
        "spate_dkim_signing_failures_total",
        c,
        "Messages sent unsigned because signing failed.",
        s.signing_failures,
    );
    o.single(
        "spate_connections_in",
        g,
        "Open inbound SMTP connections.",
        s.connections_in,
    );
    o.single(
        "spate_connections_out",
        g,
        "Open outbound SMTP connections.",
        s.connections_out,
    );
    o.single(
        "spate_fd_exhausted_total",
        c,
        "Times a socket could not be had: out of descriptors (EMFILE/ENFILE, or the outbound share spent) or local ports.",
        crate::runtime::fdlimit::exhausted_total(),
    );
    o.single(
        "spate_queued_messages",
        g,
        "Messages with at least one recipient not yet settled.",
        s.queued_messages,
    );
    o.single(
        "spate_queued_recipients",
        g,
        "Recipients not yet settled.",
        s.queued_recipients,
    );
    o.single(
        "spate_spool_bytes_used",
        g,
        "Bytes of spool segments in use.",
        s.spool_bytes_used,
    );
    if let Some(free) = s.spool_bytes_free {
        o.single(
            "spate_spool_bytes_free",
            g,
            "Bytes available to spate on the spool file system.",
            free,
        );
    }
    o.family(
        "spate_spool_segments_prepared_total",
        c,
        "Segments made ahead of need: from a finished segment's file ([spool] recycle_segments), or new and written full of zeros or only allocated ([spool] zero_fill).",
    );
    for (fill, n) in &s.spool_segments_prepared {
        o.sample("spate_spool_segments_prepared_total", &[("fill", fill)], n);
    }
    o.single(
        "spate_dns_lookups_total",
        c,
        "DNS lookups requested (cache hits included).",
        s.dns.lookups,
    );
    o.single(
        "spate_dns_cache_hits_total",
        c,
        "DNS queries answered from the cache.",
        s.dns.cache_hits,
    );
    o.single(
        "spate_dns_queries_total",
        c,
        "DNS queries sent to name servers.",
        s.dns.queries,
    );
    o.single(
        "spate_dns_failures_total",
        c,
        "DNS lookups that failed (timeout, SERVFAIL, busy).",
        s.dns.failures,
    );
    o.single(
        "spate_accounting_written_total",
        c,
        "Accounting records written.",
        s.accounting_written,
    );
    o.single(
        "spate_accounting_dropped_total",
        c,
        "Accounting records dropped because a writer fell behind.",
        s.accounting_dropped,
    );
    o.single(
        "spate_accounting_errors_total",
        c,
        "Failed accounting writes, renames or reopens.",
        s.accounting_errors,
    );

    // Per vMTA: every queue counts, whatever the per-queue cap.
    let mut vmtas: BTreeMap<&str, (u64, u64, u64)> = BTreeMap::new();
    for q in &s.queues {
        let e = vmtas.entry(q.vmta.as_str()).or_default();
        e.0 += u64::from(q.connections);
        e.1 += q.queued + q.deferred;
        e.2 += q.in_flight;
    }
    o.family(
        "spate_vmta_connections",
        g,
        "Open outbound connections per vMTA.",
    );
    for (v, (conns, _, _)) in &vmtas {
        o.sample("spate_vmta_connections", &[("vmta", v)], conns);
    }
    o.family(
        "spate_vmta_queued_recipients",
        g,
        "Recipients queued (ready or waiting to retry) per vMTA.",
    );
    for (v, (_, queued, _)) in &vmtas {
        o.sample("spate_vmta_queued_recipients", &[("vmta", v)], queued);
    }

    // Per queue, the largest first, capped.
    let mut order: Vec<&QueueView> = s.queues.iter().collect();
    order.sort_by(|a, b| {
        (b.queued + b.deferred)
            .cmp(&(a.queued + a.deferred))
            .then_with(|| a.queue.cmp(&b.queue))
    });
    let omitted = order.len().saturating_sub(QUEUE_SERIES_MAX);
    order.truncate(QUEUE_SERIES_MAX);
    o.single(
        "spate_queue_series_omitted",
        g,
        "Queues left out of the per-queue series (cap 1000, largest kept).",
        omitted,
    );
    let families: [QueueGauge; 7] = [
        (
            "spate_queue_recipients",
            g,
            "Recipients ready to send in the queue.",
            |q| q.queued,
        ),
        (
            "spate_queue_deferred_recipients",
            g,
            "Recipients waiting to retry in the queue.",
            |q| q.deferred,
        ),
        (
            "spate_queue_in_flight_recipients",
            g,
            "Recipients being delivered from the queue.",
            |q| q.in_flight,
        ),
        (
            "spate_queue_connections",
            g,
            "Open outbound connections of the queue.",
            |q| u64::from(q.connections),
        ),
        (
            "spate_queue_mode",
            g,
            "Queue mode: 0 normal, 1 backoff.",
            |q| u64::from(q.mode == "backoff"),
        ),
        (
            "spate_queue_paused",
            g,
            "1 when an operator paused the queue.",
            |q| u64::from(q.paused),
        ),
        (
            "spate_queue_mode_since_seconds",
            g,
            "Unix time the queue entered its current mode.",
            |q| q.mode_since_unix,
        ),
    ];
    for (name, kind, help, value) in families {
        o.family(name, kind, help);
        for q in &order {
            let labels = [
                ("queue", q.queue.as_str()),
                ("domain", q.domain.as_str()),
                ("vmta", q.vmta.as_str()),
            ];
            o.sample(name, &labels, value(q));
        }
    }
    o.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(name: &str, queued: u64) -> QueueView {
        let (d, v) = name.split_once('/').unwrap_or((name, ""));
        QueueView {
            queue: name.into(),
            domain: d.into(),
            vmta: v.into(),
            mode: "backoff".into(),
            backoff_reason: None,
            mode_since_unix: 1,
            paused: false,
            queued,
            deferred: 0,
            in_flight: 0,
            connections: 2,
            delivered_last_hour: 0,
            bounced_last_hour: 0,
            deferred_last_hour: 0,
            next_attempt_unix: None,
            last_error: None,
        }
    }

    #[test]
    fn escapes_label_values() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        let s = MetricsSnapshot {
            queues: vec![view("we\"ird\n.com/ip1", 3)],
            ..Default::default()
        };
        let text = render(&s);
        assert!(
            text.contains(
                "spate_queue_recipients{queue=\"we\\\"ird\\n.com/ip1\",domain=\"we\\\"ird\\n.com\",vmta=\"ip1\"} 3"
            ),
            "{text}"
        );
        assert!(text.contains("spate_queue_mode{queue="));
        assert!(text.contains("spate_vmta_connections{vmta=\"ip1\"} 2"));
    }

    #[test]
    fn caps_queue_series_keeping_the_largest() {
        let queues = (0..QUEUE_SERIES_MAX as u64 + 5)
            .map(|i| view(&format!("d{i}.test/v"), i))
            .collect();
        let text = render(&MetricsSnapshot {
            queues,
            ..Default::default()
        });
        let rows = text
            .lines()
            .filter(|l| l.starts_with("spate_queue_recipients{"))
            .count();
        assert_eq!(rows, QUEUE_SERIES_MAX);
        assert!(text.contains("spate_queue_series_omitted 5\n"));
        assert!(!text.contains("queue=\"d0.test/v\""), "smallest dropped");
        assert!(text.contains("queue=\"d1004.test/v\""));
        // Per-vMTA totals still count every queue.
        let total: u64 = (0..QUEUE_SERIES_MAX as u64 + 5).sum();
        assert!(text.contains(&format!(
            "spate_vmta_queued_recipients{{vmta=\"v\"}} {total}\n"
        )));
    }
}
