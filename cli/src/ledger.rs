//! `tandemctl ledger`: read the orchestrator's ledger (`LedgerService`) with a `treasury`
//! identity (`--as-reader` for a `reader` one): balances, entries, spend reports and exports;
//! and check its invariants on the orchestrator's database.
//!
//! ```text
//! tandemctl ledger balances (--card-token tok_... | --billing-account acct-42 | --cost-center ops)
//! tandemctl ledger entries [--payment pay_...] [--invoice INV-1] [--card-token tok_...] \
//!     [--cost-center ops] [--billing-account acct-42] [--start 2025-01-01T00:00:00Z] \
//!     [--end 2025-02-01T00:00:00Z] [--page-size 100] [--page-token T | --all]
//! tandemctl ledger spend --billing-account acct-42 --start-date 2025-01-01 --end-date 2025-02-01
//! tandemctl ledger export --start 2025-01-01T00:00:00Z --end 2025-02-01T00:00:00Z \
//!     [--format csv|jsonl] [--out ledger.csv] [--billing-account ...] [--cost-center ...] \
//!     [--card-token ...] [--cursor C]
//! tandemctl ledger check --database-url postgres://.../tandem_orchestrator
//! ```
//!
//! `check` is the one command that reads the database instead of calling the orchestrator: it
//! runs the ledger's own invariant check ([`tandem_ledger::invariants::check`]) on the
//! orchestrator's database, read-only, so it also serves before any orchestrator is started on
//! it (after a restore, say).
//!
//! `balances`, `entries` and `spend` take `--format table|csv|json` (see [`crate::print`]).
//! `export` writes the server's chunks unchanged (the server makes the CSV or JSON lines) and
//! reports the cursor after the last chunk written on stderr: `--cursor` with it and the same
//! filters continues an interrupted export exactly there, appending to `--out`.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use sqlx::Connection as _;
use tandem_proto::tandem::orchestrator::v1 as pb;
use tandem_proto::tandem::orchestrator::v1::ledger_service_client::LedgerServiceClient;
use tandem_tls::identity::Role;

use crate::connect::{
    CALL_TIMEOUT, LIST_PAGES_MAX, OrchestratorTarget, failure, next_page, orchestrator_channel,
    pages_stopped,
};
use crate::print::{Column, Format, Value, parse_time, print_header, print_row, value_name};

/// How long an export may stream; past it the command stops with the cursor to resume from.
const EXPORT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

/// How long `check` may take to connect to the database.
const CHECK_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

type Client = LedgerServiceClient<tonic::transport::Channel>;

/// Where the orchestrator is and which identity reads its ledger.
#[derive(Debug, clap::Args)]
pub(crate) struct LedgerTarget {
    #[command(flatten)]
    target: OrchestratorTarget,
    /// Use the reader identity instead of the treasury one.
    #[arg(long)]
    as_reader: bool,
}

impl LedgerTarget {
    async fn client(&self, call_timeout: std::time::Duration) -> anyhow::Result<Client> {
        let role = if self.as_reader {
            Role::Reader
        } else {
            Role::Treasury
        };
        Ok(LedgerServiceClient::new(
            orchestrator_channel(&self.target, role, call_timeout).await?,
        ))
    }
}

/// Which of a card, a billing account and a cost center `balances` reads.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub(crate) struct BalancesOf {
    /// The funding source of this card token.
    #[arg(long)]
    card_token: Option<String>,
    /// The receivable of this billing account.
    #[arg(long)]
    billing_account: Option<String>,
    /// The slice of each account this cost center's entries moved.
    #[arg(long)]
    cost_center: Option<String>,
}

/// `ExportFormat` on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ExportFormat {
    /// RFC 4180 CSV, header first.
    Csv,
    /// One JSON object per line.
    Jsonl,
}

