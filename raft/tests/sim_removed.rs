//! A follower removed from its region that never learned its removal committed, in
//! the deterministic simulator (ARCHITECTURE.md, "Membership"): the removal entry is
//! in its log, but it was cut off before any message told it the entry committed, and
//! the leader applied the removal (dropping its progress) meanwhile. Nobody sends to
//! it any more; it campaigns: its former peers ignore it (it campaigned for ever) or,
//! hibernating, let it win an election in its old configuration. A store of the region
//! answers its messages with a notice that it is gone (`Body::Gone`), and it destroys
//! itself with a tombstone at the notice's epoch, and no replica that is still a member
//! ever takes such a notice.
//!
//! A failing seed replays with `SIM_SEED=<seed> cargo test --release -p regionkv-raft
//! --test sim_removed`.

mod common;

use std::time::Duration;

use regionkv_engine::{Epoch, Peer, PeerId, Region, StoreId};
use regionkv_raft::sim::SimCluster;
use regionkv_raft::transport::{Body, Envelope, KeyRange};
use regionkv_raft::{PeerChange, StateRole};

use common::{R1, SECOND, cluster, converge, letters, write_keys};

/// The seeds to run: `SIM_SEED`, or a few.
fn seeds() -> Vec<u64> {
    match std::env::var("SIM_SEED") {
        Ok(s) => vec![s.parse().expect("SIM_SEED is a number")],
        Err(_) => (700..706).collect(),
    }
}

fn lead(c: &mut SimCluster, store: StoreId) {
    let leader = c.wait_leader(R1, SECOND).unwrap();
    let peers = c.region(leader, R1).unwrap().peers;
    let peer = peers.iter().find(|p| p.store == store).unwrap().id;
    c.transfer_leader(leader, R1, peer);
    assert!(c.run_until(5 * SECOND, |c| c.leader(R1) == Some(store)), "R1 to {store}");
}

/// `store`'s status of region 1.
fn r1(c: &SimCluster, store: StoreId) -> Option<regionkv_raft::PeerStatus> {
    c.status(store).into_iter().find(|p| p.region.id == R1)
}

/// Removes store 3's peer of region 1 (led from store 1) and cuts store 3 off right
/// after it staged the removal entry, before anything tells it the entry committed;
/// the removal applies on stores 1 and 2. Returns the region after the removal and the
/// region before it.
fn remove_while_cut_off(c: &mut SimCluster, seed: u64) -> (Region, Region) {
    let victim = StoreId(3);
    lead(c, StoreId(1));
    converge(c);
    // Every log at the leader's end, all of it committed: the next entry is the removal.
    let idle = |c: &mut SimCluster| {
        let end = r1(c, StoreId(1)).map(|s| s.last_index);
        (1..=3).all(|s| {
            r1(c, StoreId(s)).is_some_and(|p| Some(p.last_index) == end && p.commit == p.last_index)
        })
    };
    assert!(c.run_until(5 * SECOND, idle), "seed {seed}: every replica caught up");
    let before = c.region(StoreId(1), R1).unwrap();
    let peer = before.peers.iter().find(|p| p.store == victim).unwrap().id;
    let last = r1(c, StoreId(1)).unwrap().last_index;
    let pending = c.change_peers(StoreId(1), R1, PeerChange::Remove(peer));
    assert!(
        c.run_until(SECOND, |c| r1(c, victim).is_some_and(|s| s.last_index > last)),
        "seed {seed}: the removal entry reaches store 3"
    );
    c.faults().isolate(victim);
    let after = c.wait(&pending, 5 * SECOND).expect("answered").expect("removed");
    assert!(after.peers.iter().all(|p| p.store != victim));
    assert!(after.epoch.conf_ver > before.epoch.conf_ver);
    let s = r1(c, victim).expect("store 3 still has its replica");
    assert!(s.commit < s.last_index, "seed {seed}: store 3 learned the commit: {s:?}");
    c.run_for(2 * SECOND); // store 3 campaigns, cut off
    (after, before)
}

/// Store 1's and store 2's role and term of region 1.
fn members(c: &SimCluster) -> Vec<(StateRole, u64)> {
    [StoreId(1), StoreId(2)]
        .iter()
        .map(|&s| {
            let p = r1(c, s).unwrap();
            (p.role, p.term)
        })
        .collect()
}

