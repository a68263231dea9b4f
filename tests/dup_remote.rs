//! Duplication to a follower cluster of three `Node`s over loopback TCP (the sink over
//! the client protocol, request 82): seeded, then the log streamed, the follower equal
//! to the source and a read-only standby of the range; a follower with another secret
//! breaks the duplication (`FollowerRejected`); an unreachable one is retried, its last
//! error reported; a follower whose nodes do not know the sink breaks it
//! (`FollowerTooOld`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use regionkv::layers::engine::dup::DupStage;
use regionkv::{
    BrokenReason, Client, Cluster, ClusterId, Db, DupReport, DupSpec, DupTarget, DuplicationStatus,
    Node, NodeConfig,
};

mod common;

const SECRET: &[u8] = b"the secret of the follower test cluster";
const CLUSTER: ClusterId = ClusterId(61);

fn source(dir: &std::path::Path) -> Cluster {
    Cluster::builder().dir(dir).stores(3).tick_interval(Duration::from_millis(10)).build().unwrap()
}

/// Three follower nodes (each configured by `tweak`), and a client of them.
fn followers(
    dir: &std::path::Path,
    tweak: impl Fn(&mut NodeConfig),
) -> (Vec<Node>, Vec<SocketAddr>, Client) {
    let addrs = common::free_addrs(3);
    let nodes: Vec<Node> = (1..=3)
        .map(|id| {
            let mut config = common::node_config(dir, id, &addrs, CLUSTER, SECRET);
            tweak(&mut config);
            Node::open(config).unwrap()
        })
        .collect();
    let client = Client::connect(&addrs, CLUSTER, SECRET).unwrap();
    (nodes, addrs, client)
}

fn remote(addrs: &[SocketAddr], secret: &[u8]) -> DupTarget {
    DupTarget::Remote {
        addrs: addrs.iter().map(ToString::to_string).collect(),
        cluster_id: CLUSTER.0,
        secret: secret.to_vec(),
    }
}

fn spec(start: &str, end: Option<&str>, target: DupTarget) -> DupSpec {
    DupSpec {
        start: start.as_bytes().to_vec(),
        end: end.map(|e| e.as_bytes().to_vec()),
        target,
        seed: true,
    }
}

/// Waits (up to 30 s) until `db`'s report of `dup_id` passes `done`; returns it.
fn wait_for(db: &Db, dup_id: u64, done: impl Fn(&DupReport) -> bool) -> DupReport {
    let start = Instant::now();
    loop {
        let report = db.duplication_status(Some(dup_id)).unwrap().remove(0);
        if done(&report) {
            return report;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "never reached: {report:#?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every key of `db` in `[start, end)`.
fn rows(db: &Db, start: &str, end: &str) -> Vec<(String, String)> {
    db.scan(start.as_bytes().to_vec()..end.as_bytes().to_vec(), usize::MAX)
        .unwrap()
        .into_iter()
        .map(|(k, v)| {
            (String::from_utf8(k.to_vec()).unwrap(), String::from_utf8(v.to_vec()).unwrap())
        })
        .collect()
}

#[test]
fn a_follower_of_nodes_over_tcp_is_seeded_then_streamed() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let source = source(a_dir.path());
    let (_nodes, addrs, client) = followers(b_dir.path(), |_| {});
    let (a, b) = (source.db(), client.db());
    source.split_keys(&["m", "t"]).unwrap();
    client.split("p").unwrap();
    for i in 0..40 {
        a.put(format!("k{i:02}"), format!("v{i}")).unwrap();
        a.put(format!("r{i:02}"), format!("v{i}")).unwrap();
    }
    a.delete("k07").unwrap();
    // The follower's own key in the range: the seed wipes it.
    b.put("k99-stale", "x").unwrap();
    let id = a.add_duplication(spec("k", Some("s"), remote(&addrs, SECRET))).unwrap();
    wait_for(&a, id, |r| r.status == DuplicationStatus::Log);
    for i in 0..40 {
        a.put(format!("k{i:02}"), format!("w{i}")).unwrap();
        a.put(format!("q{i:02}"), format!("w{i}")).unwrap();
    }
    a.delete("r03").unwrap();
    let start = Instant::now();
    while rows(&b, "k", "s") != rows(&a, "k", "s") {
        assert!(start.elapsed() < Duration::from_secs(30), "the follower never caught up");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(b.get("k99-stale").unwrap().is_none(), "the seed wiped the range");
    // Outside the range nothing ships.
    a.put("t1", "1").unwrap();
    assert!(b.get("t1").unwrap().is_none());
    // The range is a read-only standby for the follower's clients.
    let refused = b.put("k01", "mine");
    assert!(
        matches!(
            refused,
            Err(regionkv::Error::Store(regionkv::StoreError::StandbyReadOnly { .. }))
        ),
        "{refused:?}"
    );
    assert_eq!(b.get("k01").unwrap().as_deref(), Some(&b"w1"[..]));
    let report = a.duplication_status(Some(id)).unwrap().remove(0);
    assert!(
        report
            .regions
            .iter()
            .all(|r| r.state.as_ref().is_some_and(|s| s.stage == DupStage::Streaming)),
        "{report:#?}"
    );
    let link = report.follower.expect("this process ships it");
    assert!(link.connected && link.last_error.is_none(), "{link:?}");

    // Another secret: the follower refuses the handshake, for good.
    let wrong = a
        .add_duplication(spec("a", Some("b"), remote(&addrs, b"not the follower's secret!")))
        .unwrap();
    let report = wait_for(&a, wrong, |r| r.status == DuplicationStatus::Broken);
    assert_eq!(report.broken, Some(BrokenReason::FollowerRejected), "{report:#?}");

    // Nobody listens: retried, never broken, the last error reported.
    let nowhere = common::free_addrs(1);
    let unreachable = a.add_duplication(spec("b", Some("c"), remote(&nowhere, SECRET))).unwrap();
    let report = wait_for(&a, unreachable, |r| {
        r.follower.as_ref().is_some_and(|l| l.failed_attempts >= 2 && l.last_error.is_some())
    });
    assert_eq!(report.status, DuplicationStatus::Prepare, "{report:#?}");
    assert!(!report.follower.unwrap().connected);
    // The first duplication streams on.
    a.put("k00", "after").unwrap();
    let start = Instant::now();
    while b.get("k00").unwrap().as_deref() != Some(&b"after"[..]) {
        assert!(start.elapsed() < Duration::from_secs(30), "the follower stopped streaming");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_follower_whose_nodes_do_not_know_the_sink_breaks_the_duplication() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let source = source(a_dir.path());
    // Nodes of a binary from before duplication's sink: they answer its request
    // `UnsupportedRequest`.
    let (_nodes, addrs, _client) = followers(b_dir.path(), |c| c.emulate_binary_max = Some(6));
    let a = source.db();
    a.put("k1", "v").unwrap();
    let id = a.add_duplication(spec("k", None, remote(&addrs, SECRET))).unwrap();
    let report = wait_for(&a, id, |r| r.status == DuplicationStatus::Broken);
    assert_eq!(report.broken, Some(BrokenReason::FollowerTooOld), "{report:#?}");
    // Broken, every region stops its entry: nothing ships or is retried any more.
    wait_for(&a, id, |r| r.regions.iter().all(|g| g.state.is_none()));
}
