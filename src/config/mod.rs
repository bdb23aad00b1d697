//! The TOML configuration (SPEC §3): read, checked, and turned into typed
//! settings in a second step, so that the rest of the crate never sees raw
//! values. Unknown keys and wrong types are errors that name the key.

use crate::domain::retry::RetryPolicy;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// A configuration that could not be used; the message names the key or cause.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is malformed, or a key is unknown or of the wrong type.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message, which names the key and line.
        message: String,
    },
    /// A value is well-formed but not acceptable.
    #[error("config key {key}: {message}")]
    Invalid {
        /// The dotted key.
        key: String,
        /// Why it is refused.
        message: String,
    },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// The file's shape, exactly as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    database_url: Option<String>,
    #[serde(default)]
    upstream: RawRoute,
    #[serde(default)]
    models: BTreeMap<String, RawRoute>,
    #[serde(default)]
    daemon: RawDaemon,
    auth: Option<RawAuth>,
    #[serde(default)]
    api: RawApi,
    #[serde(default)]
    owners: BTreeMap<String, RawOwner>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOwner {
    weight: Option<u32>,
    max_in_flight: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    max_upload_bytes: Option<u64>,
    endpoints: Option<Vec<String>>,
    max_concurrent_uploads: Option<u32>,
    upload_idle_timeout_secs: Option<u64>,
    upload_spool_dir: Option<String>,
    batch_read_interval_ms: Option<u64>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    url: Option<String>,
    urls: Option<Vec<String>>,
    api_key_env: Option<String>,
    concurrency: Option<u32>,
    connect_timeout_ms: Option<u64>,
    first_byte_timeout_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    total_timeout_ms: Option<u64>,
    max_response_bytes: Option<u64>,
    stream_paths: Option<Vec<String>>,
    coalesce: Option<String>,
    embeddings_pack: Option<u32>,
    embeddings_pack_tokens: Option<u64>,
    priority_hint: Option<String>,
    traceparent: Option<bool>,
    escalate_to: Option<String>,
    escalate_within: Option<String>,
    escalate_wait: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    max_retries: Option<u32>,
    backoff_ms: Option<u64>,
    max_backoff_ms: Option<u64>,
    claim_batch: Option<u32>,
    prefix_grouping: Option<bool>,
    heartbeat_ms: Option<u64>,
    stale_after_ms: Option<u64>,
    shutdown_grace_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    keys: BTreeMap<String, String>,
    #[serde(default)]
    admins: Vec<String>,
}

/// Where and how requests for one model are sent.
#[derive(Clone, PartialEq, Eq)]
pub struct Route {
    /// Base URL; the request's path is appended. With several replicas,
    /// the first of them.
    pub url: String,
    /// The replicas' base URLs (`urls`), each taking the configured
    /// `concurrency` calls at once; empty for a route with one `url`.
    pub replicas: Vec<String>,
    /// Bearer key sent upstream, read from the environment.
    pub api_key: Option<String>,
    /// Most requests of this model in flight, across all daemons (with
    /// replicas: the `concurrency` of each, times their number).
    pub concurrency: u32,
    /// Time allowed to open a connection.
    pub connect_timeout: Duration,
    /// Time allowed from sending to the first byte of the answer.
    pub first_byte_timeout: Duration,
    /// Time allowed between two chunks of the answer.
    pub idle_timeout: Duration,
    /// Time allowed for the whole call.
    pub total_timeout: Duration,
    /// Largest answer body kept; a larger one is an error.
    pub max_response_bytes: u64,
    /// Endpoint paths called with `"stream": true` and reassembled.
    pub stream_paths: Vec<String>,
    /// Send identical deterministic requests once (`coalesce =
    /// "deterministic"`, the default); `"never"` sends every line.
    pub coalesce: bool,
    /// Most single-input embeddings lines sent in one call (1: each alone).
    pub embeddings_pack: u32,
    /// Most input tokens (estimated as bytes / 4) of one packed call.
    pub embeddings_pack_tokens: u64,
    /// The deadline written into each body as a scheduling hint for the
    /// server (`priority_hint`; see `upstream::priority`), if any.
    pub priority_hint: Option<crate::upstream::priority::PriorityHint>,
    /// Tracing on: each call carries a W3C `traceparent` (`traceparent =
    /// true`; see `upstream::trace`).
    pub traceparent: bool,
}

