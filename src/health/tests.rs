//! Table-driven tests of every analysis from fake status rows: for each, the positive
//! case next to the unknown cases (field absent, sender schema too low) and the
//! negative one.

use std::time::Duration;

use regionkv_engine::{Epoch, Peer, PeerId, Region, RegionId, StoreId};
use regionkv_raft::directory::RegionRecord;

use super::*;

const S: Duration = Duration::from_secs(1);

fn region(id: u64, stores: &[u64]) -> Region {
    Region {
        id: RegionId(id),
        start: Vec::new(),
        end: None,
        epoch: Epoch { version: 1, conf_ver: 1 },
        peers: stores
            .iter()
            .map(|&s| Peer { id: PeerId(id * 100 + s), store: StoreId(s) })
            .collect(),
    }
}

fn peer_of(region: &Region, store: u64) -> PeerId {
    region.peers.iter().find(|p| p.store == StoreId(store)).expect("peer").id
}

/// A replica with every schema-2 field set to a healthy value.
fn replica(region: &Region, store: u64, leader_store: Option<u64>) -> ObservedReplica {
    let me = peer_of(region, store);
    let leader = leader_store.map(|l| peer_of(region, l));
    let leads = leader == Some(me);
    ObservedReplica {
        region: region.clone(),
        peer: me,
        role: Some(if leads { Role::Leader } else { Role::Follower }),
        term: 5,
        leader,
        commit: 100,
        applied: 100,
        initialized: true,
        hibernated: false,
        first_index: Some(50),
        timeline: Some(TimelineHealth::Active),
        progress: leads.then(|| {
            region
                .peers
                .iter()
                .filter(|p| p.id != me)
                .map(|p| ObservedProgress {
                    peer: p.id,
                    matched: 100,
                    state: Some(ReplicationState::Replicate),
                    recent_active: Some(true),
                    ticks_since_heard: Some(1),
                })
                .collect()
        }),
        is_learner: Some(false),
        image_hash: Some((90, 0xfeed)),
        oldest_lock_age_ms: leads.then_some(0),
    }
}

/// The same replica as a schema-1 store reports it.
fn as_v1(mut r: ObservedReplica) -> ObservedReplica {
    r.first_index = None;
    r.timeline = None;
    r.progress = None;
    r.is_learner = None;
    r.image_hash = None;
    r.oldest_lock_age_ms = None;
    r
}

struct World {
    regions: Vec<Region>,
    stores: Vec<ObservedStore>,
    now: Duration,
}

/// Three stores, one region led by store 1, all reporting schema 2 just now.
fn healthy() -> World {
    let r = region(1, &[1, 2, 3]);
    let stores = (1..=3)
        .map(|s| ObservedStore {
            store: StoreId(s),
            received_at: 100 * S,
            schema: 2,
            binary_version: Some("0.1.0".into()),
            max_cluster_version: Some(2),
            boot_id: Some(s),
            report_seq: Some(1),
            state: Some(StoreLifecycle::Serving),
            replicas: vec![replica(&r, s, Some(1))],
        })
        .collect();
    World { regions: vec![r], stores, now: 100 * S }
}

fn config() -> HealthConfig {
    HealthConfig {
        no_leader_after: Duration::ZERO,
        under_replicated_after: Duration::ZERO,
        pending_after: Duration::ZERO,
        version_skew_after: Duration::ZERO,
        store_down_after: 10 * S,
        store_dead_after: 20 * S,
        ..HealthConfig::default()
    }
}

fn run(w: &World) -> HealthReport {
    let mut m = Monitor::new(config());
    // The monitor has run since time 0.
    m.evaluate(Duration::ZERO, &[]);
    for s in &w.stores {
        m.observe(s.clone());
    }
    let records: Vec<RegionRecord> =
        w.regions.iter().map(|r| RegionRecord { region: r.clone(), leader: None }).collect();
    m.evaluate(w.now, &records)
}

#[derive(Debug, PartialEq)]
enum Expect {
    Problem,
    Nothing,
    Insufficient(FieldId),
}

