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
pub mod procs;
pub mod regions;
pub mod wal;
