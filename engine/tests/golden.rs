//! Golden files: on-disk formats as released, decoded by the current binary.
//!
//! `tests/golden/*-v<N>.bin` are the files a binary of format version N wrote for the
//! scenario in [`write_scenario`]. They are committed and never regenerated once the
//! version is released; the ignored test `regenerate_golden_files` writes the files
//! of the *current* versions (run it once when a format version is bumped:
//! `cargo test -p regionkv-engine --release --test golden -- --ignored`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use regionkv_engine::codec;
use regionkv_engine::dup::{DUP_FORMAT, DupEntry, DupStage, DupTable, RegionDupState};
use regionkv_engine::manifest::{self, CheckpointRef, Manifest};
use regionkv_engine::txn::{Lock, LockOp, TXN_FORMAT, TXN_FORMAT_SI, TxnId, TxnRecord, TxnStatus};
use regionkv_engine::{
    CheckpointFile, Compatibility, Engine, EngineOptions, Epoch, Incarnation, MergeState, Peer,
    PeerId, Region, RegionId, SessionId, SessionUse, SnapshotMeta, StoreId,
};
use regionkv_wal::SimFs;

#[allow(dead_code, reason = "shared with golden_sink.rs")]
mod sink_data;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const INCARNATION: Incarnation = Incarnation(0x0123_4567_89ab_cdef);

