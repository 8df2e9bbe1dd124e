//! End-to-end payments over mutual TLS: the orchestrator in front of the vault and its sandbox
//! acquirer, each on its own database. Every test checks what the sandbox saw and what the
//! ledger booked, not only what the API answered.

use std::collections::HashSet;

use tandem_proto::tandem::orchestrator::v1 as pb;
use tandem_tests::stack::{
    Stack, authorizations, group, legs, member, payment_request, policy, state, usd,
};
use tandem_tests::{orchestrator_reason, violated_fields};
use tonic::Code;

const VISA: &str = "4242424242424242";
const MASTERCARD: &str = "5555555555554444";
const AMEX: &str = "378282246310005";
const DEBIT: &str = "4000056655665556";
const INSUFFICIENT_FUNDS: &str = "4000000000009995";
const BLOCKED: &str = "4100000000000019";
const AUTHENTICATION_REQUIRED: &str = "4000002760003184";
const BALANCE_50_USD: &str = "4000009900000012";

use pb::AllocationStrategy as S;
use pb::Completion as C;

fn leg(label: &str, amount: i64, state: &str) -> (String, i64, String) {
    (label.to_owned(), amount, state.to_owned())
}

/// WEIGHTED 6000/2000/2000: 20.50 USD splits 12.30 / 4.10 / 4.10, every leg is authorized
/// then captured once at the sandbox, and each card's ledger account posted exactly its part.
#[tokio::test]
async fn weighted_split_pays_exact_parts_and_books_them() {
    let stack = Stack::start().await;
    let a = stack.vault.tokenize(VISA).await;
    let b = stack.vault.tokenize(MASTERCARD).await;
    let c = stack.vault.tokenize(AMEX).await;
    let group = stack
        .create_group(group(
            vec![
                member(&a, "card A", 1, None, None),
                member(&b, "card B", 2, None, None),
                member(&c, "card C", 3, None, None),
            ],
            policy(
                S::Weighted,
                &[(&a, 6000), (&b, 2000), (&c, 2000)],
                C::AllOrNothing,
            ),
        ))
        .await;
    assert_eq!(group.members[0].last4, "4242");
    let payment = stack.pay(&group.id, "INV-1", 2050, None).await;
    assert_eq!(state(&payment), "SUCCEEDED", "{}", payment.summary);
    assert_eq!(
        legs(&payment),
        vec![
            leg("card A", 1230, "CAPTURED"),
            leg("card B", 410, "CAPTURED"),
            leg("card C", 410, "CAPTURED"),
        ]
    );
    assert_eq!(payment.captured, Some(usd(2050)));
    assert_eq!(payment.remaining, Some(usd(0)));
    assert_eq!(
        payment.summary,
        "Invoice INV-1 paid 20.50 USD: card A ·4242 12.30, card B ·4444 4.10, card C ·0005 4.10"
    );
    for (token, part) in [(&a, 1230), (&b, 410), (&c, 410)] {
        let operations = stack.sandbox_operations(token).await;
        let kinds: Vec<i32> = operations.iter().map(|o| o.r#type).collect();
        assert_eq!(
            kinds,
            [1, 2],
            "one authorization then one capture: {operations:?}"
        );
        assert_eq!(operations[0].approved, Some(usd(part)));
        assert_eq!(stack.ledger_card(token).await, (0, part, 0));
    }
    assert!(
        payment
            .legs
            .iter()
            .all(|l| !l.authorization_code.is_empty())
    );
    stack.assert_ledger_invariants().await;
}

/// SEQUENTIAL fills cards in priority order up to their per-payment limits; PARALLEL splits
/// evenly and authorizes every leg at once.
#[tokio::test]
async fn sequential_respects_limits_and_parallel_splits_evenly() {
    let stack = Stack::start().await;
    let a = stack.vault.tokenize(VISA).await;
    let b = stack.vault.tokenize(MASTERCARD).await;
    let c = stack.vault.tokenize(AMEX).await;
    let group = stack
        .create_group(group(
            vec![
                member(&a, "card A", 1, Some(1000), None),
                member(&b, "card B", 2, Some(700), None),
                member(&c, "card C", 3, None, None),
            ],
            policy(S::Sequential, &[], C::AllOrNothing),
        ))
        .await;
    let payment = stack.pay(&group.id, "INV-SEQ", 2500, None).await;
    assert_eq!(state(&payment), "SUCCEEDED", "{}", payment.summary);
    assert_eq!(
        legs(&payment),
        vec![
            leg("card A", 1000, "CAPTURED"),
            leg("card B", 700, "CAPTURED"),
            leg("card C", 800, "CAPTURED"),
        ]
    );
    let parallel = policy(S::Parallel, &[], C::AllOrNothing);
    let payment = stack.pay(&group.id, "INV-PAR", 1001, Some(parallel)).await;
    assert_eq!(state(&payment), "SUCCEEDED", "{}", payment.summary);
    let amounts: Vec<i64> = legs(&payment).iter().map(|l| l.1).collect();
    assert_eq!(amounts, [334, 334, 333]);
    assert_eq!(payment.policy.unwrap().strategy, S::Parallel as i32);
    stack.assert_ledger_invariants().await;
}

/// A card declining for insufficient funds, a blocked card and a card that needs 3-D Secure
/// are each replaced by the next member with room; the summary says who replaced whom.
#[tokio::test]
async fn declines_fall_back_to_the_next_card() {
    let stack = Stack::start().await;
    let backup = stack.vault.tokenize(VISA).await;
    for (pan, why) in [
        (INSUFFICIENT_FUNDS, "insufficient funds"),
        (BLOCKED, "blocked"),
        (AUTHENTICATION_REQUIRED, "authentication required"),
    ] {
        let failing = stack.vault.tokenize(pan).await;
        let group = stack
            .create_group(group(
                vec![
                    member(&failing, "card D", 1, None, None),
                    member(&backup, "card B", 2, None, None),
                ],
                policy(S::Sequential, &[], C::AllOrNothing),
            ))
            .await;
        let payment = stack.pay(&group.id, "INV-FB", 1300, None).await;
        assert_eq!(state(&payment), "SUCCEEDED", "{}", payment.summary);
        assert_eq!(
            legs(&payment),
            vec![
                leg("card D", 0, "DECLINED"),
                leg("card B", 1300, "CAPTURED")
            ]
        );
        assert!(
            payment
                .summary
                .ends_with(&format!("(card B replaced card D after {why})")),
            "{}",
            payment.summary
        );
        assert_eq!(payment.attempts.len(), 2);
        assert_eq!(
            payment.attempts[0].outcome,
            pb::AttemptOutcome::Declined as i32
        );
        assert_eq!(stack.ledger_card(&failing).await, (0, 0, 0));
    }
    stack.assert_ledger_invariants().await;
}

/// A card with 50.00 USD left approves part of 80.00; the rest moves to the next card.
/// Under ALLOW_PARTIAL without a backup, the covered part is captured and the rest remains;
/// under ALL_OR_NOTHING the hold is voided and nothing is left anywhere.
#[tokio::test]
async fn partial_approvals_allow_partial_and_all_or_nothing() {
    let stack = Stack::start().await;
    let limited = stack.vault.tokenize(BALANCE_50_USD).await;
    let backup = stack.vault.tokenize(VISA).await;
    let both = stack
        .create_group(group(
            vec![
                member(&limited, "card L", 1, None, None),
                member(&backup, "card B", 2, None, None),
            ],
            policy(S::Sequential, &[], C::AllOrNothing),
        ))
        .await;
    let payment = stack.pay(&both.id, "INV-PA", 8000, None).await;
    assert_eq!(state(&payment), "SUCCEEDED", "{}", payment.summary);
    assert_eq!(
        legs(&payment),
        vec![
            leg("card L", 5000, "CAPTURED"),
            leg("card B", 3000, "CAPTURED")
        ]
    );
    assert_eq!(
        payment.attempts[0].outcome,
        pb::AttemptOutcome::PartiallyApproved as i32
    );

    // The card is now empty: alone, under ALLOW_PARTIAL, it covers nothing -> FAILED; give it
    // 20.00 back through a refund of the first payment and pay 30.00.
    let payer = stack.payments().await;
    let mut refunds = payer.clone();
    let refunded = refunds
        .refund_payment(pb::RefundPaymentRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            payment_id: payment.id.clone(),
            amount: Some(usd(3200)),
            reason: "credit note".into(),
        })
        .await
        .expect("refund")
        .into_inner();
    let refund = refunded.refund.unwrap();
    assert_eq!(refund.state, pb::PaymentRefundState::Succeeded as i32);
    // 32.00 over captured 50.00 and 30.00: 20.00 and 12.00.
    let parts: Vec<(i32, i64)> = refund
        .parts
        .iter()
        .map(|p| (p.leg_index, p.amount.as_ref().unwrap().minor_units))
        .collect();
    assert_eq!(parts, [(1, 2000), (2, 1200)]);
    assert_eq!(state(&refunded.payment.unwrap()), "PARTIALLY_REFUNDED");

    let alone = stack
        .create_group(group(
            vec![member(&limited, "card L", 1, None, None)],
            policy(S::Sequential, &[], C::AllowPartial),
        ))
        .await;
    let partial = stack.pay(&alone.id, "INV-AP", 3000, None).await;
    assert_eq!(state(&partial), "PARTIALLY_PAID", "{}", partial.summary);
    assert_eq!(partial.captured, Some(usd(2000)));
    assert_eq!(partial.remaining, Some(usd(1000)));
    assert!(
        partial.summary.ends_with("10.00 USD remaining"),
        "{}",
        partial.summary
    );

    // Refill the card with another refund, then fail under ALL_OR_NOTHING: the hold is voided.
    let mut refunds = payer.clone();
    refunds
        .refund_payment(pb::RefundPaymentRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            payment_id: partial.id.clone(),
            amount: None,
            reason: String::new(),
        })
        .await
        .expect("refund all");
    let strict = policy(S::Sequential, &[], C::AllOrNothing);
    let before = stack.ledger_card(&limited).await;
    let failed = stack.pay(&alone.id, "INV-AON", 3000, Some(strict)).await;
    assert_eq!(state(&failed), "FAILED", "{}", failed.summary);
    assert_eq!(legs(&failed), vec![leg("card L", 2000, "VOIDED")]);
    assert!(
        failed.summary.ends_with("no financial effect"),
        "{}",
        failed.summary
    );
    assert_eq!(
        stack.sandbox_held(&limited).await,
        0,
        "the sandbox hold is voided"
    );
    let after = stack.ledger_card(&limited).await;
    assert_eq!(
        after, before,
        "the failed payment left no balance in the ledger"
    );
    let operations = stack.sandbox_operations(&limited).await;
    assert_eq!(
        operations.last().map(|o| o.r#type),
        Some(tandem_proto::tandem::vault::v1::SandboxOperationType::Void as i32)
    );
    stack.assert_ledger_invariants().await;
}

