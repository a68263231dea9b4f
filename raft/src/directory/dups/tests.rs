//! Tests of the directory's duplication records and their transitions.

use std::sync::Arc;

use regionkv_engine::{Engine, EngineOptions, Epoch, Region, StoreId};
use regionkv_wal::SimFs;

use super::*;
use crate::directory::{DirCmd, apply, decode_cmd, encode_cmd};

fn engine() -> Engine {
    let engine =
        Engine::open(Arc::new(SimFs::new()), "/d", EngineOptions::new(StoreId(1))).unwrap();
    engine.insert_region(Region::whole(DIRECTORY)).unwrap();
    engine
}

fn record(dup_id: u64) -> DupRecord {
    DupRecord {
        dup_id,
        status: DupStatus::Init,
        incarnation: 1,
        start: b"a".to_vec(),
        end: Some(b"m".to_vec()),
        remote: DupRemote { name: "10.0.0.1:7000".into(), cluster_id: Some(9), secret: None },
        seed: true,
        broken: None,
        created_at_ms: Some(1_700_000_000_000),
    }
}

fn run(engine: &Engine, cmd: &DirCmd) -> Result<DirResult> {
    apply(engine, Epoch::INITIAL, cmd, 1).unwrap()
}

fn alter(engine: &Engine, dup_id: u64, from: DupStatus, to: DupStatus) -> Result<DirResult> {
    run(engine, &DirCmd::AlterDup(DupAlteration { dup_id, from, to, reason: None }))
}

fn status(engine: &Engine, dup_id: u64) -> Option<(DupStatus, u32)> {
    dup(&engine.read_view(), dup_id).unwrap().map(|r| (r.status, r.incarnation))
}

fn refusal(result: Result<DirResult>) -> DupRefusal {
    match result {
        Err(Error::DupRefused { reason, .. }) => reason,
        other => panic!("not a refusal: {other:?}"),
    }
}

#[test]
fn a_record_round_trips_with_and_without_its_optional_fields() {
    let full = record(1000);
    assert_eq!(decode(&encode(&full)), Ok(full.clone()));
    let bare = DupRecord {
        end: None,
        remote: DupRemote { name: "b".into(), cluster_id: None, secret: None },
        created_at_ms: None,
        ..full.clone()
    };
    assert_eq!(decode(&encode(&bare)), Ok(bare));
    let broken = DupRecord {
        status: DupStatus::Broken,
        broken: Some(BrokenReason::LogGap),
        remote: DupRemote { secret: Some(b"s3cret".to_vec()), ..full.remote.clone() },
        ..full.clone()
    };
    assert_eq!(decode(&encode(&broken)), Ok(broken));
    // Damage and a newer format are errors, never a guess.
    assert!(decode(&[]).is_err());
    let mut newer = encode(&full);
    newer[0] = 2;
    assert!(decode(&newer).is_err());
    let bytes = encode(&full);
    assert!(decode(&bytes[..bytes.len() - 1]).is_err(), "truncated");
}

#[test]
fn unknown_codes_decode_as_unspecified_and_unknown_tags_are_skipped() {
    let mut bytes = encode(&record(7));
    // A status a newer binary wrote, and a field this binary does not know.
    let mut newer = vec![bytes[0]];
    codec::put_u64(&mut newer, F_STATUS, 42);
    codec::put_field(&mut newer, 99, b"later");
    codec::put_u64(&mut newer, F_BROKEN, 77);
    let body = TlvRecord::parse(&bytes[1..], FIELDS, UnknownTags::Skip).unwrap();
    for tag in FIELDS.iter().filter(|t| ![F_STATUS, F_BROKEN].contains(t)) {
        if let Some(f) = body.optional(*tag).unwrap() {
            codec::put_field(&mut newer, *tag, f.value);
        }
    }
    let decoded = decode(&newer).unwrap();
    assert_eq!(decoded.status, DupStatus::Unspecified);
    assert_eq!(decoded.broken, Some(BrokenReason::Unspecified));
    assert_eq!(decoded.dup_id, 7);
    // The status code 0 is reserved.
    bytes = encode(&DupRecord { status: DupStatus::Unspecified, ..record(7) });
    assert_eq!(decode(&bytes).unwrap().status, DupStatus::Unspecified);
    for code in 0..=10 {
        let s = DupStatus::from_code(code);
        assert!(s == DupStatus::Unspecified || s.code() == code, "{code}");
        let r = BrokenReason::from_code(code);
        assert!(r == BrokenReason::Unspecified || r.code() == code, "{code}");
    }
}

