//! The configuration file: a config or an error of one line, never a panic
//! (`fusillade::fuzzing::config`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fusillade::fuzzing::config::fuzz(data));
