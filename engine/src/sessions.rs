//! Client sessions: what a region remembers of the writers that wrote to it, so that a
//! retried write is applied at most once (ARCHITECTURE.md, "Exactly once").
//!
//! A client writes through sessions: each write carries its session's id and the next
//! sequence number of that session, the same for every retry, and a session has at most
//! one write in flight. So the last applied sequence number per session is all a
//! region must remember: a write numbered at or below it was applied already (or was
//! given up by its client, which has moved on), and is not applied again.
//!
//! A region's [`SessionTable`] is part of its replicated state: it changes only when a
//! write applies (in the write-batch round that holds the write's data, and is undone
//! with it if the round does not commit), it is written into each of the region's
//! checkpoints, copied to every part of a split and joined on a merge. Its clock is the
//! time stamped into the writes by the leader that took them (never a clock read during
//! apply): the table's `now` is the largest such time seen, so every replica, and a
//! replay after a restart, makes the same decisions. Entries expire by age
//! ([`SessionLimits::ttl_ms`]) and by count ([`SessionLimits::max_sessions`], oldest
//! first).

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use crate::codec::{self, DecodeError, DecodeResult, TlvRecord, UnknownTags};

/// A client session's id: random, chosen by the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionId(pub u64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// What a region remembers of one session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionUse {
    /// The highest sequence number of the session's writes applied here.
    pub last_seq: u64,
    /// The table's time (ms) when the session last wrote here.
    pub last_used_ms: u64,
}

/// How long, and how many, sessions a region remembers. Every store of a cluster must
/// use the same limits: they decide which retries are recognised, which must be the
/// same on every replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionLimits {
    /// A session that has not written to the region for this long (by the table's
    /// clock) is forgotten. Far above any client's retry deadline.
    pub ttl_ms: u64,
    /// The most sessions a region remembers; beyond it the least recently used is
    /// forgotten. At most [`SessionLimits::MAX_SESSIONS`].
    pub max_sessions: usize,
}

impl SessionLimits {
    /// Ten minutes, and 10,000 sessions per region.
    pub const DEFAULT: SessionLimits =
        SessionLimits { ttl_ms: 10 * 60 * 1000, max_sessions: 10_000 };
    /// The largest `max_sessions`: a full table must fit a checkpoint's header.
    pub const MAX_SESSIONS: usize = 16_384;
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits::DEFAULT
    }
}

/// Bytes one session takes in an encoded table: a nested record of three u64 fields.
pub(crate) const ENCODED_SESSION_BYTES: usize = codec::FIELD_HEADER_LEN * 4 + 3 * 8;

/// Whether a write of a session is new to the region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionWrite {
    /// Its sequence number is above the session's last applied one: apply it.
    Fresh,
    /// It was applied already (a retry whose first answer was lost): do not apply it
    /// again; its outcome was success.
    AlreadyApplied,
}

/// One step back, to undo a change of a table (a round that does not commit).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Undo {
    /// The table's clock was this.
    Now(u64),
    /// The session's entry was this (`None`: absent).
    Entry(SessionId, Option<SessionUse>),
}

/// A region's sessions: session id -> [`SessionUse`], and the table's clock. See the
/// module docs.
#[derive(Clone, Debug, Default)]
pub struct SessionTable {
    entries: HashMap<SessionId, SessionUse>,
    /// `(last_used_ms, id)` of every entry: the oldest first, ties by id.
    by_age: BTreeSet<(u64, SessionId)>,
    /// The largest time stamped into a write applied here (ms).
    now_ms: u64,
}

impl PartialEq for SessionTable {
    fn eq(&self, other: &Self) -> bool {
        self.now_ms == other.now_ms && self.entries == other.entries
    }
}

impl Eq for SessionTable {}

impl SessionTable {
    /// An empty table.
    pub fn new() -> SessionTable {
        SessionTable::default()
    }

    /// True if no session is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Sessions remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// What the table remembers of session `id`.
    pub fn get(&self, id: SessionId) -> Option<SessionUse> {
        self.entries.get(&id).copied()
    }

    /// The table's clock: the largest time stamped into a write applied here (ms).
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// Every session, by id.
    pub fn sessions(&self) -> Vec<(SessionId, SessionUse)> {
        let mut all: Vec<_> = self.entries.iter().map(|(&id, &u)| (id, u)).collect();
        all.sort_unstable_by_key(|(id, _)| *id);
        all
    }

    /// Sets (or with `None` removes) the entry of `id`, keeping `by_age` in step.
    fn set(&mut self, id: SessionId, to: Option<SessionUse>) {
        if let Some(old) = self.entries.remove(&id) {
            self.by_age.remove(&(old.last_used_ms, id));
        }
        if let Some(new) = to {
            self.entries.insert(id, new);
            self.by_age.insert((new.last_used_ms, id));
        }
    }