fn snapshot_meta() -> SnapshotMeta {
    SnapshotMeta { term: 5, voters: vec![71], learners: vec![72] }
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn region() -> Region {
    Region {
        id: RegionId(7),
        start: b"a".to_vec(),
        end: Some(b"z".to_vec()),
        epoch: Epoch { version: 3, conf_ver: 2 },
        peers: vec![
            Peer { id: PeerId(71), store: StoreId(1) },
            Peer { id: PeerId(72), store: StoreId(2) },
        ],
    }
}

/// The client sessions of the golden checkpoint (since checkpoint version 2).
const SESSIONS: [(SessionId, u64, u64); 2] = [
    (SessionId(0x5E55_1011), 3, 1_700_000_000_000),
    (SessionId(0x0A11_CE00), 12, 1_700_000_000_250),
];

/// A lock entry of a format newer than this binary's: kept byte for byte.
const TOO_NEW_LOCK: &[u8] = b"\x02from a newer binary";

/// Runs the golden scenario on a simulated disk; returns (manifest, checkpoint) bytes.
/// With `sessions`, the round also records [`SESSIONS`] (the checkpoint from version 2
/// on) and transaction state (from version 3 on: two locks, one of them too new, a
/// record and a floor); the manifest is the scenario's without them, since the
/// manifest records the checkpoint's length and neither changed the manifest format.
fn write_scenario(sessions: bool) -> Result<(Vec<u8>, Vec<u8>), Box<dyn std::error::Error>> {
    let fs = Arc::new(SimFs::new());
    let engine = Engine::open(fs.clone(), "/golden", EngineOptions::new(StoreId(1)))?;
    // Since manifest version 5: the store's incarnation and peer floor.
    engine.ensure_incarnation(INCARNATION)?;
    engine.set_peer_floor(PeerId(1004))?;
    engine.insert_region(region())?;
    let mut round = engine.begin_round();
    round.prepare_for_region(RegionId(7), region().epoch)?;
    if sessions {
        for (id, seq, time_ms) in SESSIONS {
            round.session_write(id, seq, time_ms)?;
        }
        round.set_txn_lock(b"banana", Some(Bytes::from(golden_lock().encode())))?;
        round.set_txn_lock(b"fig", Some(Bytes::from_static(TOO_NEW_LOCK)))?;
        let record = golden_record();
        let (primary, id) = (record.primary_key.clone(), record.txn_id.0);
        round.set_txn_record(&primary, id, Some(Bytes::from(record.encode())))?;
        round.raise_txn_floor(0x7A11_0000)?;
    }
    round.put(b"apple", b"red")?;
    round.put(b"banana", b"yellow")?;
    round.put(b"cherry", b"")?;
    round.put(b"date", b"brown")?;
    round.delete(b"date")?;
    round.commit()?;
    if sessions {
        // Since checkpoint version 4: the region's duplication state, one entry of
        // every stage with every field set, and one of a newer format, kept unread.
        engine.set_dup_table(RegionId(7), golden_dups()?)?;
        // Since checkpoint version 5: its sink state (`sink_data`).
        engine.set_sink_table(RegionId(7), sink_data::golden_sinks()?)?;
    }
    // Since checkpoint version 2: a checkpoint made for a Raft snapshot records its
    // term and members.
    let meta = engine.checkpoint_for_snapshot(RegionId(7), 42, snapshot_meta())?;
    let checkpoint = fs.contents(&meta.path).ok_or("no checkpoint")?;
    // Since manifest version 3: a membership change after the checkpoint, recorded with
    // its Raft index (the checkpoint file, format 1, is unchanged by it).
    let mut peers = region().peers;
    peers.push(Peer { id: PeerId(73), store: StoreId(3) });
    engine.change_peers(RegionId(7), peers, 43)?;
    // Since manifest version 4: an empty region split (both images empty as of the
    // split, no checkpoint file), and a merge of region 7 into region 8 prepared.
    let right = Region { id: RegionId(8), start: b"z".to_vec(), end: None, ..region() };
    engine.insert_region(right)?;
    engine.split_at(RegionId(8), &[b"zz".to_vec()], &[RegionId(9)], 10, 5)?;
    let merge = MergeState { target: RegionId(8), prepare_index: 44, prepare_term: 2 };
    engine.prepare_merge(RegionId(7), merge, 44)?;
    engine.set_task_state("duplication", Some(b"stage=1".to_vec()))?;
    engine.close()?;
    let manifest = fs.contents(&manifest::path(Path::new("/golden"))).ok_or("no manifest")?;
    Ok((manifest, checkpoint))
}

/// A duplication entry of a format newer than this binary's: kept byte for byte.
const TOO_NEW_DUP: &[u8] = b"\x02a newer dup entry";

/// The golden duplication entry: every field set (`stage` as given).
fn golden_dup(dup_id: u64, stage: DupStage) -> RegionDupState {
    RegionDupState {
        dup_id,
        incarnation: 3,
        stage,
        min_ckpt_index: 30,
        seed_index: Some(35),
        confirmed: Some(41),
        depends_on: vec![(RegionId(5), 29), (RegionId(6), 17)],
        started_at_index: 30,
        fence: None,
    }
}

/// The golden checkpoint's duplication state (since checkpoint version 4).
fn golden_dups() -> Result<DupTable, Box<dyn std::error::Error>> {
    let mut table = DupTable::default();
    table.set(golden_dup(0xD0_0001, DupStage::Prepare));
    table.set(golden_dup(0xD0_0002, DupStage::Seeding));
    table.set(golden_dup(0xD0_0003, DupStage::Streaming));
    // The newer entry, filed under its id as a newer binary wrote it.
    let mut buf = Vec::new();
    table.encode(&mut buf);
    codec::put_nested(&mut buf, 1, |out| {
        codec::put_u64(out, 1, 0xD0_0004);
        codec::put_field(out, 2, TOO_NEW_DUP);
    });
    DupTable::decode(&buf).map_err(|e| format!("{e:?}").into())
}

/// The golden lock entry: every field set.
fn golden_lock() -> Lock {
    Lock {
        min_commit_ts: None,
        txn_id: TxnId(0x7A11_0001),
        primary_key: Bytes::from_static(b"account/alice"),
        op: LockOp::Put,
        value: Some(Bytes::from_static(b"balance=90")),
        created_at_ms: 1_700_000_000_000,
        ttl_ms: 3_000,
        start_ts: None,
    }
}

/// The golden lock entry of format 2 (snapshot isolation): every field set.
fn golden_lock_v2() -> Lock {
    Lock { start_ts: Some(0x0001_8000_0004_0001), ..golden_lock() }
}

/// The golden record entry of format 2 (snapshot isolation): every field set.
fn golden_record_v2() -> TxnRecord {
    TxnRecord {
        start_ts: Some(0x0001_8000_0004_0001),
        commit_ts: Some(0x0001_8000_0004_0009),
        ..golden_record()
    }
}

/// The golden lock entry of format 2 with the field async commit of snapshot
/// transactions added (cluster version 5): every field set.
fn golden_lock_v2_async() -> Lock {
    Lock { min_commit_ts: Some(0x0001_8000_0004_0007), ..golden_lock_v2() }
}

/// The golden record entry of format 2 with the field async commit added (a staging
/// record of a snapshot transaction): every field set.
fn golden_record_v2_async() -> TxnRecord {
    TxnRecord {
        status: TxnStatus::Staging,
        commit_ts: None,
        min_commit_ts: Some(0x0001_8000_0004_0007),
        ..golden_record_v2()
    }
}

/// The golden record entry: every field set.
fn golden_record() -> TxnRecord {
    TxnRecord {
        min_commit_ts: None,
        txn_id: TxnId(0x7A11_0001),
        status: TxnStatus::Committed,
        primary_key: Bytes::from_static(b"account/alice"),
        participants: vec![
            Bytes::from_static(b"account/alice"),
            Bytes::from_static(b"account/bob"),
        ],
        created_at_ms: 1_700_000_000_000,
        ttl_ms: 3_000,
        last_heartbeat_ms: 1_700_000_001_500,
        coordinator: Some(StoreId(2)),
        decided_at_index: Some(4242),
        start_ts: None,
        commit_ts: None,
    }
}

#[test]
#[ignore = "writes the golden files of the current format versions; run on a version bump"]
fn regenerate_golden_files() -> TestResult {
    for (kind, entry) in [("lock", golden_lock().encode()), ("record", golden_record().encode())] {
        std::fs::write(golden_dir().join(format!("txn-{kind}-v{TXN_FORMAT}.bin")), entry)?;
    }
    let dup = golden_dup(0xD0_0002, DupStage::Seeding).encode();
    std::fs::write(golden_dir().join(format!("dup-entry-v{DUP_FORMAT}.bin")), dup)?;
    for (kind, entry) in
        [("lock", golden_lock_v2().encode()), ("record", golden_record_v2().encode())]
    {
        std::fs::write(golden_dir().join(format!("txn-{kind}-v{TXN_FORMAT_SI}.bin")), entry)?;
    }
    regenerate_golden_async_entries()?;
    let (manifest, _) = write_scenario(false)?;
    let (_, checkpoint) = write_scenario(true)?;
    let dir = golden_dir();
    std::fs::create_dir_all(&dir)?;
    let m = format!("manifest-v{}.bin", manifest::MANIFEST_FORMAT_VERSION);
    let c = format!("checkpoint-v{}.bin", regionkv_engine::checkpoint::CHECKPOINT_FORMAT_VERSION);
    std::fs::write(dir.join(m), manifest)?;
    std::fs::write(dir.join(c), checkpoint)?;
    Ok(())
}

#[test]
fn golden_manifest_v1_decodes_field_by_field() -> TestResult {
    let bytes = std::fs::read(golden_dir().join("manifest-v1.bin"))?;
    let (version, min_reader, compat) = Manifest::check_header(&bytes)?;
    assert_eq!((version, min_reader), (1, 1));
    if manifest::MANIFEST_FORMAT_VERSION == 1 {
        assert_eq!(compat, Compatibility::Compatible);
    } else {
        assert_eq!(
            compat,
            Compatibility::NeedsMigration { from: 1, to: manifest::MANIFEST_FORMAT_VERSION }
        );
    }
    let m = Manifest::decode(&bytes)?;
    assert_eq!(m.format_version, 1);
    assert_eq!(m.store_id, StoreId(1));
    assert!(m.clean_shutdown);
    assert_eq!(m.next_file_id, 2);
    assert_eq!(m.regions.len(), 1);
    assert_eq!(m.regions[0].region, region());
    assert_eq!(
        m.regions[0].checkpoints,
        vec![CheckpointRef {
            file_id: 1,
            applied_index: 42,
            start: b"a".to_vec(),
            end: Some(b"z".to_vec()),
            // Added in version 2: absent from a version-1 record, so unknown.
            file_bytes: None,
        }]
    );
    assert_eq!(m.tasks.len(), 1);
    assert_eq!(m.tasks["duplication"], b"stage=1");
    Ok(())
}

#[test]
fn golden_manifest_v2_decodes_field_by_field() -> TestResult {
    let bytes = std::fs::read(golden_dir().join("manifest-v2.bin"))?;
    let (version, min_reader, compat) = Manifest::check_header(&bytes)?;
    assert_eq!((version, min_reader), (2, 1));
    assert_eq!(
        compat,
        Compatibility::NeedsMigration { from: 2, to: manifest::MANIFEST_FORMAT_VERSION }
    );
    let m = Manifest::decode(&bytes)?;
    assert_eq!(m.format_version, 2);
    // Added in version 3: absent from a version-2 record, so unknown.
    assert_eq!(m.regions[0].meta_index, None);
    assert_eq!(m.store_id, StoreId(1));
    assert!(m.clean_shutdown);
    assert_eq!(m.next_file_id, 2);
    assert_eq!(m.regions.len(), 1);
    assert_eq!(m.regions[0].region, region());
    let golden_checkpoint_len = std::fs::read(golden_dir().join("checkpoint-v1.bin"))?.len();
    assert_eq!(
        m.regions[0].checkpoints,
        vec![CheckpointRef {
            file_id: 1,
            applied_index: 42,
            start: b"a".to_vec(),
            end: Some(b"z".to_vec()),
            file_bytes: Some(golden_checkpoint_len as u64),
        }]
    );
    assert_eq!(m.tasks.len(), 1);
    assert_eq!(m.tasks["duplication"], b"stage=1");
    Ok(())
}

#[test]
fn golden_manifest_v3_decodes_field_by_field() -> TestResult {
    let bytes = std::fs::read(golden_dir().join("manifest-v3.bin"))?;
    let (version, min_reader, compat) = Manifest::check_header(&bytes)?;
    // A version-2 reader would drop meta_index on rewrite, so it must refuse the file.
    assert_eq!((version, min_reader), (3, 3));
    assert_eq!(
        compat,
        Compatibility::NeedsMigration { from: 3, to: manifest::MANIFEST_FORMAT_VERSION }
    );
    let m = Manifest::decode(&bytes)?;
    assert_eq!(m.format_version, 3);
    assert_eq!(m.store_id, StoreId(1));
    assert!(m.clean_shutdown);
    assert_eq!(m.regions.len(), 1);
    let mut expected = region();
    expected.epoch.conf_ver += 1;
    expected.peers.push(Peer { id: PeerId(73), store: StoreId(3) });
    assert_eq!(m.regions[0].region, expected);
    assert_eq!(m.regions[0].meta_index, Some(43));
    let golden_checkpoint_len = std::fs::read(golden_dir().join("checkpoint-v1.bin"))?.len();
    assert_eq!(m.regions[0].checkpoints[0].file_bytes, Some(golden_checkpoint_len as u64));
    assert_eq!(m.tasks["duplication"], b"stage=1");
    Ok(())
}

#[test]
fn golden_manifest_v4_decodes_field_by_field() -> TestResult {
    let bytes = std::fs::read(golden_dir().join("manifest-v4.bin"))?;
    let (version, min_reader, compat) = Manifest::check_header(&bytes)?;
    // A version-3 reader would drop the merge state on rewrite: it must refuse the file.
    assert_eq!((version, min_reader), (4, 4));
    assert_eq!(
        compat,
        Compatibility::NeedsMigration { from: 4, to: manifest::MANIFEST_FORMAT_VERSION }
    );
    let m = Manifest::decode(&bytes)?;
    assert_eq!(m.format_version, 4);
    // Added in version 5: absent from a version-4 record, so unknown.
    assert_eq!((m.incarnation, m.peer_floor), (None, None));
    let ids: Vec<RegionId> = m.regions.iter().map(|e| e.region.id).collect();
    assert_eq!(ids, vec![RegionId(7), RegionId(8), RegionId(9)]);
    let seven = &m.regions[0];
    assert_eq!(seven.region.epoch, Epoch { version: 4, conf_ver: 3 }, "prepare bumps version");
    assert_eq!(seven.meta_index, Some(44));
    assert_eq!(
        seven.merge,
        Some(MergeState { target: RegionId(8), prepare_index: 44, prepare_term: 2 })
    );
    assert_eq!(seven.empty_at, None);
    assert_eq!(seven.checkpoints.len(), 1);
    assert_eq!(seven.checkpoints[0].applied_index, 44, "the prepare is a checkpoint barrier");
    for (entry, index, end) in [(&m.regions[1], 10, Some(b"zz".to_vec())), (&m.regions[2], 5, None)]
    {
        assert!(entry.checkpoints.is_empty(), "an empty image needs no file");
        assert_eq!(entry.empty_at, Some(index));
        assert_eq!(entry.meta_index, Some(index));
        assert_eq!(entry.merge, None);
        assert_eq!(entry.region.end, end);
        assert_eq!(entry.region.epoch.version, region().epoch.version + 1);
    }
    Ok(())
}

#[test]
fn golden_manifest_v5_decodes_field_by_field() -> TestResult {
    let bytes = std::fs::read(golden_dir().join("manifest-v5.bin"))?;
    let (version, min_reader, compat) = Manifest::check_header(&bytes)?;
    // A version-4 reader would drop the incarnation on rewrite: it must refuse the file.
    assert_eq!((version, min_reader), (5, 5));
    assert_eq!(compat, Compatibility::Compatible);
    let m = Manifest::decode(&bytes)?;
    assert_eq!(m.format_version, 5);
    assert_eq!(m.incarnation, Some(INCARNATION));
    assert_eq!(m.peer_floor, Some(PeerId(1004)));
    let ids: Vec<RegionId> = m.regions.iter().map(|e| e.region.id).collect();
    assert_eq!(ids, vec![RegionId(7), RegionId(8), RegionId(9)]);
    assert_eq!(
        m.regions[0].merge,
        Some(MergeState { target: RegionId(8), prepare_index: 44, prepare_term: 2 })
    );
    assert_eq!(m.tasks["duplication"], b"stage=1");
    Ok(())
}

/// A store whose manifest predates incarnations gets one when it opens, once.
#[test]
fn golden_v4_store_gains_an_incarnation_once() -> TestResult {
    use regionkv_wal::fs::{FileSystem, OpenMode};
    let fs = Arc::new(SimFs::new());
    let dir = Path::new("/v4");
    fs.create_dir_all(dir)?;
    let file = fs.open(&dir.join("MANIFEST"), OpenMode::CreateNew)?;
    // The v4 golden manifest lists checkpoint files: keep only its store-level fields.
    let mut m = Manifest::decode(&std::fs::read(golden_dir().join("manifest-v4.bin"))?)?;
    m.regions.clear();
    m.next_file_id = 1;
    let mut bytes = m.encode();
    // Write it back as version 4 (minimum reader 4), as a version-4 binary would.
    bytes[8..12].copy_from_slice(&4u32.to_le_bytes());
    bytes[12..16].copy_from_slice(&4u32.to_le_bytes());
    let crc = crc32fast::hash(&bytes[..24]);
    bytes[24..28].copy_from_slice(&crc.to_le_bytes());
    file.write_at(0, &bytes)?;
    file.sync_data()?;
    fs.sync_dir(dir)?;
    let engine = Engine::open(fs.clone(), dir, EngineOptions::new(StoreId(1)))?;
    assert_eq!(engine.recovery().migrated_to, vec![5]);
    assert_eq!(engine.incarnation(), None, "unknown until the store records one");
    assert_eq!(engine.ensure_incarnation(INCARNATION)?, INCARNATION);
    assert_eq!(engine.ensure_incarnation(Incarnation(99))?, INCARNATION, "written once");
    engine.close()?;
    drop(engine);
    let engine = Engine::open(fs, dir, EngineOptions::new(StoreId(1)))?;
    assert_eq!(engine.incarnation(), Some(INCARNATION), "durable");
    Ok(())
}

/// Fields added in version 4 read as `None` from a version-3 file (invariant 4 in
/// ARCHITECTURE.md).
#[test]
fn golden_manifest_v3_has_no_version_4_fields() -> TestResult {
    let m = Manifest::decode(&std::fs::read(golden_dir().join("manifest-v3.bin"))?)?;
    assert!(m.regions.iter().all(|e| e.merge.is_none() && e.empty_at.is_none()));
    Ok(())
}

#[test]
fn golden_checkpoint_v1_decodes_field_by_field() -> TestResult {
    let bytes = std::fs::read(golden_dir().join("checkpoint-v1.bin"))?;
    let file = CheckpointFile::open(Bytes::from(bytes), Path::new("checkpoint-v1.bin"))?;
    assert_eq!(file.header().region, region());
    assert_eq!(file.header().applied_index, 42);
    // Added in version 2: absent from a version-1 file, so unknown (its region opens
    // with an empty session table).
    assert_eq!(file.header().snapshot, None);
    assert_eq!(file.header().sessions, None);
    let stats = file.stats();
    assert_eq!((stats.entries, stats.blocks), (3, 1));
    assert_eq!(stats.kv_bytes, (5 + 3 + 6 + 6 + 6) as u64);
    let mut pairs = Vec::new();
    file.for_each(|k, v| pairs.push((k.to_vec(), v.to_vec())));
    assert_eq!(
        pairs,
        vec![
            (b"apple".to_vec(), b"red".to_vec()),
            (b"banana".to_vec(), b"yellow".to_vec()),
            (b"cherry".to_vec(), Vec::new()),
        ]
    );
    Ok(())
}

#[test]
fn golden_checkpoint_v2_decodes_field_by_field() -> TestResult {
    let bytes = std::fs::read(golden_dir().join("checkpoint-v2.bin"))?;
    let file = CheckpointFile::open(Bytes::from(bytes), Path::new("checkpoint-v2.bin"))?;
    assert_eq!(file.header().region, region());
    assert_eq!(file.header().applied_index, 42);
    assert_eq!(file.header().snapshot, Some(snapshot_meta()));
    assert_eq!(file.stats().entries, 3);
    let sessions = file.header().sessions.as_ref().ok_or("no session table")?;
    assert_eq!(sessions.now_ms(), 1_700_000_000_250);
    assert_eq!(
        sessions.sessions(),
        vec![
            (SessionId(0x0A11_CE00), SessionUse { last_seq: 12, last_used_ms: 1_700_000_000_250 }),
            (SessionId(0x5E55_1011), SessionUse { last_seq: 3, last_used_ms: 1_700_000_000_000 }),
        ]
    );
    // Added in version 3: absent from a version-2 file (its region opens with no
    // transaction state).
    assert_eq!(file.header().txn, None);
    let mut pairs = Vec::new();
    file.for_each(|k, v| pairs.push((k.to_vec(), v.to_vec())));
    assert_eq!(pairs.len(), 3);
    Ok(())
}

#[test]
fn golden_checkpoint_v3_decodes_field_by_field() -> TestResult {
    let bytes = std::fs::read(golden_dir().join("checkpoint-v3.bin"))?;
    let file = CheckpointFile::open(Bytes::from(bytes), Path::new("checkpoint-v3.bin"))?;
    let header = file.header();
    assert_eq!(header.region, region());
    assert_eq!(header.applied_index, 42);
    assert_eq!(header.snapshot, Some(snapshot_meta()));
    assert_eq!(header.sessions.as_ref().map(regionkv_engine::SessionTable::len), Some(2));
    assert_eq!(file.stats().entries, 3);
    let txn = header.txn.as_ref().ok_or("no transaction state")?;
    assert_eq!(txn.floor, 0x7A11_0000);
    let locks: Vec<(&[u8], &[u8])> = txn.locks.iter().map(|(k, v)| (&k[..], &v[..])).collect();
    let lock = golden_lock().encode();
    assert_eq!(locks, vec![(&b"banana"[..], &lock[..]), (b"fig", TOO_NEW_LOCK)]);
    assert_eq!(Lock::decode(locks[0].1).map_err(|e| format!("{e:?}"))?, golden_lock());
    let records: Vec<_> = txn.records.iter().collect();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].0, &(Bytes::from_static(b"account/alice"), 0x7A11_0001));
    assert_eq!(TxnRecord::decode(records[0].1).map_err(|e| format!("{e:?}"))?, golden_record());
    Ok(())
}

