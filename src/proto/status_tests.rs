//! Status records across schemas: every field added with schema 2 encoded absent, at
//! zero and set, read by this binary (absent is `None`) and by a reader of schema 1
//! (which skips it); unknown codes are `Unspecified`; the golden files of both schemas
//! decoded field by field; random bytes never panic a decoder.

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use regionkv_engine::codec;
use regionkv_engine::{PeerId, StoreId};
use regionkv_raft::{
    FollowerProgress, PeerStatus, ProgressState, ReportedRole, StateRole, StoreMetrics,
    TimelineState,
};

use super::response::{R_ID, R_STATUS};
use super::status::{StatusSchema, decode_store_status, encode_store_status, put_peer_status};
use super::tests::{metrics, region, status};
use super::*;

fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/proto/golden").join(name)
}

/// The follower of the golden scenario (its schema-1 fields).
fn follower() -> PeerStatus {
    PeerStatus {
        region: region(5, "m", None),
        peer: PeerId(52),
        role: StateRole::Follower,
        term: 3,
        leader: None,
        commit: 20,
        applied: 20,
        last_index: 21,
        hibernated: true,
        reported_role: ReportedRole::Follower,
        ..status()
    }
}

/// The leader of the golden scenario with every schema-2 field set.
fn full_leader() -> PeerStatus {
    PeerStatus {
        first_index: Some(6),
        timeline: Some(TimelineState::Active),
        merge_pending: Some(false),
        progress: Some(vec![
            FollowerProgress {
                peer: PeerId(3),
                matched: 11,
                state: ProgressState::Replicate,
                recent_active: Some(true),
                ticks_since_heard: Some(2),
            },
            FollowerProgress {
                peer: PeerId(4),
                matched: 0,
                state: ProgressState::Snapshot,
                recent_active: None,
                ticks_since_heard: None,
            },
        ]),
        is_learner: Some(false),
        image_hash: Some((9, 0x0123_4567_89ab_cdef)),
        halted: None,
        ..status()
    }
}

/// The golden follower with every schema-2 field set (a halted learner).
fn full_follower() -> PeerStatus {
    PeerStatus {
        first_index: Some(1),
        timeline: Some(TimelineState::Broken),
        merge_pending: Some(true),
        progress: None,
        is_learner: Some(true),
        image_hash: None,
        halted: Some("a command written by a newer regionkv".into()),
        ..follower()
    }
}

/// The golden store status of schema 2: every field set.
fn full_store() -> StoreStatus {
    StoreStatus {
        metrics: Some(metrics()),
        status_schema: Some(2),
        binary_version: Some("0.1.0".into()),
        boot_id: Some(0xB007_0000_0000_0001),
        report_seq: Some(17),
        store_state: Some(StoreState::Failed),
        failure: Some("fsync failed: input/output error".into()),
        capacity: Some(Capacity {
            disk_total_bytes: Some(100 << 30),
            disk_available_bytes: Some(40 << 30),
            memtable_bytes: Some(3 << 20),
        }),
        peer_set_complete: Some(true),
        ..StoreStatus::new(StoreId(2), vec![full_leader(), full_follower()])
    }
}

/// What a reader gets from a sender of schema 1: every later field `None` (the role as
/// the first schema's code says).
fn v1_view(s: &StoreStatus) -> StoreStatus {
    let peers = s
        .peers
        .iter()
        .map(|p| PeerStatus {
            reported_role: ReportedRole::from(p.role),
            first_index: None,
            timeline: None,
            merge_pending: None,
            progress: None,
            is_learner: None,
            image_hash: None,
            halted: None,
            oldest_lock_age_ms: None,
            dups: None,
            ..p.clone()
        })
        .collect();
    StoreStatus { metrics: s.metrics, ..StoreStatus::new(s.store, peers) }
}

