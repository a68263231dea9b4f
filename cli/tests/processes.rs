//! Three `regionkv node` processes on loopback: a client library writes while the
//! leader's process is killed with SIGKILL, keeps writing, restarts it; then every
//! acknowledged write is on every node's replica and reads back through every node
//! (P1), and the nodes stop cleanly when their stdin closes.

mod common;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::{CLUSTER, Procs, SECRET, wait_for};
use parking_lot::Mutex;
use regionkv::{Client, StoreId};

/// The most keys the writer writes; it stops earlier once the test has seen enough.
const KEYS_MAX: usize = 20_000;

fn key(i: usize) -> String {
    format!("key-{i:05}")
}

/// `regionkv client status` reports every node's metrics, as text and as JSON.
fn check_client_status(procs: &Procs) {
    let status = |json: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_regionkv"));
        cmd.arg("client")
            .args([
                "--addr",
                &procs.addrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
            ])
            .args(["--cluster-id", &CLUSTER.0.to_string()])
            .arg("--secret-file")
            .arg(procs.dir.join("secret"));
        if json {
            cmd.arg("--json");
        }
        let out = cmd.arg("status").output().expect("run regionkv client status");
        assert!(
            out.status.success(),
            "client status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let text = status(false);
    assert!(text.contains("wal fsyncs") && text.contains("writes/entry"), "{text}");
    assert!(text.contains("schema 2,") && text.contains("state Serving"), "{text}");
    let json: serde_json::Value = serde_json::from_str(&status(true)).unwrap();
    let stores = json.as_array().expect("an array of stores");
    assert_eq!(stores.len(), 3, "{json}");
    let mut timed = 0;
    for s in stores {
        let m = &s["metrics"];
        assert!(m["regions"].as_u64() >= Some(1), "{s}");
        assert!(m["wal"]["fsyncs"].as_u64() > Some(0), "{s}");
        assert!(m["wal"]["group_records"]["p50"].as_u64() >= Some(1), "{s}");
        timed += m["write_latency_us"]["count"].as_u64().unwrap();
        // Status schema 2: the node's state and each replica's timeline.
        assert_eq!(
            (s["status_schema"].as_u64(), s["store_state"].as_str()),
            (Some(2), Some("Serving"))
        );
        assert!(s["replicas"].as_array().unwrap().iter().all(|r| r["timeline"].is_string()), "{s}");
    }
    // The store that took over from the killed leader acknowledged at least 100 writes.
    assert!(timed >= 100, "{timed} writes timed: {json}");
}

/// Runs `regionkv client ARGS`, which must succeed, and parses what it prints.
fn client_json(procs: &Procs, args: &[&str]) -> serde_json::Value {
    let out = procs.client(args);
    assert!(
        out.status.success(),
        "client {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `regionkv client txn list|recover|status` over the client protocol: every node
/// answers for the regions its store leads; a new cluster runs at the version that
/// has transactions, so no turn is deferred.
fn check_client_txn(procs: &Procs) {
    let json = |args: &[&str]| client_json(procs, args);
    let listed = json(&["txn", "list", "--in-doubt", "--older-than", "30s", "--json"]);
    assert!(listed.as_array().is_some_and(Vec::is_empty), "{listed}");
    let turns = json(&["txn", "recover", "--json"]);
    let turns = turns.as_array().expect("one turn per node");
    assert_eq!(turns.len(), 3, "{turns:?}");
    assert!(
        turns.iter().all(|t| t["deferred"].is_null() && t["errors"] == serde_json::json!([])),
        "{turns:?}"
    );
    let status = json(&["--json", "txn", "status", "5", "key-00000"]);
    assert!(status["outcome"].as_str().is_some_and(|o| o.starts_with("unknown")), "{status}");
}

/// `regionkv client dup add|list|status|pause|resume|remove` over the client
/// protocol: the directory's records through the nodes, and each region's state from
/// its leader's status (status tag 16).
fn check_client_dup(procs: &Procs, dir: &std::path::Path) {
    let run = |args: &[&str]| client_json(procs, args);
    let secret = dir.join("follower-secret");
    std::fs::write(&secret, "a follower cluster secret\n").unwrap();
    let secret = secret.to_str().unwrap();
    let add = ["--json", "dup", "add", "--to", "127.0.0.1:1,127.0.0.1:2", "--to-cluster-id", "9"];
    let added = run(&[&add[..], &["--to-secret-file", secret, "--no-seed"]].concat());
    let id = added["id"].as_u64().expect("an id");
    let id_text = id.to_string();
    let mut status = serde_json::Value::Null;
    wait_for("the duplication to ship its log", Duration::from_secs(20), || {
        status = run(&["--json", "dup", "status", &id_text]);
        status["status"] == "log"
    });
    assert_eq!(status["to"], "127.0.0.1:1,127.0.0.1:2", "{status}");
    let regions = status["regions"].as_array().unwrap();
    assert!(!regions.is_empty() && regions.iter().all(|r| r["stage"] == "prepare"), "{status}");
    run(&["--json", "dup", "pause", &id_text]);
    let listed = run(&["--json", "dup", "list"]);
    assert_eq!(listed[0]["status"], "paused", "{listed}");
    // A second pause is refused: the client says so and exits non-zero.
    assert!(!procs.client(&["dup", "pause", &id_text]).status.success());
    run(&["--json", "dup", "remove", &id_text]);
    wait_for("the duplication to be dropped", Duration::from_secs(20), || {
        run(&["--json", "dup", "list"]).as_array().is_some_and(Vec::is_empty)
    });
}

#[test]
fn acknowledged_writes_survive_a_sigkilled_node() {
    let dir = tempfile::tempdir().unwrap();
    let mut procs = Procs::new(dir.path(), 3);
    for id in 1..=3 {
        procs.start(id);
    }
    let client = Client::connect(&procs.addrs, CLUSTER, SECRET).unwrap();
    assert_eq!(client.stores().len(), 3);

    // One writer, in key order; a write is acknowledged when put returns Ok.
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let attempted = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let db = client.db().with_deadline(Duration::from_secs(15));
        let (acked, attempted, stop) = (acked.clone(), attempted.clone(), stop.clone());
        std::thread::spawn(move || {
            for i in 0..KEYS_MAX {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                attempted.store(i + 1, Ordering::SeqCst);
                if db.put(key(i), format!("value-{i}")).is_ok() {
                    acked.lock().insert(i);
                }
            }
        })
    };
    let acked_after = |from: usize| acked.lock().range(from..).count();
    wait_for("100 acknowledged writes", Duration::from_secs(20), || acked_after(0) >= 100);

    // SIGKILL the node that leads the first region, while the writer goes on.
    let victim = client
        .regions()
        .ok()
        .and_then(|r| r.first().and_then(|i| i.leader))
        .map_or(2, |s| s.0 as usize);
    let killed_at = attempted.load(Ordering::SeqCst);
    procs.kill(victim);
    wait_for("100 writes after the kill", Duration::from_secs(30), || {
        acked_after(killed_at) >= 100
    });
    let restarted_at = attempted.load(Ordering::SeqCst);
    procs.start(victim);
    wait_for("50 writes after the restart", Duration::from_secs(30), || {
        acked_after(restarted_at) >= 50
    });
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    let acked: Vec<usize> = acked.lock().iter().copied().collect();
    let written = attempted.load(Ordering::SeqCst);
    assert!(
        acked.len() >= 250 && written < KEYS_MAX,
        "{} of {written} writes acknowledged",
        acked.len()
    );

    // P1 on every replica: each node's own store holds every acknowledged write (the
    // restarted one once it has caught up).
    for id in 1..=3u64 {
        wait_for(
            &format!("store {id} to hold every acknowledged write"),
            Duration::from_secs(30),
            || {
                client.local_scan(StoreId(id), b"key-", None, 2 * KEYS_MAX).is_ok_and(|rows| {
                    let keys: BTreeSet<String> =
                        rows.iter().map(|(k, _)| String::from_utf8_lossy(k).into_owned()).collect();
                    acked.iter().all(|&i| keys.contains(&key(i)))
                })
            },
        );
    }
    // And reads through every node (a client that knows only that node) see them all.
    for addr in &procs.addrs {
        let db = Client::connect(&[*addr], CLUSTER, SECRET).unwrap().db();
        let rows = db.scan(b"key-".., 2 * KEYS_MAX).unwrap();
        let got: std::collections::BTreeMap<String, String> = rows
            .iter()
            .map(|(k, v)| {
                (String::from_utf8_lossy(k).into_owned(), String::from_utf8_lossy(v).into_owned())
            })
            .collect();
        for &i in &acked {
            assert_eq!(
                got.get(&key(i)).map(String::as_str),
                Some(format!("value-{i}").as_str()),
                "through {addr}"
            );
        }
    }

    check_client_status(&procs);
    check_client_txn(&procs);
    check_client_dup(&procs, dir.path());

    // Closing stdin stops each node cleanly.
    client.close();
    procs.stop_all_by_stdin();
}

/// S1 as the README tells it: a node whose data dir was wiped refuses to start without
/// `--join`; started with `--join`, it is replaced with `regionkv client store remove`
/// and `store add`, and then holds every write.
#[test]
fn a_wiped_node_is_replaced_with_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let mut procs = Procs::new(dir.path(), 3);
    for id in 1..=3 {
        procs.start(id);
    }
    let client = Client::connect(&procs.addrs, CLUSTER, SECRET).unwrap();
    let db = client.db();
    for i in 0..50 {
        db.put(key(i), format!("value-{i}")).unwrap();
    }
    // Node 3 loses its disk.
    procs.kill(3);
    std::fs::remove_dir_all(procs.data_dir(3)).unwrap();
    for i in 50..80 {
        db.put(key(i), format!("value-{i}")).unwrap();
    }
    // Restarted as it was, it refuses to start, and says how to join.
    let out = procs.node_command(3).stdin(Stdio::null()).output().expect("run regionkv node");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a wiped node started without --join: {stderr}");
    assert!(stderr.contains("--join") && stderr.contains("store add"), "{stderr}");
    // The replacement, as the README shows it.
    procs.join(3);
    let removed = procs.client(&["store", "remove", "3"]);
    assert!(removed.status.success(), "{}", String::from_utf8_lossy(&removed.stderr));
    let addr = procs.addrs[2].to_string();
    let added = procs.client(&["--json", "store", "add", "3", &addr]);
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    let regions: serde_json::Value = serde_json::from_slice(&added.stdout).unwrap();
    for r in regions.as_array().expect("the regions") {
        assert!(r["stores"].as_array().unwrap().contains(&serde_json::json!(3)), "{r}");
    }
    wait_for("store 3 to hold every write", Duration::from_secs(30), || {
        client.local_scan(StoreId(3), b"key-", None, 1000).is_ok_and(|rows| rows.len() == 80)
    });
    client.close();
    procs.stop_all_by_stdin();
}
