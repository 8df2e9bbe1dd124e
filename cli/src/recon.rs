//! `tandemctl recon`: reconcile the ledger with a processor's settlement files and correct what
//! does not match, on a running orchestrator (`ReconciliationService`). `run` and `propose` use
//! a `treasury` identity, `approve` and `reject` an `approver` one (four eyes: the orchestrator
//! refuses an approval by the adjustment's proposer); `show` and `discrepancies` a `treasury`
//! one, or with `--as-reader` / `--as-approver` that identity.
//!
//! ```text
//! tandemctl recon run --processor sandbox --date 2025-01-31 [--request-id ID] \
//!     [--format table|csv|json]
//! tandemctl recon show rcn_... [--format table|csv|json]
//! tandemctl recon discrepancies (--run rcn_... | --processor sandbox [--date 2025-01-31]) \
//!     [--state open|resolved|cleared] [--page-size 100] [--format table|csv|json]
//! tandemctl recon propose dsc_... --amount "0.01 USD" --reason "..." [--request-id ID]
//! tandemctl recon approve adj_... [--request-id ID]
//! tandemctl recon reject adj_... --reason "..." [--request-id ID]
//! ```
//!
//! A run prints as a short block for people; `--format json` prints it as one JSON object and
//! `csv` as a header and one row. `discrepancies` follows every page and prints the listing in
//! the shared formats (see [`crate::print`]). Mutating commands take `--request-id` (a new UUID
//! by default) and name it when they fail: re-running with the same id is safe.

use std::time::Duration;

use anyhow::Context as _;
use tandem_proto::tandem::orchestrator::v1 as pb;
use tandem_proto::tandem::orchestrator::v1::reconciliation_service_client::ReconciliationServiceClient;
use tandem_proto::tandem::r#type::v1 as types;
use tandem_tls::identity::Role;

use crate::amounts::{parse_money, show};
use crate::connect::{
    CALL_TIMEOUT, LIST_PAGES_MAX, OrchestratorTarget, failure, orchestrator_channel, request_id,
};
use crate::ledger::check_day;
use crate::print::{
    Column, Format, Value, header, print_header, print_row, row, show_actor, show_time, value_name,
};

/// How long a run may take: it reads the day's settlement file through the vault, matches
/// every record, and waits its turn behind another run of the same processor and day.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

type Client = ReconciliationServiceClient<tonic::transport::Channel>;

/// Where the orchestrator is and which identity reads runs and discrepancies.
#[derive(Debug, clap::Args)]
pub(crate) struct ReadTarget {
    #[command(flatten)]
    target: OrchestratorTarget,
    /// Use the reader identity instead of the treasury one.
    #[arg(long, conflicts_with = "as_approver")]
    as_reader: bool,
    /// Use the approver identity instead of the treasury one (to review a discrepancy before
    /// approving its adjustment).
    #[arg(long)]
    as_approver: bool,
}

impl ReadTarget {
    fn role(&self) -> Role {
        match (self.as_reader, self.as_approver) {
            (true, _) => Role::Reader,
            (false, true) => Role::Approver,
            (false, false) => Role::Treasury,
        }
    }
}

/// `DiscrepancyState` on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum State {
    /// Found by the latest run of its day; no adjustment approved.
    Open,
    /// An approved adjustment corrected it.
    Resolved,
    /// A later run no longer found it; nothing was booked.
    Cleared,
}

impl From<State> for pb::DiscrepancyState {
    fn from(state: State) -> Self {
        match state {
            State::Open => Self::Open,
            State::Resolved => Self::Resolved,
            State::Cleared => Self::Cleared,
        }
    }
}

