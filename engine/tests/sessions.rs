//! Client sessions in the engine: a region's table changes with the round that holds
//! the data (undone with it when the round does not commit), every part of a split
//! starts with a copy, a merge joins both sides, and a removed region forgets them.

use std::sync::Arc;

use regionkv_engine::{
    Engine, EngineOptions, Region, RegionId, SessionId, SessionUse, SessionWrite, StoreId,
};
use regionkv_wal::SimFs;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const R1: RegionId = RegionId(1);
const S: SessionId = SessionId(0x00C0_FFEE);

fn engine() -> Result<Engine, regionkv_engine::Error> {
    let engine = Engine::open(Arc::new(SimFs::new()), "/e", EngineOptions::new(StoreId(1)))?;
    engine.insert_region(Region::whole(R1))?;
    Ok(engine)
}

/// Applies `put key=value` as write `seq` of session `S` the way the Raft layer does:
/// only if the region has not applied that write yet.
fn apply(engine: &Engine, region: RegionId, seq: u64, key: &str, value: &str) -> TestResult {
    let epoch = engine.region(region).ok_or("no region")?.epoch;
    let mut round = engine.begin_round();
    round.prepare_for_region(region, epoch)?;
    if round.session_write(S, seq, 1_000 + seq)? == SessionWrite::Fresh {
        round.put(key.as_bytes(), value.as_bytes())?;
    }
    round.commit()?;
    Ok(())
}

fn get(engine: &Engine, key: &str) -> Option<String> {
    engine.read_view().get(key.as_bytes()).map(|v| String::from_utf8_lossy(&v).into_owned())
}

#[test]
fn a_retried_write_applies_once_even_in_the_same_round() -> TestResult {
    let engine = engine()?;
    let epoch = engine.region(R1).ok_or("no region")?.epoch;
    let mut round = engine.begin_round();
    round.prepare_for_region(R1, epoch)?;
    assert_eq!(round.session_write(S, 1, 10)?, SessionWrite::Fresh);
    round.put(b"k", b"first")?;
    // The retry of the same write, later in the same round.
    assert_eq!(round.session_write(S, 1, 11)?, SessionWrite::AlreadyApplied);
    round.commit()?;
    apply(&engine, R1, 2, "k", "second")?;
    apply(&engine, R1, 1, "k", "first")?; // a late copy of write 1: not applied again
    assert_eq!(get(&engine, "k").as_deref(), Some("second"));
    let table = engine.sessions(R1).ok_or("no table")?;
    assert_eq!(table.get(S).map(|u| u.last_seq), Some(2));
    Ok(())
}

#[test]
fn a_round_that_does_not_commit_leaves_the_table_as_it_was() -> TestResult {
    let engine = engine()?;
    apply(&engine, R1, 1, "k", "v1")?;
    let before = engine.sessions(R1).ok_or("no table")?;
    let epoch = engine.region(R1).ok_or("no region")?.epoch;
    let mut round = engine.begin_round();
    round.prepare_for_region(R1, epoch)?;
    assert_eq!(round.session_write(S, 2, 5_000)?, SessionWrite::Fresh);
    assert_eq!(round.session_write(SessionId(9), 1, 5_001)?, SessionWrite::Fresh);
    round.put(b"k", b"v2")?;
    drop(round); // not committed: neither the data nor the sessions
    assert_eq!(engine.sessions(R1), Some(before.clone()));
    assert_eq!(get(&engine, "k").as_deref(), Some("v1"));
    let mut round = engine.begin_round();
    round.prepare_for_region(R1, epoch)?;
    let _ = round.session_write(S, 2, 5_000)?;
    round.clear();
    assert_eq!(engine.sessions(R1), Some(before));
    // So the write is new when it comes again.
    apply(&engine, R1, 2, "k", "v2")?;
    assert_eq!(get(&engine, "k").as_deref(), Some("v2"));
    Ok(())
}

