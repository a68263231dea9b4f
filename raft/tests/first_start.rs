//! H1: a store's first start creates directories (its data dir's parents, `wal/`,
//! `engine/`, `directory/`); each must be fsynced into its parent before the store
//! relies on what is inside. Without it a power cut soon after the first start can
//! lose a directory's entry, and with it every file in it: the store would come back
//! empty under its old id (S1). The store's directory entries were not synced into
//! their parents before the fix; now every directory created is.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use regionkv_engine::StoreId;
use regionkv_raft::transport::{Envelope, Transport};
use regionkv_raft::{Store, StoreConfig, StoreOptions};
use regionkv_wal::SimFs;
use regionkv_wal::fs::SimOpKind;

struct Nowhere;

impl Transport for Nowhere {
    fn send(&self, _: Vec<Envelope>) {}
}

#[test]
fn every_directory_a_first_start_creates_is_synced_into_its_parent() {
    let fs = SimFs::new();
    let synced: Arc<Mutex<Vec<PathBuf>>> = Arc::default();
    let seen = synced.clone();
    fs.set_fault_hook(Box::new(move |op| {
        if op.kind == SimOpKind::SyncDir {
            seen.lock().push(op.path.clone());
        }
        None
    }));
    let transport: Arc<dyn Transport> = Arc::new(Nowhere);
    let options = StoreOptions::new(StoreConfig::new(StoreId(1)));
    let store = Store::start(Arc::new(fs.clone()), Path::new("/data/node-1"), &options, &transport)
        .expect("a fresh store starts");
    store.shutdown().expect("and stops");
    let synced = synced.lock().clone();
    for (dir, parent) in [
        ("/data", "/"),
        ("/data/node-1", "/data"),
        ("/data/node-1/wal", "/data/node-1"),
        ("/data/node-1/engine", "/data/node-1"),
        ("/data/node-1/directory", "/data/node-1"),
    ] {
        assert!(
            synced.iter().any(|p| p == Path::new(parent)),
            "{dir} was created but {parent} was never synced: {synced:?}"
        );
    }
}

/// A configuration raft-rs refuses for every replica (less uncommitted room than one
/// append) is refused once, with a typed error, when the store opens. Before, the
/// store started and then failed each replica as it created it.
#[test]
fn a_store_whose_raft_limits_do_not_fit_refuses_to_start() {
    let fs = SimFs::new();
    let transport: Arc<dyn Transport> = Arc::new(Nowhere);
    let mut config = StoreConfig::new(StoreId(1));
    config.max_uncommitted_bytes = config.max_append_bytes / 2;
    let options = StoreOptions::new(config);
    let refused = Store::start(Arc::new(fs), Path::new("/data/node-1"), &options, &transport);
    match refused {
        Err(regionkv_raft::Error::Raft(raft::Error::ConfigInvalid(why))) => {
            assert!(why.contains("max_uncommitted_bytes"), "{why}");
        }
        Err(other) => panic!("refused with {other}"),
        Ok(store) => {
            store.shutdown().unwrap();
            panic!("a store whose Raft limits do not fit started");
        }
    }
}
