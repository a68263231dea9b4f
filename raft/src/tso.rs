//! The timestamp oracle: timestamps for snapshot-isolated transactions, handed out by
//! the directory's leader (ARCHITECTURE.md, "Timestamp oracle").
//!
//! A timestamp is `physical_ms << 18 | logical`: the physical part is the leader's
//! clock (`StoreContext::now_ms`, a seam the simulator drives), the logical part
//! counts within one millisecond and carries into the next one when it runs over.
//!
//! The leader serves requests from memory ([`TsAllocator`]) below a *limit* the
//! directory persists (its `"T"` record, raised by [`DirCmd::SaveTsLimit`]): before
//! handing out a timestamp at or above it, the leader saves a new limit (its clock
//! plus [`TS_WINDOW_MS`]) and waits for it to apply. A leader starts only once a save
//! of its own term applied (so every earlier save did too), strictly above the limit
//! held before it: whatever an earlier leader handed out, crashed or not, stays below.
//!
//! ```text
//!  key   value (format u8 = 1, then TLV)
//!  "T"   1 limit u64: no timestamp at or above it was handed out
//! ```
//!
//! [`DirCmd::SaveTsLimit`]: crate::directory::DirCmd::SaveTsLimit

use regionkv_engine::codec::{self, DecodeError, DecodeResult, TlvRecord, UnknownTags};
use regionkv_engine::{ApplyRound, ReadView};

use crate::directory::{DirResult, FORMAT_VERSION, corrupt};
use crate::error::Result;

/// Bits of a timestamp's logical part.
pub const LOGICAL_BITS: u32 = 18;

/// How far past its clock a leader persists its limit, in ms: it saves at most once
/// per window while the clock runs, whatever the request rate.
pub const TS_WINDOW_MS: u64 = 3_000;

/// The most timestamps one request takes (one millisecond's worth); a larger count,
/// or 0, is refused.
pub const MAX_TIMESTAMPS_PER_REQUEST: u32 = 1 << LOGICAL_BITS;

const KEY_LIMIT: &[u8] = b"T";
const LIMIT: u16 = 1;

/// The timestamp of `physical_ms` with logical part 0 (saturating).
pub fn compose(physical_ms: u64) -> u64 {
    physical_ms
        .checked_shl(LOGICAL_BITS)
        .filter(|t| t >> LOGICAL_BITS == physical_ms)
        .unwrap_or(u64::MAX)
}

/// The physical part (ms) of `ts`.
pub fn physical(ts: u64) -> u64 {
    ts >> LOGICAL_BITS
}

/// The limit the directory in `snapshot` holds (0 if it holds none).
pub fn ts_limit(snapshot: &ReadView) -> Result<u64> {
    match snapshot.get(KEY_LIMIT) {
        None => Ok(0),
        Some(value) => decode_limit(&value).map_err(|e| corrupt("timestamp limit", &e)),
    }
}

fn encode_limit(limit: u64) -> Vec<u8> {
    let mut out = vec![FORMAT_VERSION];
    codec::put_u64(&mut out, LIMIT, limit);
    out
}

fn decode_limit(buf: &[u8]) -> DecodeResult<u64> {
    let (&version, body) = buf.split_first().ok_or(DecodeError::new(0, "empty record"))?;
    if version != FORMAT_VERSION {
        return Err(DecodeError::new(0, "timestamp limit of an unknown format version"));
    }
    let rec = TlvRecord::parse(body, &[LIMIT], UnknownTags::Skip).map_err(|e| e.shifted(1))?;
    rec.required(LIMIT, "limit").and_then(|f| f.as_u64()).map_err(|e| e.shifted(1))
}

/// Applies a [`DirCmd::SaveTsLimit`](crate::directory::DirCmd::SaveTsLimit): the
/// limit becomes `max(held, limit)`.
pub(crate) fn save_limit(
    snapshot: &ReadView,
    round: &mut ApplyRound<'_>,
    limit: u64,
) -> Result<DirResult> {
    let previous = ts_limit(snapshot)?;
    if limit > previous {
        round.put(KEY_LIMIT, &encode_limit(limit))?;
    }
    Ok(DirResult::TsLimit { previous, limit: previous.max(limit) })
}

/// The limit to save at clock `now_ms` to hand out up to `end`: a window past both
/// (a clock behind what was handed out starts the window at the last one).
fn window(now_ms: u64, end: u64) -> u64 {
    let from = now_ms.max(physical(end)).saturating_add(1);
    compose(from.saturating_add(TS_WINDOW_MS))
}

/// What [`TsAllocator::next`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// The first of the timestamps handed out.
    Ready(u64),
    /// None handed out: save this limit first (it is above what was asked).
    Save(u64),
}

/// The leader's allocator, sans I/O: what it handed out and the limit it may not
/// reach before a save.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TsAllocator {
    /// The last timestamp handed out (or the floor a new leader starts above).
    last: u64,
    /// The persisted limit, as the last applied save returned it.
    limit: u64,
}

impl TsAllocator {
    /// A save applied: the limit held before it (`previous`) and after it (`limit`).
    /// The allocator starts strictly above `previous`.
    pub fn saved(&mut self, previous: u64, limit: u64) {
        self.last = self.last.max(previous);
        self.limit = self.limit.max(limit);
    }

    /// Forgets the limit (leadership moved): nothing is handed out before a save.
    pub fn forget_limit(&mut self) {
        self.limit = 0;
    }

