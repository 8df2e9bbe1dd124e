//! Test harness for Tandem's end-to-end tests: a fresh Postgres database per test, a test PKI,
//! an in-process vault on `127.0.0.1:0` over real mutual TLS, and log capture.
//!
//! Every test gets its own database (`tandem_test_<uuid>`) on the server named by
//! `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`), so tests run in
//! parallel without sharing state. `scripts/test.sh` drops databases left by earlier runs.
//!
//! [`process::VaultProcess`] runs the real `tandem-vault` binary instead, for the few tests that
//! need a whole process of its own.

#![allow(clippy::print_stdout)]

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use sqlx::{Connection as _, Executor as _, PgConnection};
use tandem_orchestrator::config::{ClassLimits, LimitSettings};
use tandem_tls::TlsFiles;
use tandem_tls::identity::Role;
use tandem_vault::config::Settings;
use tokio::sync::oneshot;
use tonic::transport::Channel;

pub mod process;
pub mod raw;
pub mod receiver;
pub mod stack;

/// Test card numbers (Stripe's test mode), used to grep logs and tables for leaks.
pub const TEST_PANS: [&str; 4] = [
    "4242424242424242",
    "5555555555554444",
    "378282246310005",
    "4000056655665556",
];

/// The admin URL of the Postgres server tests create their databases on.
pub fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// `url` with its database name replaced by `database`.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, _) = url.rsplit_once('/').expect("a database URL has a path");
    format!("{base}/{database}")
}

/// A fresh, empty database for one test.
#[derive(Debug, Clone)]
pub struct TestDatabase {
    /// Its name.
    pub name: String,
    /// Its URL.
    pub url: String,
}

impl TestDatabase {
    /// Creates the database.
    pub async fn create() -> TestDatabase {
        let name = format!("tandem_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&admin_url())
            .await
            .expect("connect to the test Postgres (is it running? see scripts/test.sh)");
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .expect("create test database");
        admin.close().await.ok();
        let url = with_database(&admin_url(), &name);
        TestDatabase { name, url }
    }

    /// Connects to the database.
    pub async fn connect(&self) -> PgConnection {
        PgConnection::connect(&self.url)
            .await
            .expect("connect to test database")
    }
}

/// A test PKI: a CA with every role's identity and the servers' certificates, plus a second,
/// untrusted CA with its own tokenizer identity.
#[derive(Debug)]
pub struct TestPki {
    /// Directory of the trusted set.
    pub dir: PathBuf,
    /// Directory of the untrusted set.
    pub rogue_dir: PathBuf,
}

impl TestPki {
    /// The client identity of `role`.
    pub fn client(&self, role: Role) -> TlsFiles {
        TlsFiles::in_dir(&self.dir, role.as_str())
    }

    /// A tokenizer identity issued by a CA the servers do not trust.
    pub fn rogue_client(&self) -> TlsFiles {
        TlsFiles::in_dir(&self.rogue_dir, Role::Tokenizer.as_str())
    }

    /// An identity from the trusted CA with a role no Tandem service knows:
    /// [`UNKNOWN_ROLE_IDENTITY`].
    pub fn unknown_role_client(&self) -> TlsFiles {
        TlsFiles::in_dir(&self.dir, "unknown-role")
    }

    /// A second payer, `payer/second`, whose calls count apart from the first's.
    pub fn second_payer(&self) -> TlsFiles {
        TlsFiles::in_dir(&self.dir, "payer-second")
    }

    /// An approver with the same name as every other identity of the set (`approver/test`):
    /// the set's own approver is `approver/test-approver`, a second person.
    pub fn same_name_approver(&self) -> TlsFiles {
        TlsFiles::in_dir(&self.dir, "approver-same-name")
    }

    /// A reviewer with the same name as every other identity of the set (`reviewer/test`): the
    /// name that created the set's payments, so four eyes refuse its reviews; the set's own
    /// reviewer is `reviewer/test-reviewer`.
    pub fn same_name_reviewer(&self) -> TlsFiles {
        TlsFiles::in_dir(&self.dir, "reviewer-same-name")
    }

