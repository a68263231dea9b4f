//! Helpers shared by the simulator tests of regions: a routing client, linearizable
//! scans over every region, and waiting for the stores to agree.

#![allow(dead_code, reason = "each test file uses its own subset")]

pub mod bank;
pub mod two_regions;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use regionkv_engine::{Epoch, Region, RegionId};
use regionkv_raft::directory::{DIRECTORY, DirCmd, DirResult};
use regionkv_raft::merge_driver::RegionAdmin;
use regionkv_raft::sim::{SimCluster, SimConfig};
use regionkv_raft::{AdminCmd, AdminResult, Error, Op, Query, QueryResult};

pub const R1: RegionId = RegionId(1);
pub const SECOND: Duration = Duration::from_secs(1);

pub fn cluster(seed: u64) -> SimCluster {
    let mut c = SimCluster::new(SimConfig::new(seed)).unwrap();
    c.wait_leader(R1, 10 * SECOND).expect("a leader");
    c
}

/// The newest region containing `key` that any running store knows (the cluster
/// directory, region 0, holds no user key).
pub fn region_for(c: &SimCluster, key: &[u8]) -> Option<Region> {
    let mut best: Option<Region> = None;
    for store in c.store_ids() {
        for s in c.status(store) {
            if s.initialized
                && s.region.id != DIRECTORY
                && s.region.contains(key)
                && best.as_ref().is_none_or(|b| s.region.epoch.version > b.epoch.version)
            {
                best = Some(s.region);
            }
        }
    }
    best
}

/// A client: routes by key, retries retryable errors until `max`. True if
/// acknowledged.
pub fn put(c: &mut SimCluster, key: &str, value: &str, max: Duration) -> bool {
    let deadline = c.now() + max;
    let op = Op::Put { key: Bytes::from(key.to_owned()), value: Bytes::from(value.to_owned()) };
    while c.now() < deadline {
        let Some(region) = region_for(c, key.as_bytes()) else {
            c.run_for(Duration::from_millis(20));
            continue;
        };
        let Some(leader) = c.wait_leader(region.id, SECOND) else { continue };
        let pending = c.write(leader, region.id, vec![op.clone()]);
        match c.wait(&pending, Duration::from_millis(500)) {
            Some(Ok(())) => return true,
            Some(Err(e)) if e.is_retryable() => c.run_for(Duration::from_millis(20)),
            Some(Err(e)) => panic!("unexpected write error: {e}"),
            None => {}
        }
    }
    false
}

/// Every key of every region, read through each region's leader (linearizable).
pub fn scan_all(c: &mut SimCluster) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut start = Vec::new();
    loop {
        let region = loop {
            if let Some(r) = region_for(c, &start) {
                break r;
            }
            c.run_for(Duration::from_millis(20));
        };
        let Some(leader) = c.wait_leader(region.id, 10 * SECOND) else {
            panic!("region {} has no leader", region.id);
        };
        let query = Query::Scan {
            start: Bytes::from(start.clone()),
            end: None,
            limit: usize::MAX,
            read_ts: None,
        };
        let pending = c.read(leader, region.id, query);
        match c.wait(&pending, SECOND) {
            Some(Ok(QueryResult::Rows(page))) => {
                for (k, v) in page.rows {
                    let k = String::from_utf8(k.to_vec()).unwrap();
                    assert!(region.contains(k.as_bytes()), "region {} returned {k}", region.id);
                    let v = String::from_utf8(v.to_vec()).unwrap();
                    assert!(out.insert(k, v).is_none(), "a key came back twice");
                }
                if let Some(resume) = page.resume {
                    // Capped by the store: the rest of the region from where it stopped.
                    start = resume.to_vec();
                    continue;
                }
            }
            Some(Err(e)) if e.is_retryable() => {
                c.run_for(Duration::from_millis(20));
                continue;
            }
            other => panic!("scan failed: {:?}", other.map(|r| r.map_err(|e| e.to_string()))),
        }
        match region.end {
            Some(end) => start = end,
            None => return out,
        }
    }
}

