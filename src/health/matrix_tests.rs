//! The mixed-version matrix: the monitor and a simulated cluster (the real store code,
//! `regionkv_raft::sim`) whose stores report status in schema 1 or 2, under faults.
//! Each cell runs many seeds and asserts:
//! - (a) without a fault: no repair, only `NoProblem` or `InsufficientInfo`;
//! - (b) a store killed for the dead timeout is replaced (its replicas moved to the
//!   spare) when the monitor and the surviving stores speak schema 2, and is reported
//!   as insufficient information, never repaired, otherwise;
//! - (e) a store cut off from the monitor but not from its peers is never replaced;
//! - (f) a role code the monitor cannot name is never taken for a leader or a follower;
//! - (g) every repair was planned from known fields (H1), audited before it ran (H5),
//!   and ran alone on its region (H4).
//!
//! `HEALTH_MATRIX_SEEDS` sets the seeds per cell (default 32).

use std::collections::BTreeSet;
use std::time::Duration;

use regionkv_engine::{RegionId, StoreId};
use regionkv_raft::sim::{SimCluster, SimConfig};
use regionkv_raft::{PeerChange, Query};

use super::*;
use crate::proto::{StatusSchema, StoreStatus};

const MS: Duration = Duration::from_millis(1);
const SPARE: StoreId = StoreId(4);

/// The status schema a party speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Schema {
    V1,
    V2,
}

/// Which stores speak which schema over the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mix {
    AllV1,
    AllV2,
    OneV1,
    TwoV1,
    /// Schema 1 at the start; one store a second moves to schema 2.
    Rolling,
    /// Schema 2 at the start; store 2 goes back to schema 1 after two seconds.
    Downgrade,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    None,
    KillLeader,
    KillFollower,
    /// The monitor stops hearing store 3, which keeps running and talking to its peers.
    PartitionMonitor,
    /// Reports reach the monitor out of order and twice.
    Reorder,
    /// Store 2 reports its role in a code this monitor cannot name (a newer binary).
    UnknownRole,
    /// A real mismatch: store 2's image of region 1 diverges (a key written past Raft),
    /// then every replica hashes its image at one index.
    Diverge,
}

const MIXES: &[Mix] =
    &[Mix::AllV1, Mix::AllV2, Mix::OneV1, Mix::TwoV1, Mix::Rolling, Mix::Downgrade];
const FAULTS: &[Fault] = &[
    Fault::None,
    Fault::KillLeader,
    Fault::KillFollower,
    Fault::PartitionMonitor,
    Fault::Reorder,
    Fault::UnknownRole,
    Fault::Diverge,
];

/// The schema store `s` speaks at virtual time `t`.
fn schema_of(mix: Mix, s: StoreId, t: Duration) -> Schema {
    let secs = t.as_secs();
    match mix {
        Mix::AllV1 => Schema::V1,
        Mix::AllV2 => Schema::V2,
        Mix::OneV1 => {
            if s.0 == 3 {
                Schema::V1
            } else {
                Schema::V2
            }
        }
        Mix::TwoV1 => {
            if s.0 == 2 || s.0 == 3 {
                Schema::V1
            } else {
                Schema::V2
            }
        }
        Mix::Rolling => {
            if s.0 <= secs {
                Schema::V2
            } else {
                Schema::V1
            }
        }
        Mix::Downgrade => {
            if s.0 == 2 && secs >= 2 {
                Schema::V1
            } else {
                Schema::V2
            }
        }
    }
}

fn config() -> HealthConfig {
    HealthConfig {
        replication_factor: 3,
        interval: 200 * MS,
        store_down_after: 1000 * MS,
        store_dead_after: 3000 * MS,
        no_leader_after: 1500 * MS,
        under_replicated_after: 1000 * MS,
        pending_after: 5000 * MS,
        repair_block: Duration::from_secs(60),
        ..HealthConfig::default()
    }
}

