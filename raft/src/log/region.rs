//! One region's Raft log in memory: where each entry is, and the entries cached.

use std::collections::VecDeque;

use raft::eraftpb::Entry;
use regionkv_wal::Lsn;

use super::batch::{EntrySpan, IdFloor, LogState};

/// Where an entry's bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Location {
    /// Staged by a ready; written by the batch `write` once that batch is durable.
    Pending { write: u64 },
    /// In the WAL record at `lsn`, at `span`.
    Durable { lsn: Lsn, span: EntrySpan },
}

/// One entry of the log.
#[derive(Clone, Debug)]
pub(crate) struct Slot {
    pub term: u64,
    pub location: Location,
    /// The entry itself, if cached; pending entries are always cached.
    pub cached: Option<Entry>,
}

/// A region's log: entries `first_index..first_index + slots.len()`, and its state.
#[derive(Debug)]
pub(crate) struct RegionLog {
    pub state: LogState,
    pub slots: VecDeque<Slot>,
    /// The record holding the latest durable state of this region, if any.
    pub state_lsn: Option<Lsn>,
    /// Bytes of cached entries.
    pub cached_bytes: usize,
    /// No entry below this index is cached: where `evict` starts, so that a persist
    /// costs the entries newly durable, not the whole log. Only `stage` caches, and
    /// it truncates first, which lowers this to the first staged index.
    uncached_below: u64,
    /// Set when the log is tombstoned: a handle kept by a peer finds it gone.
    pub removed: bool,
    /// Recovery only: the WAL was purged below the first entries found, which its
    /// state (an older record) still names; a later state record must compact the log
    /// that far (`RaftLog::open` checks it).
    pub unconfirmed_start: Option<UnconfirmedStart>,
}

/// Where a recovered log starts after a purge, until a state record confirms it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct UnconfirmedStart {
    /// The last index the older state names (`None`: no state was found before).
    pub after: Option<u64>,
    /// The first entry found.
    pub at: u64,
    /// The record it was found in.
    pub lsn: Lsn,
}

/// The later of two id floors of one region. A floor only rises; a state record
/// staged before a split (without the floor the split made durable first) may reach
/// the WAL after it, and must not take the floor back.
pub(crate) fn newest_floor(a: Option<IdFloor>, b: Option<IdFloor>) -> Option<IdFloor> {
    match (a, b) {
        (Some(a), Some(b)) => {
            Some(if (b.next_id, b.set_at) > (a.next_id, a.set_at) { b } else { a })
        }
        (a, b) => a.or(b),
    }
}

pub(crate) fn entry_bytes(e: &Entry) -> usize {
    e.data.len() + e.context.len() + 64
}

impl RegionLog {
    pub fn new(state: LogState) -> RegionLog {
        // Raft indexes start at 1; `last_index` relies on it.
        assert!(state.first_index >= 1, "a region log starts at index 1 or later");
        RegionLog {
            state,
            slots: VecDeque::new(),
            state_lsn: None,
            cached_bytes: 0,
            uncached_below: 0,
            removed: false,
            unconfirmed_start: None,
        }
    }

    pub fn first_index(&self) -> u64 {
        self.state.first_index
    }

    pub fn last_index(&self) -> u64 {
        self.state.first_index + self.slots.len() as u64 - 1
    }

    /// The term of entry `index`, for `index` in `[first_index - 1, last_index]`.
    pub fn term(&self, index: u64) -> Option<u64> {
        if index + 1 == self.state.first_index {
            return Some(self.state.truncated_term);
        }
        let offset = index.checked_sub(self.state.first_index)?;
        self.slots.get(usize::try_from(offset).ok()?).map(|s| s.term)
    }

    pub fn slot(&self, index: u64) -> Option<&Slot> {
        let offset = index.checked_sub(self.state.first_index)?;
        self.slots.get(usize::try_from(offset).ok()?)
    }