    /// The vault server's files.
    pub fn vault_server(&self) -> TlsFiles {
        TlsFiles::in_dir(&self.dir, "vault-server")
    }

    /// The orchestrator's server certificate and key.
    pub fn orchestrator_server(&self) -> TlsFiles {
        TlsFiles::in_dir(&self.dir, "orchestrator-server")
    }

    /// The dashboard's HTTPS certificate and key.
    pub fn dashboard_server(&self) -> TlsFiles {
        TlsFiles::in_dir(&self.dir, "dashboard-server")
    }
}

/// The identity of [`TestPki::unknown_role_client`]: well formed, from the trusted CA, with a
/// role no Tandem service knows.
pub const UNKNOWN_ROLE_IDENTITY: &str = "superuser/mallory";

/// The process-wide test PKI, made once.
pub fn pki() -> &'static TestPki {
    static PKI: OnceLock<TestPki> = OnceLock::new();
    PKI.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("tandem-test-pki-{}", std::process::id()));
        let dir = root.join("trusted");
        let rogue_dir = root.join("rogue");
        let hosts = ["localhost", "127.0.0.1"];
        let prefix = tandem_tls::identity::DEFAULT_URI_PREFIX;
        let authority =
            tandem_tls::issue::Authority::new("Tandem test CA", prefix, 1).expect("test CA");
        authority.write_set(&dir, &hosts, "test").expect("test PKI");
        let (role, name) = UNKNOWN_ROLE_IDENTITY
            .split_once('/')
            .expect("an identity is <role>/<name>");
        authority
            .write_identity(&dir, "unknown-role", role, name)
            .expect("unknown-role identity");
        authority
            .write_identity(&dir, "payer-second", Role::Payer.as_str(), "second")
            .expect("second payer identity");
        authority
            .write_identity(&dir, "approver-same-name", Role::Approver.as_str(), "test")
            .expect("same-name approver identity");
        authority
            .write_identity(&dir, "reviewer-same-name", Role::Reviewer.as_str(), "test")
            .expect("same-name reviewer identity");
        tandem_tls::issue::write_set(&rogue_dir, prefix, &hosts, "test", 1).expect("rogue PKI");
        TestPki { dir, rogue_dir }
    })
}

/// Vault settings for a test: port 0, the test PKI, the test database, a root key in a
/// temporary file, fast purge.
pub fn vault_settings(database: &TestDatabase) -> Settings {
    let mut settings = Settings::default();
    let pki = pki();
    let server = pki.vault_server();
    settings.tls.cert_path = server.cert_path;
    settings.tls.key_path = server.key_path;
    settings.tls.ca_path = server.ca_path;
    settings.database.url = tandem_vault::config::SecretString::new(database.url.clone());
    settings.database.connections_max = 8;
    // Tests measure other things than admission; the admission tests set their own limits.
    settings.limits = LimitSettings::uniform(ClassLimits::UNLIMITED);
    settings.keys.dev_root_key_path = std::env::temp_dir()
        .join(format!("tandem-test-keys-{}", database.name))
        .join("root.key");
    settings.tokens.purge_interval_ms = 200;
    // Tests run in parallel: each vault's metrics endpoint takes a free port.
    settings.metrics.listen_addr = "127.0.0.1:0".parse().expect("socket address");
    settings
}

/// A vault running in this process.
#[derive(Debug)]
pub struct RunningVault {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its database.
    pub database: TestDatabase,
    /// Its settings.
    pub settings: Settings,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), tandem_vault::server::RunError>>>,
}

impl RunningVault {
    /// Starts a vault on a fresh database and waits until it answers health checks.
    pub async fn start() -> RunningVault {
        let database = TestDatabase::create().await;
        RunningVault::start_with(vault_settings(&database), database).await
    }

    /// Starts a vault with `settings` on `database`.
    pub async fn start_with(settings: Settings, database: TestDatabase) -> RunningVault {
        LogCapture::suite();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(tandem_vault::run(listener, settings.clone(), async {
            let _ = stopped.await;
        }));
        let vault = RunningVault {
            addr,
            database,
            settings,
            stop: Some(stop),
            task: Some(task),
        };
        vault.wait_until_serving().await;
        vault
    }

