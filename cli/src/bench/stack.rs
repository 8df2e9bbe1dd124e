//! The servers a benchmark runs on, and the connections its clients share.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use tandem_tls::TlsFiles;
use tandem_tls::identity::Role;

use super::LoadArgs;
use crate::dev;
use crate::process::{ORCHESTRATOR_UNLIMITED, Server, VAULT_UNLIMITED, free_address};

/// Connections the clients share; HTTP/2 multiplexes the rest.
pub(super) const CONNECTIONS_MAX: usize = 8;
/// How long setting up one connection, TLS handshake included, may take.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one vault call may take.
pub(super) const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The benchmarks' servers' databases.
pub(super) const VAULT_DATABASE: &str = "tandem_bench_vault";
pub(super) const ORCHESTRATOR_DATABASE: &str = "tandem_bench_orchestrator";

/// The servers a benchmark started and where they keep their logs.
pub(super) struct Stack {
    pub(super) dir: PathBuf,
    pub(super) vault: Option<Server>,
    pub(super) orchestrator: Option<Server>,
}

impl Stack {
    pub(super) fn new() -> anyhow::Result<Stack> {
        let dir = std::env::temp_dir().join(format!("tandem-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        Ok(Stack {
            dir,
            vault: None,
            orchestrator: None,
        })
    }

    /// The vault to load: `--vault`, or one started as a child process on a fresh database.
    pub(super) async fn vault(&mut self, args: &LoadArgs) -> anyhow::Result<String> {
        self.vault_with(args, &[]).await
    }

    /// As [`Stack::vault`], with the overrides of `env` on a vault it starts.
    pub(super) async fn vault_with(
        &mut self,
        args: &LoadArgs,
        env: &[(&str, &str)],
    ) -> anyhow::Result<String> {
        if let Some(uri) = &args.vault {
            return Ok(uri.clone());
        }
        let url = dev::ensure_fresh_database(&args.shape.database_url, VAULT_DATABASE).await?;
        let mut vault = Server::vault(
            &free_address()?,
            &args.certs,
            &url,
            &self.dir.join("root.key"),
            self.dir.join("vault.log"),
            // Beside a running `tandemctl dev`, the bench vault takes any free metrics port.
            &[
                &VAULT_UNLIMITED[..],
                &[("TANDEM_VAULT__METRICS__LISTEN_ADDR", "127.0.0.1:0")],
                env,
            ]
            .concat(),
        )?;
        vault.start()?;
        vault.wait_ready(&args.certs).await?;
        let uri = format!("https://{}", vault.address);
        self.vault = Some(vault);
        Ok(uri)
    }

    /// The orchestrator to load: `given` (`--orchestrator`), or one started as a child process on a
    /// fresh database, paying through the vault this stack started, without limits per caller.
    pub(super) async fn orchestrator(
        &mut self,
        given: Option<&str>,
        load: &LoadArgs,
    ) -> anyhow::Result<String> {
        if let Some(uri) = given {
            return Ok(uri.to_owned());
        }
        self.start_orchestrator(
            &load.certs,
            &load.shape.database_url,
            &ORCHESTRATOR_UNLIMITED,
        )
        .await
    }

    /// Starts an orchestrator as a child process on a fresh database with the overrides of
    /// `env`, paying through the vault this stack started.
    pub(super) async fn start_orchestrator(
        &mut self,
        certs: &Path,
        database_url: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<String> {
        let vault = self
            .vault
            .as_ref()
            .context("an orchestrator needs the bench's own vault (or --orchestrator)")?;
        let url = dev::ensure_fresh_database(database_url, ORCHESTRATOR_DATABASE).await?;
        let mut orchestrator = Server::orchestrator(
            &free_address()?,
            certs,
            &url,
            &vault.address,
            self.dir.join("orchestrator.log"),
            env,
        )?;
        orchestrator.start()?;
        orchestrator.wait_ready(certs).await?;
        let uri = format!("https://{}", orchestrator.address);
        self.orchestrator = Some(orchestrator);
        Ok(uri)
    }

    /// The databases of the servers this stack started, for [`Counters`].
    pub(super) fn databases(&self) -> Vec<(&'static str, &'static str)> {
        let mut databases = Vec::new();
        if self.vault.is_some() {
            databases.push(("vault", VAULT_DATABASE));
        }
        if self.orchestrator.is_some() {
            databases.push(("orchestrator", ORCHESTRATOR_DATABASE));
        }
        databases
    }

    /// The peak resident memory of each server this stack started.
    pub(super) fn peak_rss(&self) -> Vec<(&'static str, Option<u64>)> {
        [&self.vault, &self.orchestrator]
            .into_iter()
            .flatten()
            .map(|server| (server.name, server.peak_rss_bytes()))
            .collect()
    }

    /// Stops the servers; their logs go with the directory.
    pub(super) fn stop(mut self) {
        // Killed on drop: the orchestrator first, so that it never sees its vault go away.
        drop(self.orchestrator.take());
        drop(self.vault.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Up to [`CONNECTIONS_MAX`] connections to the server at `uri` as `role`, on which each call
/// may take up to `call_timeout`; HTTP/2 multiplexes the `concurrency` clients over them.
pub(super) async fn channels(
    uri: &str,
    certs: &Path,
    role: Role,
    concurrency: usize,
    call_timeout: Duration,
) -> anyhow::Result<Vec<tonic::transport::Channel>> {
    channels_as(
        uri,
        &TlsFiles::in_dir(certs, role.as_str()),
        concurrency,
        call_timeout,
    )
    .await
}

/// As [`channels`], with the client identity of `files`.
pub(super) async fn channels_as(
    uri: &str,
    files: &TlsFiles,
    concurrency: usize,
    call_timeout: Duration,
) -> anyhow::Result<Vec<tonic::transport::Channel>> {
    let mut channels = Vec::new();
    for _ in 0..concurrency.min(CONNECTIONS_MAX) {
        // `endpoint` bounds calls by the connect timeout; payments that wait need longer.
        let endpoint = tandem_tls::client::endpoint(uri, files, "localhost", CONNECT_TIMEOUT)?
            .timeout(call_timeout);
        let channel = tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect())
            .await
            .map_err(|_| anyhow::anyhow!("connecting to {uri}: timed out"))?
            .with_context(|| format!("connecting to {uri}"))?;
        channels.push(channel);
    }
    Ok(channels)
}
