use proptest::prelude::*;

use super::*;

fn piece(start: &str, end: Option<&str>, mark: u64) -> SinkPiece {
    SinkPiece::with(start.as_bytes(), end.map(str::as_bytes), mark)
}

fn entry(pieces: Vec<SinkPiece>) -> SinkEntry {
    SinkEntry { dup_id: 4, source_region: 9, incarnation: 2, seed_id: None, pieces }
}

#[test]
fn a_raise_over_a_subrange_splits_pieces_and_fills_gaps() {
    let mut e = entry(vec![piece("b", Some("f"), 10)]);
    e.raise(b"d", Some(b"h"), 20);
    assert_eq!(e.pieces, vec![piece("b", Some("d"), 10), piece("d", Some("h"), 20)]);
    assert_eq!(
        (e.mark_of(b"c"), e.mark_of(b"e"), e.mark_of(b"g"), e.mark_of(b"h")),
        (10, 20, 20, 0)
    );
    // A lower `upto` leaves higher marks alone; only the gap gets it.
    e.raise(b"a", None, 15);
    // Adjacent pieces of one mark are joined.
    assert_eq!(
        e.pieces,
        vec![piece("a", Some("d"), 15), piece("d", Some("h"), 20), piece("h", None, 15)]
    );
    // A batch over everything up to X collapses the pieces back into one.
    e.raise(b"", None, 30);
    assert_eq!(e.pieces, vec![piece("", None, 30)]);
}

#[test]
fn a_raise_inside_one_piece_leaves_both_sides() {
    let mut e = entry(vec![piece("a", None, 5)]);
    e.raise(b"c", Some(b"d"), 7);
    assert_eq!(
        e.pieces,
        vec![piece("a", Some("c"), 5), piece("c", Some("d"), 7), piece("d", None, 5)]
    );
    // The first raise of a new entry (a source split child's first batch).
    let mut fresh = entry(Vec::new());
    fresh.raise(b"m", Some(b"q"), 3);
    assert_eq!(fresh.pieces, vec![piece("m", Some("q"), 3)]);
}

#[test]
fn split_clips_pieces_and_merge_concatenates_them() {
    let mut t = SinkTable::default();
    t.set(entry(vec![piece("a", Some("f"), 10), piece("f", None, 12)]));
    t.set(SinkEntry { source_region: 10, ..entry(vec![piece("x", None, 3)]) });
    let left = t.restricted(b"a", Some(b"g"));
    let right = t.restricted(b"g", None);
    let Some(SinkSlot::Known(l)) = left.get(4, 9) else { panic!() };
    assert_eq!(l.pieces, vec![piece("a", Some("f"), 10), piece("f", Some("g"), 12)]);
    assert!(left.get(4, 10).is_none(), "an entry with no piece left is dropped");
    let Some(SinkSlot::Known(r)) = right.get(4, 9) else { panic!() };
    assert_eq!(r.pieces, vec![piece("g", None, 12)]);
    // Merged back: both sides' pieces, each with its own mark.
    let mut merged = left.clone();
    merged.merge_from(&right);
    assert_eq!(merged.mark_of(4, 9, b"b"), 10);
    assert_eq!(merged.mark_of(4, 9, b"h"), 12);
    assert_eq!(merged.mark_of(4, 10, b"y"), 3);
    let Some(SinkSlot::Known(m)) = merged.get(4, 9) else { panic!() };
    assert_eq!(m.pieces, vec![piece("a", Some("f"), 10), piece("f", None, 12)]);
}

#[test]
fn a_merge_of_two_incarnations_keeps_the_higher_ones_entry() {
    let mut target = SinkTable::default();
    target.set(entry(vec![piece("a", Some("m"), 10)]));
    let mut source = SinkTable::default();
    source.set(SinkEntry { incarnation: 3, ..entry(vec![piece("m", None, 2)]) });
    target.merge_from(&source);
    let Some(SinkSlot::Known(m)) = target.get(4, 9) else { panic!() };
    assert_eq!((m.incarnation, m.pieces.clone()), (3, vec![piece("m", None, 2)]));
    assert_eq!(target.standby_of(b"b"), None, "the lower incarnation's pieces are dropped");
    // And the other way round: the target's higher incarnation wins.
    let mut target = SinkTable::default();
    target.set(SinkEntry { incarnation: 5, ..entry(vec![piece("a", Some("m"), 10)]) });
    target.merge_from(&source);
    let Some(SinkSlot::Known(m)) = target.get(4, 9) else { panic!() };
    assert_eq!((m.incarnation, m.pieces.clone()), (5, vec![piece("a", Some("m"), 10)]));
}

