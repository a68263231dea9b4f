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
