//! The `tandem-vault` binary: reads settings, starts logging, serves until SIGINT or SIGTERM.
//!
//! Usage: `tandem-vault [--config PATH]`; every setting may be overridden with
//! `TANDEM_VAULT__<SECTION>__<KEY>`.

use std::path::PathBuf;
use std::process::ExitCode;

use tandem_runtime::telemetry::{self, LogFormat};
use tandem_vault::config::Settings;

#[tokio::main]
async fn main() -> ExitCode {
    telemetry::init(LogFormat::Json, "info");
    let mut args = std::env::args().skip(1);
    let config = match (args.next().as_deref(), args.next()) {
        (None, _) => None,
        (Some("--config"), Some(path)) => Some(PathBuf::from(path)),
        _ => {
            eprintln!("usage: tandem-vault [--config PATH]");
            return ExitCode::from(2);
        }
    };
    let settings = match Settings::load(config.as_deref(), std::env::vars()) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("tandem-vault: {error}");
            return ExitCode::from(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(settings.server.listen_addr).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!(
                "tandem-vault: cannot listen on {}: {error}",
                settings.server.listen_addr
            );
            return ExitCode::from(1);
        }
    };
    match tandem_vault::run(listener, settings, tandem_runtime::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tandem-vault: {error}");
            ExitCode::from(1)
        }
    }
}
