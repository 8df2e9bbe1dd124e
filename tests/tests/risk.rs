//! Risk and review (DESIGN section 12), end to end over mutual TLS with the sandbox acquirer:
//! each rule kind fires exactly when its threshold is crossed, a blocked payment sends nothing
//! to the vault, a reviewed payment holds its authorizations until a reviewer other than its
//! creator approves (capture) or rejects (every hold voided, no ledger effect), a review
//! survives a restart of the orchestrator and still expires, and bad policies are refused
//! naming the field.
//!
//! Windows are whole minute and hour buckets; their arithmetic against a fixed clock is
//! `tandem_orchestrator::domain::risk`'s table test. Here every payment of a case falls within
//! the same 10 minutes.

use tandem_proto::tandem::orchestrator::v1 as pb;
use tandem_proto::tandem::orchestrator::v1::payment_service_client::PaymentServiceClient;
use tandem_proto::tandem::orchestrator::v1::risk_service_client::RiskServiceClient;
use tandem_proto::tandem::r#type::v1::DeclineCode;
use tandem_tests::stack::{Stack, member, policy, state, usd};
use tandem_tests::{RunningOrchestrator, orchestrator_reason, pki, violated_fields};
use tandem_tls::identity::Role;
use tonic::Code;

use pb::AllocationStrategy as S;
use pb::Completion as C;
use pb::risk_rule::Kind;

/// Two cards no other payment of the test used: a risk feature of one card must not see
/// another case's payments.
async fn two_cards(stack: &Stack) -> (String, String) {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let mut tokens = Vec::new();
    for _ in 0..2 {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let body = format!("4111{n:011}");
        let check = (0..=9)
            .find(|d| tandem_vault::domain::pan::luhn_valid(format!("{body}{d}").as_bytes()))
            .expect("one check digit fits");
        tokens.push(stack.vault.tokenize(&format!("{body}{check}")).await);
    }
    (tokens.remove(0), tokens.remove(0))
}

fn minutes(n: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: n * 60,
        nanos: 0,
    })
}

fn rule(name: &str, action: pb::RiskAction, kind: Kind) -> pb::RiskRule {
    pb::RiskRule {
        name: name.into(),
        action: action as i32,
        score: 10,
        kind: Some(kind),
    }
}

/// A policy of one rule that asks for review.
fn reviewing(kind: Kind) -> pb::RiskPolicy {
    pb::RiskPolicy {
        rules: vec![rule("under_test", pb::RiskAction::Review, kind)],
        ..Default::default()
    }
}

async fn risk(stack: &Stack, role: Role) -> RiskServiceClient<tonic::transport::Channel> {
    RiskServiceClient::new(stack.orchestrator.channel(role).await)
}

async fn set_policy(
    stack: &Stack,
    account: &str,
    policy: pb::RiskPolicy,
) -> Result<pb::RiskPolicy, tonic::Status> {
    risk(stack, Role::Treasury)
        .await
        .set_risk_policy(pb::SetRiskPolicyRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            billing_account_id: account.into(),
            policy: Some(policy),
        })
        .await
        .map(|r| r.into_inner().policy.expect("policy"))
}

/// A group of billing account `account` with cards A and B, paying sequentially (A first)
/// with fallback.
async fn account_group(stack: &Stack, account: &str, a: &str, b: &str) -> String {
    let mut group = tandem_tests::stack::group(
        vec![
            member(a, "card A", 1, None, None),
            member(b, "card B", 2, None, None),
        ],
        policy(S::Sequential, &[], C::AllOrNothing),
    );
    group.billing_account_id = account.into();
    stack.create_group(group).await.id
}

async fn reviewer(stack: &Stack) -> PaymentServiceClient<tonic::transport::Channel> {
    PaymentServiceClient::new(stack.orchestrator.channel(Role::Reviewer).await)
}

fn review(
    payment: &pb::Payment,
    verdict: pb::ReviewVerdict,
    note: &str,
) -> pb::ReviewPaymentRequest {
    pb::ReviewPaymentRequest {
        request_id: uuid::Uuid::new_v4().to_string(),
        payment_id: payment.id.clone(),
        verdict: verdict as i32,
        note: note.into(),
    }
}

