//! Crash safety of checkpoints and manifest updates on the simulated disk.
//!
//! Each scenario runs once to count its file-system operations, then again for every
//! prefix of them: the machine halts after operation k, the power is cut in each
//! crash mode (unsynced data lost, persisted, torn at a sector, or with a bit
//! flipped), and the engine reopens. It must always open, hold exactly the old or
//! exactly the new state (never a torn checkpoint, never a mix), and leave no
//! temporary or unreferenced file behind.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use regionkv_engine::manifest::{self, Manifest};
use regionkv_engine::{Engine, EngineOptions, Region, RegionId, StoreId};
use regionkv_wal::fs::FileSystem;
use regionkv_wal::{CrashMode, SimFs};

type TestResult = Result<(), Box<dyn std::error::Error>>;
type Data = BTreeMap<Vec<u8>, Vec<u8>>;

const DIR: &str = "/store";

fn options() -> EngineOptions {
    // Small write buffer: each closed block of a checkpoint is a write, a crash point.
    EngineOptions::new(StoreId(1)).checkpoint_write_buffer_bytes(1024)
}

fn write(engine: &Engine, data: &Data, deleted: &[Vec<u8>]) -> TestResult {
    let region = engine.region(RegionId(1)).ok_or("no region 1")?;
    let mut round = engine.begin_round();
    round.prepare_for_region(region.id, region.epoch)?;
    for (k, v) in data {
        round.put(k, v)?;
    }
    for k in deleted {
        round.delete(k)?;
    }
    round.commit()?;
    Ok(())
}

/// 1200 pairs of about 200 bytes: a checkpoint of four 64 KiB blocks, each its own
/// write (the write buffer is smaller than a block), so that the crash points fall
/// between writes, early writebacks and evictions of the checkpoint writer.
fn old_data() -> Data {
    (0..1200u32).map(|i| (format!("key{i:03}").into_bytes(), vec![b'o'; 200])).collect()
}

fn new_data() -> (Data, Vec<Vec<u8>>) {
    let mut data = old_data();
    let deleted: Vec<Vec<u8>> =
        (0..60u32).step_by(3).map(|i| format!("key{i:03}").into_bytes()).collect();
    for k in &deleted {
        data.remove(k);
    }
    for i in (1..60u32).step_by(3) {
        data.insert(format!("key{i:03}").into_bytes(), vec![b'n'; 150]);
    }
    for i in 60..80u32 {
        data.insert(format!("key{i:03}").into_bytes(), vec![b'n'; 100]);
    }
    (data, deleted)
}

/// An engine with region 1 checkpointed at index 10 holding `old_data`, and the
/// newer state applied in memory only.
fn setup() -> Result<(Arc<SimFs>, Engine), Box<dyn std::error::Error>> {
    let fs = Arc::new(SimFs::new());
    let engine = Engine::open(fs.clone(), DIR, options())?;
    engine.insert_region(Region::whole(RegionId(1)))?;
    write(&engine, &old_data(), &[])?;
    engine.checkpoint(RegionId(1), 10)?;
    let (new, deleted) = new_data();
    write(&engine, &new, &deleted)?;
    Ok((fs, engine))
}

fn modes(k: u64) -> Vec<CrashMode> {
    let mut modes = vec![CrashMode::Lost, CrashMode::Persisted];
    for seed in 0..3 {
        modes.push(CrashMode::Torn { seed: k * 7 + seed });
    }
    modes.push(CrashMode::BitFlip { seed: k });
    modes
}

fn has_extension(name: &str, ext: &str) -> bool {
    Path::new(name).extension().is_some_and(|e| e == ext)
}

fn contents(engine: &Engine) -> Data {
    engine
        .read_view()
        .scan(b"", None, usize::MAX)
        .into_iter()
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect()
}

/// Opens the crashed disk and checks what the scenario allows; returns the manifest.
fn reopen_and_check(fs: &Arc<SimFs>) -> Result<(Engine, Manifest), Box<dyn std::error::Error>> {
    let engine = Engine::open(fs.clone(), DIR, options())?;
    assert!(!engine.recovery().clean_shutdown);
    let names = fs.list(Path::new(DIR))?;
    assert!(!names.iter().any(|n| has_extension(n, "tmp")), "temporary files left: {names:?}");
    let m = Manifest::decode(&fs.contents(&manifest::path(Path::new(DIR))).ok_or("no manifest")?)?;
    let referenced: Vec<String> = m
        .regions
        .iter()
        .flat_map(|e| e.checkpoints.iter().map(|c| format!("{:016x}.ckpt", c.file_id)))
        .collect();
    let mut files: Vec<&String> = names.iter().filter(|n| has_extension(n, "ckpt")).collect();
    files.sort();
    files.dedup();
    let mut want: Vec<&String> = referenced.iter().collect();
    want.sort();
    want.dedup();
    assert_eq!(files, want, "exactly the referenced checkpoint files remain");
    // A second open finds nothing left to clean up.
    drop(engine);
    let engine = Engine::open(fs.clone(), DIR, options())?;
    assert!(engine.recovery().removed_files.is_empty());
    Ok((engine, m))
}

