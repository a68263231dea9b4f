//! A hierarchical cancellation token.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// A flag that goes from "running" to "cancelled" once, and takes its children with it.
///
/// Clones share the flag. [`CancellationToken::child`] makes a token that is cancelled
/// when its parent is (or when cancelled itself), but whose cancellation does not reach
/// the parent: store -> timeline -> ingest task.
#[derive(Clone, Default)]
pub struct CancellationToken {
    node: Arc<Node>,
}

#[derive(Default)]
struct Node {
    cancelled: AtomicBool,
    /// The parent, read by `is_cancelled`: a descendant is cancelled the instant an
    /// ancestor's flag flips, not only once `cancel` has walked down to it (in that
    /// window a thread that watched the ancestor could already have acted, and an error
    /// it caused must be seen as cancellation).
    parent: Option<Arc<Node>>,
    /// Children to cancel with this node; dead ones are pruned as children are added.
    children: Mutex<Vec<Weak<Node>>>,
    cancelled_signal: Condvar,
}

impl fmt::Debug for CancellationToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancellationToken").field("cancelled", &self.is_cancelled()).finish()
    }
}

impl CancellationToken {
    /// A token that is not cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// A token cancelled together with this one (and on its own).
    #[must_use]
    pub fn child(&self) -> CancellationToken {
        let mut children = self.node.children.lock();
        // Checked under the lock that `cancel` takes after setting the flag: a child
        // made concurrently with `cancel` is either in the list it walks, or sees the flag.
        let child = Node {
            cancelled: AtomicBool::new(self.is_cancelled()),
            parent: Some(self.node.clone()),
            ..Node::default()
        };
        let child = Arc::new(child);
        children.retain(|c| c.strong_count() > 0);
        children.push(Arc::downgrade(&child));
        CancellationToken { node: child }
    }

    /// Cancels this token and all its descendants. Idempotent.
    pub fn cancel(&self) {
        let mut pending = vec![self.node.clone()];
        while let Some(node) = pending.pop() {
            if node.cancelled.swap(true, Ordering::AcqRel) {
                continue;
            }
            let children = std::mem::take(&mut *node.children.lock());
            node.cancelled_signal.notify_all();
            pending.extend(children.iter().filter_map(Weak::upgrade));
        }
    }

    /// True once this token or an ancestor was cancelled. Never goes back to false.
    pub fn is_cancelled(&self) -> bool {
        let mut node = Some(&self.node);
        while let Some(n) = node {
            if n.cancelled.load(Ordering::Acquire) {
                return true;
            }
            node = n.parent.as_ref();
        }
        false
    }

    /// Waits up to `timeout` for cancellation; true if cancelled.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut children = self.node.children.lock();
        while !self.is_cancelled() {
            if self.node.cancelled_signal.wait_until(&mut children, deadline).timed_out() {
                return self.is_cancelled();
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancelling_a_parent_cancels_descendants_but_not_the_reverse() {
        let store = CancellationToken::new();
        let timeline = store.child();
        let task = timeline.child();
        let sibling = store.child();
        task.cancel();
        assert!(task.is_cancelled());
        assert!(!timeline.is_cancelled() && !store.is_cancelled());
        store.cancel();
        assert!(timeline.is_cancelled() && sibling.is_cancelled());
        assert!(store.child().is_cancelled(), "a child of a cancelled token starts cancelled");
    }

    #[test]
    fn waiting_wakes_on_cancel_from_another_thread() {
        let token = CancellationToken::new();
        let child = token.child();
        let waiter = std::thread::spawn(move || child.wait_timeout(Duration::from_secs(60)));
        token.cancel();
        assert!(waiter.join().unwrap());
        assert!(!CancellationToken::new().wait_timeout(Duration::from_millis(1)));
    }

    #[test]
    fn a_descendant_is_cancelled_the_instant_its_ancestor_flag_flips() {
        let store = CancellationToken::new();
        let task = store.child().child();
        // The moment inside `cancel` after the store's flag is set and before the walk
        // reaches the descendants: a thread that saw the store cancelled may already
        // have acted, and the task must already count as cancelled.
        store.node.cancelled.store(true, Ordering::Release);
        assert!(task.is_cancelled());
    }

    #[test]
    fn dropped_children_are_pruned() {
        let token = CancellationToken::new();
        for _ in 0..1000 {
            drop(token.child());
        }
        assert!(token.node.children.lock().len() <= 1);
    }
}
