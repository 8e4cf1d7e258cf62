//! Server session tests.
use super::*;