/// Runs `step` on a fresh setup, halting the machine after `k` operations of it.
fn for_every_crash_point(
    step: impl Fn(&Engine) -> Result<(), regionkv_engine::Error>,
    check: impl Fn(&Engine, &Manifest, u64, CrashMode) -> TestResult,
) -> TestResult {
    let (fs, engine) = setup()?;
    let before = fs.op_count();
    step(&engine)?;
    let ops = fs.op_count() - before;
    assert!(ops >= 8, "the step does real I/O: {ops} operations");
    for k in 0..=ops {
        let (fs, engine) = setup()?;
        fs.halt_after(k);
        let result = step(&engine);
        // Halting in the final removal of replaced files is not an error: they are
        // garbage that the next open removes.
        if let Err(e) = &result {
            assert!(e.is_fatal(), "a failed durable write poisons the engine: {e:?}");
        }
        for mode in modes(k) {
            let image = Arc::new(fs.image_after_crash(mode));
            let (engine, m) = reopen_and_check(&image)
                .map_err(|e| format!("crash after op {k}/{ops} in {mode:?}: {e}"))?;
            check(&engine, &m, k, mode)
                .map_err(|e| format!("crash after op {k}/{ops} in {mode:?}: {e}"))?;
        }
    }
    Ok(())
}

#[test]
fn checkpoint_and_manifest_update_are_all_or_nothing_at_every_crash_point() -> TestResult {
    let old = old_data();
    let (new, _) = new_data();
    let seen = std::cell::Cell::new([false; 2]);
    for_every_crash_point(
        |engine| engine.checkpoint(RegionId(1), 20).map(drop),
        |engine, m, _, _| {
            let parts = &m.regions[0].checkpoints;
            assert_eq!(parts.len(), 1);
            let data = contents(engine);
            match parts[0].applied_index {
                10 => assert!(data == old, "index 10 must hold the old checkpoint"),
                20 => assert!(data == new, "index 20 must hold the new checkpoint"),
                other => return Err(format!("unexpected applied index {other}").into()),
            }
            let mut s = seen.get();
            s[usize::from(parts[0].applied_index == 20)] = true;
            seen.set(s);
            Ok(())
        },
    )?;
    // Both outcomes occur: the crash points straddle the manifest switch.
    assert_eq!(seen.get(), [true, true]);
    Ok(())
}

#[test]
fn split_manifest_update_is_all_or_nothing_at_every_crash_point() -> TestResult {
    let old = old_data();
    for_every_crash_point(
        |engine| {
            engine.split(RegionId(1), &[b"key030".to_vec()], &[RegionId(2)])?;
            engine.checkpoint(RegionId(2), 30).map(drop)
        },
        |engine, m, _, _| {
            let data = contents(engine);
            match m.regions.len() {
                // Before the split was durable: the old checkpoint, one region.
                1 => assert!(data == old),
                2 => {
                    // Split durable: region 1 keeps its share of the old checkpoint;
                    // region 2 has its share of it, or its own new checkpoint.
                    let (new, _) = new_data();
                    let right_new = m.regions[1].checkpoints[0].applied_index == 30;
                    let expected: Data = old
                        .iter()
                        .filter(|(k, _)| k.as_slice() < b"key030".as_slice())
                        .chain(if right_new { &new } else { &old }.range(b"key030".to_vec()..))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    assert!(data == expected);
                }
                n => return Err(format!("{n} regions").into()),
            }
            Ok(())
        },
    )
}

/// P13: an fsync error poisons the engine; nothing is retried or acknowledged after
/// it, and the next open recovers the last durable state.
#[test]
fn fsync_failure_poisons_the_engine_and_reopen_recovers() -> TestResult {
    let (fs, engine) = setup()?;
    fs.set_fault_hook(Box::new(|op| {
        (op.kind == regionkv_wal::fs::SimOpKind::SyncData)
            .then(|| std::io::Error::from_raw_os_error(5))
    }));
    let err = engine.checkpoint(RegionId(1), 20).unwrap_err();
    assert!(err.is_fatal(), "{err:?}");
    fs.clear_fault_hook();
    assert!(engine.failure().is_some());
    // Never retried: later durable changes and commits are refused.
    assert!(engine.checkpoint(RegionId(1), 21).unwrap_err().is_fatal());
    assert!(
        engine.split(RegionId(1), &[b"key010".to_vec()], &[RegionId(2)]).unwrap_err().is_fatal()
    );
    let region = engine.region(RegionId(1)).ok_or("no region")?;
    let mut round = engine.begin_round();
    round.prepare_for_region(region.id, region.epoch)?;
    round.put(b"late", b"x")?;
    assert!(round.commit().unwrap_err().is_fatal());
    assert_eq!(engine.total_pins(), 0, "a failed commit still releases its pins");
    drop(engine);
    for mode in [CrashMode::Lost, CrashMode::Persisted] {
        let (engine, m) = reopen_and_check(&Arc::new(fs.image_after_crash(mode)))?;
        assert_eq!(m.regions[0].checkpoints[0].applied_index, 10);
        assert!(contents(&engine) == old_data());
    }
    Ok(())
}

