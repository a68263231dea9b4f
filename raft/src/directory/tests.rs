//! Tests of the cluster directory's records and commands.

use std::sync::Arc;

use regionkv_engine::{EngineOptions, Peer, PeerId};
use regionkv_wal::SimFs;

use super::*;

fn engine() -> Engine {
    let engine =
        Engine::open(Arc::new(SimFs::new()), "/d", EngineOptions::new(StoreId(1))).unwrap();
    engine.insert_region(Region::whole(DIRECTORY)).unwrap();
    engine
}

fn region(id: u64, start: &str, end: Option<&str>, version: u64) -> Region {
    Region {
        id: RegionId(id),
        start: start.as_bytes().to_vec(),
        end: end.map(|e| e.as_bytes().to_vec()),
        epoch: Epoch { version, conf_ver: 1 },
        peers: vec![Peer { id: PeerId(1), store: StoreId(1) }],
    }
}

fn report(engine: &Engine, regions: &[Region]) -> usize {
    let records =
        regions.iter().map(|r| RegionRecord { region: r.clone(), leader: Some(StoreId(2)) });
    match apply(engine, Epoch::INITIAL, &DirCmd::Report { records: records.collect() }, 1) {
        Ok(Ok(DirResult::Reported { taken })) => taken,
        other => panic!("{other:?}"),
    }
}

fn ids(engine: &Engine) -> Vec<u64> {
    regions(&engine.read_view()).unwrap().iter().map(|r| r.region.id.0).collect()
}

#[test]
fn ids_are_never_handed_out_twice() {
    let engine = engine();
    let a = apply(&engine, Epoch::INITIAL, &DirCmd::AllocIds { count: 3 }, 1).unwrap().unwrap();
    let b = apply(&engine, Epoch::INITIAL, &DirCmd::AllocIds { count: 2 }, 1).unwrap().unwrap();
    assert_eq!(a, DirResult::Ids { first: FIRST_ALLOCATED_ID, count: 3 });
    assert_eq!(b, DirResult::Ids { first: FIRST_ALLOCATED_ID + 3, count: 2 });
}

#[test]
fn allocations_out_of_bounds_are_refused_and_change_nothing() {
    let engine = engine();
    for count in [0, MAX_IDS_PER_ALLOCATION + 1, u64::MAX] {
        let refused = apply(&engine, Epoch::INITIAL, &DirCmd::AllocIds { count }, 1).unwrap();
        assert!(matches!(refused, Err(Error::InvalidRequest(_))), "{count}: {refused:?}");
    }
    let ids = apply(&engine, Epoch::INITIAL, &DirCmd::AllocIds { count: 1 }, 1).unwrap();
    assert_eq!(ids.unwrap(), DirResult::Ids { first: FIRST_ALLOCATED_ID, count: 1 });
}

#[test]
fn reports_follow_splits_and_merges_and_never_go_back() {
    let engine = engine();
    assert_eq!(report(&engine, &[region(1, "", None, 1)]), 1);
    // A split reported child first, then the parent: both taken, the old whole range gone.
    assert_eq!(report(&engine, &[region(2, "m", None, 2), region(1, "", Some("m"), 2)]), 2);
    assert_eq!(ids(&engine), vec![1, 2]);
    let snap = engine.read_view();
    assert_eq!(lookup(&snap, b"a").unwrap().unwrap().region.id, RegionId(1));
    assert_eq!(lookup(&snap, b"m").unwrap().unwrap().region.id, RegionId(2));
    assert_eq!(lookup(&snap, b"zz").unwrap().unwrap().leader, Some(StoreId(2)));
    // A late report of the old parent is stale: nothing changes.
    assert_eq!(report(&engine, &[region(1, "", None, 1)]), 0);
    assert_eq!(ids(&engine), vec![1, 2]);
    // A merge of 2 into 1 (version max + 1 after the prepare's bump): 2 is gone.
    assert_eq!(report(&engine, &[region(1, "", None, 4)]), 1);
    assert_eq!(ids(&engine), vec![1]);
    assert_eq!(lookup(&engine.read_view(), b"q").unwrap().unwrap().region.epoch.version, 4);
    // A stale child report after the merge is refused.
    assert_eq!(report(&engine, &[region(2, "m", None, 3)]), 0);
    assert_eq!(ids(&engine), vec![1]);
    // Same epoch, a new leader: taken; the same leader again, or none: not.
    let moved = RegionRecord { region: region(1, "", None, 4), leader: Some(StoreId(3)) };
    let cmd = DirCmd::Report { records: vec![moved.clone()] };
    assert_eq!(
        apply(&engine, Epoch::INITIAL, &cmd, 1).unwrap().unwrap(),
        DirResult::Reported { taken: 1 }
    );
    assert_eq!(
        apply(&engine, Epoch::INITIAL, &cmd, 1).unwrap().unwrap(),
        DirResult::Reported { taken: 0 }
    );
    let unknown = DirCmd::Report { records: vec![RegionRecord { leader: None, ..moved }] };
    assert_eq!(
        apply(&engine, Epoch::INITIAL, &unknown, 1).unwrap().unwrap(),
        DirResult::Reported { taken: 0 }
    );
    assert_eq!(lookup(&engine.read_view(), b"x").unwrap().unwrap().leader, Some(StoreId(3)));
}

