//! `regionkv client`: one request to a running cluster over the client protocol,
//! printed as text or JSON.

use std::ops::Bound;

use regionkv::{
    Client, ClientOptions, ClusterId, HistogramSnapshot, Region, RegionId, StoreId, StoreMetrics,
    StoreStatus, UpgradeStatus,
};

use crate::args::{ClientArgs, ClientOp, HealthOp, StoreOp, TxnOp, UpgradeOp, read_secret};
use crate::health_cmd::{audit_output, report_output};

fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn region_json(r: &Region) -> serde_json::Value {
    serde_json::json!({
        "id": r.id.0,
        "start": show(&r.start),
        "end": r.end.as_deref().map(show),
        "version": r.epoch.version,
        "conf_ver": r.epoch.conf_ver,
        "stores": r.peers.iter().map(|p| p.store.0).collect::<Vec<_>>(),
    })
}

fn region_line(r: &Region) -> String {
    let end = r.end.as_deref().map_or_else(|| "+inf".to_string(), |e| format!("{:?}", show(e)));
    format!(
        "region {} [{:?}, {end}) epoch {}/{}",
        r.id,
        show(&r.start),
        r.epoch.version,
        r.epoch.conf_ver
    )
}

/// A latency or size distribution as JSON: count, mean, p50, p99, max.
fn histogram_json(h: &HistogramSnapshot) -> serde_json::Value {
    serde_json::json!({
        "count": h.count(),
        "mean": h.mean(),
        "p50": h.p50(),
        "p99": h.p99(),
        "max": h.max(),
    })
}

fn metrics_json(m: &StoreMetrics) -> serde_json::Value {
    serde_json::json!({
        "regions": m.regions,
        "leaders": m.leaders,
        "hibernating": m.hibernating,
        "applied_lag_total": m.applied_lag_total,
        "applied_lag_max": m.applied_lag_max,
        "write_latency_us": histogram_json(&m.write_latency_us),
        "writes_proposed": m.writes_proposed,
        "entries_proposed": m.entries_proposed,
        "writes_per_entry": m.writes_per_entry(),
        "apply_rounds": m.apply.rounds,
        "wal": {
            "records": m.wal.records,
            "groups": m.wal.groups,
            "fsyncs": m.wal.fsyncs,
            "bytes_written": m.wal.bytes_written,
            "fsync_latency_us": histogram_json(&m.wal.fsync_latency_us),
            "group_records": histogram_json(&m.wal.group_records),
        },
    })
}

fn print_metrics(m: &StoreMetrics) {
    let (w, f, g) = (&m.write_latency_us, &m.wal.fsync_latency_us, &m.wal.group_records);
    println!(
        "  regions {} leaders {} hibernating {} applied lag total {} max {}",
        m.regions, m.leaders, m.hibernating, m.applied_lag_total, m.applied_lag_max
    );
    println!(
        "  writes {} latency us p50 {} p99 {} max {}; {} entries ({:.1} writes/entry)",
        w.count(),
        w.p50(),
        w.p99(),
        w.max(),
        m.entries_proposed,
        m.writes_per_entry()
    );
    println!(
        "  wal fsyncs {} latency us p50 {} p99 {} max {}; groups {} records/group p50 {} max {}",
        m.wal.fsyncs,
        f.p50(),
        f.p99(),
        f.max(),
        m.wal.groups,
        g.p50(),
        g.max()
    );
}

/// Prints a store's schema-2 report line: version, state, disk (or that an older node
/// did not report them).
fn print_store_report(s: &StoreStatus) {
    let Some(schema) = s.status_schema else {
        println!("  state: not reported (a node of status schema 1)");
        return;
    };
    let unknown = || "unknown".to_owned();
    let mib = |b: Option<u64>| b.map_or_else(unknown, |b| format!("{} MiB", b >> 20));
    let capacity = s.capacity.unwrap_or_default();
    println!(
        "  schema {schema}, version {}, state {}, disk {} free of {}, memtable {}",
        s.binary_version.clone().unwrap_or_else(unknown),
        s.store_state.map_or_else(unknown, |st| format!("{st:?}")),
        mib(capacity.disk_available_bytes),
        mib(capacity.disk_total_bytes),
        mib(capacity.memtable_bytes),
    );
    if let Some(f) = &s.failure {
        println!("  failure: {f}");
    }
}

