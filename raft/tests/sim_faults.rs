//! Replication under faults in the deterministic simulator: failover, partitions,
//! message loss, crashes in every crash mode, a replica joining by snapshot, removal.
//! The simulator checks P5 (one leader per term), P6 (same entry at each index) and P7
//! (monotonic term, epoch, commit, applied) after every event; these tests add P1
//! (every acknowledged write is there after the faults heal).
//!
//! A failing seed replays with `SIM_SEED=<seed> cargo test --release -p regionkv-raft
//! --test sim_faults`. The random-faults test runs 200 seeds; `SIM_SOAK_SEEDS=<n>` runs
//! n (the soak: 5,000).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use raft::eraftpb::MessageType;
use regionkv_engine::{Peer, StoreId};
use regionkv_raft::PeerChange;
use regionkv_raft::sim::{SimCluster, SimConfig};
use regionkv_raft::transport::local::{Action, Rule, Scope};
use regionkv_wal::CrashMode;

use common::{R1, SECOND, put_op as put, read_r1 as read, write_r1 as write};

/// What the model expects of each key: the last acknowledged value, and values of
/// later writes whose outcome is unknown (either may be there).
#[derive(Default)]
struct Model {
    keys: BTreeMap<String, (Option<String>, Vec<String>)>,
}

impl Model {
    fn record(&mut self, key: &str, value: &str, acked: bool) {
        let entry = self.keys.entry(key.to_owned()).or_default();
        if acked {
            *entry = (Some(value.to_owned()), Vec::new());
        } else {
            entry.1.push(value.to_owned());
        }
    }

    /// P1: every key holds its last acknowledged value or a later unknown one.
    fn verify(&self, c: &mut SimCluster, seed: u64) {
        for (key, (acked, unknown)) in &self.keys {
            let got = read(c, key, 30 * SECOND).map(|b| String::from_utf8(b.to_vec()).unwrap());
            let ok = got == *acked || got.as_ref().is_some_and(|g| unknown.contains(g));
            assert!(
                ok,
                "seed {seed}: P1: key {key} holds {got:?}, acknowledged {acked:?}, unknown {unknown:?}"
            );
        }
    }
}

fn converged(c: &mut SimCluster) -> bool {
    let live: Vec<StoreId> = c.store_ids().into_iter().filter(|&s| c.is_running(s)).collect();
    let applied: Vec<u64> =
        live.iter().filter_map(|&s| c.status(s).first().map(|p| p.applied)).collect();
    applied.len() == live.len() && applied.windows(2).all(|w| w[0] == w[1])
}

#[test]
fn the_leader_crashes_and_a_new_one_takes_over_then_it_catches_up() {
    let mut c = SimCluster::new(SimConfig::new(11)).unwrap();
    let mut model = Model::default();
    for i in 0..30 {
        let ok = write(&mut c, &[put(&format!("k{i}"), &format!("v{i}"))], 10 * SECOND);
        model.record(&format!("k{i}"), &format!("v{i}"), ok);
    }
    let old = c.leader(R1).unwrap();
    c.crash(old, CrashMode::Lost);
    let new = c.wait_leader(R1, 10 * SECOND).expect("a new leader within a few election timeouts");
    assert_ne!(new, old);
    for i in 30..60 {
        let ok = write(&mut c, &[put(&format!("k{i}"), &format!("v{i}"))], 10 * SECOND);
        model.record(&format!("k{i}"), &format!("v{i}"), ok);
    }
    c.restart(old).unwrap();
    assert!(c.run_until(20 * SECOND, converged), "the restarted store catches up");
    model.verify(&mut c, 11);
}

#[test]
fn a_partitioned_leader_loses_its_place_and_the_majority_goes_on() {
    let mut c = SimCluster::new(SimConfig::new(12)).unwrap();
    let old = c.wait_leader(R1, 10 * SECOND).unwrap();
    assert!(write(&mut c, &[put("before", "1")], 10 * SECOND));
    c.faults().isolate(old);
    // The isolated leader cannot commit: its write never succeeds.
    let stuck = c.write(old, R1, vec![put("isolated", "x")]);
    let others: Vec<StoreId> = c.store_ids().into_iter().filter(|&s| s != old).collect();
    assert!(
        c.run_until(10 * SECOND, |c| c.leader(R1).is_some_and(|l| l != old)),
        "the majority elects"
    );
    let mut model = Model::default();
    model.record("before", "1", true);
    for i in 0..10 {
        let ok = write(&mut c, &[put(&format!("m{i}"), "1")], 10 * SECOND);
        model.record(&format!("m{i}"), "1", ok);
        assert!(ok, "the majority keeps committing");
    }
    assert!(!matches!(stuck.take(), Some(Ok(()))), "the isolated leader acknowledged nothing");
    c.faults().clear();
    assert!(c.run_until(20 * SECOND, converged));
    assert!(others.contains(&c.leader(R1).unwrap()) || c.leader(R1) == Some(old));
    model.record("isolated", "x", false);
    model.verify(&mut c, 12);
}

#[test]
fn writes_complete_through_loss_duplication_and_reordering() {
    let mut c = SimCluster::new(SimConfig::new(13)).unwrap();
    c.faults().add(Rule { scope: Scope::any(), action: Action::Drop(0.2) });
    c.faults().add(Rule { scope: Scope::any(), action: Action::Duplicate(0.1) });
    c.faults().add(Rule {
        scope: Scope::any(),
        action: Action::Delay { min: Duration::ZERO, max: Duration::from_millis(30) },
    });
    let mut model = Model::default();
    for i in 0..40 {
        let ok = write(&mut c, &[put(&format!("k{i}"), &format!("v{i}"))], 30 * SECOND);
        model.record(&format!("k{i}"), &format!("v{i}"), ok);
    }
    c.faults().clear();
    assert!(c.run_until(20 * SECOND, converged));
    model.verify(&mut c, 13);
}

