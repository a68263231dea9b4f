//! Test seams of the two-phase coordinator (`two_phase.rs`): a prewrite held between
//! the primary's part and the commit, a commit request dropped, a commit's answers
//! lost. Not an API: `#[doc(hidden)]`, set only by tests through [`Db::with_txn_seams`];
//! without them the coordinator pays one branch on an `Option` per step.

use std::sync::Arc;
use std::time::{Duration, Instant};

use regionkv_raft::txn::plan::TxnPlan;
use regionkv_raft::{Op, TxnCmd, TxnReply};

use super::Db;
use crate::error::{Error, Result};

/// What a test makes the coordinator of [`Db::write`] do between its steps.
#[doc(hidden)]
#[derive(Default)]
pub struct TxnSeams {
    /// Called with the transaction id in the thread of each prewrite part that does
    /// not hold the primary key, before it is sent: the part waits there until this
    /// returns (such parts always go the routed way, one thread each), while the
    /// coordinator heartbeats the record as it does for any slow part.
    pub hold_secondary_prewrite: Option<Box<dyn Fn(u64) + Send + Sync>>,
    /// The commit request is never sent (as if lost on the way); the coordinator
    /// hears no answer.
    pub drop_commit: bool,
    /// The commit is sent (and applied) but its answer is lost, and so is the answer
    /// of the status check that follows it.
    pub lose_commit_answers: bool,
    /// An async-commit batch is answered, then its decision and resolves are never
    /// done by this client (as if it died right after the answer): they are left to
    /// the readers, writers and recovery daemons that meet its locks.
    pub drop_resolves: bool,
}

impl std::fmt::Debug for TxnSeams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxnSeams")
            .field("hold_secondary_prewrite", &self.hold_secondary_prewrite.is_some())
            .field("drop_commit", &self.drop_commit)
            .field("lose_commit_answers", &self.lose_commit_answers)
            .field("drop_resolves", &self.drop_resolves)
            .finish()
    }
}

/// The coordinator's step whose call a seam may drop or whose answer it may lose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SeamStep {
    Commit,
    StatusAfterCommit,
}

impl Db {
    /// The same client with test seams in its two-phase coordinator. For tests only.
    #[doc(hidden)]
    #[must_use]
    pub fn with_txn_seams(mut self, seams: TxnSeams) -> Db {
        self.seams = Some(Arc::new(seams));
        self
    }

    /// True if the prewrite part `ops` of `plan` must go the routed way (a seam holds
    /// it there).
    pub(super) fn seam_routes(&self, plan: &TxnPlan, ops: &[Op]) -> bool {
        self.seams
            .as_ref()
            .is_some_and(|s| s.hold_secondary_prewrite.is_some() && !holds_primary(plan, ops))
    }

    /// Waits in a routed prewrite part's thread while a seam holds it.
    pub(super) fn seam_hold(&self, plan: &TxnPlan, ops: &[Op]) {
        if let Some(hold) = self.seams.as_ref().and_then(|s| s.hold_secondary_prewrite.as_ref())
            && !holds_primary(plan, ops)
        {
            hold(plan.txn_id);
        }
    }

    /// [`Db::txn_call_for`] of the coordinator's `step`, through the seams if any.
    pub(super) fn seamed_call(
        &self,
        step: SeamStep,
        cmd: &TxnCmd,
        deadline: Duration,
    ) -> Result<TxnReply> {
        let Some(seams) = &self.seams else { return self.txn_call_for(cmd, deadline) };
        let started = Instant::now();
        let unanswered = || Error::Unavailable {
            waited: started.elapsed(),
            last: format!("a test seam lost the answer of {step:?}"),
        };
        match step {
            SeamStep::Commit if seams.drop_commit => Err(unanswered()),
            SeamStep::Commit | SeamStep::StatusAfterCommit if seams.lose_commit_answers => {
                let _lost = self.txn_call_for(cmd, deadline);
                Err(unanswered())
            }
            _ => self.txn_call_for(cmd, deadline),
        }
    }
}

/// True if `ops` hold `plan`'s primary key.
fn holds_primary(plan: &TxnPlan, ops: &[Op]) -> bool {
    let primary = plan.primary_key();
    ops.iter().any(|op| op.key() == primary.as_ref())
}
