//! What a durable put on one store costs in heap allocations on its caller's thread (the
//! caller's turn runs the whole write there: ARCHITECTURE.md, "The caller's turn").
//!
//! At one client thread a put waits for its fsync, and the CPU around it is what sets it
//! apart from a plain embedded store (issue 13); a put took 76 allocations, most of
//! them buffers grown step by step or collections made anew for every ready pass. This
//! counts them, on this thread only, so other threads (the poller's ticks, the WAL's
//! spare preparation) do not blur the figure. A count, not a timing.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Duration;

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is passed to the system allocator unchanged; the counter is a
// thread-local cell, which allocates nothing.
#[allow(unsafe_code, reason = "a global allocator that counts, for this test only")]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: the caller's contract is passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: the caller's contract is passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

/// Key `i` in a scattered order, 24 bytes, as the `kv` bench writes them.
fn key(i: u64) -> String {
    format!("{:016x}{:08x}", i.wrapping_mul(0x9E37_79B9_7F4A_7C15), i)
}

#[test]
fn a_put_on_one_store_allocates_little_on_its_callers_thread() {
    const WARM: u64 = 300;
    const N: u64 = 500;
    let dir = tempfile::tempdir().unwrap();
    let cluster = common::one_store(dir.path(), Duration::from_millis(50));
    let db = cluster.db();
    let value = vec![b'v'; 150];
    for i in 0..WARM {
        db.put(key(i), value.clone()).unwrap();
    }
    let keys: Vec<String> = (WARM..WARM + N).map(key).collect();
    let values: Vec<Vec<u8>> = (0..N).map(|_| value.clone()).collect();
    let before = allocations();
    for (k, v) in keys.into_iter().zip(values) {
        db.put(k, v).unwrap();
    }
    let total = allocations() - before;
    let per_put = format!("{}.{}", total / N, total * 10 / N % 10);
    eprintln!("{per_put} allocations per put on the caller's thread");
    // 73 before, 52 after. What is left: the client's request and session, the Raft
    // entry and its ready, the WAL group, the memtable leaf copied on write.
    assert!(total <= 56 * N, "{per_put} allocations per put");
    cluster.shutdown().unwrap();
}