    /// Drops entries from `index` on (a Raft leader overwrote them).
    fn truncate_from(&mut self, index: u64) {
        self.uncached_below = self.uncached_below.min(index);
        let keep = index.saturating_sub(self.state.first_index) as usize;
        while self.slots.len() > keep {
            if let Some(slot) = self.slots.pop_back()
                && let Some(e) = &slot.cached
            {
                self.cached_bytes -= entry_bytes(e);
            }
        }
    }

    /// Stages entries that a ready asks to persist: they replace everything from their
    /// first index on and are readable at once. Returns the bytes newly cached.
    pub fn stage(&mut self, entries: &[Entry], write: u64) -> usize {
        let Some(first) = entries.first() else { return 0 };
        // A gap would mean Raft skipped entries; it never does outside snapshots, which
        // reset the log before entries follow.
        assert!(
            first.index <= self.last_index() + 1 && first.index >= self.state.first_index,
            "staged entries at {} do not follow the log [{}, {}]",
            first.index,
            self.state.first_index,
            self.last_index()
        );
        self.truncate_from(first.index);
        let mut added = 0;
        for e in entries {
            added += entry_bytes(e);
            self.slots.push_back(Slot {
                term: e.term,
                location: Location::Pending { write },
                cached: Some(e.clone()),
            });
        }
        self.cached_bytes += added;
        added
    }

    /// Records where the entries of batch `write` went, for those not overwritten since.
    pub fn on_persisted(&mut self, first_index: u64, spans: &[EntrySpan], lsn: Lsn, write: u64) {
        for (i, span) in spans.iter().enumerate() {
            let index = first_index + i as u64;
            let Some(offset) = index.checked_sub(self.state.first_index) else { continue };
            let Some(slot) = self.slots.get_mut(offset as usize) else { continue };
            if slot.location == (Location::Pending { write }) {
                slot.location = Location::Durable { lsn, span: *span };
            }
        }
    }

    /// Recovery: entries read from the WAL, replacing everything from `first_index` on.
    pub fn recover_entries(
        &mut self,
        first_index: u64,
        spans: &[EntrySpan],
        lsn: Lsn,
    ) -> Result<(), String> {
        // Entries below the compaction point are obsolete; skip them.
        let skip = self.state.first_index.saturating_sub(first_index);
        let spans = spans.get(skip as usize..).unwrap_or_default();
        let first_index = first_index + skip;
        if spans.is_empty() {
            return Ok(());
        }
        if first_index > self.last_index() + 1 && self.slots.is_empty() {
            // Nothing found before these: the records holding the entries the state
            // names were purged, after a compaction whose state record comes later.
            self.unconfirmed_start =
                Some(UnconfirmedStart { after: Some(self.last_index()), at: first_index, lsn });
            self.state.first_index = first_index;
        }
        if first_index > self.last_index() + 1 {
            return Err(format!(
                "entries at {first_index} leave a gap after {}",
                self.last_index()
            ));
        }
        self.truncate_from(first_index);
        for span in spans {
            self.slots.push_back(Slot {
                term: span.term,
                location: Location::Durable { lsn, span: *span },
                cached: None,
            });
        }
        Ok(())
    }

    /// Applies a new whole state. If the entry before its first index is in this log
    /// with the recorded term, the log continues (a hard-state change, or a compaction
    /// that drops the entries below); otherwise a snapshot restarted the log.
    pub fn set_state(&mut self, state: LogState) {
        // Compaction and snapshots only move the first index forward (P7).
        assert!(
            state.first_index >= self.state.first_index,
            "log state moved back from {} to {}",
            self.state.first_index,
            state.first_index
        );
        let continues = state.first_index <= self.last_index() + 1
            && self.term(state.first_index - 1) == Some(state.truncated_term);
        let drop = if continues {
            state.first_index - self.state.first_index
        } else {
            self.slots.len() as u64
        };
        for _ in 0..drop {
            if let Some(slot) = self.slots.pop_front()
                && let Some(e) = &slot.cached
            {
                self.cached_bytes -= entry_bytes(e);
            }
        }
        let mut state = state;
        state.id_floor = newest_floor(self.state.id_floor, state.id_floor);
        self.state = state;
    }

