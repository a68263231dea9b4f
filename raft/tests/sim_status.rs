//! What a replica reports beyond the first status fields (status schema 2): its role as
//! reported, its log's first index, its timeline, a leader's view of each follower, the
//! learner flag; read from the simulator's stores, which run the real store core.

mod common;

use std::time::Duration;

use regionkv_raft::sim::{SimCluster, SimConfig};
use regionkv_raft::{ProgressState, ReportedRole, StateRole, TimelineState};

use common::R1;

#[test]
fn a_leader_reports_each_followers_progress_and_every_replica_its_log_and_timeline() {
    let mut c = SimCluster::new(SimConfig::new(3)).unwrap();
    let leader = c.wait_leader(R1, Duration::from_secs(10)).expect("a leader is elected");
    for i in 0..5 {
        let w = c.write(leader, R1, vec![common::put_op(&format!("k{i}"), "v")]);
        assert!(matches!(c.wait(&w, Duration::from_secs(5)), Some(Ok(()))));
    }
    c.run_for(Duration::from_millis(500));
    let leader_status = c.status(leader).into_iter().find(|s| s.region.id == R1).unwrap();
    for store in c.store_ids() {
        let s = c.status(store).into_iter().find(|s| s.region.id == R1).unwrap();
        assert_eq!(s.reported_role, ReportedRole::from(s.role), "store {store}");
        let first = s.first_index.expect("first index reported");
        assert!(first >= 1 && first <= s.last_index + 1, "store {store}: {s:?}");
        assert_eq!(s.timeline, Some(TimelineState::Active), "store {store}");
        assert_eq!(s.merge_pending, Some(false), "store {store}");
        assert_eq!(s.is_learner, Some(false), "store {store}");
        assert_eq!((s.image_hash, s.halted.as_deref()), (None, None), "store {store}");
        if s.role == StateRole::Leader {
            let progress = s.progress.as_ref().expect("a leader reports progress");
            let mut peers: Vec<_> = progress.iter().map(|p| p.peer).collect();
            peers.sort();
            let mut others: Vec<_> =
                s.region.peers.iter().map(|p| p.id).filter(|&id| id != s.peer).collect();
            others.sort();
            assert_eq!(peers, others, "one entry per other member");
            for p in progress {
                assert_eq!(p.matched, leader_status.last_index, "{p:?}");
                assert_eq!(p.state, ProgressState::Replicate, "{p:?}");
                assert_eq!(p.recent_active, Some(true), "{p:?}");
                // The leader's store heard from the follower's store within two
                // election timeouts (its core counts ticks since each store's last message).
                let heard = p.ticks_since_heard.expect("the leader's store heard the follower's");
                assert!(heard <= 20, "{p:?}");
            }
        } else {
            assert_eq!(s.progress, None, "store {store}: a follower reports no progress");
            assert_eq!(s.reported_role, ReportedRole::Follower);
        }
    }
}
