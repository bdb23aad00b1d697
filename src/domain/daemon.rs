//! Daemons: worker processes that register, heartbeat and stop.

pub use super::ids::DaemonId;
use chrono::{DateTime, Utc};
use serde_json::Value;

text_enum!(
    /// Whether a daemon is alive. The same words are checked in SQL.
    DaemonStatus {
        /// Registered and heartbeating.
        Running => "running",
        /// Stopped cleanly.
        Stopped => "stopped",
        /// Its heartbeat went stale; its claims were (or will be) recovered.
        Dead => "dead",
    }
);

/// What a daemon says about itself when it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDaemon {
    /// The machine it runs on.
    pub hostname: String,
    /// Its process id.
    pub pid: i32,
    /// The fusillade version it runs.
    pub version: String,
    /// Its effective configuration, secrets removed.
    pub config: Value,
}

/// Counters a daemon reports with each heartbeat.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DaemonStats {
    /// Requests it holds right now.
    pub in_flight: i32,
    /// Requests it has completed since it started.
    pub requests_done: i64,
    /// Requests it has ended as failed since it started.
    pub requests_failed: i64,
}

/// A daemon as registered.
#[derive(Debug, Clone, PartialEq)]
pub struct DaemonRecord {
    /// Its id.
    pub id: DaemonId,
    /// The machine it runs on.
    pub hostname: String,
    /// Its process id.
    pub pid: i32,
    /// The fusillade version it runs.
    pub version: String,
    /// Its effective configuration, secrets removed.
    pub config: Value,
    /// Whether it is alive.
    pub status: DaemonStatus,
    /// When it registered.
    pub started_at: DateTime<Utc>,
    /// Its last heartbeat.
    pub last_heartbeat: DateTime<Utc>,
    /// When it stopped or was declared dead.
    pub stopped_at: Option<DateTime<Utc>>,
    /// Its last reported counters.
    pub stats: DaemonStats,
}
