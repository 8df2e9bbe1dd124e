//! The `--demo` of `tandemctl dev`: one charge straight through the vault, then the seed
//! scenarios of DESIGN section 8 that one process can pay, through the orchestrator. Each
//! payment is printed with its split and checked, so a broken stack fails the demo:
//!
//! 1. GlobalOps, month 1: 20.50 USD split 60/20/20 over cards A, B and C (card B in euros,
//!    converted at the treasury's rate).
//! 2. GlobalOps, month 2: the primary card is blocked; the secondaries cover its part.
//! 3. Invoice 12345: exactly card A 7.00, card B 13.00, card C 0.50 (a FIXED policy for that
//!    payment only).
//! 4. Peak week: an invoice larger than any card's limit, with a ceiling window raising the
//!    limits this week, under ALLOW_PARTIAL: the covered part is paid, the rest remains.
//! 5. Duplicates: the same `CreatePayment` sent 50 times at once makes one payment.
//!
//! The groups are seeded once (see [`super::seed_group`]); the payments' request ids are new on
//! every run, so every run pays again.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Context as _;
use tandem_proto::tandem::orchestrator::v1 as pb;
use tandem_proto::tandem::orchestrator::v1::card_group_service_client::CardGroupServiceClient;
use tandem_proto::tandem::orchestrator::v1::payment_service_client::PaymentServiceClient;
use tandem_proto::tandem::r#type::v1::Money;
use tandem_proto::tandem::vault::v1 as vault_pb;

use super::{DemoTokens, GroupSeed, member, seed_group, weighted};
use crate::amounts::show;
use crate::connect::failure;
use crate::payments::print_payment;
use crate::print::value_name;

/// How long one payment call may take: the orchestrator's wait plus time for the answer.
pub(super) const PAYMENT_CALL_TIMEOUT: Duration = Duration::from_secs(40);
/// How long the orchestrator may wait for a payment to finish before answering.
const WAIT_TIMEOUT_MS: i64 = 30_000;
/// The same `CreatePayment` sent this many times at once.
const DUPLICATES: usize = 50;
/// Retries of a duplicate told REQUEST_IN_PROGRESS (the first call still holds the id).
const IN_PROGRESS_RETRIES_MAX: u32 = 100;
/// Pause before such a retry.
const IN_PROGRESS_RETRY_PAUSE: Duration = Duration::from_millis(100);

type Payments = PaymentServiceClient<tonic::transport::Channel>;

/// Authorizes 125.00 USD on `token` through the sandbox acquirer, captures it, and prints the
/// charge, as the orchestrator would.
pub(super) async fn charge(channel: tonic::transport::Channel, token: &str) -> anyhow::Result<()> {
    let mut charges = vault_pb::charge_service_client::ChargeServiceClient::new(channel);
    let run = uuid::Uuid::new_v4();
    let charge = charges
        .authorize(vault_pb::AuthorizeRequest {
            request_id: format!("dev-demo-{run}/authorize"),
            token: token.to_owned(),
            amount: Some(usd(12_500)),
            description: "demo invoice INV-1".to_owned(),
            ..Default::default()
        })
        .await
        .map_err(failure)
        .context("authorizing the demo charge")?
        .into_inner()
        .charge
        .context("authorize returned no charge")?;
    let captured = charges
        .capture(vault_pb::CaptureRequest {
            request_id: format!("dev-demo-{run}/capture"),
            charge_id: charge.id.clone(),
            amount: None,
        })
        .await
        .map_err(failure)
        .context("capturing the demo charge")?
        .into_inner()
        .charge
        .context("capture returned no charge")?;
    let state = value_name(
        captured.state,
        "CHARGE_STATE_",
        vault_pb::ChargeState::as_str_name,
    );
    println!(
        "\ndemo: charged 125.00 USD to the corporate Visa through the sandbox acquirer\n\
         {} {state}, authorization code {}, processor reference {}",
        captured.id, captured.authorization_code, captured.processor_reference
    );
    Ok(())
}