#[test]
fn golden_checkpoint_v4_decodes_field_by_field() -> TestResult {
    let bytes = std::fs::read(golden_dir().join("checkpoint-v4.bin"))?;
    let file = CheckpointFile::open(Bytes::from(bytes), Path::new("checkpoint-v4.bin"))?;
    let header = file.header();
    assert_eq!(header.region, region());
    assert_eq!(header.applied_index, 42);
    assert_eq!(header.snapshot, Some(snapshot_meta()));
    assert_eq!(header.sessions.as_ref().map(regionkv_engine::SessionTable::len), Some(2));
    assert_eq!(file.stats().entries, 3);
    let txn = header.txn.as_ref().ok_or("no transaction state")?;
    assert_eq!(txn.floor, 0x7A11_0000);
    let dups = header.dups.as_ref().ok_or("no duplication state")?;
    assert_eq!(dups.len(), 4);
    for (id, stage) in [
        (0xD0_0001, DupStage::Prepare),
        (0xD0_0002, DupStage::Seeding),
        (0xD0_0003, DupStage::Streaming),
    ] {
        let Some(DupEntry::Known(entry)) = dups.get(id) else { return Err("entry".into()) };
        assert_eq!(entry.dup_id, id);
        assert_eq!(entry.incarnation, 3);
        assert_eq!(entry.stage, stage);
        assert_eq!(entry.min_ckpt_index, 30);
        assert_eq!(entry.seed_index, Some(35));
        assert_eq!(entry.confirmed, Some(41));
        assert_eq!(entry.depends_on, vec![(RegionId(5), 29), (RegionId(6), 17)]);
        assert_eq!(entry.started_at_index, 30);
    }
    assert_eq!(dups.get(0xD0_0004), Some(&DupEntry::Unreadable(Bytes::from_static(TOO_NEW_DUP))));
    // The region's floor: the unreadable entry holds the whole log.
    assert_eq!(dups.floor(), Some(0));
    Ok(())
}

