//! The upload line splitter and parser: the same lines at any chunking, as
//! a plain reading finds them (`fusillade::fuzzing::jsonl`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fusillade::fuzzing::jsonl::fuzz(data));