/// Refunds: a partial refund spreads over the captured legs in proportion, a second refund
/// takes the rest, the payment ends REFUNDED, and more is refused.
#[tokio::test]
async fn refunds_partial_then_full() {
    let stack = Stack::start().await;
    let a = stack.vault.tokenize(VISA).await;
    let b = stack.vault.tokenize(DEBIT).await;
    let group = stack
        .create_group(group(
            vec![
                member(&a, "card A", 1, None, None),
                member(&b, "card B", 2, None, None),
            ],
            policy(S::Weighted, &[(&a, 7000), (&b, 3000)], C::AllOrNothing),
        ))
        .await;
    let payment = stack.pay(&group.id, "INV-R", 1000, None).await;
    assert_eq!(state(&payment), "SUCCEEDED");
    let mut payer = stack.payments().await;
    let refund = |amount: Option<i64>| pb::RefundPaymentRequest {
        request_id: uuid::Uuid::new_v4().to_string(),
        payment_id: payment.id.clone(),
        amount: amount.map(usd),
        reason: "returned goods".into(),
    };
    let first = payer
        .refund_payment(refund(Some(101)))
        .await
        .unwrap()
        .into_inner();
    let parts: Vec<i64> = first
        .refund
        .unwrap()
        .parts
        .iter()
        .map(|p| p.amount.as_ref().unwrap().minor_units)
        .collect();
    assert_eq!(parts, [71, 30]);
    let rest = payer
        .refund_payment(refund(None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.refund.unwrap().amount, Some(usd(899)));
    let done = rest.payment.unwrap();
    assert_eq!(state(&done), "REFUNDED");
    assert_eq!(done.refunded, Some(usd(1000)));
    for (token, part) in [(&a, 700), (&b, 300)] {
        assert_eq!(stack.ledger_card(token).await, (0, part, part));
    }
    let error = payer.refund_payment(refund(Some(1))).await.unwrap_err();
    assert_eq!(error.code(), Code::FailedPrecondition);
    assert_eq!(orchestrator_reason(&error), "PAYMENT_NOT_REFUNDABLE");
    stack.assert_ledger_invariants().await;
}

/// 50 concurrent CreatePayment calls with one request id make one payment and one
/// authorization per card; the same id with another amount is ALREADY_EXISTS; an id held by
/// an uncommitted first call is ABORTED REQUEST_IN_PROGRESS.
#[tokio::test]
async fn create_payment_is_idempotent_under_concurrency() {
    let stack = Stack::start().await;
    let a = stack.vault.tokenize(VISA).await;
    let b = stack.vault.tokenize(MASTERCARD).await;
    let group = stack
        .create_group(group(
            vec![
                member(&a, "card A", 1, None, None),
                member(&b, "card B", 2, None, None),
            ],
            policy(S::Weighted, &[(&a, 5000), (&b, 5000)], C::AllOrNothing),
        ))
        .await;
    let request = payment_request(&group.id, "INV-DUP", 2000, None);
    let payer = stack.payments().await;
    let calls = (0..50).map(|_| {
        let mut payer = payer.clone();
        let request = request.clone();
        async move { payer.create_payment(request).await }
    });
    let results = futures::future::join_all(calls).await;
    let mut ids = HashSet::new();
    for result in results {
        match result {
            Ok(response) => {
                ids.insert(response.into_inner().payment.unwrap().id);
            }
            Err(status) => {
                assert_eq!(
                    orchestrator_reason(&status),
                    "REQUEST_IN_PROGRESS",
                    "{status:?}"
                );
            }
        }
    }
    assert_eq!(ids.len(), 1, "one payment for one request id");
    let id = ids.into_iter().next().unwrap();
    let payment = stack.settled(&id).await;
    assert_eq!(state(&payment), "SUCCEEDED");
    for token in [&a, &b] {
        assert_eq!(
            authorizations(&stack.sandbox_operations(token).await).len(),
            1
        );
    }
    let pool = stack.orchestrator.pool().await;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM payments")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, 1);

    let mut other = request.clone();
    other.invoice.as_mut().unwrap().amount = Some(usd(2001));
    let error = payer.clone().create_payment(other).await.unwrap_err();
    assert_eq!(error.code(), Code::AlreadyExists);
    assert_eq!(orchestrator_reason(&error), "REQUEST_ID_REUSED");
    // A retry may wait differently: same payment.
    let mut retry = request.clone();
    retry.wait = false;
    let again = payer
        .clone()
        .create_payment(retry)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.payment.unwrap().id, id);

    // An uncommitted first call holding an id: the second is told to retry.
    let mut first = pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO idempotency_keys (request_id, method, request_hash, resource_id, \
         create_time) VALUES ('held-id', 'CreatePayment', $1, 'pay_x', now())",
    )
    .bind(vec![0u8; 32])
    .execute(&mut *first)
    .await
    .unwrap();
    let mut held = payment_request(&group.id, "INV-HELD", 100, None);
    held.request_id = "held-id".into();
    let error = payer.clone().create_payment(held).await.unwrap_err();
    assert_eq!(error.code(), Code::Aborted);
    assert_eq!(orchestrator_reason(&error), "REQUEST_IN_PROGRESS");
    first.rollback().await.unwrap();
    stack.assert_ledger_invariants().await;
}

