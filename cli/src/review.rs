//! `tandemctl review`: the payments a risk assessment holds for review (state IN_REVIEW, every
//! hold in place) on a running orchestrator, with a `reviewer` identity: list them, approve one
//! (its holds are captured) or reject one (every hold is voided; it ends FAILED
//! `REVIEW_REJECTED`). Four eyes: the orchestrator refuses a review by the payment's creator
//! (PERMISSION_DENIED `SAME_IDENTITY`), and a payment nobody decides in time is voided
//! (`REVIEW_EXPIRED`).
//!
//! ```text
//! tandemctl review list [--billing-account acme] [--format table|csv|json]
//! tandemctl review approve pay_... [--note "known customer"] [--request-id ID]
//! tandemctl review reject pay_... --note "address does not match" [--request-id ID]
//! ```
//!
//! `list` follows every page, newest payment first, one line each: the payment, invoice,
//! amount, creator, when its review expires, its risk score and why (each fired rule's
//! explanation). `approve` and `reject` print the payment as the verdict left it (capturing or
//! reversing; follow it with `tandemctl payments watch`). They take `--request-id` (a new UUID
//! by default) and name it when they fail: re-running with the same id is safe. `--account` is
//! short for `--billing-account`.

use anyhow::Context as _;
use tandem_proto::tandem::orchestrator::v1 as pb;
use tandem_proto::tandem::orchestrator::v1::payment_service_client::PaymentServiceClient;
use tandem_tls::identity::Role;

use crate::connect::{
    CALL_TIMEOUT, LIST_PAGES_MAX, OrchestratorTarget, failure, orchestrator_channel, request_id,
};
use crate::payments::{is_terminal, print_payment, state_name};
use crate::print::{Column, Format, Value, print_header, print_row, show_actor};
use crate::risk::{action_name, fired_line};

/// Payments per `ListPayments` call: the most the orchestrator returns.
const PAGE_SIZE: i32 = 100;

type Client = PaymentServiceClient<tonic::transport::Channel>;

/// The review commands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum ReviewCommand {
    /// List the payments waiting for a reviewer, newest first.
    List {
        #[command(flatten)]
        target: OrchestratorTarget,
        /// Only the payments of this billing account.
        #[arg(long = "billing-account", visible_alias = "account", value_name = "ID")]
        billing_account_id: Option<String>,
        /// How to print the payments.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Approve a payment in review: its holds are captured (not as its creator).
    Approve {
        #[command(flatten)]
        target: OrchestratorTarget,
        /// The payment id.
        payment_id: String,
        /// Why (at most 1000 characters, no card number).
        #[arg(long, default_value = "")]
        note: String,
        /// Idempotency key; a new UUID by default.
        #[arg(long)]
        request_id: Option<String>,
    },
    /// Reject a payment in review: every hold is voided and it ends failed (not as its
    /// creator).
    Reject {
        #[command(flatten)]
        target: OrchestratorTarget,
        /// The payment id.
        payment_id: String,
        /// Why (1-1000 characters, no card number).
        #[arg(long)]
        note: String,
        /// Idempotency key; a new UUID by default.
        #[arg(long)]
        request_id: Option<String>,
    },
}

/// Runs a review command.
pub(crate) async fn run(command: ReviewCommand) -> anyhow::Result<()> {
    match command {
        ReviewCommand::List {
            target,
            billing_account_id,
            format,
        } => {
            let mut client = reviewer(&target).await?;
            let mut request = pb::ListPaymentsRequest {
                page_size: PAGE_SIZE,
                state: pb::PaymentState::InReview.into(),
                billing_account_id: billing_account_id.unwrap_or_default(),
                ..Default::default()
            };
            print_header(format, QUEUE_COLUMNS);
            for _ in 0..LIST_PAGES_MAX {
                let page = client
                    .list_payments(request.clone())
                    .await
                    .map_err(failure)?
                    .into_inner();
                for payment in &page.payments {
                    print_row(format, QUEUE_COLUMNS, &queue_row(payment));
                }
                if page.next_page_token.is_empty() {
                    return Ok(());
                }
                request.page_token = page.next_page_token;
            }
            // A listing cut short must not look complete to a script.
            anyhow::bail!(
                "stopped after {LIST_PAGES_MAX} pages; narrow the listing with --billing-account"
            );
        }
        ReviewCommand::Approve {
            target,
            payment_id,
            note,
            request_id: given_id,
        } => {
            decide(
                &target,
                payment_id,
                pb::ReviewVerdict::Approve,
                note,
                given_id,
            )
            .await
        }
        ReviewCommand::Reject {
            target,
            payment_id,
            note,
            request_id: given_id,
        } => {
            decide(
                &target,
                payment_id,
                pb::ReviewVerdict::Reject,
                note,
                given_id,
            )
            .await
        }
    }
}

