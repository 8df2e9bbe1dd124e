//! The vault and the orchestrator as child processes of `tandemctl`: the `tandem-vault` and
//! `tandem-orchestrator` binaries beside it, configured through their environment overrides.
//!
//! `tandemctl chaos` kills them at random and starts them again; `tandemctl bench` runs them
//! apart from its load generator, so that their peak resident memory is theirs alone.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tandem_tls::TlsFiles;
use tandem_tls::identity::Role;
use tonic::transport::Channel;

/// How long a server may take from its start until it accepts connections.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a starting server is probed.
const READY_POLL: Duration = Duration::from_millis(50);
/// How long one connection attempt, TLS handshake included, may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Overrides that lift the vault's limits per caller, for runs that load or break the servers
/// to measure something else (throughput, recovery); admission has its own benchmark.
pub(crate) const VAULT_UNLIMITED: [(&str, &str); 9] = [
    ("TANDEM_VAULT__LIMITS__READ__REQUESTS_PER_S", "1000000"),
    ("TANDEM_VAULT__LIMITS__READ__BURST", "1000000"),
    ("TANDEM_VAULT__LIMITS__READ__IN_FLIGHT_MAX", "1000000"),
    ("TANDEM_VAULT__LIMITS__WRITE__REQUESTS_PER_S", "1000000"),
    ("TANDEM_VAULT__LIMITS__WRITE__BURST", "1000000"),
    ("TANDEM_VAULT__LIMITS__WRITE__IN_FLIGHT_MAX", "1000000"),
    ("TANDEM_VAULT__LIMITS__STREAM__REQUESTS_PER_S", "1000000"),
    ("TANDEM_VAULT__LIMITS__STREAM__BURST", "1000000"),
    ("TANDEM_VAULT__LIMITS__STREAM__IN_FLIGHT_MAX", "1000000"),
];

/// As [`VAULT_UNLIMITED`], for the orchestrator.
pub(crate) const ORCHESTRATOR_UNLIMITED: [(&str, &str); 9] = [
    (
        "TANDEM_ORCHESTRATOR__LIMITS__READ__REQUESTS_PER_S",
        "1000000",
    ),
    ("TANDEM_ORCHESTRATOR__LIMITS__READ__BURST", "1000000"),
    (
        "TANDEM_ORCHESTRATOR__LIMITS__READ__IN_FLIGHT_MAX",
        "1000000",
    ),
    (
        "TANDEM_ORCHESTRATOR__LIMITS__WRITE__REQUESTS_PER_S",
        "1000000",
    ),
    ("TANDEM_ORCHESTRATOR__LIMITS__WRITE__BURST", "1000000"),
    (
        "TANDEM_ORCHESTRATOR__LIMITS__WRITE__IN_FLIGHT_MAX",
        "1000000",
    ),
    (
        "TANDEM_ORCHESTRATOR__LIMITS__STREAM__REQUESTS_PER_S",
        "1000000",
    ),
    ("TANDEM_ORCHESTRATOR__LIMITS__STREAM__BURST", "1000000"),
    (
        "TANDEM_ORCHESTRATOR__LIMITS__STREAM__IN_FLIGHT_MAX",
        "1000000",
    ),
];

/// One server, as a child process that can be killed and started again.
pub(crate) struct Server {
    /// For messages: "vault", "orchestrator".
    pub(crate) name: &'static str,
    binary: PathBuf,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
    /// `host:port` it listens on.
    pub(crate) address: String,
}