    async fn wait_until_serving(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(channel) = self.try_channel(&pki().client(Role::Tokenizer)).await {
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
                "vault did not start within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The `https://` URI of the vault.
    pub fn uri(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// A channel authenticated as `files`.
    pub async fn try_channel(&self, files: &TlsFiles) -> Result<Channel, String> {
        tandem_tls::client::connect(&self.uri(), files, "localhost", Duration::from_secs(5))
            .await
            .map_err(|e| e.to_string())
    }

    /// A channel authenticated as `role`.
    pub async fn channel(&self, role: Role) -> Channel {
        self.try_channel(&pki().client(role))
            .await
            .expect("connect to vault")
    }

    /// Stops the vault and waits for it to finish.
    pub async fn stop(mut self) {
        self.shut_down().await;
    }

    async fn shut_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await
                .expect("vault task panicked")
                .expect("vault stopped with an error");
        }
    }

    /// Stops the vault and starts a new one on the same database, keys and settings (a
    /// restart, on a new port).
    pub async fn restart(mut self) -> RunningVault {
        self.shut_down().await;
        RunningVault::start_with(self.settings.clone(), self.database.clone()).await
    }

    /// Flips one bit of `token`'s stored ciphertext, as corruption on disk would: the card's
    /// data no longer opens under its key and AAD.
    pub async fn corrupt_card(&self, token: &str) {
        sqlx::query(
            "UPDATE cards SET ciphertext = set_byte(ciphertext, 0, get_byte(ciphertext, 0) # 1) \
             WHERE token = $1",
        )
        .bind(token)
        .execute(&mut self.database.connect().await)
        .await
        .expect("corrupt a card's ciphertext");
    }

    /// Tokenizes `pan` (expiry 12/2030) and returns its token.
    pub async fn tokenize(&self, pan: &str) -> String {
        use tandem_proto::tandem::vault::v1 as pb;
        let mut tokens =
            pb::token_service_client::TokenServiceClient::new(self.channel(Role::Tokenizer).await);
        tokens
            .tokenize(pb::TokenizeRequest {
                request_id: uuid::Uuid::new_v4().to_string(),
                pan: pan.to_owned(),
                expiry_month: 12,
                expiry_year: 2030,
                holder_name: "Grace Hopper".to_owned(),
                reuse_existing: false,
                ttl_seconds: 0,
            })
            .await
            .expect("tokenize")
            .into_inner()
            .card
            .expect("card")
            .token
    }
}

/// Orchestrator settings for a test: the test PKI, its own database, the vault at `vault`,
/// short leases so recovery tests do not wait long.
pub fn orchestrator_settings(
    database: &TestDatabase,
    vault: &RunningVault,
) -> tandem_orchestrator::config::Settings {
    let mut settings = tandem_orchestrator::config::Settings::default();
    let pki = pki();
    let server = pki.orchestrator_server();
    settings.tls.cert_path = server.cert_path;
    settings.tls.key_path = server.key_path;
    settings.tls.ca_path = server.ca_path;
    settings.database.url = tandem_vault::config::SecretString::new(database.url.clone());
    settings.database.connections_max = 8;
    let client = pki.client(Role::Orchestrator);
    settings.vault.endpoint = vault.uri();
    settings.vault.cert_path = client.cert_path;
    settings.vault.key_path = client.key_path;
    settings.vault.ca_path = client.ca_path;
    settings.vault.timeout_ms = 1_000;
    settings.payments.lease_ms = 4_000;
    // Short retry waits, as the short lease shortens everything else.
    settings.payments.retry_delay_ms_min = 50;
    settings.payments.retry_delay_ms_max = 1_000;
    settings.payments.recovery_interval_ms = 200;
    settings.payments.watch_poll_ms = 50;
    // Exports may cover a range up to now: tests write nothing while they export.
    settings.ledger.export_settle_ms = 0;
    // Tests run reconciliations themselves; the worker's own test runs its rounds.
    settings.reconciliation.worker_enabled = false;
    settings.server.shutdown_grace_ms = 2_000;
    settings.limits = LimitSettings::uniform(ClassLimits::UNLIMITED);
    // Tests run in parallel: each orchestrator's metrics endpoint takes a free port.
    settings.metrics.listen_addr = "127.0.0.1:0".parse().expect("socket address");
    settings
}

/// [`orchestrator_settings`] for crash tests: shorter leases and vault timeouts, so a crashed
/// drive is resumed within about a second.
pub fn crash_test_settings(
    database: &TestDatabase,
    vault: &RunningVault,
) -> tandem_orchestrator::config::Settings {
    let mut settings = orchestrator_settings(database, vault);
    settings.vault.timeout_ms = 250;
    settings.payments.lease_ms = 1_000;
    settings.payments.recovery_interval_ms = 100;
    settings
}

/// An in-process orchestrator over real mutual TLS.
#[derive(Debug)]
pub struct RunningOrchestrator {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its database (with the ledger).
    pub database: TestDatabase,
    /// Its settings.
    pub settings: tandem_orchestrator::config::Settings,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), tandem_orchestrator::server::RunError>>>,
}

