//! Several destinations for a load (`relay --domains`): their domain names,
//! the MX host each gets in the test zone (an address of the sink's of its
//! own), the template placeholders for those addresses, how a leg counts
//! what arrived, and the row's line on how the sink's messages (an MTA's
//! transactions) spread over them.

use std::net::SocketAddr;

use super::SINK_NAME;

/// Most destination domains a load takes (each one a sink address).
pub const DOMAINS_MAX: u32 = 100;
/// Destination N's sink address is 127.0.0.(SINK_ADDRESS_BASE + N).
const SINK_ADDRESS_BASE: u32 = 100;
const _: () = assert!(SINK_ADDRESS_BASE + DOMAINS_MAX <= 254);

/// Refuses a number of destinations the legs cannot run: outside 1 to
/// [`DOMAINS_MAX`].
pub fn ensure_destinations(domains: u32) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=DOMAINS_MAX).contains(&domains),
        "destination domains (--domains) must be 1 to {DOMAINS_MAX}, not {domains}"
    );
    Ok(())
}

/// Whether a leg of this load counts its delivery in recipients: with
/// several recipients over several destinations, an MTA splits a message
/// into a transaction per destination, so the sink's message count is not
/// the load's. The raw and forward legs, which send everything to one
/// address, are counted the same way.
pub fn counts_recipients(domains: u32, rcpts: u32) -> bool {
    domains > 1 && rcpts > 1
}

/// The recipients the sink must hold once every accepted message arrived:
/// each accepted message's, less those refused at injection (refusals are
/// counted for accepted messages only).
pub fn expected_recipients(accepted: u64, rcpts: u32, refused_recipients: u64) -> u64 {
    (accepted * u64::from(rcpts)).saturating_sub(refused_recipients)
}

/// The load's messages a leg counted in recipients reports as delivered:
/// all accepted ones once every recipient arrived; otherwise the recipients
/// that arrived in whole messages' worth (an estimate: the leg failed).
pub fn delivered_by_recipients(complete: bool, accepted: u64, recipients: u64, rcpts: u32) -> u64 {
    if complete {
        accepted
    } else {
        recipients / u64::from(rcpts.max(1))
    }
}

/// The sink's listen addresses for `domains` destinations: 127.0.0.1 for
/// one (the published table's), 127.0.0.101 and on for several; each gets
/// a port of its own.
pub(super) fn sink_listen_addresses(domains: u32) -> Vec<SocketAddr> {
    if domains <= 1 {
        return vec![SocketAddr::from(([127, 0, 0, 1], 0))];
    }
    (1..=domains.min(DOMAINS_MAX))
        .map(|i| SocketAddr::from(([127, 0, 0, (SINK_ADDRESS_BASE + i) as u8], 0)))
        .collect()
}

/// The recipient domains of a load of `n` destinations: `example.test` for
/// one (the published table's load), `d1.example.test` to `dN.example.test`
/// for several.
pub fn destination_domains(n: u32) -> Vec<String> {
    if n <= 1 {
        return vec!["example.test".into()];
    }
    (1..=n).map(|i| format!("d{i}.example.test")).collect()
}

/// The MX host name of destination `i` (0-based) of `n`; the test zone
/// gives it the address of the sink's listener for that destination.
pub fn sink_host_name(i: usize, n: usize) -> String {
    if n <= 1 {
        SINK_NAME.into()
    } else {
        format!("sink{}.example.test", i + 1)
    }
}

/// The test zone for `sinks` (one per destination, in the order of
/// [`destination_domains`]): each domain's MX and its host's address.
pub fn destination_zone(sinks: &[SocketAddr]) -> String {
    let domains = destination_domains(sinks.len() as u32);
    let mut zone = String::new();
    for (i, (domain, sink)) in domains.iter().zip(sinks).enumerate() {
        let host = sink_host_name(i, sinks.len());
        let address_type = if sink.is_ipv4() { "A" } else { "AAAA" };
        zone.push_str(&format!(
            "{domain} MX 10 {host}\n{host} {address_type} {}\n",
            sink.ip()
        ));
    }
    zone
}

/// Fills a template's `{sinkN}` placeholders (1-based: the sink address of
/// destination N, see [`destination_domains`]) and `{sink}`, the first.
pub(super) fn fill_sinks(mut template: String, sinks: &[SocketAddr]) -> String {
    for (i, s) in sinks.iter().enumerate().rev() {
        template = template.replace(&format!("{{sink{}}}", i + 1), &s.to_string());
    }
    if let Some(first) = sinks.first() {
        template = template.replace("{sink}", &first.to_string());
    }
    template
}

/// With several destinations: how the sink's messages (an MTA's
/// transactions) spread over its addresses (one per destination's MX host).
pub(super) fn destinations_line(per_sink: &[(String, u64)]) -> Option<String> {
    let counts = per_sink.iter().map(|(_, n)| *n);
    let (fewest, most) = (counts.clone().min()?, counts.max()?);
    let reached = per_sink.iter().filter(|(_, n)| *n > 0).count();
    Some(format!(
        "destinations: {reached} of {} sink addresses received messages, {fewest} to {most} each",
        per_sink.len()
    ))
}
