//! regionkv-check: records histories of key-value operations as clients saw them, and
//! checks that each key's history is linearizable against a register.
//!
//! A test wraps every call it makes to the store under test:
//!
//! ```
//! use regionkv_check::{Op, Recorder};
//!
//! let rec = Recorder::new();
//! let call = rec.invoke(b"k".to_vec(), Op::Put(b"1".to_vec()));
//! // ... the put returned Ok
//! rec.ok(call, None);
//! let call = rec.invoke(b"k".to_vec(), Op::Get);
//! rec.ok(call, Some(b"1".to_vec())); // what the get returned
//! let report = regionkv_check::check(&rec.history(), 100_000);
//! assert!(report.is_linearizable(), "{report}");
//! ```
//!
//! # What an outcome means
//!
//! - [`Recorder::ok`]: the call returned; for a get, with the value it read.
//! - [`Recorder::unknown`]: the call's outcome is unknown (a timeout, a lost
//!   connection, a shutdown while in flight). A write stays *open forever*: it may take
//!   effect at any moment after its invocation, or never. A read with no result says
//!   nothing and is dropped.
//! - [`Recorder::failed`]: the call is known not to have taken effect (refused before
//!   it was proposed); it is dropped.
//!
//! # The check
//!
//! Keys are independent registers, so each key's history is checked alone (the
//! problem is exponential in the concurrency of one history, not in its length). The
//! search is Wing and Gong's: repeatedly pick an operation that could take effect next
//! (one invoked before every pending operation's return), apply it to the register if
//! the register agrees with its result, and backtrack on a dead end; states already
//! seen (the set of operations taken plus the register's value) are not searched again
//! (Lowe's memoization). A history passes when every operation that returned has been
//! taken; open writes may be taken or not.
//!
//! Time is a logical clock taken at invocation and at return ([`Recorder`] is shared by
//! every client thread): if a call returned before another was invoked in real time,
//! its return stamp is smaller than the other's invocation stamp, which is all the
//! check needs.

use std::collections::{BTreeMap, HashSet};
use std::fmt::{self, Write as _};
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

/// An operation on one key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Op<V> {
    /// Read the key.
    Get,
    /// Set the key to a value.
    Put(V),
    /// Remove the key.
    Delete,
}

/// A recorded call's handle, returned by [`Recorder::invoke`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "every invoked call must be completed with ok, unknown or failed"]
pub struct Call(usize);

/// How a call ended.
#[derive(Clone, Debug, PartialEq, Eq)]
enum End<V> {
    /// Not ended yet: treated like `Unknown` by [`Recorder::history`].
    Pending,
    /// Returned at this stamp; a get's result.
    Ok { at: u64, read: Option<V> },
    /// Outcome unknown.
    Unknown,
    /// Known not to have happened.
    Failed,
}

#[derive(Clone, Debug)]
struct Record<K, V> {
    key: K,
    op: Op<V>,
    invoked: u64,
    end: End<V>,
}

/// Records the calls of many client threads (`Sync`: share it by reference or `Arc`).
#[derive(Debug)]
pub struct Recorder<K, V> {
    clock: AtomicU64,
    calls: Mutex<Vec<Record<K, V>>>,
}

impl<K: Clone, V: Clone> Default for Recorder<K, V> {
    fn default() -> Self {
        Recorder::new()
    }
}

impl<K: Clone, V: Clone> Recorder<K, V> {
    /// An empty history.
    pub fn new() -> Recorder<K, V> {
        Recorder { clock: AtomicU64::new(1), calls: Mutex::new(Vec::new()) }
    }

    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::SeqCst)
    }

    /// Records that a call is about to be made; call it right before the call.
    pub fn invoke(&self, key: K, op: Op<V>) -> Call {
        let mut calls = self.calls.lock();
        // Stamped under the lock, so stamps and positions agree.
        let invoked = self.tick();
        calls.push(Record { key, op, invoked, end: End::Pending });
        Call(calls.len() - 1)
    }

    /// The call returned successfully; `read` is what a get returned (`None` for
    /// writes, and for a get that found no value).
    pub fn ok(&self, call: Call, read: Option<V>) {
        let at = self.tick();
        self.calls.lock()[call.0].end = End::Ok { at, read };
    }

    /// The call's outcome is unknown: a write stays open forever, a read is dropped.
    pub fn unknown(&self, call: Call) {
        self.calls.lock()[call.0].end = End::Unknown;
    }

    /// The call is known not to have taken effect; it is dropped.
    pub fn failed(&self, call: Call) {
        self.calls.lock()[call.0].end = End::Failed;
    }

    /// The history so far. Calls not yet ended count as unknown.
    pub fn history(&self) -> History<K, V> {
        History { calls: self.calls.lock().clone() }
    }
}

