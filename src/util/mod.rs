//! Small helpers that several modules need and none owns: civil (calendar)
//! time, a latency histogram, and a free loopback port for tests and
//! benchmarks. Keep this folder small; a helper that grows a concept
//! of its own belongs in a module of its own.

pub mod histogram;
pub mod port;
pub mod time;
