//! Bearer keys (SPEC §3, §4): each key of `[auth] keys` maps to an owner;
//! every file and batch belongs to the owner that created it, and every route
//! under `/v1` sees only the caller's own objects (another owner's id is a
//! 404, exactly like an id that does not exist). Without `[auth]` every
//! caller is the owner `""`, which `fusillade serve` allows only on a
//! loopback address.
//!
//! Keys are compared by their SHA-256 digests, so the lookup's timing says
//! nothing about how much of a guessed key was right, and the key itself is
//! never logged or echoed.

use super::error::ApiError;
use super::{ApiBackend, ApiState};
use crate::config::Config;
use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;

/// Who is calling: set on every `/v1` request by [`require`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The owner of the key used ("" when auth is off).
    pub owner: String,
}

/// The keys of one configuration, by digest; `None` when auth is off.
#[derive(Debug, Default)]
pub struct AuthTable {
    keys: Option<HashMap<[u8; 32], String>>,
}

impl AuthTable {
    /// The table for `config`.
    pub fn new(config: &Config) -> Self {
        Self {
            keys: config.auth.as_ref().map(|keys| {
                keys.iter()
                    .map(|(key, owner)| (digest(key), owner.clone()))
                    .collect()
            }),
        }
    }

    /// Whether keys are required.
    pub fn enabled(&self) -> bool {
        self.keys.is_some()
    }

    /// The caller for an `Authorization` header value (or its absence).
    pub fn caller(&self, header: Option<&str>) -> Result<Caller, ApiError> {
        let Some(keys) = &self.keys else {
            return Ok(Caller {
                owner: String::new(),
            });
        };
        let header = header.ok_or_else(|| {
            ApiError::unauthorized(
                "You didn't provide an API key. Send it in the Authorization header as \
                 `Bearer KEY`.",
            )
        })?;
        let key = header
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, key)| key.trim())
            .filter(|key| !key.is_empty())
            .ok_or_else(|| {
                ApiError::unauthorized("The Authorization header must be `Bearer KEY`.")
            })?;
        keys.get(&digest(key))
            .map(|owner| Caller {
                owner: owner.clone(),
            })
            .ok_or_else(|| ApiError::unauthorized("Incorrect API key provided."))
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Middleware: answers 401 unless the request carries a known key, and
/// records the [`Caller`] for the handlers.
pub async fn require<S: ApiBackend>(
    State(state): State<ApiState<S>>,
    mut request: Request,
    next: Next,
) -> Response {
    let table: Arc<AuthTable> = state.auth_table();
    let header = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match table.caller(header) {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(e) => e.into_response(),
    }
}