fn fired(payment: &pb::Payment) -> Vec<String> {
    payment
        .risk
        .as_ref()
        .map(|r| r.fired.iter().map(|f| f.rule.clone()).collect())
        .unwrap_or_default()
}

/// One case: a rule, the payments made before under it (each expected not to fire), and the
/// one that crosses its threshold.
struct Case {
    name: &'static str,
    kind: Kind,
    /// Amounts (minor units) paid before, none firing.
    before: Vec<i64>,
    /// The amount that fires the rule.
    crossing: i64,
    /// Card A declines (and B pays) in every payment of the case.
    a_declines: bool,
}

/// Every rule kind on its own account: the payments up to the threshold go through untouched
/// (SUCCEEDED, nothing fired); the one over it is held IN_REVIEW with the rule, its feature
/// value and its threshold named, and its legs authorized but not captured.
#[tokio::test]
async fn each_rule_kind_fires_exactly_when_its_threshold_is_crossed() {
    let stack = Stack::start().await;
    let now = time::OffsetDateTime::now_utc();
    let today = now.weekday().number_from_monday() as i32;
    let cases = vec![
        Case {
            name: "billing account payments over 10 minutes",
            kind: Kind::Velocity(pb::VelocityRule {
                scope: pb::RiskScope::BillingAccount as i32,
                window: minutes(10),
                count_max: Some(2),
                sum_max: None,
            }),
            before: vec![100, 100],
            crossing: 100,
            a_declines: false,
        },
        Case {
            name: "card group amount over an hour",
            kind: Kind::Velocity(pb::VelocityRule {
                scope: pb::RiskScope::CardGroup as i32,
                window: minutes(60),
                count_max: None,
                sum_max: Some(usd(1_000)),
            }),
            before: vec![600, 400],
            crossing: 1,
            a_declines: false,
        },
        Case {
            name: "card payments over 24 hours",
            kind: Kind::Velocity(pb::VelocityRule {
                scope: pb::RiskScope::Card as i32,
                window: minutes(24 * 60),
                count_max: Some(1),
                sum_max: None,
            }),
            before: vec![100],
            crossing: 100,
            a_declines: false,
        },
        Case {
            name: "amount over twice the median",
            kind: Kind::AmountOverMedian(pb::AmountOverMedianRule {
                multiple: "2".into(),
                history_min: 3,
            }),
            // 1000 fires nothing with only two payments of history; 200 is twice the median
            // (100) of 100, 100, 1000, not more.
            before: vec![100, 100, 1_000, 200],
            crossing: 201,
            a_declines: false,
        },
        Case {
            name: "card decline burst over 10 minutes",
            kind: Kind::DeclineBurst(pb::DeclineBurstRule {
                scope: pb::RiskScope::Card as i32,
                window: minutes(10),
                count_max: 1,
            }),
            before: vec![100, 100],
            crossing: 100,
            a_declines: true,
        },
    ];
    for (i, case) in cases.into_iter().enumerate() {
        let account = format!("risk-{i}");
        let (a, b) = two_cards(&stack).await;
        if case.a_declines {
            stack
                .sandbox_decline(&a, DeclineCode::InsufficientFunds)
                .await;
        }
        let group = account_group(&stack, &account, &a, &b).await;
        set_policy(&stack, &account, reviewing(case.kind.clone()))
            .await
            .expect("set policy");
        for (n, amount) in case.before.iter().enumerate() {
            let paid = stack.pay(&group, &format!("{i}-{n}"), *amount, None).await;
            assert_eq!(state(&paid), "SUCCEEDED", "{}: payment {n}", case.name);
            assert!(fired(&paid).is_empty(), "{}: payment {n} fired", case.name);
        }
        let held = stack
            .pay(&group, &format!("{i}-x"), case.crossing, None)
            .await;
        assert_eq!(state(&held), "IN_REVIEW", "{}: {held:?}", case.name);
        let assessment = held.risk.as_ref().expect("assessment");
        assert_eq!(
            assessment.action,
            pb::RiskAction::Review as i32,
            "{}",
            case.name
        );
        assert_eq!(fired(&held), ["under_test"], "{}", case.name);
        let f = &assessment.fired[0];
        assert!(
            !f.value.is_empty() && !f.threshold.is_empty() && !f.feature.is_empty(),
            "{}: {f:?}",
            case.name
        );
        assert!(held.summary.contains("in review"), "{}", held.summary);
        // Authorized, not captured: every covering leg holds its part.
        assert!(
            held.legs.iter().all(|l| [
                pb::LegState::Authorized as i32,
                pb::LegState::Declined as i32
            ]
            .contains(&l.state)),
            "{}: {:?}",
            case.name,
            held.legs
        );
        assert_eq!(
            stack.sandbox_held(&a).await + stack.sandbox_held(&b).await,
            case.crossing,
            "{}",
            case.name
        );
    }

    // First use: the first payment on new cards fires, the next does not.
    let (a, b) = two_cards(&stack).await;
    let group = account_group(&stack, "risk-first", &a, &b).await;
    set_policy(
        &stack,
        "risk-first",
        reviewing(Kind::FirstCardUse(pb::FirstCardUseRule {})),
    )
    .await
    .expect("set policy");
    let first = stack.pay(&group, "first-1", 100, None).await;
    assert_eq!(state(&first), "IN_REVIEW");
    assert_eq!(
        first.risk.as_ref().unwrap().fired[0].feature,
        "card.first_use"
    );
    let second = stack.pay(&group, "first-2", 100, None).await;
    assert_eq!(state(&second), "SUCCEEDED", "{second:?}");

    // Business hours: outside every day but today, the payment fires; on every day around the
    // clock it does not.
    for (weekdays, fires) in [
        ((1..=7).filter(|d| *d != today).collect::<Vec<i32>>(), true),
        ((1..=7).collect(), false),
    ] {
        let account = format!("risk-hours-{fires}");
        let (a, b) = two_cards(&stack).await;
        let group = account_group(&stack, &account, &a, &b).await;
        let mut policy = reviewing(Kind::OutsideBusinessHours(pb::OutsideBusinessHoursRule {}));
        policy.business_hours = Some(pb::BusinessHours {
            time_zone: "UTC".into(),
            start_hour: 0,
            end_hour: 24,
            weekdays,
        });
        set_policy(&stack, &account, policy)
            .await
            .expect("set policy");
        let paid = stack.pay(&group, "hours", 100, None).await;
        let expected = if fires { "IN_REVIEW" } else { "SUCCEEDED" };
        assert_eq!(state(&paid), expected, "{paid:?}");
    }
}

