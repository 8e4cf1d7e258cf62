//! Unit tests that need crate internals: the RFC 8463 Appendix A vector.