    /// Drops cached entries that are durable, oldest first, until at most `keep_bytes`
    /// remain cached. Returns the bytes freed. Starts where no entry below is cached.
    pub fn evict(&mut self, keep_bytes: usize) -> usize {
        let mut freed = 0;
        let first = self.state.first_index;
        let start = self.uncached_below.max(first);
        // While every slot from `start` on is uncached, the mark follows.
        let mut contiguous = true;
        let skip = usize::try_from(start - first).unwrap_or(usize::MAX);
        for (i, slot) in self.slots.iter_mut().enumerate().skip(skip) {
            if self.cached_bytes <= keep_bytes {
                break;
            }
            if matches!(slot.location, Location::Durable { .. })
                && let Some(e) = slot.cached.take()
            {
                let bytes = entry_bytes(&e);
                self.cached_bytes -= bytes;
                freed += bytes;
            }
            contiguous &= slot.cached.is_none();
            if contiguous {
                self.uncached_below = first + i as u64 + 1;
            }
        }
        freed
    }

    /// The oldest WAL record this region still needs.
    pub fn min_lsn(&self) -> Option<Lsn> {
        let entries = self.slots.iter().find_map(|s| match s.location {
            Location::Durable { lsn, .. } => Some(lsn),
            Location::Pending { .. } => None,
        });
        match (entries, self.state_lsn) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        let mut e = Entry::default();
        e.index = index;
        e.term = term;
        e.data = vec![b'x'; (index % 7) as usize].into();
        e
    }

    fn persist(log: &mut RegionLog, from: u64, to: u64, write: u64) {
        let spans: Vec<EntrySpan> = (from..=to)
            .map(|i| EntrySpan { term: log.term(i).unwrap_or(0), offset: 0, len: 1 })
            .collect();
        log.on_persisted(from, &spans, Lsn(write), write);
    }

    /// Eviction starts where no entry below is cached, and a truncation (an
    /// overwritten tail) moves that mark back: after every step, the cached bytes are
    /// those of the cached entries, every durable entry is evicted by `evict(0)`, and
    /// no pending entry is.
    #[test]
    fn eviction_drops_every_durable_entry_once_and_keeps_pending_ones() {
        let mut log = RegionLog::new(LogState { first_index: 1, ..LogState::default() });
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut term = 1;
        // Staged and not yet durable: (first, last, write), made durable in order.
        let mut pending: Vec<(u64, u64, u64)> = Vec::new();
        let mut truncations = 0;
        for write in 1..400u64 {
            // Stage a few entries, sometimes over the tail (a new leader's).
            let last = log.last_index();
            let back = if next() % 4 == 0 { next() % 5 } else { 0 };
            let first = (last + 1).saturating_sub(back).max(log.first_index());
            if back > 0 {
                term += 1;
                truncations += 1;
            }
            let n = 1 + next() % 6;
            let staged: Vec<Entry> = (first..first + n).map(|i| entry(i, term)).collect();
            log.stage(&staged, write);
            pending.push((first, first + n - 1, write));
            if next() % 3 > 0 {
                for (from, to, w) in pending.drain(..) {
                    persist(&mut log, from, to, w);
                }
            }
            if next() % 10 == 0 {
                // A compaction keeps the log continuing.
                let to = log.first_index() + next() % 3;
                if to <= log.last_index() {
                    let state = LogState {
                        first_index: to + 1,
                        truncated_term: log.term(to).unwrap(),
                        ..log.state.clone()
                    };
                    log.set_state(state);
                }
            }
            log.evict(0);
            let cached: usize =
                log.slots.iter().filter_map(|s| s.cached.as_ref()).map(entry_bytes).sum();
            assert_eq!(cached, log.cached_bytes, "write {write}");
            for slot in &log.slots {
                match slot.location {
                    Location::Durable { .. } => assert!(slot.cached.is_none(), "write {write}"),
                    Location::Pending { .. } => assert!(slot.cached.is_some(), "write {write}"),
                }
            }
        }
        assert!(truncations > 20, "the tail was overwritten {truncations} times");
    }
}
