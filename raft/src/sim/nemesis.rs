//! The simulator's faults on stores: crashes (with what the disk keeps), clean stops,
//! wiped disks, restarts, writes held back (a stuck fsync), and messages no store would
//! send.

use std::collections::BTreeMap;
use std::time::Duration;

use regionkv_engine::{PeerId, StoreId};
use regionkv_wal::{CrashMode, SimFs};

use super::{Event, SimCluster};
use crate::error::Result;
use crate::transport::Envelope;

impl SimCluster {
    /// Cuts the power of `store`: what was not durable is treated as `mode` says, and
    /// everything in flight is lost.
    pub fn crash(&mut self, store: StoreId, mode: CrashMode) {
        let Some(s) = self.stores.get_mut(&store) else { return };
        if let Some(running) = s.running.take() {
            drop(running);
            s.disk = s.disk.crash(mode);
        }
        s.life += 1;
        self.trace(("crash", store.0));
    }

    /// Sets `store`'s wall clock `ms` behind the cluster's (0: in step), from now on:
    /// a clock that jumps back, or a slow one.
    pub fn set_clock_behind(&mut self, store: StoreId, ms: u64) {
        if let Some(s) = self.stores.get(&store) {
            s.clock_behind.store(ms, std::sync::atomic::Ordering::Relaxed);
        }
        self.trace(("clock behind", store.0, ms));
    }

    /// Stops `store` cleanly: timelines shut down, log and engine closed.
    pub fn stop(&mut self, store: StoreId) {
        let Some(s) = self.stores.get_mut(&store) else { return };
        if let Some(mut running) = s.running.take() {
            running.core.shutdown(Duration::from_secs(5));
            let _ = running.wal.close();
            let _ = running.engine.close();
            let _ = running.core.context().directory.close();
        }
        s.life += 1;
        self.trace(("stop", store.0));
    }

    /// The store's disk is lost (wiped, or replaced): `store` restarts on an empty disk,
    /// as a node started with `--join` does. It hosts nothing until it is added to
    /// regions again.
    pub fn wipe_and_rejoin(&mut self, store: StoreId) -> Result<()> {
        self.crash(store, CrashMode::Lost);
        if let Some(s) = self.stores.get_mut(&store) {
            s.disk = SimFs::new();
        }
        if let Some(s) = self.stores.get_mut(&store) {
            s.disks += 1;
        }
        self.trace(("wipe", store.0));
        // As a node started with `--join` does: a peer floor from the cluster's allocator.
        let floor = PeerId(self.new_id());
        self.start(store, Some(floor))?;
        self.process(store);
        Ok(())
    }

    /// Holds back (`held`) or releases the completion of `store`'s writes: while held,
    /// the write in flight stays in flight (nothing it carries is durable, its messages
    /// wait, its core hears nothing of it), as a disk stuck in a long fsync would.
    pub fn hold_writes(&mut self, store: StoreId, held: bool) {
        if let Some(s) = self.stores.get_mut(&store) {
            s.writes_held = held;
        }
        self.trace(("hold writes", store.0, held));
    }

    /// Restarts a crashed or stopped store from its disk.
    pub fn restart(&mut self, store: StoreId) -> Result<()> {
        if self.is_running(store) {
            return Ok(());
        }
        self.trace(("restart", store.0));
        self.start(store, None)?;
        self.process(store);
        Ok(())
    }

    /// Restarts a crashed or stopped store as if its WAL recovery had cut valid records
    /// past damage in the last group (a point-in-time recovery): what it acknowledged
    /// last, its latest term and vote among it, may be gone. The simulated disks cannot
    /// produce that damage (each simulated write is its own group), so the store is
    /// told.
    pub fn restart_after_log_cut(&mut self, store: StoreId) -> Result<()> {
        if let Some(s) = self.stores.get_mut(&store) {
            s.log_cut = true;
        }
        self.restart(store)
    }

    /// Delivers `envelopes` now, as if they came over the network (for tests that send
    /// what no store would: forged or damaged messages).
    pub fn inject(&mut self, envelopes: Vec<Envelope>) {
        let mut by_store: BTreeMap<StoreId, Vec<Envelope>> = BTreeMap::new();
        for env in envelopes {
            by_store.entry(env.to).or_default().push(env);
        }
        for (to, batch) in by_store {
            // As if sent by the store the envelopes name, under its current identity.
            let identity =
                (batch.first()).and_then(|e| self.stores.get(&e.from)).and_then(|s| s.identity);
            self.handle(Event::Deliver(to, identity, batch));
        }
    }
}
