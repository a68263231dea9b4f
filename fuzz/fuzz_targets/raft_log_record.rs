//! Fuzz target: `regionkv_raft::fuzzing::log_record` (see its doc).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| regionkv_raft::fuzzing::log_record(data));
