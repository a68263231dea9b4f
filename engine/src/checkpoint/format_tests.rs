//! Tests of the checkpoint format (`format.rs`).

use proptest::prelude::*;

use super::*;
use crate::region::{Epoch, Peer, PeerId, RegionId, StoreId};

pub(crate) fn encode(header: &CheckpointHeader, pairs: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut file = Vec::new();
    let mut sink = |offset: u64, buf: &mut Vec<u8>| {
        assert_eq!(offset, file.len() as u64);
        file.extend_from_slice(buf);
        Ok(())
    };
    let mut enc = Encoder::new(header, 1 << 20, &mut sink);
    for (k, v) in pairs {
        enc.push(k, v).unwrap();
    }
    let stats = enc.finish().unwrap();
    assert_eq!(stats.file_bytes, file.len() as u64);
    file
}

fn header() -> CheckpointHeader {
    CheckpointHeader {
        region: Region {
            id: RegionId(3),
            start: b"b".to_vec(),
            end: Some(b"y".to_vec()),
            epoch: Epoch { version: 4, conf_ver: 2 },
            peers: vec![Peer { id: PeerId(10), store: StoreId(1) }],
        },
        applied_index: 77,
        sessions: None,
        snapshot: Some(SnapshotMeta { term: 6, voters: vec![10, 11], learners: vec![12] }),
        txn: None,
        dups: None,
        sinks: None,
    }
}

fn pairs(n: usize, value_len: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    (0..n).map(|i| (format!("k{i:08}").into_bytes(), vec![i as u8; value_len])).collect()
}

fn decode(bytes: &[u8]) -> Result<CheckpointFile> {
    CheckpointFile::open(Bytes::copy_from_slice(bytes), Path::new("test.ckpt"))
}

fn read_all(file: &CheckpointFile) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    file.for_each(|k, v| out.push((k.to_vec(), v.to_vec())));
    out
}

#[test]
fn round_trips_across_many_blocks_and_empty() {
    let data = pairs(3000, 100);
    let file = decode(&encode(&header(), &data)).unwrap();
    assert_eq!(file.header(), &header());
    assert!(file.stats().blocks > 3);
    assert_eq!(file.stats().entries, 3000);
    assert_eq!(read_all(&file), data);
    let empty = decode(&encode(&header(), &[])).unwrap();
    assert_eq!(empty.stats().entries, 0);
    assert!(read_all(&empty).is_empty());
}

#[test]
fn keys_out_of_order_or_outside_the_region_are_rejected() {
    let mut bad = pairs(3, 1);
    bad.swap(0, 1);
    assert!(decode(&encode(&header(), &bad)).unwrap_err().is_corruption());
    let outside = vec![(b"z".to_vec(), b"1".to_vec())];
    assert!(decode(&encode(&header(), &outside)).unwrap_err().is_corruption());
}

#[test]
fn a_newer_version_is_reported_as_too_new() {
    let mut file = encode(&header(), &pairs(2, 1));
    let newer = CHECKPOINT_FORMAT_VERSION + 1;
    file[8..12].copy_from_slice(&newer.to_le_bytes());
    assert!(matches!(decode(&file), Err(Error::TooNew { found, .. }) if found == newer));
}

/// Rewrites the version of an encoded file (and its header checksum).
fn with_version(mut file: Vec<u8>, version: u32) -> Vec<u8> {
    file[8..12].copy_from_slice(&version.to_le_bytes());
    let body_len = codec::u32_at(&file, 16).unwrap() as usize;
    let end = HEADER_FIXED_LEN + body_len;
    let crc = crc32fast::hash(&file[..end]);
    file[end..end + 4].copy_from_slice(&crc.to_le_bytes());
    file
}

#[test]
fn a_version_1_file_opens_without_snapshot_metadata_and_may_not_carry_it() {
    let v1 = CheckpointHeader { snapshot: None, sessions: None, ..header() };
    let file = decode(&with_version(encode(&v1, &pairs(3, 2)), 1)).unwrap();
    assert_eq!(file.header(), &v1);
    assert_eq!(read_all(&file), pairs(3, 2));
    let forged = with_version(encode(&header(), &pairs(3, 2)), 1);
    assert!(decode(&forged).unwrap_err().is_corruption());
}

#[test]
fn the_session_table_round_trips_and_version_1_has_none() {
    let mut table = SessionTable::new();
    let limits = SessionLimits::DEFAULT;
    for (id, seq, time) in [(7, 1, 1_000), (3, 9, 1_500), (7, 2, 1_700)] {
        table.write(crate::sessions::SessionId(id), seq, time, limits, &mut Vec::new());
    }
    let h = CheckpointHeader { sessions: Some(table), ..header() };
    let file = decode(&encode(&h, &pairs(3, 4))).unwrap();
    assert_eq!(file.header(), &h);
    // A version-1 file is read as it always was: no table. The same header bytes
    // with version 1 and a session table are refused (the tag did not exist).
    let v1 = CheckpointHeader { snapshot: None, sessions: None, ..header() };
    let file = decode(&with_version(encode(&v1, &pairs(3, 4)), 1)).unwrap();
    assert_eq!(file.header().sessions, None);
    let bad = CheckpointHeader { snapshot: None, ..h };
    assert!(decode(&with_version(encode(&bad, &pairs(3, 4)), 1)).unwrap_err().is_corruption());
}

fn txn_table() -> TxnTable {
    let mut t = TxnTable { floor: 12, ..TxnTable::default() };
    t.locks.insert(Bytes::from_static(b"c"), Bytes::from_static(b"\x01lock of c"));
    t.locks.insert(Bytes::from_static(b"d"), Bytes::from_static(b"\x09too new"));
    t.records.insert((Bytes::from_static(b"c"), 44), Bytes::from_static(b"\x01record"));
    t
}