/// Bad input names its field and writes nothing; roles are checked per RPC.
#[tokio::test]
async fn bad_input_and_roles() {
    use tandem_proto::tandem::orchestrator::v1::card_group_service_client::CardGroupServiceClient;
    use tandem_proto::tandem::orchestrator::v1::payment_service_client::PaymentServiceClient;
    use tandem_tls::identity::Role;
    let stack = Stack::start().await;
    let a = stack.vault.tokenize(VISA).await;
    let mut treasury = stack.groups().await;
    let mut bad = group(
        vec![member(&a, "card A", 1, None, None)],
        policy(S::Weighted, &[(&a, 6000)], C::AllOrNothing),
    );
    bad.members.push(member(&a, "card A", 0, Some(-5), None));
    let error = treasury
        .create_card_group(pb::CreateCardGroupRequest {
            request_id: "bad-group".into(),
            card_group: Some(bad),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    let fields = violated_fields(&error);
    for field in [
        "card_group.members[1].limit_per_payment.minor_units",
        "card_group.default_policy.weights",
    ] {
        assert!(fields.iter().any(|f| f == field), "{field} in {fields:?}");
    }
    let revoked = {
        use tandem_proto::tandem::vault::v1 as vpb;
        let token = stack.vault.tokenize(MASTERCARD).await;
        let mut tokens = vpb::token_service_client::TokenServiceClient::new(
            stack.vault.channel(Role::Tokenizer).await,
        );
        tokens
            .revoke_token(vpb::RevokeTokenRequest {
                request_id: uuid::Uuid::new_v4().to_string(),
                token: token.clone(),
                ..Default::default()
            })
            .await
            .expect("revoke");
        token
    };
    let error = treasury
        .create_card_group(pb::CreateCardGroupRequest {
            request_id: "revoked-member".into(),
            card_group: Some(group(
                vec![member(&revoked, "card R", 1, None, None)],
                policy(S::Sequential, &[], C::AllOrNothing),
            )),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::FailedPrecondition);
    assert_eq!(orchestrator_reason(&error), "TOKEN_NOT_USABLE");

    let group = stack
        .create_group(group(
            vec![member(&a, "card A", 1, None, None)],
            policy(S::Sequential, &[], C::AllOrNothing),
        ))
        .await;
    let mut payer = stack.payments().await;
    let mut request = payment_request(&group.id, "bad id", 0, None);
    request.invoice.as_mut().unwrap().amount = Some(pb_money("XXX", 5));
    request.request_id = String::new();
    let error = payer.create_payment(request).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert_eq!(
        violated_fields(&error),
        ["request_id", "invoice.id", "invoice.amount.currency_code"]
    );
    let weighted = policy(S::Weighted, &[(&a, 5000)], C::AllOrNothing);
    let error = payer
        .create_payment(payment_request(&group.id, "INV-W", 100, Some(weighted)))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&error), ["policy_override.weights"]);
    let error = payer
        .get_payment(pb::GetPaymentRequest {
            payment_id: "pay_nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&error), ["payment_id"]);
    let missing = format!("pay_{}", "a".repeat(26));
    let error = payer
        .get_payment(pb::GetPaymentRequest {
            payment_id: missing,
        })
        .await
        .unwrap_err();
    assert_eq!(orchestrator_reason(&error), "PAYMENT_NOT_FOUND");

    // Every other RPC names its bad field.
    let error = treasury
        .get_card_group(pb::GetCardGroupRequest {
            card_group_id: "cg_short".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&error), ["card_group_id"]);
    let error = treasury
        .list_card_groups(pb::ListCardGroupsRequest {
            page_size: -1,
            page_token: "forged".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&error), ["page_size", "page_token"]);
    let error = treasury
        .update_card_group(pb::UpdateCardGroupRequest {
            request_id: "update-bad".into(),
            card_group: Some(pb::CardGroup {
                id: group.id.clone(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["billing_account_id".into()],
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&error), ["update_mask.paths[0]"]);
    let error = treasury
        .delete_card_group(pb::DeleteCardGroupRequest {
            request_id: "x y".into(),
            card_group_id: group.id.clone(),
            etag: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&error), ["request_id"]);
    let error = payer
        .list_payments(pb::ListPaymentsRequest {
            state: 99,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&error), ["state"]);
    let error = payer
        .refund_payment(pb::RefundPaymentRequest {
            request_id: "refund-bad".into(),
            payment_id: format!("pay_{}", "a".repeat(26)),
            amount: Some(usd(-1)),
            reason: "\u{7}".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&error), ["reason", "amount.minor_units"]);
    let error = payer
        .watch_payment(pb::WatchPaymentRequest {
            payment_id: format!("pay_{}", "a".repeat(26)),
            after_sequence: -1,
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&error), ["after_sequence"]);

    // Roles: a reader reads but neither pays nor manages groups; a payer cannot manage groups;
    // the vault's roles reach nothing here.
    let reader = stack.orchestrator.channel(Role::Reader).await;
    let error = PaymentServiceClient::new(reader.clone())
        .create_payment(payment_request(&group.id, "INV-RO", 100, None))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::PermissionDenied);
    let error = CardGroupServiceClient::new(stack.orchestrator.channel(Role::Payer).await)
        .delete_card_group(pb::DeleteCardGroupRequest {
            request_id: "payer-delete".into(),
            card_group_id: group.id.clone(),
            etag: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::PermissionDenied);
    let error = PaymentServiceClient::new(stack.orchestrator.channel(Role::Tokenizer).await)
        .list_payments(pb::ListPaymentsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::PermissionDenied);
    let listed = PaymentServiceClient::new(reader)
        .list_payments(pb::ListPaymentsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(
        listed.payments.is_empty(),
        "nothing was written by the refused calls"
    );
    let pool = stack.orchestrator.pool().await;
    let groups: i64 = sqlx::query_scalar("SELECT count(*) FROM card_groups")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(groups, 1, "refused group requests wrote nothing");
}

fn pb_money(code: &str, minor_units: i64) -> tandem_proto::tandem::r#type::v1::Money {
    tandem_proto::tandem::r#type::v1::Money {
        currency_code: code.into(),
        minor_units,
    }
}

/// WatchPayment streams every event in sequence without gaps, ends after the terminal event,
/// whose summary is the payment's; resuming after a sequence sends only the rest.
#[tokio::test]
async fn watch_streams_the_outbox_in_order() {
    let stack = Stack::start().await;
    let a = stack.vault.tokenize(INSUFFICIENT_FUNDS).await;
    let b = stack.vault.tokenize(VISA).await;
    let group = stack
        .create_group(group(
            vec![
                member(&a, "card D", 1, None, None),
                member(&b, "card B", 2, None, None),
            ],
            policy(S::Sequential, &[], C::AllOrNothing),
        ))
        .await;
    let mut request = payment_request(&group.id, "INV-W", 1500, None);
    request.wait = false;
    let mut payer = stack.payments().await;
    let created = payer
        .create_payment(request)
        .await
        .unwrap()
        .into_inner()
        .payment
        .unwrap();
    let watch = |after: i64| {
        let mut payer = payer.clone();
        let id = created.id.clone();
        async move {
            let mut stream = payer
                .watch_payment(pb::WatchPaymentRequest {
                    payment_id: id,
                    after_sequence: after,
                })
                .await
                .expect("watch")
                .into_inner();
            let mut events = Vec::new();
            while let Some(message) = stream.message().await.expect("stream") {
                events.push(message.event.unwrap());
            }
            events
        }
    };
    let events = tokio::time::timeout(std::time::Duration::from_secs(30), watch(0))
        .await
        .expect("the stream ends once the payment is settled");
    let sequences: Vec<i64> = events.iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, (1..=events.len() as i64).collect::<Vec<_>>());
    let kinds: Vec<pb::PaymentEventType> = events
        .iter()
        .map(|e| pb::PaymentEventType::try_from(e.r#type).unwrap())
        .collect();
    use pb::PaymentEventType as E;
    assert_eq!(
        kinds,
        [
            E::PaymentCreated,
            E::PaymentRiskAssessed,
            E::PaymentAuthorizing,
            E::LegDeclined,
            E::LegReallocated,
            E::LegAuthorized,
            E::PaymentCapturing,
            E::LegCaptured,
            E::PaymentSucceeded,
        ]
    );
    let last = events.last().unwrap();
    let payment = stack.settled(&created.id).await;
    assert_eq!(last.summary, payment.summary);
    assert_eq!(
        last.summary,
        "Invoice INV-W paid 15.00 USD: card B ·4242 15.00 (card B replaced card D after \
         insufficient funds)"
    );
    assert_eq!(
        events[3].summary,
        "card D ·9995 declined 15.00 USD (insufficient funds)"
    );
    assert_eq!(events[3].attempt_number, 1);
    let rest = watch(4).await;
    assert_eq!(rest.first().map(|e| e.sequence), Some(5));
    assert_eq!(rest.len(), events.len() - 4);
    let unknown = format!("pay_{}", "b".repeat(25) + "a");
    let error = payer
        .watch_payment(pb::WatchPaymentRequest {
            payment_id: unknown,
            after_sequence: 0,
        })
        .await;
    let error = match error {
        Err(status) => status,
        Ok(response) => response.into_inner().message().await.unwrap_err(),
    };
    assert_eq!(orchestrator_reason(&error), "PAYMENT_NOT_FOUND");
}

/// Card groups: create is idempotent by request id, reads carry month-to-date spend, lists
/// page, updates need the current etag, archiving refuses new payments; monthly limits hold
/// across payments.
#[tokio::test]
async fn card_group_lifecycle_and_monthly_limits() {
    let stack = Stack::start().await;
    let a = stack.vault.tokenize(VISA).await;
    let b = stack.vault.tokenize(MASTERCARD).await;
    let mut treasury = stack.groups().await;
    let create = pb::CreateCardGroupRequest {
        request_id: "create-monthly".into(),
        card_group: Some(group(
            vec![
                member(&a, "card A", 1, None, Some(1000)),
                member(&b, "card B", 2, None, None),
            ],
            policy(S::Sequential, &[], C::AllOrNothing),
        )),
    };
    let created = treasury
        .create_card_group(create.clone())
        .await
        .unwrap()
        .into_inner()
        .card_group
        .unwrap();
    let replay = treasury
        .create_card_group(create.clone())
        .await
        .unwrap()
        .into_inner()
        .card_group
        .unwrap();
    assert_eq!(replay.id, created.id);
    let mut other = create.clone();
    other.card_group.as_mut().unwrap().display_name = "Other".into();
    let error = treasury.create_card_group(other).await.unwrap_err();
    assert_eq!(orchestrator_reason(&error), "REQUEST_ID_REUSED");

    let first = stack.pay(&created.id, "INV-M1", 800, None).await;
    assert_eq!(legs(&first), vec![leg("card A", 800, "CAPTURED")]);
    let second = stack.pay(&created.id, "INV-M2", 800, None).await;
    assert_eq!(
        legs(&second),
        vec![
            leg("card A", 200, "CAPTURED"),
            leg("card B", 600, "CAPTURED")
        ],
        "card A has 2.00 left of its 10.00 monthly limit"
    );
    let read = treasury
        .get_card_group(pb::GetCardGroupRequest {
            card_group_id: created.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .card_group
        .unwrap();
    assert_eq!(read.members[0].month_to_date_spend, Some(usd(1000)));

    let mut update = read.clone();
    update.display_name = "GlobalOps EU".into();
    update.etag = "\"v0\"".into();
    let request = |group: pb::CardGroup, id: &str| pb::UpdateCardGroupRequest {
        request_id: id.into(),
        card_group: Some(group),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["display_name".into()],
        }),
    };
    let error = treasury
        .update_card_group(request(update.clone(), "update-stale"))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Aborted);
    assert_eq!(orchestrator_reason(&error), "ETAG_MISMATCH");
    update.etag = read.etag.clone();
    let updated = treasury
        .update_card_group(request(update, "update-current"))
        .await
        .unwrap()
        .into_inner()
        .card_group
        .unwrap();
    assert_eq!(updated.display_name, "GlobalOps EU");
    assert_ne!(updated.etag, read.etag);

    let second_group = stack
        .create_group(group(
            vec![member(&b, "card B", 1, None, None)],
            policy(S::Sequential, &[], C::AllOrNothing),
        ))
        .await;
    let page = |token: String| pb::ListCardGroupsRequest {
        page_size: 1,
        page_token: token,
        billing_account_id: "acct-1".into(),
        show_archived: false,
    };
    let one = treasury
        .list_card_groups(page(String::new()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(one.card_groups[0].id, second_group.id, "newest first");
    let two = treasury
        .list_card_groups(page(one.next_page_token.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(two.card_groups[0].id, created.id);
    assert!(two.next_page_token.is_empty());

    let archived = treasury
        .delete_card_group(pb::DeleteCardGroupRequest {
            request_id: "archive".into(),
            card_group_id: created.id.clone(),
            etag: updated.etag.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .card_group
        .unwrap();
    assert_eq!(archived.state, pb::CardGroupState::Archived as i32);
    let error = stack
        .payments()
        .await
        .create_payment(payment_request(&created.id, "INV-ARCH", 100, None))
        .await
        .unwrap_err();
    assert_eq!(orchestrator_reason(&error), "CARD_GROUP_ARCHIVED");
    let listed = treasury
        .list_card_groups(page(String::new()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed.card_groups.len(),
        1,
        "archived groups are hidden by default"
    );
    stack.assert_ledger_invariants().await;
}

/// A waiting CreatePayment ends on the orchestrator's own announcement that a commit left the
/// payment terminal, not on its polling nor at the end of its wait: with polling slowed to
/// once a minute and a 40 s wait, payments from two groups (the second paid twice, so its
/// ledger accounts are already known) answer SUCCEEDED long before the wait is over (a
/// payment on the sandbox takes well under a second; 20 s is the slack for a loaded machine),
/// and each card's ledger account posted its part.
#[tokio::test]
async fn waits_end_on_the_terminal_commit() {
    let vault = tandem_tests::RunningVault::start().await;
    let database = tandem_tests::TestDatabase::create().await;
    let mut settings = tandem_tests::orchestrator_settings(&database, &vault);
    settings.payments.watch_poll_ms = 60_000;
    settings.server.request_timeout_ms = 60_000;
    let orchestrator =
        tandem_tests::RunningOrchestrator::start_with(settings, database, None).await;
    let stack = Stack {
        vault,
        orchestrator,
    };
    let a = stack.vault.tokenize(VISA).await;
    let b = stack.vault.tokenize(MASTERCARD).await;
    let first = stack
        .create_group(group(
            vec![member(&a, "card A", 1, None, None)],
            policy(S::Sequential, &[], C::AllOrNothing),
        ))
        .await;
    let mut other = group(
        vec![member(&b, "card B", 1, None, None)],
        policy(S::Sequential, &[], C::AllOrNothing),
    );
    other.billing_account_id = "acct-2".to_owned();
    let second = stack.create_group(other).await;
    let mut payments = stack.payments().await;
    for (group, invoice, amount) in [
        (&first.id, "INV-W1", 700),
        (&second.id, "INV-W2", 1300),
        (&second.id, "INV-W3", 50),
    ] {
        let mut request = payment_request(group, invoice, amount, None);
        request.wait_timeout_ms = 40_000;
        let sent = std::time::Instant::now();
        let payment = payments
            .create_payment(request)
            .await
            .expect("create payment")
            .into_inner()
            .payment
            .expect("payment");
        assert_eq!(
            state(&payment),
            "SUCCEEDED",
            "{invoice}: {}",
            payment.summary
        );
        assert!(
            sent.elapsed() < std::time::Duration::from_secs(20),
            "{invoice}: the answer waited {:?}, for the end of the wait",
            sent.elapsed()
        );
    }
    assert_eq!(stack.ledger_card(&a).await, (0, 700, 0));
    assert_eq!(stack.ledger_card(&b).await, (0, 1350, 0));
    stack.assert_ledger_invariants().await;
}

/// The event types of payment `id`, in order, from the outbox.
async fn event_types(stack: &Stack, id: &str) -> Vec<String> {
    let pool = stack.orchestrator.pool().await;
    let types = sqlx::query_scalar(
        "SELECT type FROM payment_events WHERE payment_id = $1 ORDER BY sequence",
    )
    .bind(id)
    .fetch_all(&pool)
    .await
    .expect("payment events");
    pool.close().await;
    types
}

/// A card whose data the vault cannot open is refused as CARD_DATA_UNREADABLE and the payment
/// falls back to the next card at once: one attempt on that card, no retry of it, no hold.
#[tokio::test]
async fn unreadable_card_data_falls_back_at_once() {
    let stack = Stack::start().await;
    let broken = stack.vault.tokenize(VISA).await;
    let backup = stack.vault.tokenize(MASTERCARD).await;
    stack.vault.corrupt_card(&broken).await;
    let group = stack
        .create_group(group(
            vec![
                member(&broken, "card A", 1, None, None),
                member(&backup, "card B", 2, None, None),
            ],
            policy(S::Sequential, &[], C::AllOrNothing),
        ))
        .await;
    let payment = stack.pay(&group.id, "INV-DL", 1300, None).await;
    assert_eq!(state(&payment), "SUCCEEDED", "{}", payment.summary);
    assert_eq!(
        legs(&payment),
        vec![
            leg("card A", 0, "DECLINED"),
            leg("card B", 1300, "CAPTURED")
        ]
    );
    assert_eq!(payment.attempts.len(), 2, "{:?}", payment.attempts);
    assert_eq!(
        payment.attempts[0].outcome,
        pb::AttemptOutcome::Error as i32
    );
    assert_eq!(payment.attempts[0].error_reason, "CARD_DATA_UNREADABLE");
    assert!(stack.sandbox_operations(&broken).await.is_empty());
    assert_eq!(stack.ledger_card(&broken).await, (0, 0, 0));
    stack.assert_ledger_invariants().await;
}

/// A card declined as lost or stolen is suspended in its group by itself: the payment that
/// learned it says so in a `card.ineligible` event, the group view names the decline and the
/// payment, later payments never send the card again, and `UpdateCardGroup` reactivates it.
#[tokio::test]
async fn lost_and_stolen_cards_are_suspended_and_never_sent_again() {
    let stack = Stack::start().await;
    let lost = stack.vault.tokenize("4000000000009987").await;
    let stolen = stack.vault.tokenize("4000000000009979").await;
    let backup = stack.vault.tokenize(VISA).await;
    let created = stack
        .create_group(group(
            vec![
                member(&lost, "card L", 1, None, None),
                member(&stolen, "card S", 2, None, None),
                member(&backup, "card B", 3, None, None),
            ],
            policy(S::Parallel, &[], C::AllOrNothing),
        ))
        .await;
    let first = stack.pay(&created.id, "INV-L1", 3000, None).await;
    assert_eq!(state(&first), "SUCCEEDED", "{}", first.summary);
    let types = event_types(&stack, &first.id).await;
    assert_eq!(
        types.iter().filter(|t| *t == "card.ineligible").count(),
        2,
        "{types:?}"
    );

    let mut groups = stack.groups().await;
    let read = groups
        .get_card_group(pb::GetCardGroupRequest {
            card_group_id: created.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .card_group
        .unwrap();
    assert_ne!(read.etag, created.etag, "the suspension is a new version");
    for (token, code) in [
        (
            &lost,
            tandem_proto::tandem::r#type::v1::DeclineCode::LostCard,
        ),
        (
            &stolen,
            tandem_proto::tandem::r#type::v1::DeclineCode::StolenCard,
        ),
    ] {
        let member = read.members.iter().find(|m| &m.token == token).unwrap();
        assert_eq!(member.state, pb::CardGroupMemberState::Suspended as i32);
        let suspension = member.suspension.as_ref().expect("suspension");
        assert_eq!(suspension.decline_code, code as i32);
        assert_eq!(suspension.payment_id, first.id);
    }
    let backup_member = read.members.iter().find(|m| m.token == backup).unwrap();
    assert_eq!(backup_member.state, pb::CardGroupMemberState::Active as i32);
    assert!(backup_member.suspension.is_none());

    let second = stack.pay(&created.id, "INV-L2", 1000, None).await;
    assert_eq!(state(&second), "SUCCEEDED", "{}", second.summary);
    assert_eq!(legs(&second), vec![leg("card B", 1000, "CAPTURED")]);
    for token in [&lost, &stolen] {
        assert_eq!(
            stack.sandbox_operations(token).await.len(),
            1,
            "a suspended card is never sent again"
        );
    }

    // An update that leaves states unset keeps the suspension and its reason; one that
    // reactivates clears it.
    let mut members = read.members.clone();
    for member in &mut members {
        member.label = format!("{} (checked)", member.label);
        member.state = pb::CardGroupMemberState::Unspecified as i32;
        member.suspension = None;
    }
    let kept = update_members(&mut groups, &read, members.clone()).await;
    let lost_member = kept.members.iter().find(|m| m.token == lost).unwrap();
    assert_eq!(
        lost_member.state,
        pb::CardGroupMemberState::Suspended as i32
    );
    assert!(lost_member.suspension.is_some());
    for member in &mut members {
        member.state = pb::CardGroupMemberState::Active as i32;
    }
    let reactivated = update_members(&mut groups, &kept, members).await;
    assert!(
        reactivated.members.iter().all(|m| {
            m.state == pb::CardGroupMemberState::Active as i32 && m.suspension.is_none()
        })
    );
    stack.assert_ledger_invariants().await;
}

async fn update_members(
    groups: &mut tandem_proto::tandem::orchestrator::v1::card_group_service_client::CardGroupServiceClient<tonic::transport::Channel>,
    current: &pb::CardGroup,
    members: Vec<pb::CardGroupMember>,
) -> pb::CardGroup {
    groups
        .update_card_group(pb::UpdateCardGroupRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            card_group: Some(pb::CardGroup {
                id: current.id.clone(),
                etag: current.etag.clone(),
                members,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["members".into()],
            }),
        })
        .await
        .expect("update card group")
        .into_inner()
        .card_group
        .expect("card group")
}

/// A payment shows the policy it was allocated under: the group's default as it was when the
/// payment was created (not as it is after the group changed), or the override it was given.
#[tokio::test]
async fn a_payment_keeps_the_policy_it_was_created_under() {
    let stack = Stack::start().await;
    let a = stack.vault.tokenize(VISA).await;
    let b = stack.vault.tokenize(MASTERCARD).await;
    let default = policy(S::Weighted, &[(&a, 6000), (&b, 4000)], C::AllOrNothing);
    let created = stack
        .create_group(group(
            vec![
                member(&a, "card A", 1, None, None),
                member(&b, "card B", 2, None, None),
            ],
            default.clone(),
        ))
        .await;
    let paid = stack.pay(&created.id, "INV-P1", 1000, None).await;
    assert_eq!(paid.policy.as_ref(), Some(&default));

    let changed = policy(S::Parallel, &[], C::AllowPartial);
    stack
        .groups()
        .await
        .update_card_group(pb::UpdateCardGroupRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            card_group: Some(pb::CardGroup {
                id: created.id.clone(),
                default_policy: Some(changed.clone()),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["default_policy".into()],
            }),
        })
        .await
        .expect("update policy");
    let reread = stack.settled(&paid.id).await;
    assert_eq!(
        reread.policy.as_ref(),
        Some(&default),
        "as it was at creation"
    );
    let after = stack.pay(&created.id, "INV-P2", 1000, None).await;
    assert_eq!(after.policy.as_ref(), Some(&changed));
    let override_policy = policy(S::Sequential, &[], C::AllOrNothing);
    let overridden = stack
        .pay(&created.id, "INV-P3", 1000, Some(override_policy.clone()))
        .await;
    assert_eq!(overridden.policy.as_ref(), Some(&override_policy));
}

/// A card that fails its first two authorizations with a transient error (`RETRY_SAME_CARD`)
/// is tried again after a growing, jittered wait, not in a burst: the payment succeeds on its
/// third try, and the tries are at least the minimum wait's lower half apart.
#[tokio::test]
async fn transient_declines_are_retried_after_a_wait() {
    let vault = tandem_tests::RunningVault::start().await;
    let database = tandem_tests::TestDatabase::create().await;
    let mut settings = tandem_tests::orchestrator_settings(&database, &vault);
    settings.payments.retry_delay_ms_min = 400;
    let orchestrator =
        tandem_tests::RunningOrchestrator::start_with(settings, database, None).await;
    let stack = Stack {
        vault,
        orchestrator,
    };
    let flaky = stack.vault.tokenize("4000009900000046").await;
    let created = stack
        .create_group(group(
            vec![member(&flaky, "card F", 1, None, None)],
            policy(S::Sequential, &[], C::AllOrNothing),
        ))
        .await;
    let payment = stack.pay(&created.id, "INV-RETRY", 1000, None).await;
    assert_eq!(state(&payment), "SUCCEEDED", "{}", payment.summary);
    assert_eq!(payment.attempts.len(), 3, "{:?}", payment.attempts);
    let min_gap_ms = stack.orchestrator.settings.payments.retry_delay_ms_min / 2;
    for pair in payment.attempts.windows(2) {
        let ended = pair[0].end_time.expect("answered");
        let next = pair[1].start_time.expect("started");
        let gap_ms =
            (next.seconds - ended.seconds) * 1000 + i64::from(next.nanos - ended.nanos) / 1_000_000;
        assert!(
            gap_ms >= min_gap_ms as i64,
            "tried again {gap_ms} ms after a transient decline: {:?}",
            payment.attempts
        );
    }
}

/// `message` with the `x-request-id` `id`.
fn with_id<T>(message: T, id: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("x-request-id", id.parse().unwrap());
    request
}

/// The caller's `x-request-id` is echoed on every answer (errors included), one is made when
/// the caller sent none or one that looks like a card number, and the payment's calls to the
/// vault carry it: the vault's audit rows of its charges name the caller's id as their
/// correlation id beside the operation's own request id.
#[tokio::test]
async fn the_callers_request_id_is_echoed_and_reaches_the_vault() {
    let stack = Stack::start().await;
    let card = stack.vault.tokenize(VISA).await;
    let created = stack
        .create_group(group(
            vec![member(&card, "card A", 1, None, None)],
            policy(S::Sequential, &[], C::AllOrNothing),
        ))
        .await;
    let mut payments = stack.payments().await;
    let echoed = |metadata: &tonic::metadata::MetadataMap| {
        metadata
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };

    let response = payments
        .create_payment(with_id(
            payment_request(&created.id, "INV-CORR", 500, None),
            "billing-run-7",
        ))
        .await
        .unwrap();
    assert_eq!(
        echoed(response.metadata()).as_deref(),
        Some("billing-run-7")
    );
    let payment = response.into_inner().payment.unwrap();
    assert_eq!(state(&payment), "SUCCEEDED", "{}", payment.summary);

    let error = payments
        .get_payment(with_id(
            pb::GetPaymentRequest {
                payment_id: "not-a-payment".into(),
            },
            "billing-run-8",
        ))
        .await
        .unwrap_err();
    assert_eq!(echoed(error.metadata()).as_deref(), Some("billing-run-8"));
    for unsafe_id in [None, Some("card-4242424242424242")] {
        let request = pb::GetPaymentRequest {
            payment_id: payment.id.clone(),
        };
        let request = match unsafe_id {
            Some(id) => with_id(request, id),
            None => tonic::Request::new(request),
        };
        let response = payments.get_payment(request).await.unwrap();
        let made = echoed(response.metadata()).expect("an id is always echoed");
        assert!(made.starts_with("req_"), "{unsafe_id:?} gave {made}");
    }

    let mut conn = stack.vault.database.connect().await;
    let audited: Vec<(String, String)> = sqlx::query_as(
        "SELECT correlation_id, request_id FROM audit_events \
         WHERE rpc LIKE '%ChargeService/%' AND request_id <> '' ORDER BY seq",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert!(!audited.is_empty());
    for (correlation_id, request_id) in &audited {
        assert_eq!(correlation_id, "billing-run-7", "{request_id}");
        assert!(request_id.starts_with(&payment.id), "{request_id}");
    }
}