/// Prints every store's replicas and metrics (unless `json`); returns them as JSON.
fn status_output(stores: &[StoreStatus], json: bool) -> serde_json::Value {
    if !json {
        for s in stores {
            println!("store {} ({} replicas)", s.store, s.peers.len());
            print_store_report(s);
            for p in &s.peers {
                println!(
                    "  region {} {:?} term {} commit {} applied {} last {}{}",
                    p.region.id,
                    p.role,
                    p.term,
                    p.commit,
                    p.applied,
                    p.last_index,
                    if p.hibernated { " hibernated" } else { "" }
                );
            }
            match &s.metrics {
                Some(m) => print_metrics(m),
                None => println!("  metrics: not reported (an older node)"),
            }
        }
    }
    serde_json::json!(
        stores
            .iter()
            .map(|s| serde_json::json!({
                "store": s.store.0,
                "replicas": s.peers.iter().map(|p| serde_json::json!({
                    "region": p.region.id.0,
                    "role": format!("{:?}", p.role),
                    "term": p.term,
                    "commit": p.commit,
                    "applied": p.applied,
                    "last_index": p.last_index,
                    "hibernated": p.hibernated,
                    // Status schema 2; null: not reported (an older node).
                    "reported_role": format!("{:?}", p.reported_role),
                    "first_index": p.first_index,
                    "timeline": p.timeline.map(|t| format!("{t:?}")),
                    "merge_pending": p.merge_pending,
                    "is_learner": p.is_learner,
                    "halted": p.halted,
                    "image_hash": p.image_hash.map(|(index, hash)| serde_json::json!({
                        "index": index, "hash": hash,
                    })),
                    "progress": p.progress.as_ref().map(|ps| ps.iter().map(|f| serde_json::json!({
                        "peer": f.peer.0,
                        "matched": f.matched,
                        "state": format!("{:?}", f.state),
                        "recent_active": f.recent_active,
                        "ticks_since_heard": f.ticks_since_heard,
                    })).collect::<Vec<_>>()),
                })).collect::<Vec<_>>(),
                "metrics": s.metrics.as_ref().map(metrics_json),
                "status_schema": s.status_schema,
                "binary_version": s.binary_version,
                "boot_id": s.boot_id,
                "report_seq": s.report_seq,
                "store_state": s.store_state.map(|st| format!("{st:?}")),
                "failure": s.failure,
                "capacity": s.capacity.map(|c| serde_json::json!({
                    "disk_total_bytes": c.disk_total_bytes,
                    "disk_available_bytes": c.disk_available_bytes,
                    "memtable_bytes": c.memtable_bytes,
                })),
                "peer_set_complete": s.peer_set_complete,
            }))
            .collect::<Vec<_>>()
    )
}

/// Adds or removes a store, or adds a member; prints the outcome (unless `json`) and
/// returns it as JSON.
fn store_output(
    client: &Client,
    op: &StoreOp,
    json: bool,
) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let (what, regions) = match op {
        StoreOp::Add { id, addr } => ("added to", client.add_store(StoreId(*id), *addr)?),
        StoreOp::Remove { id } => ("removed from", client.remove_store(StoreId(*id))?),
        StoreOp::AddMember { id, addr } => {
            client.add_member(StoreId(*id), *addr)?;
            if !json {
                println!("store {id} at {addr} is a member (of no region yet)");
            }
            return Ok(serde_json::json!({"ok": true, "store": id, "addr": addr.to_string()}));
        }
    };
    if !json {
        println!("store {what} {} regions (the directory's included):", regions.len());
        for r in &regions {
            let stores: Vec<String> = r.peers.iter().map(|p| p.store.to_string()).collect();
            println!("{} stores [{}]", region_line(r), stores.join(", "));
        }
    }
    Ok(serde_json::json!(regions.iter().map(region_json).collect::<Vec<_>>()))
}

/// Prints the cluster version and every store's report (unless `json`); returns them
/// as JSON. A store that reports nothing is shown as such (not upgraded), never as 0.
fn upgrade_output(status: &UpgradeStatus, json: bool) -> serde_json::Value {
    if !json {
        println!("active cluster version {}", status.active);
        for s in &status.stores {
            let shown = |v: Option<u32>| v.map_or_else(|| "not reported".into(), |v| v.to_string());
            println!(
                "  store {}: runs at {}, supports up to {}",
                s.store,
                shown(s.active),
                shown(s.max)
            );
        }
    }
    serde_json::json!({
        "active": status.active,
        "stores": status.stores.iter().map(|s| serde_json::json!({
            "store": s.store.0,
            "active": s.active,
            "max": s.max,
        })).collect::<Vec<_>>(),
    })
}

