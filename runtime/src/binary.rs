//! The entry point every server binary shares: `--config PATH`, settings from the file and the
//! environment ([`ServiceSettings`], [`load_service`]), JSON logs and traces as the settings
//! say, the listening socket, and serving until SIGINT or SIGTERM (then the spans still
//! waiting are exported). A bad setting or an unusable address stops the process
//! with one line on stderr.

use std::fmt::Display;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use tokio::net::TcpListener;

use serde::de::DeserializeOwned;

use crate::admission::LimitSettings;
use crate::metrics::MetricsSettings;
use crate::settings::{
    ConfigError, DatabaseSettings, ServerSettings, TlsSettings, load, service_base,
};
use crate::telemetry::{self, LogFormat, TelemetrySettings};

/// Runs server binary `name`: `load` reads its settings (from the `--config` file, if given,
/// and the environment), `server` picks its server section (where and how it listens), and
/// `run` serves until the
/// shutdown future completes. Exit codes: 0 after a clean shutdown, 1 when serving fails, 2
/// for bad usage or settings.
pub async fn serve<S: ServiceSettings, E, Run, Served>(
    name: &str,
    load: impl FnOnce(Option<&Path>) -> Result<S, ConfigError>,
    server: impl FnOnce(&S) -> ServerSettings,
    run: Run,
) -> ExitCode
where
    Run: FnOnce(TcpListener, S, std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> Served,
    Served: Future<Output = Result<(), E>>,
    E: Display,
{
    let mut args = std::env::args().skip(1);
    let config = match (args.next().as_deref(), args.next()) {
        (None, _) => None,
        (Some("--config"), Some(path)) => Some(PathBuf::from(path)),
        _ => {
            eprintln!("usage: {name} [--config PATH]");
            return ExitCode::from(2);
        }
    };
    let settings = match load(config.as_deref()) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("{name}: {error}");
            return ExitCode::from(2);
        }
    };
    let telemetry = match telemetry::init(LogFormat::Json, "info", name, settings.observability().1)
    {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("{name}: {error}");
            return ExitCode::from(2);
        }
    };
    let server = server(&settings);
    let listener = match crate::serving::bind(&server) {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("{name}: cannot listen on {}: {error}", server.listen_addr);
            return ExitCode::from(1);
        }
    };
    let served = run(listener, settings, Box::pin(crate::shutdown_signal())).await;
    telemetry.shutdown().await;
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{name}: {error}");
            ExitCode::from(1)
        }
    }
}

/// A server's whole settings: the sections every server has, its own defaults (its
/// `Default`) and its own range checks. [`load_service`] reads every server's the same way.
pub trait ServiceSettings: DeserializeOwned + Default {
    /// The prefix of its environment overrides, such as `TANDEM_VAULT__`.
    const ENV_PREFIX: &'static str;

    /// Its gRPC server, TLS and database sections.
    fn common(&self) -> (&ServerSettings, &TlsSettings, &DatabaseSettings);

    /// Its `[limits]` section.
    fn limits(&self) -> &LimitSettings;

    /// Its `[metrics]` and `[telemetry]` sections.
    fn observability(&self) -> (&MetricsSettings, &TelemetrySettings);

    /// Checks every value's range; the first failure names its key.
    fn validate(&self) -> Result<(), ConfigError>;
}

/// Reads a server's settings: its defaults, then the file at `path` (if any), then the
/// overrides in `env` under its prefix (pairs of name and value; pass `std::env::vars()`);
/// then validates the result. A file or an override that sets some keys of a section keeps the
/// server's own defaults for the others.
pub fn load_service<S: ServiceSettings>(
    path: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<S, ConfigError> {
    let defaults = S::default();
    let (server, tls, database) = defaults.common();
    let mut base = service_base(server, tls, database);
    base.insert("limits".to_owned(), defaults.limits().base());
    // A file that sets some keys of `[metrics]` keeps the server's own port for the others.
    let (metrics, _) = defaults.observability();
    let mut section = toml::Table::new();
    section.insert("enabled".into(), toml::Value::Boolean(metrics.enabled));
    section.insert(
        "listen_addr".into(),
        toml::Value::String(metrics.listen_addr.to_string()),
    );
    base.insert("metrics".to_owned(), toml::Value::Table(section));
    let settings: S = load(base, path, env, S::ENV_PREFIX)?;
    settings.validate()?;
    settings.common().2.check_url()?;
    Ok(settings)
}