/// The checkpoint write allocates the file's blocks first and trims the overshoot
/// before its fsync; both are crash points of the scenarios above. This pins the
/// order, so that a change of the write path shows up here.
#[test]
fn checkpoint_allocates_first_and_trims_before_its_fsync() -> TestResult {
    use regionkv_wal::fs::SimOpKind;
    let (fs, engine) = setup()?;
    let ops = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = ops.clone();
    fs.set_fault_hook(Box::new(move |op| {
        if op.path.to_string_lossy().ends_with(".ckpt.tmp") {
            seen.lock().expect("not poisoned").push((op.kind, op.offset));
        }
        None
    }));
    let meta = engine.checkpoint(RegionId(1), 20)?;
    fs.clear_fault_hook();
    let ops = ops.lock().expect("not poisoned").clone();
    let kinds: Vec<SimOpKind> = ops.iter().map(|&(k, _)| k).collect();
    assert_eq!(kinds[..2], [SimOpKind::Create, SimOpKind::Allocate], "{kinds:?}");
    let writes = &kinds[2..kinds.len() - 3];
    assert!(writes.len() >= 4 && writes.iter().all(|&k| k == SimOpKind::Write), "{kinds:?}");
    assert_eq!(
        kinds[kinds.len() - 3..],
        [SimOpKind::SetLen, SimOpKind::SyncData, SimOpKind::Rename],
        "{kinds:?}"
    );
    // Allocated more than written, trimmed to exactly the file.
    assert!(ops[1].1 > meta.stats.file_bytes);
    assert_eq!(ops[ops.len() - 3].1, meta.stats.file_bytes);
    assert_eq!(fs.contents(&meta.path).map(|c| c.len() as u64), Some(meta.stats.file_bytes));
    Ok(())
}

/// Allocation is an optimization: when it fails, the checkpoint is written anyway and
/// the engine stays healthy.
#[test]
fn a_failed_allocation_costs_nothing_but_speed() -> TestResult {
    let (fs, engine) = setup()?;
    fs.set_fault_hook(Box::new(|op| {
        (op.kind == regionkv_wal::fs::SimOpKind::Allocate)
            .then(|| std::io::Error::from(std::io::ErrorKind::StorageFull))
    }));
    engine.checkpoint(RegionId(1), 20)?;
    fs.clear_fault_hook();
    assert!(engine.failure().is_none());
    drop(engine);
    let (engine, m) = reopen_and_check(&Arc::new(fs.image_after_crash(CrashMode::Lost)))?;
    assert_eq!(m.regions[0].checkpoints[0].applied_index, 20);
    assert!(contents(&engine) == new_data().0);
    Ok(())
}

/// The allocation follows the region's memory charge, which long keys (copied into the
/// block index) can outgrow: the file then grows past it and is still whole.
#[test]
fn a_checkpoint_larger_than_its_allocation_is_whole() -> TestResult {
    let fs = Arc::new(SimFs::new());
    let engine = Engine::open(fs.clone(), DIR, options())?;
    engine.insert_region(Region::whole(RegionId(1)))?;
    let data: Data =
        (0..6u8).map(|i| (vec![b'k' + i; 40 << 10], vec![i; 3])).collect::<BTreeMap<_, _>>();
    write(&engine, &data, &[])?;
    let allocated = Arc::new(std::sync::Mutex::new(0));
    let seen = allocated.clone();
    fs.set_fault_hook(Box::new(move |op| {
        if op.kind == regionkv_wal::fs::SimOpKind::Allocate {
            *seen.lock().expect("not poisoned") = op.offset;
        }
        None
    }));
    let meta = engine.checkpoint(RegionId(1), 5)?;
    fs.clear_fault_hook();
    assert!(*allocated.lock().expect("not poisoned") < meta.stats.file_bytes);
    drop(engine);
    let (engine, _) = reopen_and_check(&Arc::new(fs.image_after_crash(CrashMode::Lost)))?;
    assert!(contents(&engine) == data);
    Ok(())
}

/// Opening verifies a checkpoint while it loads it (one pass): damage anywhere in the
/// file, even in its last block after most pairs were loaded, fails the open with a
/// corruption error, and the undamaged file still opens.
#[test]
fn a_damaged_checkpoint_fails_the_open_wherever_the_damage_is() -> TestResult {
    let (fs, engine) = setup()?;
    let meta = engine.checkpoint(RegionId(1), 20)?;
    engine.close()?;
    drop(engine);
    let len = meta.stats.file_bytes;
    assert!(meta.stats.blocks >= 4);
    for offset in [30, len / 4, len / 2, len - 300, len - 50, len - 2] {
        let damaged = Arc::new(fs.image_after_crash(CrashMode::Lost));
        damaged.corrupt(&meta.path, offset, 0x10)?;
        let err = Engine::open(damaged, DIR, options()).expect_err("damage must be found");
        assert!(err.is_corruption(), "offset {offset}: {err:?}");
    }
    let intact = Engine::open(Arc::new(fs.image_after_crash(CrashMode::Lost)), DIR, options())?;
    assert!(contents(&intact) == new_data().0);
    Ok(())
}