/// `regionkv client upgrade status|finalize`; `json` is the client's own flag.
fn run_upgrade(
    client: &Client,
    op: UpgradeOp,
    json: bool,
) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    Ok(match op {
        UpgradeOp::Status { json: local } => {
            let out = upgrade_output(&client.upgrade_status()?, json || local);
            if local && !json {
                println!("{}", serde_json::to_string_pretty(&out)?);
            }
            out
        }
        UpgradeOp::Finalize { to } => {
            let active = client.finalize_upgrade(to)?;
            if !json {
                println!("active cluster version {active}");
            }
            serde_json::json!({"active": active})
        }
    })
}

pub(crate) fn run_client(args: ClientArgs) -> Result<(), Box<dyn std::error::Error>> {
    let secret = read_secret(args.secret.secret, args.secret.secret_file)?;
    let options = ClientOptions::insecure(args.insecure);
    let client = Client::connect_with(&args.addr, ClusterId(args.cluster_id), secret, &options)?;
    let db = client.db();
    // `--json` before the subcommand, or after `health` or `health audit`.
    let json = args.json
        || matches!(
            args.op,
            ClientOp::Health { json: true, .. }
                | ClientOp::Health { what: Some(HealthOp::Audit { json: true }), .. }
                | ClientOp::Txn {
                    op: TxnOp::List { json: true, .. } | TxnOp::Recover { json: true, .. }
                }
        );
    let out = match args.op {
        ClientOp::Put { key, value } => {
            db.put(&key, &value)?;
            serde_json::json!({"ok": true})
        }
        ClientOp::Delete { key } => {
            db.delete(&key)?;
            serde_json::json!({"ok": true})
        }
        ClientOp::Get { key } => {
            let value = db.get(&key)?;
            if !json {
                match &value {
                    Some(v) => println!("{}", show(v)),
                    None => println!("(not found)"),
                }
            }
            serde_json::json!({"key": key, "value": value.as_deref().map(show)})
        }
        ClientOp::Scan { start, end, limit } => {
            let end = end.as_ref().map_or(Bound::Unbounded, Bound::Excluded);
            let rows = db.scan((Bound::Included(&start), end), limit)?;
            if !json {
                for (k, v) in &rows {
                    println!("{}\t{}", show(k), show(v));
                }
            }
            serde_json::json!(
                rows.iter().map(|(k, v)| serde_json::json!([show(k), show(v)])).collect::<Vec<_>>()
            )
        }
        ClientOp::Split { key } => {
            let parts = client.split(&key)?;
            if !json {
                for r in &parts {
                    println!("{}", region_line(r));
                }
            }
            serde_json::json!(parts.iter().map(region_json).collect::<Vec<_>>())
        }
        ClientOp::Merge { left, right } => {
            let merged = client.merge(RegionId(left), RegionId(right))?;
            if !json {
                println!("{}", region_line(&merged));
            }
            region_json(&merged)
        }
        ClientOp::Regions => {
            let regions = client.regions()?;
            if !json {
                for info in &regions {
                    let leader = info.leader.map_or_else(|| "none".to_string(), |l| l.to_string());
                    println!("{} leader store {leader}", region_line(&info.region));
                }
            }
            serde_json::json!(
                regions
                    .iter()
                    .map(|i| {
                        let mut v = region_json(&i.region);
                        v["leader"] = serde_json::json!(i.leader.map(|l| l.0));
                        v
                    })
                    .collect::<Vec<_>>()
            )
        }
        ClientOp::Status => status_output(&client.status(), json),
        ClientOp::Health { what: None, .. } => report_output(&client.health()?, json),
        ClientOp::Health { what: Some(HealthOp::Audit { .. }), .. } => {
            audit_output(&client.health_audit()?, json)
        }
        ClientOp::Store { op } => store_output(&client, &op, json)?,
        ClientOp::Upgrade { op } => run_upgrade(&client, op, json)?,
        ClientOp::Txn { op } => crate::txn_cmd::run_txn(&client, op, json)?,
        ClientOp::Dup { op } => crate::dup_cmd::run_dup(&db, op, json)?,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    client.close();
    Ok(())
}
