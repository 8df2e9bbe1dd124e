//! Typed, validated settings: a TOML file plus environment overrides such as
//! `TANDEM_VAULT__DATABASE__URL`. Every limit carries its unit in its name. A bad value stops
//! the process at start with one line naming the key.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;

/// A secret string (for example a database URL with a password): redacted in `Debug`.
#[derive(Clone, Deserialize, Default)]
#[serde(transparent)]
pub struct SecretString(String);

impl SecretString {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A gRPC server's limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Address to listen on.
    pub listen_addr: SocketAddr,
    /// Largest request or response message, in bytes.
    pub message_bytes_max: usize,
    /// Longest a request may run before it is cancelled with DEADLINE_EXCEEDED.
    pub request_timeout_ms: u64,
    /// Concurrent requests (HTTP/2 streams) per connection, as HTTP/2's
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`: a client holds further calls until one ends, and a
    /// stream beyond it is refused by the protocol, so no request waits inside the server.
    pub concurrency_per_connection_max: usize,
    /// Client connections open at once; further ones wait in the listen backlog until one
    /// closes.
    pub connections_max: usize,
    /// The listen socket's backlog: connections the kernel holds before the server accepts
    /// them.
    pub accept_backlog: u32,
    /// Time a client has to complete its TLS handshake.
    pub handshake_timeout_ms: u64,
    /// TLS handshakes in progress at once.
    pub handshakes_max: usize,
    /// Interval of HTTP/2 pings on an idle connection, so dead peers release their slot.
    pub http2_keepalive_interval_ms: u64,
    /// A connection whose ping is not answered within this is closed.
    pub http2_keepalive_timeout_ms: u64,
    /// On shutdown, how long in-flight requests may take to finish.
    pub shutdown_grace_ms: u64,
}

impl Default for ServerSettings {
    /// The defaults, on an address chosen at bind time (each service sets its own through
    /// [`load`]'s `base`).
    fn default() -> Self {
        Self::listening_on(SocketAddr::from(([127, 0, 0, 1], 0)))
    }
}

impl ServerSettings {
    /// The defaults, listening on `listen_addr`.
    pub fn listening_on(listen_addr: SocketAddr) -> Self {
        Self {
            listen_addr,
            message_bytes_max: 64 * 1024,
            request_timeout_ms: 10_000,
            concurrency_per_connection_max: 256,
            connections_max: 1_024,
            accept_backlog: 4_096,
            handshake_timeout_ms: 5_000,
            handshakes_max: 256,
            http2_keepalive_interval_ms: 30_000,
            http2_keepalive_timeout_ms: 10_000,
            shutdown_grace_ms: 10_000,
        }
    }

    /// `request_timeout_ms` as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

/// Mutual TLS material and identity rules.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// The server's PEM certificate chain.
    pub cert_path: PathBuf,
    /// The server's PEM private key.
    pub key_path: PathBuf,
    /// The CA that client certificates must chain to.
    pub ca_path: PathBuf,
    /// SAN URI prefix of caller identities: `<prefix><role>/<name>`.
    pub identity_uri_prefix: String,
}

impl Default for TlsSettings {
    fn default() -> Self {
        Self::dev("server")
    }
}

impl TlsSettings {
    /// The dev layout: `.tandem/dev/<name>.pem`, `.key` and `ca.pem`.
    pub fn dev(name: &str) -> Self {
        let files = tandem_tls::TlsFiles::in_dir(Path::new(".tandem/dev"), name);
        Self {
            cert_path: files.cert_path,
            key_path: files.key_path,
            ca_path: files.ca_path,
            identity_uri_prefix: tandem_tls::identity::DEFAULT_URI_PREFIX.to_owned(),
        }
    }

    /// The files as `tandem-tls` takes them.
    pub fn files(&self) -> tandem_tls::TlsFiles {
        tandem_tls::TlsFiles {
            cert_path: self.cert_path.clone(),
            key_path: self.key_path.clone(),
            ca_path: self.ca_path.clone(),
        }
    }
}

/// A database connection pool.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// Postgres URL of the service's own database. Several hosts, as libpq takes them
    /// (`postgres://user@h1:5432,h2:5432/db?target_session_attrs=read-write`), make the pool
    /// find the primary among them and follow it across a failover ([`crate::primary`]).
    pub url: SecretString,
    /// Pool size.
    pub connections_max: u32,
    /// Longest wait for a pooled connection.
    pub acquire_timeout_ms: u64,
    /// With several hosts in `url`: how often the pool's host is checked to still be what the
    /// URL asks for (the primary, with `target_session_attrs=read-write`). A failover is
    /// followed at most this long after the new primary accepts writes.
    pub primary_check_interval_ms: u64,
    /// With several hosts in `url`: how long one host may take to accept a connection and
    /// answer the check, before the next is tried.
    pub host_connect_timeout_ms: u64,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self::local("postgres")
    }
}

