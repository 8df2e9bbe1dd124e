//! `tandemctl bench flood`: one payer's flood must not starve another (DESIGN section 12).
//!
//! A steady payer sends `CreatePayment(wait)` at `--rate` per second (open loop) from its own
//! card group, first alone and then while a second payer identity floods the orchestrator from
//! `--concurrency` clients back to back (`CreatePayment` without waiting, as a batch job gone
//! wrong would, ignoring every `RetryInfo`). The orchestrator runs with the limits per payer
//! of `--payer-rate` and `--payer-in-flight`. The figure to watch is the steady payer's p99
//! beside the flood over its p99 alone: admission keeps it within 2x.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context as _;
use tandem_proto::tandem::orchestrator::v1 as orchestrator_pb;
use tandem_proto::tandem::orchestrator::v1::payment_service_client::PaymentServiceClient;
use tandem_tls::TlsFiles;
use tandem_tls::identity::Role;
use tonic_types::StatusExt as _;

use super::measure::{Report, Window, run_load};
use super::pay::{
    PAYMENT_CALL_TIMEOUT, PAYMENT_WAIT_TIMEOUT_MS, SplitStrategy, create_groups, usd,
};
use super::stack::{Stack, channels, channels_as};
use super::tokenize::tokenize_cards;
use super::{Shape, check_shape};

/// Where the flooding payer's identity is written beside the bench's own certificates.
const FLOOD_IDENTITY: &str = "payer-flood";
/// Clients that send the steady payer's payments when they fall due.
const STEADY_CLIENTS: usize = 32;

/// Arguments of `tandemctl bench flood`.
#[derive(Debug, clap::Args)]
pub struct FloodArgs {
    /// Each payer's write rate (`limits.write.requests_per_s`, with a burst of as many).
    #[arg(long, default_value_t = 20)]
    payer_rate: u32,
    /// Each payer's writes in flight, payments still being driven included
    /// (`limits.write.in_flight_max`).
    #[arg(long, default_value_t = 16)]
    payer_in_flight: u32,
    /// `--rate`: the steady payer's payments per second; `--concurrency`: the flood's clients;
    /// `--duration` and `--warmup`: of each of the two phases.
    #[command(flatten)]
    shape: Shape,
}

/// Checks the shape of a benchmark beside a steady payer: `--rate`, its payments per second,
/// must be 1 to 1000.
pub(super) fn check_steady_shape(shape: &Shape) -> anyhow::Result<()> {
    check_shape(shape)?;
    anyhow::ensure!(
        (1..=1_000).contains(&shape.rate),
        "--rate (the steady payer's payments per second) must be 1 to 1000"
    );
    Ok(())
}

