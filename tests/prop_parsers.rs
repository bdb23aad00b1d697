//! Property tests of the parsers that need no database: the JSONL splitter
//! and line parser, the SSE parser and reassembly, and the configuration.
//! Each runs a bounded number of cases and prints how many; set
//! `PROPTEST_CASES` for longer runs, and see FUZZING.md for the fuzz targets
//! that call the same checks.

mod prop_support;

use fusillade::fuzzing;
use prop_support::{check, inputs};
use proptest::prelude::*;

#[test]
fn prop_jsonl_lines_do_not_depend_on_chunking() {
    check(
        "jsonl_lines_do_not_depend_on_chunking",
        300,
        (inputs::jsonl_file(), inputs::cuts(), 8usize..200),
        |(data, cuts, max_line)| {
            fuzzing::jsonl::check(&data.0, &cuts, max_line);
            Ok(())
        },
    );
}

#[test]
fn prop_jsonl_arbitrary_bytes() {
    check(
        "jsonl_arbitrary_bytes",
        300,
        inputs::bytes(b"\n\r{}\":\xEF\xBB\xBF ", 400),
        |input| {
            // The fuzz target's own entry, so that it stays right.
            fuzzing::jsonl::fuzz(&input.0);
            Ok(())
        },
    );
}

#[test]
fn prop_sse_events_do_not_depend_on_chunking() {
    check(
        "sse_events_do_not_depend_on_chunking",
        300,
        (inputs::sse_stream(), inputs::cuts()),
        |(data, cuts)| {
            fuzzing::sse::check(&data.0, &cuts);
            Ok(())
        },
    );
}

#[test]
fn prop_sse_arbitrary_bytes() {
    check(
        "sse_arbitrary_bytes",
        300,
        inputs::bytes(b"\n\r:data {}\xEF\xBB\xBF", 400),
        |input| {
            fuzzing::sse::fuzz(&input.0);
            Ok(())
        },
    );
}

#[test]
fn prop_config_text_gives_a_config_or_a_clear_error() {
    check(
        "config_text_gives_a_config_or_a_clear_error",
        600,
        inputs::config_text(),
        |text| {
            fuzzing::config::check(&text);
            Ok(())
        },
    );
}

#[test]
fn prop_config_arbitrary_text() {
    let text = prop_oneof![
        any::<String>().prop_map(|s| prop_support::Data(s.into_bytes())),
        inputs::bytes(b"[]=\"\n.{}#", 200),
    ];
    check("config_arbitrary_text", 600, text, |input| {
        fuzzing::config::fuzz(&input.0);
        Ok(())
    });
}