impl DatabaseSettings {
    /// Opens the pool these settings describe (without migrations: each server runs its own).
    /// A URL of one host without `target_session_attrs` is opened as sqlx opens it; otherwise
    /// the pool opens on the first host that accepts the session the URL asks for, and with
    /// several hosts a watcher follows the primary until the pool is closed
    /// ([`crate::primary`]).
    pub async fn connect(&self) -> Result<sqlx::PgPool, sqlx::Error> {
        let acquire_timeout = Duration::from_millis(self.acquire_timeout_ms);
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(self.connections_max)
            .acquire_timeout(acquire_timeout);
        let watch = crate::primary::Watch {
            interval: Duration::from_millis(self.primary_check_interval_ms),
            connect_timeout: Duration::from_millis(self.host_connect_timeout_ms),
            start_timeout: acquire_timeout,
        };
        crate::primary::open_pool(pool, self.url.expose(), watch).await
    }

    /// Checks that `url`'s host list and `target_session_attrs` can be taken (a URL of one
    /// host without that parameter is sqlx's to judge when the pool opens).
    pub fn check_url(&self) -> Result<(), ConfigError> {
        crate::primary::Hosts::parse(self.url.expose())
            .map(|_| ())
            .map_err(|error| ConfigError::Parse(format!("database.url: {error}")))
    }

    /// The defaults for database `name` on the local Postgres.
    pub fn local(name: &str) -> Self {
        Self {
            url: SecretString::new(format!("postgres://postgres@127.0.0.1:5432/{name}")),
            connections_max: 16,
            acquire_timeout_ms: 5_000,
            primary_check_interval_ms: 1_000,
            host_connect_timeout_ms: 2_000,
        }
    }
}

/// A configuration error: one line naming the file or key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file or an override is not valid for the settings.
    #[error("invalid configuration: {0}")]
    Parse(String),
    /// A value is out of its range.
    #[error("invalid configuration: {key} {problem}")]
    Invalid {
        /// The dotted key, e.g. `server.request_timeout_ms`.
        key: &'static str,
        /// What is wrong.
        problem: &'static str,
    },
}

/// One range check: whether it holds, the dotted key, and what the key must be.
pub type Check = (bool, &'static str, &'static str);

/// The first failed check as an error.
pub fn first_failure(checks: impl IntoIterator<Item = Check>) -> Result<(), ConfigError> {
    match checks.into_iter().find(|(ok, _, _)| !ok) {
        Some((_, key, problem)) => Err(ConfigError::Invalid { key, problem }),
        None => Ok(()),
    }
}