impl std::fmt::Debug for Route {
    // The key must never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("url", &self.url)
            .field("replicas", &self.replicas)
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .field("concurrency", &self.concurrency)
            .field("total_timeout", &self.total_timeout)
            .finish_non_exhaustive()
    }
}

/// The fewest heartbeats `daemon.stale_after_ms` must span: a daemon stops
/// its calls one heartbeat before the window ends, so this leaves it two
/// heartbeats of slack before it must give up its work.
pub const STALE_HEARTBEATS: u32 = 3;

/// Daemon settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonSettings {
    /// Retries and backoff.
    pub retry: RetryPolicy,
    /// Most requests claimed in one statement.
    pub claim_batch: u32,
    /// Claim requests in prefix-group order and send each group to one
    /// replica (`prefix_grouping`, default true); false claims in line
    /// order and deals calls to replicas in turn.
    pub prefix_grouping: bool,
    /// How often a daemon says it is alive.
    pub heartbeat: Duration,
    /// After how long without a heartbeat a daemon is declared dead and its
    /// claims are rescued; at least [`STALE_HEARTBEATS`] heartbeats. A daemon
    /// that cannot heartbeat for this long less one heartbeat stops its calls
    /// on its own, and a dead daemon's slots count against the limits for
    /// this long again.
    pub stale_after: Duration,
    /// How long calls in flight may finish after a stop is asked for.
    pub shutdown_grace: Duration,
}

impl Default for DaemonSettings {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            claim_batch: 512,
            prefix_grouping: true,
            heartbeat: Duration::from_secs(2),
            stale_after: Duration::from_secs(15),
            shutdown_grace: Duration::from_secs(20),
        }
    }
}

/// Settings of the HTTP API (`[api]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiSettings {
    /// The largest accepted upload, in bytes (larger ones answer 413).
    pub max_upload_bytes: u64,
    /// The endpoints a batch (and each input line) may target.
    pub endpoints: Vec<String>,
    /// Uploads received at once; more answer 429 with `Retry-After`.
    pub max_concurrent_uploads: u32,
    /// An upload whose client sends nothing for this long is cut off (408).
    pub upload_idle_timeout: Duration,
    /// Where uploads are spooled before they are stored (default: the
    /// system's temporary directory, `TMPDIR`).
    pub upload_spool_dir: Option<std::path::PathBuf>,
    /// While clients read one batch at once, its shared queries start at
    /// most this often (0: back to back); see `api::batch_reads`.
    pub batch_read_interval: Duration,
}

impl ApiSettings {
    /// The store's upload limits and allowed endpoints, as `[api]` sets them.
    pub fn ingest_limits(&self) -> crate::domain::file::IngestLimits {
        crate::domain::file::IngestLimits {
            max_file_bytes: self.max_upload_bytes,
            endpoints: self.endpoints.clone(),
            ..Default::default()
        }
    }
}

impl Default for ApiSettings {
    fn default() -> Self {
        let limits = crate::domain::file::IngestLimits::default();
        Self {
            max_upload_bytes: limits.max_file_bytes,
            endpoints: limits.endpoints,
            max_concurrent_uploads: 8,
            upload_idle_timeout: Duration::from_secs(30),
            upload_spool_dir: None,
            batch_read_interval: Duration::from_millis(25),
        }
    }
}

/// The checked configuration.
#[derive(Clone)]
pub struct Config {
    /// Address the API listens on.
    pub listen: Option<SocketAddr>,
    /// PostgreSQL URL.
    pub database_url: Option<String>,
    /// The default route.
    pub upstream: Route,
    /// Whether the file named the default route's URL (else it is the
    /// built-in `http://127.0.0.1:8000`, which `fusillade run` refuses to
    /// assume).
    pub upstream_url_given: bool,
    /// Per-model routes (the default with the model's overrides applied).
    pub models: BTreeMap<String, Route>,
    /// Daemon settings.
    pub daemon: DaemonSettings,
    /// Bearer key -> owner; `None` means no auth.
    pub auth: Option<BTreeMap<String, String>>,
    /// Owners who may read the models and workers pages (`[auth] admins`).
    pub admins: BTreeSet<String>,
    /// HTTP API settings.
    pub api: ApiSettings,
    /// Scheduling settings per owner (`[owners."x"]`); owners not named
    /// have weight 1 and no cap.
    pub owners: BTreeMap<String, OwnerSettings>,
    /// Escalation rules by the model they escalate from
    /// (`[models."X"] escalate_to`; see `domain::escalation`).
    pub escalations: crate::domain::escalation::Rules,
}

