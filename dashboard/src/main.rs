//! `tandem-dashboard [--config PATH]`: serves the dashboard until SIGINT or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use tandem_dashboard::config::Settings;
use tandem_runtime::telemetry::{self, LogFormat};

#[tokio::main]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let config = match (args.next().as_deref(), args.next()) {
        (None, _) => None,
        (Some("--config"), Some(path)) => Some(PathBuf::from(path)),
        _ => {
            eprintln!("usage: tandem-dashboard [--config PATH]");
            return ExitCode::from(2);
        }
    };
    let settings = match Settings::load(config.as_deref(), std::env::vars()) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("tandem-dashboard: {error}");
            return ExitCode::from(2);
        }
    };
    let telemetry = match telemetry::init(
        LogFormat::Json,
        "info",
        "tandem-dashboard",
        &settings.telemetry,
    ) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("tandem-dashboard: {error}");
            return ExitCode::from(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(settings.server.listen_addr).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!(
                "tandem-dashboard: cannot listen on {}: {error}",
                settings.server.listen_addr
            );
            return ExitCode::from(1);
        }
    };
    let served = tandem_dashboard::run(listener, settings, tandem_runtime::shutdown_signal()).await;
    telemetry.shutdown().await;
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tandem-dashboard: {error}");
            ExitCode::from(1)
        }
    }
}
