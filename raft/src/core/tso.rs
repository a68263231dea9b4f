//! The timestamp oracle on the core that owns the directory's replica (`crate::tso`):
//! requests wait in [`Oracle`] and are served, all of a turn together, at the start of
//! each flush pass; a save of the limit is a directory command whose reply lands in a
//! slot the next pass reads.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;

use super::StoreCore;
use crate::directory::{DIRECTORY, DirCmd, DirResult};
use crate::error::{Error, Result};
use crate::request::Reply;
use crate::tso::{MAX_TIMESTAMPS_PER_REQUEST, Next, TsAllocator};

/// An applied (or failed) save, with the term it was proposed in.
type Saved = Arc<Mutex<Option<(u64, Result<DirResult>)>>>;

/// The oracle's state on its core.
#[derive(Default)]
pub(super) struct Oracle {
    alloc: TsAllocator,
    /// The term whose own save applied: the allocator may hand out in it.
    primed: Option<u64>,
    /// The term of the save in flight, if one is.
    saving: Option<u64>,
    saved: Saved,
    waiting: VecDeque<(u32, Reply<u64>)>,
}

impl Oracle {
    /// True if a pass has something to do here.
    pub(super) fn has_work(&self) -> bool {
        !self.waiting.is_empty() || self.saved.lock().is_some()
    }

    fn fail_all(&mut self, e: &Error) {
        for (_, reply) in self.waiting.drain(..) {
            reply(Err(copy_of(e)));
        }
    }
}

/// `e` again, for each waiting request (an error is not `Clone`). A kind not listed
/// comes back as a timeout: asking again is always safe, a save that did apply only
/// raised the limit.
fn copy_of(e: &Error) -> Error {
    match e {
        Error::NotLeader { region, leader } => {
            Error::NotLeader { region: *region, leader: *leader }
        }
        Error::RegionNotFound { region } => Error::RegionNotFound { region: *region },
        Error::ReplicaHalted { region, reason } => {
            Error::ReplicaHalted { region: *region, reason: reason.clone() }
        }
        Error::FeatureNotActive { feature, active, needed } => {
            Error::FeatureNotActive { feature, active: *active, needed: *needed }
        }
        Error::Cancelled => Error::Cancelled,
        Error::InvalidRequest(why) => Error::InvalidRequest(why.clone()),
        Error::Internal(why) => Error::Internal(why.clone()),
        _ => Error::Timeout { region: DIRECTORY },
    }
}

impl StoreCore {
    /// Takes a request for `count` consecutive timestamps (this store must lead the
    /// directory); it is served with the others of the turn, in the next flush.
    pub fn on_timestamps(&mut self, count: u32, reply: Reply<u64>) {
        if count == 0 || count > MAX_TIMESTAMPS_PER_REQUEST {
            reply(Err(Error::InvalidRequest(format!(
                "a timestamp request takes 1 to {MAX_TIMESTAMPS_PER_REQUEST}, not {count}"
            ))));
            return;
        }
        if let Err(e) = self.ctx.cluster_version.check(crate::version::TXN) {
            reply(Err(e));
            return;
        }
        if let Err(e) = self.leader(DIRECTORY) {
            reply(Err(e));
            return;
        }
        self.tso.waiting.push_back((count, reply));
        self.dirty.insert(DIRECTORY);
    }

    /// Serves waiting requests from memory, or saves the next limit first. Runs at the
    /// start of every flush pass; cheap when the oracle is idle.
    pub(super) fn serve_timestamps(&mut self) {
        // Each round either ends or took a save reply that came back at once.
        for _ in 0..4 {
            if !self.tso.has_work() {
                return;
            }
            let term = match self.leader(DIRECTORY) {
                Ok(replica) => replica.term(),
                Err(e) => {
                    self.tso.primed = None;
                    self.tso.saving = None;
                    self.tso.alloc.forget_limit();
                    self.tso.saved.lock().take();
                    self.tso.fail_all(&e);
                    return;
                }
            };
            let saved = self.tso.saved.lock().take();
            if let Some((at, result)) = saved {
                self.tso.saving = None;
                match result {
                    // A save of an older term proves nothing for this one: ignored.
                    Ok(DirResult::TsLimit { previous, limit }) if at == term => {
                        self.tso.alloc.saved(previous, limit);
                        self.tso.primed = Some(term);
                    }
                    Ok(DirResult::TsLimit { .. }) => {}
                    Ok(other) => {
                        let e = Error::Internal(format!("a timestamp save returned {other:?}"));
                        self.tso.fail_all(&e);
                    }
                    Err(e) => self.tso.fail_all(&e),
                }
            }
            if self.tso.saving.is_some_and(|at| at != term) {
                self.tso.saving = None; // proposed in an older term: never answered here
            }
            if self.tso.waiting.is_empty() || self.tso.saving.is_some() {
                return;
            }
            let now = self.ctx.now_ms();
            let limit = if self.tso.primed == Some(term) {
                match self.serve_from_memory(now) {
                    None => return,
                    Some(limit) => limit,
                }
            } else {
                // A new term: nothing until a save of its own applied (then every
                // earlier save did, and the allocator starts above them all).
                self.tso.primed = None;
                self.tso.alloc.forget_limit();
                self.tso.alloc.first_window(now)
            };
            self.tso.saving = Some(term);
            let slot = self.tso.saved.clone();
            let reply: Reply<DirResult> = Box::new(move |r| *slot.lock() = Some((term, r)));
            self.on_directory(&DirCmd::SaveTsLimit { limit }, reply);
        }
    }

    /// Hands out to the waiting requests in order; the limit to save if one is past
    /// the window.
    fn serve_from_memory(&mut self, now: u64) -> Option<u64> {
        while let Some(&(count, _)) = self.tso.waiting.front() {
            match self.tso.alloc.next(now, count) {
                Next::Ready(first) => {
                    let (_, reply) = self.tso.waiting.pop_front().expect("front");
                    reply(Ok(first));
                }
                Next::Save(limit) => return Some(limit),
            }
        }
        None
    }
}