#[test]
fn golden_dup_entry_v1_decodes_field_by_field() -> TestResult {
    let bytes = std::fs::read(golden_dir().join("dup-entry-v1.bin"))?;
    assert_eq!(bytes[0], 1, "the format byte comes first");
    let entry = RegionDupState::decode(&bytes).map_err(|e| format!("{e:?}"))?;
    assert_eq!(entry, golden_dup(0xD0_0002, DupStage::Seeding));
    assert_eq!(entry.floor(), 35, "seeding holds the log after its seed index");
    Ok(())
}

/// Fails when a field of a duplication entry is removed, renumbered or retyped.
#[test]
fn dup_entry_schema_is_stable() -> TestResult {
    let entry = golden_dup(0xD0_0002, DupStage::Seeding);
    let bytes = entry.encode();
    assert_eq!(bytes[0], DUP_FORMAT);
    let fields = codec::fields(&bytes[1..]).map_err(|e| format!("{e:?}"))?;
    let u64s = |tag: u16| -> Vec<u64> {
        fields
            .iter()
            .filter(|f| f.tag == tag)
            .map(|f| u64::from_le_bytes(f.value.try_into().unwrap_or_default()))
            .collect()
    };
    // (tag, field, value): as released in format 1.
    for (tag, name, want) in [
        (1, "dup_id", 0xD0_0002),
        (2, "incarnation", 3),
        (3, "stage", 2),
        (4, "min_ckpt_index", 30),
        (5, "seed_index", 35),
        (6, "confirmed", 41),
        (8, "started_at_index", 30),
    ] {
        assert_eq!(u64s(tag), vec![want], "{name} is at tag {tag}");
    }
    let deps: Vec<Vec<u64>> = fields
        .iter()
        .filter(|f| f.tag == 7)
        .map(|f| {
            let inner = codec::fields(f.value).unwrap_or_default();
            inner
                .iter()
                .map(|g| u64::from_le_bytes(g.value.try_into().unwrap_or_default()))
                .collect()
        })
        .collect();
    assert_eq!(deps, vec![vec![5, 29], vec![6, 17]], "depends_on is at tag 7: 1 region, 2 index");
    assert!(fields.iter().all(|f| (1..=8).contains(&f.tag)), "no other tag");
    let stages = [DupStage::Unspecified, DupStage::Prepare, DupStage::Seeding, DupStage::Streaming];
    assert_eq!(stages.map(DupStage::code), [0, 1, 2, 3]);
    assert_eq!(bytes, std::fs::read(golden_dir().join("dup-entry-v1.bin"))?);
    Ok(())
}

