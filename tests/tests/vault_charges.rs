//! End-to-end tests of the vault's `ChargeService` and `SandboxService` over real gRPC, mutual
//! TLS and Postgres, against the built-in sandbox acquirer.

use std::time::Duration;

use sqlx::Row as _;
use tandem_proto::tandem::r#type::v1 as types;
use tandem_proto::tandem::vault::v1 as pb;
use tandem_proto::tandem::vault::v1::charge_service_client::ChargeServiceClient;
use tandem_proto::tandem::vault::v1::sandbox_service_client::SandboxServiceClient;
use tandem_proto::tandem::vault::v1::token_service_client::TokenServiceClient;
use tandem_tests::{
    LogCapture, RunningVault, TEST_PANS, TestDatabase, vault_reason, vault_settings,
    violated_fields,
};
use tandem_tls::identity::Role;
use tonic::Code;
use tonic::transport::Channel;

type Charges = ChargeServiceClient<Channel>;

/// Tokenizes `pan` and returns its token.
async fn token_for(vault: &RunningVault, pan: &str) -> String {
    let mut tokens = TokenServiceClient::new(vault.channel(Role::Tokenizer).await);
    tokens
        .tokenize(pb::TokenizeRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            pan: pan.to_owned(),
            expiry_month: 12,
            expiry_year: 2030,
            holder_name: "Grace Hopper".to_owned(),
            reuse_existing: false,
            ttl_seconds: 0,
        })
        .await
        .expect("tokenize")
        .into_inner()
        .card
        .expect("card")
        .token
}

async fn charges(vault: &RunningVault) -> Charges {
    ChargeServiceClient::new(vault.channel(Role::Orchestrator).await)
}

async fn sandbox(vault: &RunningVault) -> SandboxServiceClient<Channel> {
    SandboxServiceClient::new(vault.channel(Role::Admin).await)
}

fn usd(minor_units: i64) -> types::Money {
    types::Money {
        currency_code: "USD".to_owned(),
        minor_units,
    }
}

fn authorize_request(request_id: &str, token: &str, minor_units: i64) -> pb::AuthorizeRequest {
    pb::AuthorizeRequest {
        request_id: request_id.to_owned(),
        token: token.to_owned(),
        amount: Some(usd(minor_units)),
        allow_partial_approval: false,
        description: "invoice INV-7".to_owned(),
        statement_descriptor: "TANDEM CLOUD".to_owned(),
        reference: "payment/7/leg/1".to_owned(),
        metadata: [("invoice".to_owned(), "INV-7".to_owned())].into(),
    }
}

async fn authorize(client: &mut Charges, request: pb::AuthorizeRequest) -> pb::Charge {
    client
        .authorize(request)
        .await
        .expect("authorize")
        .into_inner()
        .charge
        .expect("charge")
}

async fn capture(client: &mut Charges, charge_id: &str, amount: Option<i64>) -> pb::Charge {
    client
        .capture(pb::CaptureRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            charge_id: charge_id.to_owned(),
            amount: amount.map(usd),
        })
        .await
        .expect("capture")
        .into_inner()
        .charge
        .expect("charge")
}

fn refund_request(charge_id: &str, minor_units: i64) -> pb::RefundRequest {
    pb::RefundRequest {
        request_id: uuid::Uuid::new_v4().to_string(),
        charge_id: charge_id.to_owned(),
        amount: Some(usd(minor_units)),
        reason: "duplicate line".to_owned(),
    }
}

async fn get_by_request(
    client: &mut Charges,
    request_id: &str,
) -> Result<pb::Charge, tonic::Status> {
    Ok(client
        .get_charge(pb::GetChargeRequest {
            lookup: Some(pb::get_charge_request::Lookup::RequestId(
                request_id.to_owned(),
            )),
        })
        .await?
        .into_inner()
        .charge
        .expect("charge"))
}

fn state(charge: &pb::Charge) -> pb::ChargeState {
    pb::ChargeState::try_from(charge.state).expect("known state")
}

fn minor(money: &Option<types::Money>) -> i64 {
    money.as_ref().expect("amount").minor_units
}

/// Authorization calls the sandbox received for `token`, replays included: the vault itself
/// must not repeat a call its own records already answer.
async fn sandbox_authorizations(vault: &RunningVault, token: &str) -> usize {
    let operations = sandbox(vault)
        .await
        .list_sandbox_operations(pb::ListSandboxOperationsRequest {
            page_size: 1000,
            token: token.to_owned(),
            r#type: pb::SandboxOperationType::Authorize as i32,
            ..Default::default()
        })
        .await
        .expect("list operations")
        .into_inner()
        .operations;
    operations.len()
}

/// Every documented test card behaves as documented, end to end: approvals, each decline
/// with its code and next action, partial approval on the limited-balance card (and a decline
/// when partial approval is not allowed), the slow card's latency, and the card that fails its
/// first two attempts.
#[tokio::test]
async fn test_cards_behave_as_documented() {
    use types::DeclineCode as D;
    use types::NextAction as N;
    let vault = RunningVault::start().await;
    let mut client = charges(&vault).await;
    let cases: [(&str, Option<(D, N)>); 11] = [
        ("4242424242424242", None),
        ("5555555555554444", None),
        ("378282246310005", None),
        ("4000000000000002", Some((D::DoNotHonor, N::TryNextCard))),
        (
            "4000000000009995",
            Some((D::InsufficientFunds, N::TryNextCard)),
        ),
        ("4000000000009987", Some((D::LostCard, N::TryNextCard))),
        ("4000000000009979", Some((D::StolenCard, N::TryNextCard))),
        ("4000000000000069", Some((D::ExpiredCard, N::TryNextCard))),
        (
            "4000000000000119",
            Some((D::ProcessingError, N::RetrySameCard)),
        ),
        (
            "4000002760003184",
            Some((D::AuthenticationRequired, N::TryNextCard)),
        ),
        ("4100000000000019", Some((D::Blocked, N::TryNextCard))),
    ];
    for (pan, expected) in cases {
        let token = token_for(&vault, pan).await;
        let charge = authorize(
            &mut client,
            authorize_request(&format!("card-{}", &pan[pan.len() - 4..]), &token, 1000),
        )
        .await;
        match expected {
            None => {
                assert_eq!(state(&charge), pb::ChargeState::Authorized, "{pan}");
                assert_eq!(minor(&charge.approved), 1000, "{pan}");
                assert_eq!(charge.authorization_code.len(), 6, "{pan}");
                assert!(charge.processor_reference.starts_with("sbx_"), "{pan}");
            }
            Some((code, action)) => {
                assert_eq!(state(&charge), pb::ChargeState::Declined, "{pan}");
                assert_eq!(charge.decline_code, code as i32, "{pan}");
                assert_eq!(charge.next_action, action as i32, "{pan}");
                assert_eq!(minor(&charge.approved), 0, "{pan}");
                assert!(!charge.processor_decline_code.is_empty(), "{pan}");
            }
        }
        assert_eq!(charge.last4, &pan[pan.len() - 4..]);
        assert_eq!(charge.processor, "sandbox");
    }

    // Limited balance (50.00 USD): a partial approval when allowed, a decline otherwise, and
    // holds use up the balance.
    let limited = token_for(&vault, "4000009900000012").await;
    let refused = authorize(&mut client, authorize_request("limited-1", &limited, 8000)).await;
    assert_eq!(refused.decline_code, D::InsufficientFunds as i32);
    let mut partial_request = authorize_request("limited-2", &limited, 8000);
    partial_request.allow_partial_approval = true;
    let partial = authorize(&mut client, partial_request).await;
    assert_eq!(state(&partial), pb::ChargeState::Authorized);
    assert_eq!(
        (minor(&partial.requested), minor(&partial.approved)),
        (8000, 5000)
    );
    let exhausted = authorize(&mut client, authorize_request("limited-3", &limited, 100)).await;
    assert_eq!(exhausted.decline_code, D::InsufficientFunds as i32);

    // Slow: answers after about a second.
    let slow = token_for(&vault, "4000009900000020").await;
    let started = std::time::Instant::now();
    let charge = authorize(&mut client, authorize_request("slow-1", &slow, 1000)).await;
    assert_eq!(state(&charge), pb::ChargeState::Authorized);
    assert!(started.elapsed() >= Duration::from_millis(1000));

    // Fails the first two attempts (retry the same card, new request id), then approves.
    let flaky = token_for(&vault, "4000009900000046").await;
    for attempt in 1..=3 {
        let charge = authorize(
            &mut client,
            authorize_request(&format!("flaky-{attempt}"), &flaky, 1000),
        )
        .await;
        if attempt < 3 {
            assert_eq!(
                charge.decline_code,
                D::ProcessingError as i32,
                "attempt {attempt}"
            );
            assert_eq!(charge.next_action, N::RetrySameCard as i32);
        } else {
            assert_eq!(
                state(&charge),
                pb::ChargeState::Authorized,
                "attempt {attempt}"
            );
        }
    }
    vault.stop().await;
}

