//! `open`: the one place that turns a configuration into a store, picking
//! the backend from the database URL.

use super::{BackendError, PostgresStore};
use crate::config::Config;
use std::time::Duration;

/// The store [`open`] returns: PostgreSQL's today; an enum over the
/// backends, implementing the same traits, once there are two.
pub type Store = PostgresStore;

/// Why a store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The configuration names no database.
    #[error("no database URL is configured")]
    NoDatabase,
    /// The URL's scheme names no backend this build has.
    #[error(
        "unsupported database URL {url}: the supported schemes are postgres:// and postgresql://"
    )]
    Unsupported {
        /// The URL, its password hidden.
        url: String,
    },
    /// The database could not be reached or refused the connection.
    #[error("cannot connect to the database at {url}: {source}")]
    Connect {
        /// The URL, its password hidden.
        url: String,
        /// Why.
        source: BackendError,
    },
    /// The schema could not be brought up to date.
    #[error("migrating the database failed: {0}")]
    Migrate(#[source] BackendError),
}

impl OpenError {
    /// Whether the configuration is at fault (a missing, malformed or
    /// unreachable database), as opposed to the database failing once reached.
    pub fn is_configuration(&self) -> bool {
        !matches!(self, OpenError::Migrate(_))
    }
}

/// Opens the database that `config.database_url` names, brings its schema
/// up to date, and applies the config's `[api]` upload limits and endpoints,
/// so that every command reads one configuration the same way. Statements
/// wait at most `acquire_timeout` for a pooled connection.
pub async fn open(config: &Config, acquire_timeout: Duration) -> Result<Store, OpenError> {
    let url = config
        .database_url
        .as_deref()
        .filter(|u| !u.is_empty())
        .ok_or(OpenError::NoDatabase)?;
    let scheme = url.split_once("://").map_or("", |(s, _)| s);
    match scheme {
        "postgres" | "postgresql" => {
            let pool = super::postgres::connect(url, acquire_timeout).await?;
            super::migrate(&pool)
                .await
                .map_err(|e| OpenError::Migrate(BackendError::with_source(e.to_string(), e)))?;
            Ok(PostgresStore::new(pool).with_limits(config.api.ingest_limits()))
        }
        _ => Err(OpenError::Unsupported { url: redact(url) }),
    }
}

/// The URL with any password replaced, for messages and logs.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}
