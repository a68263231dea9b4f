//! Write-batch rounds on a store's single apply loop (a round pins the regions it
//! prepared until it commits, and every pin is released exactly once): a round
//! that prepared a region and wrote nothing, or applied only an admin command (a split,
//! a merge), followed by a round that prepares two regions. No panic, every write
//! acknowledged, and the batch and every region pin back to zero after each round (the
//! simulator also checks the pins after every event it runs).
//!
//! One voter, so that requests submitted together are proposed, persisted and applied
//! in the same pass, and so in the same round.

use std::time::Duration;

use bytes::Bytes;
use regionkv_engine::{RegionId, StoreId};
use regionkv_raft::merge_driver::{self, MergeOptions};
use regionkv_raft::sim::{Pending, SimCluster, SimConfig};
use regionkv_raft::{AdminCmd, AdminResult, ApplyStats, Op};

mod common;

use common::{R1, SECOND};

const S: StoreId = StoreId(1);

fn single_voter(seed: u64) -> SimCluster {
    let mut c = SimCluster::new(SimConfig { voters: 1, ..SimConfig::new(seed) }).unwrap();
    c.wait_leader(R1, 10 * SECOND).expect("a leader");
    c
}

fn put(key: &str) -> Vec<Op> {
    vec![Op::Put { key: Bytes::from(key.to_owned()), value: Bytes::from(format!("{key}-v")) }]
}

fn acknowledged(c: &mut SimCluster, pendings: &[Pending<()>]) {
    for p in pendings {
        let outcome = c.wait(p, 5 * SECOND);
        assert!(matches!(outcome, Some(Ok(()))), "a write was not acknowledged: {outcome:?}");
    }
}

fn stats(c: &SimCluster) -> ApplyStats {
    c.apply_stats(S).expect("running")
}

fn assert_reset(c: &SimCluster) {
    assert_eq!(c.engine(S).expect("running").total_pins(), 0, "region pins after a round");
}

/// The round over two regions, checked: both writes land, in one round.
fn round_over_two(c: &mut SimCluster, a: (RegionId, &str), b: (RegionId, &str)) {
    let before = stats(c);
    let (pendings, _) = c.submit_together(S, vec![(a.0, put(a.1)), (b.0, put(b.1))], None);
    acknowledged(c, &pendings);
    assert_reset(c);
    let after = stats(c);
    assert!(
        after.rounds_with_several_regions > before.rounds_with_several_regions,
        "the two writes were applied in one round: {before:?} -> {after:?}"
    );
    let snapshot = c.engine(S).expect("running").read_view();
    for key in [a.1, b.1] {
        assert_eq!(snapshot.get(key.as_bytes()), Some(Bytes::from(format!("{key}-v"))));
    }
}

/// Splits `region` at `key`; with `empty_write_to`, a write of no keys to that region
/// is applied in the same pass (its region prepared, nothing buffered).
fn split_at(
    c: &mut SimCluster,
    region: RegionId,
    key: &str,
    empty_write_to: Option<RegionId>,
) -> RegionId {
    let new_id = RegionId(c.new_id());
    let cmd = AdminCmd::Split { split_keys: vec![key.as_bytes().to_vec()], new_ids: vec![new_id] };
    let writes = empty_write_to.map(|r| (r, Vec::new())).into_iter().collect();
    let (pendings, admin) = c.submit_together(S, writes, Some((region, cmd)));
    acknowledged(c, &pendings);
    let admin = admin.expect("submitted");
    assert!(matches!(c.wait(&admin, 5 * SECOND), Some(Ok(AdminResult::Split(_)))));
    assert_reset(c);
    c.wait_leader(new_id, 10 * SECOND).expect("the new region elects its leader");
    new_id
}

#[test]
fn a_round_that_wrote_nothing_then_a_round_over_two_regions() {
    let mut c = single_voter(1);
    let right = split_at(&mut c, R1, "m", None);
    // A write of no keys: its region is prepared and nothing is buffered.
    let before = stats(&c);
    let (pendings, _) = c.submit_together(S, vec![(right, Vec::new())], None);
    acknowledged(&mut c, &pendings);
    assert_reset(&c);
    assert!(stats(&c).rounds > before.rounds);
    round_over_two(&mut c, (R1, "a"), (right, "z"));
    // And the other way round, starting from the region prepared before.
    round_over_two(&mut c, (right, "q"), (R1, "b"));
}

#[test]
fn a_round_with_a_split_then_a_round_over_the_parent_and_the_child() {
    let mut c = single_voter(2);
    let right = split_at(&mut c, R1, "m", None);
    let (pendings, _) = c.submit_together(S, vec![(R1, put("a")), (right, put("x"))], None);
    acknowledged(&mut c, &pendings);
    // The split of R1 applies in the same pass as an empty write to the other region
    // (appended after the split, so the parent's own write would meet the new epoch).
    let child = split_at(&mut c, R1, "f", Some(right));
    round_over_two(&mut c, (R1, "c"), (child, "g"));
    round_over_two(&mut c, (child, "h"), (right, "y"));
}

#[test]
fn rounds_of_a_merge_then_a_round_over_the_target_and_another_region() {
    let mut c = single_voter(3);
    let middle = split_at(&mut c, R1, "h", None);
    let last = split_at(&mut c, middle, "p", None);
    round_over_two(&mut c, (middle, "k"), (last, "t"));
    let before = stats(&c);
    let merged = merge_driver::merge(&mut c, middle, R1, MergeOptions::default()).expect("merge");
    assert_eq!(merged.end.as_deref(), Some(&b"p"[..]));
    assert_reset(&c);
    let after = stats(&c);
    assert!(
        after.rounds_without_regions > before.rounds_without_regions,
        "the merge's admin commands applied in rounds that prepared no region"
    );
    // The target now holds the source's keys, and shares a round with another region.
    round_over_two(&mut c, (R1, "k2"), (last, "u"));
    let snapshot = c.engine(S).expect("running").read_view();
    assert_eq!(snapshot.get(b"k"), Some(Bytes::from("k-v")));
    c.run_for(Duration::from_millis(100));
    assert_reset(&c);
}

/// Writes that reach a leader before it flushes are proposed as one entry, and the
/// metrics say so exactly: writes and entries proposed, one latency sample per
/// acknowledged write, the region led and fully applied.
#[test]
fn writes_taken_together_are_one_entry_in_the_metrics() {
    let mut c = single_voter(11);
    let before = c.metrics(S).expect("running");
    let writes: Vec<(RegionId, Vec<Op>)> =
        ["m1", "m2", "m3", "m4", "m5"].iter().map(|k| (R1, put(k))).collect();
    let (pendings, _) = c.submit_together(S, writes, None);
    acknowledged(&mut c, &pendings);
    let after = c.metrics(S).expect("running");
    assert_eq!(after.writes_proposed - before.writes_proposed, 5, "{after:?}");
    assert_eq!(after.entries_proposed - before.entries_proposed, 1, "{after:?}");
    assert_eq!(after.write_latency_us.count() - before.write_latency_us.count(), 5);
    assert!(after.writes_per_entry() > 1.0, "{after:?}");
    assert_eq!((after.regions, after.leaders), (1, 1), "{after:?}");
    assert_eq!((after.applied_lag_total, after.applied_lag_max), (0, 0), "{after:?}");
    assert!(after.wal.fsyncs > before.wal.fsyncs, "{after:?}");
    assert!(after.wal.group_records.count() > before.wal.group_records.count());
    assert!(after.apply.rounds > before.apply.rounds, "{after:?}");
}