/// The checks of the sections every server has.
pub fn common_checks(
    server: &ServerSettings,
    tls: &TlsSettings,
    database: &DatabaseSettings,
) -> [Check; 13] {
    let prefix = &tls.identity_uri_prefix;
    [
        (
            (1_000..=3_600_000).contains(&server.http2_keepalive_interval_ms)
                && (1..=600_000).contains(&server.http2_keepalive_timeout_ms),
            "server.http2_keepalive_interval_ms",
            "must be 1000 to 3600000 (and server.http2_keepalive_timeout_ms 1 to 600000)",
        ),
        (
            prefix.contains("://")
                && prefix.ends_with('/')
                && !prefix.contains(char::is_whitespace),
            "tls.identity_uri_prefix",
            "must be a URI prefix such as spiffe://tandem.local/ (scheme, and a trailing /)",
        ),
        (
            (1024..=16 * 1024 * 1024).contains(&server.message_bytes_max),
            "server.message_bytes_max",
            "must be 1024 to 16777216",
        ),
        (
            (1..=600_000).contains(&server.request_timeout_ms),
            "server.request_timeout_ms",
            "must be 1 to 600000",
        ),
        (
            (1..=10_000).contains(&server.concurrency_per_connection_max),
            "server.concurrency_per_connection_max",
            "must be 1 to 10000",
        ),
        (
            (1..=100_000).contains(&server.connections_max),
            "server.connections_max",
            "must be 1 to 100000",
        ),
        (
            (1..=65_535).contains(&server.accept_backlog),
            "server.accept_backlog",
            "must be 1 to 65535",
        ),
        (
            (1..=60_000).contains(&server.handshake_timeout_ms),
            "server.handshake_timeout_ms",
            "must be 1 to 60000",
        ),
        (
            (1..=100_000).contains(&server.handshakes_max),
            "server.handshakes_max",
            "must be 1 to 100000",
        ),
        (
            (1..=1000).contains(&database.connections_max),
            "database.connections_max",
            "must be 1 to 1000",
        ),
        (
            (1..=600_000).contains(&database.acquire_timeout_ms),
            "database.acquire_timeout_ms",
            "must be 1 to 600000",
        ),
        (
            (100..=60_000).contains(&database.primary_check_interval_ms),
            "database.primary_check_interval_ms",
            "must be 100 to 60000",
        ),
        (
            (100..=60_000).contains(&database.host_connect_timeout_ms),
            "database.host_connect_timeout_ms",
            "must be 100 to 60000",
        ),
    ]
}

/// Reads `path` (if any) over `base` (the service's own defaults for keys whose type's default
/// does not fit every service, such as `server.listen_addr`), then applies the overrides in
/// `env` whose names start with `env_prefix` (pairs of name and value; pass
/// `std::env::vars()`). Validation is the caller's.
pub fn load<T: DeserializeOwned>(
    base: toml::Table,
    path: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    env_prefix: &str,
) -> Result<T, ConfigError> {
    let file = match path {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            text.parse::<toml::Table>()
                .map_err(|e| ConfigError::Parse(format!("{}: {e}", path.display())))?
        }
        None => toml::Table::new(),
    };
    let mut table = base;
    merge(&mut table, file);
    for (name, value) in env {
        if let Some(key) = name.strip_prefix(env_prefix) {
            apply_override(&mut table, env_prefix, key, &value)?;
        }
    }
    toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| ConfigError::Parse(e.message().to_owned()))
}

/// The `base` for [`load`] that keeps a service's own defaults of the common sections (its
/// listen address, its certificate files, its database) when a file sets only some of their
/// keys.
pub fn service_base(
    server: &ServerSettings,
    tls: &TlsSettings,
    database: &DatabaseSettings,
) -> toml::Table {
    let section = |pairs: &[(&str, String)]| {
        toml::Value::Table(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), toml::Value::String(v.clone())))
                .collect(),
        )
    };
    let mut base = toml::Table::new();
    base.insert(
        "server".into(),
        section(&[("listen_addr", server.listen_addr.to_string())]),
    );
    base.insert(
        "tls".into(),
        section(&[
            ("cert_path", tls.cert_path.display().to_string()),
            ("key_path", tls.key_path.display().to_string()),
            ("ca_path", tls.ca_path.display().to_string()),
        ]),
    );
    base.insert(
        "database".into(),
        section(&[("url", database.url.expose().to_owned())]),
    );
    base
}