    /// Takes a write numbered `seq` of session `id`, stamped `time_ms` by its leader
    /// (`0`: no time, the clock stays): says whether it is new, and records the use
    /// either way. Every change is pushed to `undo`.
    pub(crate) fn write(
        &mut self,
        id: SessionId,
        seq: u64,
        time_ms: u64,
        limits: SessionLimits,
        undo: &mut Vec<Undo>,
    ) -> SessionWrite {
        undo.push(Undo::Now(self.now_ms));
        self.now_ms = self.now_ms.max(time_ms);
        let before = self.get(id);
        let outcome = match before {
            Some(u) if seq <= u.last_seq => SessionWrite::AlreadyApplied,
            _ => SessionWrite::Fresh,
        };
        let last_seq = before.map_or(seq, |u| u.last_seq.max(seq));
        undo.push(Undo::Entry(id, before));
        self.set(id, Some(SessionUse { last_seq, last_used_ms: self.now_ms }));
        self.expire(limits, Some(undo));
        outcome
    }

    /// Forgets sessions unused for longer than the TTL, then the least recently used
    /// ones beyond the count bound. The session used last has `last_used_ms == now_ms`
    /// and is never forgotten (the bound is at least 1).
    fn expire(&mut self, limits: SessionLimits, mut undo: Option<&mut Vec<Undo>>) {
        // Bounded: each turn removes an entry.
        while let Some(&(used, id)) = self.by_age.first() {
            let expired = used.saturating_add(limits.ttl_ms) < self.now_ms;
            if !expired && self.entries.len() <= limits.max_sessions.max(1) {
                break;
            }
            if let Some(undo) = undo.as_deref_mut() {
                undo.push(Undo::Entry(id, self.get(id)));
            }
            self.set(id, None);
        }
    }

    /// Reverts one change; changes are reverted in the reverse of the order they were
    /// pushed.
    pub(crate) fn undo(&mut self, step: Undo) {
        match step {
            Undo::Now(now) => self.now_ms = now,
            Undo::Entry(id, was) => self.set(id, was),
        }
    }

    /// Joins `other` into this table (a merge): per session the highest sequence
    /// number and the latest use, the later clock, then expiry.
    pub fn join(&mut self, other: &SessionTable, limits: SessionLimits) {
        self.now_ms = self.now_ms.max(other.now_ms);
        for (&id, theirs) in &other.entries {
            let joined = match self.get(id) {
                Some(ours) => SessionUse {
                    last_seq: ours.last_seq.max(theirs.last_seq),
                    last_used_ms: ours.last_used_ms.max(theirs.last_used_ms),
                },
                None => *theirs,
            };
            self.set(id, Some(joined));
        }
        self.expire(limits, None);
    }

    /// Appends the table as TLV fields: `1 now_ms`, then `2 session` (nested, repeated,
    /// by id: `1 id`, `2 last seq`, `3 last used ms`).
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        codec::put_u64(out, T_NOW, self.now_ms);
        for (id, u) in self.sessions() {
            codec::put_nested(out, T_SESSION, |out| {
                codec::put_u64(out, S_ID, id.0);
                codec::put_u64(out, S_LAST_SEQ, u.last_seq);
                codec::put_u64(out, S_LAST_USED, u.last_used_ms);
            });
        }
    }

    /// Decodes what [`SessionTable::encode`] wrote. Never panics.
    pub(crate) fn decode(buf: &[u8]) -> DecodeResult<SessionTable> {
        let rec = TlvRecord::parse(buf, &[T_NOW, T_SESSION], UnknownTags::Reject)?;
        let mut table = SessionTable::new();
        table.now_ms = rec.required(T_NOW, "session table clock")?.as_u64()?;
        for f in rec.repeated(T_SESSION) {
            let at = |e: DecodeError| e.shifted(f.offset);
            let s =
                TlvRecord::parse(f.value, &[S_ID, S_LAST_SEQ, S_LAST_USED], UnknownTags::Reject)
                    .map_err(at)?;
            let u64_of = |tag, what| s.required(tag, what).and_then(|v| v.as_u64()).map_err(at);
            let id = SessionId(u64_of(S_ID, "session id")?);
            let u = SessionUse {
                last_seq: u64_of(S_LAST_SEQ, "session last seq")?,
                last_used_ms: u64_of(S_LAST_USED, "session last use")?,
            };
            if u.last_used_ms > table.now_ms {
                return Err(DecodeError::new(f.offset, "a session used after the table's clock"));
            }
            if table.entries.contains_key(&id) {
                return Err(DecodeError::new(f.offset, "a session is listed twice"));
            }
            if table.entries.len() >= SessionLimits::MAX_SESSIONS {
                return Err(DecodeError::new(f.offset, "more sessions than a table may hold"));
            }
            table.set(id, Some(u));
        }
        Ok(table)
    }
}