/// The reconciliation commands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum ReconCommand {
    /// Reconcile one processor's settlement day (UTC, ended) and print the run.
    Run {
        #[command(flatten)]
        target: OrchestratorTarget,
        /// The processor (connector), e.g. `sandbox`.
        #[arg(long)]
        processor: String,
        /// The settlement day, YYYY-MM-DD (UTC); it must have ended.
        #[arg(long, value_name = "YYYY-MM-DD")]
        date: String,
        /// Idempotency key; a new UUID by default.
        #[arg(long)]
        request_id: Option<String>,
        /// How to print the run.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Show a run.
    Show {
        #[command(flatten)]
        target: ReadTarget,
        /// The run id.
        run_id: String,
        /// How to print the run.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// List the discrepancies of a run's day, or of a processor (and day), oldest first.
    Discrepancies {
        #[command(flatten)]
        target: ReadTarget,
        /// Those of this run's processor and day.
        #[arg(
            long = "run",
            value_name = "RUN_ID",
            required_unless_present = "processor",
            conflicts_with = "processor"
        )]
        run_id: Option<String>,
        /// Those of this processor.
        #[arg(long)]
        processor: Option<String>,
        /// Those of this day, YYYY-MM-DD (with `--processor`).
        // `requires` alone lets `--run --date` through: clap excuses a required argument that
        // conflicts with one present (`--processor` with `--run`).
        #[arg(
            long,
            value_name = "YYYY-MM-DD",
            requires = "processor",
            conflicts_with = "run_id"
        )]
        date: Option<String>,
        /// Only discrepancies in this state.
        #[arg(long, value_enum)]
        state: Option<State>,
        /// Discrepancies per call, 1-1000.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i32).range(1..=1000))]
        page_size: i32,
        /// How to print the discrepancies.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Propose an adjustment that corrects an open discrepancy; nothing is booked until an
    /// approver approves it.
    Propose {
        #[command(flatten)]
        target: OrchestratorTarget,
        /// The discrepancy id.
        discrepancy_id: String,
        /// The discrepancy's correction without its sign, with its currency, e.g. `"0.01 USD"`
        /// (checked by the orchestrator).
        #[arg(long, value_parser = parse_money)]
        amount: types::Money,
        /// Why (1-1000 characters, no card number).
        #[arg(long)]
        reason: String,
        /// Idempotency key; a new UUID by default.
        #[arg(long)]
        request_id: Option<String>,
    },
    /// Approve a proposed adjustment and post its transfers (not as its proposer).
    Approve {
        #[command(flatten)]
        target: OrchestratorTarget,
        /// The adjustment id.
        adjustment_id: String,
        /// Idempotency key; a new UUID by default.
        #[arg(long)]
        request_id: Option<String>,
    },
    /// Reject a proposed adjustment; its discrepancy is open again.
    Reject {
        #[command(flatten)]
        target: OrchestratorTarget,
        /// The adjustment id.
        adjustment_id: String,
        /// Why (1-1000 characters, no card number).
        #[arg(long)]
        reason: String,
        /// Idempotency key; a new UUID by default.
        #[arg(long)]
        request_id: Option<String>,
    },
}

