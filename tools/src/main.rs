//! `spate-spool`: read-only spool inspector.
//!
//! `spate-spool [--spool DIR] [--json] ls | show ID [--body] | stats | verify`
//!
//! Opens segment files read-only and never locks or modifies anything, so it
//! is safe beside a running server. A segment being appended while we read it
//! may end in a torn tail: `ls`/`stats` ignore it, and `verify` counts as
//! corrupt only bad regions **followed by a valid record** (a checksum
//! mismatch before the valid end), plus damaged segment headers. A torn tail
//! is reported as a note, not an error; the server truncates it at its next
//! start.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use serde_json::json;
use spate::spool::MessageId;
use spate::spool::inspect::{self, Inventory, MessageInfo};

#[derive(Parser)]
#[command(
    name = "spate-spool",
    about = "Read-only inspector for spate spool directories"
)]
struct Cli {
    /// Spool directory.
    #[arg(long, default_value = "./spate-spool")]
    spool: PathBuf,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// List queued messages (with live recipients).
    Ls {
        /// Include finished messages still on disk.
        #[arg(long)]
        all: bool,
    },
    /// Show one message's envelope and recipient states.
    Show {
        id: String,
        /// Also print the headers and body.
        #[arg(long)]
        body: bool,
    },
    /// Segments with live/dead bytes, messages and recipients by state, counts per queue.
    Stats,
    /// Check every record's checksum; exit 1 naming each corrupt segment and offset.
    Verify,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(code) => code,
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            // Output piped into `head` and closed: not an error.
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("spate-spool: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    let inv = inspect::inventory(&cli.spool)
        .with_context(|| format!("reading {}", cli.spool.display()))?;
    let mut out = std::io::stdout().lock();
    match &cli.command {
        Cmd::Ls { all } => {
            let msgs: Vec<&MessageInfo> = inv
                .messages
                .iter()
                .filter(|m| *all || m.is_live())
                .collect();
            if cli.json {
                let v: Vec<_> = msgs.iter().map(|m| message_json(m)).collect();
                writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
            } else {
                writeln!(
                    out,
                    "{:<16}  {:<24}  {:>9}  {:>5}  {:<12}  FROM",
                    "ID", "SEGMENT", "SIZE", "LIVE", "VMTA"
                )?;
                for m in msgs {
                    let live = m.recipients.iter().filter(|r| !r.state.is_final()).count();
                    writeln!(
                        out,
                        "{:<16}  {:<24}  {:>9}  {:>2}/{:<2}  {:<12}  <{}>",
                        m.id.to_string(),
                        m.segment.to_string(),
                        m.content_len,
                        live,
                        m.recipients.len(),
                        m.vmta,
                        m.reverse_path
                    )?;
                }
            }
        }
        Cmd::Show { id, body } => {
            let id: MessageId = id
                .parse()
                .with_context(|| format!("{id:?} is not a spool id (16 hex digits)"))?;
            let Some(m) = inv.messages.iter().find(|m| m.id == id) else {
                bail!("no message {id} in the spool")
            };
            let content = if *body {
                Some(inspect::read_content(&cli.spool, m)?)
            } else {
                None
            };
            if cli.json {
                let mut v = message_json(m);
                if let Some(c) = &content {
                    v["content"] = json!(String::from_utf8_lossy(c));
                }
                writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
            } else {
                writeln!(out, "id:           {}", m.id)?;
                writeln!(out, "segment:      {} @ {}", m.segment, m.record_offset)?;
                writeln!(out, "received:     {} (unix ms)", m.received_unix_ms)?;
                writeln!(out, "from:         <{}>", m.reverse_path)?;
                writeln!(
                    out,
                    "vmta:         {} (submitted to {})",
                    m.vmta, m.vmta_or_pool
                )?;
                writeln!(out, "job:          {}", m.job_id)?;
                writeln!(out, "envid:        {}", m.envid)?;
                writeln!(out, "size:         {} bytes", m.content_len)?;
                for (i, r) in m.recipients.iter().enumerate() {
                    writeln!(
                        out,
                        "rcpt {i:<7}  <{}>  {}",
                        r.forward_path,
                        state_text(&r.state)
                    )?;
                }
                if let Some(c) = content {
                    writeln!(out)?;
                    out.write_all(&c)?;
                }
            }
        }
        Cmd::Stats => stats(&inv, cli.json, &mut out)?,
        Cmd::Verify => return verify(&inv, cli.json, &mut out),
    }
    Ok(ExitCode::SUCCESS)
}

fn state_text(s: &spate::spool::RecipientState) -> String {
    use spate::spool::RecipientState as S;
    match s {
        S::Bounced { category } => format!("bounced (category {category})"),
        S::Deferred {
            attempts,
            next_attempt_unix_s,
        } => {
            let (attempts, notified) = spate::spool::record::deferred_attempts(*attempts);
            let notice = if notified { ", delay notice sent" } else { "" };
            format!("deferred ({attempts} attempts, next at unix {next_attempt_unix_s}{notice})")
        }
        other => other.name().to_string(),
    }
}

fn message_json(m: &MessageInfo) -> serde_json::Value {
    json!({
        "id": m.id.to_string(),
        "segment": m.segment.to_string(),
        "offset": m.record_offset,
        "size": m.content_len,
        "received_unix_ms": m.received_unix_ms,
        "reverse_path": m.reverse_path,
        "vmta": m.vmta,
        "vmta_or_pool": m.vmta_or_pool,
        "job_id": m.job_id,
        "envid": m.envid,
        "live": m.is_live(),
        "recipients": m.recipients.iter().map(|r| {
            let mut v = json!({"forward_path": r.forward_path, "orcpt": r.orcpt, "notify": r.notify, "state": r.state.name()});
            if let spate::spool::RecipientState::Deferred { attempts, next_attempt_unix_s } = r.state {
                let (attempts, notified) = spate::spool::record::deferred_attempts(attempts);
                v["attempts"] = json!(attempts);
                v["delay_notice_sent"] = json!(notified);
                v["next_attempt_unix_s"] = json!(next_attempt_unix_s);
            }
            if let spate::spool::RecipientState::Bounced { category } = r.state {
                v["bounce_category"] = json!(category);
            }
            v
        }).collect::<Vec<_>>(),
    })
}

fn stats(inv: &Inventory, as_json: bool, out: &mut impl Write) -> anyhow::Result<()> {
    let mut by_state: BTreeMap<&str, u64> = BTreeMap::new();
    let mut queues: BTreeMap<String, u64> = BTreeMap::new();
    let live_messages = inv.messages.iter().filter(|m| m.is_live()).count();
    for m in &inv.messages {
        for r in &m.recipients {
            let name = if m.superseded {
                "finished"
            } else {
                r.state.name()
            };
            *by_state.entry(name).or_default() += 1;
            if m.is_live() && !r.state.is_final() {
                let domain = r
                    .forward_path
                    .rsplit_once('@')
                    .map_or("", |(_, d)| d)
                    .to_ascii_lowercase();
                *queues.entry(format!("{domain}/{}", m.vmta)).or_default() += 1;
            }
        }
    }
    if as_json {
        let segs: Vec<_> = inv
            .segments
            .iter()
            .map(|s| {
                json!({"segment": s.id.to_string(), "file_bytes": s.file_bytes, "used_bytes": s.valid_end,
                       "live_bytes": s.live_bytes, "dead_bytes": s.valid_end.saturating_sub(s.live_bytes),
                       "records": s.records, "live_messages": s.live_messages, "generation": s.generation})
            })
            .collect();
        let v = json!({"segments": segs, "messages": inv.messages.len(), "live_messages": live_messages,
                       "recipients_by_state": by_state, "queues": queues, "orphan_states": inv.orphan_states});
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<26} {:>12} {:>12} {:>12} {:>9} {:>9} {:>5}",
        "SEGMENT", "FILE", "USED", "LIVE", "RECORDS", "LIVE MSG", "GEN"
    )?;
    for s in &inv.segments {
        writeln!(
            out,
            "{:<26} {:>12} {:>12} {:>12} {:>9} {:>9} {:>5}",
            s.id.to_string(),
            s.file_bytes,
            s.valid_end,
            s.live_bytes,
            s.records,
            s.live_messages,
            s.generation
        )?;
    }
    writeln!(
        out,
        "\nmessages on disk: {}, queued: {}",
        inv.messages.len(),
        live_messages
    )?;
    writeln!(out, "recipients by state:")?;
    for (k, v) in &by_state {
        writeln!(out, "  {k:<14} {v}")?;
    }
    writeln!(out, "queued recipients per queue:")?;
    for (k, v) in &queues {
        writeln!(out, "  {k:<40} {v}")?;
    }
    Ok(())
}