#[test]
fn a_new_replica_joins_by_snapshot_and_a_removed_one_leaves() {
    let mut config = SimConfig::new(14);
    config.spares = 1;
    config.checkpoint_log_bytes = 2 << 10; // checkpoint (and compact) often
    let mut c = SimCluster::new(config).unwrap();
    let mut model = Model::default();
    for i in 0..200 {
        let v = format!("value-{i}-{}", "x".repeat(40));
        let ok = write(&mut c, &[put(&format!("k{i:03}"), &v)], 10 * SECOND);
        model.record(&format!("k{i:03}"), &v, ok);
    }
    let leader = c.leader(R1).unwrap();
    let spare = StoreId(4);
    let peer = c.new_peer_id();
    let added = c.change_peers(leader, R1, PeerChange::AddVoter(Peer { id: peer, store: spare }));
    let region = c.wait(&added, 10 * SECOND).expect("answered").expect("the change applies");
    assert_eq!(region.peers.len(), 4);
    assert_eq!(region.epoch.conf_ver, 2);
    // The log was compacted long ago: the only way in is a snapshot.
    assert!(
        c.run_until(30 * SECOND, |c| c.status(spare).first().is_some_and(|s| s.initialized)),
        "the new replica installs a snapshot"
    );
    assert!(c.run_until(30 * SECOND, converged), "and catches up");
    // It serves as leader with all the data.
    c.transfer_leader(c.leader(R1).unwrap(), R1, peer);
    assert!(c.run_until(10 * SECOND, |c| c.leader(R1) == Some(spare)), "leadership moves to it");
    model.verify(&mut c, 14);

    // Remove one of the original voters.
    let victim = StoreId(1);
    let victim_peer = c.status(victim)[0].peer;
    let leader = c.leader(R1).unwrap();
    let removed = c.change_peers(leader, R1, PeerChange::Remove(victim_peer));
    let region = c.wait(&removed, 10 * SECOND).unwrap().unwrap();
    assert!(region.peers.iter().all(|p| p.store != victim));
    assert!(
        c.run_until(10 * SECOND, |c| c.status(victim).is_empty()),
        "the removed replica is destroyed"
    );
    assert!(write(&mut c, &[put("after-removal", "1")], 10 * SECOND));
}

/// Many seeds: random writes while stores crash (in every crash mode) and restart,
/// links drop and delay messages, and partitions come and go; then everything heals.
#[test]
fn random_faults_never_lose_an_acknowledged_write() {
    let seeds: Vec<u64> = if let Ok(s) = std::env::var("SIM_SEED") {
        vec![s.parse().expect("SIM_SEED is a number")]
    } else {
        let soak = std::env::var("SIM_SOAK_SEEDS").ok().and_then(|n| n.parse().ok());
        (100..100 + soak.unwrap_or(200)).collect()
    };
    let mut totals = (0, 0);
    for seed in seeds {
        let mut c = SimCluster::new(SimConfig::new(seed)).unwrap();
        let mut rng = regionkv_raft::transport::local::SplitMix(seed ^ 0xfeed);
        let mut model = Model::default();
        let stores = c.store_ids();
        let (mut acked, mut unknown, mut crashes) = (0, 0, 0);
        for step in 0..100u64 {
            match rng.next_u64() % 10 {
                0 => {
                    let victim = stores[(rng.next_u64() % 3) as usize];
                    let mode = match rng.next_u64() % 4 {
                        0 => CrashMode::Lost,
                        1 => CrashMode::Persisted,
                        2 => CrashMode::Torn { seed: step },
                        _ => CrashMode::BitFlip { seed: step },
                    };
                    c.crash(victim, mode);
                    crashes += 1;
                }
                1 => {
                    for &s in &stores {
                        c.restart(s).unwrap();
                    }
                }
                2 => {
                    let a = stores[(rng.next_u64() % 3) as usize];
                    c.faults().isolate(a);
                }
                3 => c.faults().clear(),
                4 => c.faults().add(Rule {
                    scope: Scope { msg_type: Some(MessageType::MsgAppend), ..Scope::any() },
                    action: Action::Drop(0.3),
                }),
                _ => {
                    let key = format!("k{}", rng.next_u64() % 20);
                    let value = format!("s{seed}-{step}");
                    let ok = write(&mut c, &[put(&key, &value)], 2 * SECOND);
                    model.record(&key, &value, ok);
                    if ok { acked += 1 } else { unknown += 1 }
                }
            }
        }
        // Heal: everyone up, no faults; a leader within a bounded time (P14).
        c.faults().clear();
        for &s in &stores {
            c.restart(s).unwrap();
        }
        assert!(
            c.wait_leader(R1, 30 * SECOND).is_some(),
            "seed {seed}: P14: no leader after healing"
        );
        assert!(c.run_until(60 * SECOND, converged), "seed {seed}: replicas did not converge");
        model.verify(&mut c, seed);
        eprintln!(
            "seed {seed}: {acked} acknowledged, {unknown} unknown, {crashes} crashes, {:.1} s virtual, trace {:x}",
            c.now().as_secs_f64(),
            c.trace_hash()
        );
        totals.0 += acked;
        totals.1 += crashes;
    }
    assert!(totals.0 > 500 && totals.1 > 100, "the runs did real work: {totals:?}");
}