/// A blocked payment is FAILED with reason RISK_BLOCKED; its assessment is in its events and
/// its summary; no card was sent to the vault and the ledger holds nothing of it.
#[tokio::test]
async fn a_blocked_payment_sends_nothing_to_the_vault() {
    let stack = Stack::start().await;
    let (a, b) = two_cards(&stack).await;
    let group = account_group(&stack, "blocked", &a, &b).await;
    let mut policy = pb::RiskPolicy {
        rules: vec![rule(
            "no_big_invoices",
            pb::RiskAction::Allow,
            Kind::Velocity(pb::VelocityRule {
                scope: pb::RiskScope::BillingAccount as i32,
                window: minutes(10),
                count_max: None,
                sum_max: Some(usd(50_000)),
            }),
        )],
        block_score: 10,
        ..Default::default()
    };
    policy.rules[0].score = 10;
    set_policy(&stack, "blocked", policy)
        .await
        .expect("set policy");
    let payment = stack.pay(&group, "big", 60_000, None).await;
    assert_eq!(state(&payment), "FAILED");
    assert_eq!(payment.failure_reason, "RISK_BLOCKED");
    assert!(payment.attempts.is_empty(), "{:?}", payment.attempts);
    assert!(
        payment.summary.contains("blocked by risk BLOCK"),
        "{}",
        payment.summary
    );
    let assessment = payment.risk.as_ref().unwrap();
    assert_eq!(assessment.action, pb::RiskAction::Block as i32);
    assert_eq!(assessment.fired[0].value, "600.00 USD");
    assert!(stack.sandbox_operations(&a).await.is_empty());
    assert!(stack.sandbox_operations(&b).await.is_empty());
    assert_eq!(stack.ledger_card(&a).await, (0, 0, 0));
    // The decision is in the payment's events.
    let mut watch = stack
        .payments()
        .await
        .watch_payment(pb::WatchPaymentRequest {
            payment_id: payment.id.clone(),
            after_sequence: 0,
        })
        .await
        .expect("watch")
        .into_inner();
    let mut kinds = Vec::new();
    while let Some(event) = watch.message().await.expect("event") {
        let event = event.event.expect("event");
        kinds.push(event.type_name.clone());
        if event.type_name == "payment.risk_assessed" {
            assert!(
                event.summary.contains("no_big_invoices"),
                "{}",
                event.summary
            );
        }
    }
    assert_eq!(
        kinds,
        ["payment.created", "payment.risk_assessed", "payment.failed"]
    );
}

