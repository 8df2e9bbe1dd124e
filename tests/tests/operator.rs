//! A capture the vault refuses for good (DESIGN section 14, "payment stuck"), end to end over
//! mutual TLS with the sandbox acquirer: the refused capture is sent again a bounded number
//! of times, then the payment stops in NEEDS_OPERATOR with its event, its metrics, and nothing
//! more sent (the recovery worker leaves it alone); the treasury's `ResolvePayment` retries it
//! under a new request id, idempotent by request id, refused to other roles and for bad input
//! naming the field; a confirmation the vault does not bear out is refused and books nothing.
//!
//! The refusal is made real: the payment is held in review with its holds in place, one
//! charge is voided at the vault behind its back, and the approval's capture of that charge is
//! then refused by the vault (`CHARGE_NOT_AUTHORIZED`) every time it is sent.

use std::time::Duration;

use tandem_proto::tandem::orchestrator::v1 as pb;
use tandem_proto::tandem::orchestrator::v1::payment_service_client::PaymentServiceClient;
use tandem_proto::tandem::orchestrator::v1::risk_service_client::RiskServiceClient;
use tandem_proto::tandem::vault::v1 as vault_pb;
use tandem_proto::tandem::vault::v1::charge_service_client::ChargeServiceClient;
use tandem_tests::stack::{Stack, member, policy, read_feed, state};
use tandem_tests::{
    RunningOrchestrator, RunningVault, TestDatabase, orchestrator_reason, orchestrator_settings,
    violated_fields,
};
use tandem_tls::identity::Role;
use tonic::Code;

