//! The caller's turn: a write on a store whose poller hosts no replica with a peer on
//! another store runs on the caller's own thread, fsync and reply included.
//!
//! A write through the mailbox costs four thread wake-ups (caller -> poller -> writer
//! -> poller -> caller) around its one fsync. When nothing else is going on, a caller
//! that waits for its reply anyway ([`Store::write_here`], from `Db`) takes the
//! poller's turn instead: it runs the same core code the poller would
//! (`on_write`, `flush`), persists the write task itself as the writer would
//! (`RaftLog::persist_all`), reports it (`on_persisted`) and flushes again until
//! nothing is left to persist; the write's reply is called on this thread, so the
//! caller never parks.
//!
//! The caller takes the turn only if all of these hold, checked under the core's lock
//! (ARCHITECTURE.md, "The caller's turn"):
//!
//! - the lock is free (`try_lock`): the poller is not in a turn and no other caller is;
//! - the poller's mailbox is empty: whatever arrived is the poller's to handle first;
//! - no write task of the poller is in flight (`Turn::backlog` is 0): raft-rs needs
//!   readies persisted in order, and the writer must never be overtaken;
//! - the core hosts no replica that is not alone in its group
//!   (`StoreCore::hosts_remote_peers`): a peer elsewhere must never wait behind a
//!   caller's fsync for the heartbeats, votes and appends the poller sends.
//!
//! Otherwise the write goes to the mailbox as before. A caller that finds the lock
//! taken while no other caller is about (the poller's turn: a tick, a status call)
//! waits for that turn to end rather than hand its write over. Ticks stay the
//! poller's. The poller empties the shared slot ([`SharedCore`]) under the lock as it
//! leaves (shutdown, kill, a failed store), so once its thread is joined no caller
//! runs the core: a caller that finds it empty, or the store cancelled, is refused
//! `Cancelled`.
//!
//! Every poller does its share too ([`finish_turn`]): a write task with nothing to
//! persist, with no write task in flight before it, is reported durable in its own
//! turn rather than sent to the writer and back (its messages, e.g. a follower's
//! answer to a `ReadIndex` heartbeat, leave at once). On a lone core this also keeps
//! the caller's turn coming: otherwise a write that went through the mailbox (its
//! caller found the poller in a turn) would leave such a task in flight as its client
//! is answered, and that client's next write would find the backlog above 0 and go
//! through the mailbox too, and so on. A task with something to persist goes to the
//! writer, in order, unless a caller on a lone core carries it out.

use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;

use super::{Pollers, Store, poller_of};
use crate::core::{Output, StoreContext, StoreCore, WriteTask};
use crate::error::Error;
use crate::mailbox::{Lane, Mailbox};
use crate::request::WriteRequest;
use crate::transport::Transport;

/// Write tasks one turn carries out itself (a put takes two: its entry, then the ready
/// that reports it applied); a later one goes to the writer.
const TURN_TASKS: usize = 4;

/// A poller's core, shared by its turns and its callers'.
pub(super) struct SharedCore {
    /// The core and its writer's backlog; `None` once the poller left. Lock order:
    /// taken alone and never held while sleeping; a turn only sends to mailboxes,
    /// which never wait for it.
    pub(super) turn: Mutex<Option<Turn>>,
    /// Callers trying for, or in, a turn of this core now.
    callers: AtomicUsize,
}

impl SharedCore {
    pub(super) fn new(core: StoreCore) -> SharedCore {
        SharedCore {
            turn: Mutex::new(Some(Turn { core, backlog: 0 })),
            callers: AtomicUsize::new(0),
        }
    }
}

/// What a turn works on.
pub(super) struct Turn {
    /// The poller's core.
    pub(super) core: StoreCore,
    /// Write tasks handed to the writer and not yet reported durable: at most
    /// `WRITER_BACKLOG` before the poller stops taking clients, and 0 for a caller to
    /// take a turn.
    pub(super) backlog: usize,
}

/// Who carries out a turn's write tasks.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Persist {
    /// The poller: a task with nothing to persist is reported here if nothing is in
    /// flight; any other goes to the writer.
    Writer,
    /// A caller in its turn: it persists every task itself (up to [`TURN_TASKS`]).
    Here,
}

