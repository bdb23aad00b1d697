//! The SSE parser and answer reassembly: the same events and answer at any
//! chunking, never a panic (`fusillade::fuzzing::sse`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fusillade::fuzzing::sse::fuzz(data));