/// A reviewed payment holds its authorizations; its creator's name may not review it, nor a
/// payer; the review queue lists it; the reviewer's approval captures it. A rejected one voids
/// every hold and leaves no ledger effect. A payment not in review cannot be reviewed.
#[tokio::test]
async fn review_holds_until_another_identity_approves_or_rejects() {
    let stack = Stack::start().await;
    let (a, b) = two_cards(&stack).await;
    let group = account_group(&stack, "reviewed", &a, &b).await;
    set_policy(
        &stack,
        "reviewed",
        reviewing(Kind::Velocity(pb::VelocityRule {
            scope: pb::RiskScope::BillingAccount as i32,
            window: minutes(10),
            count_max: Some(0),
            sum_max: None,
        })),
    )
    .await
    .expect("set policy");
    let held = stack.pay(&group, "r-1", 2_050, None).await;
    assert_eq!(state(&held), "IN_REVIEW");
    let review_state = held.review.as_ref().expect("review");
    assert!(review_state.expire_time.is_some() && review_state.decide_time.is_none());
    assert_eq!(stack.sandbox_held(&a).await, 2_050);

    // The queue.
    let queue = reviewer(&stack)
        .await
        .list_payments(pb::ListPaymentsRequest {
            state: pb::PaymentState::InReview as i32,
            billing_account_id: "reviewed".into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(queue.payments.len(), 1);
    assert_eq!(queue.payments[0].id, held.id);

    // Four eyes: the creator's name, with a reviewer's certificate, is refused.
    let same_name = stack
        .orchestrator
        .try_channel(&pki().same_name_reviewer())
        .await
        .expect("connect");
    let refused = PaymentServiceClient::new(same_name)
        .review_payment(review(&held, pb::ReviewVerdict::Approve, ""))
        .await
        .expect_err("the creator may not review");
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert_eq!(orchestrator_reason(&refused), "SAME_IDENTITY");
    let refused = stack
        .payments()
        .await
        .review_payment(review(&held, pb::ReviewVerdict::Approve, ""))
        .await
        .expect_err("a payer may not review");
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert_eq!(state(&stack.payment(&held.id).await), "IN_REVIEW");

    // Approval captures, and is replayed by its request id.
    let approval = review(&held, pb::ReviewVerdict::Approve, "known vendor");
    reviewer(&stack)
        .await
        .review_payment(approval.clone())
        .await
        .expect("approve");
    let paid = stack.settled(&held.id).await;
    assert_eq!(state(&paid), "SUCCEEDED");
    let decided = paid.review.as_ref().unwrap();
    assert_eq!(decided.verdict, pb::ReviewVerdict::Approve as i32);
    assert_eq!(decided.reviewer.as_ref().unwrap().name, "test-reviewer");
    assert_eq!(decided.note, "known vendor");
    assert_eq!(stack.sandbox_held(&a).await, 0);
    let (_, captured, _) = stack.ledger_card(&a).await;
    assert_eq!(captured, 2_050);
    let replay = reviewer(&stack)
        .await
        .review_payment(approval)
        .await
        .expect("replay")
        .into_inner();
    assert_eq!(replay.payment.unwrap().id, held.id);

    // Not in review any more.
    let refused = reviewer(&stack)
        .await
        .review_payment(review(&held, pb::ReviewVerdict::Reject, "late"))
        .await
        .expect_err("not in review");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(orchestrator_reason(&refused), "PAYMENT_NOT_IN_REVIEW");

    // Rejection voids every hold.
    let held = stack.pay(&group, "r-2", 700, None).await;
    assert_eq!(state(&held), "IN_REVIEW");
    assert_eq!(stack.sandbox_held(&a).await, 700);
    reviewer(&stack)
        .await
        .review_payment(review(&held, pb::ReviewVerdict::Reject, "unknown vendor"))
        .await
        .expect("reject");
    let failed = stack.settled(&held.id).await;
    assert_eq!(state(&failed), "FAILED");
    assert_eq!(failed.failure_reason, "REVIEW_REJECTED");
    assert!(
        failed
            .legs
            .iter()
            .all(|l| l.state == pb::LegState::Voided as i32),
        "{:?}",
        failed.legs
    );
    assert_eq!(stack.sandbox_held(&a).await, 0);
    let (_, captured, _) = stack.ledger_card(&a).await;
    assert_eq!(captured, 2_050, "the rejected payment captured nothing");
    assert!(
        failed.summary.contains("Review rejected by test-reviewer"),
        "{}",
        failed.summary
    );
    stack.assert_ledger_invariants().await;
}

/// A payment in review stays there across a restart of the orchestrator (as after a crash),
/// and its review still expires: every hold voided, FAILED with REVIEW_EXPIRED.
#[tokio::test]
async fn a_review_survives_a_restart_and_still_expires() {
    let vault = tandem_tests::RunningVault::start().await;
    let database = tandem_tests::TestDatabase::create().await;
    let mut settings = tandem_tests::orchestrator_settings(&database, &vault);
    settings.risk.review_timeout_s = 3;
    let orchestrator = RunningOrchestrator::start_with(settings, database, None).await;
    let stack = Stack {
        vault,
        orchestrator,
    };
    let (a, b) = two_cards(&stack).await;
    let group = account_group(&stack, "expiring", &a, &b).await;
    set_policy(
        &stack,
        "expiring",
        reviewing(Kind::FirstCardUse(pb::FirstCardUseRule {})),
    )
    .await
    .expect("set policy");
    let held = stack.pay(&group, "e-1", 900, None).await;
    assert_eq!(state(&held), "IN_REVIEW");
    let Stack {
        vault,
        orchestrator,
    } = stack;
    let stack = Stack {
        vault,
        orchestrator: orchestrator.restart().await,
    };
    assert_eq!(state(&stack.payment(&held.id).await), "IN_REVIEW");
    assert_eq!(stack.sandbox_held(&a).await, 900);
    let expired = stack.settled(&held.id).await;
    assert_eq!(state(&expired), "FAILED");
    assert_eq!(expired.failure_reason, "REVIEW_EXPIRED");
    assert_eq!(
        expired.review.as_ref().unwrap().verdict,
        pb::ReviewVerdict::Expired as i32
    );
    assert_eq!(stack.sandbox_held(&a).await, 0);
    assert_eq!(stack.ledger_card(&a).await.1, 0);
    let waited = time::OffsetDateTime::now_utc().unix_timestamp()
        - held
            .review
            .as_ref()
            .unwrap()
            .start_time
            .as_ref()
            .unwrap()
            .seconds;
    assert!(waited >= 3, "expired after {waited} s");
    stack.assert_ledger_invariants().await;
}

/// Policies are set by the treasury only, read by treasury, reviewers and readers, versioned,
/// idempotent by request id; bad ones are refused naming the field.
#[tokio::test]
async fn policies_are_checked_versioned_and_guarded() {
    let stack = Stack::start().await;
    let default = risk(&stack, Role::Reader)
        .await
        .get_risk_policy(pb::GetRiskPolicyRequest {
            billing_account_id: "acme".into(),
        })
        .await
        .expect("get")
        .into_inner()
        .policy
        .unwrap();
    assert!(default.default_policy);
    assert_eq!(default.version, 0);
    assert!(!default.rules.is_empty());

    let good = reviewing(Kind::FirstCardUse(pb::FirstCardUseRule {}));
    let set = set_policy(&stack, "acme", good.clone()).await.expect("set");
    assert_eq!((set.version, set.default_policy), (1, false));
    assert_eq!(set.updater.as_ref().unwrap().name, "test");
    let read = risk(&stack, Role::Reviewer)
        .await
        .get_risk_policy(pb::GetRiskPolicyRequest {
            billing_account_id: "acme".into(),
        })
        .await
        .expect("get")
        .into_inner()
        .policy
        .unwrap();
    assert_eq!(read.rules, good.rules);
    // Optimistic concurrency: version 1 is current, so version 5 is refused.
    let mut stale = good.clone();
    stale.version = 5;
    let refused = set_policy(&stack, "acme", stale).await.expect_err("stale");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(orchestrator_reason(&refused), "RISK_POLICY_CHANGED");
    let mut current = good.clone();
    current.version = 1;
    let replaced = set_policy(&stack, "acme", current)
        .await
        .expect("version 1 is current");
    assert_eq!(replaced.version, 2);
    // Idempotency.
    let request = pb::SetRiskPolicyRequest {
        request_id: "risk-once".into(),
        billing_account_id: "acme".into(),
        policy: Some(good.clone()),
    };
    let mut treasury = risk(&stack, Role::Treasury).await;
    let first = treasury
        .set_risk_policy(request.clone())
        .await
        .unwrap()
        .into_inner();
    let again = treasury
        .set_risk_policy(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, again);
    let mut other = request.clone();
    other.policy.as_mut().unwrap().review_score = 5;
    let reused = treasury.set_risk_policy(other).await.expect_err("reused");
    assert_eq!(orchestrator_reason(&reused), "REQUEST_ID_REUSED");
    // Roles.
    let denied = risk(&stack, Role::Reviewer)
        .await
        .set_risk_policy(request)
        .await
        .expect_err("reviewers do not set");
    assert_eq!(denied.code(), Code::PermissionDenied);
    let denied = risk(&stack, Role::Payer)
        .await
        .get_risk_policy(pb::GetRiskPolicyRequest {
            billing_account_id: "acme".into(),
        })
        .await
        .expect_err("payers do not read");
    assert_eq!(denied.code(), Code::PermissionDenied);

    let velocity = |window: Option<prost_types::Duration>, count_max: Option<i64>| {
        Kind::Velocity(pb::VelocityRule {
            scope: pb::RiskScope::Card as i32,
            window,
            count_max,
            sum_max: None,
        })
    };
    let with_rule = |kind: Option<Kind>| pb::RiskPolicy {
        rules: vec![pb::RiskRule {
            name: "r".into(),
            action: pb::RiskAction::Review as i32,
            score: 1,
            kind,
        }],
        ..Default::default()
    };
    let mut unknown_zone = with_rule(Some(Kind::OutsideBusinessHours(
        pb::OutsideBusinessHoursRule {},
    )));
    unknown_zone.business_hours = Some(pb::BusinessHours {
        time_zone: "Mars/Olympus".into(),
        start_hour: 9,
        end_hour: 18,
        weekdays: vec![],
    });
    let cases = [
        (
            with_rule(Some(velocity(minutes(0), Some(1)))),
            "policy.rules[0].velocity.window",
        ),
        (
            with_rule(Some(velocity(minutes(5), Some(1)))),
            "policy.rules[0].velocity.window",
        ),
        (
            with_rule(Some(velocity(minutes(10), Some(-1)))),
            "policy.rules[0].velocity.count_max",
        ),
        (
            with_rule(Some(Kind::DeclineBurst(pb::DeclineBurstRule {
                scope: pb::RiskScope::Card as i32,
                window: minutes(60),
                count_max: -3,
            }))),
            "policy.rules[0].decline_burst.count_max",
        ),
        // A rule kind this server does not know arrives as no kind at all.
        (with_rule(None), "policy.rules[0].kind"),
        (
            with_rule(Some(Kind::OutsideBusinessHours(
                pb::OutsideBusinessHoursRule {},
            ))),
            "policy.business_hours",
        ),
        (unknown_zone, "policy.business_hours.time_zone"),
    ];
    for (policy, field) in cases {
        let refused = set_policy(&stack, "acme", policy).await.expect_err(field);
        assert_eq!(refused.code(), Code::InvalidArgument, "{field}");
        assert!(
            violated_fields(&refused).contains(&field.to_owned()),
            "{field}: {:?}",
            violated_fields(&refused)
        );
    }
    // Nothing of a refused policy was written.
    let read = risk(&stack, Role::Treasury)
        .await
        .get_risk_policy(pb::GetRiskPolicyRequest {
            billing_account_id: "acme".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .policy
        .unwrap();
    assert_eq!(read.version, 3);
}