/// Runs a reconciliation command.
pub(crate) async fn run(command: ReconCommand) -> anyhow::Result<()> {
    match command {
        ReconCommand::Run {
            target,
            processor,
            date,
            request_id: given_id,
            format,
        } => {
            check_day("--date", &date)?;
            let id = request_id(given_id);
            let mut client = client(&target, Role::Treasury, RUN_TIMEOUT).await?;
            let run = client
                .run_reconciliation(pb::RunReconciliationRequest {
                    request_id: id.clone(),
                    processor,
                    settlement_date: date,
                })
                .await
                .map_err(failure)
                .with_context(|| format!("request {id}"))?
                .into_inner()
                .run
                .context("no run in the response")?;
            println!("{}", render_run(format, &run));
        }
        ReconCommand::Show {
            target,
            run_id,
            format,
        } => {
            let mut client = client(&target.target, target.role(), CALL_TIMEOUT).await?;
            let run = client
                .get_reconciliation_run(pb::GetReconciliationRunRequest { run_id })
                .await
                .map_err(failure)?
                .into_inner()
                .run
                .context("no run in the response")?;
            println!("{}", render_run(format, &run));
        }
        ReconCommand::Discrepancies {
            target,
            run_id,
            processor,
            date,
            state,
            page_size,
            format,
        } => {
            if let Some(date) = &date {
                check_day("--date", date)?;
            }
            let mut request = pb::ListDiscrepanciesRequest {
                page_size,
                page_token: String::new(),
                run_id: run_id.unwrap_or_default(),
                processor: processor.unwrap_or_default(),
                settlement_date: date.unwrap_or_default(),
                state: state
                    .map_or(pb::DiscrepancyState::Unspecified, From::from)
                    .into(),
            };
            let mut client = client(&target.target, target.role(), CALL_TIMEOUT).await?;
            print_header(format, DISCREPANCY_COLUMNS);
            for _ in 0..LIST_PAGES_MAX {
                let page = client
                    .list_discrepancies(request.clone())
                    .await
                    .map_err(failure)?
                    .into_inner();
                for discrepancy in &page.discrepancies {
                    print_row(format, DISCREPANCY_COLUMNS, &discrepancy_row(discrepancy));
                }
                if page.next_page_token.is_empty() {
                    return Ok(());
                }
                request.page_token = page.next_page_token;
            }
            // A listing cut short must not look complete to a script.
            anyhow::bail!(
                "stopped after {LIST_PAGES_MAX} pages; narrow the listing with --state or --date"
            );
        }
        ReconCommand::Propose {
            target,
            discrepancy_id,
            amount,
            reason,
            request_id: given_id,
        } => {
            let id = request_id(given_id);
            let mut client = client(&target, Role::Treasury, CALL_TIMEOUT).await?;
            let adjustment = client
                .propose_adjustment(pb::ProposeAdjustmentRequest {
                    request_id: id.clone(),
                    discrepancy_id,
                    amount: Some(amount),
                    reason,
                })
                .await
                .map_err(failure)
                .with_context(|| format!("request {id}"))?
                .into_inner()
                .adjustment;
            print_adjustment(adjustment)?;
        }
        ReconCommand::Approve {
            target,
            adjustment_id,
            request_id: given_id,
        } => {
            let id = request_id(given_id);
            let mut client = client(&target, Role::Approver, CALL_TIMEOUT).await?;
            let adjustment = client
                .approve_adjustment(pb::ApproveAdjustmentRequest {
                    request_id: id.clone(),
                    adjustment_id,
                })
                .await
                .map_err(failure)
                .with_context(|| format!("request {id}"))?
                .into_inner()
                .adjustment;
            print_adjustment(adjustment)?;
        }
        ReconCommand::Reject {
            target,
            adjustment_id,
            reason,
            request_id: given_id,
        } => {
            let id = request_id(given_id);
            let mut client = client(&target, Role::Approver, CALL_TIMEOUT).await?;
            let adjustment = client
                .reject_adjustment(pb::RejectAdjustmentRequest {
                    request_id: id.clone(),
                    adjustment_id,
                    reason,
                })
                .await
                .map_err(failure)
                .with_context(|| format!("request {id}"))?
                .into_inner()
                .adjustment;
            print_adjustment(adjustment)?;
        }
    }
    Ok(())
}

async fn client(
    target: &OrchestratorTarget,
    role: Role,
    call_timeout: Duration,
) -> anyhow::Result<Client> {
    Ok(ReconciliationServiceClient::new(
        orchestrator_channel(target, role, call_timeout).await?,
    ))
}