fn verify(inv: &Inventory, as_json: bool, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    for s in &inv.segments {
        if let Some(e) = &s.header_error {
            problems.push(json!({"segment": s.id.to_string(), "offset": 0, "length": 32, "error": format!("header: {e}")}));
        }
        for c in &s.corrupt {
            problems.push(json!({"segment": s.id.to_string(), "offset": c.offset, "length": c.len, "error": c.error.to_string()}));
        }
        if let Some((off, e)) = &s.torn_tail {
            notes.push(json!({"segment": s.id.to_string(), "offset": off, "note": format!("torn tail (append in progress or crash): {e}")}));
        }
    }
    for (file, e) in &inv.unreadable {
        problems.push(
            json!({"segment": file, "offset": 0, "length": 0, "error": format!("unreadable: {e}")}),
        );
    }
    if as_json {
        let v = json!({"ok": problems.is_empty(), "segments": inv.segments.len(), "corrupt": problems, "notes": notes});
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        for p in &problems {
            writeln!(
                out,
                "CORRUPT {} offset {} length {}: {}",
                p["segment"].as_str().unwrap_or("?"),
                p["offset"],
                p["length"],
                p["error"].as_str().unwrap_or("")
            )?;
        }
        for n in &notes {
            writeln!(
                out,
                "note {} offset {}: {}",
                n["segment"].as_str().unwrap_or("?"),
                n["offset"],
                n["note"].as_str().unwrap_or("")
            )?;
        }
        writeln!(
            out,
            "{} segments, {} records checked: {}",
            inv.segments.len(),
            inv.segments.iter().map(|s| s.records).sum::<u64>(),
            if problems.is_empty() {
                "ok".to_string()
            } else {
                format!("{} corrupt regions", problems.len())
            }
        )?;
    }
    Ok(if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