const T_NOW: u16 = 1;
const T_SESSION: u16 = 2;
const S_ID: u16 = 1;
const S_LAST_SEQ: u16 = 2;
const S_LAST_USED: u16 = 3;

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const LIMITS: SessionLimits = SessionLimits { ttl_ms: 1000, max_sessions: 3 };

    fn write(t: &mut SessionTable, id: u64, seq: u64, time: u64) -> SessionWrite {
        t.write(SessionId(id), seq, time, LIMITS, &mut Vec::new())
    }

    #[test]
    fn a_sequence_number_applies_once_and_older_ones_never() {
        let mut t = SessionTable::new();
        assert_eq!(write(&mut t, 1, 1, 10), SessionWrite::Fresh);
        assert_eq!(write(&mut t, 1, 1, 11), SessionWrite::AlreadyApplied);
        assert_eq!(write(&mut t, 1, 2, 12), SessionWrite::Fresh);
        assert_eq!(write(&mut t, 1, 1, 13), SessionWrite::AlreadyApplied);
        assert_eq!(write(&mut t, 2, 1, 14), SessionWrite::Fresh, "sessions are independent");
        assert_eq!(t.get(SessionId(1)), Some(SessionUse { last_seq: 2, last_used_ms: 13 }));
    }

    #[test]
    fn sessions_expire_by_age_and_by_count_oldest_first() {
        let mut t = SessionTable::new();
        write(&mut t, 1, 1, 100);
        write(&mut t, 2, 1, 200);
        write(&mut t, 3, 1, 300);
        write(&mut t, 4, 1, 400);
        assert_eq!(t.len(), 3);
        assert!(t.get(SessionId(1)).is_none(), "the least recently used goes first");
        // A leader whose clock is behind moves nothing back.
        write(&mut t, 2, 2, 50);
        assert_eq!(t.now_ms(), 400);
        assert_eq!(t.get(SessionId(2)).unwrap().last_used_ms, 400);
        // Time passes: everyone unused for over a second is forgotten.
        write(&mut t, 5, 1, 1_350);
        let ids: Vec<u64> = t.sessions().iter().map(|(id, _)| id.0).collect();
        assert_eq!(ids, vec![2, 4, 5]);
        write(&mut t, 5, 2, 1_401);
        assert_eq!(t.sessions().iter().map(|(id, _)| id.0).collect::<Vec<_>>(), vec![5]);
        // A forgotten session's retry is new again: why the TTL is far above any
        // client's retry deadline.
        assert_eq!(write(&mut t, 3, 1, 1_402), SessionWrite::Fresh);
    }

    #[test]
    fn undo_restores_the_table_exactly() {
        let mut t = SessionTable::new();
        write(&mut t, 1, 1, 100);
        write(&mut t, 2, 5, 200);
        write(&mut t, 3, 1, 300);
        let before = t.clone();
        let mut undo = Vec::new();
        t.write(SessionId(4), 1, 2_000, LIMITS, &mut undo); // expires 1, 2 and 3
        t.write(SessionId(2), 6, 2_100, LIMITS, &mut undo);
        assert_ne!(t, before);
        undo.into_iter().rev().for_each(|step| t.undo(step));
        assert_eq!(t, before);
        assert_eq!(t.by_age.len(), t.entries.len());
    }

    #[test]
    fn join_keeps_the_highest_sequence_per_session() {
        let mut a = SessionTable::new();
        write(&mut a, 1, 7, 100);
        write(&mut a, 2, 1, 150);
        let mut b = SessionTable::new();
        write(&mut b, 1, 3, 300);
        write(&mut b, 3, 9, 310);
        a.join(&b, LIMITS);
        assert_eq!(a.now_ms(), 310);
        assert_eq!(a.get(SessionId(1)), Some(SessionUse { last_seq: 7, last_used_ms: 300 }));
        assert_eq!(a.get(SessionId(3)).unwrap().last_seq, 9);
        assert_eq!(a.len(), 3);
    }

    proptest! {
        #[test]
        fn tables_round_trip_and_damage_never_panics(
            writes in proptest::collection::vec((0u64..6, 0u64..10, 0u64..3_000), 0..20)
        ) {
            let mut t = SessionTable::new();
            for (id, seq, time) in writes {
                t.write(SessionId(id), seq, time, LIMITS, &mut Vec::new());
            }
            let mut buf = Vec::new();
            t.encode(&mut buf);
            prop_assert_eq!(SessionTable::decode(&buf).unwrap(), t);
            for cut in 0..buf.len() {
                let _ = SessionTable::decode(&buf[..cut]);
            }
        }
    }
}
