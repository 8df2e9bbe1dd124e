//! Crash safety of the payment workflow: a drive stopped dead at each recovery point (after
//! the intents commit, after the vault answers, after the results commit), the orchestrator
//! stopped and started again as a new instance; and two instances sharing one database. In
//! every case each payment ends in the right state, the sandbox authorized each operation
//! once, and the ledger's invariants hold.

use tandem_orchestrator::workflow::{CrashPlan, CrashPoint};
use tandem_proto::tandem::orchestrator::v1 as pb;
use tandem_proto::tandem::orchestrator::v1::payment_service_client::PaymentServiceClient;
use tandem_tests::stack::{Stack, group, legs, member, payment_request, policy, state};
use tandem_tests::{RunningOrchestrator, RunningVault, TestDatabase, crash_test_settings};
use tandem_tls::identity::Role;

const INSUFFICIENT_FUNDS: &str = "4000000000009995";
const VISA: &str = "4242424242424242";
const MASTERCARD: &str = "5555555555554444";

/// A group whose first card declines (insufficient funds) and two that approve, WEIGHTED
/// 5000/2500/2500 with fallback: every payment authorizes three legs, the decline's half moves
/// to card A as a fourth leg, and three legs are captured.
async fn fallback_group(stack: &Stack, tokens: &[String]) -> pb::CardGroup {
    stack
        .create_group(group(
            vec![
                member(&tokens[0], "card D", 1, None, None),
                member(&tokens[1], "card A", 2, None, None),
                member(&tokens[2], "card B", 3, None, None),
            ],
            policy(
                pb::AllocationStrategy::Weighted,
                &[(&tokens[0], 5000), (&tokens[1], 2500), (&tokens[2], 2500)],
                pb::Completion::AllOrNothing,
            ),
        ))
        .await
}

/// Stops a payment's drive at every recovery point in turn (the 1st to 4th time each point is
/// reached: authorizations, the decline's reallocation, captures), restarts the orchestrator
/// as a new instance, and checks the payment ends SUCCEEDED with one authorization per
/// operation, one capture per leg, and a consistent ledger.
#[tokio::test]
async fn a_crash_at_any_recovery_point_ends_in_the_right_state() {
    let vault = RunningVault::start().await;
    let database = TestDatabase::create().await;
    let settings = crash_test_settings(&database, &vault);
    let orchestrator =
        RunningOrchestrator::start_with(settings.clone(), database.clone(), None).await;
    let mut stack = Stack {
        vault,
        orchestrator,
    };
    let tokens = vec![
        stack.vault.tokenize(INSUFFICIENT_FUNDS).await,
        stack.vault.tokenize(VISA).await,
        stack.vault.tokenize(MASTERCARD).await,
    ];
    let group = fallback_group(&stack, &tokens).await;
    let mut payments = 0;
    for point in [
        CrashPoint::AfterIntent,
        CrashPoint::AfterCall,
        CrashPoint::AfterResult,
    ] {
        for nth in 1..=4 {
            // The drive stops dead at the plan's point; a fresh instance takes over.
            let request = payment_request(&group.id, &format!("INV-{point:?}-{nth}"), 2000, None);
            let created;
            (stack, created) = stack
                .pay_through_a_crash(&settings, &database, CrashPlan::new(point, nth), request)
                .await;
            payments += 1;
            let payment = stack.settled(&created.id).await;
            assert_eq!(
                state(&payment),
                "SUCCEEDED",
                "{point:?} #{nth}: {}",
                payment.summary
            );
            let covered: i64 = legs(&payment)
                .iter()
                .filter(|l| l.2 == "CAPTURED")
                .map(|l| l.1)
                .sum();
            assert_eq!(covered, 2000, "{point:?} #{nth}");
            assert_eq!(
                payment.attempts.len(),
                4,
                "{point:?} #{nth}: one decline, three approvals: {:?}",
                payment.attempts
            );
        }
    }
    let token_refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
    let authorized = stack.assert_single_authorizations(&token_refs).await;
    assert_eq!(authorized, 4 * payments, "four authorizations per payment");
    for (token, per_payment) in tokens[1..].iter().zip([2, 1]) {
        let captures = stack
            .sandbox_operations(token)
            .await
            .iter()
            .filter(|o| {
                o.r#type == tandem_proto::tandem::vault::v1::SandboxOperationType::Capture as i32
                    && o.outcome
                        != tandem_proto::tandem::vault::v1::SandboxOperationOutcome::Replayed as i32
            })
            .count();
        assert_eq!(captures, per_payment * payments, "one capture per leg");
    }
    assert_eq!(stack.ledger_card(&tokens[0]).await, (0, 0, 0));
    let (pending_a, posted_a, _) = stack.ledger_card(&tokens[1]).await;
    let (pending_b, posted_b, _) = stack.ledger_card(&tokens[2]).await;
    assert_eq!((pending_a, pending_b), (0, 0), "no hold left open");
    assert_eq!(posted_a + posted_b, 2000 * payments as i64);
    stack.assert_ledger_invariants().await;
}

/// Two orchestrator instances on one database drive a batch of payments while one of them is
/// stopped half-way: the other resumes its payments when their leases expire; nothing is
/// charged twice.
#[tokio::test]
async fn two_instances_share_one_database_without_double_charges() {
    let vault = RunningVault::start().await;
    let database = TestDatabase::create().await;
    let settings = crash_test_settings(&database, &vault);
    let first = RunningOrchestrator::start_with(settings.clone(), database.clone(), None).await;
    let second = RunningOrchestrator::start_with(settings.clone(), database.clone(), None).await;
    let stack = Stack {
        vault,
        orchestrator: first,
    };
    let tokens = vec![
        stack.vault.tokenize(INSUFFICIENT_FUNDS).await,
        stack.vault.tokenize(VISA).await,
        stack.vault.tokenize(MASTERCARD).await,
    ];
    let group = fallback_group(&stack, &tokens).await;
    let clients = [
        PaymentServiceClient::new(stack.orchestrator.channel(Role::Payer).await),
        PaymentServiceClient::new(second.channel(Role::Payer).await),
    ];
    let mut ids = Vec::new();
    for i in 0..30 {
        let mut request = payment_request(&group.id, &format!("INV-2I-{i}"), 1000 + i, None);
        request.wait = false;
        let mut client = clients[i as usize % 2].clone();
        ids.push(
            client
                .create_payment(request)
                .await
                .expect("create payment")
                .into_inner()
                .payment
                .unwrap()
                .id,
        );
    }
    // The first instance dies with its payments in flight; the second carries on.
    let Stack {
        vault,
        orchestrator: first,
    } = stack;
    first.stop().await;
    let stack = Stack {
        vault,
        orchestrator: second,
    };
    for id in &ids {
        let payment = stack.settled(id).await;
        assert_eq!(state(&payment), "SUCCEEDED", "{}", payment.summary);
    }
    let token_refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
    assert_eq!(
        stack.assert_single_authorizations(&token_refs).await,
        4 * ids.len()
    );
    stack.assert_ledger_invariants().await;
    let expected: i64 = (0..30).map(|i| 1000 + i).sum();
    let (_, posted_a, _) = stack.ledger_card(&tokens[1]).await;
    let (_, posted_b, _) = stack.ledger_card(&tokens[2]).await;
    assert_eq!(posted_a + posted_b, expected);
}
