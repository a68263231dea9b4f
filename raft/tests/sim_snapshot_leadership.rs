//! A replica filled by a snapshot, asked to lead before that snapshot's write is
//! persisted. raft-rs learns the snapshot is applied only once it is persisted (it
//! requires applied <= persisted), so in between it reads the entries it takes as
//! unapplied, from below the snapshot, out of a log that no longer has them: a
//! leadership transfer (`MsgTimeoutNow`) or an election timeout in that window stopped
//! the store's poller inside raft-rs ("unexpected error getting unapplied entries
//! [1, 4): Store(Compacted)"). Now such a replica campaigns only once the snapshot is
//! persisted (ARCHITECTURE.md "Snapshots").
//!
//! The simulator holds the new replica's writes back (`SimCluster::hold_writes`), so
//! the window lasts as long as the test wants, deterministically. A failing seed replays
//! with `SIM_SEED=<seed> cargo test --release -p regionkv-raft --test
//! sim_snapshot_leadership`.

use std::time::Duration;

use bytes::Bytes;
use raft::eraftpb::{Message, MessageType};
use regionkv_engine::{Peer, PeerId, RegionId, StoreId};
use regionkv_raft::sim::{SimCluster, SimConfig};
use regionkv_raft::transport::{Body, Envelope, KeyRange};
use regionkv_raft::{Op, PeerChange};

const R1: RegionId = RegionId(1);
const SECOND: Duration = Duration::from_secs(1);
const SPARE: StoreId = StoreId(4);

fn seeds() -> Vec<u64> {
    match std::env::var("SIM_SEED") {
        Ok(s) => vec![s.parse().expect("SIM_SEED is a number")],
        Err(_) => (1..4).collect(),
    }
}

/// Three voters and a spare (store 4) added as a fourth voter; returns once the spare
/// installed its snapshot, with the spare's writes held back from then on (the
/// install's write still in flight), the leader and the spare's peer.
fn spare_just_installed(seed: u64) -> (SimCluster, StoreId, PeerId) {
    let mut config = SimConfig::new(seed);
    config.spares = 1;
    let mut c = SimCluster::new(config).unwrap();
    let leader = c.wait_leader(R1, 10 * SECOND).expect("a leader");
    let put = Op::Put { key: Bytes::from_static(b"k"), value: Bytes::from_static(b"v1") };
    let written = c.write(leader, R1, vec![put]);
    assert!(matches!(c.wait(&written, 10 * SECOND), Some(Ok(()))), "seed {seed}: a write");
    let peer = c.new_peer_id();
    let added = c.change_peers(leader, R1, PeerChange::AddVoter(Peer { id: peer, store: SPARE }));
    let region = c.wait(&added, 10 * SECOND).expect("answered").expect("the change applies");
    assert_eq!(region.peers.len(), 4, "seed {seed}");
    let installed =
        c.run_until(10 * SECOND, |c| c.status(SPARE).first().is_some_and(|s| s.initialized));
    assert!(installed, "seed {seed}: the spare installs a snapshot");
    // The simulator checks between events: the install's write is not persisted yet.
    c.hold_writes(SPARE, true);
    assert_eq!(c.leader(R1), Some(leader), "seed {seed}");
    (c, leader, peer)
}

/// Runs until a write through the leader of region 1 succeeds and the spare applied
/// it.
fn settles(c: &mut SimCluster, seed: u64, value: &'static [u8]) {
    let deadline = c.now() + 30 * SECOND;
    loop {
        assert!(c.now() < deadline, "seed {seed}: no write went through");
        let Some(leader) = c.wait_leader(R1, 5 * SECOND) else { continue };
        let put = Op::Put { key: Bytes::from_static(b"k"), value: Bytes::from_static(value) };
        let pending = c.write(leader, R1, vec![put]);
        match c.wait(&pending, 5 * SECOND) {
            Some(Ok(())) => break,
            Some(Err(e)) if e.is_retryable() => c.run_for(Duration::from_millis(50)),
            Some(Err(e)) => panic!("seed {seed}: {e}"),
            None => {}
        }
    }
    let applied = |c: &mut SimCluster| {
        let commit = c.leader(R1).and_then(|l| c.status(l).first().map(|s| s.commit));
        commit.is_some() && c.status(SPARE).first().map(|s| s.applied) >= commit
    };
    assert!(c.run_until(30 * SECOND, applied), "seed {seed}: the spare catches up");
    let here = c.engine(SPARE).expect("running").read_view().get(b"k");
    assert_eq!(here.as_deref(), Some(value), "seed {seed}: the spare holds the last write");
}

#[test]
fn a_transfer_to_a_replica_whose_snapshot_is_not_persisted_waits_for_the_persist() {
    for seed in seeds() {
        let (mut c, leader, peer) = spare_just_installed(seed);
        // What the leader sends once the spare reports its snapshot persisted; with a
        // threaded store it may arrive before the poller hears of its own persist.
        let from = leader;
        let leader = c.status(from)[0].clone();
        let mut msg = Message::default();
        msg.set_msg_type(MessageType::MsgTimeoutNow);
        msg.from = leader.peer.0;
        msg.to = peer.0;
        msg.term = leader.term;
        let region = leader.region.clone();
        let range = KeyRange { start: region.start.clone(), end: region.end.clone() };
        c.inject(vec![Envelope {
            region: R1,
            from,
            to: SPARE,
            epoch: Some(region.epoch),
            range: Some(range),
            body: Body::Raft(msg),
        }]);
        // The spare does not campaign from a snapshot raft-rs does not know applied...
        c.run_for(SECOND);
        assert_eq!(c.leader(R1), Some(from), "seed {seed}: the leader stays");
        // ...and takes over once it is persisted, as the transfer asked.
        c.hold_writes(SPARE, false);
        assert!(
            c.run_until(10 * SECOND, |c| c.leader(R1) == Some(SPARE)),
            "seed {seed}: the spare leads"
        );
        settles(&mut c, seed, b"v2");
    }
}

#[test]
fn an_election_timeout_before_the_snapshot_is_persisted_does_not_campaign() {
    for seed in seeds() {
        let (mut c, _, _) = spare_just_installed(seed);
        // The spare hears nothing from its leader for several election timeouts while
        // its snapshot's write is still in flight.
        c.faults().isolate(SPARE);
        c.run_for(SECOND);
        c.hold_writes(SPARE, false);
        c.run_for(SECOND);
        c.faults().clear();
        settles(&mut c, seed, b"v2");
    }
}
