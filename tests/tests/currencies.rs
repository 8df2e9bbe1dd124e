//! Money across currencies (DESIGN section 10), end to end over mutual TLS with the sandbox
//! acquirer: a card in another currency charged its part converted at the rate the payment
//! fixed, the ledger balanced in each currency through the FX clearing accounts, refunds at the
//! leg's rate, `BY_CURRENCY` lines of several currencies, and stale or missing rates refused
//! with nothing written.

use std::time::Duration;

use tandem_ledger::types::{AccountId, Balances};
use tandem_orchestrator::domain::booking::{funding_source, fx_clearing, fx_rounding, receivable};
use tandem_proto::tandem::orchestrator::v1 as pb;
use tandem_proto::tandem::orchestrator::v1::fx_service_client::FxServiceClient;
use tandem_proto::tandem::r#type::v1 as types;
use tandem_proto::tandem::vault::v1 as vault_pb;
use tandem_tests::orchestrator_reason;
use tandem_tests::stack::{Stack, group, member, payment_request, policy, state, usd};
use tandem_tls::identity::Role;

use pb::AllocationStrategy as S;
use pb::Completion as C;

const VISA: &str = "4242424242424242";
const MASTERCARD: &str = "5555555555554444";
const AMEX: &str = "378282246310005";

fn currency(code: &str) -> tandem_money::Currency {
    tandem_money::Currency::parse(code).unwrap()
}

/// Sets the rate from `base` to `quote` as the treasury, observed `age` ago.
async fn set_rate(stack: &Stack, base: &str, quote: &str, rate: &str, age: Duration) {
    let as_of = time::OffsetDateTime::now_utc() - age;
    FxServiceClient::new(stack.orchestrator.channel(Role::Treasury).await)
        .set_fx_rate(pb::SetFxRateRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            rate: Some(pb::FxRate {
                base_currency_code: base.into(),
                quote_currency_code: quote.into(),
                rate: rate.into(),
                as_of_time: Some(prost_types::Timestamp {
                    seconds: as_of.unix_timestamp(),
                    nanos: 0,
                }),
                ..Default::default()
            }),
        })
        .await
        .expect("set rate");
}

fn in_currency(mut m: pb::CardGroupMember, code: &str) -> pb::CardGroupMember {
    m.currency_code = code.into();
    m
}

async fn balances(stack: &Stack, id: AccountId) -> Balances {
    let pool = stack.orchestrator.pool().await;
    let found = tandem_ledger::ledger::accounts_by_id(&pool, &[id])
        .await
        .expect("ledger account")
        .pop()
        .map(|a| a.balances)
        .unwrap_or_default();
    pool.close().await;
    found
}

/// Posted debits less posted credits.
async fn net(stack: &Stack, id: AccountId) -> i64 {
    let b = balances(stack, id).await;
    b.debits_posted - b.credits_posted
}

/// The sandbox's operations of `kind` on `token`'s card (replays aside): the amount each
/// approved, with its currency.
async fn operations(
    stack: &Stack,
    token: &str,
    kind: vault_pb::SandboxOperationType,
) -> Vec<(String, i64)> {
    stack
        .sandbox_operations(token)
        .await
        .iter()
        .filter(|o| {
            o.r#type == kind as i32
                && o.outcome != vault_pb::SandboxOperationOutcome::Replayed as i32
        })
        .map(|o| minor(&o.approved))
        .collect()
}

fn leg<'p>(payment: &'p pb::Payment, label: &str) -> &'p pb::PaymentLeg {
    payment
        .legs
        .iter()
        .find(|l| l.label == label)
        .unwrap_or_else(|| panic!("no leg of {label}: {payment:?}"))
}

fn minor(money: &Option<types::Money>) -> (String, i64) {
    let m = money.clone().unwrap_or_default();
    (m.currency_code, m.minor_units)
}

