//! `regionkv demo`, the README's main command, runs and its verification passes.

use std::process::Command;

#[test]
fn demo_runs_and_verifies() {
    let out = Command::new(env!("CARGO_BIN_EXE_regionkv"))
        .args(["demo", "--writers", "8", "--records", "3000"])
        .output()
        .expect("run regionkv demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("3000 records intact (clean shutdown: true)"), "{stdout}");
    assert!(stdout.contains("4000 acknowledged records intact"), "{stdout}");
    assert!(stdout.contains("verified: every acknowledged write survived"), "{stdout}");
}
