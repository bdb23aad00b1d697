//! fusillade: runs large batches of LLM requests against OpenAI-compatible
//! inference servers, with PostgreSQL as its only state.

pub mod domain;
