//! `tandemctl bench recon`: reconciling a day of many settlement records. Books `--payments`
//! one-leg payments on one billing account of a fresh orchestrator database (a hold and its
//! capture each, through `tandem-ledger`'s own write path, the capture carrying its
//! authorization's processor reference), writes the sandbox acquirer's side of the same
//! captures (a card, an authorization and today's settlement record each) into the fresh
//! vault's database, then times `RunReconciliation` of today (`--samples` runs one after
//! another, each under a new request id: min, median, max, and records per second). Every run
//! must match every record and find nothing else.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use tandem_ledger::types::{
    AccountCode, AccountId, AccountRefs, BalanceLimit, Currency, NewAccount, Transfer, TransferId,
    TransferKind, TransferRefs,
};
use tandem_proto::tandem::orchestrator::v1 as pb;
use tandem_proto::tandem::orchestrator::v1::reconciliation_service_client::ReconciliationServiceClient;
use tandem_runtime::ids::random_id;
use tandem_tls::identity::Role;

use super::stack::{CALL_TIMEOUT, ORCHESTRATOR_DATABASE, Stack, VAULT_DATABASE, channels};
use super::treasury::{bench_token, write};
use super::{LoadArgs, run_id};
use crate::dev;

/// The billing account the payments are booked on.
const BILLING_ACCOUNT: &str = "bench-recon";
/// The processor whose settlement file is reconciled: the vault's sandbox connector.
const PROCESSOR: &str = "sandbox";
/// Transfers written per ledger call.
const TRANSFERS_PER_CALL: usize = 8_000;
/// Rows of the acquirer's tables written per statement.
const ROWS_PER_STATEMENT: usize = 10_000;
/// Most payments a run books: the vault's default `connector.settlement_file_records_max`,
/// beyond which it refuses the day's file.
const PAYMENTS_MAX: u32 = 1_000_000;
/// The orchestrator's own limit on one call, raised from its default (10 s) so that the server
/// never cuts a long run short: the benchmark measures how long a run takes.
const SERVER_REQUEST_TIMEOUT_MS: &str = "600000";

/// Arguments of `tandemctl bench recon`.
#[derive(Debug, clap::Args)]
pub struct ReconArgs {
    /// One-leg payments booked and settled today: the records of the day's settlement file.
    #[arg(long, default_value_t = 100_000)]
    payments: u32,
    /// RunReconciliation calls timed, one after another.
    #[arg(long, default_value_t = 3)]
    samples: u32,
    #[command(flatten)]
    load: LoadArgs,
}

/// One payment's capture, as both sides know it.
struct Capture {
    /// The authorization's processor reference, which the ledger's capture carries and the
    /// settlement file names.
    reference: String,
    /// Minor units of USD.
    amount: i64,
}

/// Runs the benchmark.
pub async fn run(args: ReconArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=PAYMENTS_MAX).contains(&args.payments),
        "--payments must be 1 to {PAYMENTS_MAX}"
    );
    anyhow::ensure!(
        (1..=100).contains(&args.samples),
        "--samples must be 1 to 100"
    );
    anyhow::ensure!(
        args.load.vault.is_none(),
        "bench recon writes the sandbox's settlement records into its own vault's database: \
         it cannot target --vault"
    );
    dev::ensure_certificates(&args.load.certs)?;
    let mut stack = Stack::new()?;
    let result = measure(&args, &mut stack).await;
    stack.stop();
    result
}

