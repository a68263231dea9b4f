//! Fuzz target: `regionkv_wal::fuzzing::segment` (see its doc).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| regionkv_wal::fuzzing::segment(data));
