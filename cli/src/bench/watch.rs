//! `tandemctl bench watch`: what many `WatchPayment` streams cost the others.
//!
//! A steady payer sends `CreatePayment(wait)` at `--rate` per second, first alone, then while
//! `--streams` streams (a reader identity, over `--connections` connections) watch payments in
//! progress. Printed: the steady payer's latency in both phases, the orchestrator's database
//! transactions per second in both, the streams admitted and refused (the reader's stream cap
//! is `--stream-limit`), and the orchestrator's resident memory with the streams open and
//! after they closed.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt as _;
use tandem_proto::tandem::orchestrator::v1 as orchestrator_pb;
use tandem_proto::tandem::orchestrator::v1::payment_service_client::PaymentServiceClient;
use tandem_proto::tandem::vault::v1 as pb;
use tandem_tls::identity::Role;

use super::Shape;
use super::flood::{check_steady_shape, own_stack, payment, steady};
use super::measure::{Window, count_in};
use super::pay::{PAYMENT_CALL_TIMEOUT, SplitStrategy, create_groups};
use super::stack::{CALL_TIMEOUT, ORCHESTRATOR_DATABASE, channels};
use super::tokenize::tokenize_cards;

/// Clients of the steady payer.
const STEADY_CLIENTS: usize = 32;
/// Payments the streams watch, each kept in progress by a slow processor.
const WATCHED_PAYMENTS: usize = 8;
/// Cards of each watched payment, authorized and captured one after another.
const WATCHED_CARDS: usize = 6;
/// How long the processor takes over each operation of a watched card: below the connector's
/// timeout (a timeout would open the processor's circuit breaker for every payer).
const WATCHED_LATENCY_MS: i64 = 4_000;
/// Streams opened at once while setting up.
const OPENING_AT_ONCE: usize = 512;

/// Arguments of `tandemctl bench watch`.
#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    /// Streams to open.
    #[arg(long, default_value_t = 2_000)]
    streams: usize,
    /// Connections the streams share.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Each caller's open streams (`limits.stream.in_flight_max`).
    #[arg(long, default_value_t = 1_000_000)]
    stream_limit: u32,
    /// `--rate`: the steady payer's payments per second; `--duration` and `--warmup`: of each
    /// of the two phases.
    #[command(flatten)]
    shape: Shape,
}

