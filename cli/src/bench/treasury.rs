//! `tandemctl bench treasury`: the treasury's reads over a large ledger. Books `--payments`
//! payments of `--cards` legs each (a hold and its capture per leg, through `tandem-ledger`'s
//! own write path) on one billing account of a fresh orchestrator database, then times
//! `GetSpendReport` over the account (`--samples` calls one after another: min, median, max)
//! and one `ExportLedger` of every entry (entries per second to this client). The report is
//! checked against what was booked.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use tandem_ledger::types::{
    AccountCode, AccountId, AccountRefs, BalanceLimit, Currency, NewAccount, Transfer, TransferId,
    TransferKind, TransferRefs,
};
use tandem_proto::tandem::orchestrator::v1 as pb;
use tandem_proto::tandem::orchestrator::v1::ledger_service_client::LedgerServiceClient;
use tandem_tls::identity::Role;

use super::LoadArgs;
use super::stack::{CALL_TIMEOUT, ORCHESTRATOR_DATABASE, Stack, channels};
use crate::dev;

/// The billing account the payments are booked on.
const BILLING_ACCOUNT: &str = "bench-treasury";
/// Transfers written per ledger call.
const TRANSFERS_PER_CALL: usize = 8_000;
/// Most payments a run books.
const PAYMENTS_MAX: u32 = 10_000_000;

/// Arguments of `tandemctl bench treasury`.
#[derive(Debug, clap::Args)]
pub struct TreasuryArgs {
    /// Payments booked on the billing account.
    #[arg(long, default_value_t = 100_000)]
    payments: u32,
    /// Legs (cards) per payment.
    #[arg(long, default_value_t = 3)]
    cards: u32,
    /// GetSpendReport calls timed.
    #[arg(long, default_value_t = 20)]
    samples: u32,
    /// Entries per export chunk.
    #[arg(long, default_value_t = 10_000)]
    chunk_entries: i32,
    #[command(flatten)]
    load: LoadArgs,
}

/// Runs the benchmark.
pub async fn run(args: TreasuryArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=PAYMENTS_MAX).contains(&args.payments),
        "--payments must be 1 to {PAYMENTS_MAX}"
    );
    anyhow::ensure!((1..=32).contains(&args.cards), "--cards must be 1 to 32");
    anyhow::ensure!(
        (1..=1000).contains(&args.samples),
        "--samples must be 1 to 1000"
    );
    dev::ensure_certificates(&args.load.certs)?;
    let mut stack = Stack::new()?;
    let result = measure(&args, &mut stack).await;
    stack.stop();
    result
}

async fn measure(args: &TreasuryArgs, stack: &mut Stack) -> anyhow::Result<()> {
    stack.vault(&args.load).await?;
    let uri = stack
        .start_orchestrator(
            &args.load.certs,
            &args.load.shape.database_url,
            &[("TANDEM_ORCHESTRATOR__LEDGER__EXPORT_SETTLE_MS", "0")],
        )
        .await?;
    let url = dev::ensure_database(&args.load.shape.database_url, ORCHESTRATOR_DATABASE).await?;
    let pool = sqlx::PgPool::connect(&url)
        .await
        .context("connect to the bench orchestrator's database")?;
    let started = Instant::now();
    let booked = book(&pool, args).await?;
    let entries = u64::from(args.payments) * u64::from(args.cards) * 2;
    println!(
        "booked {} payments x {} legs ({entries} entries) in {:.1} s",
        args.payments,
        args.cards,
        started.elapsed().as_secs_f64()
    );
    sqlx::query("ANALYZE").execute(&pool).await?;
    pool.close().await;

    let channel = channels(&uri, &args.load.certs, Role::Treasury, 1, CALL_TIMEOUT * 30)
        .await?
        .remove(0);
    let mut ledger = LedgerServiceClient::new(channel);
    let today = time::OffsetDateTime::now_utc().date();
    let day = |d: time::Date| format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day());
    let request = pb::GetSpendReportRequest {
        billing_account_id: BILLING_ACCOUNT.to_owned(),
        start_date: day(today.previous_day().context("a day before")?),
        end_date: day(today.next_day().context("a day after")?),
    };
    let mut times = Vec::new();
    for _ in 0..args.samples {
        let start = Instant::now();
        let report = ledger.get_spend_report(request.clone()).await?.into_inner();
        times.push(start.elapsed());
        let net: i64 = report
            .totals
            .iter()
            .filter_map(|t| t.net.as_ref())
            .map(|m| m.minor_units)
            .sum();
        anyhow::ensure!(
            net == booked,
            "the report says {net}, the ledger booked {booked}"
        );
    }
    times.sort();
    println!(
        "GetSpendReport over {} payments: min {:.1} ms, median {:.1} ms, max {:.1} ms ({} calls)",
        args.payments,
        ms(times[0]),
        ms(times[times.len() / 2]),
        ms(times[times.len() - 1]),
        times.len()
    );

    let now = time::OffsetDateTime::now_utc();
    let start = Instant::now();
    let mut stream = ledger
        .export_ledger(pb::ExportLedgerRequest {
            format: pb::ExportFormat::Csv as i32,
            start_time: Some(timestamp(now - time::Duration::days(1))),
            end_time: Some(timestamp(now)),
            chunk_entries: args.chunk_entries,
            ..Default::default()
        })
        .await?
        .into_inner();
    let (mut exported, mut bytes) = (0i64, 0usize);
    while let Some(chunk) = stream.message().await? {
        exported += chunk.entries;
        bytes += chunk.data.len();
    }
    let elapsed = start.elapsed();
    anyhow::ensure!(
        exported as u64 == entries,
        "exported {exported} of {entries} entries"
    );
    println!(
        "ExportLedger (CSV, chunks of {}): {exported} entries, {:.1} MB in {:.2} s: {:.0} entries/s",
        args.chunk_entries,
        bytes as f64 / 1e6,
        elapsed.as_secs_f64(),
        exported as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// `time` to the nanosecond: the export ends at the moment it starts, and a range cut to the
/// whole second would leave out what was booked in that second.
fn timestamp(time: time::OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.unix_timestamp(),
        nanos: i32::try_from(time.nanosecond()).unwrap_or(0),
    }
}