/// A run for people (a short block) or machines (one CSV row under its header, or one JSON
/// object).
fn render_run(format: Format, run: &pb::ReconciliationRun) -> String {
    let values = run_row(run);
    match format {
        Format::Table => render_run_block(run),
        Format::Csv | Format::Json => header(format, RUN_COLUMNS)
            .into_iter()
            .chain([row(format, RUN_COLUMNS, &values)])
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

fn render_run_block(run: &pb::ReconciliationRun) -> String {
    let mut lines = vec![
        format!("run {}  {}  {}", run.id, run.processor, run.settlement_date),
        format!(
            "by {}, {} to {}",
            show_actor(run.actor.as_ref()),
            show_time(run.start_time.as_ref().map(|t| t.seconds)),
            show_time(run.finish_time.as_ref().map(|t| t.seconds))
        ),
    ];
    let counts = [
        ("records", run.records),
        ("matched", run.matched),
        ("missing in ledger", run.missing_in_ledger),
        ("missing at processor", run.missing_at_processor),
        ("amount mismatch", run.amount_mismatch),
        ("currency mismatch", run.currency_mismatch),
        ("duplicate settlement", run.duplicate_settlement),
        ("pending", run.pending),
        ("resolved", run.resolved),
    ];
    lines.extend(
        counts
            .iter()
            .map(|(label, count)| format!("{label:<20}  {count:>8}")),
    );
    lines.join("\n")
}

/// The columns of a run for machines (people get [`render_run_block`]).
const RUN_COLUMNS: &[Column] = &[
    Column::machines("id"),
    Column::machines("processor"),
    Column::machines("settlement_date"),
    Column::machines("actor_name"),
    Column::machines("actor_role"),
    Column::machines("records"),
    Column::machines("matched"),
    Column::machines("missing_in_ledger"),
    Column::machines("missing_at_processor"),
    Column::machines("amount_mismatch"),
    Column::machines("currency_mismatch"),
    Column::machines("duplicate_settlement"),
    Column::machines("pending"),
    Column::machines("resolved"),
    Column::machines("start_time"),
    Column::machines("finish_time"),
];

fn run_row(run: &pb::ReconciliationRun) -> Vec<Value> {
    let actor = run.actor.as_ref();
    vec![
        Value::text(&run.id),
        Value::text(&run.processor),
        Value::text(&run.settlement_date),
        Value::text(actor.map_or("", |a| a.name.as_str())),
        Value::text(actor.map_or("", |a| a.role.as_str())),
        Value::Integer(run.records),
        Value::Integer(run.matched),
        Value::Integer(run.missing_in_ledger),
        Value::Integer(run.missing_at_processor),
        Value::Integer(run.amount_mismatch),
        Value::Integer(run.currency_mismatch),
        Value::Integer(run.duplicate_settlement),
        Value::Integer(run.pending),
        Value::Integer(run.resolved),
        Value::Time(run.start_time),
        Value::Time(run.finish_time),
    ]
}

/// The columns of `recon discrepancies`: people see what, how it stands, the three amounts,
/// the payment's leg and the adjustment; machines also get the processor and day, each
/// amount's currency on its own, the record and ledger entry, and the runs.
const DISCREPANCY_COLUMNS: &[Column] = &[
    Column::text("id", "id", 30),
    Column::machines("processor"),
    Column::machines("settlement_date"),
    Column::text("class", "class", 20),
    Column::text("state", "state", 8),
    Column::text("type", "type", 7),
    Column::text("processor_reference", "reference", 30),
    Column::machines("record_id"),
    Column::number("settled_amount", "settled", 16),
    Column::machines("settled_currency_code"),
    Column::machines("settle_time"),
    Column::machines("ledger_entry_id"),
    Column::number("ledger_amount", "ledger", 16),
    Column::machines("ledger_currency_code"),
    Column::number("correction", "correction", 16),
    Column::machines("correction_currency_code"),
    Column::people("payment/leg", 36),
    Column::machines("payment_id"),
    Column::machines("leg_id"),
    Column::text("adjustment_id", "adjustment", 30),
    Column::machines("first_run_id"),
    Column::machines("last_run_id"),
];

fn discrepancy_row(discrepancy: &pb::Discrepancy) -> Vec<Value> {
    let currency = |money: &Option<types::Money>| {
        Value::text(money.as_ref().map_or("", |m| m.currency_code.as_str()))
    };
    // The leg names its payment (`<payment>/leg/<n>`); a payment alone when there is no leg.
    let payment_or_leg = if discrepancy.leg_id.is_empty() {
        &discrepancy.payment_id
    } else {
        &discrepancy.leg_id
    };
    vec![
        Value::text(&discrepancy.id),
        Value::text(&discrepancy.processor),
        Value::text(&discrepancy.settlement_date),
        Value::Text(value_name(
            discrepancy.class,
            "DISCREPANCY_CLASS_",
            pb::DiscrepancyClass::as_str_name,
        )),
        Value::Text(value_name(
            discrepancy.state,
            "DISCREPANCY_STATE_",
            pb::DiscrepancyState::as_str_name,
        )),
        Value::Text(value_name(
            discrepancy.r#type,
            "SETTLEMENT_TYPE_",
            pb::SettlementType::as_str_name,
        )),
        Value::text(&discrepancy.processor_reference),
        Value::text(&discrepancy.record_id),
        Value::Money(discrepancy.settled_amount.clone()),
        currency(&discrepancy.settled_amount),
        Value::Time(discrepancy.settle_time),
        Value::text(&discrepancy.ledger_entry_id),
        Value::Money(discrepancy.ledger_amount.clone()),
        currency(&discrepancy.ledger_amount),
        Value::Money(discrepancy.correction.clone()),
        currency(&discrepancy.correction),
        Value::text(payment_or_leg),
        Value::text(&discrepancy.payment_id),
        Value::text(&discrepancy.leg_id),
        Value::text(&discrepancy.adjustment_id),
        Value::text(&discrepancy.first_run_id),
        Value::text(&discrepancy.last_run_id),
    ]
}

/// Prints the adjustment of a response.
fn print_adjustment(adjustment: Option<pb::Adjustment>) -> anyhow::Result<()> {
    let adjustment = adjustment.context("no adjustment in the response")?;
    println!("{}", render_adjustment(&adjustment));
    Ok(())
}

/// An adjustment: a header line, who proposed it and why, who decided and why, and the
/// transfers its approval posted.
fn render_adjustment(adjustment: &pb::Adjustment) -> String {
    let state = value_name(
        adjustment.state,
        "ADJUSTMENT_STATE_",
        pb::AdjustmentState::as_str_name,
    );
    let mut lines = vec![format!(
        "adjustment {}  {}  {}  discrepancy {}",
        adjustment.id,
        state,
        show(adjustment.amount.as_ref()),
        adjustment.discrepancy_id
    )];
    lines.push(format!(
        "proposed {} by {}",
        show_time(adjustment.propose_time.as_ref().map(|t| t.seconds)),
        show_actor(adjustment.proposer.as_ref())
    ));
    // A reason may span lines; each is indented under its heading.
    lines.extend(adjustment.reason.lines().map(|line| format!("  {line}")));
    if adjustment.decider.is_some() {
        lines.push(format!(
            "{state} {} by {}",
            show_time(adjustment.decide_time.as_ref().map(|t| t.seconds)),
            show_actor(adjustment.decider.as_ref())
        ));
        lines.extend(
            adjustment
                .decision_reason
                .lines()
                .map(|line| format!("  {line}")),
        );
    }
    lines.extend(
        adjustment
            .ledger_entry_ids
            .iter()
            .map(|id| format!("transfer {id}")),
    );
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn money(currency_code: &str, minor_units: i64) -> Option<types::Money> {
        Some(types::Money {
            currency_code: currency_code.to_owned(),
            minor_units,
        })
    }

    fn time(seconds: i64) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp { seconds, nanos: 0 })
    }

    /// Three discrepancies of a day: an amount mismatch on a capture, a refund the processor
    /// never reported (no record, no settled amount) and a currency mismatch corrected in the
    /// settled currency.
    fn discrepancies() -> Vec<pb::Discrepancy> {
        let base = pb::Discrepancy {
            processor: "sandbox".to_owned(),
            settlement_date: "2025-01-31".to_owned(),
            state: pb::DiscrepancyState::Open.into(),
            first_run_id: "rcn_1".to_owned(),
            last_run_id: "rcn_2".to_owned(),
            ..Default::default()
        };
        vec![
            pb::Discrepancy {
                id: "dsc_1".to_owned(),
                class: pb::DiscrepancyClass::AmountMismatch.into(),
                state: pb::DiscrepancyState::Resolved.into(),
                processor_reference: "sbx_1".to_owned(),
                r#type: pb::SettlementType::Capture.into(),
                record_id: "rec_1".to_owned(),
                settled_amount: money("USD", 2051),
                settle_time: time(1_738_368_000),
                ledger_entry_id: "pay_1/leg/1/capture".to_owned(),
                ledger_amount: money("USD", 2050),
                payment_id: "pay_1".to_owned(),
                leg_id: "pay_1/leg/1".to_owned(),
                correction: money("USD", 1),
                adjustment_id: "adj_1".to_owned(),
                ..base.clone()
            },
            pb::Discrepancy {
                id: "dsc_2".to_owned(),
                class: pb::DiscrepancyClass::MissingAtProcessor.into(),
                processor_reference: "sbx_2".to_owned(),
                r#type: pb::SettlementType::Refund.into(),
                ledger_entry_id: "prf_1".to_owned(),
                ledger_amount: money("USD", 500),
                payment_id: "pay_2".to_owned(),
                correction: money("USD", 500),
                ..base.clone()
            },
            pb::Discrepancy {
                id: "dsc_3".to_owned(),
                class: pb::DiscrepancyClass::CurrencyMismatch.into(),
                processor_reference: "sbx_3".to_owned(),
                r#type: pb::SettlementType::Capture.into(),
                record_id: "rec_3".to_owned(),
                settled_amount: money("EUR", 1900),
                settle_time: time(1_738_368_000),
                ledger_entry_id: "pay_3/leg/2/capture".to_owned(),
                ledger_amount: money("USD", 2000),
                payment_id: "pay_3".to_owned(),
                leg_id: "pay_3/leg/2".to_owned(),
                correction: money("EUR", 1900),
                ..base
            },
        ]
    }

    fn listing(format: Format) -> Vec<String> {
        header(format, DISCREPANCY_COLUMNS)
            .into_iter()
            .chain(
                discrepancies()
                    .iter()
                    .map(|d| row(format, DISCREPANCY_COLUMNS, &discrepancy_row(d))),
            )
            .collect()
    }

    /// The table shows class, state and type by their short names, the amounts with their
    /// currency (`-` where a side has none) and the leg, or the payment when there is no leg.
    #[test]
    fn discrepancy_table() {
        assert_eq!(
            listing(Format::Table),
            [
                "id                              class                 state     type     reference                                settled            ledger        correction  payment/leg                           adjustment",
                "dsc_1                           amount_mismatch       resolved  capture  sbx_1                                  20.51 USD         20.50 USD          0.01 USD  pay_1/leg/1                           adj_1",
                "dsc_2                           missing_at_processor  open      refund   sbx_2                                          -          5.00 USD          5.00 USD  pay_2                                 -",
                "dsc_3                           currency_mismatch     open      capture  sbx_3                                  19.00 EUR         20.00 USD         19.00 EUR  pay_3/leg/2                           -",
            ]
        );
    }

    /// CSV gives every field under its proto name, each amount as a decimal beside its own
    /// currency column (a currency mismatch has two), and empty fields where a side has none.
    #[test]
    fn discrepancy_csv() {
        assert_eq!(
            listing(Format::Csv),
            [
                "id,processor,settlement_date,class,state,type,processor_reference,record_id,settled_amount,settled_currency_code,settle_time,ledger_entry_id,ledger_amount,ledger_currency_code,correction,correction_currency_code,payment_id,leg_id,adjustment_id,first_run_id,last_run_id",
                "dsc_1,sandbox,2025-01-31,amount_mismatch,resolved,capture,sbx_1,rec_1,20.51,USD,2025-02-01T00:00:00Z,pay_1/leg/1/capture,20.50,USD,0.01,USD,pay_1,pay_1/leg/1,adj_1,rcn_1,rcn_2",
                "dsc_2,sandbox,2025-01-31,missing_at_processor,open,refund,sbx_2,,,,,prf_1,5.00,USD,5.00,USD,pay_2,,,rcn_1,rcn_2",
                "dsc_3,sandbox,2025-01-31,currency_mismatch,open,capture,sbx_3,rec_3,19.00,EUR,2025-02-01T00:00:00Z,pay_3/leg/2/capture,20.00,USD,19.00,EUR,pay_3,pay_3/leg/2,,rcn_1,rcn_2",
            ]
        );
    }

    /// JSON lines key each discrepancy as the CSV header does, amounts in minor units with
    /// their currency and `null` where a side has none.
    #[test]
    fn discrepancy_json() {
        let lines = listing(Format::Json);
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines[1],
            r#"{"id":"dsc_2","processor":"sandbox","settlement_date":"2025-01-31","class":"missing_at_processor","state":"open","type":"refund","processor_reference":"sbx_2","record_id":"","settled_amount":null,"settled_currency_code":"","settle_time":null,"ledger_entry_id":"prf_1","ledger_amount":{"currency_code":"USD","minor_units":500},"ledger_currency_code":"USD","correction":{"currency_code":"USD","minor_units":500},"correction_currency_code":"USD","payment_id":"pay_2","leg_id":"","adjustment_id":"","first_run_id":"rcn_1","last_run_id":"rcn_2"}"#
        );
    }

    fn sample_run() -> pb::ReconciliationRun {
        pb::ReconciliationRun {
            id: "rcn_1".to_owned(),
            processor: "sandbox".to_owned(),
            settlement_date: "2025-01-31".to_owned(),
            actor: Some(types::Actor {
                name: "alice".to_owned(),
                role: "treasury".to_owned(),
            }),
            records: 120,
            matched: 115,
            missing_in_ledger: 1,
            missing_at_processor: 1,
            amount_mismatch: 2,
            currency_mismatch: 0,
            duplicate_settlement: 1,
            pending: 3,
            resolved: 1,
            start_time: time(1_738_368_005),
            finish_time: Some(prost_types::Timestamp {
                seconds: 1_738_368_007,
                nanos: 500_000_000,
            }),
        }
    }

    /// A run prints for people as its subject, who ran it and when, and one count per line;
    /// as JSON, as one object keyed by the proto's field names.
    #[test]
    fn runs() {
        assert_eq!(
            render_run(Format::Table, &sample_run()),
            "\
run rcn_1  sandbox  2025-01-31
by alice (treasury), 2025-02-01T00:00:05Z to 2025-02-01T00:00:07Z
records                    120
matched                    115
missing in ledger            1
missing at processor         1
amount mismatch              2
currency mismatch            0
duplicate settlement         1
pending                      3
resolved                     1"
        );
        assert_eq!(
            render_run(Format::Json, &sample_run()),
            r#"{"id":"rcn_1","processor":"sandbox","settlement_date":"2025-01-31","actor_name":"alice","actor_role":"treasury","records":120,"matched":115,"missing_in_ledger":1,"missing_at_processor":1,"amount_mismatch":2,"currency_mismatch":0,"duplicate_settlement":1,"pending":3,"resolved":1,"start_time":"2025-02-01T00:00:05Z","finish_time":"2025-02-01T00:00:07.5Z"}"#
        );
        assert_eq!(
            render_run(Format::Csv, &sample_run()),
            "\
id,processor,settlement_date,actor_name,actor_role,records,matched,missing_in_ledger,missing_at_processor,amount_mismatch,currency_mismatch,duplicate_settlement,pending,resolved,start_time,finish_time
rcn_1,sandbox,2025-01-31,alice,treasury,120,115,1,1,2,0,1,3,1,2025-02-01T00:00:05Z,2025-02-01T00:00:07.5Z"
        );
    }

    /// An adjustment prints its state, amount and discrepancy, the proposer and the reason,
    /// the decider and theirs, and the transfers its approval posted; a proposed one has no
    /// decision line.
    #[test]
    fn adjustments() {
        let proposed = pb::Adjustment {
            id: "adj_1".to_owned(),
            discrepancy_id: "dsc_1".to_owned(),
            state: pb::AdjustmentState::Proposed.into(),
            amount: money("USD", 1),
            reason: "processor rounding\nticket OPS-7".to_owned(),
            proposer: Some(types::Actor {
                name: "alice".to_owned(),
                role: "treasury".to_owned(),
            }),
            propose_time: time(1_738_400_000),
            ..Default::default()
        };
        assert_eq!(
            render_adjustment(&proposed),
            "\
adjustment adj_1  proposed  0.01 USD  discrepancy dsc_1
proposed 2025-02-01T08:53:20Z by alice (treasury)
  processor rounding
  ticket OPS-7"
        );
        let approved = pb::Adjustment {
            state: pb::AdjustmentState::Approved.into(),
            decider: Some(types::Actor {
                name: "bob-approver".to_owned(),
                role: "approver".to_owned(),
            }),
            decide_time: time(1_738_403_600),
            ledger_entry_ids: vec![
                "dsc_1/adjustment/adj_1/1".to_owned(),
                "dsc_1/adjustment/adj_1/2".to_owned(),
            ],
            ..proposed.clone()
        };
        assert_eq!(
            render_adjustment(&approved),
            "\
adjustment adj_1  approved  0.01 USD  discrepancy dsc_1
proposed 2025-02-01T08:53:20Z by alice (treasury)
  processor rounding
  ticket OPS-7
approved 2025-02-01T09:53:20Z by bob-approver (approver)
transfer dsc_1/adjustment/adj_1/1
transfer dsc_1/adjustment/adj_1/2"
        );
        let rejected = pb::Adjustment {
            state: pb::AdjustmentState::Rejected.into(),
            decision_reason: "not a rounding issue".to_owned(),
            ledger_entry_ids: Vec::new(),
            ..approved
        };
        assert!(
            render_adjustment(&rejected).ends_with(
                "\nrejected 2025-02-01T09:53:20Z by bob-approver (approver)\n  not a rounding issue"
            ),
            "{}",
            render_adjustment(&rejected)
        );
    }

    /// The command line: `discrepancies` needs a run or a processor but not both, `--date`
    /// only with `--processor`, and states by name; `propose` checks its amount while parsing;
    /// reads pick one identity.
    #[test]
    fn command_line() {
        use clap::Parser as _;
        #[derive(Debug, clap::Parser)]
        struct Cli {
            #[command(subcommand)]
            command: ReconCommand,
        }
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("recon").chain(args.iter().copied()))
        };
        assert!(parse(&["discrepancies"]).is_err());
        assert!(parse(&["discrepancies", "--run", "rcn_1"]).is_ok());
        assert!(parse(&["discrepancies", "--run", "rcn_1", "--processor", "sandbox"]).is_err());
        assert!(parse(&["discrepancies", "--run", "rcn_1", "--date", "2025-01-31"]).is_err());
        assert!(parse(&["discrepancies", "--processor", "sandbox"]).is_ok());
        let Ok(Cli {
            command:
                ReconCommand::Discrepancies {
                    processor,
                    date,
                    state: Some(state),
                    format: Format::Csv,
                    ..
                },
        }) = parse(&[
            "discrepancies",
            "--processor",
            "sandbox",
            "--date",
            "2025-01-31",
            "--state",
            "open",
            "--format",
            "csv",
        ])
        else {
            panic!("discrepancies of a processor's day does not parse");
        };
        assert_eq!(processor.as_deref(), Some("sandbox"));
        assert_eq!(date.as_deref(), Some("2025-01-31"));
        assert_eq!(
            pb::DiscrepancyState::from(state),
            pb::DiscrepancyState::Open
        );
        assert!(parse(&["discrepancies", "--run", "r", "--state", "pending"]).is_err());

        let Ok(Cli {
            command: ReconCommand::Propose { amount, .. },
        }) = parse(&["propose", "dsc_1", "--amount", "0.01 USD", "--reason", "r"])
        else {
            panic!("propose does not parse");
        };
        assert_eq!(
            (amount.currency_code.as_str(), amount.minor_units),
            ("USD", 1)
        );
        assert!(parse(&["propose", "dsc_1", "--amount", "0.01", "--reason", "r"]).is_err());
        assert!(parse(&["propose", "dsc_1", "--amount", "0.01 USD"]).is_err());
        assert!(parse(&["reject", "adj_1"]).is_err());
        assert!(parse(&["approve", "adj_1", "--request-id", "r1"]).is_ok());
        assert!(parse(&["run", "--processor", "sandbox"]).is_err());

        let role = |args: &[&str]| match parse(&[&["show", "rcn_1"][..], args].concat()) {
            Ok(Cli {
                command: ReconCommand::Show { target, .. },
            }) => Some(target.role()),
            _ => None,
        };
        assert_eq!(role(&[]), Some(Role::Treasury));
        assert_eq!(role(&["--as-reader"]), Some(Role::Reader));
        assert_eq!(role(&["--as-approver"]), Some(Role::Approver));
        assert_eq!(role(&["--as-reader", "--as-approver"]), None);
    }
}
