//! Fuzz target: `regionkv_wal::fuzzing::record` (see its doc).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| regionkv_wal::fuzzing::record(data));
