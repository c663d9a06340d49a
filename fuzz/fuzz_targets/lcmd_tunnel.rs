//! libFuzzer entry point of [`grid_tests::fuzzing::lcmd_tunnel`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| grid_tests::fuzzing::lcmd_tunnel(data));