#[test]
fn the_txn_state_round_trips_and_older_versions_have_none() {
    let h = CheckpointHeader { txn: Some(txn_table()), ..header() };
    let file = decode(&encode(&h, &pairs(3, 4))).unwrap();
    assert_eq!(file.header(), &h);
    // Version 2 is read as it was: no transaction state; the field there is
    // corruption (the tag did not exist).
    let v2 = header();
    let file = decode(&with_version(encode(&v2, &pairs(3, 4)), 2)).unwrap();
    assert_eq!(file.header().txn, None);
    assert!(decode(&with_version(encode(&h, &pairs(3, 4)), 2)).unwrap_err().is_corruption());
    // A lock or record outside the region is corruption.
    let mut outside = txn_table();
    outside.locks.insert(Bytes::from_static(b"z"), Bytes::from_static(b"\x01"));
    let bad = CheckpointHeader { txn: Some(outside), ..header() };
    assert!(decode(&encode(&bad, &[])).unwrap_err().is_corruption());
    assert!(check_header_fits(&h).is_ok());
}

fn dup_table() -> crate::dup::DupTable {
    use crate::dup::{DupStage, RegionDupState};
    let mut t = crate::dup::DupTable::default();
    t.set(RegionDupState {
        dup_id: 4,
        incarnation: 1,
        stage: DupStage::Seeding,
        min_ckpt_index: 60,
        seed_index: Some(70),
        confirmed: None,
        depends_on: Vec::new(),
        started_at_index: 60,
        fence: None,
    });
    t
}

#[test]
fn the_dup_state_round_trips_and_older_versions_have_none() {
    let h = CheckpointHeader { dups: Some(dup_table()), txn: Some(txn_table()), ..header() };
    let file = decode(&encode(&h, &pairs(3, 4))).unwrap();
    assert_eq!(file.header(), &h);
    // Version 3 is read as it was: no duplication state; the field there is corruption
    // (the tag did not exist).
    let v3 = CheckpointHeader { txn: Some(txn_table()), ..header() };
    let file = decode(&with_version(encode(&v3, &pairs(3, 4)), 3)).unwrap();
    assert_eq!(file.header().dups, None);
    assert_eq!(file.header().txn, Some(txn_table()));
    assert!(decode(&with_version(encode(&h, &pairs(3, 4)), 3)).unwrap_err().is_corruption());
    assert!(check_header_fits(&h).is_ok());
}

fn sink_table() -> crate::sink::SinkTable {
    use crate::sink::{SinkEntry, SinkPiece};
    let mut t = crate::sink::SinkTable::default();
    let piece = SinkPiece { start: b"c".to_vec(), end: None, mark: 41 };
    t.set(SinkEntry {
        dup_id: 4,
        source_region: 8,
        incarnation: 1,
        seed_id: None,
        pieces: vec![piece],
    });
    t
}

#[test]
fn the_sink_state_round_trips_and_older_versions_have_none() {
    let h = CheckpointHeader { sinks: Some(sink_table()), dups: Some(dup_table()), ..header() };
    let file = decode(&encode(&h, &pairs(3, 4))).unwrap();
    assert_eq!(file.header(), &h);
    // Version 4 is read as it was: no sink state; the field there is corruption.
    let v4 = CheckpointHeader { dups: Some(dup_table()), ..header() };
    let file = decode(&with_version(encode(&v4, &pairs(3, 4)), 4)).unwrap();
    assert_eq!(file.header().sinks, None);
    assert_eq!(file.header().dups, Some(dup_table()));
    assert!(decode(&with_version(encode(&h, &pairs(3, 4)), 4)).unwrap_err().is_corruption());
    assert!(check_header_fits(&h).is_ok());
}

#[test]
fn chunks_cover_the_file_in_order() {
    let bytes = encode(&header(), &pairs(100, 10));
    let file = decode(&bytes).unwrap();
    let chunks: Vec<_> = CheckpointChunks::new(&file, 100).collect();
    assert!(chunks.iter().all(|c| c.data.len() <= 100));
    let joined: Vec<u8> = chunks.iter().flat_map(|c| c.data.to_vec()).collect();
    assert_eq!(joined, bytes);
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = decode(&bytes);
        let mut with_magic = MAGIC.to_vec();
        with_magic.extend_from_slice(&bytes);
        let _ = decode(&with_magic);
    }

    #[test]
    fn every_single_bit_flip_is_detected(n in 0usize..6, value_len in 0usize..20) {
        let bytes = encode(&CheckpointHeader { txn: Some(txn_table()), dups: Some(dup_table()), ..header() }, &pairs(n, value_len));
        for bit in 0..bytes.len() * 8 {
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(decode(&damaged).is_err(), "flip of bit {} unnoticed", bit);
        }
    }

    #[test]
    fn truncation_and_extension_are_detected(n in 1usize..20, cut in 1usize..64) {
        let bytes = encode(&header(), &pairs(n, 8));
        let cut = cut.min(bytes.len());
        prop_assert!(decode(&bytes[..bytes.len() - cut]).is_err());
        let mut longer = bytes.clone();
        longer.extend_from_slice(&[0; 7]);
        prop_assert!(decode(&longer).is_err());
    }

    #[test]
    fn round_trips(entries in proptest::collection::btree_map(
        proptest::collection::vec(any::<u8>(), 0..12),
        proptest::collection::vec(any::<u8>(), 0..40),
        0..50,
    )) {
        let mut h = header();
        h.region.start = Vec::new();
        h.region.end = None;
        let data: Vec<_> = entries.into_iter().collect();
        let file = decode(&encode(&h, &data)).unwrap();
        prop_assert_eq!(read_all(&file), data);
    }
}