async fn measure(args: &ReconArgs, stack: &mut Stack) -> anyhow::Result<()> {
    stack.vault(&args.load).await?;
    let uri = stack
        .start_orchestrator(
            &args.load.certs,
            &args.load.shape.database_url,
            &[
                (
                    "TANDEM_ORCHESTRATOR__SERVER__REQUEST_TIMEOUT_MS",
                    SERVER_REQUEST_TIMEOUT_MS,
                ),
                // No run of the worker's beside the measured ones.
                (
                    "TANDEM_ORCHESTRATOR__RECONCILIATION__WORKER_ENABLED",
                    "false",
                ),
            ],
        )
        .await?;
    let database_url = &args.load.shape.database_url;
    let ledger_url = dev::ensure_database(database_url, ORCHESTRATOR_DATABASE).await?;
    let ledger_pool = sqlx::PgPool::connect(&ledger_url)
        .await
        .context("connect to the bench orchestrator's database")?;
    let acquirer_url = dev::ensure_database(database_url, VAULT_DATABASE).await?;
    let acquirer_pool = sqlx::PgPool::connect(&acquirer_url)
        .await
        .context("connect to the bench vault's database")?;

    let today = time::OffsetDateTime::now_utc().date();
    let captures: Vec<Capture> = (0..args.payments)
        .map(|payment| Capture {
            reference: random_id("sbx_"),
            amount: 1_000 + i64::from(payment % 97),
        })
        .collect();
    let started = Instant::now();
    book_ledger(&ledger_pool, &captures).await?;
    settle(&acquirer_pool, &captures, today).await?;
    println!(
        "booked {} captures and their settlement records in {:.1} s",
        args.payments,
        started.elapsed().as_secs_f64()
    );
    for pool in [&ledger_pool, &acquirer_pool] {
        sqlx::query("ANALYZE").execute(pool).await?;
        pool.close().await;
    }

    let channel = channels(&uri, &args.load.certs, Role::Treasury, 1, CALL_TIMEOUT * 30)
        .await?
        .remove(0);
    let mut reconciliation = ReconciliationServiceClient::new(channel);
    let settlement_date = format!(
        "{:04}-{:02}-{:02}",
        today.year(),
        u8::from(today.month()),
        today.day()
    );
    let bench_run = run_id();
    let records = i64::from(args.payments);
    let mut times = Vec::new();
    for sample in 0..args.samples {
        let request = pb::RunReconciliationRequest {
            request_id: format!("bench-recon-{bench_run}-{sample}"),
            processor: PROCESSOR.to_owned(),
            settlement_date: settlement_date.clone(),
        };
        let start = Instant::now();
        let run = reconciliation
            .run_reconciliation(request)
            .await?
            .into_inner()
            .run
            .context("a RunReconciliation response without its run")?;
        times.push(start.elapsed());
        check(&run, records)?;
    }
    times.sort();
    let median = times[times.len() / 2];
    println!(
        "RunReconciliation over {} records: min {:.2} s, median {:.2} s, max {:.2} s ({} runs), \
         {:.0} records/s",
        args.payments,
        times[0].as_secs_f64(),
        median.as_secs_f64(),
        times[times.len() - 1].as_secs_f64(),
        times.len(),
        per_second(records, median)
    );
    Ok(())
}

/// Checks that `run` read `records` records and matched each, finding nothing else.
fn check(run: &pb::ReconciliationRun, records: i64) -> anyhow::Result<()> {
    anyhow::ensure!(
        run.records == records,
        "run {} read {} records, the acquirer settled {records}",
        run.id,
        run.records
    );
    anyhow::ensure!(
        run.matched == records,
        "run {} matched {} of {records} records",
        run.id,
        run.matched
    );
    let others = [
        ("missing_in_ledger", run.missing_in_ledger),
        ("missing_at_processor", run.missing_at_processor),
        ("amount_mismatch", run.amount_mismatch),
        ("currency_mismatch", run.currency_mismatch),
        ("duplicate_settlement", run.duplicate_settlement),
        ("pending", run.pending),
        ("resolved", run.resolved),
    ];
    for (name, count) in others {
        anyhow::ensure!(
            count == 0,
            "run {} counted {count} {name}, where every record matches",
            run.id
        );
    }
    Ok(())
}

fn per_second(count: i64, duration: Duration) -> f64 {
    count as f64 / duration.as_secs_f64()
}