impl From<ExportFormat> for pb::ExportFormat {
    fn from(format: ExportFormat) -> Self {
        match format {
            ExportFormat::Csv => Self::Csv,
            ExportFormat::Jsonl => Self::JsonLines,
        }
    }
}

/// The ledger commands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum LedgerCommand {
    /// Show the posted and pending balances of a card, a billing account or a cost center.
    Balances {
        #[command(flatten)]
        target: LedgerTarget,
        #[command(flatten)]
        of: BalancesOf,
        /// How to print the balances.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// List ledger entries in ledger order; a time range is required unless `--payment` or
    /// `--invoice` is given.
    Entries {
        #[command(flatten)]
        target: LedgerTarget,
        /// Only entries of this payment.
        #[arg(long = "payment", value_name = "PAYMENT_ID")]
        payment_id: Option<String>,
        /// Only entries of this invoice.
        #[arg(long = "invoice", value_name = "INVOICE_ID")]
        invoice_id: Option<String>,
        /// Only entries moving money of this card.
        #[arg(long)]
        card_token: Option<String>,
        /// Only entries of this cost center.
        #[arg(long)]
        cost_center: Option<String>,
        /// Only entries moving money of this billing account.
        #[arg(long)]
        billing_account: Option<String>,
        /// Booked at or after (RFC 3339).
        #[arg(long, value_name = "TIME")]
        start: Option<String>,
        /// Booked before (RFC 3339).
        #[arg(long, value_name = "TIME")]
        end: Option<String>,
        /// Entries per call, 1-1000.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i32).range(1..=1000))]
        page_size: i32,
        /// Continue with this page (printed on stderr after a page that has a next one).
        #[arg(long, conflicts_with = "all")]
        page_token: Option<String>,
        /// Follow the pages to the last one instead of printing one page.
        #[arg(long)]
        all: bool,
        /// How to print the entries.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Report a billing account's spend over a range of days (UTC): by card, by cost center,
    /// by month and in total, captured less refunded.
    Spend {
        #[command(flatten)]
        target: LedgerTarget,
        /// The billing account.
        #[arg(long)]
        billing_account: String,
        /// The first day, YYYY-MM-DD.
        #[arg(long, value_name = "YYYY-MM-DD")]
        start_date: String,
        /// The day after the last, YYYY-MM-DD.
        #[arg(long, value_name = "YYYY-MM-DD")]
        end_date: String,
        /// How to print the report.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Export the entries of a closed time range as CSV or JSON lines.
    Export {
        #[command(flatten)]
        target: LedgerTarget,
        /// Booked at or after (RFC 3339).
        #[arg(long, value_name = "TIME")]
        start: String,
        /// Booked before (RFC 3339); the range must have ended a little while ago (the
        /// orchestrator's `ledger.export_settle_ms`).
        #[arg(long, value_name = "TIME")]
        end: String,
        /// The export's format.
        #[arg(long, value_enum, default_value_t = ExportFormat::Csv)]
        format: ExportFormat,
        /// Write to this file instead of stdout (appended to when `--cursor` resumes).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Only entries moving money of this billing account.
        #[arg(long)]
        billing_account: Option<String>,
        /// Only entries of this cost center.
        #[arg(long)]
        cost_center: Option<String>,
        /// Only entries moving money of this card.
        #[arg(long)]
        card_token: Option<String>,
        /// Continue an export after this cursor (printed on stderr by the interrupted one;
        /// same format and filters).
        #[arg(long)]
        cursor: Option<String>,
        /// Entries per chunk, 1-10000; the server's default (1000) when not given.
        #[arg(long, value_parser = clap::value_parser!(i32).range(1..=10_000))]
        chunk_entries: Option<i32>,
    },
    /// Check the ledger's invariants on the orchestrator's database, read-only: every
    /// currency's journal balances, every account and flow equals the sum of its transfers, no
    /// hold is open past its timeout, conversions are booked on both sides. Prints each
    /// currency's journal; exits non-zero listing the violations.
    Check {
        /// The orchestrator's database, which holds the ledger
        /// (`postgres://user@host:5432/tandem_orchestrator`).
        #[arg(
            long,
            env = "TANDEM_ORCHESTRATOR__DATABASE__URL",
            hide_env_values = true,
            value_name = "URL"
        )]
        database_url: String,
    },
}

