//! spate: a durable, thread-per-core mail transfer agent for high-volume senders.
//!
//! # Data path
//!
//! ```text
//! client ──SMTP──▶ listener      accept on every shard (SO_REUSEPORT between our shards)
//!                    │
//!                    ▼
//!                  session       drives the sans-IO `smtp::server` state machine:
//!                    │           access control, vMTA choice, Received/DKIM headers
//!                    ▼
//!                  spool         append to this shard's memory-mapped segment;
//!                    │           group commit (one fdatasync per batch) ─▶ 250
//!                    ▼
//!                  queue         "domain/vmta" on the shard owning the vMTA,
//!                    │           retry timers, per-recipient state
//!                    ▼
//!                  shaper        rate controller per queue (Normal/Backoff)
//!                    │
//!                    ▼
//!                  delivery      connection per queue bound to the vMTA's source IP,
//!                                sans-IO `smtp::client`, body read from the segment map;
//!                                outcome ─▶ spool state record, accounting, DSN
//! ```
//!
//! # Module map
//!
//! | module | owns |
//! | --- | --- |
//! | [`smtp`] | the SMTP protocol without I/O: command and reply codecs, DATA/BDAT framing, server and client session state machines |
//! | [`config`] | the configuration format: parsing, validation with file:line:key errors, inheritance, the embedded default |
//! | [`runtime`] | shard threads (one per core, io_uring via compio), the routing function from vMTA to shard, cross-shard channels, signals |
//! | [`listener`] | listening sockets, accept loops, connection limits |
//! | [`session`] | one inbound connection: TLS, AUTH, access control, vMTA selection, header processing, handing the message to the spool |
//! | [`spool`] | durable storage: segment files, record codec, group commit, recovery, reclamation |
//! | [`queue`] | per-(destination, vMTA) queues of recipients, retry timers, scheduling |
//! | [`shaper`] | per-queue rate controllers, Normal/Backoff modes, SMTP pattern lists and ISP profiles |
//! | [`delivery`] | outbound connections: MX routing, the SMTP client driver, bounces and DSNs |
//! | [`dns`] | the resolver thread (hickory) and its TTL cache |
//! | [`dkim`] | DKIM signing (RSA, Ed25519) and key generation |
//! | [`accounting`] | accounting files (CSV/JSONL, PowerMTA field names) |
//! | [`admin`] | the control plane: admin HTTP API, metrics, status page, `spate ctl` |
//! | [`limits`] | every bound in one place, with its unit and why |
//! | [`util`] | small shared helpers no module owns: civil (calendar) time for dates in headers, DSNs and accounting |

pub mod accounting;
pub mod admin;
pub mod config;
pub mod delivery;
pub mod dkim;
pub mod dns;
pub mod limits;
pub mod listener;
pub mod queue;
pub mod runtime;
pub mod session;
pub mod shaper;
pub mod smtp;
pub mod spool;
pub mod util;