/// GlobalOps with cards in USD and EUR pays a USD invoice: the EUR card is charged its part
/// converted at the rate (rounded up), the leg records the rate, its source and as-of time,
/// the summary shows both amounts, the ledger books the conversion through the pair's
/// clearing accounts with the rounding apart and each currency balanced; a full refund gives
/// the EUR card back exactly what it paid and leaves the FX accounts where they were.
#[tokio::test]
async fn globalops_pays_usd_with_a_converted_eur_card_and_refunds_it_at_the_same_rate() {
    let stack = Stack::start().await;
    set_rate(&stack, "USD", "EUR", "0.9238", Duration::from_secs(60)).await;
    let a = stack.vault.tokenize(VISA).await;
    let b = stack.vault.tokenize(MASTERCARD).await;
    let c = stack.vault.tokenize(AMEX).await;
    let globalops = stack
        .create_group(group(
            vec![
                member(&a, "card A", 1, Some(7_000), None),
                in_currency(member(&b, "card B", 2, None, None), "EUR"),
                member(&c, "card C", 3, None, None),
            ],
            policy(S::Sequential, &[], C::AllOrNothing),
        ))
        .await;
    let payment = stack.pay(&globalops.id, "GO-FX-1", 20_000, None).await;
    assert_eq!(state(&payment), "SUCCEEDED", "{}", payment.summary);
    let eur = leg(&payment, "card B");
    assert_eq!(minor(&eur.amount), ("USD".into(), 13_000));
    // 130.00 USD at 0.9238 is 120.094 EUR: the card pays 120.10.
    assert_eq!(minor(&eur.charge_amount), ("EUR".into(), 12_010));
    assert_eq!(minor(&eur.captured), ("EUR".into(), 12_010));
    assert_eq!(eur.fx_rate, "0.9238");
    assert!(eur.fx_rate_source.starts_with("treasury:"), "{eur:?}");
    assert!(eur.fx_rate_as_of_time.is_some());
    let usd_leg = leg(&payment, "card A");
    assert_eq!(minor(&usd_leg.charge_amount), ("USD".into(), 7_000));
    assert!(usd_leg.fx_rate.is_empty());
    assert!(
        payment.summary.contains("130.00 (120.10 EUR at 0.9238)"),
        "{}",
        payment.summary
    );
    assert_eq!(
        operations(&stack, &b, vault_pb::SandboxOperationType::Authorize).await,
        [("EUR".to_owned(), 12_010)]
    );

    let (u, e) = (currency("USD"), currency("EUR"));
    assert_eq!(
        net(&stack, funding_source(&b, "EUR").unwrap()).await,
        12_010
    );
    assert_eq!(
        net(&stack, fx_clearing(u, e, e).unwrap()).await,
        -12_009,
        "the EUR side holds the exact conversion rounded down"
    );
    assert_eq!(net(&stack, fx_clearing(u, e, u).unwrap()).await, 13_000);
    assert_eq!(net(&stack, fx_rounding(e).unwrap()).await, -1);
    assert_eq!(net(&stack, receivable("acct-1", "EUR").unwrap()).await, 0);
    // The treasury's spend report shows what the euro card paid, in euros.
    let spend = |report: &pb::GetSpendReportResponse| -> Vec<(String, i64, i64)> {
        report
            .by_card
            .iter()
            .filter(|line| line.card_token == b)
            .map(|line| {
                (
                    line.currency_code.clone(),
                    minor(&line.captured).1,
                    minor(&line.refunded).1,
                )
            })
            .collect()
    };
    assert_eq!(
        spend(&stack.spend_report("acct-1").await),
        [("EUR".to_owned(), 12_010, 0)]
    );
    stack.assert_ledger_invariants().await;

    let refund = stack
        .payments()
        .await
        .refund_payment(pb::RefundPaymentRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            payment_id: payment.id.clone(),
            amount: None,
            reason: "invoice cancelled".into(),
        })
        .await
        .expect("refund")
        .into_inner();
    let refunded = stack.settled(&payment.id).await;
    assert_eq!(state(&refunded), "REFUNDED", "{refund:?}");
    assert_eq!(
        minor(&leg(&refunded, "card B").refunded),
        ("EUR".into(), 12_010)
    );
    assert_eq!(
        operations(&stack, &b, vault_pb::SandboxOperationType::Refund).await,
        [("EUR".to_owned(), 12_010)]
    );
    for id in [
        funding_source(&b, "EUR").unwrap(),
        fx_clearing(u, e, e).unwrap(),
        fx_clearing(u, e, u).unwrap(),
        fx_rounding(e).unwrap(),
        receivable("acct-1", "EUR").unwrap(),
    ] {
        assert_eq!(net(&stack, id.clone()).await, 0, "{id:?}");
    }
    assert_eq!(
        spend(&stack.spend_report("acct-1").await),
        [("EUR".to_owned(), 12_010, 12_010)]
    );
    stack.assert_ledger_invariants().await;
}

