//! Splits and merges at a Raft index are checkpoint barriers: after a crash at any
//! file-system operation, the store holds either nothing of the change or all of it,
//! with every resulting region checkpointed at its index.

use std::path::Path;
use std::sync::Arc;

use regionkv_engine::{Engine, EngineOptions, Region, RegionId, StoreId};
use regionkv_wal::{CrashMode, SimFs};

fn open(fs: &SimFs) -> Engine {
    Engine::open(Arc::new(fs.clone()), "/e", EngineOptions::new(StoreId(1))).unwrap()
}

fn put_all(engine: &Engine, keys: &[&str], value: &str) {
    for region in engine.regions() {
        let mut round = engine.begin_round();
        round.prepare_for_region(region.id, region.epoch).unwrap();
        for k in keys.iter().filter(|k| region.contains(k.as_bytes())) {
            round.put(k.as_bytes(), value.as_bytes()).unwrap();
        }
        round.commit().unwrap();
    }
}

fn checkpoint_index(engine: &Engine, id: RegionId) -> Option<u64> {
    engine.latest_checkpoint(id).unwrap().map(|f| f.header().applied_index)
}

const KEYS: [&str; 6] = ["a", "f", "k", "n", "r", "y"];

/// A store with region 1 checkpointed at index 10 holding "old", then "new" written
/// after the checkpoint (durable only through a Raft log, in a real store).
fn setup() -> SimFs {
    let fs = SimFs::new();
    let engine = open(&fs);
    engine.insert_region(Region::whole(RegionId(1))).unwrap();
    put_all(&engine, &KEYS, "old");
    engine.checkpoint(RegionId(1), 10).unwrap();
    put_all(&engine, &KEYS, "new");
    drop(engine);
    fs
}

#[test]
fn split_at_is_all_or_nothing_at_every_crash_point() {
    let total = {
        let fs = setup();
        let before = fs.op_count();
        let engine = open(&fs);
        put_all(&engine, &KEYS, "new");
        engine.split_at(RegionId(1), &[b"m".to_vec()], &[RegionId(2)], 20, 5).unwrap();
        fs.op_count() - before
    };
    assert!(total > 5);
    for point in 0..=total {
        for mode in [CrashMode::Lost, CrashMode::Persisted] {
            let fs = setup();
            let engine = open(&fs);
            put_all(&engine, &KEYS, "new");
            fs.halt_after(point);
            let _ = engine.split_at(RegionId(1), &[b"m".to_vec()], &[RegionId(2)], 20, 5);
            drop(engine);
            let disk = fs.crash(mode);
            let engine = open(&disk);
            let regions = engine.regions();
            let snap = engine.read_view();
            let ctx = format!("crash after op {point}/{total} ({mode:?})");
            match regions.len() {
                1 => {
                    // Nothing of the split: the old checkpoint, as before.
                    assert_eq!(checkpoint_index(&engine, RegionId(1)), Some(10), "{ctx}");
                    assert_eq!(engine.meta_index(RegionId(1)), None, "{ctx}");
                    for k in KEYS {
                        assert_eq!(
                            snap.get(k.as_bytes()).as_deref(),
                            Some(&b"old"[..]),
                            "{ctx}: {k}"
                        );
                    }
                }
                2 => {
                    // All of it: both parts checkpointed at their index, with the data as
                    // of the split (including what the old checkpoint did not hold).
                    assert_eq!(checkpoint_index(&engine, RegionId(1)), Some(20), "{ctx}");
                    assert_eq!(checkpoint_index(&engine, RegionId(2)), Some(5), "{ctx}");
                    assert_eq!(
                        (engine.meta_index(RegionId(1)), engine.meta_index(RegionId(2))),
                        (Some(20), Some(5)),
                        "{ctx}"
                    );
                    assert_eq!(regions[1].start, b"m", "{ctx}");
                    for k in KEYS {
                        assert_eq!(
                            snap.get(k.as_bytes()).as_deref(),
                            Some(&b"new"[..]),
                            "{ctx}: {k}"
                        );
                    }
                }
                n => panic!("{ctx}: {n} regions"),
            }
            assert!(no_temp_files(&disk), "{ctx}: leftover temporary files");
        }
    }
}

/// After a reopen, no temporary file of an interrupted write is left.
fn no_temp_files(disk: &SimFs) -> bool {
    use regionkv_wal::fs::FileSystem;
    disk.list(Path::new("/e")).unwrap().iter().all(|name| !name.contains(".tmp"))
}