/// Each schema-2 field of a replica, absent, at zero (or its `Unspecified` code) and
/// set, one at a time.
fn peer_variants() -> Vec<(String, PeerStatus)> {
    let base = status();
    let mut out = vec![("all absent".to_owned(), base.clone())];
    let mut add = |name: &str, zero: PeerStatus, set: PeerStatus| {
        out.push((format!("{name} zero"), zero));
        out.push((format!("{name} set"), set));
    };
    let b = || base.clone();
    add(
        "first_index",
        PeerStatus { first_index: Some(0), ..b() },
        PeerStatus { first_index: Some(41), ..b() },
    );
    add(
        "timeline",
        PeerStatus { timeline: Some(TimelineState::Unspecified), ..b() },
        PeerStatus { timeline: Some(TimelineState::Stopping), ..b() },
    );
    add(
        "merge_pending",
        PeerStatus { merge_pending: Some(false), ..b() },
        PeerStatus { merge_pending: Some(true), ..b() },
    );
    add(
        "progress",
        PeerStatus { progress: Some(Vec::new()), ..b() },
        PeerStatus { progress: full_leader().progress, ..b() },
    );
    add(
        "is_learner",
        PeerStatus { is_learner: Some(false), ..b() },
        PeerStatus { is_learner: Some(true), ..b() },
    );
    add(
        "image_hash",
        PeerStatus { image_hash: Some((0, 0)), ..b() },
        PeerStatus { image_hash: Some((40, u64::MAX)), ..b() },
    );
    add(
        "halted",
        PeerStatus { halted: Some(String::new()), ..b() },
        PeerStatus { halted: Some("why".into()), ..b() },
    );
    add(
        "oldest_lock_age_ms",
        PeerStatus { oldest_lock_age_ms: Some(0), ..b() },
        PeerStatus { oldest_lock_age_ms: Some(61_000), ..b() },
    );
    let mut table = regionkv_engine::dup::DupTable::default();
    table.set(regionkv_engine::dup::RegionDupState {
        dup_id: 1000,
        incarnation: 2,
        stage: regionkv_engine::dup::DupStage::Streaming,
        min_ckpt_index: 5,
        seed_index: Some(9),
        confirmed: Some(12),
        depends_on: vec![(regionkv_engine::RegionId(3), 40)],
        started_at_index: 5,
        fence: None,
    });
    add(
        "dups",
        PeerStatus { dups: Some(regionkv_engine::dup::DupTable::default()), ..b() },
        PeerStatus { dups: Some(table), ..b() },
    );
    out
}

/// Each schema-2 field of a store, absent, at zero (or its `Unspecified` code) and set,
/// one at a time.
fn store_variants() -> Vec<(String, StoreStatus)> {
    let base = StoreStatus { metrics: Some(metrics()), ..StoreStatus::new(StoreId(2), vec![]) };
    let mut out = vec![("all absent".to_owned(), base.clone())];
    let mut add = |name: &str, zero: StoreStatus, set: StoreStatus| {
        out.push((format!("{name} zero"), zero));
        out.push((format!("{name} set"), set));
    };
    let b = || base.clone();
    add(
        "status_schema",
        StoreStatus { status_schema: Some(0), ..b() },
        StoreStatus { status_schema: Some(u32::MAX), ..b() },
    );
    add(
        "binary_version",
        StoreStatus { binary_version: Some(String::new()), ..b() },
        StoreStatus { binary_version: Some("0.1.0".into()), ..b() },
    );
    add(
        "boot_id",
        StoreStatus { boot_id: Some(0), ..b() },
        StoreStatus { boot_id: Some(u64::MAX), ..b() },
    );
    add(
        "report_seq",
        StoreStatus { report_seq: Some(0), ..b() },
        StoreStatus { report_seq: Some(5), ..b() },
    );
    add(
        "store_state",
        StoreStatus { store_state: Some(StoreState::Unspecified), ..b() },
        StoreStatus { store_state: Some(StoreState::Recovering), ..b() },
    );
    add(
        "failure",
        StoreStatus { failure: Some(String::new()), ..b() },
        StoreStatus { failure: Some("disk".into()), ..b() },
    );
    add(
        "capacity",
        StoreStatus { capacity: Some(Capacity::default()), ..b() },
        StoreStatus { capacity: full_store().capacity, ..b() },
    );
    add(
        "peer_set_complete",
        StoreStatus { peer_set_complete: Some(false), ..b() },
        StoreStatus { peer_set_complete: Some(true), ..b() },
    );
    out
}

