//! The directory's version GC safepoint, as a `Db` raises it (`crate::version_gc`).

use regionkv_raft::directory::{DirCmd, DirResult};

use super::Db;
use crate::control::ClusterOps;
use crate::error::{Error, Result};

impl Db {
    /// Raises the cluster's version GC safepoint to `safepoint` (never lowers it) and
    /// answers the one the directory holds afterwards. Cluster version 4.
    pub(crate) fn raise_gc_safepoint(&self, safepoint: u64) -> Result<u64> {
        let ops = ClusterOps::new(self.router.backend().clone());
        match ops.directory(&DirCmd::SetGcSafepoint { safepoint }, self.deadline)? {
            DirResult::GcSafepoint { safepoint } => Ok(safepoint),
            other => Err(Error::Protocol(format!("a gc safepoint was answered {other:?}"))),
        }
    }
}