fn outcome(report: &HealthReport, code: AnalysisCode) -> Expect {
    if report.detections.iter().any(|d| d.code == code) {
        Expect::Problem
    } else if let Some(i) = report.insufficient.iter().find(|i| i.code == code) {
        Expect::Insufficient(i.missing.field)
    } else {
        Expect::Nothing
    }
}

/// The leader's (store 1's) view of store 3's peer.
fn progress_of_3(w: &mut World) -> &mut ObservedProgress {
    let p = peer_of(&w.regions[0], 3);
    rep(w, 1).progress.as_mut().unwrap().iter_mut().find(|pr| pr.peer == p).unwrap()
}

fn store(w: &mut World, s: u64) -> &mut ObservedStore {
    &mut w.stores[s as usize - 1]
}

fn rep(w: &mut World, s: u64) -> &mut ObservedReplica {
    &mut store(w, s).replicas[0]
}

/// Every store but `s` reports schema 1.
fn all_v1(w: &mut World) {
    for st in &mut w.stores {
        st.schema = 1;
        st.binary_version = None;
        st.max_cluster_version = None;
        st.state = None;
        st.replicas = st.replicas.drain(..).map(as_v1).collect();
    }
}

type Mutate = fn(&mut World);

/// (analysis, case name, how the healthy world is changed, expected outcome)
const ROWS: &[(AnalysisCode, &str, Mutate, Expect)] = &[
    (AnalysisCode::QuorumLost, "healthy", |_| {}, Expect::Nothing),
    (
        AnalysisCode::QuorumLost,
        "two of three silent",
        |w| {
            store(w, 2).received_at = Duration::ZERO;
            store(w, 3).received_at = Duration::ZERO;
        },
        Expect::Problem,
    ),
    (
        AnalysisCode::QuorumLost,
        "one of three silent",
        |w| store(w, 3).received_at = Duration::ZERO,
        Expect::Nothing,
    ),
    (AnalysisCode::QuorumLost, "schema 1", all_v1, Expect::Nothing),
    (
        AnalysisCode::SplitBrain,
        "two leaders, one term",
        |w| {
            let r = w.regions[0].clone();
            *rep(w, 2) = replica(&r, 2, Some(2));
        },
        Expect::Problem,
    ),
    (
        AnalysisCode::SplitBrain,
        "two leaders, two terms",
        |w| {
            let r = w.regions[0].clone();
            *rep(w, 2) = replica(&r, 2, Some(2));
            rep(w, 2).term = 6;
        },
        Expect::Nothing,
    ),
    (
        AnalysisCode::SplitBrain,
        "an unknown role next to a leader",
        |w| rep(w, 2).role = None,
        Expect::Insufficient(FieldId::Role),
    ),
    (
        AnalysisCode::ReplicaDivergence,
        "different hashes at one index",
        |w| rep(w, 3).image_hash = Some((90, 0xbad)),
        Expect::Problem,
    ),
    (
        AnalysisCode::ReplicaDivergence,
        "different indexes",
        |w| rep(w, 3).image_hash = Some((95, 0xbad)),
        Expect::Nothing,
    ),
    (
        AnalysisCode::ReplicaDivergence,
        "a hash absent",
        |w| rep(w, 3).image_hash = None,
        Expect::Insufficient(FieldId::ImageHash),
    ),
    (
        AnalysisCode::ReplicaDivergence,
        "a hash of 0 is a hash",
        |w| rep(w, 3).image_hash = Some((90, 0)),
        Expect::Problem,
    ),
    (
        AnalysisCode::ReplicaDivergence,
        "schema 1",
        all_v1,
        Expect::Insufficient(FieldId::StatusSchema),
    ),
    (
        AnalysisCode::NoLeader,
        "nobody leads or knows a leader",
        |w| {
            for s in 1..=3 {
                let r = w.regions[0].clone();
                *rep(w, s) = replica(&r, s, None);
            }
        },
        Expect::Problem,
    ),
    (AnalysisCode::NoLeader, "healthy", |_| {}, Expect::Nothing),
    // The Vitess row: the leader runs a newer binary whose role code this monitor cannot
    // name. Not "no leader", not a mismatch: insufficient information.
    (
        AnalysisCode::NoLeader,
        "the leader's role is unknown",
        |w| {
            for s in 1..=3 {
                let r = w.regions[0].clone();
                *rep(w, s) = replica(&r, s, None);
            }
            rep(w, 1).role = None;
        },
        Expect::Insufficient(FieldId::Role),
    ),
    (AnalysisCode::NoLeader, "schema 1, healthy", all_v1, Expect::Nothing),
    (
        AnalysisCode::StoreDown,
        "silent past the down timeout",
        |w| store(w, 3).received_at = 80 * S,
        Expect::Problem,
    ),
    (
        AnalysisCode::StoreDown,
        "reported within it",
        |w| store(w, 3).received_at = 95 * S,
        Expect::Nothing,
    ),
    (
        AnalysisCode::StoreDown,
        "schema 1, silent",
        |w| {
            all_v1(w);
            store(w, 3).received_at = 80 * S;
        },
        Expect::Problem,
    ),
    (
        AnalysisCode::StoreDead,
        "silent past the dead timeout, leader does not hear it",
        |w| {
            store(w, 3).received_at = 70 * S;
            let pr = progress_of_3(w);
            pr.recent_active = Some(false);
            pr.ticks_since_heard = Some(500);
        },
        Expect::Problem,
    ),
    (
        AnalysisCode::StoreDead,
        "silent, the leader hibernates and its store has not heard it",
        |w| {
            store(w, 3).received_at = 70 * S;
            rep(w, 1).hibernated = true;
            let pr = progress_of_3(w);
            pr.ticks_since_heard = Some(500);
        },
        Expect::Problem,
    ),
    (
        AnalysisCode::StoreDead,
        "silent, the leader hibernates, its store's view unknown",
        |w| {
            store(w, 3).received_at = 70 * S;
            rep(w, 1).hibernated = true;
            let pr = progress_of_3(w);
            pr.ticks_since_heard = None;
            pr.recent_active = Some(false);
        },
        Expect::Insufficient(FieldId::RecentActive),
    ),
    (
        AnalysisCode::StoreDead,
        "silent past the dead timeout, but no region lists it any more",
        |w| {
            store(w, 3).received_at = 70 * S;
            let r = region(1, &[1, 2, 4]);
            w.regions = vec![r.clone()];
            *rep(w, 1) = replica(&r, 1, Some(1));
            *rep(w, 2) = replica(&r, 2, Some(1));
        },
        Expect::Nothing,
    ),
    (
        AnalysisCode::StoreDead,
        "silent to the monitor, the leader's store heard it lately",
        |w| {
            store(w, 3).received_at = 70 * S;
            let pr = progress_of_3(w);
            pr.recent_active = Some(false);
        },
        Expect::Nothing,
    ),
    (
        AnalysisCode::StoreDead,
        "silent to the monitor, the leader hears it",
        |w| store(w, 3).received_at = 70 * S,
        Expect::Nothing,
    ),
    (
        AnalysisCode::StoreDead,
        "silent, the leader's view unknown",
        |w| {
            store(w, 3).received_at = 70 * S;
            let pr = progress_of_3(w);
            pr.recent_active = None;
            pr.ticks_since_heard = None;
        },
        Expect::Insufficient(FieldId::RecentActive),
    ),
    (
        AnalysisCode::StoreDead,
        "schema 1, silent",
        |w| {
            all_v1(w);
            store(w, 3).received_at = 70 * S;
        },
        Expect::Insufficient(FieldId::StatusSchema),
    ),
    (
        AnalysisCode::StoreDead,
        "down but not for the dead timeout",
        |w| store(w, 3).received_at = 85 * S,
        Expect::Nothing,
    ),
    (
        AnalysisCode::StoreFailed,
        "reports Failed",
        |w| store(w, 2).state = Some(StoreLifecycle::Failed),
        Expect::Problem,
    ),
    (
        AnalysisCode::StoreFailed,
        "state absent",
        |w| store(w, 2).state = None,
        Expect::Insufficient(FieldId::StoreState),
    ),
    (
        AnalysisCode::UnderReplicated,
        "two voters",
        |w| {
            let r = region(1, &[1, 2]);
            w.regions = vec![r.clone()];
            *rep(w, 1) = replica(&r, 1, Some(1));
            *rep(w, 2) = replica(&r, 2, Some(1));
            store(w, 3).replicas.clear();
        },
        Expect::Problem,
    ),
    (AnalysisCode::UnderReplicated, "three voters", |_| {}, Expect::Nothing),
    (
        AnalysisCode::ExtraReplica,
        "four voters",
        |w| {
            let r = region(1, &[1, 2, 3, 4]);
            w.regions = vec![r.clone()];
            for s in 1..=3 {
                *rep(w, s) = replica(&r, s, Some(1));
            }
        },
        Expect::Problem,
    ),
    (
        AnalysisCode::ExtraReplica,
        "three voters and a learner",
        |w| {
            let r = region(1, &[1, 2, 3, 4]);
            w.regions = vec![r.clone()];
            for s in 1..=3 {
                *rep(w, s) = replica(&r, s, Some(1));
            }
            let mut learner = replica(&r, 4, Some(1));
            learner.is_learner = Some(true);
            w.stores.push(ObservedStore {
                store: StoreId(4),
                replicas: vec![learner],
                ..w.stores[0].clone()
            });
        },
        Expect::Nothing,
    ),
    (
        AnalysisCode::PendingReplica,
        "a follower behind the leader's log",
        |w| {
            let pr = progress_of_3(w);
            pr.matched = 10;
        },
        Expect::Problem,
    ),
    (
        AnalysisCode::PendingReplica,
        "a follower in snapshot",
        |w| {
            let pr = progress_of_3(w);
            pr.state = Some(ReplicationState::Snapshot);
        },
        Expect::Problem,
    ),
    (AnalysisCode::PendingReplica, "healthy", |_| {}, Expect::Nothing),
    (
        AnalysisCode::PendingReplica,
        "the leader's progress absent",
        |w| rep(w, 1).progress = None,
        Expect::Insufficient(FieldId::Progress),
    ),
    (
        AnalysisCode::PendingReplica,
        "the leader's first index absent",
        |w| rep(w, 1).first_index = None,
        Expect::Insufficient(FieldId::FirstIndex),
    ),
    (
        AnalysisCode::PendingReplica,
        "a follower's state unknown",
        |w| {
            let pr = progress_of_3(w);
            pr.state = None;
        },
        Expect::Insufficient(FieldId::Progress),
    ),
    (AnalysisCode::PendingReplica, "schema 1", all_v1, Expect::Insufficient(FieldId::StatusSchema)),
    (AnalysisCode::LaggingReplica, "far behind", |w| rep(w, 3).applied = 0, Expect::Nothing),
    (
        AnalysisCode::LaggingReplica,
        "far behind a far commit",
        |w| {
            rep(w, 1).commit = 20_000;
            rep(w, 3).applied = 5;
        },
        Expect::Problem,
    ),
    (
        AnalysisCode::TimelineBroken,
        "a halted replica",
        |w| rep(w, 2).timeline = Some(TimelineHealth::Broken),
        Expect::Problem,
    ),
    (
        AnalysisCode::TimelineBroken,
        "timeline absent",
        |w| rep(w, 2).timeline = None,
        Expect::Insufficient(FieldId::Timeline),
    ),
    (AnalysisCode::TimelineBroken, "schema 1", all_v1, Expect::Insufficient(FieldId::StatusSchema)),
    (
        AnalysisCode::LeaderImbalance,
        "one store leads five, the others none",
        |w| {
            let regions: Vec<Region> = (1..=5).map(|i| region(i, &[1, 2, 3])).collect();
            for s in 1..=3 {
                store(w, s).replicas = regions.iter().map(|r| replica(r, s, Some(1))).collect();
            }
            w.regions = regions;
        },
        Expect::Problem,
    ),
    (AnalysisCode::LeaderImbalance, "one region", |_| {}, Expect::Nothing),
    (
        AnalysisCode::DirectoryStale,
        "the leader is at a newer epoch",
        |w| {
            let mut r = w.regions[0].clone();
            r.epoch.conf_ver = 2;
            for s in 1..=3 {
                rep(w, s).region = r.clone();
            }
        },
        Expect::Problem,
    ),
    (AnalysisCode::DirectoryStale, "healthy", |_| {}, Expect::Nothing),
    (
        AnalysisCode::VersionSkew,
        "two binaries",
        |w| store(w, 3).binary_version = Some("0.2.0".into()),
        Expect::Problem,
    ),
    (
        AnalysisCode::VersionSkew,
        "one binary unknown",
        |w| store(w, 3).binary_version = None,
        Expect::Insufficient(FieldId::BinaryVersion),
    ),
    (AnalysisCode::VersionSkew, "schema 1", all_v1, Expect::Insufficient(FieldId::StatusSchema)),
    (
        AnalysisCode::TxnInDoubtOld,
        "the leader holds a lock past the threshold",
        |w| rep(w, 1).oldest_lock_age_ms = Some(61_000),
        Expect::Problem,
    ),
    (
        AnalysisCode::TxnInDoubtOld,
        "the leader holds a lock at the threshold",
        |w| rep(w, 1).oldest_lock_age_ms = Some(60_000),
        Expect::Nothing,
    ),
    (AnalysisCode::TxnInDoubtOld, "healthy", |_| {}, Expect::Nothing),
    (
        AnalysisCode::TxnInDoubtOld,
        "a leader of an older binary does not report it",
        |w| rep(w, 1).oldest_lock_age_ms = None,
        Expect::Insufficient(FieldId::OldestLockAge),
    ),
    (
        AnalysisCode::TxnInDoubtOld,
        "a follower does not report it (only leaders do)",
        |w| rep(w, 2).oldest_lock_age_ms = None,
        Expect::Nothing,
    ),
    (AnalysisCode::TxnInDoubtOld, "schema 1", all_v1, Expect::Insufficient(FieldId::StatusSchema)),
];

