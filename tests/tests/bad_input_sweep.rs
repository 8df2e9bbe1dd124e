//! A bad-input sweep over the orchestrator's RPCs: missing fields, out-of-range values,
//! unknown enum values, oversized strings and non-ASCII junk each get INVALID_ARGUMENT with a
//! BadRequest naming the field, and nothing is written (row counts unchanged). An oversized
//! message is refused by the transport before any handler runs.

use tandem_proto::tandem::orchestrator::v1 as pb;
use tandem_tests::stack::{Stack, group, member, payment_request, policy, usd};
use tandem_tests::violated_fields;
use tonic::Code;

async fn counts(stack: &Stack) -> Vec<i64> {
    let pool = stack.orchestrator.pool().await;
    let mut counts = Vec::new();
    for table in [
        "card_groups",
        "payments",
        "idempotency_keys",
        "payment_events",
        "ledger_transfers",
        "member_spend",
    ] {
        counts.push(
            sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
                .fetch_one(&pool)
                .await
                .unwrap(),
        );
    }
    pool.close().await;
    counts
}

fn assert_invalid(result: Result<impl std::fmt::Debug, tonic::Status>, field: &str) {
    let status = result.expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
    let fields = violated_fields(&status);
    assert!(fields.iter().any(|f| f == field), "{field} in {fields:?}");
}