/// A recorded history, ready to check.
#[derive(Clone, Debug)]
pub struct History<K, V> {
    calls: Vec<Record<K, V>>,
}

impl<K, V> History<K, V> {
    /// Calls recorded, of every outcome.
    pub fn len(&self) -> usize {
        self.calls.len()
    }

    /// True if nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }
}

/// One operation as the search sees it.
#[derive(Clone, Debug)]
struct Entry<V> {
    op: Op<V>,
    invoked: u64,
    /// `u64::MAX` for an open write.
    returned: u64,
    /// For a get that returned: what it read.
    read: Option<V>,
}

impl<V> Entry<V> {
    fn is_open(&self) -> bool {
        self.returned == u64::MAX
    }
}

/// What [`check`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// Keys checked.
    pub keys: usize,
    /// Operations checked (returned ones and open writes; dropped calls excluded).
    pub operations: usize,
    /// Open writes among them (outcome unknown).
    pub open_writes: usize,
    /// Search states explored, over every key.
    pub states: u64,
    /// Keys whose history is not linearizable, with a rendering of each history.
    pub violations: Vec<String>,
    /// Keys whose search ran out of its state budget (neither proved nor refuted).
    pub inconclusive: Vec<String>,
}

impl Report {
    /// True if every key was proved linearizable.
    pub fn is_linearizable(&self) -> bool {
        self.violations.is_empty() && self.inconclusive.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} keys, {} operations ({} open writes), {} states: ",
            self.keys, self.operations, self.open_writes, self.states
        )?;
        if self.is_linearizable() {
            return write!(f, "linearizable");
        }
        for v in &self.violations {
            write!(f, "\nNOT LINEARIZABLE: {v}")?;
        }
        for v in &self.inconclusive {
            write!(f, "\nINCONCLUSIVE (state budget exhausted): {v}")?;
        }
        Ok(())
    }
}

/// Checks every key's history, exploring at most `max_states_per_key` search states
/// for each (a key over budget is reported inconclusive, never as passing).
pub fn check<K, V>(history: &History<K, V>, max_states_per_key: u64) -> Report
where
    K: Ord + Clone + fmt::Debug,
    V: Clone + Eq + Hash + fmt::Debug,
{
    let mut by_key: BTreeMap<K, Vec<Entry<V>>> = BTreeMap::new();
    for call in &history.calls {
        let entry = match (&call.end, &call.op) {
            (End::Ok { at, read }, _) => Entry {
                op: call.op.clone(),
                invoked: call.invoked,
                returned: *at,
                read: read.clone(),
            },
            // An open write: it may have happened, at any time after its invocation.
            (End::Pending | End::Unknown, Op::Put(_) | Op::Delete) => {
                Entry { op: call.op.clone(), invoked: call.invoked, returned: u64::MAX, read: None }
            }
            // A read without a result, or a call known not to have happened.
            (End::Pending | End::Unknown, Op::Get) | (End::Failed, _) => continue,
        };
        by_key.entry(call.key.clone()).or_default().push(entry);
    }
    let mut report = Report {
        keys: by_key.len(),
        operations: 0,
        open_writes: 0,
        states: 0,
        violations: Vec::new(),
        inconclusive: Vec::new(),
    };
    for (key, entries) in by_key {
        report.operations += entries.len();
        report.open_writes += entries.iter().filter(|e| e.is_open()).count();
        let (verdict, states) = search(&entries, max_states_per_key);
        report.states += states;
        match verdict {
            Verdict::Linearizable => {}
            Verdict::NotLinearizable => {
                report
                    .violations
                    .push(render(&key, &shortest_failing_prefix(&entries, max_states_per_key)));
            }
            Verdict::OutOfBudget => report.inconclusive.push(render(&key, &entries)),
        }
    }
    report
}

