//! `regionkv demo`, the README's main command, runs and its verification passes.

use std::process::Command;

#[test]
fn demo_runs_and_verifies() {
    let out = Command::new(env!("CARGO_BIN_EXE_regionkv"))
        .args(["demo", "--writers", "8", "--records", "3000", "--keys", "900", "--clients", "4"])
        .output()
        .expect("run regionkv demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    for expected in [
        "3000 records intact (clean shutdown: true)",
        "4000 acknowledged records intact",
        "store 2 killed after",
        "store 2 restarted after",
        "is on all three replicas (900 keys)",
        "900 keys intact after the restart",
        "node 3 killed",
        "store-down on store 3",
        "every region's replica on it was replaced on store 4",
        "replace-replica region 0, off store 3 (for store-dead)",
        "the total is unchanged: every transfer was all or nothing",
        "verified: every acknowledged write survived",
    ] {
        assert!(stdout.contains(expected), "missing {expected:?} in:\n{stdout}");
    }
}