/// Writes `over` into `base`, section by section.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(inner)), toml::Value::Table(over)) => merge(inner, over),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// Sets `SECTION__KEY` (any depth, case-insensitive) in `table`. The value is read as a TOML
/// value when it parses as one (numbers, booleans, arrays) and as a string otherwise.
fn apply_override(
    table: &mut toml::Table,
    env_prefix: &str,
    key: &str,
    raw: &str,
) -> Result<(), ConfigError> {
    let path: Vec<String> = key.split("__").map(str::to_lowercase).collect();
    let (leaf, sections) = path
        .split_last()
        .filter(|(leaf, _)| !leaf.is_empty())
        .ok_or_else(|| ConfigError::Parse(format!("bad override name {env_prefix}{key}")))?;
    let mut current = table;
    for section in sections {
        let entry = current
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = entry.as_table_mut().ok_or_else(|| {
            ConfigError::Parse(format!("{env_prefix}{key}: {section} is not a section"))
        })?;
    }
    let value = format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()));
    current.insert(leaf.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, Default)]
    #[serde(default, deny_unknown_fields)]
    struct Example {
        server: ServerSettings,
        tls: TlsSettings,
        database: DatabaseSettings,
    }

    fn base() -> toml::Table {
        service_base(
            &ServerSettings::listening_on(SocketAddr::from(([127, 0, 0, 1], 50052))),
            &TlsSettings::dev("example-server"),
            &DatabaseSettings::local("example"),
        )
    }

    #[test]
    fn a_partial_section_keeps_the_service_defaults() {
        let dir = std::env::temp_dir().join(format!("tandem-runtime-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("example.toml");
        std::fs::write(&path, "[server]\nrequest_timeout_ms = 1234\n").unwrap();
        let loaded: Example = load(base(), Some(&path), Vec::new(), "TANDEM_X__").unwrap();
        assert_eq!(loaded.server.listen_addr.port(), 50052);
        assert_eq!(loaded.server.request_timeout_ms, 1234);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn overrides_apply_at_any_depth() {
        let env = vec![
            (
                "TANDEM_X__SERVER__LISTEN_ADDR".to_owned(),
                "127.0.0.1:7000".to_owned(),
            ),
            (
                "TANDEM_X__DATABASE__CONNECTIONS_MAX".to_owned(),
                "3".to_owned(),
            ),
            (
                "OTHER__SERVER__LISTEN_ADDR".to_owned(),
                "ignored".to_owned(),
            ),
        ];
        let loaded: Example = load(base(), None, env, "TANDEM_X__").unwrap();
        assert_eq!(loaded.server.listen_addr.port(), 7000);
        assert_eq!(loaded.database.connections_max, 3);
        let bad = vec![("TANDEM_X__SERVER__NOPE".to_owned(), "1".to_owned())];
        let error = load::<Example>(base(), None, bad, "TANDEM_X__").unwrap_err();
        assert!(error.to_string().contains("nope"), "{error}");
    }

    /// A database URL whose host list or `target_session_attrs` cannot be taken stops the
    /// service with a line naming the key and the part, never the password; a URL of one
    /// host, or of several with a value Tandem takes, passes.
    #[test]
    fn a_bad_host_list_names_the_key() {
        let with_url = |url: &str| DatabaseSettings {
            url: SecretString::new(url),
            ..DatabaseSettings::local("example")
        };
        for url in [
            "postgres://postgres@127.0.0.1:5432/example",
            "postgres://u:secret@h1:5432,h2:5432/example?target_session_attrs=read-write",
            "postgres://u:secret@h1,h2/example?target_session_attrs=any",
        ] {
            assert!(with_url(url).check_url().is_ok(), "{url}");
        }
        let error = with_url("postgres://u:secret@h1,h2/example?target_session_attrs=standby")
            .check_url()
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("database.url") && error.contains("target_session_attrs"),
            "{error}"
        );
        assert!(!error.contains("secret"), "{error}");
    }
}
