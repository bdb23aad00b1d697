//! The streamed-answer path: [`SseParser`] over chunks as they arrive, and
//! [`Reassembler`] putting the events back into one answer. Neither may
//! care how the stream was cut, and neither may panic, whatever the bytes.

use crate::upstream::sse::{Reassembler, SseParser, StreamEnd};

/// The data of every event of `data` fed in the chunks [`super::chunks`]
/// makes of `cuts`, and the answer reassembled from them.
pub fn events(data: &[u8], cuts: &[usize]) -> (Vec<Vec<u8>>, Result<String, StreamEnd>) {
    let mut parser = SseParser::new();
    let mut reassembler = Reassembler::new();
    let mut out = Vec::new();
    let mut take = |d: &[u8]| {
        out.push(d.to_vec());
        reassembler.event(d);
    };
    for chunk in super::chunks(data, cuts) {
        parser.feed(chunk, &mut take);
        // What is held back is at most the stream's unfinished tail.
        assert!(
            parser.pending_len() <= data.len(),
            "the parser holds more than it was given"
        );
    }
    parser.finish(&mut take);
    (out, reassembler.finish())
}

/// The property: `data` cut at `cuts`, one byte at a time (with empty reads
/// between), and in one piece
/// gives the same events and the same answer; an answer, and an upstream
/// error, is JSON. Panics when any of
/// it fails.
pub fn check(data: &[u8], cuts: &[usize]) {
    let whole = events(data, &[]);
    let cut = events(data, cuts);
    assert_eq!(cut, whole, "cut at {cuts:?}: not the same as one chunk");
    // One byte at a time, with an empty read between any two.
    let every: Vec<usize> = (1..data.len()).flat_map(|i| [i, i]).collect();
    assert_eq!(
        events(data, &every),
        whole,
        "fed byte by byte: not the same as one chunk"
    );
    match &whole.1 {
        Ok(answer) | Err(StreamEnd::UpstreamError(answer)) => assert!(
            serde_json::from_str::<serde_json::Value>(answer).is_ok(),
            "not JSON: {answer}"
        ),
        Err(StreamEnd::Incomplete(why)) => assert!(!why.is_empty()),
    }
}

/// The fuzz target's entry: [`check`] on an input read by
/// [`super::split_input`].
pub fn fuzz(input: &[u8]) {
    let (_, cuts, data) = super::split_input(input);
    check(data, &cuts);
}
