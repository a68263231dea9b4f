//! Phase 5 of the demo: the health monitor. Three nodes over TCP on localhost and a
//! spare member (of no region); store 3 is killed and stays down past the dead
//! timeout (shortened here to seconds); the monitor, on the node that leads the
//! directory, reports it down, then replaces its replicas on the spare, one membership
//! change at a time; the audit says what it did; every acknowledged write reads back.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::time::{Duration, Instant};

use regionkv::health::{AnalysisCode, AuditEntry, HealthConfig, Subject};
use regionkv::{Client, ClusterId, Node, NodeConfig, StoreId};

use super::DemoError;
use crate::health_cmd::{audit_lines, report_lines};

const SECRET: &[u8] = b"the demo cluster's secret, 16+ bytes";
const CLUSTER: ClusterId = ClusterId(5);
/// Keys written before and while store 3 is down.
const KEYS: usize = 200;
/// The longest the demo waits for any one step.
const STEP_MAX: Duration = Duration::from_secs(60);

fn verify_err(e: impl std::fmt::Display) -> DemoError {
    DemoError::Verify(e.to_string())
}

fn health_config() -> HealthConfig {
    HealthConfig {
        replication_factor: 3,
        interval: Duration::from_millis(200),
        store_down_after: Duration::from_secs(1),
        store_dead_after: Duration::from_secs(3),
        ..HealthConfig::default()
    }
}

fn free_addrs(n: usize) -> Result<Vec<SocketAddr>, DemoError> {
    let listeners =
        (0..n).map(|_| TcpListener::bind("127.0.0.1:0")).collect::<Result<Vec<_>, _>>()?;
    Ok(listeners.iter().map(TcpListener::local_addr).collect::<Result<_, _>>()?)
}

/// Node `id`: 1 to 3 bootstrap the cluster, 4 joins it empty.
fn config(dir: &Path, id: u64, addrs: &[SocketAddr]) -> NodeConfig {
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

/// Waits (bounded) until `done` holds.
fn wait_for(what: &str, mut done: impl FnMut() -> bool) -> Result<(), DemoError> {
    let deadline = Instant::now() + STEP_MAX;
    while !done() {
        if Instant::now() > deadline {
            return Err(DemoError::Verify(format!("{what}: not within {STEP_MAX:?}")));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn print_lines(out: &mut dyn Write, lines: &[String]) -> std::io::Result<()> {
    for line in lines {
        writeln!(out, "     {line}")?;
    }
    Ok(())
}

/// True if every region (the directory's group included) has three replicas, none on
/// store 3 and one on store 4, as the stores that answer see them.
fn replaced(client: &Client) -> bool {
    let mut regions = std::collections::BTreeMap::new();
    for status in client.status() {
        for p in status.peers.into_iter().filter(|p| p.initialized) {
            let e = regions.entry(p.region.id).or_insert_with(|| p.region.clone());
            if (p.region.epoch.version, p.region.epoch.conf_ver)
                > (e.epoch.version, e.epoch.conf_ver)
            {
                *e = p.region;
            }
        }
    }
    !regions.is_empty()
        && regions.values().all(|r| {
            let stores: Vec<StoreId> = r.peers.iter().map(|p| p.store).collect();
            stores.len() == 3 && !stores.contains(&StoreId(3)) && stores.contains(&StoreId(4))
        })
}

/// True if the audit holds repairs and each one that started has ended.
fn every_repair_ended(audit: &[AuditEntry]) -> bool {
    let started = audit.iter().filter(|e| e.event == "started").count();
    let ended = audit.iter().filter(|e| e.event != "started").count();
    started > 0 && started == ended
}

/// Phase 5 (see the module docs).
pub(super) fn health_phase(dir: &Path, out: &mut dyn Write) -> Result<(), DemoError> {
    let addrs = free_addrs(4)?;
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(Node::open(config(dir, id, &addrs)).map_err(verify_err)?);
    }
    let spare = Node::open(config(dir, 4, &addrs)).map_err(verify_err)?;
    let client = Client::connect(&addrs[..3], CLUSTER, SECRET).map_err(verify_err)?;
    client.add_member(StoreId(4), addrs[3]).map_err(verify_err)?;
    let db = client.db();
    let mut written = 0;
    while written < KEYS / 2 {
        db.put(format!("health-{written:04}"), format!("v{written}")).map_err(verify_err)?;
        written += 1;
    }
    wait_for("a monitor that hears all four stores", || {
        client.health().is_ok_and(|h| h.stores.iter().filter(|s| s.report.is_some()).count() == 4)
    })?;
    let healthy = client.health().map_err(verify_err)?;
    writeln!(
        out,
        "   nodes 1-3 and spare node 4 (a member of no region) up; down after {:?}, dead after {:?}",
        health_config().store_down_after,
        health_config().store_dead_after
    )?;
    print_lines(out, &report_lines(&healthy))?;

    let killed = Instant::now();
    nodes.pop().ok_or_else(|| verify_err("no node 3"))?.kill();
    writeln!(out, "   node 3 killed")?;
    let mut down = None;
    wait_for("store 3 reported down", || {
        if written < KEYS && db.put(format!("health-{written:04}"), format!("v{written}")).is_ok() {
            written += 1;
        }
        down = client.health().ok().filter(|h| {
            h.detections.iter().any(|d| {
                d.code == AnalysisCode::StoreDown && d.subject == Subject::Store(StoreId(3))
            })
        });
        down.is_some()
    })?;
    writeln!(out, "   after {:.1} s, while it is down:", killed.elapsed().as_secs_f64())?;
    if let Some(report) = &down {
        print_lines(out, &report_lines(report))?;
    }
    wait_for("store 3's replicas replaced on store 4, each repair done", || {
        if written < KEYS && db.put(format!("health-{written:04}"), format!("v{written}")).is_ok() {
            written += 1;
        }
        replaced(&client) && client.health_audit().is_ok_and(|audit| every_repair_ended(&audit))
    })?;
    writeln!(
        out,
        "   after {:.1} s, store 3 is dead and every region's replica on it was replaced on store 4:",
        killed.elapsed().as_secs_f64()
    )?;
    print_lines(out, &audit_lines(&client.health_audit().map_err(verify_err)?))?;
    for i in 0..written {
        let value = db.get(format!("health-{i:04}")).map_err(verify_err)?;
        if value.as_deref() != Some(format!("v{i}").as_bytes()) {
            return Err(DemoError::Verify(format!("key health-{i:04} reads {value:?}")));
        }
    }
    wait_for("nothing more to repair", || {
        client.health().is_ok_and(|h| {
            h.planned.is_empty()
                && h.detections.iter().all(|d| !matches!(d.subject, Subject::Region(_)))
        })
    })?;
    let after = client.health().map_err(verify_err)?;
    writeln!(
        out,
        "   healthy: {written} acknowledged keys read back; every region has three live replicas; \
         nothing planned (store 3 is reported until its node is retired):"
    )?;
    print_lines(out, &report_lines(&after))?;
    client.close();
    spare.shutdown().map_err(verify_err)?;
    for node in nodes {
        node.shutdown().map_err(verify_err)?;
    }
    Ok(())
}
