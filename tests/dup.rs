//! Duplication as a client drives it: the directory's records, the start of every
//! covered region (its floor), the move to `Prepare`, pause and resume, removal, and
//! the version gate.

use std::time::{Duration, Instant};

use regionkv::layers::engine::dup::DupStage;
use regionkv::{Cluster, Db, DupReport, DupSpec, DupTarget, DuplicationStatus, Error};

fn cluster(dir: &std::path::Path) -> Cluster {
    Cluster::builder().dir(dir).stores(3).tick_interval(Duration::from_millis(10)).build().unwrap()
}

fn spec(start: &str, end: Option<&str>, seed: bool) -> DupSpec {
    DupSpec {
        start: start.as_bytes().to_vec(),
        end: end.map(|e| e.as_bytes().to_vec()),
        target: DupTarget::InProcess("b".into()),
        seed,
    }
}

/// Waits (up to 20 s) until `db`'s report of `dup_id` passes `done`; returns it.
fn wait_for(db: &Db, dup_id: u64, done: impl Fn(&DupReport) -> bool) -> DupReport {
    let start = Instant::now();
    loop {
        let report = db.duplication_status(Some(dup_id)).unwrap().remove(0);
        if done(&report) {
            return report;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "never reached: {report:#?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn refused(result: Result<(), Error>) -> String {
    match result {
        Err(e @ Error::Store(regionkv::StoreError::DupRefused { .. })) => e.to_string(),
        other => panic!("not refused: {other:?}"),
    }
}

#[test]
fn an_added_duplication_starts_every_covered_region_then_prepares() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path());
    let db = cluster.db();
    cluster.split_keys(&["g", "p"]).unwrap();
    db.put("a", "1").unwrap();
    // Covers the regions [g, p) and [p, ..) but not [.., g).
    let id = db.add_duplication(spec("h", None, true)).unwrap();
    let report = wait_for(&db, id, |r| r.status == DuplicationStatus::Prepare);
    assert_eq!(report.regions.len(), 2, "{report:#?}");
    for region in &report.regions {
        let state = region.state.as_ref().unwrap_or_else(|| panic!("{report:#?}"));
        assert_eq!((state.stage, state.incarnation), (DupStage::Prepare, 1));
        // The start's own index: at least 1, decided by the log.
        assert!(state.min_ckpt_index >= 1);
        assert!(!region.frozen);
    }
    // The region the range does not cover took no part.
    for (_, peers) in cluster.status() {
        for p in peers.iter().filter(|p| p.region.end.as_deref() == Some(b"g".as_slice())) {
            assert!(p.dups.as_ref().is_none_or(|t| t.get(id).is_none()), "{p:?}");
        }
    }
    // Neither pause nor resume is a move from Prepare; nothing changes.
    assert!(refused(db.pause_duplication(id)).contains("not in a stage"));
    assert!(refused(db.resume_duplication(id)).contains("not in a stage"));
    assert!(refused(db.reseed_duplication(id)).contains("not in a stage"));
    assert_eq!(db.duplication_status(Some(id)).unwrap()[0].status, DuplicationStatus::Prepare);

    // Removal stops every region, then drops the record.
    db.remove_duplication(id).unwrap();
    let start = Instant::now();
    while !db.duplication_status(None).unwrap().is_empty() {
        assert!(start.elapsed() < Duration::from_secs(20), "the record was never dropped");
        std::thread::sleep(Duration::from_millis(20));
    }
    for (_, peers) in cluster.status() {
        for p in &peers {
            assert!(p.dups.as_ref().is_none_or(|t| t.get(id).is_none()), "{p:?}");
        }
    }
    assert!(matches!(db.duplication_status(Some(id)), Err(Error::InvalidRequest(_))));
}

#[test]
fn an_unseeded_duplication_goes_to_log_and_pauses_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path());
    let db = cluster.db();
    let id = db.add_duplication(spec("", None, false)).unwrap();
    let report = wait_for(&db, id, |r| r.status == DuplicationStatus::Log);
    assert!(!report.seed);
    assert_eq!(report.target, "b");
    db.pause_duplication(id).unwrap();
    assert_eq!(db.duplication_status(Some(id)).unwrap()[0].status, DuplicationStatus::Paused);
    // Paused: the region keeps its entry (its floor; a new leader may not have applied
    // it yet when asked).
    wait_for(&db, id, |r| r.regions.iter().all(|r| r.state.is_some()));
    assert!(refused(db.pause_duplication(id)).contains("not in a stage"));
    db.resume_duplication(id).unwrap();
    assert_eq!(db.duplication_status(Some(id)).unwrap()[0].status, DuplicationStatus::Log);
    // A second duplication gets its own id, and both are listed.
    let other = db.add_duplication(spec("x", Some("y"), true)).unwrap();
    assert_ne!(id, other);
    let all: Vec<u64> = db.duplication_status(None).unwrap().iter().map(|r| r.dup_id).collect();
    assert_eq!(all.len(), 2);
    assert!(all.contains(&id) && all.contains(&other));
    // An empty range is refused before anything is written.
    let empty = db.add_duplication(spec("k", Some("k"), true));
    assert!(
        matches!(empty, Err(Error::Store(regionkv::StoreError::InvalidRequest(_)))),
        "{empty:?}"
    );
}

