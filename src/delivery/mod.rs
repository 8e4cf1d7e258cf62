//! delivery: see the module map in `lib.rs`.

pub mod bounce;
pub mod dsn;
pub mod route;
