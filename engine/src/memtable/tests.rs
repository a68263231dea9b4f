//! Unit tests of the memtable: entry encoding, leaves, visibility pruning, and the
//! map's operations against a simple model.

use super::*;

fn vis(visible: u64, snapshots: &[u64]) -> Visibility {
    Visibility { snapshots: snapshots.to_vec(), visible }
}

fn write(m: &Memtable, writes: &[(&[u8], Option<&[u8]>)], first_seq: u64, v: &Visibility) {
    let mut b = Batch::new();
    for (k, val) in writes {
        match val {
            Some(val) => b.put(k, val),
            None => b.delete(k),
        }
    }
    b.set_seqs(first_seq);
    b.sort();
    m.apply(&b, v, &mut |_, _| {});
}

fn scan_all(m: &Memtable, seq: u64) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    m.scan(b"", None, seq, usize::MAX, |k, v| {
        out.push((k.to_vec(), v.to_vec()));
        true
    });
    out
}

#[test]
fn reads_see_the_newest_version_at_their_snapshot() {
    let m = Memtable::new();
    let keep_all = vis(0, &[0, 1, 2, 3, 4]);
    write(&m, &[(b"a", Some(b"1")), (b"ab", Some(b"x"))], 1, &keep_all);
    write(&m, &[(b"a", Some(b"2"))], 3, &keep_all);
    write(&m, &[(b"a", None)], 5, &keep_all);
    assert_eq!(m.get(b"a", 0), Found::Missing);
    assert_eq!(m.get(b"a", 1), Found::Value(Bytes::from_static(b"1")));
    assert_eq!(m.get(b"a", 4), Found::Value(Bytes::from_static(b"2")));
    assert_eq!(m.get(b"a", 5), Found::Deleted);
    assert_eq!(m.get(b"ab", 9), Found::Value(Bytes::from_static(b"x")));
    assert_eq!(
        scan_all(&m, 4),
        vec![(b"a".to_vec(), b"2".to_vec()), (b"ab".to_vec(), b"x".to_vec())]
    );
    assert_eq!(scan_all(&m, 9), vec![(b"ab".to_vec(), b"x".to_vec())]);
}

#[test]
fn writers_drop_exactly_what_no_snapshot_sees() {
    let m = Memtable::new();
    for seq in 1..=5u64 {
        // Snapshots at 2 and 4 are live throughout.
        write(&m, &[(b"k", Some(&[seq as u8]))], seq, &vis(seq - 1, &[2, 4]));
    }
    // Kept: 5 (newest), 4 (snapshot 4), 2 (snapshot 2 and 3's window... 2 <= 2 < 3).
    assert_eq!(m.len(), 3);
    assert_eq!(m.get(b"k", 2), Found::Value(Bytes::from_static(&[2])));
    assert_eq!(m.get(b"k", 3), Found::Value(Bytes::from_static(&[2])));
    assert_eq!(m.get(b"k", 4), Found::Value(Bytes::from_static(&[4])));
    // The snapshots go; a sweep leaves only the newest.
    let (next, keys, freed) = m.gc(b"", usize::MAX, &vis(5, &[]), &mut |_, _| {});
    assert_eq!((next, keys), (None, 1));
    assert!(freed > 0);
    assert_eq!(m.len(), 1);
    write(&m, &[(b"k", None)], 6, &vis(5, &[]));
    m.gc(b"", usize::MAX, &vis(6, &[]), &mut |_, _| {});
    assert_eq!(m.len(), 0, "a tombstone over nothing goes too");
    assert_eq!(m.bytes(), 0);
}

#[test]
fn versions_of_a_key_never_straddle_leaves() {
    let m = Memtable::new();
    let keep_all = vis(0, &(0..100).collect::<Vec<_>>());
    for seq in 1..=40u64 {
        write(&m, &[(b"a", Some(&[seq as u8; 300]))], seq, &keep_all);
    }
    write(&m, &[(b"0", Some(b"x"))], 41, &keep_all);
    // Rebuilding the leaf (12 KiB of versions of "a") must not cut inside "a".
    m.remove_range(b"0", Some(b"1"));
    assert_eq!(m.leaves(), 1);
    let at_15 = scan_all(&m, 15);
    assert_eq!(at_15, vec![(b"a".to_vec(), vec![15u8; 300])]);
}

#[test]
fn leaves_split_and_ranges_are_removed() {
    let m = Memtable::new();
    let v = vis(0, &[]);
    let keys: Vec<Vec<u8>> = (0..2000u32).map(|i| format!("key{i:05}").into_bytes()).collect();
    let mut b = Batch::new();
    for k in &keys {
        b.put(k, &[7; 50]);
    }
    b.set_seqs(1);
    b.sort();
    m.apply(&b, &v, &mut |_, _| {});
    assert!(m.leaves() > 10, "{} leaves", m.leaves());
    assert_eq!(scan_all(&m, 10_000).len(), 2000);
    let mut charged = 0i64;
    let before = m.bytes();
    let freed = m.remove_range(b"key00500", Some(b"key01500"));
    charged -= freed.cast_signed();
    assert_eq!(m.bytes().cast_signed(), before.cast_signed() + charged);
    assert_eq!(m.range_bytes(b"", None), m.bytes());
    let left: Vec<_> = scan_all(&m, 10_000).into_iter().map(|(k, _)| k).collect();
    assert_eq!(left.len(), 1000);
    assert!(
        left.iter().all(
            |k| k.as_slice() < b"key00500".as_slice() || k.as_slice() >= b"key01500".as_slice()
        )
    );
    let mut limited = 0;
    m.scan(b"key00400", Some(b"key01600"), 10_000, 150, |_, _| {
        limited += 1;
        true
    });
    assert_eq!(limited, 150);
}
