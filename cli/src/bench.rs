//! `tandemctl bench`: throughput and latency over real mutual TLS and Postgres, set beside
//! the machine's own baselines measured in the same invocation.
//!
//! Every benchmark runs the servers it needs as child processes (the `tandem-vault` and
//! `tandem-orchestrator` binaries beside `tandemctl`, on fresh `tandem_bench_*` databases), or
//! targets running ones with `--vault` / `--orchestrator`. It first measures the machine:
//! pgbench's single-row insert and TPC-B with as many clients, against the same Postgres
//! ([`postgres::Baseline`]); then loads the servers for a warm-up and a measured window, and
//! prints throughput, p50/p90/p99/max latency, errors, Postgres transactions and WAL flushes
//! per operation in the window, the servers' peak resident memory, and the ratios to the
//! baselines. Load is closed-loop (`--concurrency` clients back to back) or open-loop
//! (`--rate` operations per second, latency counted from each operation's scheduled time so
//! that a stalled server cannot hide its queue).
//!
//! - `tandemctl bench tokenize`: distinct PANs tokenized back to back.
//! - `tandemctl bench charge`: an authorization and its capture through the sandbox connector.
//! - `tandemctl bench pay --cards N`: `CreatePayment(wait)` from a card group of N sandbox
//!   cards without limits, split evenly (WEIGHTED, legs one after another, or PARALLEL with
//!   `--strategy parallel`): N authorizations, N captures, the ledger and the state.
//! - `tandemctl bench ledger`: single transfers between random accounts through the ledger's
//!   batching writer (in this process), then the ledger's invariant check.
//! - `tandemctl bench flood`: a steady payer's latency alone and beside another payer's flood,
//!   under the limits per caller ([`flood`]).
//! - `tandemctl bench watch`: a steady payer's latency, the database's load and the
//!   orchestrator's memory alone and beside many `WatchPayment` streams ([`watch`]).
//!
//! Apart from `flood`, the servers run without limits per caller: the benchmarks measure what
//! an instance sustains, which is what those limits are set against.
//!
//! `scripts/bench.sh` builds a release and runs them all; BENCHMARKS.md has the method and the
//! figures.

mod flood;
mod postgres;
mod watch;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tandem_proto::tandem::orchestrator::v1 as orchestrator_pb;
use tandem_proto::tandem::orchestrator::v1::card_group_service_client::CardGroupServiceClient;
use tandem_proto::tandem::orchestrator::v1::payment_service_client::PaymentServiceClient;
use tandem_proto::tandem::r#type::v1::Money;
use tandem_proto::tandem::vault::v1 as pb;
use tandem_tls::TlsFiles;
use tandem_tls::identity::Role;

use self::postgres::{Baseline, Counters};
use crate::dev;
use crate::process::{ORCHESTRATOR_UNLIMITED, Server, VAULT_UNLIMITED, free_address};

/// Connections the clients share; HTTP/2 multiplexes the rest.
const CONNECTIONS_MAX: usize = 8;
/// How long setting up one connection, TLS handshake included, may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one vault call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the orchestrator may wait for a payment to finish before answering.
const PAYMENT_WAIT_TIMEOUT_MS: i64 = 30_000;
/// How long one `CreatePayment` call may take: the wait plus time for the answer.
const PAYMENT_CALL_TIMEOUT: Duration = Duration::from_secs(40);
/// Most cards in a card group (the orchestrator's limit).
const GROUP_CARDS_MAX: usize = 32;
/// Most card groups `bench pay` makes.
const GROUPS_MAX: usize = 1024;
/// Most clients a run may start.
const CONCURRENCY_MAX: usize = 4096;
/// Highest open-loop rate, operations per second.
const RATE_MAX: u32 = 1_000_000;
/// Longest measured duration.
const DURATION_MAX: Duration = Duration::from_secs(3600);
/// The benchmarks' databases.
const VAULT_DATABASE: &str = "tandem_bench_vault";
const ORCHESTRATOR_DATABASE: &str = "tandem_bench_orchestrator";
const LEDGER_DATABASE: &str = "tandem_bench_ledger";

/// The benchmarks.
#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Tokenize distinct PANs as fast as the vault allows.
    Tokenize(LoadArgs),
    /// Authorize and capture charges through the sandbox connector.
    Charge(LoadArgs),
    /// Pay invoices from a card group through the orchestrator, waiting for each payment.
    Pay(PayArgs),
    /// Create ledger transfers through the batching writer.
    Ledger(LedgerArgs),
    /// One payer floods the orchestrator while another pays steadily: the steady payer's
    /// latency beside the flood against alone.
    Flood(flood::FloodArgs),
    /// Many WatchPayment streams beside a steady payer: its latency, the database's load and
    /// the orchestrator's memory, with the streams open and after.
    Watch(watch::WatchArgs),
}

