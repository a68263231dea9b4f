//! Safety of reads, snapshots and replicas around merges and restarts, in the
//! deterministic simulator:
//!
//! - S5: a merge source takes no read once its prepare applied (the target may commit
//!   the merge and take writes to those keys first), and a target paused for its
//!   source refuses reads instead of holding them;
//! - A2, H3: a snapshot is checked before raft-rs sees it (its checkpoint is of its
//!   region and index; what it overlaps here is a stale part of it, replaced with the
//!   install);
//! - A10: a destroyed replica leaves a durable tombstone with its epoch, and an
//!   uninitialized replica no leader claims is collected.
//!
//! Each test names the bug it pins. A failing seed replays with `SIM_SEED=<seed>
//! cargo test --release -p regionkv-raft --test sim_safety`.

mod common;

use std::time::Duration;

use raft::eraftpb::MessageType;
use regionkv_engine::{Region, RegionId, StoreId};
use regionkv_raft::merge_driver::RegionAdmin;
use regionkv_raft::sim::SimCluster;
use regionkv_raft::transport::local::{Action, Rule, Scope};
use regionkv_raft::{AdminCmd, AdminResult, Error, Query, QueryResult};

use common::{R1, SECOND, cluster, converge, letters, split, write_keys};

fn get(
    c: &mut SimCluster,
    store: StoreId,
    region: RegionId,
    key: &str,
) -> Option<Result<QueryResult, Error>> {
    let pending = c.read(
        store,
        region,
        Query::Get { key: bytes::Bytes::from(key.to_owned()), read_ts: None },
    );
    c.wait(&pending, SECOND)
}

