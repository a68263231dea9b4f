//! The health monitor as an operator meets it: three `regionkv node` processes with
//! shortened health timeouts and a fourth joined as a spare
//! (`regionkv client store add-member`); node 3 is killed with SIGKILL;
//! `regionkv client health` reports it down, then the replacement of its replicas on
//! store 4 is done, and `regionkv client health audit` shows each repair.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{CLUSTER, Procs, free_addrs, wait_for};

const HEALTH: &[&str] = &["--health-down-after", "1", "--health-dead-after", "3"];
const WAIT: Duration = Duration::from_secs(60);

/// The spare's process, killed when dropped.
struct Spare(Child);

impl Drop for Spare {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn json(procs: &Procs, args: &[&str]) -> Option<serde_json::Value> {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = procs.client(&all);
    out.status.success().then(|| serde_json::from_slice(&out.stdout).ok()).flatten()
}

fn text(procs: &Procs, args: &[&str]) -> String {
    let out = procs.client(args);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn start_spare(procs: &Procs) -> (Spare, String) {
    let addr = free_addrs(1)[0].to_string();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_regionkv"));
    cmd.arg("node")
        .args(["--id", "4", "--listen", &addr])
        .arg("--data-dir")
        .arg(procs.dir.join("data-4"))
        .args(["--cluster-id", &CLUSTER.0.to_string()])
        .arg("--secret-file")
        .arg(procs.dir.join("secret"))
        .args(["--tick-interval-ms", "20", "--stop-on-stdin-eof", "--join"])
        .args(HEALTH);
    for (i, a) in procs.addrs.iter().enumerate() {
        cmd.args(["--peer", &format!("{}={a}", i + 1)]);
    }
    let log = std::fs::File::create(procs.dir.join("node-4.log")).unwrap();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("start the spare");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert!(line.contains("listening"), "the spare did not start: {line:?}");
    (Spare(child), addr)
}

fn regions_without_3_with_4(procs: &Procs) -> bool {
    json(procs, &["regions"]).is_some_and(|v| {
        v.as_array().is_some_and(|regions| {
            !regions.is_empty()
                && regions.iter().all(|r| {
                    let stores: Vec<u64> = r["stores"]
                        .as_array()
                        .map(|s| s.iter().filter_map(serde_json::Value::as_u64).collect())
                        .unwrap_or_default();
                    stores.len() == 3 && !stores.contains(&3) && stores.contains(&4)
                })
        })
    })
}

#[test]
fn client_health_shows_a_killed_node_down_then_its_replicas_replaced_on_the_spare() {
    let dir = tempfile::tempdir().unwrap();
    let mut procs = Procs::new(dir.path(), 3);
    for id in 1..=3 {
        procs.start_with(id, HEALTH);
    }
    let (_spare, spare_addr) = start_spare(&procs);
    let added = text(&procs, &["store", "add-member", "4", &spare_addr]);
    assert!(added.contains("is a member"), "{added}");
    for i in 0..10 {
        text(&procs, &["put", &format!("k{i}"), &format!("v{i}")]);
    }

    wait_for("a monitor that hears four stores", WAIT, || {
        json(&procs, &["health"]).is_some_and(|h| {
            h["stores"]
                .as_array()
                .is_some_and(|s| s.iter().filter(|s| !s["status_schema"].is_null()).count() == 4)
        })
    });
    std::thread::sleep(Duration::from_secs(2));
    let healthy = text(&procs, &["health"]);
    assert!(healthy.contains("no problem detected"), "{healthy}");
    assert!(text(&procs, &["health", "audit"]).contains("no repair was made"));

    procs.kill(3);
    wait_for("store 3 reported down", WAIT, || {
        json(&procs, &["health"]).is_some_and(|h| {
            h["detections"].as_array().is_some_and(|d| {
                d.iter().any(|d| d["analysis"] == "store-down" && d["subject"]["store"] == 3)
            })
        })
    });
    let down = text(&procs, &["health"]);
    assert!(down.contains("store-down on store 3"), "{down}");

    let done = |audit: &serde_json::Value, region: u64, event: &str| {
        audit.as_array().is_some_and(|entries| {
            entries.iter().any(|e| {
                e["repair"]["region"] == region
                    && e["repair"]["kind"] == "replace-replica"
                    && e["repair"]["remove"] == 3
                    && e["event"].as_str().is_some_and(|s| s.starts_with(event))
            })
        })
    };
    wait_for("store 3's replicas replaced on store 4, each repair done", WAIT, || {
        regions_without_3_with_4(&procs)
            && json(&procs, &["health", "audit"]).is_some_and(|audit| {
                [0, 1].iter().all(|&r| done(&audit, r, "started") && done(&audit, r, "done"))
            })
    });
    let audit = text(&procs, &["health", "audit"]);
    assert!(audit.contains("replace-replica region 0, off store 3 (for store-dead)"), "{audit}");
    for i in 0..10 {
        assert_eq!(text(&procs, &["get", &format!("k{i}")]).trim(), format!("v{i}"));
    }
}