#[test]
fn the_golden_bytes_of_format_1_never_change() {
    let r = DupRecord {
        dup_id: 1,
        status: DupStatus::Log,
        incarnation: 2,
        start: b"k".to_vec(),
        end: None,
        remote: DupRemote { name: "b".into(), cluster_id: None, secret: None },
        seed: true,
        broken: None,
        created_at_ms: None,
    };
    let mut expect = vec![1u8];
    let field = |out: &mut Vec<u8>, tag: u16, v: &[u8]| {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&u32::try_from(v.len()).unwrap().to_le_bytes());
        out.extend_from_slice(v);
    };
    field(&mut expect, 1, &1u64.to_le_bytes());
    field(&mut expect, 2, &4u64.to_le_bytes());
    field(&mut expect, 3, &2u64.to_le_bytes());
    field(&mut expect, 4, b"k");
    field(&mut expect, 6, b"");
    field(&mut expect, 7, b"b");
    field(&mut expect, 10, &[1]);
    assert_eq!(encode(&r), expect);
}

#[test]
fn the_transition_table_is_the_documented_one() {
    use DupStatus::*;
    let all = [Unspecified, Init, Prepare, App, Log, Paused, Broken, Removed, CuttingOver, CutOver];
    let expected = [
        (Init, Prepare),
        (Init, Log),
        (Prepare, App),
        (App, Log),
        (Log, Paused),
        (Paused, Log),
        (Prepare, Broken),
        (App, Broken),
        (Log, Broken),
        (Paused, Broken),
        (Broken, Prepare),
        (Log, CuttingOver),
        (Paused, CuttingOver),
        (CuttingOver, CutOver),
    ];
    for from in all {
        for to in all {
            let want = expected.contains(&(from, to)) || (to == Removed && from != Removed);
            assert_eq!(allowed(from, to), want, "{from:?} -> {to:?}");
        }
    }
}

#[test]
fn commands_round_trip_through_the_directory_codec() {
    let cmds = [
        DirCmd::AddDup { record: Box::new(record(1001)) },
        DirCmd::AlterDup(DupAlteration {
            dup_id: 1001,
            from: DupStatus::Log,
            to: DupStatus::Broken,
            reason: Some(BrokenReason::LogRetentionExceeded),
        }),
        DirCmd::AlterDup(DupAlteration {
            dup_id: 1001,
            from: DupStatus::Log,
            to: DupStatus::Paused,
            reason: None,
        }),
        DirCmd::DropDup { dup_id: 1001 },
    ];
    for cmd in cmds {
        let mut out = Vec::new();
        encode_cmd(&mut out, &cmd);
        assert_eq!(decode_cmd(&out), Ok(cmd));
    }
}

#[test]
fn a_duplication_walks_its_statuses_and_a_reseed_takes_a_new_incarnation() {
    let engine = engine();
    run(&engine, &DirCmd::AddDup { record: Box::new(record(1000)) }).unwrap();
    assert_eq!(status(&engine, 1000), Some((DupStatus::Init, 1)));
    for (from, to) in [
        (DupStatus::Init, DupStatus::Prepare),
        (DupStatus::Prepare, DupStatus::App),
        (DupStatus::App, DupStatus::Log),
        (DupStatus::Log, DupStatus::Paused),
        (DupStatus::Paused, DupStatus::Log),
    ] {
        alter(&engine, 1000, from, to).unwrap();
        assert_eq!(status(&engine, 1000), Some((to, 1)));
    }
    let broken = DirCmd::AlterDup(DupAlteration {
        dup_id: 1000,
        from: DupStatus::Log,
        to: DupStatus::Broken,
        reason: Some(BrokenReason::LogGap),
    });
    run(&engine, &broken).unwrap();
    let held = dup(&engine.read_view(), 1000).unwrap().unwrap();
    assert_eq!((held.status, held.broken), (DupStatus::Broken, Some(BrokenReason::LogGap)));
    alter(&engine, 1000, DupStatus::Broken, DupStatus::Prepare).unwrap();
    let held = dup(&engine.read_view(), 1000).unwrap().unwrap();
    assert_eq!((held.status, held.incarnation, held.broken), (DupStatus::Prepare, 2, None));
    assert_eq!(dups(&engine.read_view()).unwrap(), vec![held]);
}

