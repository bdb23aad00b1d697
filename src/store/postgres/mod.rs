//! What only the PostgreSQL backend knows: how domain types are encoded,
//! how the server's errors map to [`StoreError`](super::StoreError), and
//! how a store is connected. The per-table modules beside `store/mod.rs`
//! are PostgreSQL's too; they move under this module once the branches
//! that change them have landed.

mod connect;
mod errors;
mod types;

pub(crate) use connect::connect;