/// A store written by version 1 opens with the current binary (migrating if needed)
/// and holds exactly the golden data.
#[test]
fn golden_v1_store_opens() -> TestResult {
    let fs = Arc::new(SimFs::new());
    let dir = Path::new("/old");
    let engine = Engine::open(fs.clone(), dir, EngineOptions::new(StoreId(1)))?;
    engine.close()?;
    drop(engine);
    // Lay the golden files down as a version-1 binary left them.
    for (name, golden) in
        [("MANIFEST", "manifest-v1.bin"), ("0000000000000001.ckpt", "checkpoint-v1.bin")]
    {
        use regionkv_wal::fs::{FileSystem, OpenMode};
        let path = dir.join(name);
        if fs.contents(&path).is_some() {
            fs.remove_file(&path)?;
        }
        let file = fs.open(&path, OpenMode::CreateNew)?;
        file.write_at(0, &std::fs::read(golden_dir().join(golden))?)?;
        file.sync_data()?;
        fs.sync_dir(dir)?;
    }
    let engine = Engine::open(fs.clone(), dir, EngineOptions::new(StoreId(1)))?;
    assert!(engine.recovery().clean_shutdown);
    let expected: Vec<u32> = (2..=manifest::MANIFEST_FORMAT_VERSION).collect();
    assert_eq!(engine.recovery().migrated_to, expected);
    assert_eq!(engine.regions(), vec![region()]);
    let snap = engine.read_view();
    let all = snap.scan(b"", None, 100);
    let keys: Vec<&[u8]> = all.iter().map(|(k, _)| &k[..]).collect();
    assert_eq!(keys, vec![&b"apple"[..], b"banana", b"cherry"]);
    assert_eq!(engine.task_state("duplication").as_deref(), Some(&b"stage=1"[..]));
    assert_eq!(engine.sessions(RegionId(7)).map(|t| t.len()), Some(0));
    // A checkpoint of version 1 holds no transaction state: an empty table.
    assert_eq!(engine.txn_table(RegionId(7)), Some(regionkv_engine::txn::TxnTable::default()));
    assert!(!engine.has_txn_locks());
    // The migration recorded the checkpoint's length, and the store is now current.
    engine.close()?;
    let m = Manifest::decode(&fs.contents(&manifest::path(dir)).ok_or("no manifest")?)?;
    assert_eq!(m.format_version, manifest::MANIFEST_FORMAT_VERSION);
    let golden_checkpoint_len = std::fs::read(golden_dir().join("checkpoint-v1.bin"))?.len();
    assert_eq!(m.regions[0].checkpoints[0].file_bytes, Some(golden_checkpoint_len as u64));
    Ok(())
}