#[test]
fn a_cluster_below_version_7_refuses_a_duplication() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::builder()
        .dir(dir.path())
        .stores(3)
        .cluster_version_max(1, 6)
        .cluster_version_max(2, 6)
        .cluster_version_max(3, 6)
        .build()
        .unwrap();
    let db = cluster.db();
    db.put("k", "v").unwrap();
    match db.add_duplication(spec("", None, true)) {
        Err(Error::FeatureNotActive { needed: 7, .. }) => {}
        other => panic!("not refused by the version gate: {other:?}"),
    }
    assert_eq!(db.duplication_status(None).unwrap().len(), 0);
}

/// Every key of `db` in `[start, ..)`, as a scan returns it.
fn rows(db: &Db, start: &str) -> Vec<(String, String)> {
    db.scan(start.as_bytes().to_vec().., usize::MAX)
        .unwrap()
        .into_iter()
        .map(|(k, v)| {
            (String::from_utf8(k.to_vec()).unwrap(), String::from_utf8(v.to_vec()).unwrap())
        })
        .collect()
}

#[test]
fn a_duplication_seeds_the_follower_then_ships_the_log_exactly_once() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let source = cluster(a_dir.path());
    let follower = cluster(b_dir.path());
    source.add_duplication_target("b", follower.db());
    let (a, b) = (source.db(), follower.db());
    source.split_keys(&["m", "t"]).unwrap();
    follower.split_keys(&["p"]).unwrap();
    // Before the duplication: the seed carries these, deletes included.
    for i in 0..50 {
        a.put(format!("k{i:02}"), format!("v{i}")).unwrap();
        a.put(format!("r{i:02}"), format!("v{i}")).unwrap();
    }
    a.delete("k07").unwrap();
    // A key the follower holds in the range but the source does not: the seed wipes it.
    b.put("k99-stale", "x").unwrap();
    let id = a.add_duplication(spec("k", None, true)).unwrap();
    wait_for(&a, id, |r| r.status == DuplicationStatus::Log);
    // After: the log ships, overwrites and deletes in order.
    for i in 0..50 {
        a.put(format!("k{i:02}"), format!("w{i}")).unwrap();
        a.put(format!("u{i:02}"), format!("w{i}")).unwrap();
    }
    a.delete("r03").unwrap();
    let start = Instant::now();
    while rows(&b, "k") != rows(&a, "k") {
        assert!(start.elapsed() < Duration::from_secs(30), "the follower never caught up");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(b.get("k99-stale").unwrap().is_none(), "the seed wiped the range");
    // Outside the range, nothing was shipped.
    a.put("a", "1").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(b.get("a").unwrap().is_none());
    // The follower's range is a read-only standby for its clients.
    let refused = b.put("k01", "mine");
    assert!(
        matches!(refused, Err(Error::Store(regionkv::StoreError::StandbyReadOnly { .. }))),
        "{refused:?}"
    );
    // Every region confirmed what it shipped.
    let report = a.duplication_status(Some(id)).unwrap().remove(0);
    assert!(
        report.regions.iter().all(|r| r
            .state
            .as_ref()
            .is_some_and(|s| s.stage == DupStage::Streaming
                && s.confirmed.is_some_and(|c| c >= s.min_ckpt_index))),
        "{report:#?}"
    );
}

#[test]
fn a_killed_source_store_does_not_lose_or_double_what_ships() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let source = cluster(a_dir.path());
    let follower = cluster(b_dir.path());
    source.add_duplication_target("b", follower.db());
    let (a, b) = (source.db(), follower.db());
    source.split_keys(&["m"]).unwrap();
    for i in 0..20 {
        a.put(format!("k{i:03}"), "0").unwrap();
    }
    let id = a.add_duplication(spec("", None, true)).unwrap();
    wait_for(&a, id, |r| r.status == DuplicationStatus::Log);
    // Counters bumped in order: a doubled or lost op would leave another value.
    for round in 1..=30 {
        if round == 10 {
            source.kill_store(1).unwrap();
        }
        if round == 20 {
            source.restart_store(1).unwrap();
        }
        for i in (0..20).step_by(3) {
            let key = format!("{}{i:03}", if i % 2 == 0 { "k" } else { "x" });
            a.put(key, round.to_string()).unwrap();
        }
    }
    let start = Instant::now();
    while rows(&b, "") != rows(&a, "") {
        let report = a.duplication_status(Some(id)).unwrap().remove(0);
        assert_ne!(report.status, DuplicationStatus::Broken, "{report:#?}");
        assert!(start.elapsed() < Duration::from_secs(30), "never caught up: {report:#?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
