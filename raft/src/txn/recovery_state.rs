//! The transaction recovery daemon's store-local state, kept in the store engine's
//! manifest as task state [`TASK`] (`"txn.recovery"`): the deferred-gate markers
//! (ARCHITECTURE.md, "The recovery daemon"). Non-authoritative: a state that does not
//! decode is dropped with a log line (the daemon starts afresh), never a panic, and
//! nothing a transaction's outcome depends on lives here.
//!
//! ```text
//!  byte 0   format (1)
//!  TLV      1 marker (nested, repeated): 1 gate code, 2 since ms, 3 logged boot (optional)
//! ```
//!
//! Gate codes reserve 0 for Unspecified: 1 local format, 2 cluster version, 3 record
//! format, 4 shutdown. A marker of a code this binary does not know is skipped.

use regionkv_engine::Engine;
use regionkv_engine::codec::{self, TlvRecord, UnknownTags};

use super::recovery::Gate;

/// The task-state name in the engine's manifest.
pub const TASK: &str = "txn.recovery";

/// The format byte this binary writes and reads.
const FORMAT: u8 = 1;

const T_MARKER: u16 = 1;
const M_GATE: u16 = 1;
const M_SINCE_MS: u16 = 2;
const M_LOGGED_BOOT: u16 = 3;

/// A gate that has deferred the daemon's turns since `since_ms` (every turn since
/// then was deferred by it, across restarts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeferredMarker {
    /// The closed gate.
    pub gate: Gate,
    /// The store's clock (ms since the Unix epoch) at the first deferred turn.
    pub since_ms: u64,
    /// The store boot that logged the deferral at info (`None`: none yet): once per
    /// boot and gate, then at debug.
    pub logged_boot: Option<u64>,
}

/// What the daemon keeps in [`TASK`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryState {
    /// One marker per gate that defers turns now, in gate order.
    pub deferred: Vec<DeferredMarker>,
}

fn gate_code(gate: Gate) -> u64 {
    match gate {
        Gate::LocalFormat => 1,
        Gate::ClusterVersion => 2,
        Gate::RecordFormat => 3,
        Gate::Shutdown => 4,
    }
}

fn gate_of(code: u64) -> Option<Gate> {
    Gate::ALL.into_iter().find(|g| gate_code(*g) == code)
}

impl RecoveryState {
    /// The marker of `gate`, if it defers turns.
    pub fn marker(&self, gate: Gate) -> Option<&DeferredMarker> {
        self.deferred.iter().find(|m| m.gate == gate)
    }

    /// The marker of `gate`, made (deferred since `now_ms`) if there is none.
    pub fn marker_mut(&mut self, gate: Gate, now_ms: u64) -> &mut DeferredMarker {
        if self.marker(gate).is_none() {
            self.deferred.push(DeferredMarker { gate, since_ms: now_ms, logged_boot: None });
            self.deferred.sort_by_key(|m| m.gate);
        }
        let at = self.deferred.iter().position(|m| m.gate == gate).expect("present");
        &mut self.deferred[at]
    }

    /// The first gate (in check order) that defers turns, and since when.
    pub fn first_deferred(&self) -> Option<(Gate, u64)> {
        self.deferred.iter().min_by_key(|m| m.gate).map(|m| (m.gate, m.since_ms))
    }