#[test]
fn wrong_commands_are_refused_and_change_nothing() {
    let engine = engine();
    let add = DirCmd::AddDup { record: Box::new(record(1000)) };
    run(&engine, &add).unwrap();
    assert_eq!(refusal(run(&engine, &add)), DupRefusal::Exists);
    // A transition from a status it does not hold (a racing driver).
    assert_eq!(
        refusal(alter(&engine, 1000, DupStatus::Prepare, DupStatus::App)),
        DupRefusal::WrongStage
    );
    // A transition the table does not allow.
    assert_eq!(
        refusal(alter(&engine, 1000, DupStatus::Init, DupStatus::Paused)),
        DupRefusal::InvalidTransition
    );
    assert_eq!(
        refusal(alter(&engine, 9, DupStatus::Init, DupStatus::Prepare)),
        DupRefusal::NotFound
    );
    // Only a removed record may be dropped.
    assert_eq!(refusal(run(&engine, &DirCmd::DropDup { dup_id: 1000 })), DupRefusal::WrongStage);
    assert_eq!(status(&engine, 1000), Some((DupStatus::Init, 1)));
    // Invalid records are refused before anything is read.
    for bad in [
        DupRecord { status: DupStatus::Log, ..record(1001) },
        DupRecord { incarnation: 2, ..record(1001) },
        DupRecord { end: Some(b"a".to_vec()), ..record(1001) },
        DupRecord { dup_id: 0, ..record(1001) },
        DupRecord {
            remote: DupRemote { name: String::new(), cluster_id: None, secret: None },
            ..record(1001)
        },
    ] {
        let result = run(&engine, &DirCmd::AddDup { record: Box::new(bad.clone()) });
        assert!(matches!(result, Err(Error::InvalidRequest(_))), "{bad:?}: {result:?}");
    }
    assert_eq!(dups(&engine.read_view()).unwrap().len(), 1);
    // Removed, then dropped; a retried drop answers no record.
    alter(&engine, 1000, DupStatus::Init, DupStatus::Removed).unwrap();
    assert_eq!(
        refusal(alter(&engine, 1000, DupStatus::Removed, DupStatus::Log)),
        DupRefusal::InvalidTransition
    );
    for _ in 0..2 {
        let dropped = run(&engine, &DirCmd::DropDup { dup_id: 1000 }).unwrap();
        assert_eq!(dropped, DirResult::Dup { record: None });
        assert_eq!(status(&engine, 1000), None);
    }
}

#[test]
fn a_frozen_duplication_moves_only_to_removed() {
    let engine = engine();
    run(&engine, &DirCmd::AddDup { record: Box::new(record(1000)) }).unwrap();
    // A newer binary's status, written as it would be.
    let frozen = encode(&DupRecord { status: DupStatus::Unspecified, ..record(1000) });
    let mut round = engine.begin_round();
    round.prepare_for_region(DIRECTORY, Epoch::INITIAL).unwrap();
    round.put(&key(1000), &frozen).unwrap();
    round.commit().unwrap();
    for to in [DupStatus::Init, DupStatus::Log, DupStatus::Broken, DupStatus::Prepare] {
        assert_eq!(
            refusal(alter(&engine, 1000, DupStatus::Unspecified, to)),
            DupRefusal::Frozen,
            "{to:?}"
        );
    }
    alter(&engine, 1000, DupStatus::Unspecified, DupStatus::Removed).unwrap();
    assert_eq!(status(&engine, 1000), Some((DupStatus::Removed, 1)));
}

#[test]
fn ranges_overlap_as_half_open_intervals() {
    let r = record(1);
    assert!(r.contains(b"a") && r.contains(b"l") && !r.contains(b"m") && !r.contains(b""));
    assert!(r.overlaps(b"", None));
    assert!(r.overlaps(b"l", Some(b"z")));
    assert!(!r.overlaps(b"m", None));
    assert!(!r.overlaps(b"", Some(b"a")));
    let all = DupRecord { start: Vec::new(), end: None, ..record(1) };
    assert!(all.overlaps(b"zz", None) && all.contains(b""));
}

#[test]
fn a_cutover_walks_log_to_cut_over_and_nothing_leads_back() {
    let engine = engine();
    run(&engine, &DirCmd::AddDup { record: Box::new(record(1000)) }).unwrap();
    for (from, to) in [(DupStatus::Init, DupStatus::Log), (DupStatus::Log, DupStatus::CuttingOver)]
    {
        alter(&engine, 1000, from, to).unwrap();
    }
    // Codes 8 and 9, and their golden status bytes in the record.
    assert_eq!((DupStatus::CuttingOver.code(), DupStatus::CutOver.code()), (8, 9));
    let bytes = encode(&DupRecord { status: DupStatus::CuttingOver, ..record(1000) });
    let body = TlvRecord::parse(&bytes[1..], FIELDS, UnknownTags::Skip).unwrap();
    assert_eq!(body.required(F_STATUS, "status").unwrap().value, 8u64.to_le_bytes());
    for to in [DupStatus::Log, DupStatus::Paused, DupStatus::Broken, DupStatus::Prepare] {
        assert_eq!(
            refusal(alter(&engine, 1000, DupStatus::CuttingOver, to)),
            DupRefusal::InvalidTransition
        );
    }
    assert_eq!(status(&engine, 1000), Some((DupStatus::CuttingOver, 1)));
    alter(&engine, 1000, DupStatus::CuttingOver, DupStatus::CutOver).unwrap();
    // A second cutover names a status the record left: refused, nothing changed.
    assert_eq!(
        refusal(alter(&engine, 1000, DupStatus::CuttingOver, DupStatus::CutOver)),
        DupRefusal::WrongStage
    );
    for to in [DupStatus::Log, DupStatus::CuttingOver, DupStatus::Broken] {
        assert_eq!(
            refusal(alter(&engine, 1000, DupStatus::CutOver, to)),
            DupRefusal::InvalidTransition
        );
    }
    assert_eq!(status(&engine, 1000), Some((DupStatus::CutOver, 1)));
    alter(&engine, 1000, DupStatus::CutOver, DupStatus::Removed).unwrap();
}
