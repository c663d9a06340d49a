//! libFuzzer entry point of [`grid_tests::fuzzing::lcmd_responder`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| grid_tests::fuzzing::lcmd_responder(data));
