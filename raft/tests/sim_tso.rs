//! The timestamp oracle in the simulator (ARCHITECTURE.md, "Timestamp oracle"): three
//! stores with the directory; many allocations, some asked together, across leader
//! transfers, crashes of the directory's leader (every `CrashMode`, right after an
//! allocation) and clean stops, with restarts. Before every fault the other stores'
//! clocks are set well behind the leader's (more than the window), so the next leader
//! could only stay above what was handed out through the persisted limit. Every
//! timestamp is strictly above every one handed out before, and the leader's directory
//! holds a limit above every one it handed out. At cluster version 2 the oracle is
//! refused (`FeatureNotActive`), and so is a save of its limit.
//!
//! A failing seed replays with `SIM_SEED=<seed> cargo test --release -p regionkv-raft
//! --test sim_tso`; `SIM_TSO_SEEDS=<n>` runs seeds 1 to n (3 by default).

use std::time::Duration;

use regionkv_engine::PeerId;
use regionkv_engine::StoreId;
use regionkv_raft::Error;
use regionkv_raft::directory::{DIRECTORY, DirCmd};
use regionkv_raft::sim::{SimCluster, SimConfig};
use regionkv_raft::tso::{TS_WINDOW_MS, ts_limit};
use regionkv_wal::CrashMode;

const SECOND: Duration = Duration::from_secs(1);

fn seeds() -> Vec<u64> {
    if let Ok(seed) = std::env::var("SIM_SEED") {
        return vec![seed.parse().expect("SIM_SEED is a number")];
    }
    let n = std::env::var("SIM_TSO_SEEDS").map_or(3, |n| n.parse().expect("a number"));
    (1..=n).collect()
}

fn cluster(seed: u64, version_max: Option<u32>) -> SimCluster {
    let mut config = SimConfig::new(seed);
    config.directory = true;
    if let Some(max) = version_max {
        for s in 1..=3 {
            config.cluster_version_max.insert(StoreId(s), max);
        }
    }
    let mut c = SimCluster::new(config).unwrap();
    c.wait_leader(DIRECTORY, 10 * SECOND).expect("a directory leader");
    c
}

/// What a client saw: the highest timestamp handed out so far.
struct Seen {
    seed: u64,
    max: u64,
    served: usize,
}

impl Seen {
    /// Takes `count` timestamps from `first`: all above everything before.
    fn take(&mut self, first: u64, count: u32, what: &str) {
        assert!(
            first > self.max,
            "seed {}: {what}: {first} is not above {} handed out before",
            self.seed,
            self.max
        );
        self.max = first + u64::from(count) - 1;
        self.served += 1;
    }
}

/// `counts.len()` requests asked of the directory's leader in one go (served together),
/// retried on routing errors; returns the leader that served the last of them.
fn allocate(c: &mut SimCluster, seen: &mut Seen, counts: &[u32], what: &str) -> StoreId {
    let deadline = c.now() + 20 * SECOND;
    let mut last = None;
    'retry: while c.now() < deadline {
        let Some(leader) = c.wait_leader(DIRECTORY, SECOND) else { continue };
        let pending: Vec<_> = counts.iter().map(|&n| (n, c.timestamps(leader, n))).collect();
        let mut got = Vec::new();
        for (n, p) in &pending {
            match c.wait(p, SECOND) {
                Some(Ok(first)) => got.push((first, *n)),
                Some(Err(e)) if e.is_retryable() => {
                    last = Some(e.to_string());
                    c.run_for(Duration::from_millis(20));
                    continue 'retry;
                }
                Some(Err(e)) => panic!("seed {}: {what}: {e}", seen.seed),
                None => {
                    last = Some("no answer".into());
                    continue 'retry;
                }
            }
        }
        // Requests asked together are served in the order they came.
        for (first, n) in got {
            seen.take(first, n, what);
        }
        // Nothing was handed out the leader's directory does not hold a limit above.
        let limit = ts_limit(&c.context(leader).expect("running").directory.read_view()).unwrap();
        assert!(limit > seen.max, "seed {}: {what}: limit {limit} <= {}", seen.seed, seen.max);
        return leader;
    }
    panic!("seed {}: {what}: no timestamps within 20 s: {last:?}", seen.seed);
}

/// The peer of `store`'s replica of the directory.
fn peer_of(c: &SimCluster, leader: StoreId, on: StoreId) -> PeerId {
    let region = c.region(leader, DIRECTORY).expect("the directory");
    region.peers.iter().find(|p| p.store == on).expect("a peer there").id
}