    /// `count` consecutive timestamps at clock `now_ms`, each above every one handed
    /// out before and below the limit; or the limit to save first. `count` is at
    /// least 1.
    pub fn next(&mut self, now_ms: u64, count: u32) -> Next {
        let first = self.last.saturating_add(1).max(compose(now_ms));
        let end = first.saturating_add(u64::from(count.max(1)) - 1);
        if end < self.limit {
            self.last = end;
            return Next::Ready(first);
        }
        Next::Save(window(now_ms, end))
    }

    /// The limit a new leader saves first (it hands out nothing before).
    pub fn first_window(&self, now_ms: u64) -> u64 {
        window(now_ms, self.last)
    }

    /// The last timestamp handed out (or the floor).
    pub fn last(&self) -> u64 {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use regionkv_engine::{Engine, EngineOptions, Epoch, Region, StoreId};
    use regionkv_wal::SimFs;

    use super::*;
    use crate::directory::{DIRECTORY, DirCmd};

    fn primed(now: u64) -> TsAllocator {
        let mut a = TsAllocator::default();
        let Next::Save(limit) = a.next(now, 1) else { panic!("handed out with no limit") };
        a.saved(0, limit);
        a
    }

    #[test]
    fn nothing_is_handed_out_below_a_saved_window_and_a_new_window_is_asked_for_past_it() {
        let mut a = TsAllocator::default();
        assert_eq!(a.next(1_000, 1), Next::Save(compose(1_000 + 1 + TS_WINDOW_MS)));
        a.saved(0, compose(1_000 + 1 + TS_WINDOW_MS));
        assert_eq!(a.next(1_000, 1), Next::Ready(compose(1_000)));
        assert_eq!(a.next(1_000, 3), Next::Ready(compose(1_000) + 1));
        assert_eq!(a.next(1_005, 1), Next::Ready(compose(1_005)));
        // Past the window: a save first, then the same request is served.
        let late = 1_000 + 1 + TS_WINDOW_MS;
        let Next::Save(limit) = a.next(late, 1) else { panic!() };
        assert!(limit > compose(late));
        assert_eq!(a.last(), compose(1_005));
        a.saved(compose(late), limit);
        assert_eq!(a.next(late, 1), Next::Ready(compose(late) + 1));
    }

    #[test]
    fn the_logical_part_runs_over_into_the_next_millisecond() {
        let mut a = primed(50);
        let first = match a.next(50, MAX_TIMESTAMPS_PER_REQUEST - 1) {
            Next::Ready(first) => first,
            other @ Next::Save(_) => panic!("{other:?}"),
        };
        assert_eq!(first, compose(50));
        // One logical value is left in ms 50; two more run over into ms 51.
        assert_eq!(a.next(50, 2), Next::Ready(compose(51) - 1));
        assert_eq!(a.next(50, 1), Next::Ready(compose(51) + 1));
        assert_eq!(physical(a.last()), 51);
    }

    #[test]
    fn a_clock_going_backwards_never_moves_timestamps_back() {
        let mut a = primed(10_000);
        let Next::Ready(t1) = a.next(10_000, 1) else { panic!() };
        let Next::Ready(t2) = a.next(9_000, 1) else { panic!() };
        let Next::Ready(t3) = a.next(0, 5) else { panic!() };
        assert!(t1 < t2 && t2 < t3, "{t1} {t2} {t3}");
        // A window asked for with the clock behind starts past the last one.
        let mut b = primed(10_000);
        b.saved(compose(20_000), compose(20_000));
        let Next::Save(limit) = b.next(10_000, 1) else { panic!() };
        assert!(limit > compose(20_000) + 1);
    }

    #[test]
    fn a_new_leader_starts_strictly_above_the_limit_held_before_it() {
        let mut a = TsAllocator::default();
        // Its clock is far behind the old leader's limit.
        let Next::Save(limit) = a.next(5, 1) else { panic!() };
        let held = compose(1_000_000);
        a.saved(held, held.max(limit));
        let first = match a.next(5, 1) {
            Next::Ready(first) => first,
            Next::Save(more) => {
                assert!(more > held);
                a.saved(held, more);
                let Next::Ready(first) = a.next(5, 1) else { panic!() };
                first
            }
        };
        assert!(first > held);
    }

    #[test]
    fn the_limit_record_goes_up_only_and_garbage_never_panics() {
        let engine =
            Engine::open(Arc::new(SimFs::new()), "/d", EngineOptions::new(StoreId(1))).unwrap();
        engine.insert_region(Region::whole(DIRECTORY)).unwrap();
        let save = |limit| {
            let cmd = DirCmd::SaveTsLimit { limit };
            crate::directory::apply(&engine, Epoch::INITIAL, &cmd, 1).unwrap().unwrap()
        };
        assert_eq!(ts_limit(&engine.read_view()).unwrap(), 0);
        assert_eq!(save(100), DirResult::TsLimit { previous: 0, limit: 100 });
        assert_eq!(save(40), DirResult::TsLimit { previous: 100, limit: 100 });
        assert_eq!(save(300), DirResult::TsLimit { previous: 100, limit: 300 });
        assert_eq!(ts_limit(&engine.read_view()).unwrap(), 300);
        let buf = encode_limit(u64::MAX);
        assert_eq!(decode_limit(&buf).unwrap(), u64::MAX);
        for i in 0..buf.len() {
            let _ = decode_limit(&buf[..i]);
            let mut flipped = buf.clone();
            flipped[i] ^= 0x41;
            let _ = decode_limit(&flipped);
        }
        assert!(decode_limit(&[2, 0]).is_err());
    }

    #[test]
    fn timestamps_saturate_instead_of_wrapping() {
        assert_eq!(compose(u64::MAX), u64::MAX);
        assert_eq!(physical(compose(1_700_000_000_000)), 1_700_000_000_000);
    }
}
