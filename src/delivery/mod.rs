//! Outbound delivery: routing, connections from vMTA source IPs, the SMTP
//! client driver, the outcome of every recipient, and moving queued
//! messages to another vMTA (`relocate`).

pub mod bounce;
pub mod connect;
pub mod dsn;
pub mod outcome;
pub mod relocate;
pub mod route;
pub mod tls;
pub mod worker;

#[cfg(test)]
pub(crate) mod test_engine;