/// Arguments of `tandemctl bench pay`.
#[derive(Debug, clap::Args)]
pub struct PayArgs {
    /// Cards in the group, 1-32: every payment has one leg per card.
    #[arg(long, default_value_t = 3)]
    cards: usize,
    /// How each payment is split over the cards.
    #[arg(long, value_enum, default_value = "weighted")]
    strategy: SplitStrategy,
    /// Card groups paid from, each with its own cards and billing account, as when many
    /// customers pay at once; client k pays from group k mod `groups`. One group puts every
    /// payment on the same few cards and ledger accounts (the hottest rows there are).
    #[arg(long, default_value_t = 1)]
    groups: usize,
    /// A running orchestrator to target (`https://host:port`); by default one is started as a
    /// child process on a fresh database. It must use the vault of `--vault`, where the cards
    /// are tokenized.
    #[arg(long, requires = "vault")]
    orchestrator: Option<String>,
    #[command(flatten)]
    load: LoadArgs,
}

/// How `bench pay` splits each payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum SplitStrategy {
    /// WEIGHTED with equal basis points, legs authorized in priority order.
    Weighted,
    /// PARALLEL without weights (evenly), legs authorized at the same time.
    Parallel,
}

impl SplitStrategy {
    fn name(self) -> &'static str {
        match self {
            SplitStrategy::Weighted => "weighted evenly",
            SplitStrategy::Parallel => "parallel",
        }
    }
}

/// Arguments of `tandemctl bench ledger`.
#[derive(Debug, clap::Args)]
pub struct LedgerArgs {
    /// Accounts the transfers move between (fewer means hotter rows).
    #[arg(long, default_value_t = 50)]
    accounts: u32,
    /// Writer tasks of the batching writer.
    #[arg(long, default_value_t = tandem_ledger::batch::WriterLimits::default().tasks)]
    writer_tasks: usize,
    /// Longest a ledger batch waits for more submissions, e.g. `1ms` or `0ms`.
    #[arg(long, default_value = "0ms", value_parser = parse_duration)]
    batch_wait: Duration,
    #[command(flatten)]
    shape: Shape,
}

/// How hard, how long, and beside which baseline a benchmark runs.
#[derive(Debug, Clone, clap::Args)]
pub struct Shape {
    /// Requests in flight at once: closed-loop clients, or the most in flight at `--rate`.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Open loop: start this many operations per second, whatever the answers' pace
    /// (0: closed loop, each client sends its next request when the last is answered).
    #[arg(long, default_value_t = 0)]
    rate: u32,
    /// Measured time, e.g. `30s`, `500ms`, `2m`.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// Unmeasured time before the measurement.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
    /// How long each pgbench baseline runs.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    baseline_duration: Duration,
    /// Skip the pgbench baselines.
    #[arg(long)]
    no_baseline: bool,
    /// Postgres server: the benchmark's databases and the baselines' are made beside it.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    database_url: String,
}

/// Load shape and target of a benchmark over gRPC.
#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// A running vault to target (`https://host:port`); by default one is started as a child
    /// process on a fresh database.
    #[arg(long)]
    vault: Option<String>,
    /// Directory of the certificates (`ca.pem`, `tokenizer.pem`, `tokenizer.key`, ...), made
    /// if missing.
    #[arg(long, default_value = dev::DEV_DIR)]
    certs: PathBuf,
    #[command(flatten)]
    shape: Shape,
}

/// Parses `30s`, `500ms`, `2m`.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or("a duration needs a unit: ms, s or m")?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| "a duration starts with a number")?;
    match unit {
        "ms" => Ok(Duration::from_millis(number)),
        "s" => Ok(Duration::from_secs(number)),
        "m" => Ok(Duration::from_secs(number * 60)),
        _ => Err(format!("unknown unit {unit:?}: use ms, s or m")),
    }
}

/// Runs a benchmark.
pub async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Tokenize(args) => tokenize(args).await,
        BenchCommand::Charge(args) => charge(args).await,
        BenchCommand::Pay(args) => pay(args).await,
        BenchCommand::Ledger(args) => ledger(args).await,
        BenchCommand::Flood(args) => flood::run(args).await,
        BenchCommand::Watch(args) => watch::run(args).await,
    }
}

/// The servers a benchmark started and where they keep their logs.
struct Stack {
    dir: PathBuf,
    vault: Option<Server>,
    orchestrator: Option<Server>,
}

impl Stack {
    fn new() -> anyhow::Result<Stack> {
        let dir = std::env::temp_dir().join(format!("tandem-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        Ok(Stack {
            dir,
            vault: None,
            orchestrator: None,
        })
    }

    /// The vault to load: `--vault`, or one started as a child process on a fresh database.
    async fn vault(&mut self, args: &LoadArgs) -> anyhow::Result<String> {
        self.vault_with(args, &[]).await
    }

