//! The `tandem-vault` binary: reads settings, starts logging, serves until SIGINT or SIGTERM.
//!
//! Usage: `tandem-vault [--config PATH]`; every setting may be overridden with
//! `TANDEM_VAULT__<SECTION>__<KEY>`.

use std::process::ExitCode;

use tandem_vault::config::Settings;

#[tokio::main]
async fn main() -> ExitCode {
    tandem_runtime::binary::serve(
        "tandem-vault",
        |path| Settings::load(path, std::env::vars()),
        |settings| settings.server.clone(),
        tandem_vault::run,
    )
    .await
}