/// Runs a ledger command.
pub(crate) async fn run(command: LedgerCommand) -> anyhow::Result<()> {
    match command {
        LedgerCommand::Balances { target, of, format } => {
            let mut client = target.client(CALL_TIMEOUT).await?;
            let response = client
                .get_balances(pb::GetBalancesRequest {
                    card_token: of.card_token.unwrap_or_default(),
                    billing_account_id: of.billing_account.unwrap_or_default(),
                    cost_center: of.cost_center.unwrap_or_default(),
                })
                .await
                .map_err(failure)?
                .into_inner();
            print_header(format, BALANCE_COLUMNS);
            for balance in &response.balances {
                print_row(format, BALANCE_COLUMNS, &balance_row(balance));
            }
        }
        LedgerCommand::Entries {
            target,
            payment_id,
            invoice_id,
            card_token,
            cost_center,
            billing_account,
            start,
            end,
            page_size,
            page_token,
            all,
            format,
        } => {
            let mut request = pb::ListEntriesRequest {
                page_size,
                page_token: page_token.unwrap_or_default(),
                payment_id: payment_id.unwrap_or_default(),
                invoice_id: invoice_id.unwrap_or_default(),
                card_token: card_token.unwrap_or_default(),
                cost_center: cost_center.unwrap_or_default(),
                billing_account_id: billing_account.unwrap_or_default(),
                start_time: start.map(|t| parse_time("--start", &t)).transpose()?,
                end_time: end.map(|t| parse_time("--end", &t)).transpose()?,
            };
            let mut client = target.client(CALL_TIMEOUT).await?;
            print_header(format, ENTRY_COLUMNS);
            for _ in 0..LIST_PAGES_MAX {
                let page = client
                    .list_entries(request.clone())
                    .await
                    .map_err(failure)?
                    .into_inner();
                for entry in &page.entries {
                    print_row(format, ENTRY_COLUMNS, &entry_row(entry));
                }
                match next_page(page.next_page_token, all) {
                    Some(token) => request.page_token = token,
                    None => return Ok(()),
                }
            }
            pages_stopped(&request.page_token);
        }
        LedgerCommand::Spend {
            target,
            billing_account,
            start_date,
            end_date,
            format,
        } => {
            check_day("--start-date", &start_date)?;
            check_day("--end-date", &end_date)?;
            let mut client = target.client(CALL_TIMEOUT).await?;
            let report = client
                .get_spend_report(pb::GetSpendReportRequest {
                    billing_account_id: billing_account,
                    start_date,
                    end_date,
                })
                .await
                .map_err(failure)?
                .into_inner();
            print_header(format, SPEND_COLUMNS);
            for row in spend_rows(&report) {
                print_row(format, SPEND_COLUMNS, &row);
            }
        }
        LedgerCommand::Export {
            target,
            start,
            end,
            format,
            out,
            billing_account,
            cost_center,
            card_token,
            cursor,
            chunk_entries,
        } => {
            let request = pb::ExportLedgerRequest {
                format: pb::ExportFormat::from(format).into(),
                start_time: Some(parse_time("--start", &start)?),
                end_time: Some(parse_time("--end", &end)?),
                billing_account_id: billing_account.unwrap_or_default(),
                cost_center: cost_center.unwrap_or_default(),
                card_token: card_token.unwrap_or_default(),
                chunk_entries: chunk_entries.unwrap_or_default(),
                cursor: cursor.unwrap_or_default(),
            };
            let resuming = !request.cursor.is_empty();
            let sink: Box<dyn std::io::Write> = match &out {
                None => Box::new(std::io::stdout().lock()),
                Some(path) => Box::new(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .write(true)
                        .append(resuming)
                        .truncate(!resuming)
                        .open(path)
                        .with_context(|| format!("opening {}", path.display()))?,
                ),
            };
            let mut client = target.client(EXPORT_TIMEOUT).await?;
            export(&mut client, request, sink).await?;
        }
        LedgerCommand::Check { database_url } => {
            let report = check(&database_url).await?;
            for line in check_lines(&report) {
                println!("{line}");
            }
            anyhow::ensure!(
                report.holds(),
                "the ledger's invariants do not hold: {} violations",
                report.violations.len()
            );
        }
    }
    Ok(())
}

