//! Where a store's confirmed scans run: [`Scans`] hands each one from the poller to the
//! poller's reader thread ([`reader_loop`]), so that a scan never holds up the ticks,
//! messages and requests of the poller's other regions; the simulator runs them inline.
//! And where a read needs no poller at all: [`LocalReads`], the regions whose only
//! voter is this store's leader, whose gets and scans run on the caller's thread.
//!
//! The poller does every check first (epoch, readable, the read index applied), takes
//! the engine's read view and clamps the range to the region (`core/apply.rs`
//! `serve_reads`): a [`ScanJob`] only reads that view, which holds its versions for as
//! long as it lives (see ARCHITECTURE.md, "Reads").

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use bytes::Bytes;
use parking_lot::RwLock;
use regionkv_engine::{ReadView, Region, RegionId};

use crate::core::StoreContext;
use crate::error::{Error, Result};
use crate::mailbox::{Lane, Mailbox, SendError};
use crate::request::{Page, Query, QueryResult, ReadRequest, Reply, ScanCaps, scan_page};

/// Scans queued for one reader thread at most; past it, the poller runs a scan
/// itself (bounded by the store's caps) rather than wait or refuse.
const READER_QUEUE: usize = 1024;

/// One confirmed scan, ready to run anywhere: its read view, range and reply.
pub(crate) struct ScanJob {
    /// The region (for the scan hook).
    pub region: RegionId,
    /// The engine's view at the read's applied index.
    pub view: ReadView,
    /// First key, already clamped to the region.
    pub start: Bytes,
    /// End key (exclusive), already clamped to the region.
    pub end: Option<Bytes>,
    /// The client's limit.
    pub limit: usize,
    /// The store's caps.
    pub caps: ScanCaps,
    /// The first lock in the range (its key and encoded lock), looked up before `view`
    /// was taken: the scan is refused if its page's range holds it.
    pub lock: Option<(Bytes, Bytes)>,
    /// Called with the page.
    pub reply: Reply<QueryResult>,
}

impl ScanJob {
    fn run(self, ctx: &StoreContext) {
        ctx.before_scan(self.region);
        let page = scan_page(&self.view, &self.start, self.end.as_deref(), self.limit, self.caps);
        drop(self.view); // the versions it held may go before the client reads the page
        (self.reply)(refuse_locked(page, self.limit, self.lock.as_ref()));
    }
}

/// The first lock (its key and encoded lock) that `query` (a get of a key `region`
/// holds, or a scan clamped to it) meets in `engine`, as published. Looked up BEFORE
/// the read view is taken: a lock leaves the table in the round that writes its value,
/// so a read that finds none here reads the resolved value (ARCHITECTURE.md,
/// "Transactions"). No lookup at all while no region of the store holds a lock.
pub(crate) fn first_lock(
    engine: &regionkv_engine::Engine,
    region: &Region,
    query: &Query,
) -> Option<(Bytes, Bytes)> {
    if !engine.has_txn_locks() {
        return None;
    }
    match query {
        Query::Get { key, read_ts } if region.contains(key) => engine
            .txn_lock(region.id, key)
            .filter(|lock| !above_the_read(lock, *read_ts))
            .map(|lock| (key.clone(), lock)),
        Query::Get { .. } | Query::Scan { limit: 0, .. } => None,
        Query::Scan { start, end, .. } => {
            engine.txn_locks(region.id, start, end.as_deref(), 1).into_iter().next()
        }
    }
}

/// True if a snapshot get at `read_ts` reads past the lock `encoded`: an async-commit
/// lock of a snapshot transaction whose minimum commit timestamp is above the read.
///
/// Why that is safe: the transaction commits at the largest minimum commit timestamp
/// of its locks (`txn::staging`), so at or above this one, above the read: the
/// version it will write is invisible at `read_ts`, and the version below the lock is
/// the answer. Why a read at or above it still meets the lock: the read raised its
/// region's `max_read_ts` (`txn::concurrency`) before it looked for locks; a prewrite
/// stamped after that lands above the read, and one stamped before holds its
/// in-memory lock (refusing the read `CommitPending`) until the lock below is
/// visible. A scan does not read past (it resolves or waits for every lock it meets).
fn above_the_read(encoded: &[u8], read_ts: Option<u64>) -> bool {
    let Some(read_ts) = read_ts else { return false };
    regionkv_engine::txn::Lock::decode(encoded)
        .is_ok_and(|lock| lock.min_commit_ts.is_some_and(|ts| ts > read_ts))
}

