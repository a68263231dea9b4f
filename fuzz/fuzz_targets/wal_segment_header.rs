//! Fuzz target: `regionkv_wal::fuzzing::segment_header` (see its doc).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| regionkv_wal::fuzzing::segment_header(data));
