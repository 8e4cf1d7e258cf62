//! Client session tests.
use super::*;