/// The scenario still writes what the current golden files hold: a format change
/// that forgets to bump the version fails here.
#[test]
fn current_writer_matches_current_golden_files() -> TestResult {
    let (manifest, _) = write_scenario(false)?;
    let (_, checkpoint) = write_scenario(true)?;
    let m = format!("manifest-v{}.bin", manifest::MANIFEST_FORMAT_VERSION);
    let c = format!("checkpoint-v{}.bin", regionkv_engine::checkpoint::CHECKPOINT_FORMAT_VERSION);
    assert_eq!(manifest, std::fs::read(golden_dir().join(m))?);
    assert_eq!(checkpoint, std::fs::read(golden_dir().join(c))?);
    Ok(())
}

#[test]
fn golden_txn_lock_v1_decodes_field_by_field() -> TestResult {
    let bytes = std::fs::read(golden_dir().join("txn-lock-v1.bin"))?;
    assert_eq!(bytes[0], 1, "the format byte comes first");
    let lock = Lock::decode(&bytes).map_err(|e| format!("{e:?}"))?;
    assert_eq!(lock.txn_id, TxnId(0x7A11_0001));
    assert_eq!(lock.primary_key, &b"account/alice"[..]);
    assert_eq!(lock.op, LockOp::Put);
    assert_eq!(lock.value.as_deref(), Some(&b"balance=90"[..]));
    assert_eq!(lock.created_at_ms, 1_700_000_000_000);
    assert_eq!(lock.ttl_ms, 3_000);
    assert_eq!(lock.expires_at_ms(), 1_700_000_003_000);
    // The upgrade path: a level-1 lock read by a binary of format 2.
    assert_eq!(lock.start_ts, None);
    Ok(())
}

#[test]
fn golden_txn_lock_v2_decodes_field_by_field() -> TestResult {
    let bytes = std::fs::read(golden_dir().join("txn-lock-v2.bin"))?;
    assert_eq!(bytes[0], 2, "the format byte comes first");
    let lock = Lock::decode(&bytes).map_err(|e| format!("{e:?}"))?;
    assert_eq!(lock.txn_id, TxnId(0x7A11_0001));
    assert_eq!(lock.value.as_deref(), Some(&b"balance=90"[..]));
    assert_eq!(lock.start_ts, Some(0x0001_8000_0004_0001));
    assert_eq!(lock, golden_lock_v2());
    Ok(())
}

#[test]
#[ignore = "writes the golden entries of format 2 with the async-commit field; run once"]
fn regenerate_golden_async_entries() -> TestResult {
    for (kind, entry) in
        [("lock", golden_lock_v2_async().encode()), ("record", golden_record_v2_async().encode())]
    {
        std::fs::write(golden_dir().join(format!("txn-{kind}-v2-async.bin")), entry)?;
    }
    Ok(())
}

