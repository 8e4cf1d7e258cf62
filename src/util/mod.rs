//! Small helpers that several modules need and none owns: today only civil
//! (calendar) time. Keep this folder small; a helper that grows a concept
//! of its own belongs in a module of its own.

pub mod time;