/// A rate changed while a payment is in flight does not change its legs: the payment keeps the
/// rate it fixed when it was created.
#[tokio::test]
async fn a_rate_changed_in_flight_does_not_change_the_legs() {
    let stack = Stack::start().await;
    set_rate(&stack, "USD", "EUR", "0.9000", Duration::from_secs(60)).await;
    let b = stack.vault.tokenize(MASTERCARD).await;
    let group_id = stack
        .create_group(group(
            vec![in_currency(member(&b, "card B", 1, None, None), "EUR")],
            policy(S::Sequential, &[], C::AllOrNothing),
        ))
        .await
        .id;
    stack.sandbox_latency(&b, 1_500).await;
    let mut request = payment_request(&group_id, "GO-FX-2", 10_000, None);
    request.wait = false;
    let created = stack.create_payment(request).await;
    set_rate(&stack, "USD", "EUR", "1.5000", Duration::from_secs(0)).await;
    let paid = stack.settled(&created.id).await;
    assert_eq!(state(&paid), "SUCCEEDED", "{}", paid.summary);
    let only = leg(&paid, "card B");
    assert_eq!(only.fx_rate, "0.9");
    assert_eq!(minor(&only.captured), ("EUR".into(), 9_000));
    stack.assert_ledger_invariants().await;
}

/// A member without a fresh rate takes no part: a payment the other members can cover goes
/// ahead without it (a group of several currencies keeps paying from its cards in the
/// invoice's currency); one that needs it is refused with the rate's reason, and nothing is
/// written.
#[tokio::test]
async fn stale_and_missing_rates_refuse_cleanly() {
    let stack = Stack::start().await;
    set_rate(
        &stack,
        "USD",
        "EUR",
        "0.92",
        Duration::from_secs(3 * 86_400),
    )
    .await;
    let a = stack.vault.tokenize(VISA).await;
    let b = stack.vault.tokenize(MASTERCARD).await;
    let c = stack.vault.tokenize(AMEX).await;
    let stale = stack
        .create_group(group(
            vec![
                member(&a, "card A", 1, Some(4_000), None),
                in_currency(member(&b, "card B", 2, None, None), "EUR"),
            ],
            policy(S::Sequential, &[], C::AllOrNothing),
        ))
        .await;
    let mut missing = group(
        vec![
            member(&a, "card A", 1, Some(4_000), None),
            in_currency(member(&c, "card C", 2, None, None), "GBP"),
        ],
        policy(S::Sequential, &[], C::AllOrNothing),
    );
    missing.billing_account_id = "acct-2".into();
    let missing = stack.create_group(missing).await;
    let mut payer = stack.payments().await;
    for (group_id, reason) in [
        (&stale.id, "FX_RATE_STALE"),
        (&missing.id, "FX_RATE_MISSING"),
    ] {
        let status = payer
            .create_payment(payment_request(group_id, "GO-FX-3", 5_000, None))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
        assert_eq!(orchestrator_reason(&status), reason);
    }
    let listed = payer
        .list_payments(pb::ListPaymentsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(listed.payments.is_empty(), "{listed:?}");
    assert_eq!(stack.sandbox_operations(&a).await.len(), 0);

    // Within card A's limit the euro card is not needed: paid without a conversion.
    let paid = stack.pay(&stale.id, "GO-FX-4", 3_000, None).await;
    assert_eq!(state(&paid), "SUCCEEDED", "{}", paid.summary);
    assert_eq!(paid.legs.len(), 1);
    assert!(paid.legs[0].fx_rate.is_empty());
    stack.assert_ledger_invariants().await;
}

fn line(amount: i64, code: &str) -> pb::InvoiceLine {
    pb::InvoiceLine {
        amount: Some(usd(amount)),
        currency_code: code.into(),
        ..Default::default()
    }
}

/// `BY_CURRENCY` over a USD line and a JPY line: each paid by the members of its currency, the
/// JPY line converted; without a JPY member it is refused naming the line unless the policy
/// allows conversion, and then the USD member pays it.
#[tokio::test]
async fn by_currency_sends_each_line_to_its_currency() {
    let stack = Stack::start().await;
    set_rate(&stack, "USD", "JPY", "149.37", Duration::from_secs(60)).await;
    let a = stack.vault.tokenize(VISA).await;
    let j = stack.vault.tokenize(MASTERCARD).await;
    let by_currency = |allow_conversion| pb::AllocationPolicy {
        allow_conversion,
        ..policy(S::ByCurrency, &[], C::AllOrNothing)
    };
    let both = stack
        .create_group(group(
            vec![
                member(&a, "card A", 1, None, None),
                in_currency(member(&j, "card J", 2, None, None), "JPY"),
            ],
            by_currency(false),
        ))
        .await;
    let invoice = |group_id: &str, id: &str| {
        let mut request = payment_request(group_id, id, 20_000, None);
        request.invoice.as_mut().unwrap().lines = vec![line(12_000, "USD"), line(8_000, "JPY")];
        request
    };
    let mut payer = stack.payments().await;
    let paid = stack.create_payment(invoice(&both.id, "BC-1")).await;
    assert_eq!(state(&paid), "SUCCEEDED", "{}", paid.summary);
    assert_eq!(
        minor(&leg(&paid, "card A").captured),
        ("USD".into(), 12_000)
    );
    // 80.00 USD at 149.37 is 11,949.6 JPY: the card pays 11,950.
    let yen = leg(&paid, "card J");
    assert_eq!(minor(&yen.amount), ("USD".into(), 8_000));
    assert_eq!(minor(&yen.captured), ("JPY".into(), 11_950));

    let mut usd_only = group(
        vec![member(&a, "card A", 1, None, None)],
        by_currency(false),
    );
    usd_only.billing_account_id = "acct-usd".into();
    let usd_only = stack.create_group(usd_only).await;
    let refused = payer
        .create_payment(invoice(&usd_only.id, "BC-2"))
        .await
        .expect_err("no JPY member");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        tandem_tests::violated_fields(&refused),
        ["invoice.lines[1].currency_code"]
    );
    let mut converting = invoice(&usd_only.id, "BC-3");
    converting.policy_override = Some(by_currency(true));
    let paid = stack.create_payment(converting).await;
    assert_eq!(state(&paid), "SUCCEEDED", "{}", paid.summary);
    assert_eq!(
        minor(&leg(&paid, "card A").captured),
        ("USD".into(), 20_000)
    );
    stack.assert_ledger_invariants().await;
}