/// A lock and a staging record as async commit of snapshot transactions writes them
/// (the minimum commit timestamp: lock tag 8, record tag 12), still format 2: a
/// format-2 binary from before skips the tag (and waits on the lock rather than
/// reading past it).
#[test]
fn golden_txn_entries_v2_with_async_commit_decode_field_by_field() -> TestResult {
    let bytes = std::fs::read(golden_dir().join("txn-lock-v2-async.bin"))?;
    assert_eq!(bytes[0], 2, "the format byte comes first, unchanged");
    let lock = Lock::decode(&bytes).map_err(|e| format!("{e:?}"))?;
    assert_eq!(lock.min_commit_ts, Some(0x0001_8000_0004_0007));
    assert_eq!(lock.start_ts, Some(0x0001_8000_0004_0001));
    assert_eq!(lock, golden_lock_v2_async());
    assert_eq!(lock.encode(), bytes);
    let bytes = std::fs::read(golden_dir().join("txn-record-v2-async.bin"))?;
    assert_eq!(bytes[0], 2);
    let record = TxnRecord::decode(&bytes).map_err(|e| format!("{e:?}"))?;
    assert_eq!(record.status, TxnStatus::Staging);
    assert_eq!(record.min_commit_ts, Some(0x0001_8000_0004_0007));
    assert_eq!(record.commit_ts, None);
    assert_eq!(record, golden_record_v2_async());
    assert_eq!(record.encode(), bytes);
    // The entries of before still decode with the field absent: unknown, never 0.
    let old = Lock::decode(&std::fs::read(golden_dir().join("txn-lock-v2.bin"))?)
        .map_err(|e| format!("{e:?}"))?;
    assert_eq!(old.min_commit_ts, None);
    let old = TxnRecord::decode(&std::fs::read(golden_dir().join("txn-record-v2.bin"))?)
        .map_err(|e| format!("{e:?}"))?;
    assert_eq!(old.min_commit_ts, None);
    Ok(())
}

#[test]
fn golden_txn_record_v2_decodes_field_by_field() -> TestResult {
    let bytes = std::fs::read(golden_dir().join("txn-record-v2.bin"))?;
    assert_eq!(bytes[0], 2, "the format byte comes first");
    let record = TxnRecord::decode(&bytes).map_err(|e| format!("{e:?}"))?;
    assert_eq!(record.status, TxnStatus::Committed);
    assert_eq!(record.decided_at_index, Some(4242));
    assert_eq!(record.start_ts, Some(0x0001_8000_0004_0001));
    assert_eq!(record.commit_ts, Some(0x0001_8000_0004_0009));
    assert_eq!(record, golden_record_v2());
    Ok(())
}

#[test]
fn golden_txn_record_v1_decodes_field_by_field() -> TestResult {
    let bytes = std::fs::read(golden_dir().join("txn-record-v1.bin"))?;
    assert_eq!(bytes[0], 1, "the format byte comes first");
    let record = TxnRecord::decode(&bytes).map_err(|e| format!("{e:?}"))?;
    assert_eq!(record.txn_id, TxnId(0x7A11_0001));
    assert_eq!(record.status, TxnStatus::Committed);
    assert_eq!(record.primary_key, &b"account/alice"[..]);
    assert_eq!(record.participants, vec![&b"account/alice"[..], &b"account/bob"[..]]);
    assert_eq!(record.created_at_ms, 1_700_000_000_000);
    assert_eq!(record.ttl_ms, 3_000);
    assert_eq!(record.last_heartbeat_ms, 1_700_000_001_500);
    assert_eq!(record.coordinator, Some(StoreId(2)));
    assert_eq!(record.decided_at_index, Some(4242));
    // The upgrade path: a level-1 record read by a binary of format 2.
    assert_eq!((record.start_ts, record.commit_ts), (None, None));
    Ok(())
}

/// How a field's value is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Eight bytes, little-endian.
    U64,
    /// The bytes as they are.
    Bytes,
    /// [`Kind::Bytes`], once per item.
    RepeatedBytes,
}

/// The schema of format 1, as released: (tag, field, kind). A field is never removed,
/// renumbered or retyped; a new one takes a new tag (and is optional).
const LOCK_SCHEMA_V1: [(u16, &str, Kind); 6] = [
    (1, "txn_id", Kind::U64),
    (2, "primary_key", Kind::Bytes),
    (3, "op", Kind::U64),
    (4, "value", Kind::Bytes),
    (5, "created_at_ms", Kind::U64),
    (6, "ttl_ms", Kind::U64),
];

const RECORD_SCHEMA_V1: [(u16, &str, Kind); 9] = [
    (1, "txn_id", Kind::U64),
    (2, "status", Kind::U64),
    (3, "primary_key", Kind::Bytes),
    (4, "participants", Kind::RepeatedBytes),
    (5, "created_at_ms", Kind::U64),
    (6, "ttl_ms", Kind::U64),
    (7, "last_heartbeat_ms", Kind::U64),
    (8, "coordinator", Kind::U64),
    (9, "decided_at_index", Kind::U64),
];

/// The fields format 2 adds (all optional), as released.
const LOCK_SCHEMA_V2: [(u16, &str, Kind); 1] = [(7, "start_ts", Kind::U64)];
const RECORD_SCHEMA_V2: [(u16, &str, Kind); 2] =
    [(10, "start_ts", Kind::U64), (11, "commit_ts", Kind::U64)];

/// The field async commit of snapshot transactions adds to format 2 (optional), as
/// released.
const LOCK_SCHEMA_V2_ASYNC: [(u16, &str, Kind); 1] = [(8, "min_commit_ts", Kind::U64)];
const RECORD_SCHEMA_V2_ASYNC: [(u16, &str, Kind); 1] = [(12, "min_commit_ts", Kind::U64)];

/// Checks that `entry` (a full entry of this binary) holds, under each schema tag,
/// exactly the field the schema names, laid out as its kind says, and no other tag.
fn check_schema(
    entry: &[u8],
    schema: &[(u16, &str, Kind)],
    expected: &dyn Fn(&str) -> Vec<Vec<u8>>,
) -> TestResult {
    let format = if schema.iter().any(|(_, name, _)| name.ends_with("_ts")) {
        TXN_FORMAT_SI
    } else {
        TXN_FORMAT
    };
    assert_eq!(entry[0], format, "a format-2 field makes a format-2 entry");
    let fields = codec::fields(&entry[1..]).map_err(|e| format!("{e:?}"))?;
    for f in &fields {
        assert!(
            schema.iter().any(|(tag, _, _)| *tag == f.tag),
            "tag {} is not in the schema",
            f.tag
        );
    }
    for &(tag, name, kind) in schema {
        let found: Vec<Vec<u8>> =
            fields.iter().filter(|f| f.tag == tag).map(|f| f.value.to_vec()).collect();
        let want = expected(name);
        assert!(!want.is_empty(), "the full entry sets {name}");
        if kind != Kind::RepeatedBytes {
            assert_eq!(found.len(), 1, "{name} (tag {tag}) appears once");
        }
        if kind == Kind::U64 {
            assert!(found.iter().all(|v| v.len() == 8), "{name} (tag {tag}) is a u64");
        }
        assert_eq!(found, want, "{name} is at tag {tag}");
    }
    Ok(())
}