/// `page` (of a scan with `limit`), or `Error::Locked` if the range it answers (up to
/// its resume key, or its last row once the limit is reached, or the whole range)
/// holds `lock`.
pub(crate) fn refuse_locked(
    page: Page,
    limit: usize,
    lock: Option<&(Bytes, Bytes)>,
) -> Result<QueryResult> {
    let Some((key, encoded)) = lock else { return Ok(QueryResult::Rows(page)) };
    let answered = match (&page.resume, page.rows.last()) {
        _ if limit == 0 => false,
        (Some(resume), _) => key < resume,
        (None, Some((last, _))) if page.rows.len() >= limit => key <= last,
        (None, _) => true,
    };
    if answered { Err(crate::txn::locked(key, encoded)) } else { Ok(QueryResult::Rows(page)) }
}

/// Where a core runs its confirmed scans.
pub(crate) enum Scans {
    /// On the core's own thread, at once: the simulator's choice (one thread, and
    /// every outcome in the order a seed replays).
    Inline,
    /// Queued for a reader thread ([`reader_loop`]).
    Reader(Arc<Mailbox<ScanJob>>),
}

impl Scans {
    /// Runs `job` or hands it to the reader. Every job is answered: by its page, or
    /// `Cancelled` if the reader stopped (the store shuts down).
    pub fn submit(&self, ctx: &StoreContext, job: ScanJob) {
        match self {
            Scans::Inline => job.run(ctx),
            Scans::Reader(queue) => match queue.try_send(Lane::Client, job) {
                Ok(()) => {}
                // A reader far behind: this scan runs here, bounded by the caps.
                Err(SendError::Full(job)) => job.run(ctx),
                Err(SendError::Closed(job)) => (job.reply)(Err(Error::Cancelled)),
            },
        }
    }
}

/// Starts reader thread `i` of the store: the queue a core hands its scans to
/// ([`Scans::Reader`]), and the thread, which stops once the store is cancelled.
pub(crate) fn spawn(
    ctx: &Arc<StoreContext>,
    i: usize,
) -> Result<(Arc<Mailbox<ScanJob>>, JoinHandle<()>)> {
    // Scans ride the client lane only.
    let queue = Arc::new(Mailbox::new(1, READER_QUEUE));
    let (ctx, theirs) = (ctx.clone(), queue.clone());
    let thread = std::thread::Builder::new()
        .name(format!("s{}-reader-{i}", ctx.config.store_id.0))
        .spawn(move || reader_loop(&ctx, &theirs))
        .map_err(|e| Error::Internal(format!("spawn reader: {e}")))?;
    Ok((queue, thread))
}

/// A reader thread: runs the scans its poller queues, in order, until the store is
/// cancelled; then refuses what is queued (`Cancelled`) and every later scan (the
/// queue is closed, so the poller answers them), and returns.
fn reader_loop(ctx: &StoreContext, queue: &Mailbox<ScanJob>) {
    let poll = ctx.config.tick_interval;
    let mut jobs = Vec::new();
    // Bounded by cancellation, seen within one `poll` of a wait.
    loop {
        let open = queue.recv_all(&mut jobs, Instant::now() + poll, true);
        if ctx.cancel.is_cancelled() {
            queue.close();
            queue.recv_all(&mut jobs, Instant::now(), true);
            for job in jobs.drain(..) {
                (job.reply)(Err(Error::Cancelled));
            }
            return;
        }
        for job in jobs.drain(..) {
            job.run(ctx);
        }
        if !open {
            return;
        }
    }
}

/// The regions of a store whose gets are answered on the caller's thread, without a
/// `ReadIndex` round on the poller: those whose only voter is this store's replica,
/// which leads, has committed an entry of its term and applied everything committed.
/// See ARCHITECTURE.md, "Reads".
///
/// Why that is linearizable: in a group of one voter, nothing commits but what this
/// replica commits, and it answers a write only once the write's round is visible in
/// the engine; a `ReadIndex` there is a local check that the poller would answer with
/// the commit index, already applied. So a read view taken while the region is listed
/// holds every write answered before the read arrived. The poller takes a region off
/// the list (under the write lock) before anything that could let another peer commit:
/// before it applies a membership change or an admin command (`core/apply.rs`), and
/// when its replica stops leading, halts, merges or goes (`StoreCore::publish_reads`);
/// a read that saw the region listed took its view before that, so it is answered at a
/// point when this replica was still the only one that could commit.
#[derive(Debug, Default)]
pub(crate) struct LocalReads {
    regions: RwLock<HashMap<RegionId, Region>>,
}

impl LocalReads {
    /// Lists `region` (replacing its previous shape).
    pub fn insert(&self, region: &Region) {
        self.regions.write().insert(region.id, region.clone());
    }

    /// Takes `region` off the list.
    pub fn remove(&self, region: RegionId) {
        self.regions.write().remove(&region);
    }

