//! Criterion benches of the engine (written in a following commit).

fn main() {}
