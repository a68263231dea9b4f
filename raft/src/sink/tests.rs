use proptest::prelude::*;
use regionkv_engine::{Epoch, Region, RegionId};

use super::*;

fn region() -> Region {
    Region {
        id: RegionId(5),
        start: b"b".to_vec(),
        end: Some(b"y".to_vec()),
        epoch: Epoch { version: 3, conf_ver: 2 },
        peers: Vec::new(),
    }
}

fn cmd(incarnation: u32, cmd: SinkCmd) -> SinkEntryCmd {
    SinkEntryCmd {
        epoch: Epoch { version: 3, conf_ver: 2 },
        dup_id: 7,
        incarnation,
        source_region: 40,
        cmd,
    }
}

fn op(i: u64, key: &str, value: Option<&str>) -> SinkOp {
    SinkOp {
        source_index: i,
        key: key.as_bytes().to_vec(),
        value: value.map(|v| v.as_bytes().to_vec()),
    }
}

fn apply_ok(t: &mut SinkTable, c: &SinkCmd, inc: u32) -> SinkWrites {
    apply(t, &region(), &cmd(inc, c.clone()), &|_, _| vec![b"old".to_vec()]).unwrap()
}

fn refusal(t: &mut SinkTable, c: &SinkCmd, inc: u32) -> SinkRefusal {
    let before = t.clone();
    let got = apply(t, &region(), &cmd(inc, c.clone()), &|_, _| Vec::new());
    assert_eq!(*t, before, "{c:?} changed nothing");
    match got {
        Err(Error::SinkRefused { reason, .. }) => reason,
        other => panic!("{c:?}: {other:?}"),
    }
}

#[test]
fn every_kind_round_trips() {
    for c in [
        SinkCmd::Begin { seed_id: 1, start: b"a".to_vec(), end: None },
        SinkCmd::Begin { seed_id: 1, start: Vec::new(), end: Some(b"m".to_vec()) },
        SinkCmd::Chunk {
            seed_id: 2,
            puts: vec![(b"k".to_vec(), b"v".to_vec()), (b"e".to_vec(), Vec::new())],
        },
        SinkCmd::End { seed_id: 2, seed_index: 90 },
        SinkCmd::Apply {
            start: b"a".to_vec(),
            end: Some(b"z".to_vec()),
            upto: 9,
            ops: vec![op(3, "c", Some("x")), op(4, "c", None)],
        },
        SinkCmd::Promote,
    ] {
        let entry = cmd(4, c);
        let mut out = Vec::new();
        encode(&mut out, &entry);
        assert_eq!(decode(&out).unwrap(), entry);
        let data = bytes::Bytes::from(crate::command::encode_sink(&entry));
        assert!(
            matches!(crate::command::decode(&data), Ok(crate::command::Command::Sink(e)) if e == entry)
        );
    }
}

#[test]
fn kinds_this_binary_does_not_know_are_told_apart() {
    let mut out = Vec::new();
    codec::put_nested(&mut out, S_EPOCH, |out| crate::command::put_epoch(out, Epoch::INITIAL));
    codec::put_u64(&mut out, S_KIND, 9);
    codec::put_u64(&mut out, S_DUP_ID, 1);
    let e = decode(&out).unwrap_err();
    assert_eq!(e.reason, UNKNOWN_SINK);
    assert!(crate::command::is_unknown_kind(&e));
    let mut zero = Vec::new();
    codec::put_nested(&mut zero, S_EPOCH, |out| crate::command::put_epoch(out, Epoch::INITIAL));
    codec::put_u64(&mut zero, S_KIND, 0);
    assert_ne!(decode(&zero).unwrap_err().reason, UNKNOWN_SINK, "0 is damage, not a new kind");
}

