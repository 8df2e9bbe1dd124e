//! `tandemctl bench ledger`: single transfers between accounts through the ledger's batching
//! writer, in this process, then the ledger's invariant check. The accounts are spread evenly
//! (`--skew uniform`) or by a Zipf law (`--skew zipf`: the k-th account is picked with odds
//! proportional to 1 / k^s, so a few accounts are hot), in a closed loop or, with `--rate`, an
//! open one.

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
    /// How transfers pick their accounts: `uniform`, or `zipf` (a few hot accounts).
    #[arg(long, value_enum, default_value_t = Skew::Uniform)]
    skew: Skew,
    /// The Zipf exponent s of `--skew zipf`: the k-th account's odds are 1 / k^s.
    #[arg(long, default_value_t = 1.0)]
    zipf_exponent: f64,
    #[command(flatten)]
    shape: Shape,
}

/// How transfers pick their accounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Skew {
    /// Every account as often as any other.
    Uniform,
    /// The k-th account with odds proportional to 1 / k^s.
    Zipf,
}

/// Picks accounts for transfer `n` of `worker`: a debit and a different credit account,
/// deterministically (the same run picks the same pairs).
struct Picker {
    /// For Zipf, the cumulative odds of accounts 0..k; empty for uniform.
    cumulative: Vec<f64>,
    accounts: u64,
}

impl Picker {
    fn new(skew: Skew, accounts: u64, exponent: f64) -> Picker {
        let cumulative = match skew {
            Skew::Uniform => Vec::new(),
            Skew::Zipf => {
                let weights: Vec<f64> = (1..=accounts)
                    .map(|k| 1.0 / (k as f64).powf(exponent))
                    .collect();
                let total: f64 = weights.iter().sum();
                weights
                    .iter()
                    .scan(0.0, |sum, weight| {
                        *sum += weight / total;
                        Some(*sum)
                    })
                    .collect()
            }
        };
        Picker {
            cumulative,
            accounts,
        }
    }

    fn account(&self, draw: u64) -> u64 {
        if self.cumulative.is_empty() {
            return draw % self.accounts;
        }
        // The top 53 bits as a uniform number in [0, 1).
        let uniform = (draw >> 11) as f64 / (1u64 << 53) as f64;
        let k = self.cumulative.partition_point(|&sum| sum <= uniform) as u64;
        k.min(self.accounts - 1)
    }

    fn pair(&self, worker: usize, n: u64) -> (u64, u64) {
        let seed = (worker as u64) << 40 ^ n;
        let debit = self.account(mix(seed));
        let credit = self.account(mix(seed ^ 0x5bd1_e995));
        if credit == debit {
            (debit, (debit + 1) % self.accounts)
        } else {
            (debit, credit)
        }
    }
}

/// SplitMix64's finalizer: a well-spread 64-bit value from any 64-bit input.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
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
    anyhow::ensure!(
        args.zipf_exponent > 0.0 && args.zipf_exponent <= 5.0,
        "--zipf-exponent must be above 0 and at most 5"
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
    let picker = std::sync::Arc::new(Picker::new(
        args.skew,
        u64::from(args.accounts),
        args.zipf_exponent,
    ));
    let window = Window::after(shape.warmup, shape.duration);
    let (report, counted) = tokio::join!(
        run_load(shape, window, move |worker, n| {
            let writer = writer.clone();
            let (debit, credit) = picker.pair(worker, n);
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
    let skew = match args.skew {
        Skew::Uniform => "uniform".to_owned(),
        Skew::Zipf => format!("zipf s={}", args.zipf_exponent),
    };
    println!(
        "ledger ({} accounts, {skew}, {} writer tasks): {shape}",
        args.accounts, args.writer_tasks
    );
    if shape.rate > 0 {
        println!(
            "  offered {} transfers/s, served {:.0}/s",
            shape.rate, measured.report.per_second
        );
    }
    measured.print(baseline.as_ref());
    println!(
        "  invariants: {} ({} transfers, {} accounts)",
        if check.holds() { "hold" } else { "VIOLATED" },
        check.transfers,
        check.accounts
    );
    for journal in &check.journals {
        println!("  {journal}");
    }
    anyhow::ensure!(
        check.holds(),
        "ledger invariants violated: {:?}",
        check.violations
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Uniform picks spread evenly; Zipf picks favour the first accounts by 1 / k (the first
    /// about twice the second); every pair is two different accounts in range.
    #[test]
    fn picks_follow_the_skew() {
        let count = |picker: &Picker| {
            let mut hits = vec![0u32; 10];
            for n in 0..100_000 {
                let (debit, credit) = picker.pair(3, n);
                assert!(debit < 10 && credit < 10 && debit != credit);
                hits[debit as usize] += 1;
            }
            hits
        };
        let uniform = count(&Picker::new(Skew::Uniform, 10, 1.0));
        assert!(
            uniform.iter().all(|&h| (9_000..11_000).contains(&h)),
            "{uniform:?}"
        );
        let zipf = count(&Picker::new(Skew::Zipf, 10, 1.0));
        let ratio = f64::from(zipf[0]) / f64::from(zipf[1]);
        assert!((1.8..2.2).contains(&ratio), "{zipf:?}");
        assert!(zipf[0] > 3 * zipf[9], "{zipf:?}");
    }
}
