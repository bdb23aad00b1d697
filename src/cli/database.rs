//! Which database a command uses: `--database-url`, else `DATABASE_URL`,
//! else `database_url` in the config, else an embedded SQLite database at
//! a per-user default path, so that `run` and `serve` need no server.
//!
//! The embedded database belongs to one process; the commands that exist
//! to share a database between processes (`worker`, `serve --api-only`)
//! refuse it here, before anything is opened.

use super::{CliError, usage};
use anyhow::anyhow;
use fusillade::config::Config;
use std::path::PathBuf;

/// The database's file under the state directory.
const DEFAULT_FILE: &str = "fusillade/fusillade.db";

/// The database a command will open, and where its URL came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Database {
    /// The URL, `postgres://...` or `sqlite://PATH`.
    pub url: String,
    /// Nothing named a database: this is the embedded default.
    pub default: bool,
}

impl Database {
    /// The flag or `DATABASE_URL` (clap merges the two into `flag`), else
    /// the config's `database_url`, else the embedded default. Empty values
    /// count as unset.
    pub fn resolve(flag: Option<&str>, config: &Config) -> Result<Self, CliError> {
        let named = flag
            .filter(|u| !u.is_empty())
            .or(config.database_url.as_deref().filter(|u| !u.is_empty()));
        if let Some(url) = named {
            return Ok(Self {
                url: url.to_owned(),
                default: false,
            });
        }
        let path = default_path(|k| std::env::var_os(k))?;
        Ok(Self {
            url: format!("sqlite://{}", path.display()),
            default: true,
        })
    }

    /// An explicit URL, as the demo names its own database.
    pub fn at(url: String) -> Self {
        Self {
            url,
            default: false,
        }
    }

    /// The embedded database's file, if this is one (`sqlite://PATH` or
    /// `sqlite:PATH`, as the store reads it).
    pub fn embedded_path(&self) -> Option<PathBuf> {
        fusillade::store::sqlite_path(&self.url)
    }

    /// How the first line of `run` and `serve` names it, the password hidden.
    pub fn describe(&self) -> String {
        match self.embedded_path() {
            Some(path) if self.default => format!(
                "store: embedded sqlite at {} (the default; --database-url or DATABASE_URL picks another)",
                path.display()
            ),
            Some(path) => format!("store: embedded sqlite at {}", path.display()),
            None => format!("store: postgres at {}", fusillade::store::redact(&self.url)),
        }
    }

    /// Refuses an embedded database for `command`, which exists to share
    /// a database between processes.
    pub fn require_shared(&self, command: &str) -> Result<(), CliError> {
        match self.embedded_path() {
            None => Ok(()),
            Some(path) => {
                let which = if self.default {
                    format!(
                        "no database is configured, so it would use the embedded one at {}",
                        path.display()
                    )
                } else {
                    format!("{} is an embedded database", self.url)
                };
                Err(usage(anyhow!(
                    "{command} cannot run on an embedded database: {which}, which one process owns; \
                     scale-out needs PostgreSQL (pass --database-url postgres://..., or set \
                     DATABASE_URL or database_url in the config)"
                )))
            }
        }
    }
}

/// `$XDG_STATE_HOME/fusillade/fusillade.db` when that is set to an absolute
/// path (relative ones are ignored, as the XDG spec says), else
/// `$HOME/.local/state/fusillade/fusillade.db`.
fn default_path(env: impl Fn(&str) -> Option<std::ffi::OsString>) -> Result<PathBuf, CliError> {
    let set = |k: &str| env(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(state) = set("XDG_STATE_HOME").filter(|p| p.is_absolute()) {
        return Ok(state.join(DEFAULT_FILE));
    }
    if let Some(home) = set("HOME") {
        return Ok(home.join(".local/state").join(DEFAULT_FILE));
    }
    Err(usage(anyhow!(
        "no database: neither XDG_STATE_HOME nor HOME is set, so there is no default place \
         for the embedded one; pass --database-url (sqlite://PATH or postgres://...)"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn the_default_path_follows_xdg_then_home() {
        let p = |pairs: &[(&str, &str)]| default_path(env(pairs)).ok();
        assert_eq!(
            p(&[("XDG_STATE_HOME", "/s"), ("HOME", "/h")]),
            Some(PathBuf::from("/s/fusillade/fusillade.db"))
        );
        // Empty or relative XDG values are not used.
        for xdg in ["", "rel"] {
            assert_eq!(
                p(&[("XDG_STATE_HOME", xdg), ("HOME", "/h")]),
                Some(PathBuf::from("/h/.local/state/fusillade/fusillade.db"))
            );
        }
        assert_eq!(p(&[("HOME", "")]), None);
    }

    #[test]
    fn the_flag_wins_over_the_config_and_the_default() {
        let config = Config {
            database_url: Some("postgres://c/db".into()),
            ..Config::default()
        };
        let db = Database::resolve(Some("sqlite:///x/y.db"), &config).unwrap();
        assert_eq!(db.embedded_path(), Some(PathBuf::from("/x/y.db")));
        assert!(!db.default);
        let db = Database::resolve(Some(""), &config).unwrap();
        assert_eq!(db.url, "postgres://c/db");
        assert_eq!(db.embedded_path(), None);
        assert!(db.require_shared("worker").is_ok());
    }

    #[test]
    fn embedded_databases_are_refused_for_scale_out() {
        let db = Database::at("sqlite:rel.db?mode=rwc".into());
        assert_eq!(db.embedded_path(), Some(PathBuf::from("rel.db")));
        let err = db.require_shared("fusillade worker").unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(format!("{:#}", err.error).contains("scale-out needs PostgreSQL"));
    }

    #[test]
    fn postgres_passwords_are_not_shown() {
        let db = Database::at("postgres://u:secret@h/db".into());
        assert!(!db.describe().contains("secret"), "{}", db.describe());
    }
}
