//! Checks of the upstream before anything is sent: one is named, and its
//! host resolves and accepts connections. (Wrong paths and keys show only
//! in answers: the daemon's monitor catches those on the first calls.)

use crate::cli::{CliError, runtime, usage};
use anyhow::anyhow;
use fusillade::config::{Config, Route};
use std::time::Duration;

/// Refuses to guess an upstream: it must come from `--upstream` or the config.
pub fn upstream_named(config: &Config) -> Result<(), CliError> {
    if config.upstream_url_given {
        return Ok(());
    }
    Err(usage(anyhow!(
        "no upstream to send the requests to: pass --upstream URL (the server's base URL, \
         e.g. --upstream http://127.0.0.1:8000 for a local vLLM; the input's path \
         /v1/... is appended), or set url under [upstream] in a --config file"
    )))
}

/// Resolves and connects to every route's host (each once).
pub async fn reachable(config: &Config) -> Result<(), CliError> {
    let mut seen = Vec::new();
    for route in std::iter::once(&config.upstream).chain(config.models.values()) {
        if seen.contains(&route.url) {
            continue;
        }
        seen.push(route.url.clone());
        connect(route).await?;
    }
    Ok(())
}

async fn connect(route: &Route) -> Result<(), CliError> {
    let fail = |cause: String| {
        runtime(anyhow!(
            "cannot reach the upstream {}: {cause}; nothing was sent (check --upstream or [upstream] url)",
            route.url
        ))
    };
    let url = url::Url::parse(&route.url).map_err(|e| fail(e.to_string()))?;
    let host = url
        .host_str()
        .ok_or_else(|| fail("the URL has no host".into()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = url
        .port_or_known_default()
        .ok_or_else(|| fail("the URL has no port".into()))?;
    let wait = route.connect_timeout.min(Duration::from_secs(10));
    let addrs: Vec<_> =
        match tokio::time::timeout(wait, tokio::net::lookup_host((host.as_str(), port))).await {
            Err(_) => return Err(fail(format!("resolving {host} timed out"))),
            Ok(Err(e)) => return Err(fail(format!("cannot resolve {host}: {e}"))),
            Ok(Ok(a)) => a.collect(),
        };
    let mut last = format!("{host} has no address");
    for addr in addrs {
        match tokio::time::timeout(wait, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => last = format!("connecting to {addr}: {e}"),
            Err(_) => last = format!("connecting to {addr} timed out"),
        }
    }
    Err(fail(last))
}
