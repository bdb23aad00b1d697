//! What the property tests share: a runner that runs a bounded number of
//! cases and prints how many it ran (`.config/nextest.toml` shows that line
//! for passing tests too), the generators of the inputs, and a throwaway
//! database for the properties that need one.
#![allow(dead_code)]

pub mod db;
pub mod harness;
pub mod inputs;

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, TestCaseResult, TestRunner};
use std::cell::Cell;
use std::fmt::Debug;

/// How many cases a property runs: `PROPTEST_CASES` when set (for longer
/// runs), else `default`.
pub fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `test` on [`cases`]`(default)` inputs drawn from `strategy`,
/// shrinking a failing one, and prints `property NAME: N cases passed`.
pub fn check<S>(name: &str, default: u32, strategy: S, test: impl Fn(S::Value) -> TestCaseResult)
where
    S: Strategy,
    S::Value: Debug,
{
    let cases = cases(default);
    let mut runner = TestRunner::new(Config {
        cases,
        // A failure is fixed with a named regression test, not a file.
        failure_persistence: None,
        ..Config::default()
    });
    let ran = Cell::new(0u32);
    // Every case that fails while shrinking would print its panic: only
    // the smallest one is worth reading, and the runner reports it.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let outcome = runner.run(&strategy, |input| {
        ran.set(ran.get() + 1);
        test(input)
    });
    std::panic::set_hook(hook);
    match outcome {
        Ok(()) => println!("property {name}: {} cases passed", ran.get()),
        Err(e) => panic!("property {name} failed (after {} runs): {e}", ran.get()),
    }
}

/// Bytes that print as an escaped byte string, to read a failing input.
#[derive(Clone, PartialEq, Eq)]
pub struct Data(pub Vec<u8>);

impl Debug for Data {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "b\"{}\"", self.0.escape_ascii())
    }
}
