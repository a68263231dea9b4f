//! Duplication between two clusters of three `regionkv node` processes each (other
//! cluster ids and secrets), driven by `regionkv client`: `dup add --to ADDR,...
//! --to-cluster-id C --to-secret-file F` on the source, writes on the source, then the
//! follower reads the same range back (`client scan` on the follower cluster), and
//! `dup status --json` shows the duplication streaming its log.

mod common;

use std::time::Duration;

use common::{Procs, wait_for};
use regionkv::ClusterId;

const FOLLOWER: ClusterId = ClusterId(19);
const FOLLOWER_SECRET: &str = "the secret of the follower process cluster";

/// Runs `regionkv client ARGS` on `procs`' cluster, which must succeed; parses its JSON.
fn client_json(procs: &Procs, args: &[&str]) -> serde_json::Value {
    let out = procs.client(args);
    assert!(
        out.status.success(),
        "client {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        procs.logs()
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn scan(procs: &Procs) -> serde_json::Value {
    client_json(procs, &["--json", "scan", "--start", "k", "--end", "l", "--limit", "1000"])
}

#[test]
fn a_cluster_of_processes_duplicates_to_another_over_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (dir.path().join("source"), dir.path().join("follower"));
    std::fs::create_dir_all(&a_dir).unwrap();
    std::fs::create_dir_all(&b_dir).unwrap();
    let mut source = Procs::new(&a_dir, 3);
    let mut follower = Procs::of_cluster(&b_dir, 3, FOLLOWER, FOLLOWER_SECRET);
    for id in 1..=3 {
        source.start(id);
        follower.start(id);
    }
    for i in 0..10 {
        client_json(&source, &["--json", "put", &format!("k{i:02}"), &format!("seeded-{i}")]);
    }
    let to: Vec<String> = follower.addrs.iter().map(ToString::to_string).collect();
    let secret = b_dir.join("secret");
    let added = client_json(
        &source,
        &[
            "--json",
            "dup",
            "add",
            "--to",
            &to.join(","),
            "--to-cluster-id",
            &FOLLOWER.0.to_string(),
            "--to-secret-file",
            secret.to_str().unwrap(),
            "--start",
            "k",
            "--end",
            "l",
        ],
    );
    let id = added["id"].as_u64().expect("an id").to_string();
    // Written after the add: shipped from the log (or in the seed, if it was later).
    for i in 10..20 {
        client_json(&source, &["--json", "put", &format!("k{i:02}"), &format!("logged-{i}")]);
    }
    client_json(&source, &["--json", "delete", "k03"]);
    client_json(&source, &["--json", "put", "m-outside", "x"]);
    let expected = scan(&source);
    assert_eq!(expected.as_array().map(Vec::len), Some(19), "{expected}");
    wait_for("the follower to hold the range", Duration::from_secs(40), || {
        scan(&follower) == expected
    });
    let got = client_json(&follower, &["--json", "get", "k15"]);
    assert_eq!(got["value"], "logged-15", "{got}");
    let outside = client_json(&follower, &["--json", "get", "m-outside"]);
    assert!(outside["value"].is_null(), "{outside}");
    let mut status = serde_json::Value::Null;
    wait_for("the duplication to stream its log", Duration::from_secs(20), || {
        status = client_json(&source, &["--json", "dup", "status", &id]);
        status["status"] == "log"
            && status["regions"]
                .as_array()
                .is_some_and(|r| !r.is_empty() && r.iter().all(|g| g["stage"] == "streaming"))
    });
    assert_eq!(status["to"], to.join(","), "{status}");
    // The follower's range is a read-only standby for its clients.
    assert!(!follower.client(&["put", "k01", "mine"]).status.success());
    source.stop_all_by_stdin();
    follower.stop_all_by_stdin();
}
