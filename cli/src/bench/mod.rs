//! `regionkv bench`: throughput and latency, each next to a baseline measured in the
//! same run (the disk's raw fdatasync rate and bandwidth, a bare data structure).

#![allow(
    clippy::cast_precision_loss,
    reason = "counts become f64 rates; 2^52 operations is far beyond any run"
)]

pub mod cluster;
pub mod disk;
pub mod engine;
pub mod kv;
pub mod load;
pub mod plot;
pub mod procs;
pub mod regions;
pub mod txn;
pub mod wal;

/// A bench's figures: printed as a table for a reader, or as one JSON object.
pub trait Report: serde::Serialize {
    /// Prints the figures as a table, each next to its baseline.
    fn print_table(&self);

    /// The run's curves against its client (thread, writer, region) count, for
    /// `--plot`; `None` for a bench that measures no count.
    fn chart(&self) -> Option<plot::Chart> {
        None
    }

    /// Prints the figures as `json` asks.
    fn print(&self, json: bool) -> serde_json::Result<()> {
        if json {
            println!("{}", serde_json::to_string_pretty(self)?);
        } else {
            self.print_table();
        }
        Ok(())
    }
}