#[test]
fn every_new_field_absent_zero_or_set_reads_back_and_a_schema_1_reader_skips_it() {
    let stores = store_variants().into_iter().chain(
        peer_variants()
            .into_iter()
            .map(|(name, p)| (format!("peer {name}"), StoreStatus::new(StoreId(2), vec![p]))),
    );
    for (name, sent) in stores {
        let bytes = encode_store_status(&sent, StatusSchema::V2);
        let got = decode_store_status(&bytes, StatusSchema::V2).unwrap();
        assert_eq!(got, sent, "{name}: this binary reads back what it sent");
        let old = decode_store_status(&bytes, StatusSchema::V1).unwrap();
        assert_eq!(old, v1_view(&sent), "{name}: a schema-1 reader skips the new tags");
        // A sender of schema 1 writes none of them: read here, each is `None`.
        let from_old = encode_store_status(&sent, StatusSchema::V1);
        let got = decode_store_status(&from_old, StatusSchema::V2).unwrap();
        assert_eq!(got, v1_view(&sent), "{name}: absent is None");
    }
    // Through a whole response too.
    let sent = Ok(Response::Status(Box::new(full_store())));
    assert_eq!(decode_response(&encode_response(3, &sent)).unwrap(), (3, sent));
}

#[test]
fn a_schema_1_encoder_writes_the_bytes_of_a_schema_1_sender() {
    // The golden file was written by a binary of schema 1 (before status v2), for the
    // same store, replicas and metrics.
    let old = std::fs::read(golden("store-status-v1.bin")).unwrap();
    let mut now = Vec::new();
    codec::put_u64(&mut now, R_ID, 41);
    codec::put_nested(&mut now, R_STATUS, |o| {
        o.extend_from_slice(&encode_store_status(&full_store(), StatusSchema::V1));
    });
    assert_eq!(now, old);
    assert_eq!(full_store().as_sent_by(StatusSchema::V1), v1_view(&full_store()));
    assert_eq!(full_store().as_sent_by(StatusSchema::V2), full_store());
    assert_eq!(StatusSchema::V1.number(), 1);
    assert_eq!(StatusSchema::CURRENT.number(), STATUS_SCHEMA);
}

/// A peer status record whose role field holds `code` (None: no role field).
fn peer_with_role_code(p: &PeerStatus, code: Option<u64>) -> Vec<u8> {
    let mut wrapped = Vec::new();
    put_peer_status(&mut wrapped, 2, p);
    let record = codec::fields(&wrapped).unwrap()[0].value;
    let mut out = Vec::new();
    for f in codec::fields(record).unwrap() {
        match (f.tag, code) {
            (3, Some(code)) => codec::put_u64(&mut out, 3, code),
            (3, None) => {}
            _ => codec::put_field(&mut out, f.tag, f.value),
        }
    }
    out
}

#[test]
fn an_unknown_role_on_a_leader_is_unspecified_for_the_monitor_and_not_leadership_for_routing() {
    // A leader (it names itself leader) whose role code is one this binary does not
    // know (a newer store), 0, or absent.
    let leader = full_leader();
    assert_eq!(leader.leader, Some(leader.peer));
    for code in [Some(0), Some(5), Some(77), Some(u64::MAX), None] {
        let mut store = Vec::new();
        codec::put_u64(&mut store, 1, 2);
        codec::put_field(&mut store, 2, &peer_with_role_code(&leader, code));
        let got = decode_store_status(&store, StatusSchema::V2).unwrap();
        let p = &got.peers[0];
        assert_eq!(p.reported_role, ReportedRole::Unspecified, "{code:?}");
        assert_eq!(p.role, StateRole::Follower, "{code:?}: never taken for leadership");
        // Passed on, it stays unknown.
        let again =
            decode_store_status(&encode_store_status(&got, StatusSchema::V2), StatusSchema::V2)
                .unwrap();
        assert_eq!(again, got, "{code:?}");
    }
    // The known codes are the first schema's.
    for (code, role) in [
        (1, ReportedRole::Follower),
        (2, ReportedRole::Candidate),
        (3, ReportedRole::Leader),
        (4, ReportedRole::PreCandidate),
    ] {
        assert_eq!(ReportedRole::from_code(code), role);
        assert_eq!(role.code(), code);
        assert_eq!(ReportedRole::from(role.routing_role()), role);
    }
}

