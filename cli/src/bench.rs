//! `tandemctl bench`: throughput and latency over real mutual TLS and Postgres.
//!
//! `tandemctl bench tokenize --concurrency 64 --duration 30s` starts a vault in this process on
//! a fresh `tandem_bench_vault` database (or targets `--vault https://host:port`), runs
//! `concurrency` clients that tokenize distinct PANs back to back over a few HTTP/2
//! connections, discards a warm-up, and prints throughput and latency percentiles.
//!
//! `tandemctl bench charge --concurrency 64 --duration 30s` tokenizes a pool of cards, then
//! runs `concurrency` clients that each authorize and capture a charge through the sandbox
//! connector, back to back, and reports authorize+capture pairs per second and their latency.
//!
//! `tandemctl bench pay --cards 3 --concurrency 16 --duration 30s` starts a vault and an
//! orchestrator in this process on fresh `tandem_bench_vault` and `tandem_bench_orchestrator`
//! databases (or targets `--vault` and `--orchestrator`), makes a card group of `cards` sandbox
//! cards without limits split evenly (WEIGHTED, or PARALLEL with `--strategy parallel`), then
//! runs `concurrency` clients that each pay an invoice from it with `CreatePayment` (waiting
//! until the payment is terminal), back to back, and reports payments per second and their
//! latency. Every payment authorizes and captures one charge per card.
//!
//! `tandemctl bench ledger --accounts 50 --concurrency 20 --duration 30s` creates single
//! transfers between random accounts of a fresh `tandem_bench_ledger` database through the
//! batching writer, checks the ledger invariants, then runs `pgbench -b tpcb-like` with as many
//! clients against the same server and prints the ratio.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sqlx::{Connection as _, Executor as _, PgConnection};
use tandem_proto::tandem::orchestrator::v1 as orchestrator_pb;
use tandem_proto::tandem::orchestrator::v1::card_group_service_client::CardGroupServiceClient;
use tandem_proto::tandem::orchestrator::v1::payment_service_client::PaymentServiceClient;
use tandem_proto::tandem::r#type::v1::Money;
use tandem_proto::tandem::vault::v1 as pb;
use tandem_tls::TlsFiles;
use tandem_tls::identity::Role;

use crate::dev;

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
/// Most clients a run may start.
const CONCURRENCY_MAX: usize = 4096;
/// Longest measured duration.
const DURATION_MAX: Duration = Duration::from_secs(3600);

/// The benchmarks.
#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Tokenize distinct PANs as fast as the vault allows.
    Tokenize(LoadArgs),
    /// Authorize and capture charges through the sandbox connector.
    Charge(LoadArgs),
    /// Pay invoices from a card group through the orchestrator, waiting for each payment.
    Pay(PayArgs),
    /// Create ledger transfers through the batching writer, beside pgbench TPC-B.
    Ledger(LedgerArgs),
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
    /// A running orchestrator to target (`https://host:port`); by default one is started in
    /// this process on a fresh database. It must use the vault of `--vault`, where the cards
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
    /// Callers submitting at once.
    #[arg(long, default_value_t = 20)]
    concurrency: usize,
    /// Measured time, e.g. `30s`.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// Unmeasured time before the measurement.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
    /// Writer tasks of the batching writer.
    #[arg(long, default_value_t = tandem_ledger::batch::WriterLimits::default().tasks)]
    writer_tasks: usize,
    /// Longest a ledger batch waits for more submissions, e.g. `1ms` or `0ms`.
    #[arg(long, default_value = "0ms", value_parser = parse_duration)]
    batch_wait: Duration,
    /// Skip the pgbench TPC-B baseline.
    #[arg(long)]
    no_baseline: bool,
    /// Postgres server.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    database_url: String,
}

/// Load shape and target of a benchmark.
#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Measured time, e.g. `30s`, `500ms`, `2m`.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// Unmeasured time before the measurement.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
    /// A running vault to target (`https://host:port`); by default one is started in this
    /// process on a fresh database.
    #[arg(long)]
    vault: Option<String>,
    /// Directory of the certificates (`ca.pem`, `tokenizer.pem`, `tokenizer.key`).
    #[arg(long, default_value = dev::DEV_DIR)]
    certs: PathBuf,
    /// Postgres server for the in-process vault.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    database_url: String,
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
    }
}