/// How one owner shares the models' slots with the others (see
/// `domain::schedule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnerSettings {
    /// Its weight in the fair share of each model's slots (default 1).
    pub weight: u32,
    /// Most of its requests of one model claimed or in flight at once, over
    /// all daemons (default: no cap).
    pub max_in_flight: Option<u32>,
}

impl std::fmt::Debug for Config {
    // The API's bearer keys must never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("upstream", &self.upstream)
            .field("models", &self.models)
            .field("daemon", &self.daemon)
            .field("auth_keys", &self.auth.as_ref().map(|k| k.len()))
            .field("admins", &self.admins)
            .field("api", &self.api)
            .field("owners", &self.owners)
            .field("escalations", &self.escalations)
            .finish_non_exhaustive()
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::from_raw(RawConfig::default(), &|_| None).expect("the defaults are valid")
    }
}

const DEFAULT_UPSTREAM: &str = "http://127.0.0.1:8000";

impl Config {
    /// Reads and checks a config file, taking keys from the process environment.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string(), &|k| {
            std::env::var(k).ok()
        })
    }

    /// Parses and checks config text; `env` looks up environment variables.
    pub fn parse(
        text: &str,
        origin: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        Self::from_raw(raw, env)
    }

    fn from_raw(raw: RawConfig, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let listen = raw
            .listen
            .map(|l| {
                // A host name (`localhost:8080`) is resolved once, here.
                l.parse::<SocketAddr>().or_else(|e| {
                    use std::net::ToSocketAddrs;
                    l.to_socket_addrs()
                        .ok()
                        .and_then(|mut a| a.next())
                        .ok_or_else(|| invalid("listen", format!("{l:?} is not host:port ({e})")))
                })
            })
            .transpose()?;
        let upstream_url_given = raw.upstream.url.is_some() || raw.upstream.urls.is_some();
        let base = RawRoute {
            url: Some(DEFAULT_UPSTREAM.into()),
            ..RawRoute::default()
        };
        let upstream = route(&merge(&base, &raw.upstream), "upstream", env)?;
        let escalations = escalation::rules(&raw.upstream, &raw.models, upstream_url_given)?;
        let defaults = merge(&base, &raw.upstream);
        let models = raw
            .models
            .iter()
            .map(|(name, o)| {
                let key = format!("models.{name:?}");
                let mut merged = merge(&defaults, o);
                // The default key belongs to the default route's server: a
                // route to another origin gets a key only if it names one.
                if o.api_key_env.is_none()
                    && !same_origin(merged.url.as_deref(), defaults.url.as_deref())
                {
                    merged.api_key_env = None;
                }
                Ok((name.clone(), route(&merged, &key, env)?))
            })
            .collect::<Result<_, ConfigError>>()?;
        let d = raw.daemon;
        let ms = Duration::from_millis;
        let defaults = DaemonSettings::default();
        let daemon = DaemonSettings {
            retry: RetryPolicy {
                max_retries: d.max_retries.unwrap_or(defaults.retry.max_retries),
                backoff: d.backoff_ms.map_or(defaults.retry.backoff, ms),
                max_backoff: d.max_backoff_ms.map_or(defaults.retry.max_backoff, ms),
            },
            claim_batch: d.claim_batch.unwrap_or(defaults.claim_batch),
            prefix_grouping: d.prefix_grouping.unwrap_or(defaults.prefix_grouping),
            heartbeat: d.heartbeat_ms.map_or(defaults.heartbeat, ms),
            stale_after: d.stale_after_ms.map_or(defaults.stale_after, ms),
            shutdown_grace: d.shutdown_grace_ms.map_or(defaults.shutdown_grace, ms),
        };
        if daemon.claim_batch == 0 {
            return Err(invalid("daemon.claim_batch", "must be at least 1"));
        }
        if daemon.retry.max_backoff < daemon.retry.backoff {
            return Err(invalid(
                "daemon.max_backoff_ms",
                "must not be below daemon.backoff_ms",
            ));
        }
        if daemon.heartbeat.is_zero() {
            return Err(invalid("daemon.heartbeat_ms", "must be at least 1"));
        }
        if daemon.stale_after < daemon.heartbeat * STALE_HEARTBEATS {
            return Err(invalid(
                "daemon.stale_after_ms",
                format!(
                    "is {} ms; it must be at least {STALE_HEARTBEATS} times daemon.heartbeat_ms \
                     ({} ms), so that a daemon that misses a heartbeat or two is not declared dead",
                    daemon.stale_after.as_millis(),
                    (daemon.heartbeat * STALE_HEARTBEATS).as_millis(),
                ),
            ));
        }
        let (auth, admins) = match raw.auth {
            None => (None, BTreeSet::new()),
            Some(a) if a.keys.is_empty() => {
                return Err(invalid(
                    "auth.keys",
                    "must hold at least one key; remove [auth] to turn auth off",
                ));
            }
            Some(a) => {
                if let Some(bad) = a.admins.iter().find(|o| !a.keys.values().any(|k| k == *o)) {
                    return Err(invalid(
                        "auth.admins",
                        format!("names {bad:?}, which is no owner of a key in auth.keys"),
                    ));
                }
                (Some(a.keys), a.admins.into_iter().collect())
            }
        };
        let api_defaults = ApiSettings::default();
        let api = ApiSettings {
            max_upload_bytes: raw
                .api
                .max_upload_bytes
                .unwrap_or(api_defaults.max_upload_bytes),
            endpoints: raw.api.endpoints.unwrap_or(api_defaults.endpoints),
            max_concurrent_uploads: raw
                .api
                .max_concurrent_uploads
                .unwrap_or(api_defaults.max_concurrent_uploads),
            upload_idle_timeout: raw
                .api
                .upload_idle_timeout_secs
                .map_or(api_defaults.upload_idle_timeout, Duration::from_secs),
            upload_spool_dir: raw.api.upload_spool_dir.map(Into::into),
            batch_read_interval: raw
                .api
                .batch_read_interval_ms
                .map_or(api_defaults.batch_read_interval, Duration::from_millis),
        };
        if api.max_upload_bytes == 0 {
            return Err(invalid("api.max_upload_bytes", "must be at least 1"));
        }
        if api.max_concurrent_uploads == 0 {
            return Err(invalid("api.max_concurrent_uploads", "must be at least 1"));
        }
        if api.upload_idle_timeout.is_zero() {
            return Err(invalid(
                "api.upload_idle_timeout_secs",
                "must be at least 1",
            ));
        }
        if api
            .upload_spool_dir
            .as_ref()
            .is_some_and(|d| d.as_os_str().is_empty())
        {
            return Err(invalid(
                "api.upload_spool_dir",
                "must name a directory; remove the key to use the system's temporary directory",
            ));
        }
        if api.endpoints.is_empty() {
            return Err(invalid("api.endpoints", "must name at least one endpoint"));
        }
        if let Some(bad) = api.endpoints.iter().find(|e| !e.starts_with('/')) {
            return Err(invalid(
                "api.endpoints",
                format!("{bad:?} must be a path such as /v1/chat/completions"),
            ));
        }
        let owners = raw
            .owners
            .into_iter()
            .map(|(name, o)| {
                let key = format!("owners.{name:?}");
                let settings = OwnerSettings {
                    weight: o.weight.unwrap_or(1),
                    max_in_flight: o.max_in_flight,
                };
                if settings.weight == 0 {
                    return Err(invalid(format!("{key}.weight"), "must be at least 1"));
                }
                if settings.max_in_flight == Some(0) {
                    return Err(invalid(
                        format!("{key}.max_in_flight"),
                        "must be at least 1; remove it for no cap",
                    ));
                }
                Ok((name, settings))
            })
            .collect::<Result<_, ConfigError>>()?;
        Ok(Self {
            escalations,
            owners,
            listen,
            database_url: raw.database_url,
            upstream_url_given,
            upstream,
            models,
            daemon,
            auth,
            admins,
            api,
        })
    }

    /// The owner weights and caps as a claim takes them (call times are the
    /// daemon's to add).
    pub fn schedule(&self) -> crate::domain::schedule::Schedule {
        crate::domain::schedule::Schedule {
            weights: self
                .owners
                .iter()
                .map(|(o, s)| (o.clone(), s.weight))
                .collect(),
            caps: self
                .owners
                .iter()
                .filter_map(|(o, s)| Some((o.clone(), s.max_in_flight?)))
                .collect(),
            call_times: BTreeMap::new(),
            catch_up: false,
        }
    }

    /// The route for a model: its own section, else the default.
    pub fn route(&self, model: &str) -> &Route {
        self.models.get(model).unwrap_or(&self.upstream)
    }

    /// The same configuration with every model sent to `url` (the `--upstream`
    /// flag). A route whose origin changes loses its key, which belonged to
    /// its old server.
    pub fn with_upstream_url(mut self, url: &str) -> Result<Self, ConfigError> {
        check_url(url, "--upstream")?;
        self.upstream_url_given = true;
        let url = url.trim_end_matches('/').to_owned();
        for r in std::iter::once(&mut self.upstream).chain(self.models.values_mut()) {
            if !same_origin(Some(&r.url), Some(&url)) {
                r.api_key = None;
            }
            r.url = url.clone();
            if !r.replicas.is_empty() {
                let n = u32::try_from(r.replicas.len()).unwrap_or(u32::MAX);
                r.concurrency = (r.concurrency / n).max(1);
                r.replicas.clear();
            }
        }
        Ok(self)
    }

    /// The same configuration with `key` sent to the default route's
    /// origin (the `--api-key-env` flag): on the default route and on every
    /// route to the same origin, never to another one.
    pub fn with_api_key(mut self, key: &str) -> Self {
        let origin = self.upstream.url.clone();
        self.upstream.api_key = Some(key.to_owned());
        for r in self.models.values_mut() {
            if same_origin(Some(&r.url), Some(&origin)) {
                r.api_key = Some(key.to_owned());
            }
        }
        self
    }
}