/// A converted leg survives a crash at every recovery point (after the intents, after the
/// vault's answers, after the results), with the rate changed while the orchestrator is down:
/// the recovered payment converts at the rate it fixed, authorizes each operation once, and the
/// ledger stays balanced in both currencies.
#[tokio::test]
async fn a_crash_replays_a_converted_leg_at_its_recorded_rate() {
    use tandem_orchestrator::workflow::{CrashPlan, CrashPoint};
    use tandem_tests::{RunningOrchestrator, RunningVault, TestDatabase, crash_test_settings};

    let vault = RunningVault::start().await;
    let database = TestDatabase::create().await;
    let settings = crash_test_settings(&database, &vault);
    let orchestrator =
        RunningOrchestrator::start_with(settings.clone(), database.clone(), None).await;
    let mut stack = Stack {
        vault,
        orchestrator,
    };
    let declining = stack.vault.tokenize("4000000000009995").await;
    let euro = stack.vault.tokenize(MASTERCARD).await;
    let group_id = stack
        .create_group(group(
            vec![
                member(&declining, "card D", 1, None, None),
                in_currency(member(&euro, "card B", 2, None, None), "EUR"),
            ],
            policy(S::Sequential, &[], C::AllOrNothing),
        ))
        .await
        .id;
    let mut paid = Vec::new();
    for (round, point) in [
        CrashPoint::AfterIntent,
        CrashPoint::AfterCall,
        CrashPoint::AfterResult,
    ]
    .into_iter()
    .enumerate()
    {
        for nth in 1..=3 {
            set_rate(&stack, "USD", "EUR", "0.9238", Duration::from_secs(60)).await;
            let request = payment_request(&group_id, &format!("FX-{round}-{nth}"), 1_300, None);
            let created;
            (stack, created) = stack
                .pay_through_a_crash(&settings, &database, CrashPlan::new(point, nth), request)
                .await;
            // The treasury moves the rate while the payment is being recovered.
            set_rate(&stack, "USD", "EUR", "2.5", Duration::from_secs(0)).await;
            let payment = stack.settled(&created.id).await;
            assert_eq!(
                state(&payment),
                "SUCCEEDED",
                "{point:?} #{nth}: {}",
                payment.summary
            );
            let converted = leg(&payment, "card B");
            assert_eq!(converted.fx_rate, "0.9238", "{point:?} #{nth}");
            assert_eq!(minor(&converted.captured), ("EUR".into(), 1_201));
            paid.push(created.id);
        }
    }
    assert_eq!(
        stack
            .assert_single_authorizations(&[&declining, &euro])
            .await,
        2 * paid.len(),
        "a decline and a conversion per payment"
    );
    let (u, e) = (currency("USD"), currency("EUR"));
    let payments = paid.len() as i64;
    assert_eq!(
        net(&stack, funding_source(&euro, "EUR").unwrap()).await,
        1_201 * payments
    );
    assert_eq!(
        net(&stack, fx_clearing(u, e, u).unwrap()).await,
        1_300 * payments
    );
    assert_eq!(net(&stack, fx_rounding(e).unwrap()).await, -payments);
    stack.assert_ledger_invariants().await;
}
