//! Duplication, the follower side (`regionkv_raft::sink`): a follower region applies a
//! source region's seed and log exactly once by source index, across power cuts of
//! every store, follower splits and reseeds; sink keys are a read-only standby until
//! promoted.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use common::{R1, SECOND, converge, scan_all, split};
use regionkv_engine::{Epoch, RegionId, StoreId};
use regionkv_raft::Error;
use regionkv_raft::Op;
use regionkv_raft::merge_driver::{self, MergeOptions};
use regionkv_raft::sim::{SimCluster, SimConfig};
use regionkv_raft::sink::{SinkCmd, SinkEntryCmd, SinkOp, SinkResult};
use regionkv_wal::CrashMode;

const DUP: u64 = 0xD1;
const SOURCE: u64 = 77;

fn cluster(seed: u64) -> SimCluster {
    let mut config = SimConfig::new(seed);
    config.checkpoint_log_bytes = 4 << 10;
    let mut c = SimCluster::new(config).unwrap();
    c.wait_leader(R1, 10 * SECOND).expect("a leader");
    c
}

fn entry(cmd: SinkCmd) -> SinkEntryCmd {
    SinkEntryCmd { epoch: Epoch::INITIAL, dup_id: DUP, incarnation: 1, source_region: SOURCE, cmd }
}

/// Proposes `cmd` to `region`'s leader until it is applied or refused for good.
fn sink(c: &mut SimCluster, region: RegionId, cmd: &SinkCmd) -> Result<SinkResult, Error> {
    for _ in 0..50 {
        let Some(leader) = c.wait_leader(region, 5 * SECOND) else { continue };
        let pending = c.sink(leader, region, entry(cmd.clone()));
        match c.wait(&pending, 2 * SECOND) {
            Some(Err(e)) if e.is_retryable() => c.run_for(Duration::from_millis(50)),
            Some(result) => return result,
            None => {}
        }
    }
    panic!("{cmd:?} got no answer");
}

fn ops(first: u64, keys: &[&str], tag: &str) -> Vec<SinkOp> {
    (keys.iter().enumerate())
        .map(|(i, k)| SinkOp {
            source_index: first + i as u64,
            key: k.as_bytes().to_vec(),
            value: Some(format!("{tag}{i}").into_bytes()),
        })
        .collect()
}

fn apply_cmd(upto: u64, ops: Vec<SinkOp>) -> SinkCmd {
    SinkCmd::Apply { start: Vec::new(), end: None, upto, ops }
}

fn restart_all(c: &mut SimCluster) {
    for store in c.store_ids() {
        c.crash(store, CrashMode::Lost);
    }
    c.run_for(Duration::from_millis(100));
    for store in c.store_ids() {
        c.restart(store).unwrap_or_else(|e| panic!("store {store}: {e}"));
    }
    for r in converge(c) {
        c.wait_leader(r.id, 10 * SECOND).expect("a leader");
    }
}

fn data(c: &mut SimCluster) -> BTreeMap<String, String> {
    scan_all(c)
}

/// A batch applied, every store loses power and restarts, the batch is resent: every
/// op is skipped and the data is unchanged.
#[test]
fn a_batch_resent_after_a_power_cut_of_every_store_is_skipped() {
    let mut c = cluster(61);
    let to_m =
        |upto, ops| SinkCmd::Apply { start: Vec::new(), end: Some(b"m".to_vec()), upto, ops };
    let batch = to_m(12, ops(10, &["a", "b", "c"], "v"));
    let first = sink(&mut c, R1, &batch).unwrap();
    assert_eq!((first.applied_ops, first.skipped_ops), (3, 0));
    let before = data(&mut c);
    assert_eq!(before.get("b").map(String::as_str), Some("v1"));
    // Enough writes outside the sink to checkpoint past the batch: the restart starts
    // from an image, which must carry the marks.
    let filler = "x".repeat(512);
    for i in 0..24 {
        assert!(common::put(&mut c, &format!("zz{}", i % 5), &filler, 10 * SECOND));
    }
    let before = data(&mut c);
    restart_all(&mut c);
    let again = sink(&mut c, R1, &batch).unwrap();
    assert_eq!((again.applied_ops, again.skipped_ops), (0, 3), "exactly once");
    assert_eq!(data(&mut c), before);
    // A later batch overlapping it applies only what is new.
    let next = to_m(14, ops(11, &["b", "c", "d", "e"], "w"));
    let r = sink(&mut c, R1, &next).unwrap();
    assert_eq!((r.applied_ops, r.skipped_ops), (2, 2));
}

/// Begin, a chunk, a crash, a resend from Begin with a new seed id (another leader's
/// image): a key of the first seed that the second does not hold is gone.
#[test]
fn a_reseed_after_crashes_leaves_no_stale_key() {
    let mut c = cluster(62);
    let put = |k: &str, v: &str| (k.as_bytes().to_vec(), v.as_bytes().to_vec());
    let begin1 = SinkCmd::Begin { seed_id: 1, start: Vec::new(), end: None };
    sink(&mut c, R1, &begin1).unwrap();
    restart_all(&mut c);
    sink(&mut c, R1, &begin1).unwrap(); // resent: idempotent
    let chunk1 = SinkCmd::Chunk { seed_id: 1, puts: vec![put("k1", "a"), put("stale", "x")] };
    assert_eq!(sink(&mut c, R1, &chunk1).unwrap().applied_ops, 2);
    restart_all(&mut c);
    let begin2 = SinkCmd::Begin { seed_id: 2, start: Vec::new(), end: None };
    sink(&mut c, R1, &begin2).unwrap();
    restart_all(&mut c);
    let late = sink(&mut c, R1, &chunk1);
    assert!(matches!(late, Err(Error::SinkRefused { .. })), "a chunk of the old seed: {late:?}");
    let chunk2 = SinkCmd::Chunk { seed_id: 2, puts: vec![put("k1", "b"), put("k2", "c")] };
    sink(&mut c, R1, &chunk2).unwrap();
    restart_all(&mut c);
    sink(&mut c, R1, &SinkCmd::End { seed_id: 2, seed_index: 30 }).unwrap();
    restart_all(&mut c);
    sink(&mut c, R1, &SinkCmd::End { seed_id: 2, seed_index: 30 }).unwrap(); // again
    let got = data(&mut c);
    let want: BTreeMap<String, String> =
        [("k1", "b"), ("k2", "c")].iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
    assert_eq!(got, want, "no stale key");
    // Ops at or below the seed index are in the seed.
    let r = sink(&mut c, R1, &apply_cmd(31, ops(30, &["k1", "k3"], "z"))).unwrap();
    assert_eq!((r.applied_ops, r.skipped_ops), (1, 1));
}

