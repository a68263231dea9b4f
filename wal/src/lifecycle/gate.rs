//! A gate: tasks enter and hold a guard; closing waits until they have all left.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// Entering a gate that is closed (shutdown has begun).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the gate is closed: shutdown has begun")]
pub struct GateClosed;

/// Closing a gate timed out with tasks still inside.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("gate still held after {waited:?} by: {holders:?}")]
pub struct GateTimeout {
    /// How long `close` waited.
    pub waited: Duration,
    /// The names given to [`Gate::enter`] by the tasks still inside.
    pub holders: Vec<&'static str>,
}

/// Counts the tasks working on something, so that shutdown can wait for them.
///
/// Clones share the gate.
#[derive(Clone, Default)]
pub struct Gate {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    state: Mutex<State>,
    emptied: Condvar,
}

#[derive(Default)]
struct State {
    closed: bool,
    holders: BTreeMap<u64, &'static str>,
    next_id: u64,
}

impl fmt::Debug for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.inner.state.lock();
        f.debug_struct("Gate")
            .field("closed", &st.closed)
            .field("holders", &st.holders.len())
            .finish()
    }
}

/// Proof of being inside a [`Gate`]; leaving is dropping it.
#[must_use = "the task leaves the gate when the guard is dropped"]
pub struct GateGuard {
    inner: Arc<Inner>,
    id: u64,
}

impl fmt::Debug for GateGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GateGuard").field("id", &self.id).finish_non_exhaustive()
    }
}

impl Drop for GateGuard {
    fn drop(&mut self) {
        let mut st = self.inner.state.lock();
        st.holders.remove(&self.id);
        if st.holders.is_empty() {
            self.inner.emptied.notify_all();
        }
    }
}

impl Gate {
    /// An open gate with nobody inside.
    pub fn new() -> Self {
        Self::default()
    }

    /// Enters the gate as `holder` (named in timeouts), unless it is closed.
    pub fn enter(&self, holder: &'static str) -> Result<GateGuard, GateClosed> {
        let mut st = self.inner.state.lock();
        if st.closed {
            return Err(GateClosed);
        }
        let id = st.next_id;
        st.next_id += 1;
        st.holders.insert(id, holder);
        Ok(GateGuard { inner: self.inner.clone(), id })
    }

    /// Closes the gate (no one enters any more) and waits up to `timeout` until every
    /// holder has left. Calling it again waits again.
    pub fn close(&self, timeout: Duration) -> Result<(), GateTimeout> {
        let start = Instant::now();
        let deadline = start + timeout;
        let mut st = self.inner.state.lock();
        st.closed = true;
        while !st.holders.is_empty() {
            if self.inner.emptied.wait_until(&mut st, deadline).timed_out()
                && !st.holders.is_empty()
            {
                return Err(GateTimeout {
                    waited: start.elapsed(),
                    holders: st.holders.values().copied().collect(),
                });
            }
        }
        Ok(())
    }

    /// True once [`Gate::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.inner.state.lock().closed
    }

    /// Names of the tasks inside now.
    pub fn holders(&self) -> Vec<&'static str> {
        self.inner.state.lock().holders.values().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_waits_for_holders_and_refuses_newcomers() {
        let gate = Gate::new();
        let guard = gate.enter("worker").unwrap();
        let closer = {
            let gate = gate.clone();
            std::thread::spawn(move || gate.close(Duration::from_secs(60)))
        };
        while !gate.is_closed() {
            std::thread::yield_now();
        }
        assert!(matches!(gate.enter("late"), Err(GateClosed)));
        drop(guard);
        assert_eq!(closer.join().unwrap(), Ok(()));
    }

    #[test]
    fn a_timeout_names_who_is_still_inside() {
        let gate = Gate::new();
        let _stuck = gate.enter("stuck-ingest").unwrap();
        let _other = gate.enter("compaction").unwrap();
        let err = gate.close(Duration::from_millis(10)).unwrap_err();
        assert_eq!(err.holders, vec!["stuck-ingest", "compaction"]);
        assert!(err.waited >= Duration::from_millis(10));
    }
}
