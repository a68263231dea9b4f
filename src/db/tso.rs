//! Timestamps from the cluster's timestamp oracle (on the directory's leader), for
//! snapshot-isolated transactions.

use super::Db;
use crate::error::{Error, Result};

impl Db {
    /// `count` consecutive timestamps from the cluster's oracle: the first of them.
    /// Each is above every timestamp handed out before, by any leader.
    pub fn timestamps(&self, count: u32) -> Result<u64> {
        let _ = count;
        Err(Error::InvalidRequest("timestamps: not yet wired (tso)".into()))
    }

    /// One timestamp from the cluster's oracle.
    pub fn timestamp(&self) -> Result<u64> {
        self.timestamps(1)
    }
}
