//! Where the servers are, who we are to them, and what every command does with a call: the
//! default certificate directory, the `--vault` and `--orchestrator` targets, channels with
//! bounded connect and call times, request ids, and a failed call as one line.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use tandem_tls::TlsFiles;
use tandem_tls::identity::Role;

/// Where `tandemctl dev` keeps its certificates and root key, and so where every command looks
/// for its identity unless told otherwise.
pub(crate) const DEV_DIR: &str = ".tandem/dev";

/// How long setting up a connection, TLS handshake included, may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a call that does not wait on anything may take.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The most pages a `list` command follows (100 rows each at most), so a listing always ends.
pub(crate) const LIST_PAGES_MAX: usize = 1_000;

/// After a page of a `--page-token` listing: the token to read next, or `None` when the listing
/// is done (its last page, or a single page without `--all`, which says how to go on).
pub(crate) fn next_page(token: String, all: bool) -> Option<String> {
    if token.is_empty() {
        return None;
    }
    if !all {
        eprintln!("more: --page-token {token}");
        return None;
    }
    Some(token)
}

/// Says that an `--all` listing stopped at [`LIST_PAGES_MAX`] pages, and how to go on.
pub(crate) fn pages_stopped(token: &str) {
    eprintln!("stopped after {LIST_PAGES_MAX} pages; continue with --page-token {token}");
}

/// Where the vault is and who we are.
#[derive(Debug, clap::Args)]
pub(crate) struct VaultTarget {
    /// The vault (`https://host:port`).
    #[arg(
        long,
        env = "TANDEM_VAULT_URI",
        default_value = "https://127.0.0.1:50051"
    )]
    vault: String,
    /// Directory of the certificates (`ca.pem` and the identity's `.pem`/`.key`).
    #[arg(long, default_value = DEV_DIR)]
    certs: PathBuf,
    /// The DNS name the vault's certificate carries.
    #[arg(long, default_value = "localhost")]
    server_name: String,
}

/// A channel to the vault as `role` (its identity files are `<certs>/<role>.pem` and `.key`),
/// on which every call may take up to [`CONNECT_TIMEOUT`].
pub(crate) async fn vault_channel(
    target: &VaultTarget,
    role: Role,
) -> anyhow::Result<tonic::transport::Channel> {
    let files = TlsFiles::in_dir(&target.certs, role.as_str());
    tandem_tls::client::connect(&target.vault, &files, &target.server_name, CONNECT_TIMEOUT)
        .await
        .context("connecting to the vault")
}

/// Where the orchestrator is and who we are.
#[derive(Debug, clap::Args)]
pub(crate) struct OrchestratorTarget {
    /// The orchestrator (`https://host:port`).
    #[arg(
        long,
        env = "TANDEM_ORCHESTRATOR_URI",
        default_value = "https://127.0.0.1:50052"
    )]
    orchestrator: String,
    /// Directory of the certificates (`ca.pem` and the identity's `.pem`/`.key`).
    #[arg(long, default_value = DEV_DIR)]
    certs: PathBuf,
    /// The DNS name the orchestrator's certificate carries.
    #[arg(long, default_value = "localhost")]
    server_name: String,
}

/// A channel to the orchestrator as `role` (its identity files are `<certs>/<role>.pem` and
/// `.key`), on which every call may take up to `call_timeout`.
pub(crate) async fn orchestrator_channel(
    target: &OrchestratorTarget,
    role: Role,
    call_timeout: Duration,
) -> anyhow::Result<tonic::transport::Channel> {
    let files = TlsFiles::in_dir(&target.certs, role.as_str());
    let endpoint = tandem_tls::client::endpoint(
        &target.orchestrator,
        &files,
        &target.server_name,
        CONNECT_TIMEOUT,
    )?
    // `endpoint` bounds calls by the connect timeout; calls that wait on a payment need longer.
    .timeout(call_timeout);
    tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect())
        .await
        .map_err(|_| anyhow::anyhow!("cannot connect to {}: timed out", target.orchestrator))?
        .with_context(|| format!("connecting to the orchestrator at {}", target.orchestrator))
}

/// The `request_id` of a mutating command: the one given, or a new UUID.
pub(crate) fn request_id(given: Option<String>) -> String {
    given.unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

/// A failed call as one line: the status code, the ErrorInfo reason and any bad fields.
pub(crate) fn failure(status: tonic::Status) -> anyhow::Error {
    use tonic_types::StatusExt as _;
    let reason = status
        .get_details_error_info()
        .map(|info| info.reason)
        .unwrap_or_default();
    let fields: Vec<String> = status
        .get_details_bad_request()
        .map(|bad| {
            bad.field_violations
                .into_iter()
                .map(|v| format!("{}: {}", v.field, v.description))
                .collect()
        })
        .unwrap_or_default();
    anyhow::anyhow!(
        "{:?} {reason}: {}{}",
        status.code(),
        status.message(),
        if fields.is_empty() {
            String::new()
        } else {
            format!(" ({})", fields.join("; "))
        }
    )
}