#[test]
fn unknown_enum_codes_are_unspecified() {
    for code in [0, 5, 99, u64::MAX] {
        assert_eq!(TimelineState::from_code(code), TimelineState::Unspecified);
        assert_eq!(ProgressState::from_code(code), ProgressState::Unspecified);
    }
    // Through the wire: a store state and a progress state from a newer store.
    let mut s = full_store();
    s.store_state = None;
    let mut bytes = encode_store_status(&s, StatusSchema::V2);
    codec::put_u64(&mut bytes, 8, 42);
    let got = decode_store_status(&bytes, StatusSchema::V2).unwrap();
    assert_eq!(got.store_state, Some(StoreState::Unspecified));
    let mut progress = Vec::new();
    codec::put_nested(&mut progress, 1, |o| {
        codec::put_u64(o, 1, 3);
        codec::put_u64(o, 2, 8);
        codec::put_u64(o, 3, 9);
    });
    // And a progress entry without its state (absent is unknown too).
    codec::put_nested(&mut progress, 1, |o| {
        codec::put_u64(o, 1, 4);
        codec::put_u64(o, 2, 0);
    });
    let mut peer = peer_with_role_code(&status(), Some(3));
    codec::put_field(&mut peer, 14, &progress);
    codec::put_u64(&mut peer, 12, 9);
    let mut store = Vec::new();
    codec::put_u64(&mut store, 1, 2);
    codec::put_field(&mut store, 2, &peer);
    let got = decode_store_status(&store, StatusSchema::V2).unwrap();
    let p = &got.peers[0];
    assert_eq!(p.timeline, Some(TimelineState::Unspecified));
    let states: Vec<_> = p.progress.as_ref().unwrap().iter().map(|f| f.state).collect();
    assert_eq!(states, [ProgressState::Unspecified, ProgressState::Unspecified]);
    assert_eq!(p.progress.as_ref().unwrap()[0].recent_active, None);
}

#[test]
fn the_schema_1_golden_status_decodes_field_by_field_with_every_new_field_none() {
    let bytes = std::fs::read(golden("store-status-v1.bin")).unwrap();
    let (id, answer) = decode_response(&bytes).unwrap();
    assert_eq!(id, 41);
    let Ok(Response::Status(s)) = answer else { panic!("not a status: {answer:?}") };
    assert_eq!(s.store, StoreId(2));
    assert_eq!(s.metrics, Some(metrics()));
    assert_eq!(s.peers.len(), 2);
    let (l, f) = (&s.peers[0], &s.peers[1]);
    assert_eq!(
        (l.region.clone(), l.peer, l.role, l.term),
        (region(1, "", None), PeerId(2), StateRole::Leader, 7)
    );
    assert_eq!((l.leader, l.commit, l.applied, l.last_index), (Some(PeerId(2)), 10, 9, 11));
    assert_eq!((l.initialized, l.hibernated, l.reported_role), (true, false, ReportedRole::Leader));
    assert_eq!(
        (f.region.clone(), f.peer, f.role, f.term),
        (region(5, "m", None), PeerId(52), StateRole::Follower, 3)
    );
    assert_eq!((f.leader, f.commit, f.applied, f.last_index), (None, 20, 20, 21));
    assert_eq!(
        (f.initialized, f.hibernated, f.reported_role),
        (true, true, ReportedRole::Follower)
    );
    for p in [l, f] {
        assert_eq!(p.first_index, None);
        assert_eq!(p.timeline, None);
        assert_eq!(p.merge_pending, None);
        assert_eq!(p.progress, None);
        assert_eq!(p.is_learner, None);
        assert_eq!(p.image_hash, None);
        assert_eq!(p.halted, None);
    }
    assert_eq!(s.status_schema, None, "absent: a sender of schema 1");
    assert_eq!(s.binary_version, None);
    assert_eq!(s.boot_id, None);
    assert_eq!(s.report_seq, None);
    assert_eq!(s.store_state, None);
    assert_eq!(s.failure, None);
    assert_eq!(s.capacity, None);
    assert_eq!(s.peer_set_complete, None);
}