/// Books the payments: per payment a hold from the card's funding source to the billing
/// account's receivable and its capture carrying the authorization's reference, as the
/// orchestrator books them.
async fn book_ledger(pool: &sqlx::PgPool, captures: &[Capture]) -> anyhow::Result<()> {
    let usd = Currency::new("USD").context("currency")?;
    let receivable = AccountId::new(format!("receivable:{BILLING_ACCOUNT}:USD"))?;
    let token = bench_token(0);
    let card = AccountId::new(format!("funding_source:{token}:USD"))?;
    let accounts = [
        NewAccount {
            id: receivable.clone(),
            currency: usd,
            code: AccountCode::Receivable,
            limit: BalanceLimit::None,
            refs: AccountRefs {
                billing_account: Some(BILLING_ACCOUNT.to_owned()),
                ..AccountRefs::default()
            },
        },
        NewAccount {
            id: card.clone(),
            currency: usd,
            code: AccountCode::FundingSource,
            limit: BalanceLimit::None,
            refs: AccountRefs {
                card_token: Some(token),
                ..AccountRefs::default()
            },
        },
    ];
    let mut conn = pool.acquire().await?;
    tandem_ledger::ledger::create_accounts(&mut conn, &accounts).await?;
    for step in ["hold", "capture"] {
        let mut batch = Vec::with_capacity(TRANSFERS_PER_CALL);
        for (payment, capture) in captures.iter().enumerate() {
            let payment_id = format!("pay_bench{payment}");
            let leg_id = format!("{payment_id}/leg/1");
            let (kind, processor_reference) = if step == "hold" {
                let kind = TransferKind::Pending {
                    debit: card.clone(),
                    credit: receivable.clone(),
                    amount: capture.amount,
                    timeout_at: None,
                };
                (kind, None)
            } else {
                let kind = TransferKind::PostPending {
                    pending_id: TransferId::new(format!("{leg_id}/hold"))?,
                    amount: None,
                };
                (kind, Some(capture.reference.clone()))
            };
            batch.push(Transfer {
                id: TransferId::new(format!("{leg_id}/{step}"))?,
                kind,
                linked: false,
                refs: TransferRefs {
                    payment_id: Some(payment_id),
                    invoice_id: Some(format!("INV-{payment}")),
                    leg_id: Some(leg_id),
                    cost_center: None,
                    processor_reference,
                },
            });
            if batch.len() == TRANSFERS_PER_CALL {
                write(&mut conn, &mut batch).await?;
            }
        }
        write(&mut conn, &mut batch).await?;
    }
    Ok(())
}

/// Writes the acquirer's side of `captures` into the sandbox's tables of the vault's database:
/// one card, and per capture its authorization (captured in full) and its settlement record of
/// `day`, in USD.
///
/// SQL in the load generator, on purpose: these tables play the external acquirer's own
/// database, as `bench treasury` writes the ledger directly; the sandbox's write path would
/// need a tokenized card and an authorization call per record. Kept to this one function.
async fn settle(pool: &sqlx::PgPool, captures: &[Capture], day: time::Date) -> anyhow::Result<()> {
    // A fingerprint is an HMAC-SHA-256 (32 bytes); this one belongs to no PAN.
    let fingerprint: &[u8] = &[0x42; 32];
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO sandbox_cards (fingerprint, token, last4, configured, latency_ms, \
         fail_first_attempts, fail_remaining, timeout_after_authorize, updated_at) \
         VALUES ($1, $2, '4242', false, 0, 0, 0, false, now())",
    )
    .bind(fingerprint)
    .bind(bench_token(0))
    .execute(&mut *tx)
    .await
    .context("insert the bench card into sandbox_cards")?;
    for chunk in captures.chunks(ROWS_PER_STATEMENT) {
        let references: Vec<&str> = chunk.iter().map(|c| c.reference.as_str()).collect();
        let amounts: Vec<i64> = chunk.iter().map(|c| c.amount).collect();
        sqlx::query(
            "INSERT INTO sandbox_authorizations (reference, fingerprint, currency, \
             approved_minor, captured_minor, state, created_at) \
             SELECT u.reference, $1, 'USD', u.amount, u.amount, 'captured', now() \
             FROM UNNEST($2::text[], $3::bigint[]) AS u(reference, amount)",
        )
        .bind(fingerprint)
        .bind(&references)
        .bind(&amounts)
        .execute(&mut *tx)
        .await
        .context("insert into sandbox_authorizations")?;
        let ids: Vec<String> = chunk.iter().map(|_| random_id("stl_")).collect();
        // Each capture operation's own reference; the file names the authorization's.
        let operations: Vec<String> = chunk.iter().map(|_| random_id("sbx_")).collect();
        sqlx::query(
            "INSERT INTO sandbox_settlement_records (id, settlement_date, type, \
             processor_reference, authorization_reference, currency, amount_minor, created_at) \
             SELECT u.id, $1, 'capture', u.operation, u.reference, 'USD', u.amount, now() \
             FROM UNNEST($2::text[], $3::text[], $4::text[], $5::bigint[]) \
             AS u(id, operation, reference, amount)",
        )
        .bind(day)
        .bind(&ids)
        .bind(&operations)
        .bind(&references)
        .bind(&amounts)
        .execute(&mut *tx)
        .await
        .context("insert into sandbox_settlement_records")?;
    }
    tx.commit().await?;
    Ok(())
}