#[test]
fn merge_at_is_all_or_nothing_at_every_crash_point() {
    let prepare = || {
        let fs = setup();
        let engine = open(&fs);
        engine.split_at(RegionId(1), &[b"m".to_vec()], &[RegionId(2)], 20, 5).unwrap();
        put_all(&engine, &KEYS, "merged-later");
        (fs, engine)
    };
    let total = {
        let (fs, engine) = prepare();
        let before = fs.op_count();
        engine.merge_at(RegionId(2), RegionId(1), 30).unwrap();
        fs.op_count() - before
    };
    for point in 0..=total {
        for mode in [CrashMode::Lost, CrashMode::Persisted] {
            let (fs, engine) = prepare();
            fs.halt_after(point);
            let _ = engine.merge_at(RegionId(2), RegionId(1), 30);
            drop(engine);
            let disk = fs.crash(mode);
            let engine = open(&disk);
            let ctx = format!("crash after op {point}/{total} ({mode:?})");
            assert!(no_temp_files(&disk), "{ctx}: leftover temporary files");
            let snap = engine.read_view();
            match engine.regions().len() {
                2 => {
                    // Nothing of the merge: both halves as the split checkpointed them
                    // (the reopened store held "old": "new" was never checkpointed).
                    assert_eq!(checkpoint_index(&engine, RegionId(1)), Some(20), "{ctx}");
                    assert_eq!(checkpoint_index(&engine, RegionId(2)), Some(5), "{ctx}");
                    for k in KEYS {
                        assert_eq!(
                            snap.get(k.as_bytes()).as_deref(),
                            Some(&b"old"[..]),
                            "{ctx}: {k}"
                        );
                    }
                }
                1 => {
                    assert_eq!(checkpoint_index(&engine, RegionId(1)), Some(30), "{ctx}");
                    assert_eq!(engine.meta_index(RegionId(1)), Some(30), "{ctx}");
                    assert_eq!(
                        engine.regions()[0],
                        Region { epoch: engine.regions()[0].epoch, ..Region::whole(RegionId(1)) },
                        "{ctx}"
                    );
                    for k in KEYS {
                        assert_eq!(
                            snap.get(k.as_bytes()).as_deref(),
                            Some(&b"merged-later"[..]),
                            "{ctx}: {k}"
                        );
                    }
                }
                n => panic!("{ctx}: {n} regions"),
            }
        }
    }
}

/// A split of a region that holds no keys writes no checkpoint file: every part's
/// image is empty as of its index, and a restart knows where each log resumes.
#[test]
fn empty_parts_need_no_file_and_keep_their_index() {
    let fs = SimFs::new();
    let engine = open(&fs);
    engine.insert_region(Region::whole(RegionId(1))).unwrap();
    put_all(&engine, &["a"], "v");
    engine
        .split_at(RegionId(1), &[b"m".to_vec(), b"t".to_vec()], &[RegionId(2), RegionId(3)], 9, 5)
        .unwrap();
    drop(engine);
    let engine = open(&fs);
    assert_eq!(checkpoint_index(&engine, RegionId(1)), Some(9), "region 1 holds a key");
    assert_eq!(engine.image_index(RegionId(1)).unwrap(), Some(9));
    assert_eq!(checkpoint_index(&engine, RegionId(2)), None);
    assert_eq!(engine.image_index(RegionId(2)).unwrap(), Some(5));
    assert_eq!(engine.image_index(RegionId(3)).unwrap(), Some(5));
    assert_eq!(engine.read_view().scan(b"", None, 10).len(), 1);
    // A later checkpoint replaces the empty image.
    put_all(&engine, &["n"], "v");
    engine.checkpoint(RegionId(2), 7).unwrap();
    drop(engine);
    let engine = open(&fs);
    assert_eq!(engine.image_index(RegionId(2)).unwrap(), Some(7));
    assert_eq!(engine.read_view().get(b"n").as_deref(), Some(&b"v"[..]));
}

/// A prepared merge is durable region state: it survives a restart, bumps the
/// version, and a rollback clears it with another bump.
#[test]
fn merge_state_survives_restart_until_rolled_back() {
    use regionkv_engine::MergeState;
    let fs = setup();
    let engine = open(&fs);
    engine.split_at(RegionId(1), &[b"m".to_vec()], &[RegionId(2)], 20, 5).unwrap();
    let before = engine.region(RegionId(2)).unwrap().epoch;
    let merge = MergeState { target: RegionId(1), prepare_index: 8, prepare_term: 6 };
    let prepared = engine.prepare_merge(RegionId(2), merge, 8).unwrap();
    assert_eq!(prepared.epoch.version, before.version + 1);
    drop(engine);
    let engine = open(&fs);
    assert_eq!(engine.merge_state(RegionId(2)), Some(merge));
    assert_eq!(engine.meta_index(RegionId(2)), Some(8));
    assert_eq!(engine.merge_state(RegionId(1)), None);
    let rolled = engine.rollback_merge(RegionId(2), 9).unwrap();
    assert_eq!(rolled.epoch.version, before.version + 2);
    drop(engine);
    let engine = open(&fs);
    assert_eq!(engine.merge_state(RegionId(2)), None);
    assert_eq!(engine.region(RegionId(2)).unwrap().epoch.version, before.version + 2);
}
