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
//! - `tandemctl bench treasury`: `GetSpendReport`'s latency and `ExportLedger`'s entries per
//!   second over a billing account with many payments booked ([`treasury`]).
//! - `tandemctl bench recon`: `RunReconciliation` of a day whose settlement file holds many
//!   records, each matching a capture in the ledger ([`recon`]).
//! - `tandemctl bench webhooks`: webhooks delivered per second to a receiver that answers at
//!   once, and their lag behind the commit under steady payments ([`webhooks`]).
//! - `tandemctl bench risk`: what a payment's risk assessment adds to its latency at half load
//!   ([`risk`]).
//! - `tandemctl bench dashboard`: the dashboard's first page of payments over many payments,
//!   timed at the server ([`dashboard`]).
//!
//! Apart from `flood`, the servers run without limits per caller: the benchmarks measure what
//! an instance sustains, which is what those limits are set against.
//!
//! `scripts/bench.sh` builds a release and runs them all; BENCHMARKS.md has the method and the
//! figures.

mod charge;
mod dashboard;
mod flood;
mod ledger;
mod measure;
mod pay;
mod postgres;
mod recon;
mod risk;
mod stack;
mod tokenize;
mod treasury;
mod watch;
mod webhooks;

use std::path::PathBuf;
use std::time::Duration;

use self::postgres::Baseline;

/// Most clients a run may start.
const CONCURRENCY_MAX: usize = 4096;
/// Highest open-loop rate, operations per second.
const RATE_MAX: u32 = 1_000_000;
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
    Pay(pay::PayArgs),
    /// Create ledger transfers through the batching writer.
    Ledger(ledger::LedgerArgs),
    /// One payer floods the orchestrator while another pays steadily: the steady payer's
    /// latency beside the flood against alone.
    Flood(flood::FloodArgs),
    /// Many WatchPayment streams beside a steady payer: its latency, the database's load and
    /// the orchestrator's memory, with the streams open and after.
    Watch(watch::WatchArgs),
    /// The treasury's reads over a large ledger: GetSpendReport's latency and ExportLedger's
    /// entries per second.
    Treasury(treasury::TreasuryArgs),
    /// Reconciliation of a day of many settlement records: RunReconciliation's time and
    /// records per second.
    Recon(recon::ReconArgs),
    /// Webhooks: a backlog's events delivered per second to a receiver that answers at once,
    /// and the delivery lag (arrival minus commit) under steady payments.
    Webhooks(webhooks::WebhooksArgs),
    /// Risk: what a payment's assessment under every rule kind adds to its latency at half
    /// load, beside payments assessed under no rule.
    Risk(risk::RiskArgs),
    /// The dashboard's payments page over many payments: its first page's time at the server.
    Dashboard(dashboard::DashboardArgs),
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
    #[arg(long, default_value = crate::connect::DEV_DIR)]
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
        BenchCommand::Tokenize(args) => tokenize::run(args).await,
        BenchCommand::Charge(args) => charge::run(args).await,
        BenchCommand::Pay(args) => pay::run(args).await,
        BenchCommand::Ledger(args) => ledger::run(args).await,
        BenchCommand::Flood(args) => flood::run(args).await,
        BenchCommand::Watch(args) => watch::run(args).await,
        BenchCommand::Treasury(args) => treasury::run(args).await,
        BenchCommand::Recon(args) => recon::run(args).await,
        BenchCommand::Webhooks(args) => webhooks::run(args).await,
        BenchCommand::Risk(args) => risk::run(args).await,
        BenchCommand::Dashboard(args) => dashboard::run(args).await,
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

/// A new run's id, which the run's request ids begin with: a random UUID's 32 hex digits
/// spelled with the letters `a` to `p`. The vault refuses ids that contain a card number, and
/// a UUID's hex run without its dashes can hold one (13 or more digits in a row, one in a few
/// hundred UUIDs); these ids hold no digit at all.
pub(crate) fn run_id() -> String {
    run_id_of(uuid::Uuid::new_v4())
}

fn run_id_of(uuid: uuid::Uuid) -> String {
    uuid.as_bytes()
        .iter()
        .flat_map(|byte| [byte >> 4, byte & 0x0f])
        .map(|nibble| char::from(b'a' + nibble))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A UUID whose hex holds a card number gives a run id that holds none, and no digit.
    #[test]
    fn run_ids_never_contain_a_card_number() {
        use tandem_vault::domain::pan::contains_card_number;
        let unlucky = uuid::Uuid::from_u128(0x4242_4242_4242_4242_0000_0000_0000_0000);
        assert!(contains_card_number(&format!(
            "bench-{}-card-7",
            unlucky.simple()
        )));
        let id = run_id_of(unlucky);
        assert_eq!(id.len(), 32);
        assert!(id.bytes().all(|b| (b'a'..=b'p').contains(&b)), "{id}");
        assert!(!contains_card_number(&format!("bench-{id}-card-7")));
        assert_ne!(run_id(), run_id());
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
}
