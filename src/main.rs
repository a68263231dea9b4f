//! The `regionkv` command-line tool.

fn main() {}