/// The follower region splits between two batches; the first is resent to both
/// children: skipped in both.
#[test]
fn a_batch_resent_after_a_follower_split_is_skipped_in_both_children() {
    let mut c = cluster(63);
    let batch = apply_cmd(20, ops(10, &["a", "m", "z"], "v"));
    sink(&mut c, R1, &batch).unwrap();
    let parts = split(&mut c, R1, &["k"]).unwrap();
    assert_eq!(parts.len(), 2);
    let before = data(&mut c);
    for part in &parts {
        let keys: Vec<&str> =
            ["a", "m", "z"].into_iter().filter(|k| part.contains(k.as_bytes())).collect();
        let mine: Vec<SinkOp> =
            ops(10, &["a", "m", "z"], "v").into_iter().filter(|o| part.contains(&o.key)).collect();
        let r = sink(&mut c, part.id, &apply_cmd(20, mine)).unwrap();
        assert_eq!((r.applied_ops, r.skipped_ops), (0, keys.len()), "{:?}", part.id);
    }
    restart_all(&mut c);
    assert_eq!(data(&mut c), before);
    // Merge them back: both sides' pieces, each with its own mark.
    let left = parts[0].id;
    let right_only = SinkCmd::Apply {
        start: b"k".to_vec(),
        end: None,
        upto: 25,
        ops: vec![SinkOp { source_index: 25, key: b"q".to_vec(), value: None }],
    };
    sink(&mut c, parts[1].id, &right_only).unwrap();
    merge_driver::merge(&mut c, parts[1].id, left, MergeOptions::default()).unwrap();
    let table = merged_table(&mut c, left);
    assert_eq!(table.mark_of(DUP, SOURCE, b"a"), 20);
    assert_eq!(table.mark_of(DUP, SOURCE, b"q"), 25);
}

fn merged_table(c: &mut SimCluster, region: RegionId) -> regionkv_engine::sink::SinkTable {
    let leader = c.wait_leader(region, 10 * SECOND).unwrap();
    let s = c.status(leader).into_iter().find(|p| p.region.id == region).unwrap();
    s.sinks.expect("the sink state")
}

/// A client write to a sink key is refused `StandbyReadOnly`; a key outside the sink
/// is written; after Promote the write succeeds.
#[test]
fn sink_keys_are_read_only_until_promoted() {
    let mut c = cluster(64);
    let shipped =
        SinkCmd::Apply { start: b"a".to_vec(), end: Some(b"m".to_vec()), upto: 5, ops: vec![] };
    sink(&mut c, R1, &shipped).unwrap();
    let write = |c: &mut SimCluster, key: &str| {
        let leader = c.wait_leader(R1, 5 * SECOND).unwrap();
        let op = Op::Put { key: Bytes::from(key.to_owned()), value: Bytes::from_static(b"v") };
        let pending = c.write(leader, R1, vec![op]);
        c.wait(&pending, 2 * SECOND).expect("an answer")
    };
    assert!(matches!(write(&mut c, "b"), Err(Error::StandbyReadOnly { dup_id: DUP, .. })));
    assert!(write(&mut c, "x").is_ok(), "outside the sink's pieces");
    restart_all(&mut c);
    assert!(matches!(write(&mut c, "b"), Err(Error::StandbyReadOnly { .. })), "after a restart");
    let r = sink(&mut c, R1, &SinkCmd::Promote).unwrap();
    assert_eq!(r.entry, None);
    assert!(write(&mut c, "b").is_ok(), "promoted");
}

/// Below cluster version 7 a proposer refuses every kind: nothing is proposed.
#[test]
fn every_kind_is_refused_below_version_7() {
    let mut config = SimConfig::new(65);
    for id in 1..=3 {
        config.cluster_version_max.insert(StoreId(id), 6);
    }
    let mut c = SimCluster::new(config).unwrap();
    let leader = c.wait_leader(R1, 10 * SECOND).unwrap();
    for cmd in [
        SinkCmd::Begin { seed_id: 1, start: Vec::new(), end: None },
        SinkCmd::Chunk { seed_id: 1, puts: vec![] },
        SinkCmd::End { seed_id: 1, seed_index: 1 },
        apply_cmd(1, vec![]),
        SinkCmd::Promote,
    ] {
        let last = c.status(leader).into_iter().find(|p| p.region.id == R1).unwrap().last_index;
        let pending = c.sink(leader, R1, entry(cmd.clone()));
        match c.wait(&pending, SECOND) {
            Some(Err(Error::FeatureNotActive { needed: 7, active: 6, .. })) => {}
            other => panic!("{cmd:?}: {other:?}"),
        }
        let now = c.status(leader).into_iter().find(|p| p.region.id == R1).unwrap().last_index;
        assert_eq!(now, last, "nothing proposed");
    }
}