    /// Answers `req` here, on the caller's thread, if its region is listed at the
    /// request's epoch: a get of a key the region holds, or a scan (its range clamped
    /// to the region, capped by the store's caps, through the scan hook like any
    /// other). Otherwise gives it back for the poller (which also makes every
    /// refusal, with its details).
    pub fn serve(&self, ctx: &StoreContext, req: ReadRequest) -> Option<ReadRequest> {
        let regions = self.regions.read();
        let Some(region) = regions.get(&req.region) else { return Some(req) };
        if region.epoch.version != req.epoch.version {
            return Some(req);
        }
        if let Query::Get { key, .. } = &req.query
            && !region.contains(key)
        {
            return Some(req);
        }
        // Recorded before the view is taken (`txn::concurrency`).
        if let Err(e) = ctx.concurrency.observe_read(req.region, &req.query) {
            drop(regions);
            (req.reply)(Err(e));
            return None;
        }
        let engine = ctx.engine_of(req.region);
        let ReadRequest { region: id, query, reply, .. } = req;
        let query = match query {
            Query::Scan { start, end, limit, read_ts } => {
                let (start, end) = clamp(region, start, end);
                Query::Scan { start, end, limit, read_ts }
            }
            get @ Query::Get { .. } => get,
        };
        // Before the view (see `first_lock`).
        let lock = first_lock(engine, region, &query);
        // Taken while listed: see the type's docs.
        let view = engine.read_view();
        drop(regions);
        // A snapshot read is admitted against the view just taken (`txn::read_ts`).
        let admitted =
            query.read_ts().map_or(Ok(()), |ts| crate::txn::read_ts::admit(engine, id, ts));
        let answer = match query {
            _ if let Err(e) = admitted => Err(e),
            Query::Get { .. } if let Some((key, encoded)) = &lock => {
                Err(crate::txn::locked(key, encoded))
            }
            Query::Get { key, .. } => Ok(QueryResult::Value(view.get(&key))),
            Query::Scan { start, end, limit, .. } => {
                ctx.before_scan(id);
                let caps = ctx.config.scan_caps();
                let page = scan_page(&view, &start, end.as_deref(), limit, caps);
                refuse_locked(page, limit, lock.as_ref())
            }
        };
        drop(view); // the versions it held may go before the caller reads the answer
        reply(answer);
        None
    }
}

/// `[start, end)` cut to `region`'s range.
pub(crate) fn clamp(region: &Region, start: Bytes, end: Option<Bytes>) -> (Bytes, Option<Bytes>) {
    let start = if start.as_ref() < region.start.as_slice() {
        Bytes::copy_from_slice(&region.start)
    } else {
        start
    };
    let end = match (end, region.end.as_deref()) {
        (Some(a), Some(b)) if b < a.as_ref() => Some(Bytes::copy_from_slice(b)),
        (Some(a), _) => Some(a),
        (None, b) => b.map(Bytes::copy_from_slice),
    };
    (start, end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(keys: &[&str], resume: Option<&str>) -> Page {
        Page {
            rows: keys.iter().map(|k| (Bytes::from(k.to_string()), Bytes::new())).collect(),
            resume: resume.map(|r| Bytes::from(r.to_string())),
        }
    }

    /// A lock on `key` (its bytes, unreadable, do not matter here).
    fn lock(key: &str) -> (Bytes, Bytes) {
        (Bytes::from(key.to_string()), Bytes::from_static(&[0xff]))
    }

    fn refused(page: Page, limit: usize, key: &str) -> bool {
        matches!(refuse_locked(page, limit, Some(&lock(key))), Err(Error::Locked { .. }))
    }

    #[test]
    fn a_scan_is_refused_only_if_the_range_its_page_answers_holds_the_lock() {
        // The whole range answered (the limit not reached, no resume): any lock in it.
        assert!(refused(page(&["a", "c"], None), 10, "z"));
        assert!(refused(page(&[], None), 10, "b"));
        // The limit reached: up to the last row, included.
        assert!(refused(page(&["a", "c"], None), 2, "c"));
        assert!(refused(page(&["a", "c"], None), 2, "b"));
        assert!(!refused(page(&["a", "c"], None), 2, "d"));
        // Capped by the store: up to the resume key, excluded.
        assert!(refused(page(&["a"], Some("c")), 10, "b"));
        assert!(!refused(page(&["a"], Some("c")), 10, "c"));
        // Nothing asked, nothing answered; no lock, the page.
        assert!(!refused(page(&[], None), 0, "a"));
        assert!(matches!(refuse_locked(page(&["a"], None), 5, None), Ok(QueryResult::Rows(_))));
    }
}