/// Runs the ledger's invariant check on the database at `url`, in read-only transactions: a
/// check never writes, not even to a database a running orchestrator serves.
async fn check(url: &str) -> anyhow::Result<tandem_ledger::invariants::InvariantReport> {
    let options: sqlx::postgres::PgConnectOptions = url
        .parse()
        .context("--database-url is not a Postgres URL")?;
    let options = options.options([("default_transaction_read_only", "on")]);
    // One connection first, for its error: a pool that cannot connect reports only that it
    // timed out.
    let probe = tokio::time::timeout(
        CHECK_CONNECT_TIMEOUT,
        sqlx::PgConnection::connect_with(&options),
    )
    .await
    .map_err(|_| anyhow::anyhow!("no answer within {CHECK_CONNECT_TIMEOUT:?}"))
    .and_then(|connected| connected.map_err(anyhow::Error::from))
    .context("connecting to the orchestrator's database")?;
    probe.close().await.ok();
    // The check needs an executor it can copy: a pool, of the one connection.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(CHECK_CONNECT_TIMEOUT)
        .connect_with(options)
        .await
        .context("connecting to the orchestrator's database")?;
    let report = tandem_ledger::invariants::check(&pool, time::OffsetDateTime::now_utc())
        .await
        .context("checking the ledger (is this the orchestrator's database?)");
    pool.close().await;
    report
}

/// What `ledger check` prints: each currency's journal, then `ledger check: ok` with what was
/// checked, or one line per violation.
fn check_lines(report: &tandem_ledger::invariants::InvariantReport) -> Vec<String> {
    let journals = report.journals.iter().map(ToString::to_string);
    let verdict: Vec<String> = if report.holds() {
        vec![format!(
            "ledger check: ok ({} accounts, {} transfers)",
            report.accounts, report.transfers
        )]
    } else {
        report
            .violations
            .iter()
            .map(|violation| format!("ledger check: violation: {violation}"))
            .collect()
    };
    journals.chain(verdict).collect()
}

/// Streams an export into `sink`, chunk by chunk, and reports on stderr how many entries it
/// wrote and the cursor after the last chunk written, also when the stream fails or the
/// command is interrupted.
async fn export(
    client: &mut Client,
    request: pb::ExportLedgerRequest,
    mut sink: Box<dyn std::io::Write>,
) -> anyhow::Result<()> {
    let mut cursor = request.cursor.clone();
    let mut entries: i64 = 0;
    let result: anyhow::Result<()> = async {
        let mut stream = client
            .export_ledger(request)
            .await
            .map_err(failure)?
            .into_inner();
        loop {
            let message = tokio::select! {
                message = stream.message() => message.map_err(failure)?,
                _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted"),
            };
            // Bounded by the server, which ends the stream after the range's last entry.
            let Some(chunk) = message else {
                return Ok(());
            };
            sink.write_all(&chunk.data).context("writing the export")?;
            sink.flush().context("writing the export")?;
            // Only once the chunk is written does its cursor say where to continue.
            entries += chunk.entries;
            if !chunk.cursor.is_empty() {
                cursor = chunk.cursor;
            }
        }
    }
    .await;
    match &result {
        Ok(()) => eprintln!("exported {entries} entries; cursor {cursor}"),
        Err(_) if cursor.is_empty() => eprintln!("exported {entries} entries"),
        Err(_) => eprintln!(
            "exported {entries} entries before stopping; continue with --cursor {cursor} \
             (and the same --format, range and filters)"
        ),
    }
    result
}

