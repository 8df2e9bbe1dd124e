//! `tandemctl charge`: operate charges on a running vault with an `orchestrator` identity,
//! and read the sandbox acquirer's settlement report with an `admin` identity.
//!
//! ```text
//! tandemctl charge authorize --token tok_... --amount 125.00 --currency USD
//! tandemctl charge capture ch_... [--amount 100.00]
//! tandemctl charge void ch_... [--reason "order cancelled"]
//! tandemctl charge refund ch_... --amount 25.00 [--reason "credit note"]
//! tandemctl charge get ch_...            (or --request-id <authorize request id>)
//! tandemctl charge settlement [--from 2026-11-01] [--to 2026-11-30]
//! ```
//!
//! Amounts are decimal major units in the currency's ISO 4217 exponent (`125.00 USD`,
//! `1200 JPY`); they are converted to minor units exactly, never through floating point.
//! Every mutating command takes `--request-id` (a new UUID by default): re-running a command
//! with the same id is safe.

use anyhow::Context as _;
use tandem_proto::tandem::r#type::v1 as types;
use tandem_proto::tandem::vault::v1 as pb;
use tandem_tls::identity::Role;

use crate::amounts::{parse_amount, show, wire};
use crate::connect::{VaultTarget, failure, request_id, vault_channel};

/// The charge commands.
#[derive(Debug, clap::Subcommand)]
pub enum ChargeCommand {
    /// Place a hold on a card.
    Authorize {
        #[command(flatten)]
        target: VaultTarget,
        /// The card's token.
        #[arg(long)]
        token: String,
        /// The amount in major units, e.g. `125.00`.
        #[arg(long)]
        amount: String,
        /// ISO 4217 currency code.
        #[arg(long, default_value = "USD")]
        currency: String,
        /// Accept an approval for less than the amount.
        #[arg(long)]
        allow_partial_approval: bool,
        /// Free text for operators.
        #[arg(long, default_value = "")]
        description: String,
        /// Idempotency key; a new UUID by default.
        #[arg(long)]
        request_id: Option<String>,
    },
    /// Capture an authorized charge (all of it unless `--amount`).
    Capture {
        #[command(flatten)]
        target: VaultTarget,
        /// The charge id.
        charge_id: String,
        /// The amount in major units; the whole approved amount by default.
        #[arg(long)]
        amount: Option<String>,
        /// Idempotency key; a new UUID by default.
        #[arg(long)]
        request_id: Option<String>,
    },
    /// Release the hold of an authorized charge.
    Void {
        #[command(flatten)]
        target: VaultTarget,
        /// The charge id.
        charge_id: String,
        /// Why, for the audit log.
        #[arg(long, default_value = "")]
        reason: String,
        /// Idempotency key; a new UUID by default.
        #[arg(long)]
        request_id: Option<String>,
    },
    /// Refund captured money.
    Refund {
        #[command(flatten)]
        target: VaultTarget,
        /// The charge id.
        charge_id: String,
        /// The amount in major units.
        #[arg(long)]
        amount: String,
        /// Why, for the audit log and the processor.
        #[arg(long, default_value = "")]
        reason: String,
        /// Idempotency key; a new UUID by default.
        #[arg(long)]
        request_id: Option<String>,
    },
    /// Show a charge, by id or by its authorize request id.
    Get {
        #[command(flatten)]
        target: VaultTarget,
        /// The charge id.
        #[arg(required_unless_present = "request_id")]
        charge_id: Option<String>,
        /// The request id of the `Authorize` that created the charge.
        #[arg(long, conflicts_with = "charge_id")]
        request_id: Option<String>,
    },
    /// The sandbox acquirer's settlement report (admin identity).
    Settlement {
        #[command(flatten)]
        target: VaultTarget,
        /// First settlement day, `YYYY-MM-DD`.
        #[arg(long, default_value = "")]
        from: String,
        /// Last settlement day, `YYYY-MM-DD`.
        #[arg(long, default_value = "")]
        to: String,
    },
}

fn print_charge(charge: &pb::Charge) {
    let state = pb::ChargeState::try_from(charge.state)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("CHARGE_STATE_")
                .to_owned()
        })
        .unwrap_or_default();
    println!("charge      {}", charge.id);
    println!("state       {state}");
    println!("card        {} ****{}", charge.token, charge.last4);
    println!("requested   {}", show(charge.requested.as_ref()));
    println!("approved    {}", show(charge.approved.as_ref()));
    println!("captured    {}", show(charge.captured.as_ref()));
    println!("refunded    {}", show(charge.refunded.as_ref()));
    if charge.state == pb::ChargeState::Declined as i32 {
        let code = types::DeclineCode::try_from(charge.decline_code)
            .map(|c| c.as_str_name().to_owned())
            .unwrap_or_default();
        let next = types::NextAction::try_from(charge.next_action)
            .map(|a| a.as_str_name().to_owned())
            .unwrap_or_default();
        println!(
            "declined    {code} ({}) -> {next}",
            charge.processor_decline_code
        );
    }
    println!(
        "processor   {} {}",
        charge.processor, charge.processor_reference
    );
    for refund in &charge.refunds {
        let state = pb::RefundState::try_from(refund.state)
            .map(|s| {
                s.as_str_name()
                    .trim_start_matches("REFUND_STATE_")
                    .to_owned()
            })
            .unwrap_or_default();
        println!(
            "refund      {} {} {state}",
            refund.id,
            show(refund.amount.as_ref())
        );
    }
}