async fn tokenize(args: LoadArgs) -> anyhow::Result<()> {
    check_load(args.concurrency, args.duration)?;
    dev::ensure_certificates(&args.certs)?;
    let (uri, server) = target(&args).await?;
    let clients: Vec<_> = channels(
        &uri,
        &args.certs,
        Role::Tokenizer,
        args.concurrency,
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
    let report = run_load(
        args.concurrency,
        args.warmup,
        args.duration,
        move |worker, n| {
            let mut client = clients[worker % clients.len()].clone();
            let request = pb::TokenizeRequest {
                request_id: format!("bench-{run_id}-{worker}-{n}"),
                pan: visa_pan(sequence.fetch_add(1, Ordering::Relaxed)),
                expiry_month: 12,
                expiry_year: 2030,
                holder_name: String::new(),
                reuse_existing: false,
                ttl_seconds: 0,
            };
            async move { client.tokenize(request).await.is_ok() }
        },
    )
    .await?;
    println!(
        "tokenize: concurrency {} duration {:?} (warm-up {:?})",
        args.concurrency, args.duration, args.warmup
    );
    println!("{report}");

    stop(server).await
}

/// Up to [`CONNECTIONS_MAX`] connections to the server at `uri` as `role`, on which each call
/// may take up to `call_timeout`; HTTP/2 multiplexes the `concurrency` clients over them.
async fn channels(
    uri: &str,
    certs: &std::path::Path,
    role: Role,
    concurrency: usize,
    call_timeout: Duration,
) -> anyhow::Result<Vec<tonic::transport::Channel>> {
    let files = TlsFiles::in_dir(certs, role.as_str());
    let mut channels = Vec::new();
    for _ in 0..concurrency.min(CONNECTIONS_MAX) {
        // `endpoint` bounds calls by the connect timeout; payments that wait need longer.
        let endpoint = tandem_tls::client::endpoint(uri, &files, "localhost", CONNECT_TIMEOUT)?
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
    check_load(args.concurrency, args.duration)?;
    dev::ensure_certificates(&args.certs)?;
    let (uri, server) = target(&args).await?;
    // Cards to charge: four per client, so that the sandbox's per-card lock is not the
    // bottleneck being measured.
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let tokens = tokenize_cards(&uri, &args.certs, &run_id, args.concurrency * 4).await?;
    let clients: Vec<_> = channels(
        &uri,
        &args.certs,
        Role::Orchestrator,
        args.concurrency,
        CALL_TIMEOUT,
    )
    .await?
    .into_iter()
    .map(pb::charge_service_client::ChargeServiceClient::new)
    .collect();
    let clients = Arc::new(clients);
    let tokens = Arc::new(tokens);
    let report = run_load(
        args.concurrency,
        args.warmup,
        args.duration,
        move |worker, n| {
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
        },
    )
    .await?;
    println!(
        "charge (authorize + capture pairs): concurrency {} duration {:?} (warm-up {:?})",
        args.concurrency, args.duration, args.warmup
    );
    println!("{report}");
    stop(server).await
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
            .tokenize(pb::TokenizeRequest {
                request_id: format!("bench-{run_id}-card-{i}"),
                pan: visa_pan(seed + i as u64),
                expiry_month: 12,
                expiry_year: 2030,
                holder_name: String::new(),
                reuse_existing: false,
                ttl_seconds: 0,
            })
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
    check_load(load.concurrency, load.duration)?;
    anyhow::ensure!(
        (1..=GROUP_CARDS_MAX).contains(&args.cards),
        "--cards must be 1 to {GROUP_CARDS_MAX}"
    );
    dev::ensure_certificates(&load.certs)?;
    let (vault_uri, vault) = target(load).await?;
    let (orchestrator_uri, orchestrator) = match &args.orchestrator {
        Some(uri) => (uri.clone(), None),
        None => {
            let server = start_orchestrator(load, &vault_uri).await?;
            (server.uri(), Some(server))
        }
    };
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let tokens = tokenize_cards(&vault_uri, &load.certs, &run_id, args.cards).await?;

    let mut treasury = CardGroupServiceClient::new(
        channels(
            &orchestrator_uri,
            &load.certs,
            Role::Treasury,
            1,
            CALL_TIMEOUT,
        )
        .await?
        .remove(0),
    );
    let group = treasury
        .create_card_group(orchestrator_pb::CreateCardGroupRequest {
            request_id: format!("bench-{run_id}-group"),
            card_group: Some(bench_group(&run_id, &tokens, args.strategy)),
        })
        .await
        .map_err(crate::charge::failure)
        .context("creating the bench card group")?
        .into_inner()
        .card_group
        .context("no card group in the response")?;

    let clients: Vec<_> = channels(
        &orchestrator_uri,
        &load.certs,
        Role::Payer,
        load.concurrency,
        PAYMENT_CALL_TIMEOUT,
    )
    .await?
    .into_iter()
    .map(PaymentServiceClient::new)
    .collect();
    let clients = Arc::new(clients);
    let group_id = group.id;
    // The first failure, to say why payments failed.
    let first_error = Arc::new(OnceLock::<String>::new());
    let failed = first_error.clone();
    let mut report = run_load(
        load.concurrency,
        load.warmup,
        load.duration,
        move |worker, n| {
            let mut client = clients[worker % clients.len()].clone();
            let request = orchestrator_pb::CreatePaymentRequest {
                request_id: format!("bench-{run_id}-{worker}-{n}"),
                invoice: Some(orchestrator_pb::Invoice {
                    id: format!("BENCH-{worker}-{n}"),
                    // 10.00 to 10.99 USD: at least a cent per card.
                    amount: Some(usd(1000 + (n % 100) as i64)),
                    ..Default::default()
                }),
                card_group_id: group_id.clone(),
                policy_override: None,
                wait: true,
                wait_timeout_ms: PAYMENT_WAIT_TIMEOUT_MS,
            };
            let failed = failed.clone();
            async move {
                let error = match client.create_payment(request).await {
                    Ok(response) => match response.into_inner().payment {
                        Some(p)
                            if p.state == i32::from(orchestrator_pb::PaymentState::Succeeded) =>
                        {
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
        },
    )
    .await?;
    report.unit = "payments";
    println!(
        "pay ({} cards, {}; one authorize + capture per card): concurrency {} duration {:?} \
         (warm-up {:?})",
        args.cards,
        args.strategy.name(),
        load.concurrency,
        load.duration,
        load.warmup
    );
    println!("{report}");
    if let Some(error) = first_error.get() {
        println!("  first error: {error}");
    }
    stop(orchestrator).await?;
    stop(vault).await
}

/// The card group of `bench pay`: the cards of `tokens`, without limits, split evenly by
/// `strategy`, all or nothing.
fn bench_group(
    run_id: &str,
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
        billing_account_id: "bench".to_owned(),
        display_name: format!("bench {run_id}"),
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

/// Starts an orchestrator in this process on a fresh database, paying through the vault at
/// `vault_uri`, and waits until it serves.
async fn start_orchestrator(
    args: &LoadArgs,
    vault_uri: &str,
) -> anyhow::Result<dev::Server<tandem_orchestrator::server::RunError>> {
    let url = fresh_database(&args.database_url, "tandem_bench_orchestrator").await?;
    let settings = dev::orchestrator_settings(&args.certs, &url, vault_uri)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let mut server = dev::Server::spawn("orchestrator", listener, move |listener, shutdown| {
        tandem_orchestrator::run(listener, settings, shutdown)
    })?;
    server
        .connect(&args.certs, Role::Payer, CALL_TIMEOUT)
        .await?;
    Ok(server)
}

fn check_load(concurrency: usize, duration: Duration) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=CONCURRENCY_MAX).contains(&concurrency),
        "--concurrency must be 1 to {CONCURRENCY_MAX}"
    );
    anyhow::ensure!(
        !duration.is_zero() && duration <= DURATION_MAX,
        "--duration must be positive and at most 1h"
    );
    Ok(())
}

/// Runs `concurrency` workers that call `operation(worker, n)` back to back for `warmup` and
/// then `duration`, and reports the operations that started and finished inside the measured
/// window (`true`: succeeded).
async fn run_load<F, Fut>(
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
    operation: F,
) -> anyhow::Result<Report>
where
    F: Fn(usize, u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let measure_from = Instant::now() + warmup;
    let stop_at = measure_from + duration;
    let mut workers = Vec::with_capacity(concurrency);
    for worker in 0..concurrency {
        let operation = operation.clone();
        workers.push(tokio::spawn(async move {
            let mut latencies_us = Vec::new();
            let mut errors = 0u64;
            let mut n = 0u64;
            while Instant::now() < stop_at {
                n += 1;
                let sent = Instant::now();
                let ok = operation(worker, n).await;
                let done = Instant::now();
                if sent >= measure_from && done <= stop_at {
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
    Ok(Report::new(&latencies_us, errors, duration))
}

async fn ledger(args: LedgerArgs) -> anyhow::Result<()> {
    use tandem_ledger::types::{
        AccountCode, AccountId, AccountRefs, BalanceLimit, Currency, NewAccount, Transfer,
        TransferId, TransferKind, TransferRefs, TransferResult,
    };
    anyhow::ensure!(
        (2..=100_000).contains(&args.accounts),
        "--accounts must be 2 to 100000"
    );
    check_load(args.concurrency, args.duration)?;
    let url = fresh_database(&args.database_url, "tandem_bench_ledger").await?;
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

    anyhow::ensure!(
        (1..=7).contains(&args.writer_tasks),
        "--writer-tasks must be 1 to 7"
    );
    let limits = tandem_ledger::batch::WriterLimits {
        tasks: args.writer_tasks,
        batch_wait: args.batch_wait,
        ..Default::default()
    };
    let writer = tandem_ledger::batch::LedgerWriter::spawn(pool.clone(), limits);
    let accounts = u64::from(args.accounts);
    let report = run_load(
        args.concurrency,
        args.warmup,
        args.duration,
        move |worker, n| {
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
        },
    )
    .await?;
    let check = tandem_ledger::invariants::check(&pool, time::OffsetDateTime::now_utc()).await?;
    pool.close().await;
    println!(
        "ledger: {} accounts, concurrency {}, duration {:?} (warm-up {:?})",
        args.accounts, args.concurrency, args.duration, args.warmup
    );
    println!("{report}");
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
    if !args.no_baseline {
        let tps = pgbench_tpcb(&args.database_url, args.concurrency, args.duration).await?;
        println!(
            "  baseline: pgbench TPC-B (scale 10, -c {} -j 2) {tps:.0} tps; ratio {:.2}x",
            args.concurrency,
            report.per_second / tps
        );
    }
    Ok(())
}

/// Drops and recreates `database` on the server of `server_url`; returns its URL.
async fn fresh_database(server_url: &str, database: &str) -> anyhow::Result<String> {
    let mut admin = PgConnection::connect(server_url)
        .await
        .context("cannot connect to Postgres")?;
    admin
        .execute(format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)").as_str())
        .await?;
    admin.close().await.ok();
    dev::ensure_database(server_url, database).await
}

/// Runs `pgbench -b tpcb-like` against the same server and returns its tps.
async fn pgbench_tpcb(server_url: &str, clients: usize, duration: Duration) -> anyhow::Result<f64> {
    let url = fresh_database(server_url, "tandem_bench_pgbench").await?;
    let init = tokio::process::Command::new("pgbench")
        .args(["-i", "-q", "-s", "10", &url])
        .output()
        .await
        .context("running pgbench -i (is pgbench installed?)")?;
    anyhow::ensure!(
        init.status.success(),
        "pgbench -i failed: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    let run = tokio::process::Command::new("pgbench")
        .args([
            "-n",
            "-b",
            "tpcb-like",
            "-c",
            &clients.to_string(),
            "-j",
            "2",
            "-T",
            &duration.as_secs().max(1).to_string(),
            &url,
        ])
        .output()
        .await
        .context("running pgbench")?;
    anyhow::ensure!(
        run.status.success(),
        "pgbench failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let stdout = String::from_utf8_lossy(&run.stdout);
    stdout
        .lines()
        .find_map(|line| line.strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|tps| tps.parse().ok())
        .context("pgbench printed no tps")
}

type VaultServer = dev::Server<tandem_vault::server::RunError>;

/// The vault to load: `--vault`, or one started in this process (with its handle).
async fn target(args: &LoadArgs) -> anyhow::Result<(String, Option<VaultServer>)> {
    match &args.vault {
        Some(uri) => Ok((uri.clone(), None)),
        None => {
            let server = start_vault(args).await?;
            Ok((server.uri(), Some(server)))
        }
    }
}

/// Stops a server started by this process, if any.
async fn stop<E>(server: Option<dev::Server<E>>) -> anyhow::Result<()>
where
    E: std::error::Error + Send + Sync + 'static,
{
    match server {
        Some(server) => server.stop().await,
        None => Ok(()),
    }
}

async fn start_vault(args: &LoadArgs) -> anyhow::Result<VaultServer> {
    let url = fresh_database(&args.database_url, "tandem_bench_vault").await?;
    let mut settings = dev::vault_settings(&args.certs, &url)?;
    settings.keys.dev_root_key_path = std::env::temp_dir()
        .join(format!("tandem-bench-{}", std::process::id()))
        .join("root.key");
    // Beside a running `tandemctl dev`, the bench vault takes any free metrics port.
    settings.metrics.listen_addr = "127.0.0.1:0".parse()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let mut server = dev::Server::spawn("vault", listener, move |listener, shutdown| {
        tandem_vault::run(listener, settings, shutdown)
    })?;
    // Wait until it accepts connections.
    server
        .connect(&args.certs, Role::Tokenizer, CALL_TIMEOUT)
        .await?;
    Ok(server)
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
        let group = bench_group("run", &tokens, SplitStrategy::Weighted);
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

        let policy = bench_group("run", &tokens, SplitStrategy::Parallel)
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
