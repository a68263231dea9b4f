//! Status reports of schema 2 from a `Cluster`'s stores: what `Cluster::store_status`
//! answers is what a `Node` of the store would (`StoreStatus::of_store`): the schema,
//! the binary's version, a boot id per start with reports numbered in it, the store's
//! state, its disk and memtable, and every replica with its later fields.

use regionkv::{Cluster, ReportedRole, STATUS_SCHEMA, StoreId, StoreState, TimelineState};

#[test]
fn a_store_reports_schema_2_and_numbers_its_reports_per_start()
-> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let cluster = Cluster::builder().dir(dir.path()).stores(3).build()?;
    let db = cluster.db();
    for i in 0..20 {
        db.put(format!("k{i}"), "v")?;
    }
    let s1 = StoreId(1);
    let first = cluster.store_status(s1).expect("store 1 runs");
    assert_eq!(first.store, s1);
    assert_eq!(first.status_schema, Some(STATUS_SCHEMA));
    assert_eq!(first.binary_version.as_deref(), Some(env!("CARGO_PKG_VERSION")));
    assert_eq!(first.store_state, Some(StoreState::Serving));
    assert_eq!(first.failure, None);
    assert_eq!(first.peer_set_complete, Some(true));
    assert!(first.metrics.is_some());
    let capacity = first.capacity.expect("capacity reported");
    let (total, available) = (capacity.disk_total_bytes.unwrap(), capacity.disk_available_bytes);
    assert!(total > 0 && available.unwrap() <= total, "{capacity:?}");
    assert!(capacity.memtable_bytes.unwrap() > 0, "20 writes are in the memtable");
    // Every replica, with its later fields.
    let hosted: Vec<_> = cluster.status().into_iter().find(|(id, _)| *id == s1).unwrap().1;
    let ids = |peers: &[regionkv::PeerStatus]| -> Vec<_> {
        peers.iter().map(|p| (p.region.id, p.peer)).collect()
    };
    assert_eq!(ids(&first.peers), ids(&hosted), "every replica of the store");
    for p in &first.peers {
        assert_eq!(p.reported_role, ReportedRole::from(p.role));
        assert!(p.first_index.is_some() && p.merge_pending.is_some(), "{p:?}");
        assert_eq!(p.timeline, Some(TimelineState::Active), "{p:?}");
        assert_eq!(p.progress.is_some(), p.reported_role == ReportedRole::Leader, "{p:?}");
    }
    // Reports are numbered in this start; another start draws another boot id and
    // numbers from 1 again.
    let boot = first.boot_id.expect("boot id reported");
    let next = cluster.store_status(s1).unwrap();
    assert_eq!((next.boot_id, next.report_seq), (Some(boot), Some(first.report_seq.unwrap() + 1)));
    cluster.stop_store(s1)?;
    assert_eq!(cluster.store_status(s1), None, "a stopped store reports nothing");
    cluster.restart_store(s1)?;
    let restarted = cluster.store_status(s1).unwrap();
    assert_ne!(restarted.boot_id, Some(boot), "a restart is another boot");
    assert_eq!(restarted.report_seq, Some(1));
    assert_eq!(cluster.store_status(StoreId(9)), None, "no such store");
    cluster.shutdown()?;
    Ok(())
}
