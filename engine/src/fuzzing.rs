//! Entry points of the fuzz targets (`fuzz/` at the repository root): each decodes
//! arbitrary bytes as one of this crate's on-disk formats, must never panic, and checks
//! that what decodes encodes to something that decodes to the same. Not part of the
//! API (hidden from the docs); the unit tests below run them on the golden files, so
//! `cargo test` covers them without the fuzzer.

use std::path::Path;

use bytes::Bytes;

use crate::checkpoint::{CheckpointChunks, CheckpointFile, Encoder};
use crate::dup::RegionDupState;
use crate::manifest::Manifest;
use crate::sink::SinkEntry;
use crate::txn::{Lock, TxnRecord};

/// A manifest: one that decodes re-encodes (in the current format) to one that decodes
/// to the same.
pub fn manifest(data: &[u8]) {
    if let Ok(mut m) = Manifest::decode(data) {
        let again = Manifest::decode(&m.encode()).expect("a manifest this binary wrote");
        // The version it was read at is the one thing that changes.
        m.format_version = again.format_version;
        assert_eq!(again, m);
    }
}

/// A whole checkpoint file: one that opens re-encodes (in the current format, the same
/// pairs) to one that opens to the same header and pairs.
pub fn checkpoint(data: &[u8]) {
    let path = Path::new("fuzz.ckpt");
    let Ok(file) = CheckpointFile::open(Bytes::copy_from_slice(data), path) else { return };
    let mut pairs = Vec::new();
    file.for_each(|k, v| pairs.push((k.to_vec(), v.to_vec())));
    let mut in_blocks = 0;
    for block in 0..file.block_count() {
        file.for_each_in_block(block, |_, _| in_blocks += 1);
    }
    assert_eq!(in_blocks, pairs.len(), "the blocks hold every pair once");
    let chunked: usize = CheckpointChunks::new(&file, 100).map(|c| c.data.len()).sum();
    assert_eq!(chunked, data.len(), "the chunks cover the file");

    let mut out = Vec::new();
    let mut sink = |_: u64, buf: &mut Vec<u8>| {
        out.append(buf);
        Ok(())
    };
    let mut enc = Encoder::new(file.header(), 1 << 16, &mut sink);
    file.for_each_encoded(|k, entry| enc.push_encoded(k, entry).expect("a write to memory"));
    enc.finish().expect("a write to memory");
    let again =
        CheckpointFile::open(Bytes::from(out), path).expect("a checkpoint this binary wrote");
    assert_eq!(again.header(), file.header());
    let mut pairs_again = Vec::new();
    again.for_each(|k, v| pairs_again.push((k.to_vec(), v.to_vec())));
    assert_eq!(pairs_again, pairs);
}

/// One of the records the engine stores under its own keys, by the first byte: a lock,
/// a transaction record, a region's duplication state, a sink entry. One that decodes
/// re-encodes to one that decodes to the same.
pub fn record(data: &[u8]) {
    let Some((&kind, bytes)) = data.split_first() else { return };
    match kind % 4 {
        0 => {
            if let Ok(v) = Lock::decode(bytes) {
                assert_eq!(Lock::decode(&v.encode()), Ok(v));
            }
        }
        1 => {
            if let Ok(v) = TxnRecord::decode(bytes) {
                assert_eq!(TxnRecord::decode(&v.encode()), Ok(v));
            }
        }
        2 => {
            if let Ok(v) = RegionDupState::decode(bytes) {
                assert_eq!(RegionDupState::decode(&v.encode()), Ok(v));
            }
        }
        _ => {
            if let Ok(v) = SinkEntry::decode(bytes) {
                assert_eq!(SinkEntry::decode(&v.encode()), Ok(v));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn golden(name: &str) -> Vec<u8> {
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name))
            .expect("a golden file")
    }

    /// Every golden file, whole and cut short, through its entry point.
    #[test]
    fn the_entry_points_take_the_golden_files_and_their_prefixes() {
        for v in 1..=5 {
            let m = golden(&format!("manifest-v{v}.bin"));
            let c = golden(&format!("checkpoint-v{v}.bin"));
            assert!(
                Manifest::decode(&m).is_ok()
                    && CheckpointFile::open(Bytes::from(c.clone()), Path::new("c")).is_ok()
            );
            for cut in 0..=m.len() {
                manifest(&m[..cut]);
            }
            for cut in (0..=c.len()).step_by(7).chain([c.len()]) {
                checkpoint(&c[..cut]);
            }
        }
        let records = [
            (0, "txn-lock-v1.bin"),
            (0, "txn-lock-v2.bin"),
            (0, "txn-lock-v2-async.bin"),
            (1, "txn-record-v1.bin"),
            (1, "txn-record-v2.bin"),
            (1, "txn-record-v2-async.bin"),
            (2, "dup-entry-v1.bin"),
            (3, "sink-entry-v1.bin"),
        ];
        for (kind, name) in records {
            let mut data = vec![kind];
            data.extend(golden(name));
            for cut in 0..=data.len() {
                record(&data[..cut]);
            }
        }
    }
}
