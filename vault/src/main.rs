//! The `tandem-vault` binary: hardens the process, reads settings, starts logging, serves until
//! SIGINT or SIGTERM.
//!
//! Usage: `tandem-vault [--config PATH]`; every setting may be overridden with
//! `TANDEM_VAULT__<SECTION>__<KEY>`.

use std::process::ExitCode;

use tandem_vault::config::Settings;
use tandem_vault::hardening::ZeroizingAllocator;

/// Every heap block is wiped when freed: request buffers that carried card data among them.
#[global_allocator]
static ALLOCATOR: ZeroizingAllocator = ZeroizingAllocator;

#[tokio::main]
async fn main() -> ExitCode {
    // First, before any setting, key or request is read: no core file, no dump, no peer ptrace.
    if let Err(error) = tandem_vault::hardening::harden_process() {
        eprintln!("tandem-vault: {error}");
        return ExitCode::from(1);
    }
    tandem_runtime::binary::serve(
        "tandem-vault",
        |path| Settings::load(path, std::env::vars()),
        |settings| settings.server.clone(),
        |listener, settings, shutdown| {
            // Logging starts inside `serve`: this is its first chance to say so.
            tracing::info!(
                dumpable = false,
                core_file_bytes_max = 0,
                "process hardened: not dumpable, no core files, freed memory wiped"
            );
            tandem_vault::run(listener, settings, shutdown)
        },
    )
    .await
}