async fn reviewer(target: &OrchestratorTarget) -> anyhow::Result<Client> {
    Ok(PaymentServiceClient::new(
        orchestrator_channel(target, Role::Reviewer, CALL_TIMEOUT).await?,
    ))
}

/// Records `verdict` on the payment and prints the payment as it left it.
async fn decide(
    target: &OrchestratorTarget,
    payment_id: String,
    verdict: pb::ReviewVerdict,
    note: String,
    given_id: Option<String>,
) -> anyhow::Result<()> {
    let id = request_id(given_id);
    let payment = reviewer(target)
        .await?
        .review_payment(pb::ReviewPaymentRequest {
            request_id: id.clone(),
            payment_id,
            verdict: verdict.into(),
            note,
        })
        .await
        .map_err(failure)
        .with_context(|| format!("request {id}"))?
        .into_inner()
        .payment
        .context("no payment in the response")?;
    print_payment(&payment);
    if !is_terminal(payment.state) {
        println!(
            "\n{}; follow it with: tandemctl payments watch {}",
            state_name(payment.state),
            payment.id
        );
    }
    Ok(())
}

/// The columns of the review queue: people see who asked for what and why it is held, machines
/// also the ids, the assessment's action and the fired rules' names.
const QUEUE_COLUMNS: &[Column] = &[
    Column::text("payment_id", "payment", 30),
    Column::text("invoice_id", "invoice", 16),
    Column::number("amount", "amount", 16),
    Column::machines("currency_code"),
    Column::machines("billing_account_id"),
    Column::machines("card_group_id"),
    Column::people("creator", 24),
    Column::machines("creator_name"),
    Column::machines("creator_role"),
    Column::text("expire_time", "expires", 20),
    Column::number("risk_score", "score", 5),
    Column::machines("risk_action"),
    Column::machines("fired_rules"),
    Column::text("explanations", "why", 0),
];

fn queue_row(payment: &pb::Payment) -> Vec<Value> {
    let amount = payment.invoice.as_ref().and_then(|i| i.amount.clone());
    let currency_code = amount
        .as_ref()
        .map_or("", |a| a.currency_code.as_str())
        .to_owned();
    let creator = payment.creator.as_ref();
    let risk = payment.risk.as_ref();
    let fired = risk.map_or(&[][..], |r| r.fired.as_slice());
    let names: Vec<&str> = fired.iter().map(|f| f.rule.as_str()).collect();
    let explanations: Vec<String> = fired.iter().map(fired_line).collect();
    vec![
        Value::text(&payment.id),
        Value::text(payment.invoice.as_ref().map_or("", |i| i.id.as_str())),
        Value::Money(amount),
        Value::text(currency_code),
        Value::text(&payment.billing_account_id),
        Value::text(&payment.card_group_id),
        Value::text(show_actor(creator)),
        Value::text(creator.map_or("", |a| a.name.as_str())),
        Value::text(creator.map_or("", |a| a.role.as_str())),
        Value::Time(payment.review.as_ref().and_then(|r| r.expire_time)),
        Value::Integer(risk.map_or(0, |r| i64::from(r.score))),
        Value::text(risk.map_or(String::new(), |r| action_name(r.action))),
        Value::text(names.join(",")),
        Value::text(explanations.join("; ")),
    ]
}

#[cfg(test)]
mod tests {
    use tandem_proto::tandem::r#type::v1 as types;

    use super::*;
    use crate::print::{header, row};