/// A lock's field `name` as a full entry encodes it (the values under its tag).
fn lock_field(lock: &Lock, name: &str) -> Vec<Vec<u8>> {
    let u64s = |v: Option<u64>| v.iter().map(|t| t.to_le_bytes().to_vec()).collect();
    match name {
        "txn_id" => vec![lock.txn_id.0.to_le_bytes().to_vec()],
        "primary_key" => vec![lock.primary_key.to_vec()],
        "op" => vec![lock.op.code().to_le_bytes().to_vec()],
        "value" => lock.value.iter().map(|v| v.to_vec()).collect(),
        "created_at_ms" => vec![lock.created_at_ms.to_le_bytes().to_vec()],
        "ttl_ms" => vec![lock.ttl_ms.to_le_bytes().to_vec()],
        "start_ts" => u64s(lock.start_ts),
        "min_commit_ts" => u64s(lock.min_commit_ts),
        other => panic!("no field {other}"),
    }
}

/// A record's field `name` as a full entry encodes it (the values under its tag).
fn record_field(record: &TxnRecord, name: &str) -> Vec<Vec<u8>> {
    let u64s = |v: Option<u64>| v.iter().map(|t| t.to_le_bytes().to_vec()).collect();
    match name {
        "txn_id" => vec![record.txn_id.0.to_le_bytes().to_vec()],
        "status" => vec![record.status.code().to_le_bytes().to_vec()],
        "primary_key" => vec![record.primary_key.to_vec()],
        "participants" => record.participants.iter().map(|k| k.to_vec()).collect(),
        "created_at_ms" => vec![record.created_at_ms.to_le_bytes().to_vec()],
        "ttl_ms" => vec![record.ttl_ms.to_le_bytes().to_vec()],
        "last_heartbeat_ms" => vec![record.last_heartbeat_ms.to_le_bytes().to_vec()],
        "coordinator" => u64s(record.coordinator.map(|s| s.0)),
        "decided_at_index" => u64s(record.decided_at_index),
        "start_ts" => u64s(record.start_ts),
        "commit_ts" => u64s(record.commit_ts),
        "min_commit_ts" => u64s(record.min_commit_ts),
        other => panic!("no field {other}"),
    }
}

/// Fails when a field of a lock or record is removed, renumbered or retyped: the
/// encoding of a full entry is checked against the released schema.
#[test]
fn txn_entry_schemas_are_stable() -> TestResult {
    let lock = golden_lock();
    check_schema(&lock.encode(), &LOCK_SCHEMA_V1, &|name| lock_field(&lock, name))?;
    let record = golden_record();
    check_schema(&record.encode(), &RECORD_SCHEMA_V1, &|name| record_field(&record, name))?;
    // The codes of the enums, as released (0 is Unspecified in both).
    let codes: Vec<u64> =
        [LockOp::Unspecified, LockOp::Put, LockOp::Delete].iter().map(LockOp::code).collect();
    assert_eq!(codes, vec![0, 1, 2]);
    let statuses = [
        TxnStatus::Unspecified,
        TxnStatus::Pending,
        TxnStatus::Committed,
        TxnStatus::Aborted,
        TxnStatus::Staging,
    ];
    assert_eq!(statuses.map(TxnStatus::code), [0, 1, 2, 3, 4]);
    // The golden files are what this binary writes.
    assert_eq!(lock.encode(), std::fs::read(golden_dir().join("txn-lock-v1.bin"))?);
    assert_eq!(record.encode(), std::fs::read(golden_dir().join("txn-record-v1.bin"))?);
    // Format 2: the format-1 fields where they were, plus the new ones.
    let lock = golden_lock_v2();
    let schema: Vec<_> = LOCK_SCHEMA_V1.iter().chain(&LOCK_SCHEMA_V2).copied().collect();
    check_schema(&lock.encode(), &schema, &|name| lock_field(&lock, name))?;
    let record = golden_record_v2();
    let schema: Vec<_> = RECORD_SCHEMA_V1.iter().chain(&RECORD_SCHEMA_V2).copied().collect();
    check_schema(&record.encode(), &schema, &|name| record_field(&record, name))?;
    assert_eq!(lock.encode(), std::fs::read(golden_dir().join("txn-lock-v2.bin"))?);
    assert_eq!(record.encode(), std::fs::read(golden_dir().join("txn-record-v2.bin"))?);
    Ok(())
}

/// Format 2 with async commit's field: everything before where it was, plus it.
#[test]
fn txn_entry_schemas_with_async_commit_are_stable() -> TestResult {
    let lock = golden_lock_v2_async();
    let schema: Vec<_> = LOCK_SCHEMA_V1
        .iter()
        .chain(&LOCK_SCHEMA_V2)
        .chain(&LOCK_SCHEMA_V2_ASYNC)
        .copied()
        .collect();
    check_schema(&lock.encode(), &schema, &|name| lock_field(&lock, name))?;
    let record = golden_record_v2_async();
    let schema: Vec<_> = RECORD_SCHEMA_V1
        .iter()
        .chain(&RECORD_SCHEMA_V2[..1])
        .chain(&RECORD_SCHEMA_V2_ASYNC)
        .copied()
        .collect();
    check_schema(&record.encode(), &schema, &|name| record_field(&record, name))?;
    Ok(())
}