#[test]
fn split_parts_copy_the_table_and_a_merge_joins_them() -> TestResult {
    let engine = engine()?;
    apply(&engine, R1, 1, "a", "1")?;
    let parts = engine.split_at(R1, &[b"m".to_vec()], &[RegionId(2)], 10, 5)?;
    assert_eq!(parts.len(), 2);
    let parent = engine.sessions(R1).ok_or("no table")?;
    assert_eq!(engine.sessions(RegionId(2)), Some(parent));
    // Write 1 was applied by the parent: the child whose keys it would now touch
    // recognises its retry.
    apply(&engine, RegionId(2), 1, "x", "retry")?;
    assert_eq!(get(&engine, "x"), None);
    // Each side moves on; the merge keeps the higher sequence number.
    apply(&engine, RegionId(2), 7, "x", "7")?;
    apply(&engine, R1, 3, "b", "3")?;
    engine.merge_at(RegionId(2), R1, 11)?;
    let merged = engine.sessions(R1).ok_or("no table")?;
    assert_eq!(merged.get(S), Some(SessionUse { last_seq: 7, last_used_ms: 1_007 }));
    apply(&engine, R1, 7, "x", "again")?;
    assert_eq!(get(&engine, "x").as_deref(), Some("7"));
    assert_eq!(engine.sessions(RegionId(2)), None, "the source is gone");
    engine.remove_region(R1)?;
    assert_eq!(engine.sessions(R1), None);
    engine.insert_region(Region::whole(R1))?;
    assert_eq!(engine.sessions(R1).map(|t| t.len()), Some(0), "a new region starts empty");
    Ok(())
}

fn reopen(fs: &Arc<SimFs>, engine: Engine) -> Result<Engine, regionkv_engine::Error> {
    engine.close()?;
    drop(engine);
    Engine::open(fs.clone(), "/e", EngineOptions::new(StoreId(1)))
}

#[test]
fn checkpoints_carry_the_table_through_a_restart_a_split_and_a_snapshot() -> TestResult {
    let fs = Arc::new(SimFs::new());
    let engine = Engine::open(fs.clone(), "/e", EngineOptions::new(StoreId(1)))?;
    engine.insert_region(Region::whole(R1))?;
    apply(&engine, R1, 1, "a", "1")?;
    apply(&engine, R1, 2, "a", "")?;
    let epoch = engine.region(R1).ok_or("no region")?.epoch;
    let mut round = engine.begin_round();
    round.prepare_for_region(R1, epoch)?;
    round.delete(b"a")?; // the region holds no key, only sessions
    round.commit()?;
    let table = engine.sessions(R1).ok_or("no table")?;
    engine.checkpoint(R1, 20)?;
    let engine = reopen(&fs, engine)?;
    assert_eq!(engine.sessions(R1), Some(table.clone()), "restart from the checkpoint");

    // A split of a region with sessions but no keys still checkpoints every part.
    engine.split_at(R1, &[b"m".to_vec()], &[RegionId(2)], 21, 5)?;
    let engine = reopen(&fs, engine)?;
    assert_eq!(engine.sessions(R1), Some(table.clone()));
    assert_eq!(engine.sessions(RegionId(2)), Some(table.clone()));
    apply(&engine, RegionId(2), 2, "x", "retry")?;
    assert_eq!(get(&engine, "x"), None, "the child recognises the parent's write");

    // A snapshot: another store installs the checkpoint, sessions and all.
    let other = Engine::open(Arc::new(SimFs::new()), "/o", EngineOptions::new(StoreId(2)))?;
    engine.checkpoint(RegionId(2), 30)?;
    let mut receiver = other.receive_checkpoint()?;
    for chunk in engine.checkpoint_chunks(RegionId(2), 64)? {
        receiver.push(&chunk)?;
    }
    other.install_checkpoint(receiver.finish()?)?;
    assert_eq!(other.sessions(RegionId(2)), engine.sessions(RegionId(2)));
    Ok(())
}