/// Runs a charge command.
pub async fn run(command: ChargeCommand) -> anyhow::Result<()> {
    use pb::charge_service_client::ChargeServiceClient;
    match command {
        ChargeCommand::Authorize {
            target,
            token,
            amount,
            currency,
            allow_partial_approval,
            description,
            request_id: id,
        } => {
            let amount = parse_amount(&amount, &currency)?;
            let id = request_id(id);
            let mut client =
                ChargeServiceClient::new(vault_channel(&target, Role::Orchestrator).await?);
            let charge = client
                .authorize(pb::AuthorizeRequest {
                    request_id: id.clone(),
                    token,
                    amount: Some(wire(amount)),
                    allow_partial_approval,
                    description,
                    ..Default::default()
                })
                .await
                .map_err(failure)?
                .into_inner()
                .charge
                .context("no charge in the response")?;
            println!("request     {id}");
            print_charge(&charge);
        }
        ChargeCommand::Capture {
            target,
            charge_id,
            amount,
            request_id: id,
        } => {
            let mut client =
                ChargeServiceClient::new(vault_channel(&target, Role::Orchestrator).await?);
            let amount = match amount {
                None => None,
                Some(text) => {
                    let currency = charge_currency(&mut client, &charge_id).await?;
                    Some(wire(parse_amount(&text, &currency)?))
                }
            };
            let charge = client
                .capture(pb::CaptureRequest {
                    request_id: request_id(id),
                    charge_id,
                    amount,
                })
                .await
                .map_err(failure)?
                .into_inner()
                .charge
                .context("no charge in the response")?;
            print_charge(&charge);
        }
        ChargeCommand::Void {
            target,
            charge_id,
            reason,
            request_id: id,
        } => {
            let mut client =
                ChargeServiceClient::new(vault_channel(&target, Role::Orchestrator).await?);
            let charge = client
                .void(pb::VoidRequest {
                    request_id: request_id(id),
                    charge_id,
                    reason,
                })
                .await
                .map_err(failure)?
                .into_inner()
                .charge
                .context("no charge in the response")?;
            print_charge(&charge);
        }
        ChargeCommand::Refund {
            target,
            charge_id,
            amount,
            reason,
            request_id: id,
        } => {
            let mut client =
                ChargeServiceClient::new(vault_channel(&target, Role::Orchestrator).await?);
            let currency = charge_currency(&mut client, &charge_id).await?;
            let response = client
                .refund(pb::RefundRequest {
                    request_id: request_id(id),
                    charge_id,
                    amount: Some(wire(parse_amount(&amount, &currency)?)),
                    reason,
                })
                .await
                .map_err(failure)?
                .into_inner();
            print_charge(&response.charge.context("no charge in the response")?);
        }
        ChargeCommand::Get {
            target,
            charge_id,
            request_id,
        } => {
            let mut client =
                ChargeServiceClient::new(vault_channel(&target, Role::Orchestrator).await?);
            print_charge(&get(&mut client, charge_id, request_id).await?);
        }
        ChargeCommand::Settlement { target, from, to } => {
            let mut client = pb::sandbox_service_client::SandboxServiceClient::new(
                vault_channel(&target, Role::Admin).await?,
            );
            let mut page_token = String::new();
            println!(
                "date        type     amount           processor reference           authorization"
            );
            loop {
                let page = client
                    .list_settlement_records(pb::ListSettlementRecordsRequest {
                        page_size: 1000,
                        page_token: page_token.clone(),
                        start_date: from.clone(),
                        end_date: to.clone(),
                        ..Default::default()
                    })
                    .await
                    .map_err(failure)?
                    .into_inner();
                for record in &page.records {
                    let kind = pb::SettlementRecordType::try_from(record.r#type)
                        .map(|t| {
                            t.as_str_name()
                                .trim_start_matches("SETTLEMENT_RECORD_TYPE_")
                                .to_lowercase()
                        })
                        .unwrap_or_default();
                    println!(
                        "{}  {kind:<7}  {:>15}  {}  {}",
                        record.settlement_date,
                        show(record.amount.as_ref()),
                        record.processor_reference,
                        record.authorization_reference
                    );
                }
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
        }
    }
    Ok(())
}

/// The currency of a charge, to read a decimal amount in its exponent.
async fn charge_currency(
    client: &mut pb::charge_service_client::ChargeServiceClient<tonic::transport::Channel>,
    charge_id: &str,
) -> anyhow::Result<String> {
    let current = get(client, Some(charge_id.to_owned()), None).await?;
    Ok(current
        .requested
        .map(|m| m.currency_code)
        .unwrap_or_default())
}

async fn get(
    client: &mut pb::charge_service_client::ChargeServiceClient<tonic::transport::Channel>,
    charge_id: Option<String>,
    request_id: Option<String>,
) -> anyhow::Result<pb::Charge> {
    use pb::get_charge_request::Lookup;
    let lookup = match (charge_id, request_id) {
        (Some(id), _) => Lookup::ChargeId(id),
        (None, Some(id)) => Lookup::RequestId(id),
        (None, None) => anyhow::bail!("give a charge id or --request-id"),
    };
    client
        .get_charge(pb::GetChargeRequest {
            lookup: Some(lookup),
        })
        .await
        .map_err(failure)?
        .into_inner()
        .charge
        .context("no charge in the response")
}