/// A random history of splits and merges, as the records its leaders report.
fn history(ops: &[(u8, u8)]) -> (Vec<Region>, Vec<Region>) {
    let mut regions = vec![region(1, "", None, 1)];
    let mut reported = regions.clone();
    let mut next_id = 2;
    for &(op, at) in ops {
        let i = at as usize % regions.len();
        if op % 2 == 0 {
            // Split region i at a key inside it.
            let r = regions[i].clone();
            let key = [r.start.clone(), vec![b'a' + op % 26]].concat();
            if r.end.as_ref().is_some_and(|e| key >= *e) {
                continue;
            }
            let mut left = r.clone();
            left.end = Some(key.clone());
            left.epoch.version += 1;
            let right = Region { id: RegionId(next_id), start: key, ..left.clone() };
            let right = Region { end: r.end.clone(), ..right };
            next_id += 1;
            reported.extend([left.clone(), right.clone()]);
            regions.splice(i..=i, [left, right]);
        } else if i + 1 < regions.len() {
            // Merge the right neighbour into region i: prepare, then commit.
            let mut source = regions[i + 1].clone();
            source.epoch.version += 1;
            reported.push(source.clone());
            let mut target = regions[i].clone();
            target.end.clone_from(&source.end);
            target.epoch.version = source.epoch.version.max(target.epoch.version) + 1;
            reported.push(target.clone());
            regions.splice(i..=i + 1, [target]);
        }
    }
    (regions, reported)
}

proptest::proptest! {
    /// However late and out of order the reports come, the directory ends at the
    /// final partition: a newer region always beats an older overlapping one.
    #[test]
    fn reports_in_any_order_converge_on_the_final_regions(
        ops in proptest::collection::vec((0u8..255, 0u8..255), 0..30),
        order in proptest::collection::vec(0usize..1000, 0..200),
        batch in 1usize..5,
    ) {
        let (last, mut reported) = history(&ops);
        for (i, j) in order.iter().enumerate() {
            let n = reported.len();
            reported.swap(i % n, j % n);
        }
        let engine = engine();
        for chunk in reported.chunks(batch) {
            report(&engine, chunk);
        }
        let got: Vec<Region> =
            regions(&engine.read_view()).unwrap().into_iter().map(|r| r.region).collect();
        proptest::prop_assert_eq!(got, last);
    }
}

fn event(i: u64) -> HealthEvent {
    HealthEvent {
        holder: StoreId(1),
        region: RegionId(i),
        kind: "replace-replica".into(),
        reason: "store-dead".into(),
        event: format!("started {i}"),
        remove: Some(StoreId(3)),
        add: i.is_multiple_of(2).then_some(StoreId(4)),
    }
}

#[test]
fn health_events_are_a_bounded_ring_and_overlong_ones_are_refused() {
    let engine = engine();
    for i in 1..=HEALTH_EVENTS_KEPT + 3 {
        let cmd = DirCmd::RecordHealth { event: Box::new(event(i)) };
        let result = apply(&engine, Epoch::INITIAL, &cmd, 1).unwrap().unwrap();
        assert_eq!(result, DirResult::Recorded { seq: i });
    }
    let events = health_events(&engine.read_view()).unwrap();
    assert_eq!(events.len() as u64, HEALTH_EVENTS_KEPT);
    assert_eq!(events[0], (4, event(4)));
    assert_eq!(events.last().unwrap(), &(HEALTH_EVENTS_KEPT + 3, event(HEALTH_EVENTS_KEPT + 3)));
    let mut long = event(1);
    long.event = "x".repeat(HEALTH_EVENT_TEXT_MAX + 1);
    let refused =
        apply(&engine, Epoch::INITIAL, &DirCmd::RecordHealth { event: Box::new(long) }, 1).unwrap();
    assert!(matches!(refused, Err(Error::InvalidRequest(_))), "{refused:?}");
    assert_eq!(health_events(&engine.read_view()).unwrap().len() as u64, HEALTH_EVENTS_KEPT);
    // Ids and region records live beside it, untouched.
    assert_eq!(ids(&engine), Vec::<u64>::new());
}

