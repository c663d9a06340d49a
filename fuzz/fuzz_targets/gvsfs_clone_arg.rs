//! libFuzzer entry point of [`grid_tests::fuzzing::gvsfs_clone_arg`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| grid_tests::fuzzing::gvsfs_clone_arg(data));