fn merge(base: &RawRoute, o: &RawRoute) -> RawRoute {
    RawRoute {
        url: o.url.clone().or_else(|| base.url.clone()),
        urls: o.urls.clone().or_else(|| base.urls.clone()),
        api_key_env: o.api_key_env.clone().or_else(|| base.api_key_env.clone()),
        concurrency: o.concurrency.or(base.concurrency),
        connect_timeout_ms: o.connect_timeout_ms.or(base.connect_timeout_ms),
        first_byte_timeout_ms: o.first_byte_timeout_ms.or(base.first_byte_timeout_ms),
        idle_timeout_ms: o.idle_timeout_ms.or(base.idle_timeout_ms),
        total_timeout_ms: o.total_timeout_ms.or(base.total_timeout_ms),
        max_response_bytes: o.max_response_bytes.or(base.max_response_bytes),
        stream_paths: o.stream_paths.clone().or_else(|| base.stream_paths.clone()),
        coalesce: o.coalesce.clone().or_else(|| base.coalesce.clone()),
        embeddings_pack: o.embeddings_pack.or(base.embeddings_pack),
        embeddings_pack_tokens: o.embeddings_pack_tokens.or(base.embeddings_pack_tokens),
        priority_hint: o
            .priority_hint
            .clone()
            .or_else(|| base.priority_hint.clone()),
        traceparent: o.traceparent.or(base.traceparent),
        // Escalation is the model's own, never inherited (see `escalation`).
        escalate_to: None,
        escalate_within: None,
        escalate_wait: None,
    }
}