/// Runs the benchmark.
pub async fn run(args: FloodArgs) -> anyhow::Result<()> {
    let shape = &args.shape;
    check_steady_shape(shape)?;
    anyhow::ensure!(
        (1..=1_000_000).contains(&args.payer_rate)
            && (1..=1_000_000).contains(&args.payer_in_flight),
        "--payer-rate and --payer-in-flight must be 1 to 1000000"
    );
    let rate = args.payer_rate.to_string();
    let in_flight = args.payer_in_flight.to_string();
    let (stack, certs, vault_uri, orchestrator_uri) = own_stack(
        shape,
        &[
            ("TANDEM_ORCHESTRATOR__LIMITS__WRITE__REQUESTS_PER_S", &rate),
            ("TANDEM_ORCHESTRATOR__LIMITS__WRITE__BURST", &rate),
            (
                "TANDEM_ORCHESTRATOR__LIMITS__WRITE__IN_FLIGHT_MAX",
                &in_flight,
            ),
        ],
    )
    .await?;

    let run_id = super::run_id();
    let tokens = tokenize_cards(&vault_uri, &certs, &run_id, 2).await?;
    let group_ids = create_groups(
        &orchestrator_uri,
        &certs,
        &run_id,
        tokens.chunks(1),
        SplitStrategy::Weighted,
        0,
    )
    .await?;
    let [steady_group, flood_group] = <[String; 2]>::try_from(group_ids)
        .map_err(|_| anyhow::anyhow!("two card groups expected"))?;

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
    let flood_clients: Vec<_> = channels_as(
        &orchestrator_uri,
        &TlsFiles::in_dir(&certs, FLOOD_IDENTITY),
        shape.concurrency,
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

    let alone = steady(
        &steady_shape,
        &steady_clients,
        &steady_group,
        &run_id,
        "alone",
    )
    .await?;
    let window = Window::after(shape.warmup, shape.duration);
    let flood = Flood::default();
    let stop = Instant::now() + shape.warmup + shape.duration;
    let flooders: Vec<_> = (0..shape.concurrency)
        .map(|worker| {
            let client = flood_clients[worker % flood_clients.len()].clone();
            tokio::spawn(flood_worker(
                client,
                flood_group.clone(),
                format!("{run_id}-{worker}"),
                stop,
                window,
                flood.clone(),
            ))
        })
        .collect();
    let beside = steady(
        &steady_shape,
        &steady_clients,
        &steady_group,
        &run_id,
        "flood",
    )
    .await?;
    for flooder in flooders {
        flooder.await.context("flood worker")?;
    }
    let peak_rss = stack.peak_rss();
    stack.stop();

    println!(
        "flood (steady payer at {}/s, flooding payer with {} clients; per payer: {} writes/s, {} \
         in flight; {:?} each phase, warm-up {:?})",
        shape.rate,
        shape.concurrency,
        args.payer_rate,
        args.payer_in_flight,
        shape.duration,
        shape.warmup
    );
    println!("  steady payer alone:");
    println!("{alone}");
    println!("  steady payer beside the flood:");
    println!("{beside}");
    if beside.errors > alone.errors || beside.ok == 0 {
        println!(
            "  p99 beside the flood / alone: the steady payer failed {} of its payments beside \
             the flood (beyond 2x)",
            beside.errors
        );
    } else {
        let ratio = beside.p99_us as f64 / alone.p99_us.max(1) as f64;
        println!(
            "  p99 beside the flood / alone: {ratio:.2}x ({} 2x)",
            if ratio <= 2.0 { "within" } else { "beyond" }
        );
    }
    let counts = flood.counts();
    let seconds = shape.duration.as_secs_f64();
    let refused: Vec<String> = counts
        .refused
        .iter()
        .map(|(reason, n)| format!("{reason} {n}"))
        .collect();
    println!(
        "  flooding payer: {} admitted ({:.0}/s), {} refused ({:.0}/s: {}), {} other errors",
        counts.admitted,
        counts.admitted as f64 / seconds,
        counts.refused.values().sum::<u64>(),
        counts.refused.values().sum::<u64>() as f64 / seconds,
        if refused.is_empty() {
            "none".to_owned()
        } else {
            refused.join(", ")
        },
        counts.other
    );
    for (name, bytes) in peak_rss {
        if let Some(bytes) = bytes {
            println!("  peak RSS {name}: {:.1} MiB", bytes as f64 / 1048576.0);
        }
    }
    Ok(())
}

/// A vault and an orchestrator (with the overrides of `orchestrator_env`) as child processes,
/// on the bench's own PKI: the stack, the certificates' directory, and the two URIs.
pub(super) async fn own_stack(
    shape: &Shape,
    orchestrator_env: &[(&str, &str)],
) -> anyhow::Result<(Stack, PathBuf, String, String)> {
    let mut stack = Stack::new()?;
    let certs = stack.dir.join("certs");
    write_certificates(&certs)?;
    let vault_uri = stack
        .vault(&super::LoadArgs {
            vault: None,
            certs: certs.clone(),
            shape: shape.clone(),
        })
        .await?;
    let orchestrator_uri = stack
        .start_orchestrator(&certs, &shape.database_url, orchestrator_env)
        .await?;
    Ok((stack, certs, vault_uri, orchestrator_uri))
}

/// The bench's own PKI: every role's identity, the servers', and the flooding payer's.
fn write_certificates(dir: &Path) -> anyhow::Result<()> {
    let authority = tandem_tls::issue::Authority::new(
        "Tandem bench CA",
        tandem_tls::identity::DEFAULT_URI_PREFIX,
        1,
    )?;
    authority.write_set(dir, &["localhost", "127.0.0.1"], "bench")?;
    authority.write_identity(dir, FLOOD_IDENTITY, Role::Payer.as_str(), "flood")?;
    Ok(())
}

/// One phase of the steady payer: `shape.rate` payments per second, each waited for.
pub(super) async fn steady(
    shape: &Shape,
    clients: &[PaymentServiceClient<tonic::transport::Channel>],
    group: &str,
    run_id: &str,
    phase: &'static str,
) -> anyhow::Result<Report> {
    let clients = Arc::new(clients.to_vec());
    let group = group.to_owned();
    let run_id = run_id.to_owned();
    let window = Window::after(shape.warmup, shape.duration);
    run_load(shape, window, move |worker, n| {
        let mut client = clients[worker % clients.len()].clone();
        let request = payment(
            &group,
            format!("bench-{run_id}-steady-{phase}-{worker}-{n}"),
            true,
        );
        async move {
            matches!(
                client.create_payment(request).await,
                Ok(response) if response.get_ref().payment.as_ref().is_some_and(|p| {
                    p.state == i32::from(orchestrator_pb::PaymentState::Succeeded)
                })
            )
        }
    })
    .await
}

/// A payment of 10.00 USD from `group`.
pub(super) fn payment(
    group: &str,
    request_id: String,
    wait: bool,
) -> orchestrator_pb::CreatePaymentRequest {
    orchestrator_pb::CreatePaymentRequest {
        invoice: Some(orchestrator_pb::Invoice {
            id: format!("INV-{request_id}"),
            amount: Some(usd(1_000)),
            ..Default::default()
        }),
        request_id,
        card_group_id: group.to_owned(),
        policy_override: None,
        wait,
        wait_timeout_ms: if wait { PAYMENT_WAIT_TIMEOUT_MS } else { 0 },
        note: String::new(),
    }
}

/// What the flooding payer got in the measured window.
#[derive(Debug, Default, Clone)]
struct Flood(Arc<Mutex<FloodCounts>>);

#[derive(Debug, Default, Clone)]
struct FloodCounts {
    admitted: u64,
    refused: BTreeMap<String, u64>,
    other: u64,
}

impl Flood {
    fn count(&self, outcome: Result<(), String>) {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match outcome {
            Ok(()) => counts.admitted += 1,
            Err(reason) if reason.is_empty() => counts.other += 1,
            Err(reason) => *counts.refused.entry(reason).or_default() += 1,
        }
    }

    fn counts(&self) -> FloodCounts {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// One flooding client: payments without waiting, back to back until `stop`, refusals
/// ignored; what falls in `window` is counted.
async fn flood_worker(
    mut client: PaymentServiceClient<tonic::transport::Channel>,
    group: String,
    prefix: String,
    stop: Instant,
    window: Window,
    flood: Flood,
) {
    let mut n = 0u64;
    while Instant::now() < stop {
        n += 1;
        let sent = Instant::now();
        let request = payment(&group, format!("bench-flood-{prefix}-{n}"), false);
        let outcome = match client.create_payment(request).await {
            Ok(_) => Ok(()),
            Err(status) if status.code() == tonic::Code::ResourceExhausted => Err(status
                .get_details_error_info()
                .map(|info| info.reason)
                .unwrap_or_else(|| "RESOURCE_EXHAUSTED".to_owned())),
            Err(_) => Err(String::new()),
        };
        if window.holds(sent, Instant::now()) {
            flood.count(outcome);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Outcomes land in their counters, refusals by reason.
    #[test]
    fn flood_counts() {
        let flood = Flood::default();
        flood.count(Ok(()));
        flood.count(Err("RATE_LIMITED".to_owned()));
        flood.count(Err("RATE_LIMITED".to_owned()));
        flood.count(Err("TOO_MANY_IN_FLIGHT".to_owned()));
        flood.count(Err(String::new()));
        let counts = flood.counts();
        assert_eq!(counts.admitted, 1);
        assert_eq!(counts.refused["RATE_LIMITED"], 2);
        assert_eq!(counts.refused["TOO_MANY_IN_FLIGHT"], 1);
        assert_eq!(counts.other, 1);
    }
}
