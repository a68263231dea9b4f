//! Lifecycle primitives: cancellation, gates, and timelines (Neon's shutdown pattern).
//!
//! Every long-lived task holds a [`CancellationToken`] (a child of its owner's) and a
//! [`GateGuard`] of the thing it works on. Shutdown cancels the tokens from the top of
//! the hierarchy down, then closes gates, which waits (bounded) until every task has
//! left, and only then flushes. A [`Timeline`] packages this for one ordered ingest
//! stream and classifies every error seen after shutdown began as `Cancelled`.

mod cancel;
mod gate;
mod timeline;

pub use cancel::CancellationToken;
pub use gate::{Gate, GateClosed, GateGuard, GateTimeout};
pub use timeline::{IngestError, Position, ShutdownError, Timeline, TimelineState};
