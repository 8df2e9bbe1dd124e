//! `tandemctl pay`, `tandemctl payments` and `tandemctl refund`: pay invoices from card groups
//! and follow the payments on a running orchestrator. `pay`, `refund` and `payments note` use
//! a `payer` identity (`payments note --as-treasury` a `treasury` one), the other `payments`
//! commands a `reader` one.
//!
//! ```text
//! tandemctl pay --group cg_... --invoice INV-1 --amount 20.50 --currency USD \
//!     [--description "..."] [--cost-center ops] [--note "..."] [--strategy ... (the policy
//!     flags of `groups create`, for this payment only)] [--no-wait]
//! tandemctl payments show pay_...
//! tandemctl payments list [--group cg_...] [--state succeeded] [--invoice INV-1] \
//!     [--billing-account acct-42] [--page-size 50]
//! tandemctl payments watch pay_... [--after 0]
//! tandemctl payments note pay_... "authorized by phone with the bank" [--as-treasury]
//! tandemctl refund pay_... [--amount 5.00] [--reason "credit note"]
//! ```
//!
//! `pay` waits until the payment is terminal or held for review (at most 30 s) unless
//! `--no-wait`. A payment that could not be covered is not an error of the command: it is
//! printed in state `failed` or `partially_paid` with the attempts that say why; one its risk
//! assessment holds, in state `in_review` (see `tandemctl review`). Mutating commands take `--request-id` (a new
//! UUID by default): re-running a command with the same id is safe.

use std::time::Duration;

use anyhow::Context as _;
use tandem_proto::tandem::orchestrator::v1 as pb;
use tandem_proto::tandem::orchestrator::v1::payment_service_client::PaymentServiceClient;
use tandem_proto::tandem::r#type::v1 as types;
use tandem_tls::identity::Role;

use crate::amounts::{parse_amount, show, wire};
use crate::connect::{
    CALL_TIMEOUT, LIST_PAGES_MAX, OrchestratorTarget, failure, orchestrator_channel, request_id,
};
use crate::policy::PolicyArgs;
use crate::print::{column_width, show_actor, show_time, value_name};
use crate::risk::{assessment_line, fired_line};

/// How long `pay` asks the orchestrator to wait for the payment to finish (its default).
const WAIT_TIMEOUT_MS: u32 = 30_000;

/// The deadline `refund` gives the orchestrator; past it the refund carries on in the
/// background and the command prints it as pending.
const REFUND_DEADLINE: Duration = Duration::from_secs(30);

/// Time on top of a server-side wait for the answer to arrive before the client gives up.
const ANSWER_SLACK: Duration = Duration::from_secs(10);

type Client = PaymentServiceClient<tonic::transport::Channel>;

/// Arguments of `tandemctl pay`.
#[derive(Debug, clap::Args)]
pub(crate) struct PayArgs {
    #[command(flatten)]
    target: OrchestratorTarget,
    /// The card group to pay from.
    #[arg(long = "group", value_name = "CARD_GROUP_ID")]
    card_group_id: String,
    /// The caller's invoice id.
    #[arg(long = "invoice", value_name = "INVOICE_ID")]
    invoice_id: String,
    /// The amount in major units, e.g. `20.50`.
    #[arg(long)]
    amount: String,
    /// ISO 4217 currency code of the invoice (and of `--fixed` amounts).
    #[arg(long, default_value = "USD")]
    currency: String,
    /// What the invoice is for; sent to the vault as each charge's description.
    #[arg(long, default_value = "")]
    description: String,
    /// The cost center the invoice is booked to.
    #[arg(long, default_value = "")]
    cost_center: String,
    /// An operator note to record with the payment.
    #[arg(long, default_value = "")]
    note: String,
    /// An invoice line, repeatable: its amount in major units of the invoice's currency,
    /// optionally with the currency of the cards that pay it under BY_CURRENCY (`80.00:JPY`,
    /// converted at the rate). The lines sum to `--amount`.
    #[arg(long = "line", value_name = "AMOUNT[:CURRENCY]")]
    lines: Vec<String>,
    /// A policy for this payment only; the group's default without `--strategy`.
    #[command(flatten)]
    policy: PolicyArgs,
    /// Return at once, with the payment as it is, instead of waiting until it is terminal.
    #[arg(long)]
    no_wait: bool,
    /// Idempotency key; a new UUID by default.
    #[arg(long)]
    request_id: Option<String>,
}

