//! Unit tests of loading: spans, unknown keys, inheritance.

use super::*;

#[test]
fn embedded_default_loads() {
    let c = load(None).unwrap();
    assert!(c.is_embedded_default());
}
