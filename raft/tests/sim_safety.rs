//! Safety of reads, snapshots and replicas around merges and restarts, in the
//! deterministic simulator:
//!
//! - S5: a merge source takes no read once its prepare applied (the target may commit
//!   the merge and take writes to those keys first), and a target paused for its
//!   source refuses reads instead of holding them;
//!
//! Each test names the bug it pins. A failing seed replays with `SIM_SEED=<seed>
//! cargo test --release -p regionkv-raft --test sim_safety`.

mod common;

use regionkv_engine::{RegionId, StoreId};
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
    let pending = c.read(store, region, Query::Get { key: bytes::Bytes::from(key.to_owned()) });
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