/// `store`'s report as a sender speaking `sender` writes it and a monitor speaking
/// `reader` reads it (the wire profiles of `proto::status`); `unknown_role`: the
/// sender is a newer binary whose role codes this monitor cannot name.
fn observed(
    sim: &SimCluster,
    store: StoreId,
    now: Duration,
    sender: Schema,
    reader: Schema,
    unknown_role: bool,
) -> ObservedStore {
    let mut status = StoreStatus::new(store, sim.status(store));
    if sender == Schema::V2 {
        status.status_schema = Some(2);
        status.binary_version = Some("0.1.0".into());
        status.store_state = Some(crate::proto::StoreState::Serving);
    }
    if unknown_role {
        for p in &mut status.peers {
            p.reported_role = regionkv_raft::ReportedRole::Unspecified;
        }
    }
    // The weaker of the two schemas is what crosses the wire.
    let wire = if sender == Schema::V2 && reader == Schema::V2 {
        StatusSchema::V2
    } else {
        StatusSchema::V1
    };
    convert::observed(&status.as_sent_by(wire), now)
}

struct Outcome {
    /// From the kill to the monitor's first `StoreDown`, and to the end of its last
    /// repair (virtual time).
    down_after: Option<Duration>,
    repaired_after: Option<Duration>,
    repairs: Vec<PlannedRepair>,
    detected: BTreeSet<AnalysisCode>,
    insufficient: BTreeSet<(AnalysisCode, FieldId)>,
    /// Regions with a peer on each store at the end.
    peers_on: Vec<(RegionId, Vec<StoreId>)>,
    killed: Option<StoreId>,
}

fn run(monitor_schema: Schema, mix: Mix, fault: Fault, seed: u64) -> Outcome {
    let mut sim = SimCluster::new(SimConfig {
        voters: 3,
        spares: 1,
        directory: true,
        ..SimConfig::new(seed)
    })
    .expect("sim");
    sim.wait_leader(RegionId(1), Duration::from_secs(5)).expect("a leader");
    sim.wait_leader(regionkv_raft::directory::DIRECTORY, Duration::from_secs(5)).expect("a leader");
    let mut monitor = Monitor::new(config());
    let mut detected = BTreeSet::new();
    let mut insufficient = BTreeSet::new();
    let mut repairs = Vec::new();
    let mut killed = None;
    let mut killed_at = None;
    let mut down_after = None;
    let mut repaired_after = None;
    let mut diverged = false;
    let mut held: Vec<ObservedStore> = Vec::new();
    let mut rng = seed;
    let fault_at = Duration::from_secs(2);
    let end = Duration::from_secs(9);
    let start = sim.now();
    while sim.now() < start + end {
        sim.run_for(config().interval);
        let t = sim.now().saturating_sub(start);
        if t >= fault_at && killed.is_none() {
            let victim = match fault {
                Fault::KillLeader => sim.leader(RegionId(1)),
                Fault::KillFollower => {
                    let leader = sim.leader(RegionId(1));
                    (1..=3).map(StoreId).find(|s| Some(*s) != leader)
                }
                _ => None,
            };
            if let Some(v) = victim {
                sim.stop(v);
                killed = Some(v);
                killed_at = Some(sim.now());
            }
            if fault == Fault::Diverge && !diverged {
                diverged = true;
                diverge(&mut sim, StoreId(2));
            }
        }
        let mut batch = Vec::new();
        for s in sim.store_ids() {
            if !sim.is_running(s) || (fault == Fault::PartitionMonitor && t >= fault_at && s.0 == 3)
            {
                continue;
            }
            let sender = schema_of(mix, s, t);
            let unknown = fault == Fault::UnknownRole && s.0 == 2 && sender == Schema::V2;
            batch.push(observed(&sim, s, sim.now(), sender, monitor_schema, unknown));
        }
        if fault == Fault::Reorder {
            // Deliver this turn's reports, then some held from earlier turns again.
            rng =
                rng.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            if rng >> 60 < 8 {
                batch.extend(held.iter().cloned());
            }
            held = batch.clone();
        }
        for o in batch {
            monitor.observe(o);
        }
        let report = monitor.evaluate(sim.now(), &[]);
        for d in &report.detections {
            detected.insert(d.code);
            if d.code == AnalysisCode::StoreDown && down_after.is_none() {
                down_after = killed_at.map(|k| sim.now().saturating_sub(k));
            }
        }
        for i in &report.insufficient {
            insufficient.insert((i.code, i.missing.field));
        }
        for repair in report.planned {
            monitor.repair_started(sim.now(), &repair);
            let result = carry_out(&mut sim, &repair);
            monitor.repair_finished(sim.now(), &repair, result);
            repaired_after = killed_at.map(|k| sim.now().saturating_sub(k));
            repairs.push(repair);
        }
    }
    let audit = monitor.audit();
    assert_eq!(audit.len(), 2 * repairs.len(), "seed {seed}: every repair audited (H5)");
    let mut peers_on = Vec::new();
    for region in [regionkv_raft::directory::DIRECTORY, RegionId(1)] {
        let leader = sim.leader(region).expect("a leader at the end");
        let r = sim.region(leader, region).expect("region");
        peers_on.push((region, r.peers.iter().map(|p| p.store).collect()));
    }
    Outcome { down_after, repaired_after, repairs, detected, insufficient, peers_on, killed }
}