    /// The bytes of [`TASK`].
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![FORMAT];
        for m in &self.deferred {
            let mut nested = Vec::new();
            codec::put_u64(&mut nested, M_GATE, gate_code(m.gate));
            codec::put_u64(&mut nested, M_SINCE_MS, m.since_ms);
            if let Some(boot) = m.logged_boot {
                codec::put_u64(&mut nested, M_LOGGED_BOOT, boot);
            }
            codec::put_field(&mut out, T_MARKER, &nested);
        }
        out
    }

    /// Decodes [`TASK`]'s bytes; why not, if they do not decode (another format,
    /// damage). Unknown tags and markers of unknown gates are skipped.
    pub fn decode(buf: &[u8]) -> Result<RecoveryState, String> {
        let (&format, body) = buf.split_first().ok_or("empty")?;
        if format != FORMAT {
            return Err(format!("format {format}, this binary reads {FORMAT}"));
        }
        let text = |e: codec::DecodeError| format!("{} at byte {}", e.reason, e.offset);
        let rec = TlvRecord::parse(body, &[T_MARKER], UnknownTags::Skip).map_err(text)?;
        let mut state = RecoveryState::default();
        for field in rec.repeated(T_MARKER) {
            let known = [M_GATE, M_SINCE_MS, M_LOGGED_BOOT];
            let m = TlvRecord::parse(field.value, &known, UnknownTags::Skip).map_err(text)?;
            let code = m.required(M_GATE, "gate").and_then(|f| f.as_u64()).map_err(text)?;
            let since_ms =
                m.required(M_SINCE_MS, "since ms").and_then(|f| f.as_u64()).map_err(text)?;
            let logged_boot = match m.optional(M_LOGGED_BOOT).map_err(text)? {
                Some(f) => Some(f.as_u64().map_err(text)?),
                None => None,
            };
            let Some(gate) = gate_of(code) else { continue };
            if state.marker(gate).is_none() {
                state.deferred.push(DeferredMarker { gate, since_ms, logged_boot });
            }
        }
        state.deferred.sort_by_key(|m| m.gate);
        Ok(state)
    }

    /// The state `engine` keeps; a state that does not decode is dropped with a log
    /// line (the daemon starts afresh: nothing in it is authoritative).
    pub fn load(engine: &Engine) -> RecoveryState {
        let Some(bytes) = engine.task_state(TASK) else { return RecoveryState::default() };
        RecoveryState::decode(&bytes).unwrap_or_else(|why| {
            tracing::warn!(
                task = TASK,
                why,
                "the transaction recovery daemon's saved state does not decode: dropped"
            );
            RecoveryState::default()
        })
    }

    /// Stores this state in `engine`'s manifest, durably (an empty one removes it).
    pub fn save(&self, engine: &Engine) -> regionkv_engine::Result<()> {
        let bytes = (!self.deferred.is_empty()).then(|| self.encode());
        engine.set_task_state(TASK, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> RecoveryState {
        RecoveryState {
            deferred: vec![
                DeferredMarker { gate: Gate::LocalFormat, since_ms: 5, logged_boot: None },
                DeferredMarker { gate: Gate::ClusterVersion, since_ms: 7, logged_boot: Some(9) },
            ],
        }
    }

    #[test]
    fn the_state_round_trips_and_an_empty_one_is_the_format_byte() {
        assert_eq!(RecoveryState::decode(&state().encode()), Ok(state()));
        assert_eq!(RecoveryState::default().encode(), vec![FORMAT]);
        assert_eq!(RecoveryState::decode(&[FORMAT]), Ok(RecoveryState::default()));
        assert_eq!(state().first_deferred(), Some((Gate::LocalFormat, 5)));
    }

    #[test]
    fn another_format_or_damage_does_not_decode_and_unknown_gates_are_skipped() {
        assert!(RecoveryState::decode(&[]).is_err());
        assert!(RecoveryState::decode(&[2]).is_err(), "a newer format");
        assert!(RecoveryState::decode(&[0]).is_err(), "format 0");
        let mut cut = state().encode();
        cut.truncate(cut.len() - 1);
        assert!(RecoveryState::decode(&cut).is_err(), "damaged");
        // A marker of gate code 0 (Unspecified) and one of a newer gate: skipped.
        let mut bytes = vec![FORMAT];
        for code in [0, 99, 2] {
            let mut nested = Vec::new();
            codec::put_u64(&mut nested, M_GATE, code);
            codec::put_u64(&mut nested, M_SINCE_MS, 1);
            codec::put_field(&mut bytes, T_MARKER, &nested);
        }
        let got = RecoveryState::decode(&bytes).unwrap();
        let marker = DeferredMarker { gate: Gate::ClusterVersion, since_ms: 1, logged_boot: None };
        assert_eq!(got.deferred, vec![marker]);
    }

    fn golden_path() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden/txn-recovery-state-v1.bin")
    }

    #[test]
    #[ignore = "writes the golden file of format 1; run once, never again after it is committed"]
    fn regenerate_golden_state() {
        std::fs::write(golden_path(), state().encode()).unwrap();
    }

    #[test]
    fn the_golden_state_of_format_1_decodes_and_encodes_byte_for_byte() {
        let golden = std::fs::read(golden_path()).unwrap();
        assert_eq!(RecoveryState::decode(&golden), Ok(state()));
        assert_eq!(state().encode(), golden);
    }

    #[test]
    fn a_marker_is_made_once_and_keeps_its_start() {
        let mut s = RecoveryState::default();
        s.marker_mut(Gate::ClusterVersion, 10).logged_boot = Some(1);
        assert_eq!(s.marker_mut(Gate::ClusterVersion, 20).since_ms, 10);
        s.marker_mut(Gate::LocalFormat, 30);
        assert_eq!(
            s.deferred.iter().map(|m| m.gate).collect::<Vec<_>>(),
            [Gate::LocalFormat, Gate::ClusterVersion]
        );
    }
}