/// Removes store 3's peer while it is cut off (see `remove_while_cut_off`), heals, and
/// checks that store 3's replica is destroyed, with a tombstone at the epoch that
/// removed it, and that the members' roles and terms and regions are unchanged. With
/// `busy`, clients write all along (the members never hibernate).
fn removed_follower_is_destroyed(seed: u64, busy: bool) {
    let mut c = cluster(seed);
    let mut model = std::collections::BTreeMap::new();
    write_keys(&mut c, &mut model, &letters(8), "v1");
    let (after, _) = remove_while_cut_off(&mut c, seed);
    let victim = StoreId(3);
    let others = members(&c);
    c.faults().clear();
    // Within 20 election timeouts (the simulator's: 10 ticks of 100 ms).
    let deadline = c.now() + 20 * SECOND;
    let mut round = 0;
    while r1(&c, victim).is_some() && c.now() < deadline {
        if busy {
            round += 1;
            write_keys(&mut c, &mut model, &letters(2), &format!("busy{round}"));
        } else {
            c.run_for(Duration::from_millis(100));
        }
    }
    let left = r1(&c, victim);
    assert!(
        left.is_none(),
        "seed {seed} busy {busy}: store 3's removed replica is destroyed: {left:?}"
    );
    assert_eq!(c.tombstone(victim, R1), Some(after.epoch), "seed {seed}: its tombstone");
    c.run_for(5 * SECOND);
    assert!(r1(&c, victim).is_none(), "seed {seed}: and not created again");
    assert_eq!(members(&c), others, "seed {seed} busy {busy}: no vote disturbed the members");
    assert_eq!(c.region(StoreId(1), R1), Some(after.clone()), "seed {seed}");
    assert_eq!(c.region(StoreId(2), R1), Some(after), "seed {seed}");
    write_keys(&mut c, &mut model, &letters(8), "v2");
    assert_eq!(common::scan_all(&mut c), model, "seed {seed}");
}

/// The bug, with the members hibernating: store 3's replica, once the network healed,
/// woke them with its pre-votes and, its log as long as theirs, won an election in its
/// old configuration; the members' terms moved (it learned of its removal only then).
#[test]
fn a_removed_follower_that_missed_the_commit_is_told_and_destroyed() {
    for seed in seeds() {
        removed_follower_is_destroyed(seed, false);
    }
}

/// The bug, with writes going on: the members, hearing their leader, ignored store 3's
/// pre-votes, and its replica campaigned for ever and was never destroyed.
#[test]
fn a_removed_follower_that_missed_the_commit_is_destroyed_while_the_region_is_busy() {
    for seed in seeds() {
        removed_follower_is_destroyed(seed, true);
    }
}

/// A notice from a store of the region, about `peer`, at `region`'s epoch.
fn notice(region: &Region, from: StoreId, to: StoreId, peer: PeerId) -> Envelope {
    Envelope {
        region: region.id,
        from,
        to,
        epoch: Some(region.epoch),
        range: Some(KeyRange { start: region.start.clone(), end: region.end.clone() }),
        body: Body::Gone { peer: peer.0 },
    }
}

/// A notice never destroys a replica that is a member: not a stale one arriving after
/// the store was added back (a new peer id at a newer epoch), not one at the replica's
/// own epoch or an older one, not one naming another peer, not one without an epoch,
/// and not one from a store that does not host the region.
#[test]
fn a_member_refuses_a_gone_notice() {
    let seed = 710;
    let mut config = regionkv_raft::sim::SimConfig::new(seed);
    // Compact often: the replica added back fills from a snapshot.
    config.checkpoint_log_bytes = 512;
    let mut c = SimCluster::new(config).unwrap();
    c.wait_leader(R1, 10 * SECOND).unwrap();
    let mut model = std::collections::BTreeMap::new();
    write_keys(&mut c, &mut model, &letters(26), "v1");
    let victim = StoreId(3);
    let (after, before) = remove_while_cut_off(&mut c, seed);
    let old_peer = before.peers.iter().find(|p| p.store == victim).unwrap().id;
    c.faults().clear();
    assert!(c.run_until(20 * SECOND, |c| r1(c, victim).is_none()), "destroyed");
    // Added back under a new peer id.
    let again = Peer { id: c.new_peer_id(), store: victim };
    let pending = c.change_peers(StoreId(1), R1, PeerChange::AddVoter(again));
    c.wait(&pending, 5 * SECOND).expect("answered").expect("added back");
    assert!(c.run_until(10 * SECOND, |c| r1(c, victim).is_some_and(|p| p.initialized)));
    let now = converge(&mut c).into_iter().find(|r| r.id == R1).unwrap();
    write_keys(&mut c, &mut model, &letters(26), "v2");
    let newer = |r: &Region| Region {
        epoch: Epoch { conf_ver: now.epoch.conf_ver + 5, ..r.epoch },
        ..r.clone()
    };
    let without_epoch = |e: Envelope| Envelope { epoch: None, ..e };
    let cases: Vec<(&str, Envelope)> = vec![
        ("a stale notice of the old peer", notice(&after, StoreId(1), victim, old_peer)),
        ("a notice at the replica's own epoch", notice(&now, StoreId(1), victim, again.id)),
        ("a notice at an older epoch", notice(&after, StoreId(2), victim, again.id)),
        ("a newer notice naming the old peer", notice(&newer(&now), StoreId(1), victim, old_peer)),
        (
            "a notice without an epoch",
            without_epoch(notice(&newer(&now), StoreId(1), victim, again.id)),
        ),
        (
            "a notice from a store not in the region",
            notice(&newer(&now), StoreId(9), victim, again.id),
        ),
    ];
    let hard = members(&c);
    for (what, env) in cases {
        c.inject(vec![env]);
        c.run_for(Duration::from_millis(200));
        let p = r1(&c, victim);
        assert!(p.as_ref().is_some_and(|p| p.peer == again.id), "{what}: {p:?}");
        assert_eq!(c.tombstone(victim, R1), None, "{what}");
    }
    assert_eq!(members(&c).len(), hard.len());
    converge(&mut c);
    c.faults().isolate(StoreId(1));
    assert_eq!(common::scan_all(&mut c), model);
}