/// Pays the seed scenarios from the seeded cards and the GlobalOps group, printing and
/// checking each payment.
pub(super) async fn pay_scenarios(
    groups: &mut CardGroupServiceClient<tonic::transport::Channel>,
    payer: tonic::transport::Channel,
    cards: &DemoTokens,
    globalops: &pb::CardGroup,
) -> anyhow::Result<()> {
    let mut payments = PaymentServiceClient::new(payer);
    let run = crate::bench::run_id();
    let request = |scenario: &str, group: &pb::CardGroup, invoice_id: &str, minor_units| {
        pb::CreatePaymentRequest {
            request_id: format!("dev-demo-{run}/{scenario}"),
            invoice: Some(pb::Invoice {
                id: invoice_id.to_owned(),
                amount: Some(usd(minor_units)),
                description: format!("{} invoice {invoice_id}", group.display_name),
                ..Default::default()
            }),
            card_group_id: group.id.clone(),
            policy_override: None,
            wait: true,
            wait_timeout_ms: WAIT_TIMEOUT_MS,
            note: String::new(),
        }
    };
    // The scenarios' other groups, seeded once like GlobalOps.
    let month_2 = seed_group(groups, month_2_group(cards)).await?;
    let peak = seed_group(groups, peak_week_group(cards)).await?;
    let mut paid = 0;

    heading(
        "GlobalOps, month 1: 20.50 USD split 60/20/20 over cards A, B and C; card B is a euro \
         card, charged its 4.10 USD converted at the treasury's rate",
    );
    let payment = pay(
        &mut payments,
        request("globalops-month-1", globalops, "GO-M1", 2050),
    )
    .await?;
    expect(&payment, pb::PaymentState::Succeeded)?;
    expect_split(
        &payment,
        &[("card A", 1230), ("card B", 410), ("card C", 410)],
    )?;
    paid += 1;

    heading(
        "GlobalOps, month 2: the primary card (card E) is blocked; the fallback moves its \
         part to the backup cards in priority order",
    );
    let payment = pay(
        &mut payments,
        request("globalops-month-2", &month_2, "GO-M2", 2050),
    )
    .await?;
    expect(&payment, pb::PaymentState::Succeeded)?;
    anyhow::ensure!(
        payment.summary.contains("replaced card E"),
        "the month 2 summary does not say which card replaced card E: {}",
        payment.summary
    );
    paid += 1;

    heading(
        "Invoice 12345: exactly card A 7.00, card B 13.00, card C 0.50 (a FIXED policy); the \
         euro card pays its 13.00 USD in euros, rounded up so the invoice is covered exactly",
    );
    let mut invoice_12345 = request("invoice-12345", globalops, "12345", 2050);
    invoice_12345.policy_override = Some(fixed_policy(&[
        (&cards.a, 700),
        (&cards.b, 1300),
        (&cards.c, 50),
    ]));
    let payment = pay(&mut payments, invoice_12345).await?;
    expect(&payment, pb::PaymentState::Succeeded)?;
    expect_split(
        &payment,
        &[("card A", 700), ("card B", 1300), ("card C", 50)],
    )?;
    let converted = format!("13.00 (12.01 EUR at {})", super::DEMO_USD_EUR);
    anyhow::ensure!(
        payment.summary.contains(&converted),
        "the summary of invoice 12345 does not show card B's conversion ({converted}): {}",
        payment.summary
    );
    paid += 1;

    heading(
        "Peak week: 4000.00 USD against per-payment limits of 500.00 each, raised this week to \
         1500.00 (card A) and 1000.00 (card B); ALLOW_PARTIAL keeps what is covered",
    );
    let mut peak_request = request("peak-week", &peak, "PEAK-WEEK", 400_000);
    let mut policy = peak
        .default_policy
        .clone()
        .context("the peak week group has no default policy")?;
    policy.ceiling_windows = vec![peak_week_window(cards)];
    peak_request.policy_override = Some(policy);
    let payment = pay(&mut payments, peak_request).await?;
    expect(&payment, pb::PaymentState::PartiallyPaid)?;
    expect_split(
        &payment,
        &[("card A", 150_000), ("card B", 100_000), ("card C", 50_000)],
    )?;
    paid += 1;

    heading(&format!(
        "Duplicates: the same CreatePayment sent {DUPLICATES} times at once"
    ));
    let invoice_id = format!("DUP-{}", &run[..8]);
    duplicates(
        &mut payments,
        request("duplicates", globalops, &invoice_id, 999),
    )
    .await?;
    paid += 1;

    println!("\ndemo: {paid} payments, each split and settled as expected");
    Ok(())
}

fn usd(minor_units: i64) -> Money {
    Money {
        currency_code: "USD".to_owned(),
        minor_units,
    }
}

fn heading(text: &str) {
    println!("\ndemo: {text}\n");
}

/// Creates the payment, waits for it, and prints it.
async fn pay(
    payments: &mut Payments,
    request: pb::CreatePaymentRequest,
) -> anyhow::Result<pb::Payment> {
    let invoice_id = request
        .invoice
        .as_ref()
        .map(|invoice| invoice.id.clone())
        .unwrap_or_default();
    let payment = payments
        .create_payment(request)
        .await
        .map_err(failure)
        .with_context(|| format!("paying invoice {invoice_id}"))?
        .into_inner()
        .payment
        .context("no payment in the response")?;
    print_payment(&payment);
    Ok(payment)
}

fn state_name(state: i32) -> String {
    value_name(state, "PAYMENT_STATE_", pb::PaymentState::as_str_name)
}

