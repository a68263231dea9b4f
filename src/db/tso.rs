//! Timestamps from the cluster's timestamp oracle (on the directory's leader), for
//! snapshot-isolated transactions (ARCHITECTURE.md, "Timestamp oracle").

use std::time::Instant;

use regionkv_engine::StoreId;
use regionkv_raft::directory::DIRECTORY;

use super::{Db, ask};
use crate::defaults::{DIRECTORY_ATTEMPT_TIMEOUT, DRIVER_RETRY_PAUSE};
use crate::error::{Error, Result};

impl Db {
    /// `count` consecutive timestamps from the cluster's oracle (1 to 2^18): the first
    /// of them. Each is above every timestamp handed out before, by any leader. Asks
    /// the directory's leader, retrying until this `Db`'s deadline; a cluster below
    /// version 3 refuses with [`Error::FeatureNotActive`].
    pub fn timestamps(&self, count: u32) -> Result<u64> {
        let backend = self.router.backend();
        let start = Instant::now();
        let mut last = String::from("no leader of the directory");
        // A leader a refusal named, tried at once (once per turn).
        let mut hint: Option<StoreId> = None;
        // Bounded by the deadline; every turn that does not follow a hint sleeps.
        while start.elapsed() < self.deadline {
            if backend.is_shut() {
                return Err(Error::Shutdown);
            }
            let followed = hint.is_some();
            if let Some(leader) = hint.take().or_else(|| backend.leader_of(DIRECTORY)) {
                match ask(DIRECTORY_ATTEMPT_TIMEOUT, |reply| {
                    backend.timestamps(leader, count, reply);
                }) {
                    Some(Ok(first)) => return Ok(first),
                    Some(Err(regionkv_raft::Error::NotLeader { leader: Some(to), .. }))
                        if to != leader && !followed =>
                    {
                        hint = Some(to);
                        last = format!("store {leader} does not lead the directory");
                        continue;
                    }
                    Some(Err(e)) if e.is_retryable() || e.is_cancelled() => last = e.to_string(),
                    Some(Err(e)) => return Err(e.into()),
                    None => last = format!("store {leader} did not answer"),
                }
            }
            std::thread::sleep(DRIVER_RETRY_PAUSE);
        }
        Err(Error::Unavailable { waited: start.elapsed(), last })
    }

    /// One timestamp from the cluster's oracle (see [`Db::timestamps`]).
    pub fn timestamp(&self) -> Result<u64> {
        self.timestamps(1)
    }
}