impl RunningOrchestrator {
    /// Starts an orchestrator with its own database in front of `vault`.
    pub async fn start(vault: &RunningVault) -> RunningOrchestrator {
        let database = TestDatabase::create().await;
        let settings = orchestrator_settings(&database, vault);
        RunningOrchestrator::start_with(settings, database, None).await
    }

    /// Starts an orchestrator with `settings`, optionally set to crash a payment's drive.
    pub async fn start_with(
        settings: tandem_orchestrator::config::Settings,
        database: TestDatabase,
        crash: Option<Arc<tandem_orchestrator::workflow::CrashPlan>>,
    ) -> RunningOrchestrator {
        LogCapture::suite();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(tandem_orchestrator::run_with(
            listener,
            settings.clone(),
            async {
                let _ = stopped.await;
            },
            crash,
        ));
        let orchestrator = RunningOrchestrator {
            addr,
            database,
            settings,
            stop: Some(stop),
            task: Some(task),
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while orchestrator
            .try_channel(&pki().client(Role::Reader))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "orchestrator did not start within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        orchestrator
    }

    /// A channel with the identity in `files`, or why it could not connect.
    pub async fn try_channel(&self, files: &TlsFiles) -> Result<Channel, String> {
        tandem_tls::client::connect(
            &format!("https://{}", self.addr),
            files,
            "localhost",
            Duration::from_secs(30),
        )
        .await
        .map_err(|e| e.to_string())
    }

    /// A channel with the identity of `role`.
    pub async fn channel(&self, role: Role) -> Channel {
        self.try_channel(&pki().client(role))
            .await
            .expect("connect to orchestrator")
    }

    /// The orchestrator's database (holding the ledger too).
    pub async fn pool(&self) -> sqlx::PgPool {
        sqlx::PgPool::connect(&self.database.url)
            .await
            .expect("connect to the orchestrator database")
    }

    /// Stops the server; payments being driven stop where they are, as in a crash.
    pub async fn stop(mut self) {
        self.shut_down().await;
    }

    async fn shut_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await
                .expect("orchestrator task panicked")
                .expect("orchestrator stopped with an error");
        }
    }

    /// Stops it and starts a new instance on the same database (with a new lease owner).
    pub async fn restart(mut self) -> RunningOrchestrator {
        self.shut_down().await;
        RunningOrchestrator::start_with(self.settings.clone(), self.database.clone(), None).await
    }
}

/// The `ErrorInfo` reason of an orchestrator status (its domain checked).
pub fn orchestrator_reason(status: &tonic::Status) -> String {
    use tonic_types::StatusExt as _;
    status
        .get_details_error_info()
        .map(|info| {
            assert_eq!(info.domain, "orchestrator.tandem");
            info.reason
        })
        .unwrap_or_default()
}