#[test]
fn entries_round_trip_unknown_tags_are_skipped_and_newer_formats_kept() {
    let e = SinkEntry {
        seed_id: Some(77),
        ..entry(vec![piece("a", Some("b"), 1), piece("c", None, 2)])
    };
    assert_eq!(SinkEntry::decode(&e.encode()).unwrap(), e);
    let mut bytes = e.encode();
    codec::put_u64(&mut bytes, 60, 1);
    assert_eq!(SinkEntry::decode(&bytes).unwrap(), e);
    let newer = Bytes::from_static(b"\x02from a newer binary");
    let mut buf = Vec::new();
    codec::put_nested(&mut buf, T_ENTRY, |out| {
        codec::put_u64(out, TE_DUP_ID, 6);
        codec::put_u64(out, TE_SOURCE_REGION, 1);
        codec::put_field(out, TE_BYTES, &newer);
    });
    let mut t = SinkTable::decode(&buf).unwrap();
    assert_eq!(t.get(6, 1), Some(&SinkSlot::Unreadable(newer)));
    assert!(t.is_frozen(6) && !t.is_frozen(4));
    assert_eq!(t.standby_of(b"anything"), Some(6), "its pieces are unknown: every key");
    let mut again = Vec::new();
    t.encode(&mut again);
    assert_eq!(again, buf, "kept byte for byte");
    // Split and merge keep it.
    assert_eq!(t.restricted(b"x", None).get(6, 1), t.get(6, 1));
    let mut other = SinkTable::default();
    other.set(SinkEntry { dup_id: 6, source_region: 1, ..entry(vec![piece("a", None, 1)]) });
    t.merge_from(&other);
    assert!(t.is_frozen(6));
    t.set(e);
    assert_eq!(
        SinkTable::decode(&{
            let mut b = Vec::new();
            t.encode(&mut b);
            b
        })
        .unwrap(),
        t
    );
}

#[test]
fn overlapping_pieces_or_a_mismatched_key_are_corrupt() {
    let bad = entry(vec![piece("a", Some("c"), 1), piece("b", None, 2)]);
    assert!(matches!(SinkEntry::decode(&bad.encode()), Err(Unreadable::Corrupt(_))));
    let mut buf = Vec::new();
    codec::put_nested(&mut buf, T_ENTRY, |out| {
        codec::put_u64(out, TE_DUP_ID, 5);
        codec::put_u64(out, TE_SOURCE_REGION, 9);
        codec::put_field(out, TE_BYTES, &entry(Vec::new()).encode());
    });
    assert!(SinkTable::decode(&buf).is_err());
}

proptest! {
    #[test]
    fn damaged_tables_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = SinkTable::decode(&bytes);
        let _ = SinkEntry::decode(&bytes);
    }

    /// Raises keep the pieces sorted and disjoint, and every key's mark is the max of
    /// the raises that covered it (a model over single-byte keys).
    #[test]
    fn raises_match_a_per_key_model(raises in proptest::collection::vec((0u8..20, 0u8..21, 1u64..50), 1..12)) {
        let mut e = entry(Vec::new());
        let mut model = [0u64; 20];
        for (a, b, upto) in raises {
            let end = (b < 20 && b > a).then(|| vec![b]);
            if b <= a && b < 20 { continue; }
            e.raise(&[a], end.as_deref(), upto);
            for (k, m) in model.iter_mut().enumerate() {
                if k >= a as usize && (b >= 20 || k < b as usize) { *m = (*m).max(upto); }
            }
        }
        for (k, m) in model.iter().enumerate() {
            prop_assert_eq!(e.mark_of(&[k as u8]), *m);
        }
        let again = SinkEntry::decode(&e.encode()).unwrap();
        prop_assert_eq!(again, e);
    }
}
