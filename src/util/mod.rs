//! Small helpers that several modules need and none owns: civil (calendar)
//! time and a latency histogram. Keep this folder small; a helper that grows a concept
//! of its own belongs in a module of its own.

pub mod histogram;
pub mod time;