/// Runs until every running store hosts the same regions (ids, ranges, epochs), each
/// fully applied; returns them (the user regions: the directory is left out).
pub fn converge(c: &mut SimCluster) -> Vec<Region> {
    let settled = c.run_until(30 * SECOND, |c| {
        let views: Vec<Vec<(Region, u64, u64)>> = c
            .store_ids()
            .into_iter()
            .filter(|s| c.is_running(*s))
            .map(|s| {
                c.status(s)
                    .into_iter()
                    .filter(|p| p.initialized && p.region.id != DIRECTORY)
                    .map(|p| (p.region, p.commit, p.applied))
                    .collect()
            })
            .collect();
        views.windows(2).all(|w| w[0] == w[1])
            && views[0].iter().all(|(_, commit, applied)| commit == applied)
    });
    if !settled {
        for store in c.store_ids() {
            let view: Vec<_> = c
                .status(store)
                .into_iter()
                .map(|p| {
                    (
                        p.region.id.0,
                        p.region.epoch.version,
                        p.role,
                        p.commit,
                        p.applied,
                        p.initialized,
                    )
                })
                .collect();
            eprintln!("store {store} running {}: {view:?}", c.is_running(store));
        }
    }
    assert!(settled, "stores did not converge on the same regions");
    let store = c.store_ids().into_iter().find(|s| c.is_running(*s)).unwrap();
    let mut regions: Vec<Region> = c
        .status(store)
        .into_iter()
        .filter(|p| p.region.id != DIRECTORY)
        .map(|p| p.region)
        .collect();
    regions.sort_by(|a, b| a.start.cmp(&b.start));
    for w in regions.windows(2) {
        assert_eq!(w[0].end.as_ref(), Some(&w[1].start), "regions partition the key space");
    }
    assert!(regions[0].start.is_empty() && regions.last().unwrap().end.is_none());
    regions
}

/// True if the leader of merge source `region` sees every replica holding the prepare.
pub fn all_matched(c: &SimCluster, region: RegionId) -> bool {
    c.leader(region).is_some_and(|l| c.merge_status(l, region).is_ok_and(|s| s.all_matched))
}

pub fn split(c: &mut SimCluster, region: RegionId, keys: &[&str]) -> Result<Vec<Region>, Error> {
    let new_ids = keys.iter().map(|_| RegionId(c.new_id())).collect();
    let split_keys = keys.iter().map(|k| k.as_bytes().to_vec()).collect();
    let epoch = region_epoch(c, region);
    match RegionAdmin::admin(c, region, epoch, AdminCmd::Split { split_keys, new_ids })? {
        AdminResult::Split(parts) => Ok(parts),
        other => panic!("split answered {other:?}"),
    }
}

/// Splits `region` at user key `user`'s lock key (the transactional keyspace), and
/// waits until every store agrees.
pub fn split_at_lock_key(c: &mut SimCluster, region: RegionId, user: &str) {
    let epoch = region_epoch(c, region);
    let new_ids = vec![RegionId(c.new_id())];
    let split_keys = vec![regionkv_raft::txn::mvcc::lock_key(user.as_bytes()).to_vec()];
    RegionAdmin::admin(c, region, epoch, AdminCmd::Split { split_keys, new_ids })
        .expect("a split at a lock key");
    converge(c);
}

pub fn region_epoch(c: &mut SimCluster, region: RegionId) -> Epoch {
    RegionAdmin::merge_status(c, region).expect("region has a leader").region.epoch
}

pub fn write_keys(
    c: &mut SimCluster,
    model: &mut BTreeMap<String, String>,
    keys: &[String],
    tag: &str,
) {
    for k in keys {
        let v = format!("{k}-{tag}");
        assert!(put(c, k, &v, 10 * SECOND), "write of {k} not acknowledged");
        model.insert(k.clone(), v);
    }
}

pub fn letters(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{}{:02}", (b'a' + (i % 26) as u8) as char, i)).collect()
}

