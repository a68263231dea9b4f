//! The daemon inside the crate: the test-only ungated turn.