/// The history as it stood at the earliest moment it was already not linearizable,
/// to show where it went wrong: calls invoked after that moment are left out, and calls
/// that had not returned by then are open (writes) or dropped (reads). Found by
/// bisection over the return stamps (a history cut later than a failing cut fails too).
fn shortest_failing_prefix<V: Clone + Eq + Hash>(
    entries: &[Entry<V>],
    max_states: u64,
) -> Vec<Entry<V>> {
    let cut = |at: u64| -> Vec<Entry<V>> {
        entries
            .iter()
            .filter(|e| e.invoked <= at)
            .filter_map(|e| match (&e.op, e.returned <= at) {
                (_, true) => Some(e.clone()),
                (Op::Get, false) => None,
                (_, false) => Some(Entry { returned: u64::MAX, read: None, ..e.clone() }),
            })
            .collect()
    };
    let mut stamps: Vec<u64> =
        entries.iter().filter(|e| !e.is_open()).map(|e| e.returned).collect();
    stamps.sort_unstable();
    let fails = |at: u64| search(&cut(at), max_states).0 == Verdict::NotLinearizable;
    // The smallest cut that fails (the whole history does).
    let (mut lo, mut hi) = (0, stamps.len());
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if fails(stamps[mid]) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    match stamps.get(lo) {
        Some(&at) => cut(at),
        None => entries.to_vec(),
    }
}

fn render<K: fmt::Debug, V: fmt::Debug>(key: &K, entries: &[Entry<V>]) -> String {
    // The end is where it went wrong; what came long before rarely matters.
    const SHOWN: usize = 24;
    let mut sorted: Vec<&Entry<V>> = entries.iter().collect();
    sorted.sort_by_key(|e| e.invoked);
    let skipped = sorted.len().saturating_sub(SHOWN);
    let mut out = format!("key {key:?}, up to the first call that cannot be explained:");
    if skipped > 0 {
        let _ = write!(out, "\n  ({skipped} earlier calls not shown)");
    }
    for e in &sorted[skipped..] {
        let ret = if e.is_open() { "open".to_string() } else { e.returned.to_string() };
        let read = match (&e.op, &e.read) {
            (Op::Get, r) => format!(" -> {r:?}"),
            _ => String::new(),
        };
        let _ = write!(out, "\n  [{}, {ret}] {:?}{read}", e.invoked, e.op);
    }
    out
}

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Linearizable,
    NotLinearizable,
    OutOfBudget,
}

/// Wing–Gong search with memoization over one key's operations.
fn search<V: Clone + Eq + Hash>(entries: &[Entry<V>], max_states: u64) -> (Verdict, u64) {
    let n = entries.len();
    let words = n.div_ceil(64);
    let required = entries.iter().filter(|e| !e.is_open()).count();
    // Operations in invocation order, so that candidates are a prefix scan.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| entries[i].invoked);

    let mut seen: HashSet<(Vec<u64>, Option<V>)> = HashSet::new();
    // Depth-first: (taken set, register value, required ops taken).
    let mut stack: Vec<(Vec<u64>, Option<V>, usize)> = vec![(vec![0; words], None, 0)];
    let mut states = 0u64;
    while let Some((taken, value, done)) = stack.pop() {
        if done == required {
            return (Verdict::Linearizable, states);
        }
        if !seen.insert((taken.clone(), value.clone())) {
            continue;
        }
        states += 1;
        if states > max_states {
            return (Verdict::OutOfBudget, states);
        }
        let is_taken = |i: usize| taken[i / 64] & (1 << (i % 64)) != 0;
        // Every operation not taken must still be able to follow the next one: the
        // next one must be invoked before the earliest return among those not taken.
        let earliest_return =
            (0..n).filter(|&i| !is_taken(i)).map(|i| entries[i].returned).min().unwrap_or(u64::MAX);
        for &i in &order {
            let e = &entries[i];
            if e.invoked > earliest_return {
                break;
            }
            if is_taken(i) {
                continue;
            }
            let next = match &e.op {
                Op::Get if e.read == value => value.clone(),
                Op::Get => continue,
                Op::Put(v) => Some(v.clone()),
                Op::Delete => None,
            };
            let mut next_taken = taken.clone();
            next_taken[i / 64] |= 1 << (i % 64);
            let next_done = done + usize::from(!e.is_open());
            stack.push((next_taken, next, next_done));
        }
    }
    (Verdict::NotLinearizable, states)
}

/// A tiny deterministic generator (xorshift) for the workloads that feed a
/// [`Recorder`]: a client seeded alike makes the same calls, whatever the interleaving.
#[derive(Clone, Debug)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator from `seed` (zero is replaced: xorshift stays at zero).
    pub fn new(seed: u64) -> XorShift {
        XorShift(if seed == 0 { 0x9E37_79B9_7F4A_7C15 } else { seed })
    }

    /// The next number.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[cfg(test)]
mod tests;