#[test]
fn commands_round_trip_and_garbage_never_panics() {
    let cmds = [
        DirCmd::RecordHealth { event: Box::new(event(7)) },
        DirCmd::RecordHealth { event: Box::new(event(8)) },
        DirCmd::AllocIds { count: 7 },
        DirCmd::Report {
            records: vec![
                RegionRecord { region: region(3, "a", Some("b"), 2), leader: None },
                RegionRecord { region: region(4, "b", None, 2), leader: Some(StoreId(3)) },
            ],
        },
        DirCmd::SetClusterVersion { target: 2, by: StoreId(3) },
        DirCmd::SaveTsLimit { limit: 77 << 18 },
    ];
    for cmd in cmds {
        let mut buf = Vec::new();
        encode_cmd(&mut buf, &cmd);
        assert_eq!(decode_cmd(&buf).unwrap(), cmd);
        for i in 0..buf.len() {
            let _ = decode_cmd(&buf[..i]);
            let mut flipped = buf.clone();
            flipped[i] ^= 0x41;
            let _ = decode_cmd(&flipped);
        }
    }
}

#[test]
fn the_cluster_version_goes_up_only_and_a_retried_finalize_changes_nothing() {
    let engine = engine();
    assert_eq!(cluster_version(&engine.read_view()).unwrap(), ClusterVersion::INITIAL);
    let set = |target, index| {
        let cmd = DirCmd::SetClusterVersion { target, by: StoreId(2) };
        apply(&engine, Epoch::INITIAL, &cmd, index).unwrap()
    };
    assert_eq!(set(2, 7).unwrap(), DirResult::ClusterVersion { active: 2 });
    let expected = ClusterVersion { active: 2, finalized_by: Some(StoreId(2)), at_index: Some(7) };
    assert_eq!(cluster_version(&engine.read_view()).unwrap(), expected);
    // A retried finalize, and an older target: success, nothing changes.
    assert_eq!(set(2, 9).unwrap(), DirResult::ClusterVersion { active: 2 });
    assert_eq!(set(1, 10).unwrap(), DirResult::ClusterVersion { active: 2 });
    assert_eq!(cluster_version(&engine.read_view()).unwrap(), expected);
    // Version 0 does not exist: refused, nothing changes.
    assert!(matches!(set(0, 11), Err(Error::InvalidRequest(_))));
    assert_eq!(cluster_version(&engine.read_view()).unwrap(), expected);
}

#[test]
fn version_records_round_trip_and_garbage_never_panics() {
    for version in [
        ClusterVersion::INITIAL,
        ClusterVersion { active: 2, finalized_by: Some(StoreId(4)), at_index: Some(99) },
        ClusterVersion { active: u32::MAX, finalized_by: None, at_index: Some(0) },
    ] {
        let buf = encode_version(&version);
        assert_eq!(decode_version(&buf).unwrap(), version);
        for i in 0..buf.len() {
            let _ = decode_version(&buf[..i]);
            let mut flipped = buf.clone();
            flipped[i] ^= 0x41;
            let _ = decode_version(&flipped);
        }
    }
    // A record from a newer format, and an active version past u32: refused.
    assert!(decode_version(&[2, 0, 0]).is_err());
    let mut big = vec![FORMAT_VERSION];
    codec::put_u64(&mut big, V_ACTIVE, u64::from(u32::MAX) + 1);
    assert!(decode_version(&big).is_err());
    // A directory command of a kind this binary does not know says so.
    let mut unknown = Vec::new();
    codec::put_u64(&mut unknown, CMD_KIND, 77);
    assert_eq!(decode_cmd(&unknown).unwrap_err().reason, UNKNOWN_DIRECTORY_COMMAND);
}