/// Refuses a day that is not `YYYY-MM-DD`, naming `flag`.
pub(crate) fn check_day(flag: &str, text: &str) -> anyhow::Result<()> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(text, &format)
        .map(|_| ())
        .map_err(|_| anyhow::anyhow!("{flag} {text:?} must be a day, YYYY-MM-DD"))
}

/// The columns of `ledger balances`. Account ids are 49 characters for a card's funding
/// source (`funding_source:` + token + `:USD`).
const BALANCE_COLUMNS: &[Column] = &[
    Column::text("account_id", "account", 49),
    Column::text("code", "code", 18),
    Column::machines("card_token"),
    Column::machines("billing_account_id"),
    Column::machines("currency_code"),
    Column::number("debits_posted", "debits posted", 16),
    Column::number("credits_posted", "credits posted", 16),
    Column::number("debits_pending", "debits pending", 16),
    Column::number("credits_pending", "credits pending", 16),
];

fn balance_row(balance: &pb::LedgerBalance) -> Vec<Value> {
    let currency = [
        &balance.debits_posted,
        &balance.credits_posted,
        &balance.debits_pending,
        &balance.credits_pending,
    ]
    .into_iter()
    .find_map(|money| money.as_ref().map(|m| m.currency_code.clone()))
    .unwrap_or_default();
    vec![
        Value::text(&balance.account_id),
        Value::Text(value_name(
            balance.code,
            "LEDGER_ACCOUNT_CODE_",
            pb::LedgerAccountCode::as_str_name,
        )),
        Value::text(&balance.card_token),
        Value::text(&balance.billing_account_id),
        Value::Text(currency),
        Value::Money(balance.debits_posted.clone()),
        Value::Money(balance.credits_posted.clone()),
        Value::Money(balance.debits_pending.clone()),
        Value::Money(balance.credits_pending.clone()),
    ]
}

/// The columns of `ledger entries`.
const ENTRY_COLUMNS: &[Column] = &[
    Column::number("sequence", "seq", 6),
    Column::text("create_time", "booked", 20),
    Column::machines("id"),
    Column::text("kind", "kind", 12),
    Column::number("amount", "amount", 16),
    Column::machines("currency_code"),
    Column::text("debit_account_id", "debit", 49),
    Column::text("credit_account_id", "credit", 49),
    Column::machines("pending_id"),
    Column::text("payment_id", "payment", 30),
    Column::text("invoice_id", "invoice", 16),
    Column::machines("leg_id"),
    Column::text("cost_center", "cost center", 11),
];

fn entry_row(entry: &pb::LedgerEntry) -> Vec<Value> {
    vec![
        Value::Integer(entry.sequence),
        Value::Time(entry.create_time),
        Value::text(&entry.id),
        Value::Text(value_name(
            entry.kind,
            "LEDGER_ENTRY_KIND_",
            pb::LedgerEntryKind::as_str_name,
        )),
        Value::Money(entry.amount.clone()),
        Value::text(
            entry
                .amount
                .as_ref()
                .map_or("", |m| m.currency_code.as_str()),
        ),
        Value::text(&entry.debit_account_id),
        Value::text(&entry.credit_account_id),
        Value::text(&entry.pending_id),
        Value::text(&entry.payment_id),
        Value::text(&entry.invoice_id),
        Value::text(&entry.leg_id),
        Value::text(&entry.cost_center),
    ]
}

/// The columns of `ledger spend`: one listing for the four parts of the report, told apart
/// by `by` (`card`, `cost_center`, `month`, `total`).
const SPEND_COLUMNS: &[Column] = &[
    Column::text("by", "by", 11),
    Column::text("card_token", "card", 30),
    Column::text("cost_center", "cost center", 16),
    Column::text("month", "month", 7),
    Column::machines("currency_code"),
    Column::number("captured", "captured", 16),
    Column::number("refunded", "refunded", 16),
    Column::number("net", "net", 16),
];