/// Arguments of `tandemctl refund`.
#[derive(Debug, clap::Args)]
pub(crate) struct RefundArgs {
    #[command(flatten)]
    target: OrchestratorTarget,
    /// The payment id.
    payment_id: String,
    /// The amount in major units of the invoice's currency; all that is refundable by default.
    #[arg(long)]
    amount: Option<String>,
    /// Why the money is returned.
    #[arg(long, default_value = "")]
    reason: String,
    /// Idempotency key; a new UUID by default.
    #[arg(long)]
    request_id: Option<String>,
}

/// The payment read commands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum PaymentsCommand {
    /// Show a payment with its legs, attempts and refunds.
    Show {
        #[command(flatten)]
        target: OrchestratorTarget,
        /// The payment id.
        payment_id: String,
    },
    /// List payments, newest first.
    List {
        #[command(flatten)]
        target: OrchestratorTarget,
        /// Only payments from this card group.
        #[arg(long = "group", value_name = "CARD_GROUP_ID")]
        card_group_id: Option<String>,
        /// Only payments in this state.
        #[arg(long, value_enum)]
        state: Option<State>,
        /// Only payments of this invoice id.
        #[arg(long = "invoice", value_name = "INVOICE_ID")]
        invoice_id: Option<String>,
        /// Only payments of this billing account.
        #[arg(long)]
        billing_account: Option<String>,
        /// Payments per call, 1-100.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i32).range(1..=100))]
        page_size: i32,
    },
    /// Print a payment's events as they happen, until the payment is done.
    Watch {
        #[command(flatten)]
        target: OrchestratorTarget,
        /// The payment id.
        payment_id: String,
        /// Only events after this sequence number (0 for every event).
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i64).range(0..))]
        after: i64,
    },
    /// Resolve a payment in needs_operator (the vault refused a capture or void for good), as
    /// the treasury: --retry sends the refused operations again under new request ids,
    /// --confirm records them as done (after checking at the processor that they took effect).
    Resolve {
        #[command(flatten)]
        target: OrchestratorTarget,
        /// The payment id.
        payment_id: String,
        /// Send the refused captures or voids again.
        #[arg(long, conflicts_with = "confirm", required_unless_present = "confirm")]
        retry: bool,
        /// Record the refused captures or voids as done at the processor.
        #[arg(long)]
        confirm: bool,
        /// Why (what the processor showed): 1-1000 characters, no card number.
        #[arg(long)]
        note: String,
        /// Idempotency key; a new UUID by default.
        #[arg(long)]
        request_id: Option<String>,
    },
    /// Add an operator note to a payment (notes are append-only).
    Note {
        #[command(flatten)]
        target: OrchestratorTarget,
        /// The payment id.
        payment_id: String,
        /// The note: 1-1000 characters, no card number.
        text: String,
        /// Use the treasury identity instead of the payer one.
        #[arg(long)]
        as_treasury: bool,
        /// Idempotency key; a new UUID by default.
        #[arg(long)]
        request_id: Option<String>,
    },
}

/// `PaymentState` on the command line; the underscore spellings that the output uses work too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum State {
    Pending,
    Authorizing,
    #[value(alias = "in_review")]
    InReview,
    Capturing,
    Succeeded,
    #[value(alias = "partially_paid")]
    PartiallyPaid,
    Reversing,
    Failed,
    #[value(alias = "partially_refunded")]
    PartiallyRefunded,
    Refunded,
    #[value(alias = "needs_operator")]
    NeedsOperator,
}

impl From<State> for pb::PaymentState {
    fn from(state: State) -> Self {
        match state {
            State::Pending => Self::Pending,
            State::Authorizing => Self::Authorizing,
            State::InReview => Self::InReview,
            State::Capturing => Self::Capturing,
            State::Succeeded => Self::Succeeded,
            State::PartiallyPaid => Self::PartiallyPaid,
            State::Reversing => Self::Reversing,
            State::Failed => Self::Failed,
            State::PartiallyRefunded => Self::PartiallyRefunded,
            State::Refunded => Self::Refunded,
            State::NeedsOperator => Self::NeedsOperator,
        }
    }
}

/// An invoice line of `--line AMOUNT[:CURRENCY]`: the amount in the invoice's `currency`, the
/// cards' currency when given.
fn invoice_line(text: &str, currency: &str) -> anyhow::Result<pb::InvoiceLine> {
    let (amount, cards) = match text.split_once(':') {
        Some((amount, cards)) => (amount, cards),
        None => (text, ""),
    };
    let amount = parse_amount(amount, currency)
        .with_context(|| format!("--line {text}: the amount, in {currency}"))?;
    anyhow::ensure!(
        cards.is_empty() || tandem_money::Currency::parse(cards).is_ok(),
        "--line {text}: the currency after ':' must be an active ISO 4217 code such as JPY"
    );
    Ok(pb::InvoiceLine {
        amount: Some(wire(amount)),
        currency_code: cards.to_owned(),
        ..Default::default()
    })
}

