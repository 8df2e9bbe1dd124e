//! The dashboard's calls on behalf of a person (`x-tandem-on-behalf-of`, DESIGN section 13 and
//! docs/architecture.md): the dashboard may call nothing as itself; naming a person, it calls
//! with that person's role, and four eyes and the recorded actor are the person's; a service's
//! role is never delegated; and no one but a dashboard may name a person.

use tandem_proto::tandem::orchestrator::v1 as pb;
use tandem_proto::tandem::orchestrator::v1::payment_service_client::PaymentServiceClient;
use tandem_proto::tandem::orchestrator::v1::risk_service_client::RiskServiceClient;
use tandem_proto::tandem::vault::v1 as vault_pb;
use tandem_proto::tandem::vault::v1::key_admin_service_client::KeyAdminServiceClient;
use tandem_tests::stack::{Stack, group, member, payment_request, policy, state};
use tandem_tests::{orchestrator_reason, vault_reason};
use tandem_tls::identity::Role;
use tonic::Code;

use pb::AllocationStrategy as S;
use pb::Completion as C;

const VISA: &str = "4242424242424242";

/// `message` sent on behalf of `person` (`<role>/<name>`), if any.
fn as_person<T>(message: T, person: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(person) = person {
        request.metadata_mut().insert(
            tandem_runtime::admission::ON_BEHALF_OF,
            person.parse().expect("metadata"),
        );
    }
    request
}

fn get(payment: &pb::Payment, person: Option<&str>) -> tonic::Request<pb::GetPaymentRequest> {
    as_person(
        pb::GetPaymentRequest {
            payment_id: payment.id.clone(),
        },
        person,
    )
}

fn approve(payment: &pb::Payment, person: &str) -> tonic::Request<pb::ReviewPaymentRequest> {
    as_person(
        pb::ReviewPaymentRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            payment_id: payment.id.clone(),
            verdict: pb::ReviewVerdict::Approve as i32,
            note: "checked in the dashboard".into(),
        },
        Some(person),
    )
}

/// A payment held for review, reviewed through the dashboard: a reader it calls for may read
/// but not review, the payment's creator (by name) may not approve it, another reviewer does,
/// and is recorded as the reviewer.
#[tokio::test]
async fn the_dashboard_calls_as_the_person_it_names() {
    let stack = Stack::start().await;
    let card = stack.vault.tokenize(VISA).await;
    let created = stack
        .create_group(group(
            vec![member(&card, "card A", 1, None, None)],
            policy(S::Sequential, &[], C::AllOrNothing),
        ))
        .await;
    // Every payment of the account waits for a reviewer.
    RiskServiceClient::new(stack.orchestrator.channel(Role::Treasury).await)
        .set_risk_policy(pb::SetRiskPolicyRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            billing_account_id: created.billing_account_id.clone(),
            policy: Some(pb::RiskPolicy {
                rules: vec![pb::RiskRule {
                    name: "every_payment".into(),
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
        .expect("set the policy");
    let held = stack
        .create_payment(payment_request(&created.id, "INV-DASH", 900, None))
        .await;
    assert_eq!(state(&held), "IN_REVIEW", "{}", held.summary);

    let mut dashboard =
        PaymentServiceClient::new(stack.orchestrator.channel(Role::Dashboard).await);
    // As itself, the dashboard may call nothing.
    let refused = dashboard.get_payment(get(&held, None)).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    // For a reader: reads, no review.
    let read = dashboard
        .get_payment(get(&held, Some("reader/alice")))
        .await
        .expect("a reader reads")
        .into_inner();
    assert_eq!(read.payment.map(|p| p.id), Some(held.id.clone()));
    let refused = dashboard
        .review_payment(approve(&held, "reader/alice"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    // Four eyes by the person's name: `payer/test` created it, so `reviewer/test` may not.
    let refused = dashboard
        .review_payment(approve(&held, "reviewer/test"))
        .await
        .unwrap_err();
    assert_eq!(orchestrator_reason(&refused), "SAME_IDENTITY");
    let approved = dashboard
        .review_payment(approve(&held, "reviewer/alice"))
        .await
        .expect("another reviewer approves")
        .into_inner()
        .payment
        .expect("payment");
    let reviewer = approved
        .review
        .and_then(|review| review.reviewer)
        .expect("reviewer");
    assert_eq!(
        (reviewer.role.as_str(), reviewer.name.as_str()),
        ("reviewer", "alice")
    );
    assert_eq!(state(&stack.settled(&held.id).await), "SUCCEEDED");

    // A service's role is never delegated, nor a malformed one.
    for person in [
        "orchestrator/charger",
        "dashboard/other",
        "reviewer",
        "system/jobs",
    ] {
        let refused = dashboard
            .get_payment(get(&held, Some(person)))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{person}");
        assert_eq!(
            orchestrator_reason(&refused),
            "DELEGATION_REFUSED",
            "{person}"
        );
    }
    // No one else may name a person, whatever its own role allows.
    let mut treasury = PaymentServiceClient::new(stack.orchestrator.channel(Role::Treasury).await);
    let refused = treasury
        .get_payment(get(&held, Some("reader/alice")))
        .await
        .unwrap_err();
    assert_eq!(orchestrator_reason(&refused), "DELEGATION_REFUSED");
}

/// The vault takes the dashboard's calls for an administrator (key status) and nothing as
/// itself.
#[tokio::test]
async fn the_vault_takes_the_dashboards_calls_for_an_administrator() {
    let stack = Stack::start().await;
    let mut keys = KeyAdminServiceClient::new(stack.vault.channel(Role::Dashboard).await);
    let status = keys
        .get_key_status(as_person(
            vault_pb::GetKeyStatusRequest {},
            Some("admin/alice"),
        ))
        .await
        .expect("an administrator reads the key status")
        .into_inner();
    assert!(!status.data_keys.is_empty());
    let refused = keys
        .get_key_status(as_person(vault_pb::GetKeyStatusRequest {}, None))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let refused = keys
        .get_key_status(as_person(
            vault_pb::GetKeyStatusRequest {},
            Some("tokenizer/t"),
        ))
        .await
        .unwrap_err();
    assert_eq!(vault_reason(&refused), "DELEGATION_REFUSED");
}