/// Captured log output of this test process: kept in memory for the test that reads it, and
/// appended to a file under `TANDEM_TEST_LOG_DIR` when it is set, which `scripts/test.sh`
/// scans for card numbers once the whole suite ran.
#[derive(Clone, Default)]
pub struct LogCapture {
    text: Arc<Mutex<Vec<u8>>>,
    file: Option<Arc<Mutex<std::fs::File>>>,
}

impl LogCapture {
    /// Installs a global subscriber at TRACE level (everything, including dependencies) that
    /// writes JSON lines into the capture. Every call in a process returns the same capture
    /// (tests sharing a process, as under `cargo test`, share it); so does [`LogCapture::suite`]
    /// once either ran.
    pub fn install() -> LogCapture {
        LogCapture::install_with("trace")
    }

    /// The capture every test's servers log into: Tandem's crates at TRACE, the rest at INFO
    /// (dependencies' frame-level tracing would slow the suite down), unless the test already
    /// installed [`LogCapture::install`].
    pub fn suite() -> LogCapture {
        LogCapture::install_with(
            "info,tandem_vault=trace,tandem_orchestrator=trace,tandem_runtime=trace,\
             tandem_ledger=trace,tandem_tls=trace,tandem_tests=trace",
        )
    }

    fn install_with(filter: &str) -> LogCapture {
        static CAPTURE: OnceLock<LogCapture> = OnceLock::new();
        CAPTURE
            .get_or_init(|| {
                let capture = LogCapture {
                    text: Arc::default(),
                    file: suite_log_file().map(|file| Arc::new(Mutex::new(file))),
                };
                let writer = capture.clone();
                tracing_subscriber::fmt()
                    .json()
                    .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                    .with_writer(move || writer.clone())
                    .init();
                capture
            })
            .clone()
    }

    /// Everything logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.text.lock().expect("log buffer")).into_owned()
    }
}

/// This process's file of the suite's logs: `$TANDEM_TEST_LOG_DIR/<test binary>-<pid>.jsonl`.
fn suite_log_file() -> Option<std::fs::File> {
    let dir = PathBuf::from(std::env::var_os("TANDEM_TEST_LOG_DIR")?);
    std::fs::create_dir_all(&dir).ok()?;
    let binary = std::env::current_exe()
        .ok()
        .and_then(|exe| {
            exe.file_stem()
                .map(|stem| stem.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "test".to_owned());
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{binary}-{}.jsonl", std::process::id())))
        .ok()
}

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.text.lock().expect("log buffer").write_all(buf)?;
        if let Some(file) = &self.file {
            file.lock().expect("log file").write_all(buf)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Writes `contents` to `path`, creating parent directories.
pub fn write_file(path: &Path, contents: &[u8]) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::File::create(path)
        .and_then(|mut f| f.write_all(contents))
        .expect("write file");
}

/// A loopback address with a port that was free a moment ago, for a server that must be
/// configured with a fixed address (the vault's metrics endpoint).
pub fn free_local_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
}

/// `GET /metrics` from a vault's metrics endpoint: the exposition text.
pub async fn scrape_metrics(addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the metrics endpoint");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .expect("send the scrape");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("read the scrape");
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    response
}

/// The `ErrorInfo` reason of a vault error (checking its domain), or empty.
pub fn vault_reason(status: &tonic::Status) -> String {
    use tonic_types::StatusExt as _;
    status
        .get_details_error_info()
        .map(|info| {
            assert_eq!(info.domain, "vault.tandem");
            info.reason
        })
        .unwrap_or_default()
}

/// The fields a `BadRequest` names, in order.
pub fn violated_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt as _;
    status
        .get_details_bad_request()
        .map(|bad| bad.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

/// Waits until the vault's health service reports `service` NOT_SERVING; fails after 3 s.
pub async fn wait_until_not_serving(vault: &RunningVault, service: &str, why: &str) {
    use tonic_health::pb::health_check_response::ServingStatus;
    let mut health =
        tonic_health::pb::health_client::HealthClient::new(vault.channel(Role::Tokenizer).await);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .expect("health check")
            .into_inner()
            .status;
        if status == ServingStatus::NotServing as i32 {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{why}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
