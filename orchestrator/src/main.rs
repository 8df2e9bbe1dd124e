//! The `tandem-orchestrator` binary: reads settings, starts logging, serves until SIGINT or
//! SIGTERM.
//!
//! Usage: `tandem-orchestrator [--config PATH]`; every setting may be overridden with
//! `TANDEM_ORCHESTRATOR__<SECTION>__<KEY>`.

use std::process::ExitCode;

use tandem_orchestrator::config::Settings;

#[tokio::main]
async fn main() -> ExitCode {
    tandem_runtime::binary::serve(
        "tandem-orchestrator",
        |path| Settings::load(path, std::env::vars()),
        |settings| settings.server.clone(),
        tandem_orchestrator::run,
    )
    .await
}
