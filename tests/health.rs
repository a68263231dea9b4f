//! The health monitor in `Node`s over TCP, through the client protocol: three
//! bootstrapped nodes and a fourth joined as a spare member (of no region). Healthy: no
//! detection, no repair. Node 3 killed: `StoreDown` is reported; past the dead timeout
//! `StoreDead`, and every region (the directory's group included) has its replica on
//! store 3 replaced on store 4, each audited as started and done; every acknowledged
//! write reads back.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use regionkv::health::{AnalysisCode, AuditEntry, HealthConfig, HealthReport, RepairKind, Subject};
use regionkv::{Client, ClusterId, Node, NodeConfig, Region, RegionId, StoreId};

mod common;

use common::free_addrs;

const SECRET: &[u8] = b"the secret of the health test cluster";
const CLUSTER: ClusterId = ClusterId(14);

fn health_config() -> HealthConfig {
    HealthConfig {
        replication_factor: 3,
        interval: Duration::from_millis(100),
        store_down_after: Duration::from_millis(1000),
        store_dead_after: Duration::from_millis(3000),
        ..HealthConfig::default()
    }
}

/// Node `id` of four; the first three are the cluster's first stores, the fourth joins.
fn config(dir: &std::path::Path, id: u64, addrs: &[SocketAddr]) -> NodeConfig {
    let mut config = NodeConfig::new(
        StoreId(id),
        dir.join(format!("node-{id}")),
        addrs[id as usize - 1],
        CLUSTER,
        SECRET.to_vec(),
    )
    .health(health_config());
    config.tick_interval = Duration::from_millis(20);
    for (i, addr) in addrs.iter().enumerate().take(3) {
        if i as u64 + 1 != id {
            config = config.peer(StoreId(i as u64 + 1), *addr);
        }
    }
    if id == 4 { config.join() } else { config.bootstrap() }
}

fn wait_for(what: &str, client: &Client, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(40);
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; health: {:#?}",
            client.health()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn detected(report: &HealthReport, code: AnalysisCode, store: u64) -> bool {
    report.detections.iter().any(|d| d.code == code && d.subject == Subject::Store(StoreId(store)))
}

/// Every region as the newest replica that answers knows it (the directory's included).
fn regions(client: &Client) -> BTreeMap<RegionId, Region> {
    let mut out: BTreeMap<RegionId, Region> = BTreeMap::new();
    for status in client.status() {
        for p in status.peers.into_iter().filter(|p| p.initialized) {
            let newer = out.get(&p.region.id).is_none_or(|held| {
                (p.region.epoch.version, p.region.epoch.conf_ver)
                    > (held.epoch.version, held.epoch.conf_ver)
            });
            if newer {
                out.insert(p.region.id, p.region);
            }
        }
    }
    out
}

fn replaced(region: &Region) -> bool {
    let stores: Vec<StoreId> = region.peers.iter().map(|p| p.store).collect();
    stores.len() == 3 && !stores.contains(&StoreId(3)) && stores.contains(&StoreId(4))
}

#[test]
fn a_killed_node_is_reported_down_then_its_replicas_move_to_the_spare()
-> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let addrs = free_addrs(4);
    let mut nodes: Vec<Node> =
        (1..=3).map(|id| Node::open(config(dir.path(), id, &addrs))).collect::<Result<_, _>>()?;
    let spare = Node::open(config(dir.path(), 4, &addrs))?;
    let client = Client::connect(&addrs[..3], CLUSTER, SECRET)?;
    client.add_member(StoreId(4), addrs[3])?;
    assert!(spare.status().peers.is_empty(), "a spare hosts nothing: {:?}", spare.status());
    let db = client.db();
    let mut written = 0;
    for _ in 0..40 {
        db.put(format!("key-{written:04}"), format!("v{written}"))?;
        written += 1;
    }

    // Healthy: the monitor hears every store, the spare included, and repairs nothing.
    wait_for("a monitor that hears four stores", &client, || {
        client.health().is_ok_and(|h| h.stores.iter().filter(|s| s.report.is_some()).count() == 4)
    });
    // One monitor: the node whose store leads the directory; the others say so.
    wait_for("exactly one node to run the monitor", &client, || {
        nodes.iter().filter(|n| n.health().is_some()).count() == 1
    });
    assert!(spare.health().is_none() && spare.health_audit().is_empty());
    std::thread::sleep(health_config().store_down_after * 2);
    let healthy = client.health()?;
    assert!(healthy.is_healthy(), "{:#?}", healthy.detections);
    assert!(healthy.planned.is_empty(), "{:?}", healthy.planned);
    assert!(client.health_audit()?.is_empty(), "no repair of a healthy cluster");
    let before = regions(&client);
    assert!(before.contains_key(&RegionId(0)) && before.len() >= 2, "{before:?}");

    // Node 3 dies.
    nodes.pop().expect("three nodes").kill();
    wait_for("store 3 reported down", &client, || {
        let ok = db.put(format!("key-{written:04}"), format!("v{written}")).is_ok();
        written += usize::from(ok);
        client.health().is_ok_and(|h| detected(&h, AnalysisCode::StoreDown, 3))
    });

    // Past the dead timeout: dead, and every region's replica on store 3 replaced,
    // each repair audited as started and done.
    let audited = |audit: &[AuditEntry], id: RegionId, event: &str| {
        audit.iter().any(|e| {
            e.repair.region == id
                && e.repair.kind == RepairKind::ReplaceReplica
                && e.repair.reason == AnalysisCode::StoreDead
                && e.repair.remove == Some(StoreId(3))
                && e.event.starts_with(event)
        })
    };
    wait_for("store 3's replicas replaced on store 4, each repair done", &client, || {
        let ok = db.put(format!("key-{written:04}"), format!("v{written}")).is_ok();
        written += usize::from(ok);
        let now = regions(&client);
        let audit = client.health_audit().unwrap_or_default();
        before.keys().all(|id| {
            now.get(id).is_some_and(replaced)
                && audited(&audit, *id, "started")
                && audited(&audit, *id, "done")
        })
    });
    let audit = client.health_audit()?;
    assert!(audit.iter().all(|e| e.repair.remove == Some(StoreId(3))), "{audit:#?}");

    // Every acknowledged write reads back, through the cluster and from the spare.
    for i in 0..written {
        assert_eq!(db.get(format!("key-{i:04}"))?.as_deref(), Some(format!("v{i}").as_bytes()));
    }
    wait_for("the spare to hold every write", &client, || {
        client.local_scan(StoreId(4), b"key-", None, 10_000).map_or(0, |rows| rows.len()) == written
    });
    client.close();
    spare.shutdown()?;
    for node in nodes {
        node.shutdown()?;
    }
    Ok(())
}
