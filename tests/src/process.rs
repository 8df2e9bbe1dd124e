//! The vault as a separate OS process: the real `tandem-vault` binary, configured through its
//! environment overrides, for tests of what only a whole process shows (what its memory holds,
//! its resource limits). Every other test runs the vault in-process ([`crate::RunningVault`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use tandem_tls::identity::Role;
use tonic::transport::Channel;

use crate::{TestDatabase, free_local_addr, pki};

/// How long the process may take from its start until it answers health checks.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A `tandem-vault` process on a fresh database, killed when dropped.
#[derive(Debug)]
pub struct VaultProcess {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its database.
    pub database: TestDatabase,
    /// Its dev root key file (64 hex characters on the first line that is not a comment).
    pub root_key_path: PathBuf,
    /// Its standard output and error (JSON log lines).
    pub log_path: PathBuf,
    child: Child,
}

impl VaultProcess {
    /// Builds the binary if needed, starts it on a fresh database with the test PKI and a new
    /// dev root key, and waits until it answers health checks.
    pub async fn start() -> VaultProcess {
        let binary = tokio::task::spawn_blocking(vault_binary)
            .await
            .expect("build tandem-vault");
        let database = TestDatabase::create().await;
        let dir = std::env::temp_dir().join(format!("tandem-test-process-{}", database.name));
        std::fs::create_dir_all(&dir).expect("process directory");
        let root_key_path = dir.join("root.key");
        let log_path = dir.join("vault.log");
        let addr = free_local_addr();
        let files = pki().vault_server();
        let env = [
            ("TANDEM_VAULT__SERVER__LISTEN_ADDR", addr.to_string()),
            ("TANDEM_VAULT__TLS__CERT_PATH", path_text(&files.cert_path)),
            ("TANDEM_VAULT__TLS__KEY_PATH", path_text(&files.key_path)),
            ("TANDEM_VAULT__TLS__CA_PATH", path_text(&files.ca_path)),
            ("TANDEM_VAULT__DATABASE__URL", database.url.clone()),
            ("TANDEM_VAULT__DATABASE__CONNECTIONS_MAX", "8".to_owned()),
            (
                "TANDEM_VAULT__KEYS__DEV_ROOT_KEY_PATH",
                path_text(&root_key_path),
            ),
            ("TANDEM_VAULT__METRICS__ENABLED", "false".to_owned()),
            ("RUST_LOG", "info".to_owned()),
        ];
        let log = std::fs::File::create(&log_path).expect("vault log");
        // Started with its soft core file limit raised to the hard one (as a shell of an
        // operator might), so that a limit of zero afterwards is the vault's own doing.
        let child = Command::new("sh")
            .args(["-c", "ulimit -S -c \"$(ulimit -H -c)\" && exec \"$0\""])
            .arg(binary)
            .envs(env)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("vault log"))
            .stderr(log)
            .spawn()
            .expect("start tandem-vault");
        let mut vault = VaultProcess {
            addr,
            database,
            root_key_path,
            log_path,
            child,
        };
        vault.wait_until_serving().await;
        vault
    }

    async fn wait_until_serving(&mut self) {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("vault process status") {
                panic!(
                    "tandem-vault exited with {status} at start:\n{}",
                    self.log()
                );
            }
            if let Ok(channel) = self.try_channel(Role::Tokenizer).await {
                let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
                let request = tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                };
                if health.check(request).await.is_ok() {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "tandem-vault did not start within {} s:\n{}",
                READY_TIMEOUT.as_secs(),
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process has written so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    async fn try_channel(&self, role: Role) -> Result<Channel, String> {
        tandem_tls::client::connect(
            &format!("https://{}", self.addr),
            &pki().client(role),
            "localhost",
            Duration::from_secs(5),
        )
        .await
        .map_err(|e| e.to_string())
    }

    /// A channel authenticated as `role`.
    pub async fn channel(&self, role: Role) -> Channel {
        self.try_channel(role).await.expect("connect to the vault")
    }
}

impl Drop for VaultProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `tandem-vault` binary of this build, built first (`cargo build -p tandem-vault`) so that
/// it is never older than the code under test: a test target does not build other packages'
/// binaries. `cargo test` and `cargo nextest` release the build directory's lock before they
/// run tests, so the nested build cannot wait on its own parent (a no-op when up to date).
fn vault_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            // Test executables live in target/<profile>/deps; binaries in target/<profile>.
            let exe = std::env::current_exe().expect("test executable path");
            let profile_dir = exe
                .parent()
                .and_then(Path::parent)
                .expect("test executable under target/<profile>/deps");
            let target_dir = profile_dir.parent().expect("target directory");
            let mut build = Command::new(option_env!("CARGO").unwrap_or("cargo"));
            build
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .args([
                    "build",
                    "--quiet",
                    "-p",
                    "tandem-vault",
                    "--bin",
                    "tandem-vault",
                ])
                .arg("--target-dir")
                .arg(target_dir);
            if profile_dir
                .file_name()
                .is_some_and(|name| name == "release")
            {
                build.arg("--release");
            }
            let status = build.status().expect("run cargo build");
            assert!(status.success(), "cargo build -p tandem-vault failed");
            profile_dir.join("tandem-vault")
        })
        .clone()
}

fn path_text(path: &Path) -> String {
    path.to_str().expect("test paths are UTF-8").to_owned()
}