/// Runs until every running store with a replica of `region` has the same view of it,
/// fully applied; returns it.
pub fn converge_region(c: &mut SimCluster, region: RegionId) -> Region {
    let settled = c.run_until(30 * SECOND, |c| {
        let views: Vec<(Region, u64, u64)> = c
            .store_ids()
            .into_iter()
            .filter(|s| c.is_running(*s))
            .flat_map(|s| c.status(s))
            .filter(|p| p.region.id == region && p.initialized)
            .map(|p| (p.region, p.commit, p.applied))
            .collect();
        !views.is_empty()
            && views.windows(2).all(|w| w[0] == w[1])
            && views.iter().all(|(_, commit, applied)| commit == applied)
    });
    assert!(settled, "the replicas of region {region} did not converge");
    let store = c.store_ids().into_iter().find(|s| c.is_running(*s)).unwrap();
    c.region(store, region).expect("hosted")
}

/// The key a forged checkpoint of `header` holds (see [`crafted_snapshot`]).
pub fn forged_key(header: &regionkv_engine::Region) -> Vec<u8> {
    [header.start.as_slice(), b"\x01evil"].concat()
}

/// A snapshot of `region` at (`index`, `term`) from its leader to `to`'s replica, whose
/// checkpoint holds `header` (region and applied index) with one key, [`forged_key`].
pub fn crafted_snapshot(
    c: &SimCluster,
    region: RegionId,
    to: regionkv_engine::StoreId,
    (index, term): (u64, u64),
    header: &regionkv_engine::Region,
    applied_index: u64,
) -> Vec<regionkv_raft::transport::Envelope> {
    use regionkv_raft::transport::{Body, Envelope, KeyRange, SnapshotChunk};
    let fs: std::sync::Arc<dyn regionkv_wal::fs::FileSystem> =
        std::sync::Arc::new(regionkv_wal::SimFs::new());
    let opts = regionkv_engine::EngineOptions::new(regionkv_engine::StoreId(99));
    let engine = regionkv_engine::Engine::open(fs, "/forged", opts).unwrap();
    engine.insert_region(header.clone()).unwrap();
    let mut round = engine.begin_round();
    round.prepare_for_region(header.id, header.epoch).unwrap();
    round.put(&forged_key(header), b"forged").unwrap();
    round.commit().unwrap();
    engine.checkpoint(header.id, applied_index).unwrap();
    let file = engine.latest_checkpoint(header.id).unwrap().unwrap();
    let leader = c.leader(region).unwrap();
    let current = c.region(leader, region).unwrap();
    let from = current.peers.iter().find(|p| p.store == leader).unwrap().id;
    let peer = current.peers.iter().find(|p| p.store == to).unwrap().id;
    let envelope = |body| Envelope {
        region,
        from: leader,
        to,
        epoch: Some(current.epoch),
        range: Some(KeyRange { start: current.start.clone(), end: current.end.clone() }),
        body,
    };
    let mut out: Vec<Envelope> = regionkv_engine::checkpoint::CheckpointChunks::new(&file, 4096)
        .map(|chunk| {
            envelope(Body::SnapshotChunk(SnapshotChunk {
                index,
                term,
                offset: chunk.offset,
                file_bytes: chunk.file_bytes,
                data: chunk.data,
            }))
        })
        .collect();
    let mut msg = raft::eraftpb::Message::default();
    msg.set_msg_type(raft::eraftpb::MessageType::MsgSnapshot);
    msg.from = from.0;
    msg.to = peer.0;
    msg.term = term;
    let meta = msg.mut_snapshot().mut_metadata();
    meta.index = index;
    meta.term = term;
    meta.mut_conf_state().voters = current.peers.iter().map(|p| p.id.0).collect();
    out.push(envelope(Body::Raft(msg)));
    out
}

/// The key a forged checkpoint of `header` held is nowhere: not in any running store's
/// engine.
pub fn no_forged_key(c: &SimCluster, header: &regionkv_engine::Region, tag: &str) {
    let key = forged_key(header);
    for store in c.store_ids() {
        if let Some(engine) = c.engine(store) {
            assert_eq!(engine.read_view().get(&key), None, "{tag}: store {store}");
        }
    }
}

/// A put of `k` to `v`.
pub fn put_op(k: &str, v: &str) -> Op {
    Op::Put { key: Bytes::from(k.to_owned()), value: Bytes::from(v.to_owned()) }
}