#[test]
fn every_analysis_decides_its_rows() {
    let mut failures = Vec::new();
    for (code, name, mutate, expect) in ROWS {
        let mut w = healthy();
        mutate(&mut w);
        let got = outcome(&run(&w), *code);
        if got != *expect {
            failures.push(format!("{code} / {name}: expected {expect:?}, got {got:?}"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn every_analysis_has_a_positive_row_and_the_healthy_cluster_matches_none() {
    for def in TABLE {
        assert!(
            ROWS.iter().any(|(c, _, _, e)| *c == def.code && *e == Expect::Problem),
            "{} has no positive row",
            def.code
        );
    }
    let report = run(&healthy());
    assert!(report.detections.is_empty(), "{:?}", report.detections);
    assert!(report.planned.is_empty());
}

#[test]
fn every_analysis_reads_only_the_fields_it_declares() {
    for (_, name, mutate, _) in ROWS {
        let mut w = healthy();
        mutate(&mut w);
        let mut m = Monitor::new(config());
        m.evaluate(Duration::ZERO, &[]);
        for s in &w.stores {
            m.observe(s.clone());
        }
        let records: Vec<RegionRecord> =
            w.regions.iter().map(|r| RegionRecord { region: r.clone(), leader: None }).collect();
        let regions = m.regions(&records);
        let liveness = m.liveness(w.now, Duration::ZERO, &regions);
        let facts = analysis::Facts {
            now: w.now,
            config: &m.config,
            regions: &regions,
            stores: &m.stores,
            liveness: &liveness,
        };
        for (code, _, _, reads) in evaluate::evaluate(&facts) {
            let declared = evaluate::declared(analysis::def(code));
            assert_eq!(reads & !declared, 0, "{code} read undeclared fields ({name}): {reads:#b}");
        }
    }
}

#[test]
fn a_dead_store_s_replicas_are_replaced_once_and_not_again_within_the_block() {
    let mut w = healthy();
    store(&mut w, 3).received_at = 70 * S;
    let p = peer_of(&w.regions[0], 3);
    for pr in rep(&mut w, 1).progress.as_mut().unwrap() {
        if pr.peer == p {
            pr.recent_active = Some(false);
            pr.ticks_since_heard = Some(500);
        }
    }
    let mut m = Monitor::new(config());
    m.evaluate(Duration::ZERO, &[]);
    for s in &w.stores {
        m.observe(s.clone());
    }
    let records = vec![RegionRecord { region: w.regions[0].clone(), leader: None }];
    let report = m.evaluate(w.now, &records);
    let expected = PlannedRepair {
        kind: RepairKind::ReplaceReplica,
        region: RegionId(1),
        reason: AnalysisCode::StoreDead,
        remove: Some(StoreId(3)),
    };
    assert_eq!(report.planned, vec![expected.clone()]);
    // While it runs, and within the block after it, the region is not planned again.
    m.repair_started(w.now, &expected);
    assert!(m.evaluate(w.now + S, &records).planned.is_empty());
    m.repair_finished(w.now + 2 * S, &expected, Ok("replaced".into()));
    assert!(m.evaluate(w.now + 3 * S, &records).planned.is_empty());
    let audit = m.audit();
    assert_eq!(audit.len(), 2);
    assert_eq!(audit[0].event, "started");
    assert!(audit[1].event.starts_with("done"));
    // Detect-only: detected, not planned.
    let mut m =
        Monitor::new(HealthConfig { detect_only: [RepairKind::ReplaceReplica].into(), ..config() });
    m.evaluate(Duration::ZERO, &[]);
    for s in &w.stores {
        m.observe(s.clone());
    }
    let report = m.evaluate(w.now, &records);
    assert!(report.detections.iter().any(|d| d.code == AnalysisCode::StoreDead));
    assert!(report.planned.is_empty());
    // Maintenance: not planned either.
    let mut m =
        Monitor::new(HealthConfig { maintenance: [(StoreId(3), 1000 * S)].into(), ..config() });
    m.evaluate(Duration::ZERO, &[]);
    for s in &w.stores {
        m.observe(s.clone());
    }
    assert!(m.evaluate(w.now, &records).planned.is_empty());
}

#[test]
fn a_problem_is_reported_only_after_its_hold_time() {
    let mut w = healthy();
    for s in 1..=3 {
        let r = w.regions[0].clone();
        *rep(&mut w, s) = replica(&r, s, None);
    }
    let mut m = Monitor::new(HealthConfig { no_leader_after: 3 * S, ..config() });
    for s in &w.stores {
        m.observe(s.clone());
    }
    let records = vec![RegionRecord { region: w.regions[0].clone(), leader: None }];
    assert!(m.evaluate(100 * S, &records).detections.is_empty());
    assert!(m.evaluate(102 * S, &records).detections.is_empty());
    let report = m.evaluate(103 * S, &records);
    assert_eq!(report.detections.len(), 1, "{report:?}");
    assert_eq!(report.planned[0].kind, RepairKind::WakeRegion);
}

#[test]
fn an_older_or_repeated_report_does_not_replace_a_newer_one() {
    let w = healthy();
    let mut m = Monitor::new(config());
    let newer = ObservedStore { report_seq: Some(5), ..w.stores[0].clone() };
    let older = ObservedStore { report_seq: Some(4), received_at: 200 * S, ..w.stores[0].clone() };
    assert!(m.observe(newer.clone()));
    assert!(!m.observe(older));
    assert!(!m.observe(newer.clone()));
    assert_eq!(m.observed(StoreId(1)).unwrap().report_seq, Some(5));
    // A restart (a new boot id) starts a new sequence.
    let rebooted =
        ObservedStore { boot_id: Some(99), report_seq: Some(1), received_at: 201 * S, ..newer };
    assert!(m.observe(rebooted));
}
