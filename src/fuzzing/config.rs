//! The configuration file: whatever the text, [`Config::parse`] gives a
//! configuration or an error of one line that says what is wrong, and a
//! key read from the environment never shows in the configuration's Debug.

use crate::config::{Config, ConfigError};

/// The value the environment gives every variable named `KEY…`: a secret
/// that must never reach Debug output.
pub const SECRET: &str = "sk-fuzz-secret-7f3a";

fn env(name: &str) -> Option<String> {
    name.starts_with("KEY").then(|| SECRET.to_owned())
}

/// Parses `text` with an environment where every `KEY…` variable is set.
pub fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, "fuzz.toml", &env)
}

/// The property; panics when it fails.
pub fn check(text: &str) {
    match parse(text) {
        Ok(config) => {
            if !text.contains(SECRET) {
                assert!(
                    !format!("{config:?}").contains(SECRET),
                    "a key from the environment shows in Debug"
                );
            }
        }
        Err(e) => {
            let message = e.to_string();
            assert!(!message.trim().is_empty(), "an empty error: {e:?}");
            assert!(
                !message.contains('\n'),
                "an error of several lines: {message}"
            );
            if let ConfigError::Invalid { key, .. } = &e {
                assert!(!key.is_empty(), "an error that names no key: {message}");
            }
        }
    }
}

/// The fuzz target's entry: [`check`] on the input as text (bytes that are
/// not UTF-8 replaced, as reading a config file would refuse them).
pub fn fuzz(input: &[u8]) {
    check(&String::from_utf8_lossy(input));
}
