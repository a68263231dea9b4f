//! Fuzz target: `regionkv_engine::fuzzing::manifest` (see its doc).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| regionkv_engine::fuzzing::manifest(data));