#[test]
fn the_schema_2_golden_status_decodes_field_by_field() {
    let bytes = std::fs::read(golden("store-status-v2.bin")).unwrap();
    let (id, answer) = decode_response(&bytes).unwrap();
    assert_eq!(id, 42);
    let Ok(Response::Status(s)) = answer else { panic!("not a status: {answer:?}") };
    assert_eq!((s.store, s.metrics), (StoreId(2), Some(metrics())));
    assert_eq!(s.status_schema, Some(2));
    assert_eq!(s.binary_version.as_deref(), Some("0.1.0"));
    assert_eq!(s.boot_id, Some(0xB007_0000_0000_0001));
    assert_eq!(s.report_seq, Some(17));
    assert_eq!(s.store_state, Some(StoreState::Failed));
    assert_eq!(s.failure.as_deref(), Some("fsync failed: input/output error"));
    let c = s.capacity.unwrap();
    assert_eq!(c.disk_total_bytes, Some(100 << 30));
    assert_eq!(c.disk_available_bytes, Some(40 << 30));
    assert_eq!(c.memtable_bytes, Some(3 << 20));
    assert_eq!(s.peer_set_complete, Some(true));
    let (l, f) = (&s.peers[0], &s.peers[1]);
    // The schema-1 fields, as in the schema-1 file.
    assert_eq!(
        (l.peer, l.role, l.reported_role, l.term),
        (PeerId(2), StateRole::Leader, ReportedRole::Leader, 7)
    );
    assert_eq!((l.commit, l.applied, l.last_index), (10, 9, 11));
    assert_eq!(
        (f.peer, f.role, f.reported_role, f.hibernated),
        (PeerId(52), StateRole::Follower, ReportedRole::Follower, true)
    );
    // The leader's schema-2 fields.
    assert_eq!(l.first_index, Some(6));
    assert_eq!(l.timeline, Some(TimelineState::Active));
    assert_eq!(l.merge_pending, Some(false));
    let progress = l.progress.as_ref().unwrap();
    assert_eq!(progress.len(), 2);
    assert_eq!(
        (progress[0].peer, progress[0].matched, progress[0].state),
        (PeerId(3), 11, ProgressState::Replicate)
    );
    assert_eq!((progress[0].recent_active, progress[0].ticks_since_heard), (Some(true), Some(2)));
    assert_eq!(
        (progress[1].peer, progress[1].matched, progress[1].state),
        (PeerId(4), 0, ProgressState::Snapshot)
    );
    assert_eq!((progress[1].recent_active, progress[1].ticks_since_heard), (None, None));
    assert_eq!(l.is_learner, Some(false));
    assert_eq!(l.image_hash, Some((9, 0x0123_4567_89ab_cdef)));
    assert_eq!(l.halted, None);
    // Written before tag 17 (the oldest lock's age) was given its meaning.
    assert_eq!(l.oldest_lock_age_ms, None);
    // The follower's.
    assert_eq!(f.first_index, Some(1));
    assert_eq!(f.timeline, Some(TimelineState::Broken));
    assert_eq!(f.merge_pending, Some(true));
    assert_eq!(f.progress, None);
    assert_eq!(f.is_learner, Some(true));
    assert_eq!(f.image_hash, None);
    assert_eq!(f.halted.as_deref(), Some("a command written by a newer regionkv"));
    assert_eq!(*s, full_store());
}

