//! A certificate from the Tandem CA whose role no service knows is a proven caller without a
//! role (DESIGN section 2): every RPC of both services answers it PERMISSION_DENIED with reason
//! ROLE_NOT_ALLOWED, never UNAUTHENTICATED, and the vault audits the refusal under the caller's
//! identity.

use tandem_proto::tandem::orchestrator::v1 as opb;
use tandem_proto::tandem::orchestrator::v1::card_group_service_client::CardGroupServiceClient;
use tandem_proto::tandem::orchestrator::v1::payment_service_client::PaymentServiceClient;
use tandem_proto::tandem::vault::v1 as vpb;
use tandem_proto::tandem::vault::v1::charge_service_client::ChargeServiceClient;
use tandem_proto::tandem::vault::v1::key_admin_service_client::KeyAdminServiceClient;
use tandem_proto::tandem::vault::v1::sandbox_service_client::SandboxServiceClient;
use tandem_proto::tandem::vault::v1::token_service_client::TokenServiceClient;
use tandem_tests::{
    RunningOrchestrator, RunningVault, UNKNOWN_ROLE_IDENTITY, orchestrator_reason, pki,
    vault_reason,
};
use tonic::{Code, Status};

fn assert_denied(rpc: &str, result: Result<(), Status>, reason: fn(&Status) -> String) {
    let status = result.expect_err(rpc);
    assert_eq!(status.code(), Code::PermissionDenied, "{rpc}: {status:?}");
    assert_eq!(reason(&status), "ROLE_NOT_ALLOWED", "{rpc}");
}

/// One RPC of every service of both servers, reads and writes, each refused as a role problem;
/// the vault writes one audit row per refusal naming the caller.
#[tokio::test]
async fn an_unknown_role_is_denied_not_unauthenticated() {
    let vault = RunningVault::start().await;
    let orchestrator = RunningOrchestrator::start(&vault).await;
    let files = pki().unknown_role_client();

    let channel = vault
        .try_channel(&files)
        .await
        .expect("the TLS handshake succeeds");
    let mut tokens = TokenServiceClient::new(channel.clone());
    let mut charges = ChargeServiceClient::new(channel.clone());
    let mut keys = KeyAdminServiceClient::new(channel.clone());
    let mut sandbox = SandboxServiceClient::new(channel);
    let vault_calls: Vec<(&str, Result<(), Status>)> = vec![
        (
            "Tokenize",
            tokens
                .tokenize(vpb::TokenizeRequest {
                    request_id: "unknown-role-1".into(),
                    pan: "4242424242424242".into(),
                    expiry_month: 12,
                    expiry_year: 2030,
                    ..Default::default()
                })
                .await
                .map(drop),
        ),
        (
            "GetToken",
            tokens
                .get_token(vpb::GetTokenRequest {
                    token: "tok_aaaaaaaaaaaaaaaaaaaaaaaaaa".into(),
                })
                .await
                .map(drop),
        ),
        (
            "GetCharge",
            charges
                .get_charge(vpb::GetChargeRequest {
                    lookup: Some(vpb::get_charge_request::Lookup::RequestId("x".into())),
                })
                .await
                .map(drop),
        ),
        (
            "GetKeyStatus",
            keys.get_key_status(vpb::GetKeyStatusRequest {})
                .await
                .map(drop),
        ),
        (
            "GetSandboxCard",
            sandbox
                .get_sandbox_card(vpb::GetSandboxCardRequest {
                    token: "tok_aaaaaaaaaaaaaaaaaaaaaaaaaa".into(),
                })
                .await
                .map(drop),
        ),
    ];
    let vault_refusals = vault_calls.len() as i64;
    for (rpc, result) in vault_calls {
        assert_denied(rpc, result, vault_reason);
    }

    let channel = orchestrator
        .try_channel(&files)
        .await
        .expect("the TLS handshake succeeds");
    let mut groups = CardGroupServiceClient::new(channel.clone());
    let mut payments = PaymentServiceClient::new(channel);
    let orchestrator_calls: Vec<(&str, Result<(), Status>)> = vec![
        (
            "ListCardGroups",
            groups
                .list_card_groups(opb::ListCardGroupsRequest::default())
                .await
                .map(drop),
        ),
        (
            "CreateCardGroup",
            groups
                .create_card_group(opb::CreateCardGroupRequest::default())
                .await
                .map(drop),
        ),
        (
            "ListPayments",
            payments
                .list_payments(opb::ListPaymentsRequest::default())
                .await
                .map(drop),
        ),
        (
            "CreatePayment",
            payments
                .create_payment(opb::CreatePaymentRequest::default())
                .await
                .map(drop),
        ),
    ];
    for (rpc, result) in orchestrator_calls {
        assert_denied(rpc, result, orchestrator_reason);
    }

    let mut conn = vault.database.connect().await;
    let audited: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT caller, role, outcome FROM audit_events WHERE caller = $1 ORDER BY seq",
    )
    .bind(UNKNOWN_ROLE_IDENTITY)
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(audited.len() as i64, vault_refusals, "{audited:?}");
    let (role, _) = UNKNOWN_ROLE_IDENTITY.split_once('/').unwrap();
    assert!(
        audited
            .iter()
            .all(|(_, r, outcome)| r == role && outcome == "ROLE_NOT_ALLOWED"),
        "{audited:?}"
    );
    orchestrator.stop().await;
    vault.stop().await;
}