/// Prepares the merge of `source` into region 1; returns the prepare's index and term.
fn prepare(c: &mut SimCluster, source: RegionId) -> (regionkv_engine::Region, u64, u64) {
    let target = RegionAdmin::merge_status(c, R1).unwrap().region;
    let status = RegionAdmin::merge_status(c, source).unwrap();
    let cmd = AdminCmd::PrepareMerge { target };
    match RegionAdmin::admin(c, source, status.region.epoch, cmd).unwrap() {
        AdminResult::Prepared { source, prepare_index, prepare_term } => {
            (source, prepare_index, prepare_term)
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_prepared_merge_source_refuses_reads() {
    let mut c = cluster(31);
    let mut model = std::collections::BTreeMap::new();
    write_keys(&mut c, &mut model, &letters(26), "v1");
    let source = split(&mut c, R1, &["m"]).unwrap()[1].id;
    converge(&mut c);
    let leader = c.wait_leader(source, SECOND).unwrap();
    assert!(matches!(get(&mut c, leader, source, "p15"), Some(Ok(QueryResult::Value(Some(_))))));
    prepare(&mut c, source);
    // The target may commit the merge and take writes to these keys at any time now:
    // the source must not answer from its own (soon stale) copy.
    let leader = c.wait_leader(source, SECOND).unwrap();
    let refused = get(&mut c, leader, source, "p15");
    assert!(matches!(refused, Some(Err(Error::Merging { .. }))), "{refused:?}");
    assert!(refused.unwrap().unwrap_err().is_retryable());
}

#[test]
fn a_merge_target_paused_for_its_source_refuses_reads() {
    let mut c = cluster(32);
    let mut model = std::collections::BTreeMap::new();
    write_keys(&mut c, &mut model, &letters(26), "v1");
    let source = split(&mut c, R1, &["m"]).unwrap()[1].id;
    converge(&mut c);
    // Store 3 leads the target; its source replica hears nothing of the source's group
    // from now on (the source's leader is elsewhere).
    let lagging = StoreId(3);
    lead(&mut c, R1, lagging);
    if c.leader(source) == Some(lagging) {
        lead(&mut c, source, StoreId(1));
    }
    c.faults().add(Rule {
        scope: Scope { to: Some(lagging), region: Some(source), ..Scope::any() },
        action: Action::Drop(1.0),
    });
    let (src, prepare_index, prepare_term) = prepare(&mut c, source);
    // The commit is proposed before every source replica holds the prepare (the merge
    // driver would wait for that): it applies on stores 1 and 2, while on store 3 the
    // target waits for its source replica, which does not have the prepare.
    let cmd = AdminCmd::CommitMerge { source: src, prepare_index, prepare_term };
    let commit = c.admin(lagging, R1, cmd);
    assert!(
        c.run_until(5 * SECOND, |c| { c.status(StoreId(1)).iter().all(|p| p.region.id != source) })
    );
    assert!(!commit.is_done(), "store 3 applies the commit only after its source");
    // Refused at once (retryable), rather than held until the pause ends.
    let refused = get(&mut c, lagging, R1, "a00");
    assert!(matches!(refused, Some(Err(Error::Merging { .. }))), "{refused:?}");
    assert!(refused.unwrap().unwrap_err().is_retryable());
}

/// Moves the leadership of `region` to its replica on `store`.
fn lead(c: &mut SimCluster, region: RegionId, store: StoreId) {
    let leader = c.wait_leader(region, SECOND).unwrap();
    let peers = c.region(leader, region).unwrap().peers;
    let peer = peers.iter().find(|p| p.store == store).unwrap().id;
    c.transfer_leader(leader, region, peer);
    assert!(c.run_until(5 * SECOND, |c| c.leader(region) == Some(store)), "{region} to {store}");
}

/// A merge of the right half `[m, end)` into region 1, prepared and replicated to
/// every store, then committed while store 3 is down (crashed in `mode`), on a
/// cluster that compacts soon after: the cluster, the model of what it holds, the
/// merged source's id and the store that was down.
fn merge_while_a_store_is_down(
    seed: u64,
    mode: regionkv_wal::CrashMode,
) -> (SimCluster, std::collections::BTreeMap<String, String>, RegionId, StoreId) {
    let mut config = regionkv_raft::sim::SimConfig::new(seed);
    config.checkpoint_log_bytes = 1024;
    let mut c = SimCluster::new(config).unwrap();
    c.wait_leader(R1, 10 * SECOND).unwrap();
    let mut model = std::collections::BTreeMap::new();
    write_keys(&mut c, &mut model, &letters(26), "v1");
    let source = split(&mut c, R1, &["m"]).unwrap()[1].id;
    converge(&mut c);
    let down = StoreId(3);
    lead(&mut c, R1, StoreId(1));
    lead(&mut c, source, StoreId(1));
    let (src, prepare_index, prepare_term) = prepare(&mut c, source);
    assert!(c.run_until(10 * SECOND, |c| common::all_matched(c, source)));
    c.crash(down, mode);
    let merge = regionkv_engine::MergeState { target: R1, prepare_index, prepare_term };
    let options = regionkv_raft::merge_driver::MergeOptions::default();
    regionkv_raft::merge_driver::finish_merge(&mut c, &src, merge, options).unwrap();
    (c, model, source, down)
}

/// A2: a store down while a merge commits, whose target replica then gets a snapshot
/// of the merged target (the log was compacted past the merge): the snapshot covers
/// the source replica still on that store, a stale merge source. Before, the install
/// failed on the overlap and stopped the store, at every restart.
#[test]
fn a_snapshot_over_a_stale_merge_source_replaces_it() {
    for mode in [regionkv_wal::CrashMode::Lost, regionkv_wal::CrashMode::Persisted] {
        let (mut c, mut model, source, down) = merge_while_a_store_is_down(33, mode);
        // Enough writes for the target to checkpoint and compact past the merge.
        write_keys(&mut c, &mut model, &letters(26), "v2");
        write_keys(&mut c, &mut model, &letters(26), "v3");
        c.restart(down).unwrap();
        let regions = converge(&mut c);
        assert_eq!(regions.len(), 1, "{mode:?}: {regions:?}");
        assert!(c.status(down).iter().all(|p| p.region.id != source), "{mode:?}");
        // Store 3 holds everything: read with store 1 cut off.
        c.faults().isolate(StoreId(1));
        assert_eq!(common::scan_all(&mut c), model, "{mode:?}");
    }
}

/// A2, liveness (seed 3256 of `sim_linearizable`): as above, but the target splits
/// after the merge, so that its snapshot no longer overlaps the source replica left on
/// the store that was down, while the split's new region covers it. That region's
/// messages created no replica there (its range overlapped one hosted), the source's
/// peers drop its messages (they hold its tombstone), so it campaigned forever and
/// the store never got its replica of the new region.
#[test]
fn a_stale_merge_source_is_replaced_by_a_region_split_from_its_target() {
    for mode in [regionkv_wal::CrashMode::Lost, regionkv_wal::CrashMode::Persisted] {
        let (mut c, mut model, source, down) = merge_while_a_store_is_down(34, mode);
        // The new region [f, end) covers the source's range [m, end).
        let child = split(&mut c, R1, &["f"]).unwrap()[1].id;
        write_keys(&mut c, &mut model, &letters(26), "v2");
        write_keys(&mut c, &mut model, &letters(26), "v3");
        c.restart(down).unwrap();
        let regions = converge(&mut c);
        assert_eq!(regions.len(), 2, "{mode:?}: {regions:?}");
        let hosted: Vec<RegionId> = c.status(down).iter().map(|p| p.region.id).collect();
        assert!(!hosted.contains(&source), "{mode:?}: {hosted:?}");
        assert!(hosted.contains(&child), "{mode:?}: {hosted:?}");
        // Store 3 holds everything: read with store 1 cut off.
        c.faults().isolate(StoreId(1));
        assert_eq!(common::scan_all(&mut c), model, "{mode:?}");
    }
}

/// A2: the same shape, but the store's target replica is only behind (its group's
/// messages to it are lost), with the commit of the merge still to apply, which needs
/// the source's replica. The region split from the target at the source's start key
/// covers the source (a newer holder of its start key) and does not overlap the
/// target's replica there: its messages must not create a replica whose snapshot
/// replaces the source before the target applied the commit (the target would wait
/// for its source forever).
#[test]
fn a_source_a_lagging_target_still_merges_is_not_replaced() {
    let mut c = cluster(35);
    let mut model = std::collections::BTreeMap::new();
    write_keys(&mut c, &mut model, &letters(26), "v1");
    let source = split(&mut c, R1, &["m"]).unwrap()[1].id;
    converge(&mut c);
    let lagging = StoreId(3);
    lead(&mut c, R1, StoreId(1));
    lead(&mut c, source, StoreId(1));
    c.faults().add(Rule {
        scope: Scope { to: Some(lagging), region: Some(R1), ..Scope::any() },
        action: Action::Drop(1.0),
    });
    let (src, prepare_index, prepare_term) = prepare(&mut c, source);
    assert!(c.run_until(10 * SECOND, |c| common::all_matched(c, source)));
    let merge = regionkv_engine::MergeState { target: R1, prepare_index, prepare_term };
    let options = regionkv_raft::merge_driver::MergeOptions::default();
    regionkv_raft::merge_driver::finish_merge(&mut c, &src, merge, options).unwrap();
    let child = split(&mut c, R1, &["m"]).unwrap()[1].id;
    write_keys(&mut c, &mut model, &letters(26), "v2");
    c.run_for(3 * SECOND);
    let hosted: Vec<RegionId> = c.status(lagging).iter().map(|p| p.region.id).collect();
    assert!(hosted.contains(&source) && !hosted.contains(&child), "{hosted:?}");
    c.faults().clear();
    let regions = converge(&mut c);
    assert_eq!(regions.len(), 2, "{regions:?}");
    let hosted: Vec<RegionId> = c.status(lagging).iter().map(|p| p.region.id).collect();
    assert!(!hosted.contains(&source) && hosted.contains(&child), "{hosted:?}");
    c.faults().isolate(StoreId(1));
    assert_eq!(common::scan_all(&mut c), model);
}

/// How a test forges a snapshot's region from the true one.
type Forge = fn(&Region) -> Region;

/// `region` at a version ahead of its own (as a later split or merge would leave it).
fn newer(region: &regionkv_engine::Region) -> regionkv_engine::Region {
    let epoch = regionkv_engine::Epoch { version: region.epoch.version + 5, ..region.epoch };
    regionkv_engine::Region { epoch, ..region.clone() }
}

/// H3 and A2: snapshots a leader would never send are dropped before raft-rs sees them
/// (a checkpoint of another region, or at another index than the snapshot's; a region
/// overlapping one still hosted that is not an older part of it), and nothing of them
/// is installed. Before, the engine installed whatever region the checkpoint named
/// (or failed on the overlap and stopped the store).
#[test]
fn snapshots_whose_checkpoint_does_not_fit_are_dropped() {
    let mut c = cluster(34);
    let mut model = std::collections::BTreeMap::new();
    write_keys(&mut c, &mut model, &letters(26), "v1");
    let source = split(&mut c, R1, &["m"]).unwrap()[1].id;
    converge(&mut c);
    let victim = StoreId(3);
    let cases: [(&str, Forge, u64); 3] = [
        ("a checkpoint of another region", |r| Region { id: RegionId(4242), ..newer(r) }, 0),
        ("a checkpoint at another index", newer, 1),
        ("a region over one still hosted, not older", |r| Region { end: None, ..r.clone() }, 0),
    ];
    for (what, header, behind) in cases {
        lead(&mut c, R1, StoreId(1));
        let r1 = c.region(StoreId(1), R1).unwrap();
        let status = c.status(victim).into_iter().find(|p| p.region.id == R1).unwrap();
        let (index, term) = (status.commit + 100, status.term);
        let header = header(&r1);
        let forged =
            common::crafted_snapshot(&c, R1, victim, (index, term), &header, index - behind);
        c.inject(forged);
        c.run_for(Duration::from_millis(100));
        common::no_forged_key(&c, &header, what);
        let regions = converge(&mut c);
        assert_eq!(regions.iter().map(|r| r.id).collect::<Vec<_>>(), vec![R1, source], "{what}");
        c.faults().isolate(StoreId(1));
        assert_eq!(common::scan_all(&mut c), model, "{what}");
        c.faults().clear();
    }
}

/// A message of `region`'s group from `from` to `to` at `epoch`, a heartbeat to peer
/// `peer` (as a lagging or partitioned member would still send).
fn stale_heartbeat(
    region: &Region,
    epoch: regionkv_engine::Epoch,
    from: StoreId,
    to: StoreId,
    peer: regionkv_engine::PeerId,
) -> regionkv_raft::transport::Envelope {
    use regionkv_raft::transport::{Body, Envelope, KeyRange};
    let mut msg = raft::eraftpb::Message::default();
    msg.set_msg_type(raft::eraftpb::MessageType::MsgHeartbeat);
    msg.from = region.peers.iter().find(|p| p.store == from).unwrap().id.0;
    msg.to = peer.0;
    msg.term = 1;
    Envelope {
        region: region.id,
        from,
        to,
        epoch: Some(epoch),
        range: Some(KeyRange { start: region.start.clone(), end: region.end.clone() }),
        body: Body::Raft(msg),
    }
}

/// A10: a replica removed from its group leaves a durable tombstone with its epoch:
/// a message of that epoch or older (a member that has not heard of the removal yet)
/// never creates it again, across restarts too; a newer epoch (the store added back)
/// does. Before, the tombstone lived in memory only: it blocked adding the store back
/// until a restart, and after a restart a stale message made a zombie replica.
#[test]
fn a_removed_replica_leaves_a_durable_tombstone_that_a_newer_epoch_lifts() {
    let mut config = regionkv_raft::sim::SimConfig::new(35);
    // Compact often: a replica added back fills from a snapshot (region 1's log starts
    // at index 1, so until it is compacted a new replica gets entries it cannot apply).
    config.checkpoint_log_bytes = 512;
    let mut c = SimCluster::new(config).unwrap();
    c.wait_leader(R1, 10 * SECOND).unwrap();
    let mut model = std::collections::BTreeMap::new();
    write_keys(&mut c, &mut model, &letters(26), "v1");
    let store = StoreId(3);
    for restart in [false, true] {
        lead(&mut c, R1, StoreId(1));
        let before = c.region(StoreId(1), R1).unwrap();
        let peer = before.peers.iter().find(|p| p.store == store).unwrap().id;
        let pending = c.change_peers(StoreId(1), R1, regionkv_raft::PeerChange::Remove(peer));
        c.wait(&pending, 5 * SECOND).expect("answered").expect("removed");
        assert!(c.run_until(5 * SECOND, |c| c.status(store).is_empty()), "destroyed");
        if restart {
            c.run_for(Duration::from_millis(50)); // the tombstone is written
            c.crash(store, regionkv_wal::CrashMode::Lost);
            c.restart(store).unwrap();
        }
        c.inject(vec![stale_heartbeat(&before, before.epoch, StoreId(1), store, peer)]);
        c.run_for(Duration::from_millis(50));
        assert!(c.status(store).is_empty(), "restart {restart}: a stale message made a replica");
        // Added back (a newer epoch, a new peer id): created, filled, serving.
        let again = regionkv_engine::Peer { id: c.new_peer_id(), store };
        let pending = c.change_peers(StoreId(1), R1, regionkv_raft::PeerChange::AddVoter(again));
        c.wait(&pending, 5 * SECOND).expect("answered").expect("added back");
        assert!(
            c.run_until(10 * SECOND, |c| c.status(store).iter().any(|p| p.initialized)),
            "restart {restart}: the store's replica is created again by the newer epoch"
        );
        converge(&mut c);
    }
    c.faults().isolate(StoreId(1));
    assert_eq!(common::scan_all(&mut c), model);
}

/// A10: an uninitialized replica (created by a message, holding nothing) that no
/// leader follows up is collected after a while. Before, it stayed forever and was
/// opened again at every restart.
#[test]
fn an_unclaimed_uninitialized_replica_is_collected() {
    let mut config = regionkv_raft::sim::SimConfig::new(36);
    config.spares = 1;
    let mut c = SimCluster::new(config).unwrap();
    c.wait_leader(R1, 10 * SECOND).unwrap();
    let spare = StoreId(4);
    let ghost = Region {
        id: RegionId(7777),
        start: b"a".to_vec(),
        end: Some(b"b".to_vec()),
        epoch: regionkv_engine::Epoch::INITIAL,
        peers: vec![
            regionkv_engine::Peer { id: regionkv_engine::PeerId(77), store: StoreId(1) },
            regionkv_engine::Peer { id: regionkv_engine::PeerId(78), store: spare },
        ],
    };
    let message = stale_heartbeat(&ghost, ghost.epoch, StoreId(1), spare, ghost.peers[1].id);
    c.inject(vec![message]);
    c.run_for(Duration::from_millis(50));
    assert_eq!(c.status(spare).len(), 1, "created by the message");
    assert!(
        c.run_until(60 * SECOND, |c| c.status(spare).is_empty()),
        "collected once no leader claimed it for a while"
    );
    c.run_for(Duration::from_millis(50)); // the tombstone is written
    c.crash(spare, regionkv_wal::CrashMode::Lost);
    c.restart(spare).unwrap();
    c.run_for(Duration::from_millis(50));
    assert!(c.status(spare).is_empty(), "and not opened again");
}

/// The stores of `stores` whose replica of region 1 leads.
fn leaders_among(c: &SimCluster, stores: &[StoreId]) -> Vec<StoreId> {
    stores
        .iter()
        .copied()
        .filter(|&s| {
            c.status(s)
                .iter()
                .any(|p| p.region.id == R1 && p.role == regionkv_raft::StateRole::Leader)
        })
        .collect()
}

/// H2: a store whose WAL recovery cut valid records (a point-in-time recovery) may
/// have lost what it acknowledged last, its latest vote among it: its regions neither
/// vote nor campaign until they caught up past the cut. Before, it voted at once:
/// with the leader cut off, it and one other store elected a leader (with its vote
/// possibly its second in a term, or for a log missing what it acknowledged).
#[test]
fn after_a_log_cut_a_region_votes_only_once_caught_up() {
    let mut c = cluster(37);
    let mut model = std::collections::BTreeMap::new();
    write_keys(&mut c, &mut model, &letters(10), "v1");
    lead(&mut c, R1, StoreId(1));
    let (two, three) = (StoreId(2), StoreId(3));
    c.crash(three, regionkv_wal::CrashMode::Persisted);
    c.restart_after_log_cut(three).unwrap();
    // At once, before store 3 hears from the leader, the leader is cut off.
    c.faults().isolate(StoreId(1));
    c.run_for(5 * SECOND);
    assert!(leaders_among(&c, &[two, three]).is_empty(), "store 3 voted before catching up");
    // The mark is durable: a plain restart before catching up keeps it.
    c.crash(three, regionkv_wal::CrashMode::Persisted);
    c.restart(three).unwrap();
    c.run_for(5 * SECOND);
    assert!(leaders_among(&c, &[two, three]).is_empty(), "the mark was lost by a restart");
    // The leader comes back; store 3 catches up, and votes again from then on.
    c.faults().clear();
    write_keys(&mut c, &mut model, &letters(10), "v2");
    converge(&mut c);
    c.faults().isolate(StoreId(1));
    assert!(
        c.run_until(10 * SECOND, |c| !leaders_among(c, &[two, three]).is_empty()),
        "stores 2 and 3 elect a leader once store 3 caught up"
    );
    c.faults().clear();
    assert_eq!(common::scan_all(&mut c), model);
}

/// An admin command or membership change that raft-rs drops before appending it (here
/// a leader handing its leadership over drops every proposal) was never proposed:
/// its caller learns `Dropped`, which it may retry, and the retry succeeds once the
/// transfer is over. Before, both got raft-rs's own `ProposalDropped`, which no
/// caller retries (found by the simulator's linearizability soak, seeds 410 and 1067).
#[test]
fn admin_commands_dropped_during_a_leader_transfer_are_retryable() {
    let mut c = cluster(41);
    let leader = c.wait_leader(R1, SECOND).unwrap();
    let region = c.region(leader, R1).unwrap();
    let other = region.peers.iter().find(|p| p.store != leader).unwrap();
    // The transfer stays in progress: its "campaign now" never arrives.
    c.faults().add(Rule {
        scope: Scope { msg_type: Some(MessageType::MsgTimeoutNow), ..Scope::any() },
        action: Action::Drop(1.0),
    });
    c.transfer_leader(leader, R1, other.id);
    let split =
        || AdminCmd::Split { split_keys: vec![b"m".to_vec()], new_ids: vec![RegionId(5000)] };
    let dropped = c.admin(leader, R1, split());
    let dropped = c.wait(&dropped, SECOND).expect("answered");
    assert!(matches!(dropped, Err(Error::Dropped { .. })), "{dropped:?}");
    assert!(dropped.unwrap_err().is_retryable());
    let removed = region.peers.iter().find(|p| p.store != leader && p.id != other.id).unwrap();
    let change = c.change_peers(leader, R1, regionkv_raft::PeerChange::Remove(removed.id));
    let change = c.wait(&change, SECOND).expect("answered");
    assert!(matches!(change, Err(Error::Dropped { .. })), "{change:?}");
    // The transfer gives up after an election timeout; the same command goes through.
    c.faults().clear();
    c.run_for(5 * SECOND);
    let leader = c.wait_leader(R1, SECOND).unwrap();
    let again = c.admin(leader, R1, split());
    let again = c.wait(&again, 5 * SECOND).expect("answered");
    assert!(matches!(again, Ok(AdminResult::Split(_))), "{again:?}");
}