impl Server {
    /// A vault listening on `address` with the certificates of `certs`, the database at
    /// `database_url` and a dev root key at `root_key`; `extra` overrides more settings
    /// (`TANDEM_VAULT__...` pairs). Its output goes to `log`. Not started yet.
    pub(crate) fn vault(
        address: &str,
        certs: &Path,
        database_url: &str,
        root_key: &Path,
        log: PathBuf,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<Server> {
        let files = TlsFiles::in_dir(certs, "vault-server");
        let mut env = pairs(&[
            ("TANDEM_VAULT__SERVER__LISTEN_ADDR", address),
            (
                "TANDEM_VAULT__TLS__CERT_PATH",
                &path_text(&files.cert_path)?,
            ),
            ("TANDEM_VAULT__TLS__KEY_PATH", &path_text(&files.key_path)?),
            ("TANDEM_VAULT__TLS__CA_PATH", &path_text(&files.ca_path)?),
            ("TANDEM_VAULT__DATABASE__URL", database_url),
            (
                "TANDEM_VAULT__KEYS__DEV_ROOT_KEY_PATH",
                &path_text(root_key)?,
            ),
        ]);
        env.extend(pairs(extra));
        Server::new("vault", "tandem-vault", address, env, log)
    }

    /// An orchestrator listening on `address` with the certificates of `certs`, the database
    /// at `database_url`, paying through the vault at `vault_address`; `extra` overrides more
    /// settings (`TANDEM_ORCHESTRATOR__...` pairs). Its output goes to `log`. Not started yet.
    pub(crate) fn orchestrator(
        address: &str,
        certs: &Path,
        database_url: &str,
        vault_address: &str,
        log: PathBuf,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<Server> {
        let server = TlsFiles::in_dir(certs, "orchestrator-server");
        let client = TlsFiles::in_dir(certs, Role::Orchestrator.as_str());
        let mut env = pairs(&[
            ("TANDEM_ORCHESTRATOR__SERVER__LISTEN_ADDR", address),
            (
                "TANDEM_ORCHESTRATOR__TLS__CERT_PATH",
                &path_text(&server.cert_path)?,
            ),
            (
                "TANDEM_ORCHESTRATOR__TLS__KEY_PATH",
                &path_text(&server.key_path)?,
            ),
            (
                "TANDEM_ORCHESTRATOR__TLS__CA_PATH",
                &path_text(&server.ca_path)?,
            ),
            ("TANDEM_ORCHESTRATOR__DATABASE__URL", database_url),
            (
                "TANDEM_ORCHESTRATOR__VAULT__ENDPOINT",
                &format!("https://{vault_address}"),
            ),
            (
                "TANDEM_ORCHESTRATOR__VAULT__CERT_PATH",
                &path_text(&client.cert_path)?,
            ),
            (
                "TANDEM_ORCHESTRATOR__VAULT__KEY_PATH",
                &path_text(&client.key_path)?,
            ),
            (
                "TANDEM_ORCHESTRATOR__VAULT__CA_PATH",
                &path_text(&client.ca_path)?,
            ),
            // Any free port: several may run at once (replicas, a `tandemctl dev` beside).
            ("TANDEM_ORCHESTRATOR__METRICS__LISTEN_ADDR", "127.0.0.1:0"),
        ]);
        env.extend(pairs(extra));
        Server::new("orchestrator", "tandem-orchestrator", address, env, log)
    }

    fn new(
        name: &'static str,
        binary: &str,
        address: &str,
        env: Vec<(String, String)>,
        log: PathBuf,
    ) -> anyhow::Result<Server> {
        let binary = std::env::current_exe()?
            .parent()
            .context("tandemctl has no directory")?
            .join(binary);
        anyhow::ensure!(
            binary.is_file(),
            "{} is missing: build it beside tandemctl (cargo build --workspace, with --release \
             for a release tandemctl)",
            binary.display()
        );
        Ok(Server {
            name,
            binary,
            env,
            log,
            child: None,
            address: address.to_owned(),
        })
    }

    /// Starts the process; its output is appended to its log.
    pub(crate) fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("open {}", self.log.display()))?;
        let child = Command::new(&self.binary)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {}", self.binary.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Where its output goes.
    pub(crate) fn log(&self) -> &Path {
        &self.log
    }

    /// The running process's id; `None` when it is not running.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process started last is still running (it neither exited nor was killed).
    pub(crate) fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// kill -9, as a crash; waits until the process is gone.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits until the server accepts connections from a caller with the certificates of
    /// `certs`; fails at once if the process exits first.
    pub(crate) async fn wait_ready(&mut self, certs: &Path) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "{} exited with {status} at start; see {}",
                    self.name,
                    self.log.display()
                );
            }
            if connect(&self.address, certs, Role::Reader).await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not start within {} s; see {}",
                    self.name,
                    READY_TIMEOUT.as_secs(),
                    self.log.display()
                );
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    /// The most memory the running process has held resident since it started (`VmHWM` of
    /// `/proc/<pid>/status`), in bytes; `None` when it is not running or the system does not
    /// tell.
    pub(crate) fn peak_rss_bytes(&self) -> Option<u64> {
        let pid = self.child.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        peak_rss_from_status(&status)
    }

    /// The resident memory of the running process now, in bytes, if known.
    pub(crate) fn rss_bytes(&self) -> Option<u64> {
        let pid = self.child.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status_bytes(&status, "VmRSS:")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `VmHWM` of a `/proc/<pid>/status` text, in bytes.
pub(crate) fn peak_rss_from_status(status: &str) -> Option<u64> {
    status_bytes(status, "VmHWM:")
}

/// The size on line `field` (`VmRSS:`, `VmHWM:`) of a `/proc/<pid>/status` text, in bytes.
fn status_bytes(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix(field))?;
    let mut words = line.split_whitespace();
    let kib: u64 = words.next()?.parse().ok()?;
    (words.next()? == "kB").then_some(kib * 1024)
}

/// A channel to the server at `address` (`host:port`) as `role`, with the certificates of
/// `certs`.
pub(crate) async fn connect(address: &str, certs: &Path, role: Role) -> anyhow::Result<Channel> {
    Ok(tandem_tls::client::connect(
        &format!("https://{address}"),
        &TlsFiles::in_dir(certs, role.as_str()),
        "localhost",
        CONNECT_TIMEOUT,
    )
    .await?)
}

/// A loopback address no one listens on now.
pub(crate) fn free_address() -> anyhow::Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.to_string())
}

fn pairs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn path_text(path: &Path) -> anyhow::Result<String> {
    path.to_str()
        .map(str::to_owned)
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The peak resident size is read from `VmHWM` in kB; anything else is no answer.
    #[test]
    fn peak_rss() {
        let status =
            "Name:\ttandem-vault\nVmPeak:\t  900000 kB\nVmHWM:\t   61440 kB\nVmRSS:\t 50000 kB\n";
        assert_eq!(peak_rss_from_status(status), Some(61440 * 1024));
        for bad in [
            "",
            "VmHWM:\n",
            "VmHWM:\t12 MB\n",
            "VmHWM:\tmany kB\n",
            "VmRSS:\t1 kB\n",
        ] {
            assert_eq!(peak_rss_from_status(bad), None, "{bad:?}");
        }
    }
}