/// Capture, void and refund follow the charge lifecycle and its preconditions, and every
/// capture and refund appears in the settlement report.
#[tokio::test]
async fn capture_void_refund_lifecycle() {
    let vault = RunningVault::start().await;
    let mut client = charges(&vault).await;
    let token = token_for(&vault, TEST_PANS[0]).await;

    let charge = authorize(&mut client, authorize_request("life-1", &token, 10_000)).await;
    let over = client
        .capture(pb::CaptureRequest {
            request_id: "life-over".to_owned(),
            charge_id: charge.id.clone(),
            amount: Some(usd(10_001)),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (over.code(), vault_reason(&over).as_str()),
        (Code::FailedPrecondition, "AMOUNT_EXCEEDS_APPROVED")
    );
    let mismatch = client
        .capture(pb::CaptureRequest {
            request_id: "life-eur".to_owned(),
            charge_id: charge.id.clone(),
            amount: Some(types::Money {
                currency_code: "EUR".to_owned(),
                minor_units: 100,
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(vault_reason(&mismatch), "CURRENCY_MISMATCH");

    let captured = capture(&mut client, &charge.id, Some(7_000)).await;
    assert_eq!(state(&captured), pb::ChargeState::Captured);
    assert_eq!(minor(&captured.captured), 7_000);
    assert!(captured.capture_time.is_some());
    let again = client
        .capture(pb::CaptureRequest {
            request_id: "life-again".to_owned(),
            charge_id: charge.id.clone(),
            amount: None,
        })
        .await
        .unwrap_err();
    assert_eq!(vault_reason(&again), "CHARGE_NOT_AUTHORIZED");
    let void = client
        .void(pb::VoidRequest {
            request_id: "life-void".to_owned(),
            charge_id: charge.id.clone(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(vault_reason(&void), "CHARGE_ALREADY_CAPTURED");

    let first = client
        .refund(refund_request(&charge.id, 2_000))
        .await
        .expect("refund")
        .into_inner();
    assert_eq!(
        state(first.charge.as_ref().unwrap()),
        pb::ChargeState::PartiallyRefunded
    );
    assert_eq!(
        first.refund.as_ref().unwrap().state,
        pb::RefundState::Succeeded as i32
    );
    let too_much = client
        .refund(refund_request(&charge.id, 5_001))
        .await
        .unwrap_err();
    assert_eq!(vault_reason(&too_much), "AMOUNT_EXCEEDS_REFUNDABLE");
    let rest = client
        .refund(refund_request(&charge.id, 5_000))
        .await
        .expect("refund")
        .into_inner();
    let refunded = rest.charge.unwrap();
    assert_eq!(state(&refunded), pb::ChargeState::Refunded);
    assert_eq!(
        (minor(&refunded.refunded), refunded.refunds.len()),
        (7_000, 2)
    );
    let none_left = client
        .refund(refund_request(&charge.id, 1))
        .await
        .unwrap_err();
    assert_eq!(vault_reason(&none_left), "CHARGE_NOT_CAPTURED");

    // Void releases an uncaptured hold; voiding a declined charge changes nothing.
    let second = authorize(&mut client, authorize_request("life-2", &token, 500)).await;
    let voided = client
        .void(pb::VoidRequest {
            request_id: "life-void-2".to_owned(),
            charge_id: second.id.clone(),
            reason: "order cancelled".to_owned(),
        })
        .await
        .expect("void")
        .into_inner()
        .charge
        .unwrap();
    assert_eq!(state(&voided), pb::ChargeState::Voided);
    let not_refundable = client
        .refund(refund_request(&second.id, 100))
        .await
        .unwrap_err();
    assert_eq!(vault_reason(&not_refundable), "CHARGE_NOT_CAPTURED");
    let declined_token = token_for(&vault, "4000000000000002").await;
    let declined = authorize(
        &mut client,
        authorize_request("life-3", &declined_token, 500),
    )
    .await;
    let still = client
        .void(pb::VoidRequest {
            request_id: "life-void-3".to_owned(),
            charge_id: declined.id.clone(),
            reason: String::new(),
        })
        .await
        .expect("void of a declined charge")
        .into_inner()
        .charge
        .unwrap();
    assert_eq!(state(&still), pb::ChargeState::Declined);
    let missing = client
        .get_charge(pb::GetChargeRequest {
            lookup: Some(pb::get_charge_request::Lookup::ChargeId(
                "ch_".to_owned() + &"a".repeat(26),
            )),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (missing.code(), vault_reason(&missing).as_str()),
        (Code::NotFound, "CHARGE_NOT_FOUND")
    );

    // The settlement report: one capture and two refunds, referencing the authorization.
    let report = sandbox(&vault)
        .await
        .list_settlement_records(pb::ListSettlementRecordsRequest {
            page_size: 2,
            ..Default::default()
        })
        .await
        .expect("settlement")
        .into_inner();
    assert_eq!(report.records.len(), 2);
    assert!(!report.next_page_token.is_empty());
    let rest_page = sandbox(&vault)
        .await
        .list_settlement_records(pb::ListSettlementRecordsRequest {
            page_size: 2,
            page_token: report.next_page_token.clone(),
            ..Default::default()
        })
        .await
        .expect("settlement page 2")
        .into_inner();
    let records: Vec<_> = report.records.iter().chain(&rest_page.records).collect();
    assert_eq!(records.len(), 3);
    assert!(rest_page.next_page_token.is_empty());
    assert!(
        records
            .iter()
            .all(|r| r.authorization_reference == charge.processor_reference)
    );
    let kinds: Vec<i32> = records.iter().map(|r| r.r#type).collect();
    assert_eq!(kinds, [1, 2, 2]);
    let amounts: Vec<i64> = records.iter().map(|r| minor(&r.amount)).collect();
    assert_eq!(amounts, [7_000, 2_000, 5_000]);
    vault.stop().await;
}

/// Replaying a request returns its first result without a second processor call; the same
/// id with other parameters is refused; 50 identical concurrent authorizations make exactly
/// one sandbox authorization and all return the same charge.
#[tokio::test]
async fn requests_are_idempotent() {
    let vault = RunningVault::start().await;
    let mut client = charges(&vault).await;
    let token = token_for(&vault, TEST_PANS[0]).await;
    let first = authorize(&mut client, authorize_request("idem-1", &token, 1234)).await;
    let replay = authorize(&mut client, authorize_request("idem-1", &token, 1234)).await;
    assert_eq!(replay.id, first.id);
    assert_eq!(replay.authorization_code, first.authorization_code);
    let reused = client
        .authorize(authorize_request("idem-1", &token, 999))
        .await
        .unwrap_err();
    assert_eq!(
        (reused.code(), vault_reason(&reused).as_str()),
        (Code::AlreadyExists, "REQUEST_ID_REUSED")
    );
    let cross_rpc = client
        .capture(pb::CaptureRequest {
            request_id: "idem-1".to_owned(),
            charge_id: first.id.clone(),
            amount: None,
        })
        .await
        .unwrap_err();
    assert_eq!(vault_reason(&cross_rpc), "REQUEST_ID_REUSED");
    assert_eq!(sandbox_authorizations(&vault, &token).await, 1);

    // A capture replayed returns the captured charge, not an error.
    let capture_request = pb::CaptureRequest {
        request_id: "idem-cap".to_owned(),
        charge_id: first.id.clone(),
        amount: None,
    };
    let captured = client
        .capture(capture_request.clone())
        .await
        .expect("capture")
        .into_inner()
        .charge
        .unwrap();
    let replayed = client
        .capture(capture_request)
        .await
        .expect("replayed capture")
        .into_inner()
        .charge
        .unwrap();
    assert_eq!(
        (state(&captured), state(&replayed)),
        (pb::ChargeState::Captured, pb::ChargeState::Captured)
    );

    let concurrent_token = token_for(&vault, TEST_PANS[1]).await;
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let mut client = client.clone();
        let request = authorize_request("idem-50", &concurrent_token, 500);
        tasks.push(tokio::spawn(async move { client.authorize(request).await }));
    }
    let mut ids = std::collections::HashSet::new();
    for task in tasks {
        let charge = task
            .await
            .unwrap()
            .expect("authorize")
            .into_inner()
            .charge
            .unwrap();
        assert_eq!(state(&charge), pb::ChargeState::Authorized);
        ids.insert(charge.id);
    }
    assert_eq!(ids.len(), 1, "every copy returns the same charge");
    assert_eq!(sandbox_authorizations(&vault, &concurrent_token).await, 1);

    // A request id seen before replays its charge whatever the card's state is now; a new one
    // on the revoked card is refused, and so is the old id with other parameters.
    let mut tokens = TokenServiceClient::new(vault.channel(Role::Tokenizer).await);
    tokens
        .revoke_token(pb::RevokeTokenRequest {
            request_id: "idem-revoke".to_owned(),
            token: concurrent_token.clone(),
            reason: String::new(),
        })
        .await
        .expect("revoke");
    let replay = authorize(
        &mut client,
        authorize_request("idem-50", &concurrent_token, 500),
    )
    .await;
    assert_eq!(Some(&replay.id), ids.iter().next());
    assert_eq!(state(&replay), pb::ChargeState::Authorized);
    for (request_id, minor_units, reason) in [
        ("idem-51", 500, "TOKEN_REVOKED"),
        ("idem-50", 501, "REQUEST_ID_REUSED"),
    ] {
        let refused = client
            .authorize(authorize_request(
                request_id,
                &concurrent_token,
                minor_units,
            ))
            .await
            .unwrap_err();
        assert_eq!(vault_reason(&refused), reason, "{request_id}");
    }
    assert_eq!(sandbox_authorizations(&vault, &concurrent_token).await, 1);
    vault.stop().await;
}

/// A restart between authorize and capture loses nothing: capture works on the new process,
/// and replaying the authorize returns the original charge.
#[tokio::test]
async fn restart_between_authorize_and_capture() {
    let vault = RunningVault::start().await;
    let token = token_for(&vault, TEST_PANS[2]).await;
    let charge = authorize(
        &mut charges(&vault).await,
        authorize_request("restart-1", &token, 4200),
    )
    .await;
    let vault = vault.restart().await;
    let mut client = charges(&vault).await;
    let replay = authorize(&mut client, authorize_request("restart-1", &token, 4200)).await;
    assert_eq!(replay.id, charge.id);
    let captured = capture(&mut client, &charge.id, None).await;
    assert_eq!(
        (state(&captured), minor(&captured.captured)),
        (pb::ChargeState::Captured, 4200)
    );
    assert_eq!(sandbox_authorizations(&vault, &token).await, 1);
    vault.stop().await;
}

async fn vault_with_connector(
    timeout_ms: u64,
    failures_max: u32,
    open_ms: u64,
    recovery_after_ms: u64,
) -> RunningVault {
    let database = TestDatabase::create().await;
    let mut settings = vault_settings(&database);
    settings.connector.timeout_ms = timeout_ms;
    settings.connector.breaker_failures_max = failures_max;
    settings.connector.breaker_open_ms = open_ms;
    settings.charges.recovery_after_ms = recovery_after_ms;
    settings.charges.recovery_interval_ms = 100;
    settings.metrics.listen_addr = tandem_tests::free_local_addr();
    RunningVault::start_with(settings, database).await
}

/// The card that times out after taking the authorization: the caller sees
/// DEADLINE_EXCEEDED, `GetCharge` by request id shows it approved, a replay returns the same
/// charge, and the sandbox holds exactly one authorization.
#[tokio::test]
async fn timeout_card_is_resolved_by_get_charge() {
    let vault = vault_with_connector(800, 50, 1000, 1100).await;
    let mut client = charges(&vault).await;
    let token = token_for(&vault, "4000009900000038").await;
    let timed_out = client
        .authorize(authorize_request("timeout-1", &token, 700))
        .await
        .unwrap_err();
    assert_eq!(
        (timed_out.code(), vault_reason(&timed_out).as_str()),
        (Code::DeadlineExceeded, "PROCESSOR_TIMEOUT")
    );
    let resolved = get_by_request(&mut client, "timeout-1")
        .await
        .expect("get charge");
    assert_eq!(state(&resolved), pb::ChargeState::Authorized);
    assert_eq!(minor(&resolved.approved), 700);
    let replay = authorize(&mut client, authorize_request("timeout-1", &token, 700)).await;
    assert_eq!(replay.id, resolved.id);
    assert_eq!(sandbox_authorizations(&vault, &token).await, 1);
    let unknown = get_by_request(&mut client, "never-sent").await.unwrap_err();
    assert_eq!(vault_reason(&unknown), "CHARGE_NOT_FOUND");
    vault.stop().await;
}

/// A re-send of a pending authorization that meets an open circuit breaker leaves the charge
/// pending: the first call reached the processor and took a hold, so declining it (as a first
/// call the breaker refuses is) would leave that hold behind while the caller moves on.
#[tokio::test]
async fn a_resend_refused_by_the_breaker_stays_pending() {
    let vault = vault_with_connector(200, 1, 60_000, 30_000).await;
    let mut client = charges(&vault).await;
    let token = token_for(&vault, "4000009900000038").await;
    let timed_out = client
        .authorize(authorize_request("resend-1", &token, 700))
        .await
        .unwrap_err();
    assert_eq!(vault_reason(&timed_out), "PROCESSOR_TIMEOUT");
    // The timeout opened the breaker (one failure allowed); the re-send meets it.
    let resent = client
        .authorize(authorize_request("resend-1", &token, 700))
        .await;
    match resent {
        Err(status) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
        Ok(response) => panic!("a re-send refused by the breaker answered {response:?}"),
    }
    let charge = get_by_request(&mut client, "resend-1")
        .await
        .expect("get charge");
    assert_eq!(state(&charge), pb::ChargeState::Pending);
    assert_eq!(sandbox_authorizations(&vault, &token).await, 1);
    vault.stop().await;
}

/// A capture whose processor call times out leaves the charge marked as waiting for it: a void
/// meanwhile is refused as in progress, and the capture's replay sends it again and finishes.
#[tokio::test]
async fn a_timed_out_capture_keeps_the_charge_busy_until_replayed() {
    // Recovery far off, so that only the replay finishes the capture; a timeout that a loaded
    // machine's ordinary calls stay well within.
    let vault = vault_with_connector(2_000, 100, 60_000, 3_600_000).await;
    let mut client = charges(&vault).await;
    let mut admin = sandbox(&vault).await;
    let token = token_for(&vault, TEST_PANS[0]).await;
    let charge = authorize(&mut client, authorize_request("busy-auth", &token, 900)).await;
    let slow = |request_id: &str, latency_ms: i64| pb::ConfigureSandboxCardRequest {
        request_id: request_id.to_owned(),
        token: token.clone(),
        config: Some(pb::SandboxCardConfig {
            latency_ms,
            ..Default::default()
        }),
    };
    admin
        .configure_sandbox_card(slow("busy-slow", 10_000))
        .await
        .expect("configure");
    let capture_request = pb::CaptureRequest {
        request_id: "busy-capture".to_owned(),
        charge_id: charge.id.clone(),
        amount: None,
    };
    let timed_out = client.capture(capture_request.clone()).await.unwrap_err();
    assert_eq!(vault_reason(&timed_out), "PROCESSOR_TIMEOUT");
    let void = client
        .void(pb::VoidRequest {
            request_id: "busy-void".to_owned(),
            charge_id: charge.id.clone(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(vault_reason(&void), "CHARGE_OPERATION_IN_PROGRESS");

    admin
        .configure_sandbox_card(slow("busy-fast", 0))
        .await
        .expect("configure");
    let captured = client
        .capture(capture_request)
        .await
        .expect("replayed capture")
        .into_inner()
        .charge
        .unwrap();
    assert_eq!(
        (state(&captured), minor(&captured.captured)),
        (pb::ChargeState::Captured, 900)
    );
    vault.stop().await;
}

/// The recovery job finishes work nobody came back for: a timed-out authorization resolves
/// without any `GetCharge`, and a capture whose intent committed before a crash (simulated in
/// the database) is sent again and completes.
#[tokio::test]
async fn recovery_finishes_interrupted_work() {
    let vault = vault_with_connector(800, 50, 1000, 1100).await;
    let mut client = charges(&vault).await;
    let token = token_for(&vault, "4000009900000038").await;
    client
        .authorize(authorize_request("recover-1", &token, 900))
        .await
        .unwrap_err();

    let good = token_for(&vault, TEST_PANS[0]).await;
    let charge = authorize(&mut client, authorize_request("recover-2", &good, 1500)).await;
    let mut db = vault.database.connect().await;
    // The state a crash right after the capture intent leaves behind.
    sqlx::query(
        "WITH request AS (INSERT INTO charge_requests (request_id, rpc, request_hash, charge_id, \
         amount_minor) VALUES ('recover-cap', 'Capture', decode(repeat('00', 32), 'hex'), $1, 1500)) \
         UPDATE charges SET pending_request_id = 'recover-cap', updated_at = now() - interval '1 hour' \
         WHERE id = $1",
    )
    .bind(&charge.id)
    .execute(&mut db)
    .await
    .expect("simulate a crash");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let row = sqlx::query(
            "SELECT (SELECT state FROM charges WHERE request_id = 'recover-1') AS timed_out, \
             (SELECT state FROM charges WHERE id = $1) AS crashed",
        )
        .bind(&charge.id)
        .fetch_one(&mut db)
        .await
        .unwrap();
        let (timed_out, crashed): (String, String) = (row.get("timed_out"), row.get("crashed"));
        if (timed_out.as_str(), crashed.as_str()) == ("authorized", "captured") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "recovery did not finish: {timed_out} {crashed}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(sandbox_authorizations(&vault, &token).await, 1);
    vault.stop().await;
}

/// After consecutive transport failures the breaker opens: calls fail fast with
/// PROCESSOR_UNAVAILABLE (no charge recorded) and health reports ChargeService NOT_SERVING;
/// after the open period one probe goes through and the breaker closes again.
#[tokio::test]
async fn circuit_breaker_opens_and_recovers() {
    // The recovery job stays out of the way: its inquiries would count as successes between
    // the two timeouts.
    let vault = vault_with_connector(200, 2, 1500, 60_000).await;
    let mut client = charges(&vault).await;
    let hanging = token_for(&vault, "4000009900000038").await;
    let good = token_for(&vault, TEST_PANS[0]).await;
    for attempt in 0..2 {
        let error = client
            .authorize(authorize_request(&format!("brk-{attempt}"), &hanging, 100))
            .await
            .unwrap_err();
        assert_eq!(vault_reason(&error), "PROCESSOR_TIMEOUT");
    }
    // The open breaker and the failures are visible in the metrics.
    let metrics = tandem_tests::scrape_metrics(vault.settings.metrics.listen_addr).await;
    for line in [
        "tandem_vault_connector_breaker_state{connector=\"sandbox\"} 2",
        "tandem_vault_connector_breaker_opened_total{connector=\"sandbox\"} 1",
        "tandem_vault_operations_total{rpc=\"tandem.vault.v1.ChargeService/Authorize\",\
         outcome=\"PROCESSOR_TIMEOUT\"} 2",
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
    let refused = client
        .authorize(authorize_request("brk-good-1", &good, 100))
        .await
        .unwrap_err();
    assert_eq!(
        (refused.code(), vault_reason(&refused).as_str()),
        (Code::Unavailable, "PROCESSOR_UNAVAILABLE")
    );
    assert_eq!(
        get_by_request(&mut client, "brk-good-1")
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );

    tandem_tests::wait_until_not_serving(
        &vault,
        "tandem.vault.v1.ChargeService",
        "health never showed the open breaker",
    )
    .await;

    // Once the open period is over, one probe closes the breaker (the recovery job may be the
    // one that sends it, so a call may still be refused, before or after its intent is
    // recorded, while that probe is in flight).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    for attempt in 0.. {
        match client
            .authorize(authorize_request(
                &format!("brk-good-{attempt}-late"),
                &good,
                100,
            ))
            .await
        {
            Ok(response) => {
                let charge = response.into_inner().charge.unwrap();
                // A call the breaker refused is never a decline.
                assert_eq!(state(&charge), pb::ChargeState::Authorized, "{charge:?}");
                break;
            }
            // Refused before or after its intent (the probe was taken: the charge stays
            // pending, not sent), or (on a loaded machine) past the short timeout.
            Err(error) => assert!(
                ["PROCESSOR_UNAVAILABLE", "PROCESSOR_TIMEOUT"]
                    .contains(&vault_reason(&error).as_str()),
                "{error:?}"
            ),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the breaker never closed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = authorize(&mut client, authorize_request("brk-good-after", &good, 100)).await;
    assert_eq!(state(&after), pb::ChargeState::Authorized);
    let metrics = tandem_tests::scrape_metrics(vault.settings.metrics.listen_addr).await;
    assert!(metrics.contains("tandem_vault_connector_breaker_state{connector=\"sandbox\"} 0"));
    vault.stop().await;
}

/// Only the orchestrator charges; only admins run the sandbox; refusals are audited.
#[tokio::test]
async fn roles_are_enforced() {
    let vault = RunningVault::start().await;
    let token = token_for(&vault, TEST_PANS[0]).await;
    for role in [Role::Tokenizer, Role::Payer, Role::Admin, Role::Auditor] {
        let mut client = ChargeServiceClient::new(vault.channel(role).await);
        let denied = client
            .authorize(authorize_request(&format!("role-{role}"), &token, 100))
            .await
            .unwrap_err();
        assert_eq!(
            (denied.code(), vault_reason(&denied).as_str()),
            (Code::PermissionDenied, "ROLE_NOT_ALLOWED"),
            "{role}"
        );
    }
    let mut as_orchestrator = SandboxServiceClient::new(vault.channel(Role::Orchestrator).await);
    let denied = as_orchestrator
        .get_sandbox_card(pb::GetSandboxCardRequest {
            token: token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let mut db = vault.database.connect().await;
    // Charge audit rows name the charge and the request id.
    let mut orchestrator = charges(&vault).await;
    let charge = authorize(
        &mut orchestrator,
        authorize_request("audited-1", &token, 100),
    )
    .await;
    let named: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_events WHERE request_id = 'audited-1' AND resource = $1",
    )
    .bind(&charge.id)
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(
        named, 2,
        "the intent and the result are audited with the charge"
    );
    let refusals: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_events WHERE outcome = 'ROLE_NOT_ALLOWED' AND rpc LIKE '%ChargeService/Authorize'",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(refusals, 4);
    vault.stop().await;
}

/// Bad input is INVALID_ARGUMENT naming every bad field, records nothing, and no card number
/// reaches the logs, the audit log or the charge tables.
#[tokio::test]
async fn bad_input_is_refused_and_no_pan_leaks() {
    let logs = LogCapture::install();
    let vault = RunningVault::start().await;
    let mut client = charges(&vault).await;
    let token = token_for(&vault, TEST_PANS[0]).await;
    let bad = pb::AuthorizeRequest {
        request_id: "bad id with spaces".to_owned(),
        token: "tok_nope".to_owned(),
        amount: Some(types::Money {
            currency_code: "XYZ".to_owned(),
            minor_units: 0,
        }),
        allow_partial_approval: false,
        description: "ok".to_owned(),
        statement_descriptor: "BAD*DESCRIPTOR".to_owned(),
        reference: TEST_PANS[1].to_owned(),
        metadata: [("Bad Key".to_owned(), "x".to_owned())].into(),
    };
    let error = client.authorize(bad).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert_eq!(
        violated_fields(&error),
        [
            "request_id",
            "token",
            "amount",
            "statement_descriptor",
            "reference",
            "metadata"
        ]
    );
    let mut too_big = authorize_request("bad-2", &token, 1);
    too_big.amount = Some(usd(vault.settings.charges.amount_minor_max + 1));
    assert_eq!(
        violated_fields(&client.authorize(too_big).await.unwrap_err()),
        ["amount"]
    );
    let mut missing = authorize_request("bad-3", &token, 1);
    missing.amount = None;
    assert_eq!(
        violated_fields(&client.authorize(missing).await.unwrap_err()),
        ["amount"]
    );
    let mut pan_in_metadata = authorize_request("bad-4", &token, 1);
    pan_in_metadata
        .metadata
        .insert("note".to_owned(), TEST_PANS[2].to_owned());
    assert_eq!(
        violated_fields(&client.authorize(pan_in_metadata).await.unwrap_err()),
        ["metadata"]
    );
    let bad_capture = client
        .capture(pb::CaptureRequest {
            request_id: String::new(),
            charge_id: "ch_x".to_owned(),
            amount: Some(usd(-5)),
        })
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(&bad_capture),
        ["request_id", "charge_id", "amount"]
    );
    let get = client
        .get_charge(pb::GetChargeRequest { lookup: None })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&get), ["charge_id"]);
    let unknown_token = client
        .authorize(authorize_request(
            "bad-5",
            &format!("tok_{}", "a".repeat(26)),
            100,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (unknown_token.code(), vault_reason(&unknown_token).as_str()),
        (Code::NotFound, "TOKEN_NOT_FOUND")
    );

    // Revoked tokens cannot be charged.
    let mut tokens = TokenServiceClient::new(vault.channel(Role::Tokenizer).await);
    tokens
        .revoke_token(pb::RevokeTokenRequest {
            request_id: "bad-revoke".to_owned(),
            token: token.clone(),
            reason: String::new(),
        })
        .await
        .expect("revoke");
    let revoked = client
        .authorize(authorize_request("bad-6", &token, 100))
        .await
        .unwrap_err();
    assert_eq!(
        (revoked.code(), vault_reason(&revoked).as_str()),
        (Code::FailedPrecondition, "TOKEN_REVOKED")
    );

    // A successful charge of every test PAN, then scan everything for the numbers.
    for pan in TEST_PANS {
        let token = token_for(&vault, pan).await;
        let charge = authorize(
            &mut client,
            authorize_request(&format!("scan-{}", &pan[pan.len() - 4..]), &token, 100),
        )
        .await;
        capture(&mut client, &charge.id, None).await;
    }
    let mut db = vault.database.connect().await;
    let charges_written: i64 = sqlx::query_scalar("SELECT count(*) FROM charges")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(
        charges_written,
        TEST_PANS.len() as i64,
        "refused requests record no charge"
    );
    let dump: String =
        sqlx::query_scalar("SELECT string_agg(t::text, ' ') FROM (SELECT * FROM charges) t")
            .fetch_one(&mut db)
            .await
            .unwrap();
    let audit: String = sqlx::query_scalar("SELECT string_agg(t::text, ' ') FROM audit_events t")
        .fetch_one(&mut db)
        .await
        .unwrap();
    let sandbox_dump: String = sqlx::query_scalar(
        "SELECT string_agg(t::text, ' ') FROM (SELECT * FROM sandbox_operations) t",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    let text = logs.text();
    assert!(text.contains("Authorize"), "the log capture works");
    for pan in TEST_PANS {
        for (name, haystack) in [
            ("logs", &text),
            ("charges", &dump),
            ("audit", &audit),
            ("sandbox", &sandbox_dump),
        ] {
            assert!(!haystack.contains(pan), "a test PAN leaked into {name}");
        }
    }
    vault.stop().await;
}

/// The sandbox is configurable at run time: a balance and a forced decline take effect on the
/// next authorization, `GetSandboxCard` shows holds and the available balance, and a reset
/// returns the card to its test card behaviour.
#[tokio::test]
async fn sandbox_cards_are_configurable() {
    let vault = RunningVault::start().await;
    let mut client = charges(&vault).await;
    let mut admin = sandbox(&vault).await;
    let token = token_for(&vault, TEST_PANS[0]).await;
    let configure =
        |request_id: &str, config: Option<pb::SandboxCardConfig>| pb::ConfigureSandboxCardRequest {
            request_id: request_id.to_owned(),
            token: token.clone(),
            config,
        };
    let card = admin
        .configure_sandbox_card(configure(
            "cfg-1",
            Some(pb::SandboxCardConfig {
                balance: Some(usd(3000)),
                ..Default::default()
            }),
        ))
        .await
        .expect("configure")
        .into_inner()
        .card
        .unwrap();
    assert!(card.configured);
    assert_eq!(minor(&card.available), 3000);
    let charge = authorize(&mut client, authorize_request("cfg-a", &token, 1000)).await;
    assert_eq!(state(&charge), pb::ChargeState::Authorized);
    let card = admin
        .get_sandbox_card(pb::GetSandboxCardRequest {
            token: token.clone(),
        })
        .await
        .expect("get")
        .into_inner()
        .card
        .unwrap();
    assert_eq!((minor(&card.available), minor(&card.held)), (2000, 1000));

    admin
        .configure_sandbox_card(configure(
            "cfg-2",
            Some(pb::SandboxCardConfig {
                decline_code: types::DeclineCode::FraudSuspected as i32,
                ..Default::default()
            }),
        ))
        .await
        .expect("configure");
    let declined = authorize(&mut client, authorize_request("cfg-b", &token, 1000)).await;
    assert_eq!(
        declined.decline_code,
        types::DeclineCode::FraudSuspected as i32
    );
    let reused = admin
        .configure_sandbox_card(configure("cfg-2", None))
        .await
        .unwrap_err();
    assert_eq!(vault_reason(&reused), "REQUEST_ID_REUSED");
    let invalid = admin
        .configure_sandbox_card(configure(
            "cfg-3",
            Some(pb::SandboxCardConfig {
                latency_ms: 60_001,
                fail_first_attempts: -1,
                ..Default::default()
            }),
        ))
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(&invalid),
        ["config.latency_ms", "config.fail_first_attempts"]
    );

    let reset = admin
        .configure_sandbox_card(configure("cfg-4", None))
        .await
        .expect("reset")
        .into_inner()
        .card
        .unwrap();
    assert!(!reset.configured);
    let approved = authorize(&mut client, authorize_request("cfg-c", &token, 1000)).await;
    assert_eq!(state(&approved), pb::ChargeState::Authorized);
    vault.stop().await;
}

/// A capture the processor refuses (here: its hold was released on the acquirer's side) is
/// FAILED_PRECONDITION `PROCESSOR_REFUSED`, leaves the charge AUTHORIZED and not busy, and stays
/// the answer to its request id: a replay gets the same refusal, other parameters under that
/// id are `REQUEST_ID_REUSED`. A 128-character request id works end to end.
#[tokio::test]
async fn processor_refusals_are_final_for_their_request_id() {
    let vault = RunningVault::start().await;
    let mut client = charges(&vault).await;
    let token = token_for(&vault, TEST_PANS[0]).await;
    let long_id = "r".repeat(128);
    let charge = authorize(&mut client, authorize_request(&long_id, &token, 900)).await;
    assert_eq!(state(&charge), pb::ChargeState::Authorized);
    let mut db = vault.database.connect().await;
    sqlx::query("UPDATE sandbox_authorizations SET state = 'voided' WHERE reference = $1")
        .bind(&charge.processor_reference)
        .execute(&mut db)
        .await
        .unwrap();
    let request = pb::CaptureRequest {
        request_id: "refused-capture".to_owned(),
        charge_id: charge.id.clone(),
        amount: None,
    };
    for _ in 0..2 {
        let refused = client.capture(request.clone()).await.unwrap_err();
        assert_eq!(
            (refused.code(), vault_reason(&refused).as_str()),
            (Code::FailedPrecondition, "PROCESSOR_REFUSED")
        );
    }
    let other = client
        .capture(pb::CaptureRequest {
            amount: Some(usd(100)),
            ..request.clone()
        })
        .await
        .unwrap_err();
    assert_eq!(vault_reason(&other), "REQUEST_ID_REUSED");
    let after = get_by_request(&mut client, &long_id).await.unwrap();
    assert_eq!(state(&after), pb::ChargeState::Authorized);
    let captures: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sandbox_operations WHERE type = 'capture' AND outcome <> 'replayed'",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(captures, 1, "the refused capture reached the acquirer once");
    vault.stop().await;
}

/// A card whose stored ciphertext does not open under its AAD (moved from another row, or
/// corrupted) is refused before anything is committed: DATA_LOSS with reason
/// CARD_DATA_UNREADABLE, no charge, no processor call, an audit row with that outcome and the
/// integrity metric raised. A request id seen before still replays its charge, and the card
/// next to it keeps working.
#[tokio::test]
async fn unreadable_card_data_is_refused_before_any_intent() {
    let vault = vault_with_connector(2000, 50, 1000, 60_000).await;
    let mut client = charges(&vault).await;
    let moved = token_for(&vault, "4242424242424242").await;
    let corrupted = token_for(&vault, "5555555555554444").await;
    let healthy = token_for(&vault, "378282246310005").await;
    // Authorized once while its data was intact: its request id must still replay.
    let earlier = authorize(&mut client, authorize_request("before-1", &moved, 100)).await;
    assert_eq!(state(&earlier), pb::ChargeState::Authorized);

    let mut conn = vault.database.connect().await;
    // `moved` gets `healthy`'s ciphertext and nonce (AAD names the token: it must not open);
    // `corrupted` gets one flipped bit.
    sqlx::query(
        "UPDATE cards SET (nonce, ciphertext) = \
         (SELECT nonce, ciphertext FROM cards WHERE token = $2) WHERE token = $1",
    )
    .bind(&moved)
    .bind(&healthy)
    .execute(&mut conn)
    .await
    .unwrap();
    vault.corrupt_card(&corrupted).await;
    let charges_before: i64 = sqlx::query_scalar("SELECT count(*) FROM charges")
        .fetch_one(&mut conn)
        .await
        .unwrap();

    for (request_id, token) in [("after-moved", &moved), ("after-corrupted", &corrupted)] {
        for _ in 0..2 {
            let status = client
                .authorize(authorize_request(request_id, token, 100))
                .await
                .unwrap_err();
            assert_eq!(status.code(), Code::DataLoss, "{request_id}");
            assert_eq!(vault_reason(&status), "CARD_DATA_UNREADABLE");
        }
    }
    let charges_after: i64 = sqlx::query_scalar("SELECT count(*) FROM charges")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(charges_after, charges_before, "no intent was committed");
    assert_eq!(sandbox_authorizations(&vault, &moved).await, 1);
    assert_eq!(sandbox_authorizations(&vault, &corrupted).await, 0);

    // The earlier request replays its charge; the healthy card is untouched.
    let replay = authorize(&mut client, authorize_request("before-1", &moved, 100)).await;
    assert_eq!(replay.id, earlier.id);
    let fine = authorize(&mut client, authorize_request("healthy-1", &healthy, 100)).await;
    assert_eq!(state(&fine), pb::ChargeState::Authorized);

    let alarms: Vec<(String, String)> = sqlx::query_as(
        "SELECT token, caller FROM audit_events WHERE outcome = 'CARD_DATA_UNREADABLE' \
         ORDER BY seq",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(alarms.len(), 4, "{alarms:?}");
    assert!(
        alarms
            .iter()
            .all(|(_, caller)| caller == "orchestrator/test")
    );
    let metrics = tandem_tests::scrape_metrics(vault.settings.metrics.listen_addr).await;
    assert!(
        metrics.contains("tandem_vault_card_data_unreadable_total 4"),
        "{metrics}"
    );
    vault.stop().await;
}

/// A first authorization the breaker refuses after its intent (the half-open probe is taken
/// by another call) is "not sent, try later": UNAVAILABLE PROCESSOR_UNAVAILABLE, the charge
/// pending and no decline, and the same request sent again once the breaker closed is
/// authorized with exactly one call to the processor.
#[tokio::test]
async fn a_first_send_refused_by_the_breaker_is_not_a_decline() {
    let vault = vault_with_connector(1200, 1, 300, 60_000).await;
    let mut client = charges(&vault).await;
    let hanging = token_for(&vault, "4000009900000038").await;
    let slow = token_for(&vault, "4000009900000020").await;
    let good = token_for(&vault, TEST_PANS[0]).await;
    // One timeout opens the breaker (one failure allowed).
    let error = client
        .authorize(authorize_request("half-open-timeout", &hanging, 100))
        .await
        .unwrap_err();
    assert_eq!(vault_reason(&error), "PROCESSOR_TIMEOUT");
    // Past the open period the slow card takes the only probe and holds it for a second.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut prober = client.clone();
    let probe = tokio::spawn(async move {
        prober
            .authorize(authorize_request("half-open-probe", &slow, 100))
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = client
        .authorize(authorize_request("half-open-good", &good, 100))
        .await
        .unwrap_err();
    assert_eq!(
        (refused.code(), vault_reason(&refused).as_str()),
        (Code::Unavailable, "PROCESSOR_UNAVAILABLE")
    );
    let pending = get_by_request(&mut client, "half-open-good")
        .await
        .expect("the intent was recorded");
    assert_eq!(state(&pending), pb::ChargeState::Pending, "{pending:?}");
    assert_eq!(sandbox_authorizations(&vault, &good).await, 0);

    let probed = probe.await.unwrap().expect("the probe answers");
    assert_eq!(
        state(&probed.into_inner().charge.unwrap()),
        pb::ChargeState::Authorized
    );
    let sent = authorize(&mut client, authorize_request("half-open-good", &good, 100)).await;
    assert_eq!(state(&sent), pb::ChargeState::Authorized);
    assert_eq!(sent.id, pending.id);
    assert_eq!(sandbox_authorizations(&vault, &good).await, 1);
    vault.stop().await;
}

/// An item's result in a batch: its charge, or its error as `(code, reason, fields)`.
fn batch_item(result: &pb::BatchChargeResult) -> Result<&pb::Charge, (Code, &str, Vec<&str>)> {
    use pb::batch_charge_result::Result as Item;
    match result.result.as_ref().expect("a result") {
        Item::Charge(charge) => Ok(charge),
        Item::Error(error) => Err((
            Code::from_i32(error.code),
            error.reason.as_str(),
            error
                .field_violations
                .iter()
                .map(|v| v.field.as_str())
                .collect(),
        )),
    }
}

/// The batch RPCs run each item as its single RPC would alone: each keeps its own request-id
/// idempotency (a batch sent again, or an item sent again alone, replays it; another request
/// under its id is `REQUEST_ID_REUSED`), each gets its own result in order, and one item's
/// failure (an unknown token, bad input) touches no other. Only the batch's shape fails the
/// whole call: no items, too many, or one request id twice.
#[tokio::test]
async fn batch_calls_run_each_item_as_alone() {
    let vault = RunningVault::start().await;
    let mut client = charges(&vault).await;
    let first_token = token_for(&vault, TEST_PANS[0]).await;
    let second_token = token_for(&vault, TEST_PANS[1]).await;
    let mut bad_amount = authorize_request("batch-bad", &first_token, 1);
    bad_amount.amount = Some(usd(0));
    let batch = pb::BatchAuthorizeRequest {
        requests: vec![
            authorize_request("batch-a", &first_token, 1200),
            authorize_request("batch-missing", "tok_aaaaaaaaaaaaaaaaaaaaaaaaaa", 500),
            bad_amount,
            authorize_request("batch-b", &second_token, 800),
        ],
    };
    let results = client
        .batch_authorize(batch.clone())
        .await
        .expect("batch authorize")
        .into_inner()
        .results;
    assert_eq!(results.len(), 4);
    let first = batch_item(&results[0])
        .expect("the first card authorizes")
        .clone();
    assert_eq!(state(&first), pb::ChargeState::Authorized);
    assert_eq!(first.request_id, "batch-a");
    assert_eq!(
        batch_item(&results[1]).unwrap_err(),
        (Code::NotFound, "TOKEN_NOT_FOUND", vec![])
    );
    assert_eq!(
        batch_item(&results[2]).unwrap_err(),
        (Code::InvalidArgument, "INVALID_ARGUMENT", vec!["amount"])
    );
    let second = batch_item(&results[3])
        .expect("the second card authorizes")
        .clone();
    assert_eq!(minor(&second.approved), 800);

    // Sent again, the batch replays; so does an item sent alone; no second hold is placed.
    let replayed = client
        .batch_authorize(batch)
        .await
        .expect("batch replay")
        .into_inner()
        .results;
    assert_eq!(batch_item(&replayed[0]).expect("replay").id, first.id);
    assert_eq!(batch_item(&replayed[3]).expect("replay").id, second.id);
    let alone = authorize(
        &mut client,
        authorize_request("batch-a", &first_token, 1200),
    )
    .await;
    assert_eq!(alone.id, first.id);
    assert_eq!(sandbox_authorizations(&vault, &first_token).await, 1);
    assert_eq!(sandbox_authorizations(&vault, &second_token).await, 1);
    let reused = client
        .batch_authorize(pb::BatchAuthorizeRequest {
            requests: vec![authorize_request("batch-a", &first_token, 999)],
        })
        .await
        .expect("batch authorize")
        .into_inner()
        .results;
    assert_eq!(
        batch_item(&reused[0]).unwrap_err(),
        (Code::AlreadyExists, "REQUEST_ID_REUSED", vec![])
    );

    // Captures and voids, batched the same way.
    let captured = client
        .batch_capture(pb::BatchCaptureRequest {
            requests: vec![pb::CaptureRequest {
                request_id: "batch-a-capture".to_owned(),
                charge_id: first.id.clone(),
                amount: Some(usd(1000)),
            }],
        })
        .await
        .expect("batch capture")
        .into_inner()
        .results;
    let captured = batch_item(&captured[0]).expect("captured");
    assert_eq!(
        (state(captured), minor(&captured.captured)),
        (pb::ChargeState::Captured, 1000)
    );
    let void = |request_id: &str, charge_id: &str| pb::VoidRequest {
        request_id: request_id.to_owned(),
        charge_id: charge_id.to_owned(),
        reason: "split payment not covered".to_owned(),
    };
    let voided = client
        .batch_void(pb::BatchVoidRequest {
            requests: vec![
                void("batch-b-void", &second.id),
                void("batch-a-void", &first.id),
            ],
        })
        .await
        .expect("batch void")
        .into_inner()
        .results;
    assert_eq!(
        state(batch_item(&voided[0]).expect("voided")),
        pb::ChargeState::Voided
    );
    assert_eq!(
        batch_item(&voided[1]).unwrap_err(),
        (Code::FailedPrecondition, "CHARGE_ALREADY_CAPTURED", vec![])
    );

    // The shape of a batch is the call's: checked before any item runs.
    let shape = |requests: Vec<pb::AuthorizeRequest>| {
        let mut client = client.clone();
        async move {
            let status = client
                .batch_authorize(pb::BatchAuthorizeRequest { requests })
                .await
                .unwrap_err();
            (status.code(), violated_fields(&status))
        }
    };
    assert_eq!(
        shape(vec![]).await,
        (Code::InvalidArgument, vec!["requests".to_owned()])
    );
    let many = (0..33)
        .map(|i| authorize_request(&format!("batch-many-{i}"), &first_token, 100))
        .collect();
    assert_eq!(
        shape(many).await,
        (Code::InvalidArgument, vec!["requests".to_owned()])
    );
    let twice = vec![
        authorize_request("batch-twice", &first_token, 100),
        authorize_request("batch-twice", &second_token, 100),
    ];
    assert_eq!(
        shape(twice).await,
        (
            Code::InvalidArgument,
            vec!["requests[1].request_id".to_owned()]
        )
    );
    let not_run = get_by_request(&mut client, "batch-twice")
        .await
        .unwrap_err();
    assert_eq!(not_run.code(), Code::NotFound);
    assert_eq!(sandbox_authorizations(&vault, &first_token).await, 1);

    // A batch is for the orchestrator only, like each of its items.
    let mut tokenizer = ChargeServiceClient::new(vault.channel(Role::Tokenizer).await);
    let denied = tokenizer
        .batch_authorize(pb::BatchAuthorizeRequest {
            requests: vec![authorize_request("batch-denied", &first_token, 100)],
        })
        .await
        .unwrap_err();
    assert_eq!(
        (denied.code(), vault_reason(&denied).as_str()),
        (Code::PermissionDenied, "ROLE_NOT_ALLOWED")
    );
}

/// A running vault, a pool on its database, a sandbox of its own on that database (acting as
/// the vault's does), and a token of `pan` from the vault.
async fn sandbox_beside_a_vault(
    pan: &str,
) -> (
    RunningVault,
    sqlx::PgPool,
    tandem_vault::connector::sandbox::Sandbox,
    tandem_vault::domain::Token,
) {
    let vault = RunningVault::start().await;
    let pool = sqlx::PgPool::connect(&vault.database.url)
        .await
        .expect("connect to the vault database");
    let sandbox = tandem_vault::connector::sandbox::Sandbox::new(
        pool.clone(),
        &tandem_vault::config::ConnectorSettings::default(),
    );
    let token = tandem_vault::domain::Token::parse(&token_for(&vault, pan).await).expect("token");
    (vault, pool, sandbox, token)
}

/// The sandbox's settlement records, and the replays it recorded.
async fn settlements_and_replays(pool: &sqlx::PgPool) -> (i64, i64) {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM sandbox_settlement_records), \
         (SELECT count(*) FROM sandbox_operations WHERE outcome = 'replayed')",
    )
    .fetch_one(pool)
    .await
    .expect("count settlements and replays")
}

/// Asks `sandbox` to hold 7.00 USD on the card `pan` under `key`, the card's fingerprint being
/// `fingerprint` (two hex digits) repeated, and returns its answer.
async fn sandbox_authorize(
    sandbox: &tandem_vault::connector::sandbox::Sandbox,
    key: &str,
    token: &tandem_vault::domain::Token,
    fingerprint: &str,
    pan: &str,
) -> tandem_vault::connector::AuthorizeAnswer {
    use tandem_money::{Currency, Money};
    use tandem_vault::connector::{AuthorizeCall, Connector as _};
    use tandem_vault::domain::{CardSecret, Expiry, Fingerprint, HolderName, Pan};

    let card = CardSecret {
        pan: Pan::parse(pan).expect("pan"),
        holder_name: HolderName::parse("Ada Lovelace").expect("name"),
    };
    let today = time::OffsetDateTime::now_utc().date();
    sandbox
        .authorize(AuthorizeCall {
            idempotency_key: key,
            token,
            fingerprint: Fingerprint::parse(&fingerprint.repeat(32)).expect("fingerprint"),
            card: &card,
            expiry: Expiry::new(12, 2030, today).expect("expiry"),
            amount: Money::new(Currency::parse("USD").expect("USD"), 700),
            allow_partial_approval: false,
            statement_descriptor: "TANDEM",
            reference: "payment/1",
        })
        .await
        .expect("the sandbox answers")
}

/// The sandbox acts on an idempotency key once, like a real acquirer: a key sent again is
/// answered with the first answer and changes nothing (the fail-first card's failure is not
/// used up again, a second hold or settlement is not made), whatever the card or the
/// authorization has become since; a new key is a new operation.
#[tokio::test]
async fn the_sandbox_acts_once_per_idempotency_key() {
    use tandem_money::{Currency, Money};
    use tandem_vault::connector::{AuthorizeAnswer, Connector as _, FollowUpAnswer, FollowUpCall};
    use tandem_vault::domain::charge::DeclineCode;

    let (_vault, pool, sandbox, token) = sandbox_beside_a_vault("4000009900000046").await;
    let usd = |minor_units| Money::new(Currency::parse("USD").expect("USD"), minor_units);
    // Fails its first two authorizations with PROCESSING_ERROR, then approves.
    let authorize =
        |key: &'static str| sandbox_authorize(&sandbox, key, &token, "ab", "4000009900000046");
    let declined = |answer: &AuthorizeAnswer| match answer {
        AuthorizeAnswer::Declined { code, .. } => Some(*code),
        AuthorizeAnswer::Approved { .. } => None,
    };

    let first = authorize("auth-1").await;
    assert_eq!(declined(&first), Some(DeclineCode::ProcessingError));
    assert_eq!(
        authorize("auth-1").await,
        first,
        "a replay answers the first answer"
    );
    assert_eq!(
        declined(&authorize("auth-2").await),
        Some(DeclineCode::ProcessingError),
        "the replay did not use up the second failure"
    );
    let approved = authorize("auth-3").await;
    let AuthorizeAnswer::Approved { reference, .. } = &approved else {
        panic!("the third key is approved: {approved:?}");
    };
    assert_eq!(authorize("auth-3").await, approved);
    let holds: i64 = sqlx::query_scalar("SELECT count(*) FROM sandbox_authorizations")
        .fetch_one(&pool)
        .await
        .expect("count holds");
    assert_eq!(holds, 1);

    let follow_up = |key: &'static str, amount: Option<i64>| FollowUpCall {
        idempotency_key: key,
        authorization_reference: reference,
        amount: amount.map(usd),
        token: &token,
    };
    let captured = sandbox
        .capture(follow_up("cap-1", Some(500)))
        .await
        .expect("capture");
    assert!(matches!(captured, FollowUpAnswer::Done { .. }));
    let again = sandbox
        .capture(follow_up("cap-1", Some(500)))
        .await
        .expect("capture replay");
    assert_eq!(
        again, captured,
        "the authorization is captured now, yet the replay succeeds"
    );
    let void = sandbox.void(follow_up("void-1", None)).await.expect("void");
    assert!(matches!(
        void,
        FollowUpAnswer::Refused {
            code: DeclineCode::TransactionNotAllowed,
            ..
        }
    ));
    assert_eq!(
        sandbox
            .void(follow_up("void-1", None))
            .await
            .expect("void replay"),
        void
    );
    let counts = settlements_and_replays(&pool).await;
    assert_eq!(counts, (1, 4), "one settlement; four replays recorded");
}

/// Operations that arrive together are acted on in one group transaction, each on the state
/// the ones before it left: a limited balance is never overdrawn, a fail-first card fails
/// exactly its first attempts, a key sent twice in one group is acted on once, and captures
/// and voids in one group each take effect once.
#[tokio::test]
async fn the_sandbox_acts_on_a_group_as_on_calls_one_after_another() {
    use futures::future::join_all;
    use tandem_money::{Currency, Money};
    use tandem_vault::connector::{AuthorizeAnswer, Connector as _, FollowUpAnswer, FollowUpCall};
    use tandem_vault::domain::charge::DeclineCode;

    let (_vault, pool, sandbox, token) = sandbox_beside_a_vault("4242424242424242").await;
    let usd = |minor_units| Money::new(Currency::parse("USD").expect("USD"), minor_units);
    // 50.00 USD of balance; and two failures before approvals.
    let (limited, flaky) = ("4000009900000012", "4000009900000046");
    let keys: Vec<String> = (0..10).map(|i| format!("limited-{i}")).collect();
    let flaky_keys: Vec<String> = (0..5).map(|i| format!("flaky-{i}")).collect();
    // Every limited key twice, and the flaky keys, all queued before any group is taken.
    let calls = keys
        .iter()
        .chain(&keys)
        .map(|key| sandbox_authorize(&sandbox, key, &token, "cd", limited))
        .chain(
            flaky_keys
                .iter()
                .map(|key| sandbox_authorize(&sandbox, key, &token, "ef", flaky)),
        );
    let answers = join_all(calls).await;
    let (limited_answers, flaky_answers) = answers.split_at(20);
    assert_eq!(
        limited_answers[..10],
        limited_answers[10..],
        "a key sent twice in one group gets one answer"
    );
    let approved: Vec<&str> = limited_answers[..10]
        .iter()
        .filter_map(|answer| match answer {
            AuthorizeAnswer::Approved { reference, .. } => Some(reference.as_str()),
            AuthorizeAnswer::Declined { code, .. } => {
                assert_eq!(*code, DeclineCode::InsufficientFunds);
                None
            }
        })
        .collect();
    assert_eq!(approved.len(), 7, "7 holds of 7.00 fit in 50.00; no more");
    let failures = flaky_answers
        .iter()
        .filter(|answer| {
            matches!(
                answer,
                AuthorizeAnswer::Declined {
                    code: DeclineCode::ProcessingError,
                    ..
                }
            )
        })
        .count();
    assert_eq!(failures, 2, "the flaky card fails exactly its first two");
    // All queued before the sandbox's tasks ran (a current-thread runtime), so one group took
    // them: one transaction wrote every operation, replays included.
    let transactions: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT xmin::text) FROM sandbox_operations WHERE type = 'authorize'",
    )
    .fetch_one(&pool)
    .await
    .expect("transactions");
    assert_eq!(transactions, 1, "one group acted on the 25 authorizations");

    // Capture two holds twice each and void the rest, all at once.
    let follow_up = |key: String, reference: &str, amount: Option<i64>| {
        let (sandbox, token, reference) = (&sandbox, &token, reference.to_owned());
        async move {
            let call = FollowUpCall {
                idempotency_key: &key,
                authorization_reference: &reference,
                amount: amount.map(usd),
                token,
            };
            match amount {
                Some(_) => sandbox.capture(call).await,
                None => sandbox.void(call).await,
            }
            .expect("the sandbox answers")
        }
    };
    let follow_ups = approved.iter().enumerate().flat_map(|(i, reference)| {
        let amount = (i < 2).then_some(700);
        let copies = if i < 2 { 2 } else { 1 };
        (0..copies).map(move |_| follow_up(format!("follow-up-{i}"), reference, amount))
    });
    let done = join_all(follow_ups).await;
    assert!(
        done.iter()
            .all(|answer| matches!(answer, FollowUpAnswer::Done { .. })),
        "{done:?}"
    );
    assert_eq!(done[0], done[1], "a capture sent twice gets one answer");
    let transactions: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT xmin::text) FROM sandbox_operations WHERE type <> 'authorize'",
    )
    .fetch_one(&pool)
    .await
    .expect("transactions");
    assert_eq!(
        transactions, 1,
        "one group acted on the 9 captures and voids"
    );
    let states: Vec<(String, i64)> = sqlx::query_as(
        "SELECT state, count(*) FROM sandbox_authorizations GROUP BY state ORDER BY state",
    )
    .fetch_all(&pool)
    .await
    .expect("states");
    assert_eq!(
        states,
        [
            ("captured".to_owned(), 2),
            ("held".to_owned(), 3),
            ("voided".to_owned(), 5)
        ],
        "the limited card's 7 holds: 2 captured, 5 voided; the flaky card's 3 still held"
    );
    let counts = settlements_and_replays(&pool).await;
    assert_eq!(counts, (2, 12), "two settlements; 10 + 2 replays recorded");
}
