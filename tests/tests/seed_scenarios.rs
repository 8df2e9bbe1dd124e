//! The seed scenarios of DESIGN section 8, end to end over mutual TLS with the sandbox
//! acquirer: each asserts the exact split per card, the final state, what the sandbox recorded,
//! the ledger's entries by card and cost center, and the summary people read.

use std::collections::HashSet;

use tandem_ledger::ledger::TransferFilter;
use tandem_proto::tandem::orchestrator::v1 as pb;
use tandem_proto::tandem::r#type::v1::DeclineCode;
use tandem_tests::stack::{
    Stack, authorizations, group, legs, member, payment_request, policy, state, usd,
};

use pb::AllocationStrategy as S;
use pb::Completion as C;

const VISA: &str = "4242424242424242";
const MASTERCARD: &str = "5555555555554444";
const AMEX: &str = "378282246310005";
const INSUFFICIENT_FUNDS: &str = "4000000000009995";

fn leg(label: &str, amount: i64, state: &str) -> (String, i64, String) {
    (label.to_owned(), amount, state.to_owned())
}

fn by_card(token: &str) -> TransferFilter {
    TransferFilter {
        card_token: Some(token.to_owned()),
        ..TransferFilter::default()
    }
}

/// GlobalOps: up to 60% on the primary corporate card, the rest evenly over two secondaries.
/// Month 1 all succeed. Month 2 the primary is blocked: the secondaries cover it, the invoice is
/// fully paid, the terminal event carries the summary, and the ledger shows the split by card.
#[tokio::test]
async fn globalops_primary_blocked_backups_cover() {
    let stack = Stack::start().await;
    let primary = stack.vault.tokenize(VISA).await;
    let second = stack.vault.tokenize(MASTERCARD).await;
    let third = stack.vault.tokenize(AMEX).await;
    let globalops = stack
        .create_group(group(
            vec![
                member(&primary, "corporate", 1, None, None),
                member(&second, "regional", 2, None, None),
                member(&third, "prepaid", 3, None, None),
            ],
            policy(
                S::Weighted,
                &[(&primary, 6000), (&second, 2000), (&third, 2000)],
                C::AllOrNothing,
            ),
        ))
        .await;
    let month1 = stack.pay(&globalops.id, "GO-2026-10", 100_000, None).await;
    assert_eq!(state(&month1), "SUCCEEDED", "{}", month1.summary);
    assert_eq!(
        legs(&month1),
        vec![
            leg("corporate", 60_000, "CAPTURED"),
            leg("regional", 20_000, "CAPTURED"),
            leg("prepaid", 20_000, "CAPTURED"),
        ]
    );

    stack.sandbox_decline(&primary, DeclineCode::Blocked).await;
    let mut request = payment_request(&globalops.id, "GO-2026-11", 100_000, None);
    request.wait = true;
    let month2 = stack
        .payments()
        .await
        .create_payment(request)
        .await
        .unwrap()
        .into_inner()
        .payment
        .unwrap();
    assert_eq!(state(&month2), "SUCCEEDED", "{}", month2.summary);
    // The blocked 600.00 goes to the secondaries in priority order, within their room
    // (unlimited): all of it to the regional card, on a second leg.
    assert_eq!(
        legs(&month2),
        vec![
            leg("corporate", 0, "DECLINED"),
            leg("regional", 20_000, "CAPTURED"),
            leg("prepaid", 20_000, "CAPTURED"),
            leg("regional", 60_000, "CAPTURED"),
        ]
    );
    assert_eq!(
        month2.summary,
        "Invoice GO-2026-11 paid 1000.00 USD: regional ·4444 800.00, prepaid ·0005 200.00 \
         (regional replaced corporate after blocked)"
    );
    let mut payer = stack.payments().await;
    let mut events = payer
        .watch_payment(pb::WatchPaymentRequest {
            payment_id: month2.id.clone(),
            after_sequence: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut last = None;
    while let Some(message) = events.message().await.unwrap() {
        last = message.event;
    }
    let last = last.unwrap();
    assert_eq!(last.r#type, pb::PaymentEventType::PaymentSucceeded as i32);
    assert_eq!(last.summary, month2.summary);

    // The sandbox: the blocked card declined once and holds nothing; each secondary
    // authorized once per leg.
    assert_eq!(
        authorizations(&stack.sandbox_operations(&primary).await).len(),
        2
    );
    assert_eq!(stack.sandbox_held(&primary).await, 0);
    assert_eq!(
        authorizations(&stack.sandbox_operations(&second).await).len(),
        3
    );
    // The ledger by card, across both months.
    assert_eq!(stack.ledger_paid(&by_card(&primary)).await, 60_000);
    assert_eq!(stack.ledger_paid(&by_card(&second)).await, 20_000 + 80_000);
    assert_eq!(stack.ledger_paid(&by_card(&third)).await, 20_000 + 20_000);
    // And by cost center (each member books to its own).
    for (cost_center, paid) in [
        ("cc-corporate", 60_000),
        ("cc-regional", 100_000),
        ("cc-prepaid", 40_000),
    ] {
        let filter = TransferFilter {
            cost_center: Some(cost_center.to_owned()),
            ..TransferFilter::default()
        };
        assert_eq!(stack.ledger_paid(&filter).await, paid, "{cost_center}");
    }
    stack.assert_ledger_invariants().await;
    stack.assert_spend_matches("acct-1").await;
}

/// Peak week: an invoice larger than any card's per-payment limit. A ceiling window open now
/// raises one card's limit; under ALLOW_PARTIAL the covered part is kept and the remainder
/// reported; spend by card and by cost center comes from the ledger.
#[tokio::test]
async fn peak_week_ceiling_window_and_allow_partial() {
    let stack = Stack::start().await;
    let a = stack.vault.tokenize(VISA).await;
    let b = stack.vault.tokenize(MASTERCARD).await;
    let mut peak = policy(S::Sequential, &[], C::AllowPartial);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    peak.ceiling_windows.push(pb::CeilingWindow {
        display_name: "Peak week".into(),
        start_time: Some(prost_types::Timestamp {
            seconds: now - 86_400,
            nanos: 0,
        }),
        end_time: Some(prost_types::Timestamp {
            seconds: now + 6 * 86_400,
            nanos: 0,
        }),
        overrides: vec![pb::MemberLimitOverride {
            token: a.clone(),
            limit_per_payment: Some(usd(80_000)),
            limit_per_month: None,
        }],
    });
    let group = stack
        .create_group(group(
            vec![
                member(&a, "card A", 1, Some(50_000), None),
                member(&b, "card B", 2, Some(50_000), None),
            ],
            peak,
        ))
        .await;
    let payment = stack.pay(&group.id, "PEAK-1", 150_000, None).await;
    assert_eq!(state(&payment), "PARTIALLY_PAID", "{}", payment.summary);
    assert_eq!(
        legs(&payment),
        vec![
            leg("card A", 80_000, "CAPTURED"),
            leg("card B", 50_000, "CAPTURED")
        ]
    );
    assert_eq!(payment.remaining, Some(usd(20_000)));
    assert_eq!(
        payment.summary,
        "Invoice PEAK-1 partly paid 1300.00 of 1500.00 USD: card A ·4242 800.00, \
         card B ·4444 500.00; 200.00 USD remaining"
    );
    assert_eq!(stack.ledger_paid(&by_card(&a)).await, 80_000);
    let cost_center = |name: &str| TransferFilter {
        cost_center: Some(name.to_owned()),
        ..TransferFilter::default()
    };
    assert_eq!(stack.ledger_paid(&cost_center("cc-card-A")).await, 80_000);
    assert_eq!(stack.ledger_paid(&cost_center("cc-card-B")).await, 50_000);
    stack.assert_ledger_invariants().await;
    stack.assert_spend_matches("acct-1").await;
}

/// A managed service provider: one card group per client, each with its own currency; each
/// client's invoice is paid from its own group only, and per-client ledger totals match.
#[tokio::test]
async fn managed_service_provider_keeps_clients_apart() {
    let stack = Stack::start().await;
    let mut clients = Vec::new();
    for (client, currency, pans) in [
        ("client-usd", "USD", [VISA, MASTERCARD]),
        ("client-eur", "EUR", [AMEX, "4000056655665556"]),
    ] {
        let mut members = Vec::new();
        let mut tokens = Vec::new();
        for (i, pan) in pans.iter().enumerate() {
            let token = stack.vault.tokenize(pan).await;
            let mut m = member(
                &token,
                &format!("{client} card {i}"),
                i as i32 + 1,
                None,
                None,
            );
            m.currency_code = currency.into();
            members.push(m);
            tokens.push(token);
        }
        let mut g = group(members, policy(S::Parallel, &[], C::AllOrNothing));
        g.billing_account_id = client.into();
        g.default_currency_code = currency.into();
        let created = stack.create_group(g).await;
        clients.push((client, currency, created, tokens));
    }
    let mut payer = stack.payments().await;
    for (client, currency, group, _) in &clients {
        for amount in [10_001, 2_500] {
            let mut request =
                payment_request(&group.id, &format!("{client}-{amount}"), amount, None);
            request.invoice.as_mut().unwrap().amount =
                Some(tandem_proto::tandem::r#type::v1::Money {
                    currency_code: (*currency).into(),
                    minor_units: amount,
                });
            let payment = payer
                .create_payment(request)
                .await
                .unwrap()
                .into_inner()
                .payment
                .unwrap();
            assert_eq!(state(&payment), "SUCCEEDED", "{}", payment.summary);
            assert_eq!(payment.billing_account_id, *client);
            assert!(
                payment.summary.starts_with(&format!(
                    "Invoice {client}-{amount} paid {}.{:02} {currency}: {client} card 0",
                    amount / 100,
                    amount % 100
                )),
                "{}",
                payment.summary
            );
            assert!(payment.legs.iter().all(|l| l.label.starts_with(client)));
        }
    }
    // Each client's cards carry exactly its own invoices, and its receivable their sum.
    for (client, currency, _, tokens) in &clients {
        let mut paid = 0;
        for token in tokens {
            let transfers = stack.ledger_transfers(&by_card(token)).await;
            assert!(transfers.iter().all(|t| t.currency.as_str() == *currency));
            assert!(
                transfers
                    .iter()
                    .all(|t| t.refs.invoice_id.as_deref().unwrap().starts_with(client)),
                "{client}'s cards paid only {client}'s invoices"
            );
            paid += stack.ledger_paid(&by_card(token)).await;
        }
        assert_eq!(paid, 12_501, "{client}");
        let pool = stack.orchestrator.pool().await;
        let receivable =
            tandem_orchestrator::domain::booking::receivable(client, currency).unwrap();
        let account = tandem_ledger::ledger::accounts_by_id(&pool, &[receivable])
            .await
            .unwrap()
            .pop()
            .unwrap();
        assert_eq!(account.balances.credits_posted, 12_501, "{client}");
        pool.close().await;
    }
    stack.assert_ledger_invariants().await;
    stack.assert_spend_matches("client-usd").await;
}

/// Invoice 12345: card A 7.00, card B 13.00, card C 0.50 exactly, each with its authorization
/// code; card B takes over from card D, which declined for insufficient funds.
#[tokio::test]
async fn invoice_12345_splits_exactly() {
    let stack = Stack::start().await;
    let a = stack.vault.tokenize(VISA).await;
    let b = stack.vault.tokenize(MASTERCARD).await;
    let c = stack.vault.tokenize(AMEX).await;
    let d = stack.vault.tokenize(INSUFFICIENT_FUNDS).await;
    let fixed = pb::AllocationPolicy {
        strategy: S::Fixed as i32,
        fixed_amounts: [(&a, 700), (&d, 1300), (&c, 50)]
            .iter()
            .map(|(token, amount)| pb::MemberAmount {
                token: (*token).clone(),
                amount: Some(usd(*amount)),
            })
            .collect(),
        remainder_rule: pb::RemainderRule::Sequential as i32,
        fallback: Some(pb::FallbackPolicy {
            enabled: true,
            attempts_max: 0,
        }),
        ..Default::default()
    };
    let group = stack
        .create_group(group(
            vec![
                member(&a, "card A", 1, None, None),
                member(&b, "card B", 2, None, None),
                member(&c, "card C", 3, None, None),
                member(&d, "card D", 4, None, None),
            ],
            fixed,
        ))
        .await;
    let payment = stack.pay(&group.id, "12345", 2050, None).await;
    assert_eq!(state(&payment), "SUCCEEDED", "{}", payment.summary);
    assert_eq!(
        payment.summary,
        "Invoice 12345 paid 20.50 USD: card A ·4242 7.00, card B ·4444 13.00, \
         card C ·0005 0.50 (card B replaced card D after insufficient funds)"
    );
    let captured: Vec<(String, i64)> = payment
        .legs
        .iter()
        .filter(|l| l.state == pb::LegState::Captured as i32)
        .map(|l| (l.label.clone(), l.captured.as_ref().unwrap().minor_units))
        .collect();
    assert_eq!(
        captured,
        [
            ("card A".to_owned(), 700),
            ("card C".to_owned(), 50),
            ("card B".to_owned(), 1300)
        ]
    );
    for leg in payment
        .legs
        .iter()
        .filter(|l| l.state == pb::LegState::Captured as i32)
    {
        assert_eq!(leg.authorization_code.len(), 6, "{leg:?}");
        let operations = stack.sandbox_operations(&leg.token).await;
        assert_eq!(operations[0].authorization_code, leg.authorization_code);
    }
    for (token, amount) in [(&a, 700), (&b, 1300), (&c, 50), (&d, 0)] {
        assert_eq!(stack.ledger_paid(&by_card(token)).await, amount);
    }
    stack.assert_ledger_invariants().await;
    stack.assert_spend_matches("acct-1").await;
}

/// Duplicates: the same CreatePayment 50 times concurrently makes one payment; replays of
/// vault answers credit nothing twice (one hold and one post per leg in the ledger).
#[tokio::test]
async fn duplicates_credit_nothing_twice() {
    let stack = Stack::start().await;
    let a = stack.vault.tokenize(VISA).await;
    let b = stack.vault.tokenize(MASTERCARD).await;
    let group = stack
        .create_group(group(
            vec![
                member(&a, "card A", 1, None, None),
                member(&b, "card B", 2, None, None),
            ],
            policy(S::Parallel, &[], C::AllOrNothing),
        ))
        .await;
    let request = payment_request(&group.id, "DUP-1", 999, None);
    let payer = stack.payments().await;
    let results = futures::future::join_all((0..50).map(|_| {
        let mut payer = payer.clone();
        let request = request.clone();
        async move { payer.create_payment(request).await }
    }))
    .await;
    let ids: HashSet<String> = results
        .into_iter()
        .filter_map(|r| r.ok())
        .map(|r| r.into_inner().payment.unwrap().id)
        .collect();
    assert_eq!(ids.len(), 1);
    let id = ids.into_iter().next().unwrap();
    let payment = stack.settled(&id).await;
    assert_eq!(state(&payment), "SUCCEEDED");
    let transfers = stack
        .ledger_transfers(&TransferFilter {
            payment_id: Some(id.clone()),
            ..TransferFilter::default()
        })
        .await;
    assert_eq!(
        transfers.len(),
        4,
        "one hold and one post per leg: {transfers:?}"
    );
    assert_eq!(
        stack
            .ledger_paid(&TransferFilter {
                payment_id: Some(id),
                ..TransferFilter::default()
            })
            .await,
        999
    );
    stack.assert_ledger_invariants().await;
    stack.assert_spend_matches("acct-1").await;
}
