//! Cutting staged writes into WAL records no larger than the WAL's largest payload
//! (see [`RaftLog::persist_all`](super::RaftLog::persist_all)).

use raft::eraftpb::Entry;

use super::LogWrite;
use super::batch::{self, BatchEncoder, LogState};
use crate::error::{Error, Result};

/// Which item of a staged write a record holds.
#[derive(Clone, Copy, Debug)]
pub(super) enum Part {
    Tombstone,
    State,
    /// Entries from `first_index`: the record's next list of entry spans.
    Entries {
        first_index: u64,
    },
}

/// An item of `writes[write].regions[region]` placed in a record.
#[derive(Clone, Copy, Debug)]
pub(super) struct Placed {
    pub write: usize,
    pub region: usize,
    pub item: Part,
}

/// One WAL record being planned, and what it holds.
#[derive(Default)]
pub(super) struct Record {
    pub encoder: BatchEncoder,
    pub placed: Vec<Placed>,
}

impl Record {
    fn mark(&self) -> (batch::Mark, usize) {
        (self.encoder.mark(), self.placed.len())
    }

    fn rollback(&mut self, (mark, placed): (batch::Mark, usize)) {
        self.encoder.rollback(mark);
        self.placed.truncate(placed);
    }

    fn tombstone(&mut self, writes: &[LogWrite], write: usize, region: usize) {
        let (id, w) = &writes[write].regions[region];
        if let Some(removal) = w.tombstone {
            self.encoder.add_tombstone(*id, removal.epoch);
            self.placed.push(Placed { write, region, item: Part::Tombstone });
        }
    }

    fn state(&mut self, writes: &[LogWrite], write: usize, region: usize, state: &LogState) {
        let (id, _) = &writes[write].regions[region];
        self.encoder.add_state(*id, state);
        self.placed.push(Placed { write, region, item: Part::State });
    }

    fn entries(&mut self, writes: &[LogWrite], write: usize, region: usize, entries: &[Entry]) {
        let (id, _) = &writes[write].regions[region];
        if let Some(first) = entries.first() {
            self.encoder.add_entries(*id, entries);
            let item = Part::Entries { first_index: first.index };
            self.placed.push(Placed { write, region, item });
        }
    }

    /// A region's whole part of a write, in replay order: tombstone, state (a
    /// snapshot or a new region sets the first index the entries continue from),
    /// entries.
    fn region(&mut self, writes: &[LogWrite], write: usize, region: usize) {
        let w = &writes[write].regions[region].1;
        self.tombstone(writes, write, region);
        if let Some(state) = &w.state {
            self.state(writes, write, region, state);
        }
        self.entries(writes, write, region, &w.entries);
    }
}

/// Adds what `add` puts into the last record if it fits in `max` bytes, else into a
/// new record if it fits there. False (nothing added) if it fits in no record.
fn place(records: &mut Vec<Record>, max: usize, add: impl Fn(&mut Record)) -> bool {
    for fresh in [false, true] {
        if fresh {
            if records.last().is_some_and(|r| r.encoder.is_empty()) {
                return false; // the last record was already empty: no room anywhere
            }
            records.push(Record::default());
        }
        let record = records.last_mut().expect("one record or more");
        let mark = record.mark();
        add(record);
        if record.encoder.len() <= max {
            return true;
        }
        record.rollback(mark);
    }
    // The new record pushed above stays, empty, for what comes next.
    false
}

/// Cuts `writes` into records of at most `max` payload bytes (see
/// [`RaftLog::persist_all`](super::RaftLog::persist_all)). An empty plan is one empty record.
pub(super) fn plan_records(writes: &[LogWrite], max: usize) -> Result<Vec<Record>> {
    let mut records = vec![Record::default()];
    for (wi, write) in writes.iter().enumerate() {
        let whole = |r: &mut Record| {
            for ri in 0..write.regions.len() {
                r.region(writes, wi, ri);
            }
        };
        if place(&mut records, max, whole) {
            continue;
        }
        for ri in 0..write.regions.len() {
            if !place(&mut records, max, |r: &mut Record| r.region(writes, wi, ri)) {
                cut_region(&mut records, writes, wi, ri, max)?;
            }
        }
    }
    Ok(records)
}

/// Cuts one region's part of a write, too large for one record, between its
/// entries; the last record is empty when called.
fn cut_region(
    records: &mut Vec<Record>,
    writes: &[LogWrite],
    wi: usize,
    ri: usize,
    max: usize,
) -> Result<()> {
    let (id, w) = &writes[wi].regions[ri];
    let too_large = |len| Error::Wal(regionkv_wal::Error::RecordTooLarge { len, max });
    let head = {
        let mut r = Record::default();
        r.tombstone(writes, wi, ri);
        r.encoder.len() - 1 + w.state.as_ref().map_or(0, |s| BatchEncoder::state_len(*id, s))
    };
    if w.entries.is_empty() {
        // A tombstone and a state alone: far below any record's limit.
        return if place(records, max, |r: &mut Record| r.region(writes, wi, ri)) {
            Ok(())
        } else {
            Err(too_large(head))
        };
    }
    let mut at = 0;
    let mut first = true;
    let mut whole_state_written = w.state.is_none();
    while at < w.entries.len() {
        let record = records.last_mut().expect("one record or more");
        let mut len =
            record.encoder.len() + batch::ENTRIES_ITEM_BYTES + if first { head } else { 0 };
        let mut end = at;
        while let Some(e) = w.entries.get(end) {
            let next = len + batch::entry_encoded_len(e);
            if next > max {
                break;
            }
            len = next;
            end += 1;
        }
        if end == at {
            if record.encoder.is_empty() {
                // One entry larger than a record: refused at propose time, so only a
                // peer of another configuration could have sent it.
                return Err(too_large(len + batch::entry_encoded_len(&w.entries[at])));
            }
            records.push(Record::default());
            continue;
        }
        if first {
            record.tombstone(writes, wi, ri);
            if let Some(state) = &w.state {
                let last = w.entries[end - 1].index;
                if state.hard_state.commit <= last {
                    record.state(writes, wi, ri, state);
                    whole_state_written = true;
                } else {
                    let mut early = state.clone();
                    early.hard_state.commit = last;
                    record.state(writes, wi, ri, &early);
                }
            }
            first = false;
        }
        record.entries(writes, wi, ri, &w.entries[at..end]);
        at = end;
        if at < w.entries.len() {
            records.push(Record::default());
        }
    }
    if let (Some(state), false) = (&w.state, whole_state_written)
        && !place(records, max, |r: &mut Record| r.state(writes, wi, ri, state))
    {
        return Err(too_large(BatchEncoder::state_len(*id, state)));
    }
    Ok(())
}