/// Runs `tandemctl pay`: creates the payment, by default waits for it, and prints it.
pub(crate) async fn pay(args: PayArgs) -> anyhow::Result<()> {
    let amount = parse_amount(&args.amount, &args.currency)?;
    let lines = args
        .lines
        .iter()
        .map(|line| invoice_line(line, &args.currency))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let policy_override = args.policy.policy(&args.currency)?;
    let id = request_id(args.request_id);
    let wait = !args.no_wait;
    let call_timeout = if wait {
        Duration::from_millis(u64::from(WAIT_TIMEOUT_MS)) + ANSWER_SLACK
    } else {
        CALL_TIMEOUT
    };
    let mut client = PaymentServiceClient::new(
        orchestrator_channel(&args.target, Role::Payer, call_timeout).await?,
    );
    let payment = client
        .create_payment(pb::CreatePaymentRequest {
            request_id: id.clone(),
            invoice: Some(pb::Invoice {
                id: args.invoice_id,
                amount: Some(wire(amount)),
                description: args.description,
                cost_center: args.cost_center,
                lines,
            }),
            card_group_id: args.card_group_id,
            policy_override,
            wait,
            wait_timeout_ms: if wait { i64::from(WAIT_TIMEOUT_MS) } else { 0 },
            note: args.note,
        })
        .await
        .map_err(failure)?
        .into_inner()
        .payment
        .context("no payment in the response")?;
    println!("request {id}");
    print_payment(&payment);
    if payment.state == i32::from(pb::PaymentState::InReview) {
        println!(
            "\nheld for review; a reviewer decides it with: tandemctl review approve|reject {}",
            payment.id
        );
    }
    if wait && !is_terminal(payment.state) {
        println!(
            "\nstill {} after {} s; follow it with: tandemctl payments watch {}",
            state_name(payment.state),
            WAIT_TIMEOUT_MS / 1000,
            payment.id
        );
    }
    Ok(())
}

/// Runs `tandemctl refund`: refunds the payment and prints the refund and the payment.
pub(crate) async fn refund(args: RefundArgs) -> anyhow::Result<()> {
    let mut client = PaymentServiceClient::new(
        orchestrator_channel(&args.target, Role::Payer, REFUND_DEADLINE + ANSWER_SLACK).await?,
    );
    let amount = match &args.amount {
        None => None,
        Some(text) => {
            // The amount is read in the invoice's currency, so its exponent must be known.
            let payment = get(&mut client, args.payment_id.clone()).await?;
            let currency = payment
                .invoice
                .and_then(|invoice| invoice.amount)
                .map(|amount| amount.currency_code)
                .context("the payment has no invoice amount")?;
            Some(wire(parse_amount(text, &currency)?))
        }
    };
    let mut request = tonic::Request::new(pb::RefundPaymentRequest {
        request_id: request_id(args.request_id),
        payment_id: args.payment_id,
        amount,
        reason: args.reason,
    });
    request.set_timeout(REFUND_DEADLINE);
    let response = client
        .refund_payment(request)
        .await
        .map_err(failure)?
        .into_inner();
    let refund = response.refund.context("no refund in the response")?;
    println!(
        "refund {}  {}  {}",
        refund.id,
        show(refund.amount.as_ref()),
        value_name(
            refund.state,
            "PAYMENT_REFUND_STATE_",
            pb::PaymentRefundState::as_str_name
        )
    );
    print_payment(&response.payment.context("no payment in the response")?);
    Ok(())
}