/// Runs the benchmark.
pub async fn run(args: WatchArgs) -> anyhow::Result<()> {
    let shape = &args.shape;
    check_steady_shape(shape)?;
    anyhow::ensure!(
        (1..=1_000_000).contains(&args.streams) && (1..=1_024).contains(&args.connections),
        "--streams must be 1 to 1000000 and --connections 1 to 1024"
    );
    anyhow::ensure!(
        (1..=1_000_000).contains(&args.stream_limit),
        "--stream-limit must be 1 to 1000000"
    );
    let stream_limit = args.stream_limit.to_string();
    let (stack, certs, vault_uri, orchestrator_uri) = own_stack(
        shape,
        &[
            (
                "TANDEM_ORCHESTRATOR__LIMITS__STREAM__REQUESTS_PER_S",
                "1000000",
            ),
            ("TANDEM_ORCHESTRATOR__LIMITS__STREAM__BURST", "1000000"),
            (
                "TANDEM_ORCHESTRATOR__LIMITS__STREAM__IN_FLIGHT_MAX",
                &stream_limit,
            ),
        ],
    )
    .await?;
    let run_id = super::run_id();
    let (steady_group, watched) = setup(&vault_uri, &orchestrator_uri, &certs, &run_id).await?;
    let steady_clients: Vec<_> = channels(
        &orchestrator_uri,
        &certs,
        Role::Payer,
        STEADY_CLIENTS,
        PAYMENT_CALL_TIMEOUT,
    )
    .await?
    .into_iter()
    .map(PaymentServiceClient::new)
    .collect();
    let steady_shape = Shape {
        concurrency: STEADY_CLIENTS,
        ..shape.clone()
    };
    let databases = [ORCHESTRATOR_DATABASE];

    let window = Window::after(shape.warmup, shape.duration);
    let (alone, alone_counts) = tokio::join!(
        steady(
            &steady_shape,
            &steady_clients,
            &steady_group,
            &run_id,
            "alone"
        ),
        count_in(&shape.database_url, &databases, window),
    );
    let (alone, alone_counts) = (alone?, alone_counts?);

    let readers: Vec<_> = channels(
        &orchestrator_uri,
        &certs,
        Role::Reader,
        args.connections,
        Duration::from_secs(3_600),
    )
    .await?;
    let opened: Vec<_> = futures::stream::iter(0..args.streams)
        .map(|n| {
            let mut client = PaymentServiceClient::new(readers[n % readers.len()].clone());
            let payment_id = watched[n % watched.len()].clone();
            async move {
                client
                    .watch_payment(orchestrator_pb::WatchPaymentRequest {
                        payment_id,
                        after_sequence: 0,
                    })
                    .await
            }
        })
        .buffer_unordered(OPENING_AT_ONCE)
        .collect()
        .await;
    let mut streams = Vec::new();
    let mut refused = 0usize;
    let mut failed = 0usize;
    for result in opened {
        match result {
            Ok(response) => streams.push(response.into_inner()),
            Err(status) if status.code() == tonic::Code::ResourceExhausted => refused += 1,
            Err(_) => failed += 1,
        }
    }
    let open_rss = stack.orchestrator.as_ref().and_then(|o| o.rss_bytes());

    let window = Window::after(shape.warmup, shape.duration);
    let (beside, beside_counts) = tokio::join!(
        steady(
            &steady_shape,
            &steady_clients,
            &steady_group,
            &run_id,
            "watched"
        ),
        count_in(&shape.database_url, &databases, window),
    );
    let (beside, beside_counts) = (beside?, beside_counts?);
    let still_open_rss = stack.orchestrator.as_ref().and_then(|o| o.rss_bytes());
    drop(streams);
    drop(readers);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let closed_rss = stack.orchestrator.as_ref().and_then(|o| o.rss_bytes());
    let peak = stack.peak_rss();
    stack.stop();

    let per_second = |commits: i64| commits as f64 / shape.duration.as_secs_f64();
    println!(
        "watch ({} streams on {} payments in progress over {} connections, stream cap {}; \
         steady payer at {}/s; {:?} each phase, warm-up {:?})",
        args.streams,
        WATCHED_PAYMENTS,
        args.connections,
        args.stream_limit,
        shape.rate,
        shape.duration,
        shape.warmup
    );
    println!(
        "  streams: {} open, {refused} refused (RESOURCE_EXHAUSTED), {failed} failed otherwise",
        args.streams - refused - failed
    );
    println!("  steady payer alone:");
    println!("{alone}");
    println!(
        "    orchestrator database: {:.0} transactions/s",
        per_second(alone_counts.commits[0])
    );
    println!("  steady payer beside the streams:");
    println!("{beside}");
    println!(
        "    orchestrator database: {:.0} transactions/s",
        per_second(beside_counts.commits[0])
    );
    println!(
        "  p99 beside the streams / alone: {:.2}x",
        beside.p99_us as f64 / alone.p99_us.max(1) as f64
    );
    let mib = |bytes: Option<u64>| {
        bytes.map_or("unknown".to_owned(), |b| {
            format!("{:.1} MiB", b as f64 / 1048576.0)
        })
    };
    let orchestrator_peak = peak
        .iter()
        .find(|(name, _)| *name == "orchestrator")
        .and_then(|(_, bytes)| *bytes);
    println!(
        "  orchestrator RSS: {} with the streams open, {} at the end of the phase, {} 3 s \
         after they closed (peak {})",
        mib(open_rss),
        mib(still_open_rss),
        mib(closed_rss),
        mib(orchestrator_peak)
    );
    Ok(())
}

/// The steady payer's card group, and the payments in progress the streams watch: each from
/// [`WATCHED_CARDS`] slow cards one after another, so that it stays in progress for about
/// `2 * WATCHED_CARDS * WATCHED_LATENCY_MS`.
async fn setup(
    vault_uri: &str,
    orchestrator_uri: &str,
    certs: &Path,
    run_id: &str,
) -> anyhow::Result<(String, Vec<String>)> {
    let tokens = tokenize_cards(
        vault_uri,
        certs,
        run_id,
        1 + WATCHED_PAYMENTS * WATCHED_CARDS,
    )
    .await?;
    let mut sandbox = pb::sandbox_service_client::SandboxServiceClient::new(
        channels(vault_uri, certs, Role::Admin, 1, CALL_TIMEOUT)
            .await?
            .remove(0),
    );
    for token in &tokens[1..] {
        sandbox
            .configure_sandbox_card(pb::ConfigureSandboxCardRequest {
                request_id: uuid::Uuid::new_v4().to_string(),
                token: token.clone(),
                config: Some(pb::SandboxCardConfig {
                    latency_ms: WATCHED_LATENCY_MS,
                    ..Default::default()
                }),
            })
            .await
            .map_err(crate::connect::failure)
            .context("slowing the watched cards")?;
    }
    let cards = std::iter::once(&tokens[..1]).chain(tokens[1..].chunks(WATCHED_CARDS));
    let mut groups = create_groups(
        orchestrator_uri,
        certs,
        run_id,
        cards,
        SplitStrategy::Weighted,
        0,
    )
    .await?;
    let mut payer = PaymentServiceClient::new(
        channels(orchestrator_uri, certs, Role::Payer, 1, CALL_TIMEOUT)
            .await?
            .remove(0),
    );
    let mut watched = Vec::new();
    for (n, group) in groups[1..].iter().enumerate() {
        let created = payer
            .create_payment(payment(group, format!("bench-{run_id}-watched-{n}"), false))
            .await
            .map_err(crate::connect::failure)
            .context("creating the watched payments")?
            .into_inner()
            .payment
            .context("no payment in the response")?;
        watched.push(created.id);
    }
    Ok((groups.swap_remove(0), watched))
}
