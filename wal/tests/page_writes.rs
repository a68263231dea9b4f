//! Appends cover every page of a segment they are first to touch to its end, so the
//! kernel never reads a block back from disk to merge a small record into it (a spare
//! zero-filled with direct writes is not in the page cache): a read-modify-write of one
//! block every few appends, paid inside the appender's `write` before its fdatasync
//! (ARCHITECTURE.md, "The write path").

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use regionkv_wal::fs::{DIRECT_IO_ALIGN, SimOp, SimOpKind};
use regionkv_wal::{SimFs, SparePreparation, Wal, WalOptions};

const PAGE: u64 = DIRECT_IO_ALIGN as u64;
const SEGMENT: u64 = 256 << 10;

/// Appends of `len`-byte payloads one at a time (one group each), through several
/// segment rolls; returns every write into a segment file past its header.
fn writes_of_appends(options: WalOptions, len: usize) -> Vec<(PathBuf, u64, u64)> {
    let fs = SimFs::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    fs.set_fault_hook(Box::new(move |op: &SimOp| {
        if op.kind == SimOpKind::Write
            && op.offset > 0
            && op.path.to_string_lossy().ends_with(".wal")
        {
            log.lock().unwrap().push((op.path.clone(), op.offset, op.len));
        }
        None
    }));
    let wal = Wal::open(Arc::new(fs.clone()), "/wal", options).unwrap();
    for i in 0..(3 * SEGMENT as usize / len) {
        wal.append(&vec![i as u8; len]).unwrap();
    }
    wal.close().unwrap();
    fs.clear_fault_hook();
    Arc::try_unwrap(seen).unwrap().into_inner().unwrap()
}

/// Every write that reaches past what earlier writes to its file covered ends on a
/// page boundary (or at the segment's end).
fn assert_new_pages_whole(writes: &[(PathBuf, u64, u64)]) {
    let mut covered: HashMap<&PathBuf, u64> = HashMap::new();
    for (path, offset, len) in writes {
        let end = offset + len;
        let to = covered.entry(path).or_insert(0);
        assert!(
            end <= *to || end.is_multiple_of(PAGE) || end == SEGMENT,
            "a write of {len} B at {offset} in {} ends inside a page no earlier write covered \
             (covered to {to})",
            path.display()
        );
        *to = (*to).max(end);
    }
    assert!(covered.len() >= 2, "the appends rolled to a new segment");
}

#[test]
fn small_appends_write_each_new_page_whole_in_zero_filled_segments() {
    let options = WalOptions::default()
        .segment_bytes(SEGMENT)
        .spare_segments(2)
        .spare_preparation(SparePreparation::OnDemand);
    assert_new_pages_whole(&writes_of_appends(options.clone(), 400));
    assert_new_pages_whole(&writes_of_appends(options, 150));
}

#[test]
fn small_appends_write_each_new_page_whole_in_sparse_segments() {
    // The first segment of a fresh log is sparse: zeros are written ahead of records.
    let options = WalOptions::default().segment_bytes(SEGMENT).spare_segments(0);
    assert_new_pages_whole(&writes_of_appends(options, 400));
}
