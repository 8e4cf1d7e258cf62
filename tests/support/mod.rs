//! Shared test fixtures.
#![allow(dead_code)] // reason: each test binary uses a different subset

pub mod config;
pub mod sink;
pub mod spate_proc;
