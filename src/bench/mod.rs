//! `regionkv bench`: throughput and latency, each next to a baseline measured in the
//! same run (the disk's raw fdatasync rate and bandwidth, a bare data structure).

pub mod engine;