/// A client of region 1: routes to its leader, retries retryable errors, gives up
/// after `max`. True if acknowledged; false if the outcome is unknown.
pub fn write_r1(c: &mut SimCluster, ops: &[Op], max: Duration) -> bool {
    let deadline = c.now() + max;
    while c.now() < deadline {
        let Some(leader) = c.wait_leader(R1, deadline.saturating_sub(c.now())) else {
            return false;
        };
        let pending = c.write(leader, R1, ops.to_vec());
        match c.wait(&pending, Duration::from_millis(500)) {
            Some(Ok(())) => return true,
            Some(Err(e)) if e.is_retryable() => c.run_for(Duration::from_millis(20)),
            Some(Err(e)) => panic!("unexpected write error: {e}"),
            None => {} // no answer yet: may still apply; keep waiting on a new attempt
        }
    }
    false
}

/// Reads `key` of region 1 through its current leader, retrying until `max`.
pub fn read_r1(c: &mut SimCluster, key: &str, max: Duration) -> Option<Bytes> {
    let deadline = c.now() + max;
    while c.now() < deadline {
        let Some(leader) = c.wait_leader(R1, deadline.saturating_sub(c.now())) else { break };
        let pending =
            c.read(leader, R1, Query::Get { key: Bytes::from(key.to_owned()), read_ts: None });
        match c.wait(&pending, Duration::from_millis(500)) {
            Some(Ok(QueryResult::Value(v))) => return v,
            Some(Ok(other)) => panic!("unexpected read result {other:?}"),
            Some(Err(e)) if e.is_retryable() => c.run_for(Duration::from_millis(20)),
            Some(Err(e)) => panic!("unexpected read error: {e}"),
            None => {}
        }
    }
    panic!("no read of {key} within {max:?}");
}

/// Runs `cmd` on the directory's leader, retrying routing errors.
pub fn directory(c: &mut SimCluster, cmd: &DirCmd) -> Result<DirResult, Error> {
    let deadline = c.now() + 10 * SECOND;
    let mut last = Error::NotLeader { region: DIRECTORY, leader: None };
    while c.now() < deadline {
        let Some(leader) = c.wait_leader(DIRECTORY, SECOND) else { continue };
        let pending = c.directory(leader, cmd);
        match c.wait(&pending, SECOND) {
            Some(Err(e)) if e.is_retryable() => last = e,
            Some(result) => return result,
            None => {}
        }
        c.run_for(Duration::from_millis(20));
    }
    Err(last)
}

/// Sends a put of `key` to region 1 on a threaded `store`; the reply comes on the
/// returned channel.
pub fn send_put(
    store: &regionkv_raft::Store,
    key: &str,
) -> crossbeam_channel::Receiver<regionkv_raft::Result<()>> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    store.write(regionkv_raft::WriteRequest {
        region: R1,
        epoch: Epoch::INITIAL,
        ops: vec![Op::Put { key: Bytes::from(key.to_owned()), value: Bytes::from_static(b"v") }],
        session: None,
        reply: Box::new(move |r| {
            let _ = tx.send(r);
        }),
    });
    rx
}

/// The leader of the region holding `key`, waiting (in virtual time) until there is one.
pub fn leader_of(c: &mut SimCluster, key: &[u8]) -> (regionkv_engine::StoreId, RegionId) {
    loop {
        if let Some(region) = region_for(c, key)
            && let Some(leader) = c.wait_leader(region.id, SECOND)
        {
            return (leader, region.id);
        }
        c.run_for(Duration::from_millis(20));
    }
}

/// Sends a transaction command to the leader of `key`'s region; retries retryable
/// errors (and lost replies: every command is idempotent) until `max`.
pub fn txn_call(
    c: &mut SimCluster,
    key: &[u8],
    cmd: &regionkv_raft::TxnCmd,
    max: Duration,
) -> Result<regionkv_raft::TxnReply, Error> {
    let deadline = c.now() + max;
    let mut last = Error::Timeout { region: R1 };
    while c.now() < deadline {
        let (leader, region) = leader_of(c, key);
        let pending = c.txn(leader, region, cmd.clone());
        match c.wait(&pending, Duration::from_millis(500)) {
            Some(Err(e)) if e.is_retryable() => {
                last = e;
                c.run_for(Duration::from_millis(20));
            }
            Some(result) => return result,
            None => last = Error::Timeout { region },
        }
    }
    Err(last)
}