/// Sets every store but `leader` `behind` ms behind the cluster's clock, and the
/// leader in step: the next leader's clock is behind what was handed out.
fn skew(c: &mut SimCluster, leader: StoreId, behind: u64) {
    for s in c.store_ids() {
        c.set_clock_behind(s, if s == leader { 0 } else { behind });
    }
}

#[test]
fn timestamps_only_go_up_across_leaders_crashes_and_restarts() {
    for seed in seeds() {
        let mut c = cluster(seed, None);
        let mut seen = Seen { seed, max: 0, served: 0 };
        let faults = [
            Some(CrashMode::Lost),
            Some(CrashMode::Persisted),
            Some(CrashMode::Torn { seed }),
            Some(CrashMode::BitFlip { seed }),
            None, // a leader transfer
            Some(CrashMode::Lost),
        ];
        let mut behind = 0;
        for (round, fault) in faults.iter().enumerate() {
            let what = format!("round {round} ({fault:?})");
            let mut leader = allocate(&mut c, &mut seen, &[1, 5, 1], &what);
            for i in 0..20u32 {
                c.run_for(Duration::from_millis(7 * u64::from(i % 3)));
                leader = allocate(&mut c, &mut seen, &[1 + i % 4], &what);
            }
            // The next leader's clock runs well behind what was handed out.
            behind += 2 * TS_WINDOW_MS;
            skew(&mut c, leader, behind);
            if let Some(mode) = fault {
                // Right after an allocation: nothing runs in between.
                c.crash(leader, *mode);
                allocate(&mut c, &mut seen, &[1, 2], &format!("{what}, after the crash"));
                c.restart(leader).expect("restart");
            } else {
                let to = c.store_ids().into_iter().find(|&s| s != leader).expect("another");
                let peer = peer_of(&c, leader, to);
                c.transfer_leader(leader, DIRECTORY, peer);
                allocate(&mut c, &mut seen, &[3], &format!("{what}, after the transfer"));
            }
        }
        // A clean stop of every store, then a restart of all: still above.
        allocate(&mut c, &mut seen, &[1], "before the full restart");
        behind += 2 * TS_WINDOW_MS;
        skew(&mut c, StoreId(0), behind);
        for s in c.store_ids() {
            c.stop(s);
        }
        for s in c.store_ids() {
            c.restart(s).expect("restart");
        }
        allocate(&mut c, &mut seen, &[1, 1], "after the full restart");
        assert!(seen.served > 100, "seed {seed}: only {} served", seen.served);
    }
}

#[test]
fn a_non_leader_answers_not_leader_and_bad_counts_are_refused() {
    let mut c = cluster(7, None);
    let leader = c.wait_leader(DIRECTORY, SECOND).unwrap();
    let other = c.store_ids().into_iter().find(|&s| s != leader).unwrap();
    let p = c.timestamps(other, 1);
    match c.wait(&p, SECOND) {
        Some(Err(Error::NotLeader { region, leader: hint })) => {
            assert_eq!(region, DIRECTORY);
            assert!(hint.is_none() || hint == Some(leader), "{hint:?}");
        }
        other => panic!("{other:?}"),
    }
    for count in [0, regionkv_raft::tso::MAX_TIMESTAMPS_PER_REQUEST + 1] {
        let p = c.timestamps(leader, count);
        assert!(matches!(c.wait(&p, SECOND), Some(Err(Error::InvalidRequest(_)))), "{count}");
    }
}

#[test]
fn at_cluster_version_2_the_oracle_is_refused() {
    let mut c = cluster(3, Some(2));
    let leader = c.wait_leader(DIRECTORY, SECOND).unwrap();
    let p = c.timestamps(leader, 1);
    assert!(
        matches!(c.wait(&p, SECOND), Some(Err(Error::FeatureNotActive { needed: 3, .. }))),
        "timestamps at version 2"
    );
    let p = c.directory(leader, &DirCmd::SaveTsLimit { limit: 1 << 40 });
    assert!(
        matches!(c.wait(&p, SECOND), Some(Err(Error::FeatureNotActive { needed: 3, .. }))),
        "a save at version 2"
    );
    assert_eq!(ts_limit(&c.context(leader).unwrap().directory.read_view()).unwrap(), 0);
}
