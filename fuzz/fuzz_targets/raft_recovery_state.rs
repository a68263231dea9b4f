//! Fuzz target: `regionkv_raft::fuzzing::recovery_state` (see its doc).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| regionkv_raft::fuzzing::recovery_state(data));
