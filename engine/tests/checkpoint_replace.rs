//! Installing a snapshot over a lagging replica of the same region replaces it.

use std::sync::Arc;

use regionkv_engine::{Engine, EngineOptions, Region, RegionId, StoreId};
use regionkv_wal::SimFs;

#[test]
fn a_received_checkpoint_replaces_an_older_version_of_the_region()
-> Result<(), Box<dyn std::error::Error>> {
    let leader = Engine::open(Arc::new(SimFs::new()), "/leader", EngineOptions::new(StoreId(1)))?;
    let lagging_fs = SimFs::new();
    let lagging =
        Engine::open(Arc::new(lagging_fs.clone()), "/lagging", EngineOptions::new(StoreId(2)))?;
    for engine in [&leader, &lagging] {
        engine.insert_region(Region::whole(RegionId(1)))?;
        let epoch = engine.region(RegionId(1)).unwrap().epoch;
        let mut round = engine.begin_round();
        round.prepare_for_region(RegionId(1), epoch)?;
        round.put(b"old", b"both")?;
        round.put(b"stale", b"only-lagging-keeps-this-if-not-replaced")?;
        round.commit()?;
    }
    let epoch = leader.region(RegionId(1)).unwrap().epoch;
    let mut round = leader.begin_round();
    round.prepare_for_region(RegionId(1), epoch)?;
    round.put(b"new", b"leader")?;
    round.delete(b"stale")?;
    round.commit()?;
    leader.checkpoint(RegionId(1), 9)?;

    let mut receiver = lagging.receive_checkpoint()?;
    for chunk in leader.checkpoint_chunks(RegionId(1), 64)? {
        receiver.push(&chunk)?;
    }
    lagging.install_checkpoint(receiver.finish()?)?;
    let snap = lagging.read_view();
    assert_eq!(snap.get(b"new").as_deref(), Some(&b"leader"[..]));
    assert_eq!(snap.get(b"old").as_deref(), Some(&b"both"[..]));
    assert_eq!(snap.get(b"stale"), None, "the old replica's data is gone");
    assert_eq!(lagging.regions().len(), 1);

    // The replacement is durable.
    lagging.close()?;
    drop(lagging);
    let reopened = Engine::open(Arc::new(lagging_fs), "/lagging", EngineOptions::new(StoreId(2)))?;
    assert_eq!(reopened.read_view().get(b"new").as_deref(), Some(&b"leader"[..]));
    assert_eq!(reopened.read_view().get(b"stale"), None);
    Ok(())
}

/// A store that missed a merge holds the source and the old target; the merged
/// target's checkpoint replaces both in one manifest update, and nothing else may
/// overlap it.
#[test]
fn a_received_checkpoint_replaces_stale_regions_of_its_range_in_one_update()
-> Result<(), Box<dyn std::error::Error>> {
    let left = |id| Region { end: Some(b"m".to_vec()), ..Region::whole(RegionId(id)) };
    let right = |id| Region { start: b"m".to_vec(), ..Region::whole(RegionId(id)) };
    // The leader's side: region 1 merged region 2 in (one region, a later version).
    let leader = Engine::open(Arc::new(SimFs::new()), "/leader", EngineOptions::new(StoreId(1)))?;
    leader.insert_region(left(1))?;
    leader.insert_region(right(2))?;
    let merged = leader.merge_at(RegionId(2), RegionId(1), 20)?;
    let mut round = leader.begin_round();
    round.prepare_for_region(RegionId(1), merged.epoch)?;
    round.put(b"z", b"merged")?;
    round.commit()?;
    leader.checkpoint(RegionId(1), 21)?;
    let received = |engine: &Engine| -> Result<_, Box<dyn std::error::Error>> {
        let mut receiver = engine.receive_checkpoint()?;
        for chunk in leader.checkpoint_chunks(RegionId(1), 64)? {
            receiver.push(&chunk)?;
        }
        Ok(receiver.finish()?)
    };
    let fs = SimFs::new();
    let lagging = Engine::open(Arc::new(fs.clone()), "/lagging", EngineOptions::new(StoreId(2)))?;
    lagging.insert_region(left(1))?;
    lagging.insert_region(right(2))?;
    let mut round = lagging.begin_round();
    round.prepare_for_region(RegionId(2), right(2).epoch)?;
    round.put(b"x", b"source")?;
    round.commit()?;
    // Without naming region 2, the install overlaps it: refused, nothing changed.
    assert!(lagging.install_checkpoint(received(&lagging)?).is_err());
    assert_eq!(lagging.regions().len(), 2);
    // A round holding region 2 keeps it.
    let mut round = lagging.begin_round();
    round.prepare_for_region(RegionId(2), right(2).epoch)?;
    let busy = lagging.install_checkpoint_over(received(&lagging)?, &[RegionId(2)]);
    assert!(matches!(busy, Err(regionkv_engine::Error::RegionBusy { .. })), "{busy:?}");
    drop(round);
    let installed = lagging.install_checkpoint_over(received(&lagging)?, &[RegionId(2)])?;
    assert_eq!(installed, merged);
    assert_eq!(lagging.regions(), vec![merged.clone()]);
    assert_eq!(lagging.read_view().get(b"x"), None, "the stale source's data went with it");
    assert_eq!(lagging.read_view().get(b"z").as_deref(), Some(&b"merged"[..]));
    lagging.close()?;
    drop(lagging);
    let reopened = Engine::open(Arc::new(fs), "/lagging", EngineOptions::new(StoreId(2)))?;
    assert_eq!(reopened.regions(), vec![merged]);
    assert_eq!(reopened.read_view().get(b"z").as_deref(), Some(&b"merged"[..]));
    Ok(())
}
