//! The `tandem-orchestrator` binary: reads settings, starts logging, serves until SIGINT or
//! SIGTERM.
//!
//! Usage: `tandem-orchestrator [--config PATH]`; every setting may be overridden with
//! `TANDEM_ORCHESTRATOR__<SECTION>__<KEY>`.

use std::path::PathBuf;
use std::process::ExitCode;

use tandem_orchestrator::config::Settings;
use tandem_runtime::telemetry::{self, LogFormat};

#[tokio::main]
async fn main() -> ExitCode {
    telemetry::init(LogFormat::Json, "info");
    let mut args = std::env::args().skip(1);
    let config = match (args.next().as_deref(), args.next()) {
        (None, _) => None,
        (Some("--config"), Some(path)) => Some(PathBuf::from(path)),
        _ => {
            eprintln!("usage: tandem-orchestrator [--config PATH]");
            return ExitCode::from(2);
        }
    };
    let settings = match Settings::load(config.as_deref(), std::env::vars()) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("tandem-orchestrator: {error}");
            return ExitCode::from(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(settings.server.listen_addr).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!(
                "tandem-orchestrator: cannot listen on {}: {error}",
                settings.server.listen_addr
            );
            return ExitCode::from(1);
        }
    };
    match tandem_orchestrator::run(listener, settings, tandem_runtime::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tandem-orchestrator: {error}");
            ExitCode::from(1)
        }
    }
}