#[tokio::test]
async fn every_rpc_names_the_bad_field_and_writes_nothing() {
    let stack = Stack::start().await;
    let a = stack.vault.tokenize("4242424242424242").await;
    let good = stack
        .create_group(group(
            vec![member(&a, "card A", 1, None, None)],
            policy(
                pb::AllocationStrategy::Sequential,
                &[],
                pb::Completion::AllOrNothing,
            ),
        ))
        .await;
    let before = counts(&stack).await;
    let mut treasury = stack.groups().await;
    let mut payer = stack.payments().await;
    let valid_group = || {
        group(
            vec![member(&a, "card A", 1, None, None)],
            policy(
                pb::AllocationStrategy::Sequential,
                &[],
                pb::Completion::AllOrNothing,
            ),
        )
    };
    let create = |request_id: &str, group: pb::CardGroup| pb::CreateCardGroupRequest {
        request_id: request_id.into(),
        card_group: Some(group),
    };

    // CreateCardGroup: missing, out of range, unknown enums, oversized, junk.
    assert_invalid(
        treasury
            .create_card_group(pb::CreateCardGroupRequest {
                request_id: "g-1".into(),
                card_group: None,
            })
            .await,
        "card_group",
    );
    let mut g = valid_group();
    g.display_name = "x".repeat(10_000);
    assert_invalid(
        treasury.create_card_group(create("g-2", g)).await,
        "card_group.display_name",
    );
    let mut g = valid_group();
    g.members[0].priority = 5000;
    assert_invalid(
        treasury.create_card_group(create("g-3", g)).await,
        "card_group.members[0].priority",
    );
    let mut g = valid_group();
    g.default_policy.as_mut().unwrap().strategy = 99;
    assert_invalid(
        treasury.create_card_group(create("g-4", g)).await,
        "card_group.default_policy.strategy",
    );
    let mut g = valid_group();
    g.members[0].state = 42;
    assert_invalid(
        treasury.create_card_group(create("g-5", g)).await,
        "card_group.members[0].state",
    );
    let mut g = valid_group();
    g.default_policy.as_mut().unwrap().completion = 7;
    assert_invalid(
        treasury.create_card_group(create("g-6", g)).await,
        "card_group.default_policy.completion",
    );
    let mut g = valid_group();
    g.billing_account_id = "ünïcödé 💳".into();
    assert_invalid(
        treasury.create_card_group(create("g-7", g)).await,
        "card_group.billing_account_id",
    );
    let mut g = valid_group();
    g.default_currency_code = "US$".into();
    assert_invalid(
        treasury.create_card_group(create("g-8", g)).await,
        "card_group.default_currency_code",
    );
    let mut g = valid_group();
    g.members[0].label = "\u{0}\u{7}".into();
    assert_invalid(
        treasury.create_card_group(create("g-9", g)).await,
        "card_group.members[0].label",
    );
    let mut g = valid_group();
    g.default_policy.as_mut().unwrap().fallback = Some(pb::FallbackPolicy {
        enabled: true,
        attempts_max: 51,
    });
    assert_invalid(
        treasury.create_card_group(create("g-10", g)).await,
        "card_group.default_policy.fallback.attempts_max",
    );
    assert_invalid(
        treasury
            .create_card_group(create(&"r".repeat(129), valid_group()))
            .await,
        "request_id",
    );

    // UpdateCardGroup and DeleteCardGroup.
    assert_invalid(
        treasury
            .update_card_group(pb::UpdateCardGroupRequest {
                request_id: "u-1".into(),
                card_group: Some(pb::CardGroup {
                    id: good.id.clone(),
                    ..Default::default()
                }),
                update_mask: None,
            })
            .await,
        "update_mask",
    );
    assert_invalid(
        treasury
            .delete_card_group(pb::DeleteCardGroupRequest {
                request_id: "d-1".into(),
                card_group_id: "cg_ÿÿ".into(),
                etag: String::new(),
            })
            .await,
        "card_group_id",
    );

    // CreatePayment.
    let mut r = payment_request(&good.id, "INV-1", 100, None);
    r.invoice = None;
    assert_invalid(payer.create_payment(r).await, "invoice");
    let mut r = payment_request(&good.id, "INV-1", 100, None);
    r.invoice.as_mut().unwrap().amount = Some(usd(i64::MAX));
    assert_invalid(payer.create_payment(r).await, "invoice.amount.minor_units");
    let mut r = payment_request(&good.id, "INV-1", 100, None);
    r.invoice.as_mut().unwrap().description = "d".repeat(5_000);
    assert_invalid(payer.create_payment(r).await, "invoice.description");
    let mut r = payment_request(&good.id, "INV-1", 100, None);
    r.invoice.as_mut().unwrap().id = "инвойс".into();
    assert_invalid(payer.create_payment(r).await, "invoice.id");
    let mut r = payment_request(&good.id, "INV-1", 100, None);
    r.invoice.as_mut().unwrap().lines = (0..101)
        .map(|_| pb::InvoiceLine {
            amount: Some(usd(1)),
            ..Default::default()
        })
        .collect();
    assert_invalid(payer.create_payment(r).await, "invoice.lines");
    let mut r = payment_request(&good.id, "INV-1", 100, None);
    r.wait_timeout_ms = 10_000_000;
    assert_invalid(payer.create_payment(r).await, "wait_timeout_ms");
    let mut override_policy = policy(
        pb::AllocationStrategy::Fixed,
        &[],
        pb::Completion::AllOrNothing,
    );
    override_policy.remainder_rule = 0;
    let r = payment_request(&good.id, "INV-1", 100, Some(override_policy));
    assert_invalid(
        payer.create_payment(r).await,
        "policy_override.remainder_rule",
    );

    // Reads and refunds.
    assert_invalid(
        payer
            .list_payments(pb::ListPaymentsRequest {
                card_group_id: "not a group".into(),
                ..Default::default()
            })
            .await,
        "card_group_id",
    );
    assert_invalid(
        payer
            .refund_payment(pb::RefundPaymentRequest {
                request_id: "rf-1".into(),
                payment_id: format!("pay_{}", "a".repeat(26)),
                amount: Some(pb_money("ZZZ", 5)),
                reason: String::new(),
            })
            .await,
        "amount.currency_code",
    );
    let mut resolver = pb::payment_service_client::PaymentServiceClient::new(
        stack
            .orchestrator
            .channel(tandem_tls::identity::Role::Treasury)
            .await,
    );
    let resolution = || pb::ResolvePaymentRequest {
        request_id: "rs-1".into(),
        payment_id: format!("pay_{}", "a".repeat(26)),
        decision: pb::ResolutionDecision::Retry as i32,
        note: "acquirer ticket 7".into(),
    };
    for (request, field) in [
        (
            pb::ResolvePaymentRequest {
                request_id: String::new(),
                ..resolution()
            },
            "request_id",
        ),
        (
            pb::ResolvePaymentRequest {
                payment_id: "pay_short".into(),
                ..resolution()
            },
            "payment_id",
        ),
        (
            pb::ResolvePaymentRequest {
                decision: 99,
                ..resolution()
            },
            "decision",
        ),
        (
            pb::ResolvePaymentRequest {
                note: String::new(),
                ..resolution()
            },
            "note",
        ),
        (
            pb::ResolvePaymentRequest {
                note: "card 4242 4242 4242 4242".into(),
                ..resolution()
            },
            "note",
        ),
        (
            pb::ResolvePaymentRequest {
                note: "x".repeat(1_001),
                ..resolution()
            },
            "note",
        ),
    ] {
        assert_invalid(resolver.resolve_payment(request).await, field);
    }

    // An oversized message never reaches a handler.
    let mut huge = valid_group();
    huge.display_name = "x".repeat(200_000);
    let status = treasury
        .create_card_group(create("g-huge", huge))
        .await
        .unwrap_err();
    assert!(
        matches!(
            status.code(),
            Code::ResourceExhausted | Code::OutOfRange | Code::InvalidArgument
        ),
        "{status:?}"
    );

    assert_eq!(counts(&stack).await, before, "nothing was written");
}

fn pb_money(code: &str, minor_units: i64) -> tandem_proto::tandem::r#type::v1::Money {
    tandem_proto::tandem::r#type::v1::Money {
        currency_code: code.into(),
        minor_units,
    }
}