/// Writes a key into `store`'s image of region 1 past Raft, then has every replica
/// hash its image at one index (a `ComputeHash` through the leader).
fn diverge(sim: &mut SimCluster, store: StoreId) {
    let region = RegionId(1);
    let engine = sim.engine(store).expect("running");
    let epoch = engine.region(region).expect("hosted").epoch;
    let mut round = engine.begin_round();
    round.prepare_for_region(region, epoch).expect("prepare");
    round.put(b"rogue", b"1").expect("put");
    round.commit().expect("commit");
    let leader = sim.wait_leader(region, Duration::from_secs(5)).expect("a leader");
    let p = sim.admin(leader, region, regionkv_raft::AdminCmd::ComputeHash);
    let done = sim.wait(&p, Duration::from_secs(5));
    assert!(matches!(done, Some(Ok(_))), "ComputeHash: {done:?}");
    sim.run_for(Duration::from_millis(200));
}

/// Carries out a repair on the simulated cluster the way the runner does on a real
/// one: wake by a request, replace by learner, catch-up, promotion, removal.
fn carry_out(sim: &mut SimCluster, repair: &PlannedRepair) -> Result<String, String> {
    let region = repair.region;
    let max = Duration::from_secs(5);
    match repair.kind {
        RepairKind::WakeRegion => {
            for s in sim.store_ids() {
                let _ = sim.read(s, region, Query::Get { key: Vec::new().into(), read_ts: None });
            }
            Ok("woken".into())
        }
        RepairKind::ReplaceReplica => {
            let leader = sim.wait_leader(region, max).ok_or("no leader")?;
            let current = sim.region(leader, region).ok_or("no region")?;
            let peer = sim.new_peer_id();
            let step = |sim: &mut SimCluster, change| -> Result<(), String> {
                let leader = sim.wait_leader(region, max).ok_or("no leader")?;
                let p = sim.change_peers(leader, region, change);
                match sim.wait(&p, max) {
                    Some(Ok(_)) => Ok(()),
                    other => Err(format!("{change:?}: {other:?}")),
                }
            };
            if !current.peers.iter().any(|p| p.store == SPARE) {
                step(
                    sim,
                    PeerChange::AddLearner(regionkv_engine::Peer { id: peer, store: SPARE }),
                )?;
                let target = sim
                    .status(leader)
                    .iter()
                    .find(|p| p.region.id == region)
                    .map_or(0, |p| p.commit);
                sim.run_until(max, |sim| {
                    sim.status(SPARE)
                        .iter()
                        .any(|p| p.region.id == region && p.initialized && p.applied >= target)
                });
                step(sim, PeerChange::AddVoter(regionkv_engine::Peer { id: peer, store: SPARE }))?;
            }
            let leader = sim.wait_leader(region, max).ok_or("no leader")?;
            let current = sim.region(leader, region).ok_or("no region")?;
            if let Some(dead) = current.peers.iter().find(|p| Some(p.store) == repair.remove) {
                step(sim, PeerChange::Remove(dead.id))?;
            }
            Ok("replaced".into())
        }
        kind => Err(format!("{kind:?} is not expected in the matrix")),
    }
}