/// Where a turn's output goes.
pub(super) struct Outlets<'a> {
    pub(super) ctx: &'a StoreContext,
    pub(super) pollers: &'a Pollers<'a>,
    pub(super) transport: &'a dyn Transport,
    pub(super) writer: &'a Mailbox<WriteTask>,
}

/// Carries out `out` and what the flushes after it give, as `persist` says. Returns
/// false if the store must stop (the writer is gone, or a log write failed).
pub(super) fn finish_turn(
    turn: &mut Turn,
    mut out: Output,
    to: &Outlets<'_>,
    persist: Persist,
) -> bool {
    let ctx = to.ctx;
    for done in 0..=TURN_TASKS {
        for task in std::mem::take(&mut out.tasks) {
            to.pollers.send(task);
        }
        to.pollers.report(std::mem::take(&mut out.reports));
        to.transport.send(std::mem::take(&mut out.messages));
        let Some(task) = out.write.take() else { return true };
        // Readies with nothing to persist and nothing before them in flight are
        // durable already: their messages leave and they are reported here rather than
        // round-tripped through the writer (two thread wake-ups per put on a leader; per
        // ReadIndex heartbeat on a follower, whose answer waited for that trip;
        // ARCHITECTURE.md "The write path"). A write is persisted here only by a caller
        // on a core with no peer elsewhere.
        let inline = done < TURN_TASKS
            && turn.backlog == 0
            && (task.write.is_empty()
                || (persist == Persist::Here && !turn.core.hosts_remote_peers()));
        if !inline {
            if to.writer.send(Lane::System, task).is_err() {
                return false; // the writer stopped: the store failed
            }
            ctx.metrics.on_writer_task();
            turn.backlog += 1;
            return true;
        }
        let WriteTask { write, messages, readies } = task;
        if !write.is_empty() {
            if let Err(e) = ctx.log.persist_all(std::slice::from_ref(&write)) {
                // Fail-stop, as the writer does: nothing more is acknowledged; the
                // poller answers what waits (`StoreCore::shutdown`), a restart
                // recovers from disk.
                if ctx.cancel.is_cancelled() || e.is_cancelled() {
                    tracing::debug!(error = %e, "log write stopped by shutdown");
                    ctx.cancel.cancel();
                } else {
                    tracing::error!(store = ctx.config.store_id.0, error = %e, "log write failed; the store stops");
                    ctx.stop_on_failure(&e);
                }
                return false;
            }
            ctx.metrics.on_caller_task();
        }
        to.transport.send(messages);
        turn.core.on_persisted(&readies);
        turn.core.recycle_readies(readies);
        out = turn.core.flush();
    }
    true
}

/// Counts a caller in [`SharedCore::callers`] while it lives.
struct Trying<'a>(&'a AtomicUsize);

impl Drop for Trying<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Store {
    /// Runs `req` on this thread if its poller allows a caller's turn now (see the
    /// module docs); gives it back for the mailbox otherwise. A caller refused because
    /// the store stops has its reply called with `Cancelled`.
    pub(super) fn take_turn(&self, req: WriteRequest) -> Option<WriteRequest> {
        let i = poller_of(req.region, self.cores.len());
        let (shared, writer) = &self.cores[i];
        let others = shared.callers.fetch_add(1, Ordering::SeqCst);
        // Declared before the guard: the count drops after the lock is released.
        let _trying = Trying(&shared.callers);
        let mut guard = match shared.turn.try_lock() {
            Some(guard) => guard,
            // The poller's turn: wait for it to end.
            None if others == 0 => shared.turn.lock(),
            // Another caller's turn: the poller batches this one with the rest.
            None => return Some(req),
        };
        let Some(turn) = guard.as_mut().filter(|_| !self.ctx.cancel.is_cancelled()) else {
            drop(guard);
            (req.reply)(Err(Error::Cancelled));
            return None;
        };
        if turn.backlog > 0 || turn.core.hosts_remote_peers() || !self.inbox.pollers[i].is_empty() {
            return Some(req);
        }
        turn.core.on_write(req);
        let out = turn.core.flush();
        let pollers = Pollers { mailboxes: &self.inbox.pollers, inbox: &self.inbox };
        let to = Outlets {
            ctx: &self.ctx,
            pollers: &pollers,
            transport: self.transport.as_ref(),
            writer,
        };
        // A failure stopped the store (cancelled): the poller answers what waits.
        finish_turn(turn, out, &to, Persist::Here);
        None
    }
}
