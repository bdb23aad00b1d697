//! HTTP to the model servers: routing by model, the client with its timeouts,
//! and SSE reassembly.
//!
//! - Every failure is a [`CallOutcome`], never a panic or an error: timeouts
//!   by phase (`connect`, `first_byte`, `idle`, `total`, `deadline`), broken
//!   connections, and answers larger than the route allows.
//! - Calls to a path listed in the route's `stream_paths` are sent with
//!   `"stream": true` and their SSE answer is put back into the shape of the
//!   non-streamed answer ([`sse`]). A stream that ends in an error event is
//!   answered as a 502 carrying that event's JSON.
//! - API keys never appear in a message.

mod client;
pub mod header_text;
pub mod priority;
pub mod sse;
pub mod trace;

use crate::config::Config;
use crate::domain::request::RequestId;
use crate::domain::retry::Attempt;
use chrono::{DateTime, Utc};
use std::time::Duration;

/// One call to make.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamRequest<'a> {
    /// The request's id, sent as `X-Request-Id` and `X-Fusillade-Request-Id`.
    pub request_id: RequestId,
    /// Its batch, sent as `X-Fusillade-Batch-Id` when present.
    pub batch_id: Option<crate::domain::batch::BatchId>,
    /// The caller's id, sent as `X-Fusillade-Custom-Id` when present.
    pub custom_id: Option<&'a str>,
    /// Routes the call (see [`Config::route`]).
    pub model: &'a str,
    /// The endpoint path, appended to the route's base URL.
    pub path: &'a str,
    /// The JSON body, sent exactly as given (unless the path streams).
    pub body: &'a str,
    /// A base URL that replaces the route's ("" for none).
    pub endpoint_override: &'a str,
    /// No part of the call may run past this instant.
    pub deadline: Option<DateTime<Utc>>,
}

/// How a call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallOutcome {
    /// The upstream answered (any status).
    Answered {
        /// HTTP status.
        status: u16,
        /// The body's bytes as received, whatever they are (for a streamed
        /// call, the reassembled JSON).
        body: Vec<u8>,
        /// The upstream's `x-request-id` (or `request-id`) header.
        upstream_request_id: Option<String>,
        /// The wait asked for by `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// A timeout fired; `phase` is `connect`, `first_byte`, `idle`, `total` or `deadline`.
    TimedOut {
        /// Which timeout.
        phase: &'static str,
    },
    /// The connection failed or broke; the message says how (no secrets).
    ConnectionFailed {
        /// What happened.
        message: String,
    },
    /// The answer was larger than the route's `max_response_bytes`.
    BodyTooLarge {
        /// The limit.
        limit: u64,
    },
}

impl CallOutcome {
    /// The outcome in the terms of the retry rules.
    pub fn attempt(&self) -> Attempt {
        match self {
            CallOutcome::Answered {
                status,
                retry_after,
                ..
            } => Attempt::Answered {
                status: *status,
                retry_after: *retry_after,
            },
            CallOutcome::TimedOut { .. } => Attempt::TimedOut,
            CallOutcome::ConnectionFailed { .. } => Attempt::ConnectionFailed,
            // Retrying would fetch the same oversized answer.
            CallOutcome::BodyTooLarge { .. } => Attempt::Unusable,
        }
    }
}

/// The client: pooled reqwest clients (one per distinct connect timeout of the
/// routes), built from the configuration (rebuild it to apply a reloaded
/// configuration). Cloning is cheap and shares the pools.
#[derive(Clone)]
pub struct UpstreamClient {
    config: std::sync::Arc<Config>,
    clients: std::sync::Arc<client::Clients>,
}

impl std::fmt::Debug for UpstreamClient {
    // Only the routes: the configuration also holds the API's own keys.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamClient")
            .field("upstream", &self.config.upstream)
            .field("models", &self.config.models)
            .finish_non_exhaustive()
    }
}

impl UpstreamClient {
    /// Builds the clients for every route of `config`. Never panics: a client
    /// that cannot be built makes every call a `ConnectionFailed` saying why.
    pub fn new(config: std::sync::Arc<Config>) -> Self {
        let clients = std::sync::Arc::new(client::Clients::build(&config));
        Self { config, clients }
    }

    /// The configuration the client routes by.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Makes one call. Never panics and never returns an error: every failure
    /// is an outcome.
    pub async fn send(&self, req: &UpstreamRequest<'_>) -> CallOutcome {
        client::send(&self.config, &self.clients, req, None).await
    }

    /// [`UpstreamClient::send`] for a request of this prefix group: on a
    /// route with replicas, the group goes to the same replica while that
    /// one has room (below its `concurrency`), else to the least busy; with
    /// no group, calls are dealt to the replicas in turn.
    pub async fn send_grouped(
        &self,
        req: &UpstreamRequest<'_>,
        prefix_key: Option<i64>,
    ) -> CallOutcome {
        client::send(&self.config, &self.clients, req, prefix_key).await
    }
}
