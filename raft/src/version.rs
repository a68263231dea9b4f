//! Cluster versions: which Raft command kinds a cluster may carry.
//!
//! A binary supports cluster versions up to [`CLUSTER_VERSION_MAX`]. The cluster runs
//! at one *active* version, held by the directory and raised only by an explicit
//! finalize once every store positively reported that its binary supports the target
//! (a store that reports nothing has not upgraded: absent is unknown, never "new
//! enough"). A command kind added after the first release names the version that
//! introduced it ([`Feature::since`]); a proposer refuses it with
//! [`Error::FeatureNotActive`] while the active version is older, so a replica running
//! an older binary never meets a kind it cannot decode while the cluster version says
//! every replica knows it.
//!
//! Each store keeps the active version as it last learned it in a
//! [`ClusterVersionView`] (shared by its cores, read by proposers and by apply).

use std::sync::atomic::{AtomicU32, Ordering};

use crate::error::{Error, Result};

/// The version of a cluster whose directory holds no version record: every cluster
/// from before the version gate, and the versions its binaries all support.
pub const CLUSTER_VERSION_INITIAL: u32 = 1;

/// The newest cluster version this binary can run at.
pub const CLUSTER_VERSION_MAX: u32 = 8;

/// A capability that needs every replica of the cluster to know a command kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Feature {
    /// Its name, for errors and logs.
    pub name: &'static str,
    /// The cluster version that introduced it.
    pub since: u32,
}

/// Replicas hash their region's image at a Raft index (the `ComputeHash` admin
/// command), so that diverged replicas can be found.
pub const IMAGE_HASH: Feature = Feature { name: "image-hash", since: 2 };

/// The health monitor records each repair step in the directory (a directory command
/// kind) before it takes it: its audit, and its fence.
pub const HEALTH_AUDIT: Feature = Feature { name: "health-audit", since: 2 };

/// Cross-region transactions: the `TXN` command kinds (prewrite, commit, resolve,
/// check status, heartbeat, forget) and the locks and records they leave.
pub const TXN: Feature = Feature { name: "transactions", since: 3 };

/// Transactions, second round: async commit (a `Staging` record decided by its
/// participants' locks), resolves of many transactions in one command, one-phase
/// commit of a single-region snapshot transaction, and version GC below a safepoint.
/// Every command kind, record status and field these add is refused by a proposer
/// until the cluster runs at this version, so a version-3 replica never meets one.
pub const TXN_V2: Feature = Feature { name: "transactions-v2", since: 4 };

/// Transactions, third round: async commit of snapshot transactions across regions (a
/// prewrite's lock carries its participant's minimum commit timestamp, and the record
/// commits at the largest), and many transactions' commands to one region in one Raft
/// entry. A version-4 replica would apply these as older kinds, or not at all, so a
/// proposer refuses them below this version.
pub const TXN_V3: Feature = Feature { name: "transactions-v3", since: 5 };

/// Duplication, the source side's per-region state: the `DUP` commands (start, seeded,
/// progress, stop) and the log-retention floor they keep on every replica. A version-5
/// replica cannot decode them, so a proposer refuses every kind below this version.
pub const DUP: Feature = Feature { name: "duplication", since: 6 };

/// Duplication, second part: the follower side (`SINK` commands: seeding and applying
/// another cluster's log into follower regions behind per-source-region marks) and the
/// directory's duplication records. A version-6 replica cannot decode them, so a
/// proposer refuses them below this version.
pub const DUP_V2: Feature = Feature { name: "duplication-v2", since: 7 };

/// Duplication, third part: cutover. A `DUP` `Fence` command (the source range refuses
/// client writes from it on, at apply) and the directory statuses `CuttingOver` and
/// `CutOver`. A version-7 replica cannot decode the fence nor check it, so a proposer
/// refuses both below this version.
pub const DUP_V3: Feature = Feature { name: "duplication-v3", since: 8 };

/// Every feature, oldest first.
pub const FEATURES: &[Feature] =
    &[IMAGE_HASH, HEALTH_AUDIT, TXN, TXN_V2, TXN_V3, DUP, DUP_V2, DUP_V3];

/// A store's view of the cluster's active version: it only goes up.
#[derive(Debug)]
pub struct ClusterVersionView(AtomicU32);

impl Default for ClusterVersionView {
    fn default() -> ClusterVersionView {
        ClusterVersionView(AtomicU32::new(CLUSTER_VERSION_INITIAL))
    }
}

impl ClusterVersionView {
    /// A view that starts at `active`.
    pub fn new(active: u32) -> ClusterVersionView {
        ClusterVersionView(AtomicU32::new(active))
    }

    /// The active version as this store knows it.
    pub fn active(&self) -> u32 {
        self.0.load(Ordering::Acquire)
    }

    /// Learns that the cluster runs at `active` (or newer); returns true if the view
    /// moved. A version older than the view's changes nothing.
    pub fn learn(&self, active: u32) -> bool {
        self.0.fetch_max(active, Ordering::AcqRel) < active
    }

    /// Refuses `feature` while the active version is older than the one that
    /// introduced it.
    pub fn check(&self, feature: Feature) -> Result<()> {
        let active = self.active();
        if active >= feature.since {
            Ok(())
        } else {
            Err(Error::FeatureNotActive { feature: feature.name, active, needed: feature.since })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_feature_is_refused_until_its_version_is_active_and_the_view_never_goes_back() {
        let view = ClusterVersionView::default();
        match view.check(IMAGE_HASH) {
            Err(Error::FeatureNotActive { feature, active, needed }) => {
                assert_eq!((feature, active, needed), ("image-hash", 1, 2));
            }
            other => panic!("{other:?}"),
        }
        assert!(view.learn(2));
        assert!(view.check(IMAGE_HASH).is_ok());
        assert!(!view.learn(1));
        assert_eq!(view.active(), 2);
    }

    #[test]
    fn every_feature_fits_this_binary() {
        for f in FEATURES {
            assert!(f.since > CLUSTER_VERSION_INITIAL && f.since <= CLUSTER_VERSION_MAX, "{f:?}");
        }
    }
}