    fn held() -> pb::Payment {
        let fired = |rule: &str, score, explanation: &str| pb::RiskRuleFired {
            rule: rule.to_owned(),
            action: pb::RiskAction::Review.into(),
            score,
            explanation: explanation.to_owned(),
            ..Default::default()
        };
        pb::Payment {
            id: "pay_01jabcdefghjkmnpqrstvwxyz0".to_owned(),
            billing_account_id: "acme".to_owned(),
            card_group_id: "cg_1".to_owned(),
            invoice: Some(pb::Invoice {
                id: "INV-7".to_owned(),
                amount: Some(types::Money {
                    currency_code: "USD".to_owned(),
                    minor_units: 2050,
                }),
                ..Default::default()
            }),
            state: pb::PaymentState::InReview.into(),
            creator: Some(types::Actor {
                name: "billing-service".to_owned(),
                role: "payer".to_owned(),
            }),
            risk: Some(pb::RiskAssessment {
                action: pb::RiskAction::Review.into(),
                score: 60,
                fired: vec![
                    fired("big_amount", 50, "20.50 USD is over 5x the median 2.00 USD"),
                    fired("new_card", 10, "card ·4242 was never charged"),
                ],
                ..Default::default()
            }),
            review: Some(pb::PaymentReview {
                expire_time: Some(prost_types::Timestamp {
                    seconds: 1_735_776_000,
                    nanos: 0,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The queue shows one line per payment for people (who asked, for how much, until when,
    /// and why it is held) and the ids, action and rule names for machines.
    #[test]
    fn queue_rows() {
        let values = queue_row(&held());
        assert_eq!(
            header(Format::Table, QUEUE_COLUMNS).unwrap(),
            "payment                         invoice                     amount  creator                   expires               score  why"
        );
        assert_eq!(
            row(Format::Table, QUEUE_COLUMNS, &values),
            "pay_01jabcdefghjkmnpqrstvwxyz0  INV-7                    20.50 USD  billing-service (payer)   2025-01-02T00:00:00Z     60  \
             big_amount (review, +50): 20.50 USD is over 5x the median 2.00 USD; \
             new_card (review, +10): card ·4242 was never charged"
        );
        let json: serde_json::Value =
            serde_json::from_str(&row(Format::Json, QUEUE_COLUMNS, &values)).unwrap();
        assert_eq!(json["payment_id"], "pay_01jabcdefghjkmnpqrstvwxyz0");
        assert_eq!(json["amount"]["minor_units"], 2050);
        assert_eq!(json["creator_name"], "billing-service");
        assert_eq!(json["risk_score"], 60);
        assert_eq!(json["risk_action"], "review");
        assert_eq!(json["fired_rules"], "big_amount,new_card");
        assert_eq!(json["expire_time"], "2025-01-02T00:00:00Z");
        // A payment without an assessment or a review (older than risk) still prints.
        let bare = pb::Payment {
            risk: None,
            review: None,
            ..held()
        };
        let line = row(Format::Table, QUEUE_COLUMNS, &queue_row(&bare));
        assert!(
            line.ends_with(&format!("{:<20}  {:>5}  -", "-", 0)),
            "{line}"
        );
    }

    /// `reject` needs a note, `approve` does not; the queue filters by billing account under
    /// either flag name.
    #[test]
    fn command_line() {
        use clap::Parser as _;
        #[derive(Debug, clap::Parser)]
        struct Cli {
            #[command(subcommand)]
            command: ReviewCommand,
        }
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("review").chain(args.iter().copied()))
        };
        assert!(parse(&["reject", "pay_1"]).is_err());
        assert!(parse(&["reject", "pay_1", "--note", "why"]).is_ok());
        assert!(parse(&["approve", "pay_1"]).is_ok());
        assert!(parse(&["approve"]).is_err());
        for flag in ["--account", "--billing-account"] {
            let Ok(Cli {
                command:
                    ReviewCommand::List {
                        billing_account_id, ..
                    },
            }) = parse(&["list", flag, "acme"])
            else {
                panic!("list {flag} does not parse");
            };
            assert_eq!(billing_account_id.as_deref(), Some("acme"));
        }
    }
}