/// The golden store status carrying tag 17: a leader whose oldest lock is 61 s old.
fn lock_age_store() -> StoreStatus {
    let leader = PeerStatus { oldest_lock_age_ms: Some(61_000), ..full_leader() };
    StoreStatus { peers: vec![leader, full_follower()], ..full_store() }
}

#[test]
fn the_golden_status_with_a_lock_age_decodes_field_by_field() {
    let bytes = std::fs::read(golden("store-status-v2-lock-age.bin")).unwrap();
    let (id, answer) = decode_response(&bytes).unwrap();
    assert_eq!(id, 43);
    let Ok(Response::Status(s)) = answer else { panic!("not a status: {answer:?}") };
    assert_eq!(s.peers[0].oldest_lock_age_ms, Some(61_000));
    assert_eq!(s.peers[1].oldest_lock_age_ms, None);
    assert_eq!(*s, lock_age_store());
    // A reader of schema 1 skips it.
    let wire = encode_store_status(&lock_age_store(), StatusSchema::V2);
    let old = decode_store_status(&wire, StatusSchema::V1).unwrap();
    assert_eq!(old, v1_view(&lock_age_store()));
}

/// Writes the golden file with tag 17 once (`cargo test -p regionkv --lib -- --ignored
/// regenerate_lock_age_golden`); never again after it is committed.
#[test]
#[ignore = "writes the golden file of a status with the oldest lock's age"]
fn regenerate_lock_age_golden() {
    let bytes = encode_response(43, &Ok(Response::Status(Box::new(lock_age_store()))));
    std::fs::write(golden("store-status-v2-lock-age.bin"), bytes).unwrap();
}

/// Writes the golden file of the current status schema. Run it once when the schema
/// changes (`cargo test -p regionkv --lib -- --ignored regenerate_status_golden`);
/// a released schema's file is never written again.
#[test]
#[ignore = "writes the golden file of the current status schema"]
fn regenerate_status_golden() {
    let bytes = encode_response(42, &Ok(Response::Status(Box::new(full_store()))));
    std::fs::write(golden(&format!("store-status-v{STATUS_SCHEMA}.bin")), bytes).unwrap();
}

proptest! {
    #[test]
    fn random_bytes_never_panic_a_status_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = decode_store_status(&bytes, StatusSchema::V1);
        let _ = decode_store_status(&bytes, StatusSchema::V2);
        let _ = decode_response(&bytes);
    }

    #[test]
    fn a_damaged_status_never_panics_a_decoder(at in 0usize..4096, xor in 1u8..=255, cut in 0usize..4096) {
        let mut bytes = encode_store_status(&full_store(), StatusSchema::V2);
        let at = at % bytes.len();
        bytes[at] ^= xor;
        bytes.truncate(cut.max(1).min(bytes.len()));
        let _ = decode_store_status(&bytes, StatusSchema::V1);
        let _ = decode_store_status(&bytes, StatusSchema::V2);
    }
}
#[test]
fn a_log_linear_histogram_crosses_the_wire_as_its_power_of_two_folding() {
    let h = regionkv_wal::Histogram::new();
    for v in [3, 90, 300, 301, 5000] {
        h.record(v);
    }
    let mut sent = StoreMetrics::default();
    sent.write_latency_us = h.snapshot();
    let status = StoreStatus { metrics: Some(sent), ..StoreStatus::new(StoreId(2), vec![]) };
    let payload = encode_response(9, &Ok(Response::Status(Box::new(status))));
    let (_, back) = decode_response(&payload).unwrap();
    let Ok(Response::Status(got)) = back else { panic!("not a status: {back:?}") };
    let got = got.metrics.unwrap().write_latency_us;
    assert_eq!(got, sent.write_latency_us.coarse());
    assert_eq!((got.count(), got.sum(), got.max()), (5, 5694, 5000));
    // Here 300 is reported as 319 (its log-linear bucket); over the wire as 511.
    assert_eq!((sent.write_latency_us.p50(), got.p50()), (319, 511));
}
