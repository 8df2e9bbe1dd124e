//! `tandemctl bench ledger`: single transfers between random accounts through the ledger's
//! batching writer, in this process, then the ledger's invariant check.

use std::time::Duration;

use super::measure::{Measured, Window, count_in, run_load};
use super::{Shape, baseline, check_shape, parse_duration};
use crate::dev;

const LEDGER_DATABASE: &str = "tandem_bench_ledger";

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

/// Creates ledger transfers through the batching writer.
pub(super) async fn run(args: LedgerArgs) -> anyhow::Result<()> {
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