/// Fails unless `payment` ended in `state`.
fn expect(payment: &pb::Payment, state: pb::PaymentState) -> anyhow::Result<()> {
    anyhow::ensure!(
        payment.state == i32::from(state),
        "payment {} of invoice {} is {}, not {}: {}",
        payment.id,
        payment.invoice.as_ref().map_or("", |i| i.id.as_str()),
        state_name(payment.state),
        state_name(state.into()),
        payment.summary
    );
    Ok(())
}

/// Fails unless the captured legs of `payment` are exactly `split`: (label, minor units) in
/// leg order.
fn expect_split(payment: &pb::Payment, split: &[(&str, i64)]) -> anyhow::Result<()> {
    let captured: Vec<(&str, i64)> = payment
        .legs
        .iter()
        .filter(|leg| leg.state == i32::from(pb::LegState::Captured))
        .map(|leg| {
            (
                leg.label.as_str(),
                leg.amount.as_ref().map_or(0, |a| a.minor_units),
            )
        })
        .collect();
    anyhow::ensure!(
        captured == split,
        "payment {} captured {captured:?}, expected {split:?}",
        payment.id
    );
    Ok(())
}

/// GlobalOps in month 2: its primary corporate card is blocked (card E stands for it, the
/// sandbox's blocked test card), with the same secondaries and policy.
fn month_2_group(cards: &DemoTokens) -> GroupSeed {
    GroupSeed {
        slug: "globalops-month-2",
        group: pb::CardGroup {
            billing_account_id: "globalops".to_owned(),
            display_name: "GlobalOps (month 2)".to_owned(),
            default_currency_code: "USD".to_owned(),
            members: vec![
                member(&cards.e, "card E", 1),
                member(&cards.b, "card B", 2),
                member(&cards.c, "card C", 3),
            ],
            default_policy: Some(weighted(&[
                (&cards.e, 6000),
                (&cards.b, 2000),
                (&cards.c, 2000),
            ])),
            ..Default::default()
        },
    }
}

/// GlobalOps in its peak week: each card limited to 500.00 per payment; sequential, keeping
/// what is covered. The ceiling window is given with each payment ([`peak_week_window`]),
/// since it moves with the calendar and the seeded group must stay the same across runs.
fn peak_week_group(cards: &DemoTokens) -> GroupSeed {
    let limited = |token: &str, label: &str, priority| pb::CardGroupMember {
        limit_per_payment: Some(usd(50_000)),
        ..member(token, label, priority)
    };
    GroupSeed {
        slug: "globalops-peak-week",
        group: pb::CardGroup {
            billing_account_id: "globalops".to_owned(),
            display_name: "GlobalOps (peak week)".to_owned(),
            default_currency_code: "USD".to_owned(),
            members: vec![
                limited(&cards.a, "card A", 1),
                limited(&cards.b, "card B", 2),
                limited(&cards.c, "card C", 3),
            ],
            default_policy: Some(pb::AllocationPolicy {
                strategy: pb::AllocationStrategy::Sequential.into(),
                fallback: Some(pb::FallbackPolicy {
                    enabled: true,
                    attempts_max: 0,
                }),
                completion: pb::Completion::AllowPartial.into(),
                ..Default::default()
            }),
            ..Default::default()
        },
    }
}

/// A ceiling window from a day ago to six days ahead raising card A to 1500.00 and card B to
/// 1000.00 per payment.
fn peak_week_window(cards: &DemoTokens) -> pb::CeilingWindow {
    const DAY_S: i64 = 24 * 60 * 60;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let at = |seconds| prost_types::Timestamp { seconds, nanos: 0 };
    let raise = |token: &str, minor_units| pb::MemberLimitOverride {
        token: token.to_owned(),
        limit_per_payment: Some(usd(minor_units)),
        limit_per_month: None,
    };
    pb::CeilingWindow {
        display_name: "peak week".to_owned(),
        start_time: Some(at(now - DAY_S)),
        end_time: Some(at(now + 6 * DAY_S)),
        overrides: vec![raise(&cards.a, 150_000), raise(&cards.b, 100_000)],
    }
}

/// A FIXED policy of exactly `amounts` (token, minor units), all or nothing.
fn fixed_policy(amounts: &[(&str, i64)]) -> pb::AllocationPolicy {
    pb::AllocationPolicy {
        strategy: pb::AllocationStrategy::Fixed.into(),
        fixed_amounts: amounts
            .iter()
            .map(|&(token, minor_units)| pb::MemberAmount {
                token: token.to_owned(),
                amount: Some(usd(minor_units)),
            })
            .collect(),
        remainder_rule: pb::RemainderRule::Sequential.into(),
        fallback: Some(pb::FallbackPolicy {
            enabled: true,
            attempts_max: 0,
        }),
        completion: pb::Completion::AllOrNothing.into(),
        ..Default::default()
    }
}