/// Books the payments: per leg, a hold from the card's funding source to the billing
/// account's receivable and its capture, as the orchestrator books them. Returns the total
/// captured, in minor units.
async fn book(pool: &sqlx::PgPool, args: &TreasuryArgs) -> anyhow::Result<i64> {
    let usd = Currency::new("USD").context("currency")?;
    let receivable = AccountId::new(format!("receivable:{BILLING_ACCOUNT}:USD"))?;
    let cards: Vec<(String, AccountId)> = (0..args.cards)
        .map(|i| {
            let token = bench_token(i);
            let account = AccountId::new(format!("funding_source:{token}:USD"))?;
            Ok((token, account))
        })
        .collect::<anyhow::Result<_>>()?;
    let mut accounts = vec![NewAccount {
        id: receivable.clone(),
        currency: usd,
        code: AccountCode::Receivable,
        limit: BalanceLimit::None,
        refs: AccountRefs {
            billing_account: Some(BILLING_ACCOUNT.to_owned()),
            ..AccountRefs::default()
        },
    }];
    for (token, account) in &cards {
        accounts.push(NewAccount {
            id: account.clone(),
            currency: usd,
            code: AccountCode::FundingSource,
            limit: BalanceLimit::None,
            refs: AccountRefs {
                card_token: Some(token.clone()),
                ..AccountRefs::default()
            },
        });
    }
    let mut conn = pool.acquire().await?;
    tandem_ledger::ledger::create_accounts(&mut conn, &accounts).await?;
    let mut booked = 0;
    for step in ["hold", "capture"] {
        let mut batch = Vec::with_capacity(TRANSFERS_PER_CALL);
        for payment in 0..args.payments {
            for (leg, (_, card)) in cards.iter().enumerate() {
                let amount = 1_000 + i64::from(payment % 97) + leg as i64;
                let prefix = format!("pay_bench{payment}/leg/{}", leg + 1);
                let refs = TransferRefs {
                    payment_id: Some(format!("pay_bench{payment}")),
                    invoice_id: Some(format!("INV-{payment}")),
                    leg_id: Some(prefix.clone()),
                    cost_center: Some(format!("cc-{}", payment % 4)),
                    processor_reference: None,
                };
                let kind = if step == "hold" {
                    TransferKind::Pending {
                        debit: card.clone(),
                        credit: receivable.clone(),
                        amount,
                        timeout_at: None,
                    }
                } else {
                    booked += amount;
                    TransferKind::PostPending {
                        pending_id: TransferId::new(format!("{prefix}/hold"))?,
                        amount: None,
                    }
                };
                batch.push(Transfer {
                    id: TransferId::new(format!("{prefix}/{step}"))?,
                    kind,
                    linked: false,
                    refs,
                });
                if batch.len() == TRANSFERS_PER_CALL {
                    write(&mut conn, &mut batch).await?;
                }
            }
        }
        write(&mut conn, &mut batch).await?;
    }
    Ok(booked)
}

/// Writes `batch` in one transaction and empties it; every transfer must be created.
pub(super) async fn write(
    conn: &mut sqlx::pool::PoolConnection<sqlx::Postgres>,
    batch: &mut Vec<Transfer>,
) -> anyhow::Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let mut tx = sqlx::Connection::begin(&mut **conn).await?;
    let results = tandem_ledger::ledger::create_transfers(&mut tx, batch).await?;
    tx.commit().await?;
    anyhow::ensure!(
        results.iter().all(|r| r.is_success()),
        "a booking was refused: {:?}",
        results.iter().find(|r| !r.is_success())
    );
    batch.clear();
    Ok(())
}

/// The token of bench card `i`: "tok_" and 26 base32 letters, none a digit.
pub(super) fn bench_token(i: u32) -> String {
    let letters: String = format!("{i:0>26}")
        .chars()
        .map(|c| (b'a' + c.to_digit(10).unwrap_or(0) as u8) as char)
        .collect();
    format!("tok_{letters}")
}