/// Waits until the payment is in `expected` (a state name without prefix), for at most 30 s.
async fn wait_for(stack: &Stack, id: &str, expected: &str) -> pb::Payment {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let payment = stack.payment(id).await;
        if state(&payment) == expected {
            return payment;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "payment {id} not {expected} within 30 s: {payment:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn resolution(
    payment_id: &str,
    decision: pb::ResolutionDecision,
    note: &str,
) -> pb::ResolvePaymentRequest {
    pb::ResolvePaymentRequest {
        request_id: uuid::Uuid::new_v4().to_string(),
        payment_id: payment_id.into(),
        decision: decision as i32,
        note: note.into(),
    }
}

async fn treasury(stack: &Stack) -> PaymentServiceClient<tonic::transport::Channel> {
    PaymentServiceClient::new(stack.orchestrator.channel(Role::Treasury).await)
}

#[tokio::test]
async fn a_capture_refused_for_good_waits_for_the_treasury() {
    // Its own metrics endpoint: the refusals and the payment waiting are counted.
    let vault = RunningVault::start().await;
    let database = TestDatabase::create().await;
    let mut settings = orchestrator_settings(&database, &vault);
    settings.metrics.listen_addr = tandem_tests::free_local_addr();
    let orchestrator = RunningOrchestrator::start_with(settings, database, None).await;
    let stack = Stack {
        vault,
        orchestrator,
    };
    let a = stack.vault.tokenize("4242424242424242").await;
    let b = stack.vault.tokenize("5555555555554444").await;
    let mut group = tandem_tests::stack::group(
        vec![
            member(&a, "card A", 1, Some(600), None),
            member(&b, "card B", 2, None, None),
        ],
        policy(
            pb::AllocationStrategy::Sequential,
            &[],
            pb::Completion::AllOrNothing,
        ),
    );
    group.billing_account_id = "operated".into();
    let group = stack.create_group(group).await.id;
    // Every payment of the account is held for review, its holds in place.
    RiskServiceClient::new(stack.orchestrator.channel(Role::Treasury).await)
        .set_risk_policy(pb::SetRiskPolicyRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            billing_account_id: "operated".into(),
            policy: Some(pb::RiskPolicy {
                rules: vec![pb::RiskRule {
                    name: "everything".into(),
                    action: pb::RiskAction::Review as i32,
                    score: 10,
                    kind: Some(pb::risk_rule::Kind::Velocity(pb::VelocityRule {
                        scope: pb::RiskScope::BillingAccount as i32,
                        window: Some(prost_types::Duration {
                            seconds: 600,
                            nanos: 0,
                        }),
                        count_max: Some(0),
                        sum_max: None,
                    })),
                }],
                ..Default::default()
            }),
        })
        .await
        .expect("set policy");
    let held = stack.pay(&group, "OP-1", 1_000, None).await;
    assert_eq!(state(&held), "IN_REVIEW");
    assert_eq!(held.legs.len(), 2);

    // Card B's hold is released at the vault behind the payment's back.
    let voided = ChargeServiceClient::new(stack.vault.channel(Role::Orchestrator).await)
        .void(vault_pb::VoidRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            charge_id: held.legs[1].charge_id.clone(),
            reason: "released out of band".into(),
        })
        .await
        .expect("void at the vault")
        .into_inner()
        .charge
        .expect("charge");
    assert_eq!(voided.state, vault_pb::ChargeState::Voided as i32);

    PaymentServiceClient::new(stack.orchestrator.channel(Role::Reviewer).await)
        .review_payment(pb::ReviewPaymentRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            payment_id: held.id.clone(),
            verdict: pb::ReviewVerdict::Approve as i32,
            note: String::new(),
        })
        .await
        .expect("approve");
    let waiting = wait_for(&stack, &held.id, "NEEDS_OPERATOR").await;
    let refused = &waiting.legs[1];
    assert_eq!(refused.refusals, 3, "payments.settle_refusals_max");
    assert_eq!(refused.refusal_reason, "CHARGE_NOT_AUTHORIZED");
    assert_eq!(waiting.legs[0].state, pb::LegState::Captured as i32);
    assert!(
        waiting
            .summary
            .contains("the vault refused the capture of card B"),
        "{}",
        waiting.summary
    );
    let mut feed = treasury(&stack).await;
    let (events, _) = read_feed(
        &mut feed,
        &["payment.needs_operator"],
        String::new(),
        100,
        1,
    )
    .await;
    assert_eq!(events.len(), 1);
    // Nothing more is sent while it waits: the recovery worker leaves it alone.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(stack.payment(&held.id).await.legs[1].refusals, 3);
    let metrics =
        tandem_tests::scrape_metrics(stack.orchestrator.settings.metrics.listen_addr).await;
    for line in [
        "tandem_orchestrator_settlement_refusals_total{operation=\"capture\"} 3",
        "tandem_orchestrator_payments_needing_operator 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }

    // Only the treasury resolves, and only with a decision and a note.
    let denied = stack
        .payments()
        .await
        .resolve_payment(resolution(&held.id, pb::ResolutionDecision::Retry, "payer"))
        .await
        .expect_err("a payer may not resolve");
    assert_eq!(denied.code(), Code::PermissionDenied);
    let invalid = treasury(&stack)
        .await
        .resolve_payment(resolution(
            &held.id,
            pb::ResolutionDecision::Unspecified,
            " ",
        ))
        .await
        .expect_err("no decision, no note");
    assert_eq!(invalid.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&invalid), ["decision", "note"]);

    // A retry sends the capture again under a new request id; the vault refuses it again.
    let retry = resolution(
        &held.id,
        pb::ResolutionDecision::Retry,
        "charge looked capturable",
    );
    let resumed = treasury(&stack)
        .await
        .resolve_payment(retry.clone())
        .await
        .expect("retry")
        .into_inner()
        .payment
        .expect("payment");
    assert_ne!(state(&resumed), "NEEDS_OPERATOR");
    assert_eq!(resumed.resolutions.len(), 1);
    assert_eq!(
        resumed.resolutions[0]
            .operator
            .as_ref()
            .map(|o| o.role.as_str()),
        Some("treasury")
    );
    let waiting = wait_for(&stack, &held.id, "NEEDS_OPERATOR").await;
    assert_eq!(waiting.legs[1].refusals, 3);
    let replay = treasury(&stack)
        .await
        .resolve_payment(retry)
        .await
        .expect("a replay answers")
        .into_inner()
        .payment
        .expect("payment");
    assert_eq!(
        (state(&replay), replay.resolutions.len()),
        ("NEEDS_OPERATOR", 1),
        "a replay changes nothing"
    );

    // A confirmation is refused while the vault does not show the charge captured (it shows
    // it voided), and changes nothing: the ledger books only what the vault holds.
    let refused = treasury(&stack)
        .await
        .resolve_payment(resolution(
            &held.id,
            pb::ResolutionDecision::Confirm,
            "the acquirer says captured",
        ))
        .await
        .expect_err("the vault shows the charge voided");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(orchestrator_reason(&refused), "CHARGE_NOT_SETTLED");
    let waiting = stack.payment(&held.id).await;
    assert_eq!(
        (state(&waiting), waiting.resolutions.len()),
        ("NEEDS_OPERATOR", 1)
    );
    let (_, captured, _) = stack.ledger_card(&b).await;
    assert_eq!(captured, 0, "nothing booked for card B");
    stack.assert_ledger_invariants().await;
    let (resolved, _) = read_feed(&mut feed, &["payment.resolved"], String::new(), 100, 1).await;
    assert_eq!(resolved.len(), 1);
    assert_eq!(
        resolved[0].actor.as_ref().map(|a| a.role.as_str()),
        Some("treasury")
    );

    // Waiting, it is left alone: the recovery worker never takes it (it would rewrite the row
    // at every round).
    let before = stack.payment(&held.id).await.update_time;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(stack.payment(&held.id).await.update_time, before);
}