/// Sends `request` [`DUPLICATES`] times at once; a call told REQUEST_IN_PROGRESS retries, as a
/// client should. Fails unless every call answers with the same payment and the invoice has
/// exactly one payment.
async fn duplicates(
    payments: &mut Payments,
    request: pb::CreatePaymentRequest,
) -> anyhow::Result<()> {
    let calls = (0..DUPLICATES).map(|_| {
        let mut client = payments.clone();
        let request = request.clone();
        async move {
            let mut told_in_progress = 0;
            loop {
                match client.create_payment(request.clone()).await {
                    Ok(response) => {
                        let payment = response
                            .into_inner()
                            .payment
                            .context("no payment in the response")?;
                        return anyhow::Ok((payment, told_in_progress));
                    }
                    Err(status)
                        if status.code() == tonic::Code::Aborted
                            && told_in_progress < IN_PROGRESS_RETRIES_MAX =>
                    {
                        told_in_progress += 1;
                        tokio::time::sleep(IN_PROGRESS_RETRY_PAUSE).await;
                    }
                    Err(status) => return Err(failure(status)),
                }
            }
        }
    });
    let answers = futures::future::join_all(calls).await;
    let mut ids = BTreeSet::new();
    let mut retried = 0;
    let mut payment = None;
    for answer in answers {
        let (answered, told_in_progress) = answer.context("a duplicate CreatePayment failed")?;
        retried += usize::from(told_in_progress > 0);
        ids.insert(answered.id.clone());
        payment = Some(answered);
    }
    let payment = payment.context("no duplicate was sent")?;
    anyhow::ensure!(
        ids.len() == 1,
        "{DUPLICATES} duplicates made {} payments: {ids:?}",
        ids.len()
    );
    // The stored payment, as it is now: the answers of calls that were replayed may predate
    // the end of the payment.
    let stored = payments
        .list_payments(pb::ListPaymentsRequest {
            page_size: 10,
            invoice_id: request
                .invoice
                .as_ref()
                .map(|invoice| invoice.id.clone())
                .unwrap_or_default(),
            ..Default::default()
        })
        .await
        .map_err(failure)
        .context("listing the duplicates' payments")?
        .into_inner()
        .payments;
    print_payment(stored.first().unwrap_or(&payment));
    anyhow::ensure!(
        stored.len() == 1,
        "invoice {} has {} payments after {DUPLICATES} duplicates",
        payment.invoice.as_ref().map_or("", |i| i.id.as_str()),
        stored.len()
    );
    let stored = &stored[0];
    expect(stored, pb::PaymentState::Succeeded)?;
    println!(
        "\ndemo: {DUPLICATES} concurrent CreatePayment calls with one request id made 1 payment \
         ({}, {} captured); {retried} of them were told REQUEST_IN_PROGRESS and retried",
        stored.id,
        show(stored.captured.as_ref()),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dev::globalops_group;

    fn tokens() -> DemoTokens {
        DemoTokens {
            a: "tok_a".to_owned(),
            b: "tok_b".to_owned(),
            c: "tok_c".to_owned(),
            e: "tok_e".to_owned(),
        }
    }

    /// Every seeded group has distinct labels and priorities, and its weights name only its
    /// members and sum to 10000, so the orchestrator accepts it as it is.
    #[test]
    fn seed_groups_are_consistent() {
        let cards = tokens();
        for seed in [
            globalops_group(&cards),
            month_2_group(&cards),
            peak_week_group(&cards),
        ] {
            let group = &seed.group;
            let labels: BTreeSet<&str> = group.members.iter().map(|m| m.label.as_str()).collect();
            let priorities: BTreeSet<i32> = group.members.iter().map(|m| m.priority).collect();
            assert_eq!(labels.len(), group.members.len(), "{}", seed.slug);
            assert_eq!(priorities.len(), group.members.len(), "{}", seed.slug);
            let policy = group.default_policy.as_ref().unwrap();
            if !policy.weights.is_empty() {
                assert_eq!(
                    policy.weights.iter().map(|w| w.basis_points).sum::<i32>(),
                    10_000,
                    "{}",
                    seed.slug
                );
                for weight in &policy.weights {
                    assert!(
                        group.members.iter().any(|m| m.token == weight.token),
                        "{}",
                        seed.slug
                    );
                }
            }
        }
    }

    /// The peak week window covers now and raises only members of the peak week group.
    #[test]
    fn peak_week_window_covers_now() {
        let cards = tokens();
        let window = peak_week_window(&cards);
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let (start, end) = (window.start_time.unwrap(), window.end_time.unwrap());
        assert!(start.seconds < now && now < end.seconds);
        let group = peak_week_group(&cards).group;
        for over in &window.overrides {
            assert!(group.members.iter().any(|m| m.token == over.token));
        }
    }
}