#[test]
fn a_seed_wipes_loads_and_ends_and_every_check_is_a_refusal() {
    let mut t = SinkTable::default();
    let begin = SinkCmd::Begin { seed_id: 1, start: b"a".to_vec(), end: None };
    let w = apply_ok(&mut t, &begin, 2);
    assert_eq!(w.wipe, vec![b"old".to_vec()]);
    assert_eq!(t.mark_of(7, 40, b"c"), 0);
    assert_eq!(t.standby_of(b"c"), Some(7));
    // The same seed again: no wipe.
    assert!(apply_ok(&mut t, &begin, 2).wipe.is_empty());
    let apply_cmd = SinkCmd::Apply {
        start: b"a".to_vec(),
        end: None,
        upto: 5,
        ops: vec![op(5, "c", Some("x"))],
    };
    assert_eq!(refusal(&mut t, &apply_cmd.clone(), 2), SinkRefusal::Seeding);
    assert_eq!(
        refusal(&mut t, &SinkCmd::Chunk { seed_id: 9, puts: vec![] }, 2),
        SinkRefusal::WrongSeed
    );
    assert_eq!(
        refusal(&mut t, &SinkCmd::End { seed_id: 1, seed_index: 3 }, 1),
        SinkRefusal::StaleIncarnation
    );
    assert_eq!(
        refusal(&mut t, &SinkCmd::End { seed_id: 1, seed_index: 3 }, 3),
        SinkRefusal::WrongIncarnation
    );
    let chunk = SinkCmd::Chunk { seed_id: 1, puts: vec![(b"c".to_vec(), b"v".to_vec())] };
    assert_eq!(apply_ok(&mut t, &chunk, 2).ops.len(), 1);
    let outside = SinkCmd::Chunk { seed_id: 1, puts: vec![(b"z".to_vec(), b"v".to_vec())] };
    let before = t.clone();
    assert!(matches!(
        apply(&mut t, &region(), &cmd(2, outside), &|_, _| Vec::new()),
        Err(Error::KeyNotInRegion { .. })
    ));
    assert_eq!(t, before);
    apply_ok(&mut t, &SinkCmd::End { seed_id: 1, seed_index: 4 }, 2);
    apply_ok(&mut t, &SinkCmd::End { seed_id: 1, seed_index: 4 }, 2); // again: nothing
    assert_eq!(t.mark_of(7, 40, b"c"), 4);
    assert_eq!(refusal(&mut t, &begin, 2), SinkRefusal::AlreadySeeded);
    // The log after the seed: index 4 is in the seed, 5 is not.
    let w = apply_ok(
        &mut t,
        &SinkCmd::Apply {
            start: b"a".to_vec(),
            end: None,
            upto: 6,
            ops: vec![op(4, "c", Some("old")), op(5, "c", Some("x"))],
        },
        2,
    );
    assert_eq!((w.ops.len(), w.skipped), (1, 1));
    assert_eq!(t.mark_of(7, 40, b"x"), 6);
    let ahead =
        SinkCmd::Apply { start: b"a".to_vec(), end: None, upto: 6, ops: vec![op(7, "c", None)] };
    assert_eq!(refusal(&mut t, &ahead, 2), SinkRefusal::OutOfRange);
    // A higher incarnation's Begin replaces the entry (a reseed).
    apply_ok(&mut t, &SinkCmd::Begin { seed_id: 3, start: b"a".to_vec(), end: None }, 3);
    assert_eq!(t.mark_of(7, 40, b"x"), 0);
    apply_ok(&mut t, &SinkCmd::Promote, 3);
    assert!(t.is_empty());
    assert_eq!(t.standby_of(b"c"), None);
}

#[test]
fn an_unknown_entry_is_created_by_its_first_batch_over_the_region_part() {
    let mut t = SinkTable::default();
    let c = SinkCmd::Apply {
        start: b"m".to_vec(),
        end: None,
        upto: 8,
        ops: vec![op(8, "n", Some("v"))],
    };
    assert_eq!(apply_ok(&mut t, &c, 1).ops.len(), 1);
    // Raised over [m, y): the region's end clips the unbounded shipped range.
    let Some(SinkSlot::Known(e)) = t.get(7, 40) else { panic!() };
    assert_eq!(e.pieces.len(), 1);
    assert_eq!(
        (e.pieces[0].start.as_slice(), e.pieces[0].end.as_deref()),
        (&b"m"[..], Some(&b"y"[..]))
    );
    // Resent: skipped.
    let w = apply_ok(&mut t, &c, 1);
    assert_eq!((w.ops.len(), w.skipped), (0, 1));
    let out = SinkCmd::Apply {
        start: b"m".to_vec(),
        end: None,
        upto: 9,
        ops: vec![op(9, "c", Some("v"))],
    };
    assert_eq!(
        refusal(&mut t, &out, 1),
        SinkRefusal::OutOfRange,
        "a key outside the shipped range"
    );
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
        let _ = decode(&bytes);
    }
}