fn seeds() -> u64 {
    std::env::var("HEALTH_MATRIX_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(32)
}

/// What a row of the matrix saw, for its summary line.
#[derive(Default)]
struct Tally {
    runs: u64,
    repairs: std::collections::BTreeMap<&'static str, u64>,
    replaced_runs: u64,
    insufficient_runs: u64,
    /// Kill to `StoreDown`, and kill to the last repair's end, the longest seen.
    down_max: Duration,
    repaired_max: Duration,
}

fn check_cell(monitor_schema: Schema, mix: Mix, fault: Fault, tally: &mut Tally) {
    for seed in 0..seeds() {
        let seed = seed * 7919 + 17;
        let o = run(monitor_schema, mix, fault, seed);
        tally.runs += 1;
        for r in &o.repairs {
            *tally.repairs.entry(r.kind.name()).or_default() += 1;
        }
        tally.replaced_runs +=
            u64::from(o.repairs.iter().any(|r| r.kind == RepairKind::ReplaceReplica));
        tally.insufficient_runs += u64::from(!o.insufficient.is_empty());
        tally.down_max = tally.down_max.max(o.down_after.unwrap_or_default());
        tally.repaired_max = tally.repaired_max.max(o.repaired_after.unwrap_or_default());
        let cell =
            format!("monitor {monitor_schema:?}, stores {mix:?}, fault {fault:?}, seed {seed}");
        // (a) and H6: no repair without a fault; never a repair of a store the monitor only
        // lost sight of (e), nor from a role it cannot name (f).
        if matches!(
            fault,
            Fault::None
                | Fault::PartitionMonitor
                | Fault::Reorder
                | Fault::UnknownRole
                | Fault::Diverge
        ) {
            assert!(o.repairs.is_empty(), "{cell}: repairs {:?}", o.repairs);
            for code in [AnalysisCode::StoreDead, AnalysisCode::NoLeader, AnalysisCode::SplitBrain]
            {
                assert!(!o.detected.contains(&code), "{cell}: detected {code}");
            }
        }
        if let Some(dead) = o.killed {
            assert!(o.detected.contains(&AnalysisCode::StoreDown), "{cell}: down not detected");
            let survivors_v2 = (1..=3)
                .map(StoreId)
                .filter(|s| *s != dead)
                .all(|s| schema_of(mix, s, Duration::from_secs(9)) == Schema::V2);
            let replaced = o
                .peers_on
                .iter()
                .all(|(_, stores)| !stores.contains(&dead) && stores.contains(&SPARE));
            if monitor_schema == Schema::V2 && survivors_v2 {
                assert!(
                    replaced,
                    "{cell}: not replaced: {:?}; detected {:?}; insufficient {:?}",
                    o.peers_on, o.detected, o.insufficient
                );
            } else if monitor_schema == Schema::V1 {
                assert!(!replaced, "{cell}: replaced without schema 2");
                assert!(
                    o.insufficient.iter().any(|(c, _)| *c == AnalysisCode::StoreDead),
                    "{cell}: StoreDead not reported as insufficient: {:?}",
                    o.insufficient
                );
            }
            for r in &o.repairs {
                assert!(
                    r.kind == RepairKind::ReplaceReplica && r.remove == Some(dead)
                        || r.kind == RepairKind::WakeRegion,
                    "{cell}: unexpected repair {r:?}"
                );
            }
        }
        // A real mismatch on schema-2 stores is detected (an alert, never a repair); a
        // monitor that cannot read every replica's hash concludes nothing.
        if fault == Fault::Diverge {
            let all_v2 = (1..=3)
                .map(StoreId)
                .all(|s| schema_of(mix, s, Duration::from_secs(9)) == Schema::V2);
            let alerted = o.detected.contains(&AnalysisCode::ReplicaDivergence);
            if monitor_schema == Schema::V2 && all_v2 {
                assert!(alerted, "{cell}: divergence not detected; {:?}", o.insufficient);
            } else if monitor_schema == Schema::V1 {
                assert!(!alerted, "{cell}: divergence seen without schema 2");
            }
        } else {
            assert!(!o.detected.contains(&AnalysisCode::ReplicaDivergence), "{cell}: divergence");
        }
    }
}

macro_rules! cells {
    ($($name:ident: $m:expr;)*) => {$(
        #[test]
        fn $name() {
            let mut tally = Tally::default();
            for &mix in MIXES {
                for &fault in FAULTS {
                    check_cell($m, mix, fault, &mut tally);
                }
            }
            eprintln!(
                "health matrix, monitor {:?}: {} cells x {} seeds = {} runs; repairs {:?} \
                 (runs with a replacement: {}); runs with insufficient information: {}; \
                 from a kill, StoreDown within {:?} and every repair done within {:?} \
                 (virtual time; down after {:?}, dead after {:?})",
                $m,
                MIXES.len() * FAULTS.len(),
                seeds(),
                tally.runs,
                tally.repairs,
                tally.replaced_runs,
                tally.insufficient_runs,
                tally.down_max,
                tally.repaired_max,
                config().store_down_after,
                config().store_dead_after,
            );
        }
    )*};
}

cells! {
    monitor_on_schema_1: Schema::V1;
    monitor_on_schema_2: Schema::V2;
}
