//! The cluster's version GC safepoint, as the directory holds it (record `"G"`,
//! raised by [`DirCmd::SetGcSafepoint`](super::DirCmd::SetGcSafepoint), cluster
//! version 4): the timestamp at or below which the regions may collect the versions
//! no snapshot at or above it reads (`crate::txn::gc`). It only goes up: a command
//! below the held value changes nothing and answers the held value.
//!
//! ```text
//!  "G"  | format u8 = 1 | TLV: 1 safepoint u64 |
//! ```

use regionkv_engine::codec::{self, DecodeError, DecodeResult, TlvRecord, UnknownTags};
use regionkv_engine::{ApplyRound, ReadView};

use super::{DirResult, FORMAT_VERSION, corrupt};
use crate::error::Result;

const KEY_SAFEPOINT: &[u8] = b"G";
const SAFEPOINT: u16 = 1;

/// The safepoint the directory holds (0: none yet).
pub fn gc_safepoint(snapshot: &ReadView) -> Result<u64> {
    match snapshot.get(KEY_SAFEPOINT) {
        None => Ok(0),
        Some(value) => decode(&value).map_err(|e| corrupt("gc safepoint", &e)),
    }
}

fn encode(safepoint: u64) -> Vec<u8> {
    let mut out = vec![FORMAT_VERSION];
    codec::put_u64(&mut out, SAFEPOINT, safepoint);
    out
}

fn decode(buf: &[u8]) -> DecodeResult<u64> {
    let (&version, body) = buf.split_first().ok_or(DecodeError::new(0, "empty record"))?;
    if version != FORMAT_VERSION {
        return Err(DecodeError::new(0, "gc safepoint of an unknown format version"));
    }
    let rec = TlvRecord::parse(body, &[SAFEPOINT], UnknownTags::Skip).map_err(|e| e.shifted(1))?;
    rec.required(SAFEPOINT, "safepoint").and_then(|f| f.as_u64()).map_err(|e| e.shifted(1))
}

/// Applies a `SetGcSafepoint`: the safepoint becomes `max(held, safepoint)`.
pub(crate) fn set_safepoint(
    snapshot: &ReadView,
    round: &mut ApplyRound<'_>,
    safepoint: u64,
) -> Result<DirResult> {
    let held = gc_safepoint(snapshot)?;
    if safepoint > held {
        round.put(KEY_SAFEPOINT, &encode(safepoint))?;
    }
    Ok(DirResult::GcSafepoint { safepoint: held.max(safepoint) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_round_trips_and_damage_is_an_error() {
        assert_eq!(decode(&encode(77 << 18)), Ok(77 << 18));
        assert!(decode(&[]).is_err());
        assert!(decode(&[2, 0, 0]).is_err(), "an unknown format version");
        // The golden bytes of format 1: never changed.
        assert_eq!(encode(5), [1, 1, 0, 8, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0]);
    }
}