fn spend_rows(report: &pb::GetSpendReportResponse) -> Vec<Vec<Value>> {
    let parts = [
        ("card", &report.by_card),
        ("cost_center", &report.by_cost_center),
        ("month", &report.by_month),
        ("total", &report.totals),
    ];
    parts
        .into_iter()
        .flat_map(|(by, lines)| {
            lines.iter().map(move |line| {
                vec![
                    Value::text(by),
                    Value::text(&line.card_token),
                    Value::text(&line.cost_center),
                    Value::text(&line.month),
                    Value::text(&line.currency_code),
                    Value::Money(line.captured.clone()),
                    Value::Money(line.refunded.clone()),
                    Value::Money(line.net.clone()),
                ]
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use tandem_proto::tandem::r#type::v1 as types;

    use super::*;
    use crate::print::row;

    fn usd(minor_units: i64) -> Option<types::Money> {
        Some(types::Money {
            currency_code: "USD".to_owned(),
            minor_units,
        })
    }

    /// A balance prints with its account, its code's name and its four amounts; machines also
    /// get the card, the billing account and the currency on their own.
    #[test]
    fn balances() {
        let balance = pb::LedgerBalance {
            account_id: "funding_source:tok_a:USD".to_owned(),
            code: pb::LedgerAccountCode::FundingSource.into(),
            card_token: "tok_a".to_owned(),
            debits_posted: usd(2050),
            credits_posted: usd(500),
            debits_pending: usd(0),
            credits_pending: usd(0),
            ..Default::default()
        };
        let values = balance_row(&balance);
        assert_eq!(
            row(Format::Table, BALANCE_COLUMNS, &values),
            "funding_source:tok_a:USD                           funding_source             20.50 USD          5.00 USD          0.00 USD          0.00 USD"
        );
        assert_eq!(
            row(Format::Csv, BALANCE_COLUMNS, &values),
            "funding_source:tok_a:USD,funding_source,tok_a,,USD,20.50,5.00,0.00,0.00"
        );
    }

    /// The report's four parts print as one listing, in the report's order, told apart by
    /// `by`; an entry without a cost center shows as `-` to people and empty to machines.
    #[test]
    fn spend() {
        let line = |card: &str, cost_center: &str, month: &str, captured, refunded| pb::SpendLine {
            card_token: card.to_owned(),
            cost_center: cost_center.to_owned(),
            month: month.to_owned(),
            currency_code: "USD".to_owned(),
            captured: usd(captured),
            refunded: usd(refunded),
            net: usd(captured - refunded),
        };
        let report = pb::GetSpendReportResponse {
            by_card: vec![
                line("tok_a", "", "", 1230, 300),
                line("tok_b", "", "", 820, 0),
            ],
            by_cost_center: vec![line("", "", "", 2050, 300)],
            by_month: vec![line("", "", "2025-01", 2050, 300)],
            totals: vec![line("", "", "", 2050, 300)],
        };
        let csv: Vec<String> = spend_rows(&report)
            .iter()
            .map(|values| row(Format::Csv, SPEND_COLUMNS, values))
            .collect();
        assert_eq!(
            csv,
            [
                "card,tok_a,,,USD,12.30,3.00,9.30",
                "card,tok_b,,,USD,8.20,0.00,8.20",
                "cost_center,,,,USD,20.50,3.00,17.50",
                "month,,,2025-01,USD,20.50,3.00,17.50",
                "total,,,,USD,20.50,3.00,17.50",
            ]
        );
        assert_eq!(
            row(Format::Table, SPEND_COLUMNS, &spend_rows(&report)[3]),
            "month        -                               -                 2025-01         20.50 USD          3.00 USD         17.50 USD"
        );
    }

    /// Days are checked for their syntax only; the orchestrator checks the range.
    #[test]
    fn days() {
        assert!(check_day("--start-date", "2025-02-28").is_ok());
        for bad in [
            "2025-02-30",
            "2025-2-1",
            "20250201",
            "2025-02-01T00:00:00Z",
            "",
        ] {
            let error = check_day("--start-date", bad).expect_err(bad).to_string();
            assert!(error.starts_with("--start-date"), "{error}");
        }
    }

    /// `ledger export` and `ledger entries` parse their flags: the format names the wire's
    /// values, `--page-token` and `--all` exclude each other, `balances` needs exactly one of
    /// its three subjects, and `check` takes the database's URL.
    #[test]
    fn command_line() {
        use clap::Parser as _;
        #[derive(Debug, clap::Parser)]
        struct Cli {
            #[command(subcommand)]
            command: LedgerCommand,
        }
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("ledger").chain(args.iter().copied()))
        };
        let export = [
            "export",
            "--start",
            "2025-01-01T00:00:00Z",
            "--end",
            "2025-02-01T00:00:00Z",
        ];
        let Ok(Cli {
            command: LedgerCommand::Export { format, .. },
        }) = parse(&[&export[..], &["--format", "jsonl"]].concat())
        else {
            panic!("export with --format jsonl does not parse");
        };
        assert_eq!(pb::ExportFormat::from(format), pb::ExportFormat::JsonLines);
        assert!(parse(&export).is_ok());
        assert!(parse(&["entries", "--all", "--page-token", "t"]).is_err());
        assert!(parse(&["balances"]).is_err());
        assert!(parse(&["balances", "--card-token", "t", "--cost-center", "c"]).is_err());
        assert!(parse(&["balances", "--cost-center", "c", "--format", "json"]).is_ok());
        let url = "postgres://postgres@127.0.0.1:5432/tandem_orchestrator";
        let Ok(Cli {
            command: LedgerCommand::Check { database_url },
        }) = parse(&["check", "--database-url", url])
        else {
            panic!("check with --database-url does not parse");
        };
        assert_eq!(database_url, url);
    }

    /// `ledger check` prints each currency's journal, then `ok` with what it checked when the
    /// ledger holds, or each violation (and no `ok`) when it does not.
    #[test]
    fn check_report() {
        use tandem_ledger::invariants::{InvariantReport, Journal};
        use tandem_ledger::types::Currency;

        let journal = |currency: &str, debits_posted, credits_posted| Journal {
            currency: Currency::new(currency).expect("an ISO 4217 code"),
            debits_pending: 0,
            credits_pending: 0,
            debits_posted,
            credits_posted,
        };
        let holds = InvariantReport {
            accounts: 9,
            transfers: 14,
            journals: vec![journal("EUR", 1300, 1300), journal("USD", 9075, 9075)],
            violations: Vec::new(),
        };
        assert_eq!(
            check_lines(&holds),
            [
                "EUR journal: debits 1,300 = credits 1,300 (posted)",
                "USD journal: debits 9,075 = credits 9,075 (posted)",
                "ledger check: ok (9 accounts, 14 transfers)",
            ]
        );
        let broken = InvariantReport {
            journals: vec![journal("USD", 9075, 9000)],
            violations: vec![
                "USD: debits pending 0 / posted 9075 differ from credits pending 0 / posted 9000"
                    .to_owned(),
                "account clearing:USD: balances differ from the sum of its transfers".to_owned(),
            ],
            ..holds
        };
        assert_eq!(
            check_lines(&broken),
            [
                "USD journal: debits 9,075 != credits 9,000 (posted)",
                "ledger check: violation: USD: debits pending 0 / posted 9075 differ from \
                 credits pending 0 / posted 9000",
                "ledger check: violation: account clearing:USD: balances differ from the sum of \
                 its transfers",
            ]
        );
    }
}