/// Whether two URLs have the same scheme, host and port (an unparsable URL
/// matches nothing).
fn same_origin(a: Option<&str>, b: Option<&str>) -> bool {
    let origin = |u: Option<&str>| u.and_then(|u| url::Url::parse(u).ok()).map(|u| u.origin());
    match (origin(a), origin(b)) {
        (Some(a), Some(b)) => a.is_tuple() && a == b,
        _ => false,
    }
}

fn check_url(url: &str, key: &str) -> Result<(), ConfigError> {
    match url::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(()),
        Ok(_) => Err(invalid(
            key,
            format!("{url:?} must be an http:// or https:// URL"),
        )),
        Err(e) => Err(invalid(key, format!("{url:?} is not a URL ({e})"))),
    }
}

fn route(
    r: &RawRoute,
    key: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Route, ConfigError> {
    let replicas: Vec<String> = match &r.urls {
        None => Vec::new(),
        Some(urls) if urls.is_empty() => {
            return Err(invalid(format!("{key}.urls"), "must name at least one URL"));
        }
        Some(urls) => {
            for u in urls {
                check_url(u, &format!("{key}.urls"))?;
            }
            urls.iter()
                .map(|u| u.trim_end_matches('/').to_owned())
                .collect()
        }
    };
    let url = match replicas.first() {
        Some(first) => first.clone(),
        None => r.url.clone().unwrap_or_else(|| DEFAULT_UPSTREAM.into()),
    };
    check_url(&url, &format!("{key}.url"))?;
    let api_key = match &r.api_key_env {
        None => None,
        Some(var) => Some(env(var).filter(|v| !v.is_empty()).ok_or_else(|| {
            invalid(
                format!("{key}.api_key_env"),
                format!("names the environment variable {var}, which is not set"),
            )
        })?),
    };
    let concurrency = r.concurrency.unwrap_or(64);
    if concurrency == 0 {
        return Err(invalid(format!("{key}.concurrency"), "must be at least 1"));
    }
    let concurrency =
        concurrency.saturating_mul(u32::try_from(replicas.len().max(1)).unwrap_or(u32::MAX));
    let ms = |v: Option<u64>, default: u64, name: &str| -> Result<Duration, ConfigError> {
        match v.unwrap_or(default) {
            0 => Err(invalid(format!("{key}.{name}"), "must be more than 0")),
            n => Ok(Duration::from_millis(n)),
        }
    };
    let embeddings_pack = r.embeddings_pack.unwrap_or(64);
    if !(1..=2048).contains(&embeddings_pack) {
        return Err(invalid(
            format!("{key}.embeddings_pack"),
            "must be from 1 to 2048 (the most inputs one embeddings call takes)",
        ));
    }
    let priority_hint = match r.priority_hint.as_deref() {
        None => None,
        Some("nvext") => Some(crate::upstream::priority::PriorityHint::Nvext),
        Some("vllm") => Some(crate::upstream::priority::PriorityHint::Vllm),
        Some(other) => {
            return Err(invalid(
                format!("{key}.priority_hint"),
                format!("is {other:?}; it must be \"nvext\" or \"vllm\""),
            ));
        }
    };
    Ok(Route {
        priority_hint,
        traceparent: r.traceparent.unwrap_or(false),
        embeddings_pack,
        embeddings_pack_tokens: r.embeddings_pack_tokens.unwrap_or(8192).max(1),
        url: url.trim_end_matches('/').to_owned(),
        replicas: if replicas.len() > 1 {
            replicas
        } else {
            Vec::new()
        },
        api_key,
        concurrency,
        connect_timeout: ms(r.connect_timeout_ms, 10_000, "connect_timeout_ms")?,
        first_byte_timeout: ms(r.first_byte_timeout_ms, 600_000, "first_byte_timeout_ms")?,
        idle_timeout: ms(r.idle_timeout_ms, 120_000, "idle_timeout_ms")?,
        total_timeout: ms(r.total_timeout_ms, 1_800_000, "total_timeout_ms")?,
        max_response_bytes: r.max_response_bytes.unwrap_or(64 << 20),
        stream_paths: r.stream_paths.clone().unwrap_or_default(),
        coalesce: match r.coalesce.as_deref() {
            None | Some("deterministic") => true,
            Some("never") => false,
            Some(other) => {
                return Err(invalid(
                    format!("{key}.coalesce"),
                    format!("is {other:?}; it must be \"deterministic\" or \"never\""),
                ));
            }
        },
    })
}

mod escalation;
pub use escalation::parse_duration;

#[cfg(test)]
mod tests;