/// Runs a payment read command.
pub(crate) async fn run(command: PaymentsCommand) -> anyhow::Result<()> {
    match command {
        PaymentsCommand::Show { target, payment_id } => {
            let mut client = reader(&target).await?;
            print_payment(&get(&mut client, payment_id).await?);
        }
        PaymentsCommand::List {
            target,
            card_group_id,
            state,
            invoice_id,
            billing_account,
            page_size,
        } => {
            let mut client = reader(&target).await?;
            let mut page_token = String::new();
            println!(
                "{:<30}  {:<18}  {:<16}  {:>16}  {:<29}  created",
                "payment", "state", "invoice", "amount", "card group"
            );
            for _ in 0..LIST_PAGES_MAX {
                let page = client
                    .list_payments(pb::ListPaymentsRequest {
                        page_size,
                        page_token,
                        card_group_id: card_group_id.clone().unwrap_or_default(),
                        state: state
                            .map_or(pb::PaymentState::Unspecified, From::from)
                            .into(),
                        invoice_id: invoice_id.clone().unwrap_or_default(),
                        billing_account_id: billing_account.clone().unwrap_or_default(),
                        ..Default::default()
                    })
                    .await
                    .map_err(failure)?
                    .into_inner();
                for payment in &page.payments {
                    let invoice = payment.invoice.as_ref();
                    println!(
                        "{:<30}  {:<18}  {:<16}  {:>16}  {:<29}  {}",
                        payment.id,
                        state_name(payment.state),
                        invoice.map_or("", |i| i.id.as_str()),
                        show(invoice.and_then(|i| i.amount.as_ref())),
                        payment.card_group_id,
                        show_time(payment.create_time.as_ref().map(|t| t.seconds))
                    );
                }
                if page.next_page_token.is_empty() {
                    return Ok(());
                }
                page_token = page.next_page_token;
            }
            println!("(stopped after {LIST_PAGES_MAX} pages; narrow the listing with filters)");
        }
        PaymentsCommand::Watch {
            target,
            payment_id,
            after,
        } => {
            let mut client = reader(&target).await?;
            let mut stream = client
                .watch_payment(pb::WatchPaymentRequest {
                    payment_id: payment_id.clone(),
                    after_sequence: after,
                })
                .await
                .map_err(failure)?
                .into_inner();
            let mut last_sequence = after;
            let mut last_state = None;
            // Bounded by the server, which ends every stream after its maximum stream time.
            while let Some(message) = stream.message().await.map_err(failure)? {
                let event = message.event.context("a stream message without an event")?;
                // The server's name when it sends one: it knows types newer than this build.
                let type_name = if event.type_name.is_empty() {
                    event_type_name(event.r#type)
                } else {
                    event.type_name.clone()
                };
                println!(
                    "{:>5}  {:<26}  {}",
                    event.sequence, type_name, event.summary
                );
                last_sequence = event.sequence;
                last_state = event.payment.map(|payment| payment.state);
            }
            if last_state.is_some_and(|state| !is_terminal(state)) {
                println!(
                    "(the stream closed before {payment_id} finished; resume with --after \
                     {last_sequence})"
                );
            }
        }
        PaymentsCommand::Resolve {
            target,
            payment_id,
            retry,
            confirm: _,
            note,
            request_id: given_id,
        } => {
            let mut client = PaymentServiceClient::new(
                orchestrator_channel(&target, Role::Treasury, CALL_TIMEOUT).await?,
            );
            let decision = if retry {
                pb::ResolutionDecision::Retry
            } else {
                pb::ResolutionDecision::Confirm
            };
            let payment = client
                .resolve_payment(pb::ResolvePaymentRequest {
                    request_id: request_id(given_id),
                    payment_id,
                    decision: decision.into(),
                    note,
                })
                .await
                .map_err(failure)?
                .into_inner()
                .payment
                .context("no payment in the response")?;
            print_payment(&payment);
        }
        PaymentsCommand::Note {
            target,
            payment_id,
            text,
            as_treasury,
            request_id: given_id,
        } => {
            let role = if as_treasury {
                Role::Treasury
            } else {
                Role::Payer
            };
            let mut client =
                PaymentServiceClient::new(orchestrator_channel(&target, role, CALL_TIMEOUT).await?);
            let response = client
                .add_payment_note(pb::AddPaymentNoteRequest {
                    request_id: request_id(given_id),
                    payment_id,
                    text,
                })
                .await
                .map_err(failure)?
                .into_inner();
            let note = response.note.context("no note in the response")?;
            println!(
                "note added {} by {}",
                show_time(note.create_time.as_ref().map(|t| t.seconds)),
                show_actor(note.author.as_ref())
            );
            print_payment(&response.payment.context("no payment in the response")?);
        }
    }
    Ok(())
}

async fn reader(target: &OrchestratorTarget) -> anyhow::Result<Client> {
    Ok(PaymentServiceClient::new(
        orchestrator_channel(target, Role::Reader, CALL_TIMEOUT).await?,
    ))
}

async fn get(client: &mut Client, payment_id: String) -> anyhow::Result<pb::Payment> {
    client
        .get_payment(pb::GetPaymentRequest { payment_id })
        .await
        .map_err(failure)?
        .into_inner()
        .payment
        .context("no payment in the response")
}

/// Whether a payment has reached a state in which `CreatePayment` stops waiting: terminal, or
/// waiting for a reviewer or an operator.
pub(crate) fn is_terminal(state: i32) -> bool {
    use pb::PaymentState as S;
    match S::try_from(state) {
        Ok(
            S::Succeeded
            | S::PartiallyPaid
            | S::Failed
            | S::PartiallyRefunded
            | S::Refunded
            | S::InReview
            | S::NeedsOperator,
        ) => true,
        Ok(S::Unspecified | S::Pending | S::Authorizing | S::Capturing | S::Reversing) => false,
        Err(_) => false,
    }
}

/// A payment state's name: `in_review`.
pub(crate) fn state_name(state: i32) -> String {
    value_name(state, "PAYMENT_STATE_", pb::PaymentState::as_str_name)
}

/// An event type's wire name, as webhooks carry it: `PAYMENT_EVENT_TYPE_LEG_DECLINED` is
/// `leg.declined`, `PAYMENT_EVENT_TYPE_PAYMENT_PARTIALLY_PAID` is `payment.partially_paid`.
fn event_type_name(value: i32) -> String {
    value_name(
        value,
        "PAYMENT_EVENT_TYPE_",
        pb::PaymentEventType::as_str_name,
    )
    .replacen('_', ".", 1)
}

/// Prints a payment: a header line, its summary, its creator, why it failed, its risk assessment
/// and review, its legs, its attempts, its refunds and its notes.
pub(crate) fn print_payment(payment: &pb::Payment) {
    println!("{}", render_payment(payment));
}

/// A payment's review: waiting until when, or who decided what when and why.
fn review_lines(review: &pb::PaymentReview) -> Vec<String> {
    use pb::ReviewVerdict as V;
    let time = |t: Option<&prost_types::Timestamp>| show_time(t.map(|t| t.seconds));
    let decided = |verdict: &str| {
        format!(
            "review: {verdict} {} by {}",
            time(review.decide_time.as_ref()),
            show_actor(review.reviewer.as_ref())
        )
    };
    let mut lines = vec![match V::try_from(review.verdict) {
        Ok(V::Unspecified) => format!(
            "review: waiting since {}, expires {}",
            time(review.start_time.as_ref()),
            time(review.expire_time.as_ref())
        ),
        Ok(V::Approve) => decided("approved"),
        Ok(V::Reject) => decided("rejected"),
        Ok(V::Expired) => format!(
            "review: expired {} (nobody decided)",
            time(review.decide_time.as_ref())
        ),
        Err(_) => decided(&format!("unknown({})", review.verdict)),
    }];
    // A note may span lines; each is indented under the review.
    lines.extend(review.note.lines().map(|line| format!("  {line}")));
    lines
}

fn render_payment(payment: &pb::Payment) -> String {
    let invoice = payment.invoice.as_ref();
    let mut lines = vec![format!(
        "payment {}  {}  invoice {}  {}",
        payment.id,
        state_name(payment.state),
        invoice.map_or("", |i| i.id.as_str()),
        show(invoice.and_then(|i| i.amount.as_ref()))
    )];
    if !payment.summary.is_empty() {
        lines.push(payment.summary.clone());
    }
    if let Some(creator) = &payment.creator {
        lines.push(format!("created by {}", show_actor(Some(creator))));
    }
    if !payment.failure_reason.is_empty() {
        lines.push(format!("failure reason: {}", payment.failure_reason));
    }
    if let Some(risk) = &payment.risk {
        lines.push(assessment_line(risk));
        lines.extend(risk.fired.iter().map(|f| format!("  {}", fired_line(f))));
    }
    if let Some(review) = &payment.review {
        lines.extend(review_lines(review));
    }
    for leg in payment.legs.iter().filter(|l| l.refusals > 0) {
        lines.push(format!(
            "leg {}: capture or void refused by the vault {} times ({})",
            leg.index, leg.refusals, leg.refusal_reason
        ));
    }
    if payment.state == i32::from(pb::PaymentState::NeedsOperator) {
        lines.push(format!(
            "needs an operator: tandemctl payments resolve {} --retry|--confirm --note '...'",
            payment.id
        ));
    }
    for resolution in &payment.resolutions {
        lines.push(format!(
            "resolved {} by {} ({}): {}",
            show_time(resolution.create_time.as_ref().map(|t| t.seconds)),
            show_actor(resolution.operator.as_ref()),
            value_name(
                resolution.decision,
                "RESOLUTION_DECISION_",
                pb::ResolutionDecision::as_str_name
            ),
            resolution.note
        ));
    }
    // One width for the labels of both tables, so that they line up with each other.
    let labels = payment.legs.iter().map(|leg| leg.label.as_str());
    let label_width = column_width(
        "label",
        labels.chain(payment.attempts.iter().map(|a| a.label.as_str())),
    );
    let dash = |text: &str| {
        if text.is_empty() {
            "-".to_owned()
        } else {
            text.to_owned()
        }
    };

    // A converted leg shows what the card pays in its currency and the rate:
    // `13.00 USD (12.01 EUR at 0.9238)`.
    let amounts: Vec<String> = payment
        .legs
        .iter()
        .map(|leg| {
            let amount = show(leg.amount.as_ref());
            if leg.fx_rate.is_empty() {
                amount
            } else {
                format!(
                    "{amount} ({} at {})",
                    show(leg.charge_amount.as_ref()),
                    leg.fx_rate
                )
            }
        })
        .collect();
    let amount_width = column_width("amount", amounts.iter().map(String::as_str)).max(16);
    lines.push(String::new());
    lines.push(format!(
        "{:>3}  {:<label_width$}  {:<5}  {:>amount_width$}  {:<18}  {:<29}  authorization",
        "leg", "label", "card", "amount", "state", "charge"
    ));
    for (leg, amount) in payment.legs.iter().zip(&amounts) {
        lines.push(format!(
            "{:>3}  {:<label_width$}  ·{:<4}  {:>amount_width$}  {:<18}  {:<29}  {}",
            leg.index,
            leg.label,
            leg.last4,
            amount,
            value_name(leg.state, "LEG_STATE_", pb::LegState::as_str_name),
            dash(&leg.charge_id),
            dash(&leg.authorization_code)
        ));
    }

    if !payment.attempts.is_empty() {
        lines.push(String::new());
        lines.push(format!(
            "{:>3}  {:<label_width$}  {:>16}  {:>16}  {:<18}  decline",
            "try", "label", "requested", "approved", "outcome"
        ));
    }
    for attempt in &payment.attempts {
        let decline = if !attempt.error_reason.is_empty() {
            attempt.error_reason.clone()
        } else if attempt.decline_code == i32::from(types::DeclineCode::Unspecified) {
            "-".to_owned()
        } else {
            value_name(
                attempt.decline_code,
                "DECLINE_CODE_",
                types::DeclineCode::as_str_name,
            )
        };
        lines.push(format!(
            "{:>3}  {:<label_width$}  {:>16}  {:>16}  {:<18}  {decline}",
            attempt.number,
            attempt.label,
            show(attempt.requested.as_ref()),
            show(attempt.approved.as_ref()),
            value_name(
                attempt.outcome,
                "ATTEMPT_OUTCOME_",
                pb::AttemptOutcome::as_str_name
            )
        ));
    }

    if !payment.refunds.is_empty() {
        lines.push(String::new());
    }
    for refund in &payment.refunds {
        lines.push(format!(
            "refund {}  {:>16}  {:<9}  {}",
            refund.id,
            show(refund.amount.as_ref()),
            value_name(
                refund.state,
                "PAYMENT_REFUND_STATE_",
                pb::PaymentRefundState::as_str_name
            ),
            refund.reason
        ));
    }

    if !payment.notes.is_empty() {
        lines.push(String::new());
    }
    for note in &payment.notes {
        lines.push(format!(
            "note {}  {}",
            show_time(note.create_time.as_ref().map(|t| t.seconds)),
            show_actor(note.author.as_ref())
        ));
        // A note may span lines; each is indented under its heading.
        lines.extend(note.text.lines().map(|line| format!("  {line}")));
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd(minor_units: i64) -> Option<types::Money> {
        Some(types::Money {
            currency_code: "USD".to_owned(),
            minor_units,
        })
    }

    /// `--line` takes an amount in the invoice's currency and, after a colon, the cards'
    /// currency; anything else is refused with the flag named.
    #[test]
    fn invoice_lines_from_the_command_line() {
        let line = invoice_line("80.00:JPY", "USD").unwrap();
        assert_eq!(line.amount, usd(8000));
        assert_eq!(line.currency_code, "JPY");
        let line = invoice_line("120.5", "USD").unwrap();
        assert_eq!(line.amount, usd(12050));
        assert!(line.currency_code.is_empty());
        for bad in ["80.00:jpy", "80.00:YEN", "eighty:JPY", "1.234:JPY"] {
            let error = invoice_line(bad, "USD").unwrap_err();
            assert!(format!("{error:#}").contains("--line"), "{bad}: {error:#}");
        }
    }

    /// Event types print as their webhook wire names.
    #[test]
    fn event_type_names() {
        use pb::PaymentEventType as T;
        for (event_type, wire_name) in [
            (T::PaymentCreated, "payment.created"),
            (T::PaymentPartiallyPaid, "payment.partially_paid"),
            (T::PaymentPartiallyRefunded, "payment.partially_refunded"),
            (T::LegDeclined, "leg.declined"),
            (T::LegReallocated, "leg.reallocated"),
            (T::RefundSucceeded, "refund.succeeded"),
        ] {
            assert_eq!(event_type_name(event_type.into()), wire_name);
        }
        assert_eq!(event_type_name(99), "unknown(99)");
    }

    /// A payment prints as a header, its summary, its creator, an aligned table of legs and
    /// one of attempts, a decline's code or a vault error's reason, its refunds and its notes.
    #[test]
    fn payment_rendering() {
        let leg =
            |index, label: &str, last4: &str, minor_units, state: pb::LegState| pb::PaymentLeg {
                index,
                label: label.to_owned(),
                last4: last4.to_owned(),
                amount: usd(minor_units),
                state: state.into(),
                ..Default::default()
            };
        let attempt = |number, label: &str, requested, approved, outcome: pb::AttemptOutcome| {
            pb::PaymentAttempt {
                number,
                label: label.to_owned(),
                requested: usd(requested),
                approved: usd(approved),
                outcome: outcome.into(),
                ..Default::default()
            }
        };
        let payment = pb::Payment {
            id: "pay_1".to_owned(),
            invoice: Some(pb::Invoice {
                id: "INV-7".to_owned(),
                amount: usd(2050),
                ..Default::default()
            }),
            state: pb::PaymentState::Succeeded.into(),
            summary: "Invoice INV-7 paid 20.50 USD".to_owned(),
            legs: vec![
                pb::PaymentLeg {
                    charge_id: "ch_1".to_owned(),
                    authorization_code: "A1".to_owned(),
                    ..leg(1, "card A", "4242", 700, pb::LegState::Captured)
                },
                leg(2, "corporate card", "0341", 0, pb::LegState::Declined),
            ],
            attempts: vec![
                attempt(1, "card A", 700, 700, pb::AttemptOutcome::Approved),
                pb::PaymentAttempt {
                    decline_code: types::DeclineCode::InsufficientFunds.into(),
                    ..attempt(2, "corporate card", 1350, 0, pb::AttemptOutcome::Declined)
                },
                pb::PaymentAttempt {
                    error_reason: "TOKEN_REVOKED".to_owned(),
                    ..attempt(3, "card A", 1350, 0, pb::AttemptOutcome::Error)
                },
            ],
            refunds: vec![pb::PaymentRefund {
                id: "prf_1".to_owned(),
                amount: usd(500),
                state: pb::PaymentRefundState::Succeeded.into(),
                reason: "credit note".to_owned(),
                ..Default::default()
            }],
            creator: Some(types::Actor {
                name: "billing-service".to_owned(),
                role: "payer".to_owned(),
            }),
            notes: vec![pb::PaymentNote {
                text: "authorized by phone\nwith the bank".to_owned(),
                author: Some(types::Actor {
                    name: "alice".to_owned(),
                    role: "treasury".to_owned(),
                }),
                create_time: Some(prost_types::Timestamp {
                    seconds: 1_735_689_600,
                    nanos: 0,
                }),
            }],
            ..Default::default()
        };
        let expected = "\
payment pay_1  succeeded  invoice INV-7  20.50 USD
Invoice INV-7 paid 20.50 USD
created by billing-service (payer)

leg  label           card             amount  state               charge                         authorization
  1  card A          ·4242          7.00 USD  captured            ch_1                           A1
  2  corporate card  ·0341          0.00 USD  declined            -                              -

try  label                  requested          approved  outcome             decline
  1  card A                  7.00 USD          7.00 USD  approved            -
  2  corporate card         13.50 USD          0.00 USD  declined            insufficient_funds
  3  card A                 13.50 USD          0.00 USD  error               TOKEN_REVOKED

refund prf_1          5.00 USD  succeeded  credit note

note 2025-01-01T00:00:00Z  alice (treasury)
  authorized by phone
  with the bank";
        assert_eq!(render_payment(&payment), expected);
    }

    /// A payment risk held shows its assessment (action, score, each fired rule's explanation)
    /// and its review under the creator, before the legs; a rejected one also why it failed,
    /// who rejected it when, and the reviewer's note.
    #[test]
    fn risk_and_review_rendering() {
        let time = |seconds| Some(prost_types::Timestamp { seconds, nanos: 0 });
        let held = pb::Payment {
            id: "pay_1".to_owned(),
            invoice: Some(pb::Invoice {
                id: "INV-7".to_owned(),
                amount: usd(2050),
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
                policy_version: 3,
                fired: vec![
                    pb::RiskRuleFired {
                        rule: "big_amount".to_owned(),
                        action: pb::RiskAction::Review.into(),
                        score: 50,
                        explanation: "20.50 USD is over 5x the median 2.00 USD".to_owned(),
                        ..Default::default()
                    },
                    pb::RiskRuleFired {
                        rule: "new_card".to_owned(),
                        action: pb::RiskAction::Allow.into(),
                        score: 10,
                        explanation: "card ·4242 was never charged".to_owned(),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }),
            review: Some(pb::PaymentReview {
                start_time: time(1_735_689_600),
                expire_time: time(1_735_776_000),
                ..Default::default()
            }),
            ..Default::default()
        };
        let rendered = render_payment(&held);
        assert!(
            rendered.starts_with(
                "\
payment pay_1  in_review  invoice INV-7  20.50 USD
created by billing-service (payer)
risk: REVIEW, score 60 (policy version 3)
  big_amount (review, +50): 20.50 USD is over 5x the median 2.00 USD
  new_card (allow, +10): card ·4242 was never charged
review: waiting since 2025-01-01T00:00:00Z, expires 2025-01-02T00:00:00Z

leg  label"
            ),
            "{rendered}"
        );

        let rejected = pb::Payment {
            state: pb::PaymentState::Failed.into(),
            failure_reason: "REVIEW_REJECTED".to_owned(),
            review: Some(pb::PaymentReview {
                verdict: pb::ReviewVerdict::Reject.into(),
                reviewer: Some(types::Actor {
                    name: "dev-reviewer".to_owned(),
                    role: "reviewer".to_owned(),
                }),
                note: "address does not match\nticket RISK-7".to_owned(),
                decide_time: time(1_735_693_200),
                ..held.review.clone().unwrap_or_default()
            }),
            ..held.clone()
        };
        let rendered = render_payment(&rejected);
        assert!(
            rendered.starts_with(
                "\
payment pay_1  failed  invoice INV-7  20.50 USD
created by billing-service (payer)
failure reason: REVIEW_REJECTED
risk: REVIEW, score 60 (policy version 3)
  big_amount (review, +50): 20.50 USD is over 5x the median 2.00 USD
  new_card (allow, +10): card ·4242 was never charged
review: rejected 2025-01-01T01:00:00Z by dev-reviewer (reviewer)
  address does not match
  ticket RISK-7

leg"
            ),
            "{rendered}"
        );

        let expired = pb::PaymentReview {
            verdict: pb::ReviewVerdict::Expired.into(),
            decide_time: time(1_735_776_000),
            ..Default::default()
        };
        assert_eq!(
            review_lines(&expired),
            ["review: expired 2025-01-02T00:00:00Z (nobody decided)"]
        );
    }

    /// `pay` stops waiting exactly in the terminal states and in review.
    #[test]
    fn terminal_states() {
        use pb::PaymentState as S;
        for (state, terminal) in [
            (S::Unspecified, false),
            (S::Pending, false),
            (S::Authorizing, false),
            (S::Capturing, false),
            (S::Reversing, false),
            (S::Succeeded, true),
            (S::PartiallyPaid, true),
            (S::Failed, true),
            (S::PartiallyRefunded, true),
            (S::Refunded, true),
            (S::InReview, true),
            (S::NeedsOperator, true),
        ] {
            assert_eq!(is_terminal(state.into()), terminal, "{state:?}");
        }
        assert!(!is_terminal(99));
    }

    /// A payment that needs an operator says which legs the vault refused, why, and the
    /// command that resolves it; its resolutions are listed with who decided and why.
    #[test]
    fn needs_operator_rendering() {
        let time = |seconds| Some(prost_types::Timestamp { seconds, nanos: 0 });
        let waiting = pb::Payment {
            id: "pay_1".to_owned(),
            state: pb::PaymentState::NeedsOperator.into(),
            legs: vec![pb::PaymentLeg {
                index: 2,
                refusals: 3,
                refusal_reason: "CHARGE_NOT_AUTHORIZED".to_owned(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let rendered = render_payment(&waiting);
        assert!(
            rendered.contains(
                "leg 2: capture or void refused by the vault 3 times (CHARGE_NOT_AUTHORIZED)\n\
                 needs an operator: tandemctl payments resolve pay_1 --retry|--confirm --note"
            ),
            "{rendered}"
        );
        let resolved = pb::Payment {
            state: pb::PaymentState::Capturing.into(),
            legs: vec![pb::PaymentLeg::default()],
            resolutions: vec![pb::PaymentResolution {
                decision: pb::ResolutionDecision::Retry.into(),
                operator: Some(types::Actor {
                    name: "ana".to_owned(),
                    role: "treasury".to_owned(),
                }),
                note: "processor back".to_owned(),
                create_time: time(1_735_693_200),
            }],
            ..waiting
        };
        let rendered = render_payment(&resolved);
        assert!(!rendered.contains("needs an operator"), "{rendered}");
        assert!(!rendered.contains("refused"), "{rendered}");
        assert!(
            rendered.contains(
                "resolved 2025-01-01T01:00:00Z by ana (treasury) (retry): processor back"
            ),
            "{rendered}"
        );
    }
}
