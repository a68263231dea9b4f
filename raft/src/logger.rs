//! raft-rs logs through `slog`; this sends its records to `tracing`.

use std::fmt::{self, Write};

use slog::{Drain, KV, Level, OwnedKVList, Record, Serializer};

/// A `slog` drain that forwards records to `tracing` at the matching level.
#[derive(Debug)]
pub(crate) struct TracingDrain;

struct Fields<'a>(&'a mut String);

impl Serializer for Fields<'_> {
    fn emit_arguments(&mut self, key: slog::Key, val: &fmt::Arguments<'_>) -> slog::Result {
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

impl Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), slog::Never> {
        let mut fields = String::new();
        let _ = record.kv().serialize(record, &mut Fields(&mut fields));
        let _ = values.serialize(record, &mut Fields(&mut fields));
        let msg = record.msg();
        match record.level() {
            Level::Critical | Level::Error => tracing::error!(target: "raft", "{msg}{fields}"),
            Level::Warning => tracing::warn!(target: "raft", "{msg}{fields}"),
            Level::Info => tracing::debug!(target: "raft", "{msg}{fields}"),
            Level::Debug | Level::Trace => tracing::trace!(target: "raft", "{msg}{fields}"),
        }
        Ok(())
    }
}

/// The logger handed to every `RawNode`.
pub(crate) fn raft_logger() -> slog::Logger {
    slog::Logger::root(TracingDrain.fuse(), slog::o!())
}
