//! The dashboard's settings: a TOML file (`--config`) with `TANDEM_DASHBOARD__<SECTION>__<KEY>`
//! environment overrides, as the servers read theirs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tandem_runtime::settings::{ConfigError, TlsSettings, first_failure};
use tandem_runtime::telemetry::TelemetrySettings;
use tandem_tls::TlsFiles;

/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "TANDEM_DASHBOARD__";

/// All dashboard settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Where and how it listens.
    pub server: WebSettings,
    /// Its HTTPS certificate and the CA people's client certificates chain to.
    pub tls: TlsSettings,
    /// The orchestrator it calls, with the dashboard's own identity.
    pub orchestrator: Upstream,
    /// The vault it calls (key status), with the dashboard's own identity.
    pub vault: Upstream,
    /// Traces.
    pub telemetry: TelemetrySettings,
}

impl Default for Settings {
    fn default() -> Self {
        let client = TlsFiles::in_dir(Path::new(".tandem/dev"), "dashboard");
        let upstream = |endpoint: &str| Upstream {
            endpoint: endpoint.to_owned(),
            cert_path: client.cert_path.clone(),
            key_path: client.key_path.clone(),
            ca_path: client.ca_path.clone(),
            timeout_ms: 10_000,
        };
        Settings {
            server: WebSettings::default(),
            tls: TlsSettings::dev("dashboard-server"),
            orchestrator: upstream("https://127.0.0.1:50052"),
            vault: upstream("https://127.0.0.1:50051"),
            telemetry: TelemetrySettings::default(),
        }
    }
}

/// The HTTPS listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebSettings {
    /// Where it listens.
    pub listen_addr: SocketAddr,
    /// Connections open at once.
    pub connections_max: usize,
    /// Time a browser has to finish its TLS handshake, in milliseconds.
    pub handshake_timeout_ms: u64,
}

impl Default for WebSettings {
    fn default() -> Self {
        WebSettings {
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 50053)),
            connections_max: 256,
            handshake_timeout_ms: 10_000,
        }
    }
}

/// A service the dashboard calls, and the dashboard's identity there.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// `https://host:port`.
    pub endpoint: String,
    /// The dashboard's client certificate (role `dashboard`).
    pub cert_path: PathBuf,
    /// Its key.
    pub key_path: PathBuf,
    /// The CA the service's certificate chains to.
    pub ca_path: PathBuf,
    /// How long one call may take, in milliseconds.
    pub timeout_ms: u64,
}

impl Upstream {
    /// The identity files.
    pub fn files(&self) -> TlsFiles {
        TlsFiles {
            cert_path: self.cert_path.clone(),
            key_path: self.key_path.clone(),
            ca_path: self.ca_path.clone(),
        }
    }

    /// The call timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

impl Settings {
    /// Reads the settings: defaults, then the file at `path` (if any), then the overrides in
    /// `env`; then checks them.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        let settings: Settings =
            tandem_runtime::settings::load(base(&Settings::default()), path, env, ENV_PREFIX)?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let upstream_ok = |u: &Upstream| {
            u.endpoint.starts_with("https://") && (1..=600_000).contains(&u.timeout_ms)
        };
        first_failure(
            [
                (
                    (1..=65_536).contains(&self.server.connections_max)
                        && (1..=600_000).contains(&self.server.handshake_timeout_ms),
                    "server.connections_max",
                    "must be 1 to 65536 (and server.handshake_timeout_ms 1 to 600000)",
                ),
                (
                    upstream_ok(&self.orchestrator),
                    "orchestrator.endpoint",
                    "must be an https:// URL (and orchestrator.timeout_ms 1 to 600000)",
                ),
                (
                    upstream_ok(&self.vault),
                    "vault.endpoint",
                    "must be an https:// URL (and vault.timeout_ms 1 to 600000)",
                ),
            ]
            .into_iter()
            .chain(self.telemetry.checks()),
        )
    }
}

/// The defaults of the sections whose keys a file or an override may set one at a time
/// without losing the dashboard's own defaults for the others (its certificate files, the
/// services' endpoints).
fn base(defaults: &Settings) -> toml::Table {
    let text = |value: String| toml::Value::String(value);
    let path = |value: &Path| text(value.display().to_string());
    let upstream = |u: &Upstream| {
        toml::Value::Table(toml::Table::from_iter([
            ("endpoint".to_owned(), text(u.endpoint.clone())),
            ("cert_path".to_owned(), path(&u.cert_path)),
            ("key_path".to_owned(), path(&u.key_path)),
            ("ca_path".to_owned(), path(&u.ca_path)),
            (
                "timeout_ms".to_owned(),
                toml::Value::Integer(i64::try_from(u.timeout_ms).unwrap_or(i64::MAX)),
            ),
        ]))
    };
    let tls = &defaults.tls;
    toml::Table::from_iter([
        (
            "tls".to_owned(),
            toml::Value::Table(toml::Table::from_iter([
                ("cert_path".to_owned(), path(&tls.cert_path)),
                ("key_path".to_owned(), path(&tls.key_path)),
                ("ca_path".to_owned(), path(&tls.ca_path)),
            ])),
        ),
        ("orchestrator".to_owned(), upstream(&defaults.orchestrator)),
        ("vault".to_owned(), upstream(&defaults.vault)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// The example file holds every key at its default.
    #[test]
    fn example_file_matches_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/dashboard.example.toml");
        let example = Settings::load(Some(&path), Vec::new()).expect("the example loads");
        assert_eq!(format!("{example:?}"), format!("{:?}", Settings::default()));
    }

    /// The defaults load; overrides replace single keys; a bad value names its key.
    #[test]
    fn settings_load_and_are_checked() {
        let settings = Settings::load(None, env(&[])).expect("defaults");
        assert_eq!(settings.server.listen_addr.port(), 50053);
        let settings = Settings::load(
            None,
            env(&[
                ("TANDEM_DASHBOARD__SERVER__LISTEN_ADDR", "127.0.0.1:6000"),
                (
                    "TANDEM_DASHBOARD__ORCHESTRATOR__ENDPOINT",
                    "https://orch:50052",
                ),
            ]),
        )
        .expect("overrides");
        assert_eq!(settings.server.listen_addr.port(), 6000);
        assert_eq!(settings.orchestrator.endpoint, "https://orch:50052");
        assert_eq!(settings.orchestrator.timeout_ms, 10_000);
        assert_eq!(
            settings.orchestrator.cert_path,
            Settings::default().orchestrator.cert_path
        );
        let settings = Settings::load(
            None,
            env(&[("TANDEM_DASHBOARD__TLS__CA_PATH", "/etc/tandem/ca.pem")]),
        )
        .expect("one tls key");
        assert_eq!(settings.tls.cert_path, Settings::default().tls.cert_path);
        for (key, value, named) in [
            (
                "TANDEM_DASHBOARD__ORCHESTRATOR__ENDPOINT",
                "http://orch",
                "orchestrator.endpoint",
            ),
            (
                "TANDEM_DASHBOARD__SERVER__CONNECTIONS_MAX",
                "0",
                "server.connections_max",
            ),
        ] {
            match Settings::load(None, env(&[(key, value)])) {
                Err(ConfigError::Invalid { key, .. }) => assert_eq!(key, named),
                other => panic!("{value}: {other:?}"),
            }
        }
    }
}