    /// As [`Stack::vault`], with the overrides of `env` on a vault it starts.
    async fn vault_with(
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

    /// The orchestrator to load: `--orchestrator`, or one started as a child process on a
    /// fresh database, paying through the vault this stack started, without limits per caller.
    async fn orchestrator(&mut self, args: &PayArgs) -> anyhow::Result<String> {
        if let Some(uri) = &args.orchestrator {
            return Ok(uri.clone());
        }
        self.start_orchestrator(
            &args.load.certs,
            &args.load.shape.database_url,
            &ORCHESTRATOR_UNLIMITED,
        )
        .await
    }

    /// Starts an orchestrator as a child process on a fresh database with the overrides of
    /// `env`, paying through the vault this stack started.
    async fn start_orchestrator(
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
    fn databases(&self) -> Vec<(&'static str, &'static str)> {
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
    fn peak_rss(&self) -> Vec<(&'static str, Option<u64>)> {
        [&self.vault, &self.orchestrator]
            .into_iter()
            .flatten()
            .map(|server| (server.name, server.peak_rss_bytes()))
            .collect()
    }

    /// Stops the servers; their logs go with the directory.
    fn stop(mut self) {
        // Killed on drop: the orchestrator first, so that it never sees its vault go away.
        drop(self.orchestrator.take());
        drop(self.vault.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The baselines of `shape`, measured now (before any server of the benchmark loads the
/// machine), or `None` with `--no-baseline`.
async fn baseline(shape: &Shape) -> anyhow::Result<Option<Baseline>> {
    if shape.no_baseline {
        return Ok(None);
    }
    Baseline::measure(
        &shape.database_url,
        shape.concurrency,
        shape.baseline_duration,
    )
    .await
    .map(Some)
}

async fn tokenize(args: LoadArgs) -> anyhow::Result<()> {
    check_shape(&args.shape)?;
    dev::ensure_certificates(&args.certs)?;
    let baseline = baseline(&args.shape).await?;
    let mut stack = Stack::new()?;
    let uri = stack.vault(&args).await?;
    let clients: Vec<_> = channels(
        &uri,
        &args.certs,
        Role::Tokenizer,
        args.shape.concurrency,
        CALL_TIMEOUT,
    )
    .await?
    .into_iter()
    .map(pb::token_service_client::TokenServiceClient::new)
    .collect();
    // Distinct PANs per request, and distinct across runs against the same vault.
    let sequence = Arc::new(AtomicU64::new(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64 % 10_000_000_000),
    ));
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let clients = Arc::new(clients);
    let measured = measure(&args.shape, &stack, "tokenizations", move |worker, n| {
        let mut client = clients[worker % clients.len()].clone();
        let request = tokenize_request(
            format!("bench-{run_id}-{worker}-{n}"),
            sequence.fetch_add(1, Ordering::Relaxed),
        );
        async move { client.tokenize(request).await.is_ok() }
    })
    .await?;
    stack.stop();
    println!("tokenize: {}", args.shape);
    measured.print(baseline.as_ref());
    Ok(())
}

/// Up to [`CONNECTIONS_MAX`] connections to the server at `uri` as `role`, on which each call
/// may take up to `call_timeout`; HTTP/2 multiplexes the `concurrency` clients over them.
async fn channels(
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
async fn channels_as(
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

async fn charge(args: LoadArgs) -> anyhow::Result<()> {
    check_shape(&args.shape)?;
    dev::ensure_certificates(&args.certs)?;
    let baseline = baseline(&args.shape).await?;
    let mut stack = Stack::new()?;
    let uri = stack.vault(&args).await?;
    // Cards to charge: four per client, so that the sandbox's per-card lock is not the
    // bottleneck being measured.
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let tokens = tokenize_cards(&uri, &args.certs, &run_id, args.shape.concurrency * 4).await?;
    let clients: Vec<_> = channels(
        &uri,
        &args.certs,
        Role::Orchestrator,
        args.shape.concurrency,
        CALL_TIMEOUT,
    )
    .await?
    .into_iter()
    .map(pb::charge_service_client::ChargeServiceClient::new)
    .collect();
    let clients = Arc::new(clients);
    let tokens = Arc::new(tokens);
    let measured = measure(&args.shape, &stack, "pairs", move |worker, n| {
        let mut client = clients[worker % clients.len()].clone();
        let token = tokens[(worker + n as usize * 7) % tokens.len()].clone();
        let id = format!("bench-{run_id}-{worker}-{n}");
        async move {
            let authorize = pb::AuthorizeRequest {
                request_id: format!("{id}/authorize"),
                token,
                amount: Some(usd(1000 + (n % 100) as i64)),
                ..Default::default()
            };
            let Ok(response) = client.authorize(authorize).await else {
                return false;
            };
            let Some(charge) = response.into_inner().charge else {
                return false;
            };
            let capture = pb::CaptureRequest {
                request_id: format!("{id}/capture"),
                charge_id: charge.id,
                amount: None,
            };
            client.capture(capture).await.is_ok_and(|r| {
                r.get_ref()
                    .charge
                    .as_ref()
                    .is_some_and(|c| c.state == pb::ChargeState::Captured as i32)
            })
        }
    })
    .await?;
    stack.stop();
    println!("charge (authorize + capture pairs): {}", args.shape);
    measured.print(baseline.as_ref());
    Ok(())
}

/// Tokenizes `count` distinct sandbox cards without limits (Visa numbers no test card uses)
/// and returns their tokens.
async fn tokenize_cards(
    vault_uri: &str,
    certs: &std::path::Path,
    run_id: &str,
    count: usize,
) -> anyhow::Result<Vec<String>> {
    let mut tokenizer = pb::token_service_client::TokenServiceClient::new(
        channels(vault_uri, certs, Role::Tokenizer, 1, CALL_TIMEOUT)
            .await?
            .remove(0),
    );
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64 % 10_000_000_000);
    let mut tokens = Vec::with_capacity(count);
    for i in 0..count {
        let card = tokenizer
            .tokenize(tokenize_request(
                format!("bench-{run_id}-card-{i}"),
                seed + i as u64,
            ))
            .await
            .map_err(crate::charge::failure)
            .context("tokenizing the bench cards")?
            .into_inner()
            .card
            .context("tokenize returned no card")?;
        tokens.push(card.token);
    }
    Ok(tokens)
}

async fn pay(args: PayArgs) -> anyhow::Result<()> {
    let load = &args.load;
    check_shape(&load.shape)?;
    anyhow::ensure!(
        (1..=GROUP_CARDS_MAX).contains(&args.cards),
        "--cards must be 1 to {GROUP_CARDS_MAX}"
    );
    anyhow::ensure!(
        (1..=GROUPS_MAX).contains(&args.groups),
        "--groups must be 1 to {GROUPS_MAX}"
    );
    dev::ensure_certificates(&load.certs)?;
    let baseline = baseline(&load.shape).await?;
    let mut stack = Stack::new()?;
    let vault_uri = stack.vault(load).await?;
    let orchestrator_uri = stack.orchestrator(&args).await?;
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let tokens = tokenize_cards(&vault_uri, &load.certs, &run_id, args.cards * args.groups).await?;

    let group_ids = create_groups(
        &orchestrator_uri,
        &load.certs,
        &run_id,
        tokens.chunks(args.cards),
        args.strategy,
    )
    .await?;

    let clients: Vec<_> = channels(
        &orchestrator_uri,
        &load.certs,
        Role::Payer,
        load.shape.concurrency,
        PAYMENT_CALL_TIMEOUT,
    )
    .await?
    .into_iter()
    .map(PaymentServiceClient::new)
    .collect();
    let clients = Arc::new(clients);
    let group_ids = Arc::new(group_ids);
    // The first failure, to say why payments failed.
    let first_error = Arc::new(OnceLock::<String>::new());
    let failed = first_error.clone();
    let measured = measure(&load.shape, &stack, "payments", move |worker, n| {
        let mut client = clients[worker % clients.len()].clone();
        let request = orchestrator_pb::CreatePaymentRequest {
            request_id: format!("bench-{run_id}-{worker}-{n}"),
            invoice: Some(orchestrator_pb::Invoice {
                id: format!("BENCH-{worker}-{n}"),
                // 10.00 to 10.99 USD: at least a cent per card.
                amount: Some(usd(1000 + (n % 100) as i64)),
                ..Default::default()
            }),
            card_group_id: group_ids[worker % group_ids.len()].clone(),
            policy_override: None,
            wait: true,
            wait_timeout_ms: PAYMENT_WAIT_TIMEOUT_MS,
        };
        let failed = failed.clone();
        async move {
            let error = match client.create_payment(request).await {
                Ok(response) => match response.into_inner().payment {
                    Some(p) if p.state == i32::from(orchestrator_pb::PaymentState::Succeeded) => {
                        return true;
                    }
                    Some(p) => format!(
                        "payment {} ended {}: {}",
                        p.id,
                        crate::groups::value_name(
                            p.state,
                            "PAYMENT_STATE_",
                            orchestrator_pb::PaymentState::as_str_name
                        ),
                        p.summary
                    ),
                    None => "no payment in the response".to_owned(),
                },
                Err(status) => format!("{:#}", crate::charge::failure(status)),
            };
            let _ = failed.set(error);
            false
        }
    })
    .await?;
    stack.stop();
    println!(
        "pay ({} cards, {}; one authorize + capture per card; {} card groups): {}",
        args.cards,
        args.strategy.name(),
        args.groups,
        load.shape
    );
    measured.print(baseline.as_ref());
    if let Some(error) = first_error.get() {
        println!("  first error: {error}");
    }
    Ok(())
}

/// One card group per chunk of `cards` (each [`bench_group`] of its tokens), made as
/// `treasury`; their ids, in order.
async fn create_groups<'a>(
    orchestrator_uri: &str,
    certs: &Path,
    run_id: &str,
    cards: impl IntoIterator<Item = &'a [String]>,
    strategy: SplitStrategy,
) -> anyhow::Result<Vec<String>> {
    let mut treasury = CardGroupServiceClient::new(
        channels(orchestrator_uri, certs, Role::Treasury, 1, CALL_TIMEOUT)
            .await?
            .remove(0),
    );
    let mut group_ids = Vec::new();
    for (index, tokens) in cards.into_iter().enumerate() {
        let group = treasury
            .create_card_group(orchestrator_pb::CreateCardGroupRequest {
                request_id: format!("bench-{run_id}-group-{index}"),
                card_group: Some(bench_group(run_id, index, tokens, strategy)),
            })
            .await
            .map_err(crate::charge::failure)
            .context("creating the bench card groups")?
            .into_inner()
            .card_group
            .context("no card group in the response")?;
        group_ids.push(group.id);
    }
    Ok(group_ids)
}

/// Card group `index` of `bench pay`: the cards of `tokens`, without limits, split evenly by
/// `strategy`, all or nothing, on a billing account of its own.
fn bench_group(
    run_id: &str,
    index: usize,
    tokens: &[String],
    strategy: SplitStrategy,
) -> orchestrator_pb::CardGroup {
    let members = tokens
        .iter()
        .zip(1..)
        .map(|(token, priority)| orchestrator_pb::CardGroupMember {
            token: token.clone(),
            label: format!("bench card {priority}"),
            currency_code: "USD".to_owned(),
            priority,
            state: orchestrator_pb::CardGroupMemberState::Active.into(),
            ..Default::default()
        })
        .collect();
    let (strategy, weights) = match strategy {
        SplitStrategy::Weighted => (
            orchestrator_pb::AllocationStrategy::Weighted,
            tokens
                .iter()
                .zip(even_basis_points(tokens.len()))
                .map(|(token, basis_points)| orchestrator_pb::MemberWeight {
                    token: token.clone(),
                    basis_points,
                })
                .collect(),
        ),
        // PARALLEL without weights splits evenly.
        SplitStrategy::Parallel => (orchestrator_pb::AllocationStrategy::Parallel, Vec::new()),
    };
    orchestrator_pb::CardGroup {
        billing_account_id: format!("bench-{index}"),
        display_name: format!("bench {run_id} {index}"),
        default_currency_code: "USD".to_owned(),
        members,
        default_policy: Some(orchestrator_pb::AllocationPolicy {
            strategy: strategy.into(),
            weights,
            completion: orchestrator_pb::Completion::AllOrNothing.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn usd(minor_units: i64) -> Money {
    Money {
        currency_code: "USD".to_owned(),
        minor_units,
    }
}

/// `cards` shares of 10000 basis points that differ by at most one, the larger ones first.
fn even_basis_points(cards: usize) -> Vec<i32> {
    assert!((1..=GROUP_CARDS_MAX).contains(&cards));
    let cards_i32 = cards as i32;
    let (share, rest) = (10_000 / cards_i32, 10_000 % cards_i32);
    let shares: Vec<i32> = (0..cards_i32)
        .map(|i| share + i32::from(i < rest))
        .collect();
    assert_eq!(shares.iter().sum::<i32>(), 10_000);
    shares
}

fn check_shape(shape: &Shape) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=CONCURRENCY_MAX).contains(&shape.concurrency),
        "--concurrency must be 1 to {CONCURRENCY_MAX}"
    );
    anyhow::ensure!(
        shape.rate <= RATE_MAX,
        "--rate must be at most {RATE_MAX} per second"
    );
    anyhow::ensure!(
        !shape.duration.is_zero() && shape.duration <= DURATION_MAX,
        "--duration must be positive and at most 1h"
    );
    anyhow::ensure!(shape.warmup <= DURATION_MAX, "--warmup must be at most 1h");
    anyhow::ensure!(
        shape.no_baseline
            || (shape.baseline_duration >= Duration::from_secs(1)
                && shape.baseline_duration <= DURATION_MAX),
        "--baseline-duration must be 1s to 1h"
    );
    Ok(())
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.rate > 0 {
            write!(
                f,
                "open loop at {} per second, at most {} in flight",
                self.rate, self.concurrency
            )?;
        } else {
            write!(f, "concurrency {}", self.concurrency)?;
        }
        write!(
            f,
            ", duration {:?} (warm-up {:?})",
            self.duration, self.warmup
        )
    }
}

/// The measured window of a run: after the warm-up, for the duration.
#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    end: Instant,
}

impl Window {
    fn after(warmup: Duration, duration: Duration) -> Window {
        let start = Instant::now() + warmup;
        Window {
            start,
            end: start + duration,
        }
    }

    /// Whether an operation sent (or due) at `sent` and answered at `done` counts.
    fn holds(&self, sent: Instant, done: Instant) -> bool {
        sent >= self.start && done <= self.end
    }
}

/// What one run measured, beside what the machine can do.
struct Measured {
    report: Report,
    /// Per server: its name and the Postgres transactions it committed in the window.
    commits: Vec<(&'static str, i64)>,
    /// WAL flushes of the whole Postgres server in the window.
    wal_syncs: i64,
    /// Per server: its name and peak resident memory, in bytes, if known.
    peak_rss: Vec<(&'static str, Option<u64>)>,
}

impl Measured {
    fn print(&self, baseline: Option<&Baseline>) {
        let report = &self.report;
        println!("{report}");
        let ops = report.ok as f64 + report.errors as f64;
        if ops > 0.0 {
            let total: i64 = self.commits.iter().map(|(_, n)| n).sum();
            let each: Vec<String> = self
                .commits
                .iter()
                .map(|(name, n)| format!("{name} {:.1}", *n as f64 / ops))
                .collect();
            println!(
                "  postgres per operation: {:.1} transactions ({}), {:.2} WAL flushes",
                total as f64 / ops,
                each.join(", "),
                self.wal_syncs as f64 / ops
            );
        }
        if !self.peak_rss.is_empty() {
            let each: Vec<String> = self
                .peak_rss
                .iter()
                .map(|(name, bytes)| match bytes {
                    Some(bytes) => format!("{name} {:.1} MiB", *bytes as f64 / 1048576.0),
                    None => format!("{name} unknown"),
                })
                .collect();
            println!("  peak RSS: {}", each.join(", "));
        }
        if let Some(baseline) = baseline {
            println!("  {baseline}");
            println!(
                "  ratio: {:.2}x single-row insert, {:.2}x TPC-B",
                report.per_second / baseline.insert_tps,
                report.per_second / baseline.tpcb_tps
            );
        }
    }
}

/// Loads the servers of `stack` with `operation` in the shape of `shape` and measures the
/// window: the report (`unit` per second), Postgres's counts for the stack's databases, and
/// the servers' peak memory.
async fn measure<F, Fut>(
    shape: &Shape,
    stack: &Stack,
    unit: &'static str,
    operation: F,
) -> anyhow::Result<Measured>
where
    F: Fn(usize, u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let databases = stack.databases();
    let window = Window::after(shape.warmup, shape.duration);
    let names: Vec<&str> = databases.iter().map(|(_, db)| *db).collect();
    let (report, counted) = tokio::join!(
        run_load(shape, window, operation),
        count_in(&shape.database_url, &names, window),
    );
    let report = {
        let mut report = report?;
        report.unit = unit;
        report
    };
    let counted = counted?;
    Ok(Measured {
        report,
        commits: databases
            .iter()
            .map(|(server, _)| *server)
            .zip(counted.commits)
            .collect(),
        wal_syncs: counted.wal_syncs,
        peak_rss: stack.peak_rss(),
    })
}

/// Postgres's counts for `databases` over `window`.
async fn count_in(
    server_url: &str,
    databases: &[&str],
    window: Window,
) -> anyhow::Result<Counters> {
    tokio::time::sleep_until(window.start.into()).await;
    let before = Counters::read(server_url, databases).await?;
    tokio::time::sleep_until(window.end.into()).await;
    let after = Counters::read(server_url, databases).await?;
    Ok(before.until(&after))
}

/// Runs `operation(worker, n)` in the shape of `shape` until the end of `window` and reports
/// the operations inside it (`true`: succeeded). Closed loop: `concurrency` workers call back
/// to back. Open loop (`rate`): operation k is due at k / rate seconds from the start, the
/// next free worker sends it then, and its latency counts from when it was due.
async fn run_load<F, Fut>(shape: &Shape, window: Window, operation: F) -> anyhow::Result<Report>
where
    F: Fn(usize, u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let began = Instant::now();
    // Seconds between two due times.
    let interval = (shape.rate > 0).then(|| 1.0 / f64::from(shape.rate));
    let due = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::with_capacity(shape.concurrency);
    for worker in 0..shape.concurrency {
        let operation = operation.clone();
        let due = due.clone();
        workers.push(tokio::spawn(async move {
            let mut latencies_us = Vec::new();
            let mut errors = 0u64;
            let mut n = 0u64;
            loop {
                let sent = match interval {
                    None => Instant::now(),
                    Some(interval) => {
                        let k = due.fetch_add(1, Ordering::Relaxed);
                        let at = began + Duration::from_secs_f64(k as f64 * interval);
                        tokio::time::sleep_until(at.into()).await;
                        at
                    }
                };
                if sent >= window.end {
                    break;
                }
                n += 1;
                let ok = operation(worker, n).await;
                let done = Instant::now();
                if window.holds(sent, done) {
                    if ok {
                        latencies_us.push((done - sent).as_micros() as u64);
                    } else {
                        errors += 1;
                    }
                }
            }
            (latencies_us, errors)
        }));
    }
    let mut latencies_us = Vec::new();
    let mut errors = 0;
    for worker in workers {
        let (mut lat, err) = worker.await.context("bench worker")?;
        latencies_us.append(&mut lat);
        errors += err;
    }
    latencies_us.sort_unstable();
    Ok(Report::new(
        &latencies_us,
        errors,
        window.end - window.start,
    ))
}

async fn ledger(args: LedgerArgs) -> anyhow::Result<()> {
    use tandem_ledger::types::{
        AccountCode, AccountId, AccountRefs, BalanceLimit, Currency, NewAccount, Transfer,
        TransferId, TransferKind, TransferRefs, TransferResult,
    };
    let shape = &args.shape;
    anyhow::ensure!(
        (2..=100_000).contains(&args.accounts),
        "--accounts must be 2 to 100000"
    );
    anyhow::ensure!(
        (1..=7).contains(&args.writer_tasks),
        "--writer-tasks must be 1 to 7"
    );
    check_shape(shape)?;
    let baseline = baseline(shape).await?;
    let url = dev::ensure_fresh_database(&shape.database_url, LEDGER_DATABASE).await?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(args.writer_tasks as u32 + 1)
        .connect(&url)
        .await?;
    tandem_ledger::MIGRATOR.run(&pool).await?;
    let usd = Currency::new("USD").expect("USD is a currency code");
    let accounts: Vec<NewAccount> = (0..args.accounts)
        .map(|i| NewAccount {
            id: AccountId::new(format!("bench:{i}")).expect("valid id"),
            currency: usd,
            code: AccountCode::FundingSource,
            limit: BalanceLimit::None,
            refs: AccountRefs::default(),
        })
        .collect();
    let mut conn = pool.acquire().await?;
    tandem_ledger::ledger::create_accounts(&mut conn, &accounts).await?;
    drop(conn);

    let limits = tandem_ledger::batch::WriterLimits {
        tasks: args.writer_tasks,
        batch_wait: args.batch_wait,
        ..Default::default()
    };
    let writer = tandem_ledger::batch::LedgerWriter::spawn(pool.clone(), limits);
    let accounts = u64::from(args.accounts);
    let window = Window::after(shape.warmup, shape.duration);
    let (report, counted) = tokio::join!(
        run_load(shape, window, move |worker, n| {
            let writer = writer.clone();
            // A cheap deterministic spread over the accounts.
            let debit = (worker as u64 * 7919 + n * 104_729) % accounts;
            let credit = (debit + 1 + (n % (accounts - 1))) % accounts;
            let transfer = Transfer {
                id: TransferId::new(format!("w{worker}/{n}")).expect("valid id"),
                kind: TransferKind::Single {
                    debit: AccountId::new(format!("bench:{debit}")).expect("valid id"),
                    credit: AccountId::new(format!("bench:{credit}")).expect("valid id"),
                    amount: 1 + (n % 1000) as i64,
                },
                linked: false,
                refs: TransferRefs::default(),
            };
            async move {
                matches!(
                    writer.create_transfers(vec![transfer]).await.as_deref(),
                    Ok([TransferResult::Ok])
                )
            }
        }),
        count_in(&shape.database_url, &[LEDGER_DATABASE], window),
    );
    let mut report = report?;
    report.unit = "transfers";
    let counted = counted?;
    let check = tandem_ledger::invariants::check(&pool, time::OffsetDateTime::now_utc()).await?;
    pool.close().await;
    let measured = Measured {
        report,
        commits: vec![("ledger", counted.commits.first().copied().unwrap_or(0))],
        wal_syncs: counted.wal_syncs,
        // The writer runs in this process: its memory is tandemctl's.
        peak_rss: vec![(
            "tandemctl (the writer)",
            std::fs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|status| crate::process::peak_rss_from_status(&status)),
        )],
    };
    println!(
        "ledger ({} accounts, {} writer tasks): {shape}",
        args.accounts, args.writer_tasks
    );
    measured.print(baseline.as_ref());
    println!(
        "  invariants: {} ({} transfers, {} accounts)",
        if check.holds() { "hold" } else { "VIOLATED" },
        check.transfers,
        check.accounts
    );
    anyhow::ensure!(
        check.holds(),
        "ledger invariants violated: {:?}",
        check.violations
    );
    Ok(())
}

/// A tokenization of the generated card `sequence` (see [`visa_pan`]), without dedupe or TTL.
fn tokenize_request(request_id: String, sequence: u64) -> pb::TokenizeRequest {
    pb::TokenizeRequest {
        request_id,
        pan: visa_pan(sequence),
        expiry_month: 12,
        expiry_year: 2030,
        holder_name: String::new(),
        reuse_existing: false,
        ttl_seconds: 0,
    }
}

/// A Luhn-valid 16-digit Visa number from a sequence number.
fn visa_pan(sequence: u64) -> String {
    let body = format!("4{:014}", sequence % 100_000_000_000_000);
    (0..=9)
        .map(|check| format!("{body}{check}"))
        .find(|pan| tandem_vault::domain::pan::luhn_valid(pan.as_bytes()))
        .expect("exactly one check digit makes a number Luhn-valid")
}

/// Throughput and latency of one run.
#[derive(Debug)]
struct Report {
    /// What one operation is, for the rate: `ops`, `payments`.
    unit: &'static str,
    ok: usize,
    errors: u64,
    per_second: f64,
    p50_us: u64,
    p90_us: u64,
    p99_us: u64,
    max_us: u64,
}

impl Report {
    fn new(sorted_us: &[u64], errors: u64, duration: Duration) -> Report {
        let at = |q: f64| -> u64 {
            if sorted_us.is_empty() {
                return 0;
            }
            let index = ((sorted_us.len() as f64 * q).ceil() as usize).clamp(1, sorted_us.len());
            sorted_us[index - 1]
        };
        Report {
            unit: "ops",
            ok: sorted_us.len(),
            errors,
            per_second: sorted_us.len() as f64 / duration.as_secs_f64(),
            p50_us: at(0.50),
            p90_us: at(0.90),
            p99_us: at(0.99),
            max_us: sorted_us.last().copied().unwrap_or(0),
        }
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |us: u64| us as f64 / 1000.0;
        write!(
            f,
            "  {:.0} {}/s  ok {}  errors {}  latency ms p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
            self.per_second,
            self.unit,
            self.ok,
            self.errors,
            ms(self.p50_us),
            ms(self.p90_us),
            ms(self.p99_us),
            ms(self.max_us)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Generated PANs are distinct Luhn-valid Visa numbers.
    #[test]
    fn generated_pans_are_valid() {
        let mut seen = std::collections::HashSet::new();
        for n in [0, 1, 42, 99_999_999_999_999, 123_456_789] {
            let pan = visa_pan(n);
            assert_eq!(pan.len(), 16);
            assert!(
                tandem_vault::domain::pan::luhn_valid(pan.as_bytes()),
                "{pan}"
            );
            assert!(tandem_vault::domain::Pan::parse(&pan).is_ok(), "{pan}");
            assert!(seen.insert(pan));
        }
    }

    /// Durations parse with their unit and refuse anything else.
    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        for bad in ["30", "s", "1h", "-1s", ""] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    /// Even shares of 10000 basis points sum to 10000 and differ by at most one, larger first.
    #[test]
    fn even_shares() {
        assert_eq!(even_basis_points(1), [10_000]);
        assert_eq!(even_basis_points(3), [3334, 3333, 3333]);
        for cards in 1..=GROUP_CARDS_MAX {
            let shares = even_basis_points(cards);
            assert_eq!(shares.len(), cards);
            assert_eq!(shares.iter().sum::<i32>(), 10_000);
            assert!(shares.windows(2).all(|w| w[0] - w[1] <= 1 && w[0] >= w[1]));
        }
    }

    /// The bench group has one member per card in priority order and, when weighted, one
    /// weight per member summing to 10000; parallel leaves the split to the orchestrator.
    #[test]
    fn bench_groups() {
        let tokens: Vec<String> = (1..=3).map(|i| format!("tok_{i}")).collect();
        let group = bench_group("run", 0, &tokens, SplitStrategy::Weighted);
        let members: Vec<(&str, i32)> = group
            .members
            .iter()
            .map(|m| (m.token.as_str(), m.priority))
            .collect();
        assert_eq!(members, [("tok_1", 1), ("tok_2", 2), ("tok_3", 3)]);
        let policy = group.default_policy.unwrap();
        let weights: Vec<(&str, i32)> = policy
            .weights
            .iter()
            .map(|w| (w.token.as_str(), w.basis_points))
            .collect();
        assert_eq!(weights, [("tok_1", 3334), ("tok_2", 3333), ("tok_3", 3333)]);

        let policy = bench_group("run", 0, &tokens, SplitStrategy::Parallel)
            .default_policy
            .unwrap();
        assert_eq!(
            policy.strategy,
            i32::from(orchestrator_pb::AllocationStrategy::Parallel)
        );
        assert!(policy.weights.is_empty());
    }

    /// Percentiles pick the nearest rank.
    #[test]
    fn percentiles() {
        let sorted: Vec<u64> = (1..=100).collect();
        let report = Report::new(&sorted, 0, Duration::from_secs(2));
        assert_eq!(
            (report.p50_us, report.p90_us, report.p99_us, report.max_us),
            (50, 90, 99, 100)
        );
        assert_eq!(report.per_second, 50.0);
    }
}
