//! Webhooks end to end (DESIGN section 11, "Events out"): endpoints registered over gRPC, events
//! posted to a local receiver and checked there: signed (Standard Webhooks), in each payment's
//! order, the same as the feed; retried with the same id after failures, after `Retry-After`,
//! and once an endpoint disabled by `410 Gone` or by failing past its schedule is enabled again;
//! verifiable during a secret's rotation; sent once between two replicas; and the notifications
//! that are events of their own (`payment.delayed`, `card.ineligible`).

use std::time::Duration;

use base64::Engine as _;
use tandem_orchestrator::config::Settings;
use tandem_orchestrator::domain::webhooks::signature_header;
use tandem_proto::tandem::orchestrator::v1 as pb;
use tandem_proto::tandem::orchestrator::v1::payment_service_client::PaymentServiceClient;
use tandem_proto::tandem::orchestrator::v1::webhook_service_client::WebhookServiceClient;
use tandem_proto::tandem::r#type::v1::DeclineCode;
use tandem_tests::receiver::{Answer, Received, Receiver};
use tandem_tests::stack::{Stack, group, member, payment_request, policy, read_feed, state};
use tandem_tests::{
    RunningOrchestrator, RunningVault, TestDatabase, orchestrator_reason, orchestrator_settings,
};
use tandem_tls::identity::Role;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt as _;

use pb::AllocationStrategy as S;
use pb::Completion as C;

const VISA: &str = "4242424242424242";
const MASTERCARD: &str = "5555555555554444";

type Hooks = WebhookServiceClient<Channel>;

/// Settings of an orchestrator that delivers webhooks to local receivers on a short schedule.
fn webhook_settings(database: &TestDatabase, vault: &RunningVault) -> Settings {
    let mut settings = orchestrator_settings(database, vault);
    settings.webhook.secret_key = tandem_orchestrator::config::SecretString::new(
        base64::engine::general_purpose::STANDARD
            .encode(uuid::Uuid::new_v4().as_u128().to_be_bytes().repeat(2)),
    );
    settings.webhook.allow_hosts = vec!["127.0.0.1".into()];
    settings.webhook.retry_schedule_ms = vec![0, 100, 100, 100, 100];
    settings.webhook.poll_ms = 20;
    settings.webhook.request_timeout_ms = 2_000;
    settings.webhook.lease_ms = 4_000;
    settings
}

/// A stack whose orchestrator has `settings` (changed by `change`) and a group of two cards,
/// the first tried first.
async fn stack_with(change: impl FnOnce(&mut Settings)) -> (Stack, pb::CardGroup, Vec<String>) {
    let vault = RunningVault::start().await;
    let database = TestDatabase::create().await;
    let mut settings = webhook_settings(&database, &vault);
    change(&mut settings);
    let orchestrator = RunningOrchestrator::start_with(settings, database, None).await;
    let stack = Stack {
        vault,
        orchestrator,
    };
    let tokens = vec![
        stack.vault.tokenize(VISA).await,
        stack.vault.tokenize(MASTERCARD).await,
    ];
    let group = stack
        .create_group(group(
            vec![
                member(&tokens[0], "card A", 1, None, None),
                member(&tokens[1], "card B", 2, None, None),
            ],
            policy(S::Sequential, &[], C::AllOrNothing),
        ))
        .await;
    (stack, group, tokens)
}

async fn hooks(stack: &Stack) -> Hooks {
    WebhookServiceClient::new(stack.orchestrator.channel(Role::Treasury).await)
}

fn request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Registers `receiver` for `types` (all when empty); returns the endpoint and its secret.
async fn register(
    stack: &Stack,
    receiver: &Receiver,
    types: &[&str],
) -> (pb::WebhookEndpoint, String) {
    let created = hooks(stack)
        .await
        .create_webhook_endpoint(pb::CreateWebhookEndpointRequest {
            request_id: request_id(),
            url: receiver.url(),
            event_types: types.iter().map(|t| (*t).to_owned()).collect(),
            description: "the ERP".into(),
        })
        .await
        .expect("create endpoint")
        .into_inner();
    (created.endpoint.expect("endpoint"), created.secret)
}

/// The secret's bytes.
fn secret_bytes(secret: &str) -> Vec<u8> {
    let encoded = secret.strip_prefix("whsec_").expect("whsec_ prefix");
    base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .expect("base64 secret")
}

/// True if one of the request's signatures is the one `secret` makes.
fn verifies(received: &Received, secret: &str) -> bool {
    let timestamp: i64 = received.timestamp.parse().expect("unix seconds");
    let expected = signature_header(
        &[&secret_bytes(secret)],
        &received.id,
        timestamp,
        received.body.as_bytes(),
    );
    received.signature.split(' ').any(|part| part == expected)
}

async fn endpoint(stack: &Stack, id: &str) -> pb::WebhookEndpoint {
    hooks(stack)
        .await
        .get_webhook_endpoint(pb::GetWebhookEndpointRequest {
            endpoint_id: id.to_owned(),
        })
        .await
        .expect("get endpoint")
        .into_inner()
        .endpoint
        .expect("endpoint")
}

async fn set_state(
    stack: &Stack,
    id: &str,
    state: pb::WebhookEndpointState,
) -> pb::WebhookEndpoint {
    hooks(stack)
        .await
        .update_webhook_endpoint(pb::UpdateWebhookEndpointRequest {
            request_id: request_id(),
            endpoint: Some(pb::WebhookEndpoint {
                id: id.to_owned(),
                state: state.into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["state".into()],
            }),
        })
        .await
        .expect("update endpoint")
        .into_inner()
        .endpoint
        .expect("endpoint")
}

async fn wait_state(
    stack: &Stack,
    id: &str,
    wanted: pb::WebhookEndpointState,
) -> pb::WebhookEndpoint {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let read = endpoint(stack, id).await;
        if read.state == wanted as i32 {
            return read;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "endpoint stayed {read:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The deliveries of `endpoint_id` (of `event_id` if not empty), once none is pending: an
/// attempt is recorded a moment after the receiver answered it.
async fn settled_deliveries(
    stack: &Stack,
    endpoint_id: &str,
    event_id: &str,
) -> Vec<pb::WebhookDelivery> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let deliveries = hooks(stack)
            .await
            .list_webhook_deliveries(pb::ListWebhookDeliveriesRequest {
                endpoint_id: endpoint_id.to_owned(),
                event_id: event_id.to_owned(),
                ..Default::default()
            })
            .await
            .expect("list deliveries")
            .into_inner()
            .deliveries;
        if deliveries
            .iter()
            .all(|d| d.state != pb::WebhookDeliveryState::Pending as i32)
        {
            return deliveries;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "deliveries still pending: {deliveries:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The requests about payment `id`.
fn of_payment(received: Vec<Received>, id: &str) -> Vec<Received> {
    received
        .into_iter()
        .filter(|r| r.json()["data"]["payment"]["id"] == id)
        .collect()
}

/// Every event of settled payment `id` in the feed, in order (read until its terminal event
/// is listed: the feed lists an event once every transaction before it has ended).
async fn feed_of(stack: &Stack, id: &str) -> Vec<pb::PaymentEvent> {
    let mut feed = PaymentServiceClient::new(stack.orchestrator.channel(Role::Treasury).await);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (events, _) = read_feed(&mut feed, &[], String::new(), 1000, 1).await;
        let of_payment: Vec<pb::PaymentEvent> = events
            .into_iter()
            .filter_map(|e| match e.subject {
                Some(pb::event::Subject::PaymentEvent(p))
                    if p.payment.as_ref().is_some_and(|x| x.id == id) =>
                {
                    Some(p)
                }
                _ => None,
            })
            .collect();
        if of_payment
            .last()
            .is_some_and(|e| e.type_name == "payment.succeeded")
        {
            return of_payment;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "payment {id} not settled in the feed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every delivery of a payment's events arrives signed, once, in the order of the feed, with
/// the event as its JSON body and the summary on the terminal event; a replay of the creating
/// request shows the same secret; the deliveries list says each was delivered at the first try.
#[tokio::test]
async fn events_arrive_signed_in_the_order_of_the_feed() {
    let (stack, group, _) = stack_with(|_| {}).await;
    let receiver = Receiver::start().await;
    let request = pb::CreateWebhookEndpointRequest {
        request_id: request_id(),
        url: receiver.url(),
        event_types: Vec::new(),
        description: "the ERP".into(),
    };
    let request_id_of_create = request.request_id.clone();
    let mut client = hooks(&stack).await;
    let created = client
        .create_webhook_endpoint(request.clone())
        .await
        .unwrap()
        .into_inner();
    let replayed = client
        .create_webhook_endpoint(request)
        .await
        .unwrap()
        .into_inner();
    assert!(created.secret.starts_with("whsec_"));
    assert_eq!(secret_bytes(&created.secret).len(), 32);
    assert_eq!(
        replayed.secret, created.secret,
        "a replay shows the current secret"
    );
    let endpoint_id = created.endpoint.unwrap().id;
    // A request id of another call is refused as such, whatever it made.
    let status = client
        .rotate_webhook_secret(pb::RotateWebhookSecretRequest {
            request_id: request_id_of_create.clone(),
            endpoint_id: endpoint_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);

    let paid = stack.pay(&group.id, "INV-W1", 4200, None).await;
    assert_eq!(state(&paid), "SUCCEEDED");
    let feed = feed_of(&stack, &paid.id).await;
    // The group's creation may come too: an endpoint takes every event not yet fanned out.
    let received = of_payment(
        receiver
            .wait_for(Duration::from_secs(20), "every event of the payment", |r| {
                of_payment(r.to_vec(), &paid.id).len() >= feed.len()
            })
            .await,
        &paid.id,
    );
    let ids: Vec<&str> = received.iter().map(|r| r.id.as_str()).collect();
    let feed_ids: Vec<&str> = feed.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, feed_ids, "the feed's events, once each, in its order");
    for r in &received {
        assert!(verifies(r, &created.secret), "signature of {}", r.id);
        assert!(!verifies(r, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"));
        let json = r.json();
        assert_eq!(json["data"]["id"], r.id.as_str());
        assert_eq!(json["type"], json["data"]["typeName"]);
        assert!(json["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
        let age =
            time::OffsetDateTime::now_utc().unix_timestamp() - r.timestamp.parse::<i64>().unwrap();
        assert!(
            (0..60).contains(&age),
            "webhook-timestamp is the attempt's time"
        );
    }
    let last = received.last().unwrap().json();
    assert_eq!(last["type"], "payment.succeeded");
    assert_eq!(last["data"]["summary"], paid.summary.as_str());
    assert!(!paid.summary.is_empty());

    let deliveries: Vec<pb::WebhookDelivery> = settled_deliveries(&stack, &endpoint_id, "")
        .await
        .into_iter()
        .filter(|d| feed_ids.contains(&d.event_id.as_str()))
        .collect();
    assert_eq!(deliveries.len(), feed.len());
    for d in &deliveries {
        assert_eq!(d.state, pb::WebhookDeliveryState::Delivered as i32);
        assert_eq!(d.attempts.len(), 1);
        assert_eq!(d.attempts[0].status_code, 204);
    }
}

/// An https endpoint is reached over TLS, its certificate checked against
/// `webhook.roots_path`: one the roots do not vouch for is refused (no answer), and with the
/// roots that issued it the event arrives.
#[tokio::test]
async fn https_endpoints_are_verified_by_their_roots() {
    let (stack, group, _) = stack_with(|s| {
        s.webhook.roots_path = tandem_tests::pki().orchestrator_server().ca_path;
    })
    .await;
    let receiver = Receiver::start_tls().await;
    assert!(receiver.url().starts_with("https://"));
    let (_, secret) = register(&stack, &receiver, &["payment.created"]).await;
    stack.pay(&group.id, "INV-TLS", 1000, None).await;
    let received = receiver
        .wait_for(Duration::from_secs(20), "the event over https", |r| {
            !r.is_empty()
        })
        .await;
    assert!(verifies(&received[0], &secret));

    // The default roots (the system's) do not vouch for the test CA: the handshake fails.
    let (untrusting, group, _) = stack_with(|_| {}).await;
    let receiver = Receiver::start_tls().await;
    let (endpoint, _) = register(&untrusting, &receiver, &["payment.created"]).await;
    untrusting.pay(&group.id, "INV-TLS-2", 1000, None).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let attempt = loop {
        let deliveries = hooks(&untrusting)
            .await
            .list_webhook_deliveries(pb::ListWebhookDeliveriesRequest {
                endpoint_id: endpoint.id.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .deliveries;
        if let Some(attempt) = deliveries.iter().find_map(|d| d.attempts.first().cloned()) {
            break attempt;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no attempt recorded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(attempt.status_code, 0);
    assert!(attempt.error.contains("TLS"), "{}", attempt.error);
    assert!(receiver.received().is_empty());
}

/// A receiver that fails twice gets the event a third time, with the same id; the deliveries
/// list shows the three attempts.
#[tokio::test]
async fn failures_are_retried_with_the_same_id() {
    let (stack, group, _) = stack_with(|_| {}).await;
    let receiver = Receiver::start().await;
    receiver.script([Answer::status(500), Answer::status(500)]);
    let (endpoint, secret) = register(&stack, &receiver, &["payment.created"]).await;
    stack.pay(&group.id, "INV-W2", 1000, None).await;
    let received = receiver
        .wait_for(Duration::from_secs(20), "three attempts", |r| r.len() >= 3)
        .await;
    assert_eq!(
        received.iter().map(|r| r.status).collect::<Vec<_>>(),
        [500, 500, 204]
    );
    assert!(
        received
            .iter()
            .all(|r| r.id == received[0].id && verifies(r, &secret))
    );
    let delivery = settled_deliveries(&stack, &endpoint.id, &received[0].id)
        .await
        .remove(0);
    let statuses: Vec<i32> = delivery.attempts.iter().map(|a| a.status_code).collect();
    assert_eq!(statuses, [500, 500, 204]);
    assert_eq!(delivery.attempts[0].error, "HTTP 500");
    assert!(delivery.attempts[2].error.is_empty());
    assert_eq!(delivery.state, pb::WebhookDeliveryState::Delivered as i32);
    // The endpoint is failing no more.
    assert!(
        self::endpoint(&stack, &endpoint.id)
            .await
            .failing_since
            .is_none()
    );
}

/// `429` with `Retry-After: 2` is tried again no sooner than two seconds later, although the
/// schedule's next wait is 100 ms.
#[tokio::test]
async fn retry_after_is_honoured() {
    let (stack, group, _) = stack_with(|_| {}).await;
    let receiver = Receiver::start().await;
    receiver.script([Answer {
        status: 429,
        headers: vec![("retry-after", "2".into())],
    }]);
    register(&stack, &receiver, &["payment.created"]).await;
    stack.pay(&group.id, "INV-W3", 1000, None).await;
    let received = receiver
        .wait_for(Duration::from_secs(20), "the retry", |r| r.len() >= 2)
        .await;
    let gap = received[1].at - received[0].at;
    assert!(gap >= Duration::from_secs(2), "retried after {gap:?}");
    assert_eq!(received[1].id, received[0].id);
}

/// `410 Gone` disables the endpoint; its events are kept, later ones too, and all are delivered
/// in order once it is enabled again.
#[tokio::test]
async fn gone_disables_and_kept_events_follow_enabling() {
    let (stack, group, _) = stack_with(|_| {}).await;
    let receiver = Receiver::start().await;
    receiver.script([Answer::status(410)]);
    let (endpoint, _) = register(&stack, &receiver, &["payment.created"]).await;
    stack.pay(&group.id, "INV-W4", 1000, None).await;
    let disabled = wait_state(&stack, &endpoint.id, pb::WebhookEndpointState::Disabled).await;
    assert_eq!(
        disabled.disabled_reason,
        pb::WebhookDisabledReason::Gone as i32
    );
    stack.pay(&group.id, "INV-W5", 1000, None).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while self::endpoint(&stack, &endpoint.id)
        .await
        .pending_deliveries
        < 2
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "second event not kept"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        receiver.received().len(),
        1,
        "nothing is sent while disabled"
    );

    let enabled = set_state(&stack, &endpoint.id, pb::WebhookEndpointState::Enabled).await;
    assert_eq!(
        enabled.disabled_reason,
        pb::WebhookDisabledReason::Unspecified as i32
    );
    let received = receiver
        .wait_for(Duration::from_secs(20), "the kept events", |r| r.len() >= 3)
        .await;
    // Two payments: two lanes, sent side by side.
    let mut after: Vec<&Received> = received[1..].iter().collect();
    after.sort_by_key(|r| r.id != received[0].id);
    assert_eq!(
        after[0].id, received[0].id,
        "the refused event again, same id"
    );
    assert_ne!(after[1].id, received[0].id);
    assert_eq!(
        after[1].json()["data"]["payment"]["invoice"]["id"],
        "INV-W5"
    );
}

/// A receiver down for longer than the whole schedule disables its endpoint (FAILING); nothing
/// is lost: once it is up and the endpoint enabled, every event arrives.
#[tokio::test]
async fn a_receiver_down_past_the_schedule_loses_nothing() {
    let (stack, group, _) = stack_with(|_| {}).await;
    let mut receiver = Receiver::start().await;
    let (endpoint, secret) = register(&stack, &receiver, &[]).await;
    receiver.pause();
    let paid = stack.pay(&group.id, "INV-W6", 1000, None).await;
    let disabled = wait_state(&stack, &endpoint.id, pb::WebhookEndpointState::Disabled).await;
    assert_eq!(
        disabled.disabled_reason,
        pb::WebhookDisabledReason::Failing as i32
    );
    assert!(disabled.failing_since.is_some());
    receiver.resume().await;
    set_state(&stack, &endpoint.id, pb::WebhookEndpointState::Enabled).await;
    let feed = feed_of(&stack, &paid.id).await;
    // The group's creation may come too: an endpoint takes every event not yet fanned out.
    let received = of_payment(
        receiver
            .wait_for(Duration::from_secs(20), "every event", |r| {
                of_payment(r.to_vec(), &paid.id).len() >= feed.len()
            })
            .await,
        &paid.id,
    );
    let ids: Vec<&str> = received.iter().map(|r| r.id.as_str()).collect();
    let feed_ids: Vec<&str> = feed.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, feed_ids);
    assert!(received.iter().all(|r| verifies(r, &secret)));
    let refused = settled_deliveries(&stack, &endpoint.id, &feed[0].id)
        .await
        .remove(0);
    // Failures (no answer) until a lane ran out of the schedule and disabled the endpoint,
    // then the delivery.
    let (last, failures) = refused.attempts.split_last().unwrap();
    assert_eq!(last.status_code, 204);
    assert!(!failures.is_empty() && failures.len() <= 5, "{failures:?}");
    assert!(
        failures
            .iter()
            .all(|a| a.status_code == 0 && !a.error.is_empty())
    );
}

/// While a secret is rotated during a stream of deliveries, every delivery verifies under the
/// old or the new secret; after the overlap, only the new one signs.
#[tokio::test]
async fn rotation_keeps_every_delivery_verifiable() {
    let (stack, group, _) = stack_with(|s| s.webhook.rotation_overlap_s = 2).await;
    let receiver = Receiver::start().await;
    let (endpoint, old) = register(&stack, &receiver, &["payment.created"]).await;
    let payer = stack.payments().await;
    let paying = {
        let group = group.id.clone();
        tokio::spawn(async move {
            let mut payer = payer;
            for n in 0..10 {
                let mut request = payment_request(&group, &format!("INV-R{n}"), 100, None);
                request.wait = false;
                payer.create_payment(request).await.expect("pay");
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(120)).await;
    let rotated = hooks(&stack)
        .await
        .rotate_webhook_secret(pb::RotateWebhookSecretRequest {
            request_id: request_id(),
            endpoint_id: endpoint.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(rotated.secret, old);
    assert_eq!(rotated.endpoint.as_ref().unwrap().secret_version, 2);
    paying.await.unwrap();
    let received = receiver
        .wait_for(Duration::from_secs(20), "ten events", |r| r.len() >= 10)
        .await;
    for r in &received {
        assert!(
            verifies(r, &old) || verifies(r, &rotated.secret),
            "{}",
            r.id
        );
    }
    let signed_twice = received
        .iter()
        .filter(|r| r.signature.contains(' '))
        .count();
    assert!(
        signed_twice > 0,
        "deliveries during the overlap carry both signatures"
    );
    // After the overlap only the new secret signs.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    stack.pay(&group.id, "INV-R-after", 100, None).await;
    let received = receiver
        .wait_for(
            Duration::from_secs(20),
            "the event after the overlap",
            |r| r.len() >= 11,
        )
        .await;
    let after = received.last().unwrap();
    assert!(verifies(after, &rotated.secret) && !verifies(after, &old));
}

/// Two replicas on one database deliver every event once between them.
#[tokio::test]
async fn two_replicas_deliver_each_event_once() {
    let vault = RunningVault::start().await;
    let database = TestDatabase::create().await;
    let settings = webhook_settings(&database, &vault);
    let first = RunningOrchestrator::start_with(settings.clone(), database.clone(), None).await;
    let second = RunningOrchestrator::start_with(settings, database, None).await;
    let stack = Stack {
        vault,
        orchestrator: first,
    };
    let token = stack.vault.tokenize(VISA).await;
    let group = stack
        .create_group(group(
            vec![member(&token, "card A", 1, None, None)],
            policy(S::Sequential, &[], C::AllOrNothing),
        ))
        .await;
    let receiver = Receiver::start().await;
    register(&stack, &receiver, &["payment.created", "payment.succeeded"]).await;
    let mut payers = [
        PaymentServiceClient::new(stack.orchestrator.channel(Role::Payer).await),
        PaymentServiceClient::new(second.channel(Role::Payer).await),
    ];
    for n in 0..20 {
        payers[n % 2]
            .create_payment(payment_request(&group.id, &format!("INV-2R{n}"), 100, None))
            .await
            .unwrap();
    }
    receiver
        .wait_for(Duration::from_secs(30), "40 events", |r| r.len() >= 40)
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let received = receiver.received();
    let mut ids: Vec<&str> = received.iter().map(|r| r.id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!((ids.len(), received.len()), (40, 40), "each event once");
    second.stop().await;
}

/// A payment not terminal `notify.pending_after_s` after it began publishes `payment.delayed`
/// once; a card declined as blocked publishes `card.ineligible` (and stays a member).
#[tokio::test]
async fn notifications_are_events() {
    let (stack, group, tokens) = stack_with(|s| {
        s.notify.pending_after_s = 1;
        s.notify.interval_ms = 100;
        s.vault.timeout_ms = 5_000;
        s.payments.lease_ms = 20_000;
    })
    .await;
    let receiver = Receiver::start().await;
    register(&stack, &receiver, &["payment.delayed", "card.ineligible"]).await;

    stack.sandbox_latency(&tokens[0], 2_000).await;
    let slow = stack.pay(&group.id, "INV-SLOW", 1000, None).await;
    assert_eq!(state(&slow), "SUCCEEDED");
    let received = receiver
        .wait_for(Duration::from_secs(20), "payment.delayed", |r| {
            !r.is_empty()
        })
        .await;
    let delayed = received[0].json();
    assert_eq!(delayed["type"], "payment.delayed");
    assert_eq!(delayed["data"]["payment"]["id"], slow.id.as_str());
    assert!(
        delayed["data"]["summary"]
            .as_str()
            .unwrap()
            .starts_with("Still in progress")
    );

    stack.sandbox_latency(&tokens[0], 0).await;
    stack
        .sandbox_decline(&tokens[0], DeclineCode::Blocked)
        .await;
    let fallback = stack.pay(&group.id, "INV-BLOCKED", 1000, None).await;
    assert_eq!(state(&fallback), "SUCCEEDED", "card B pays");
    let received = receiver
        .wait_for(Duration::from_secs(20), "card.ineligible", |r| r.len() >= 2)
        .await;
    let ineligible = received[1].json();
    assert_eq!(ineligible["type"], "card.ineligible");
    assert!(
        ineligible["data"]["summary"]
            .as_str()
            .unwrap()
            .contains("replace or update"),
        "{ineligible}"
    );
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(receiver.received().len(), 2, "payment.delayed is sent once");
    let group = stack
        .groups()
        .await
        .get_card_group(pb::GetCardGroupRequest {
            card_group_id: group.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .card_group
        .unwrap();
    assert_eq!(
        group.members[0].state,
        pb::CardGroupMemberState::Active as i32,
        "a blocked card is not suspended"
    );
}

/// Bad input names its field; roles other than treasury are refused; without a sealing key
/// webhooks are off.
#[tokio::test]
async fn bad_input_roles_and_a_missing_key_are_refused() {
    let (stack, _, _) = stack_with(|_| {}).await;
    let mut client = hooks(&stack).await;
    for (request, field) in [
        (
            pb::CreateWebhookEndpointRequest {
                url: "http://hooks.example.com/x".into(),
                ..Default::default()
            },
            "url",
        ),
        (
            pb::CreateWebhookEndpointRequest {
                url: "https://10.0.0.8/x".into(),
                ..Default::default()
            },
            "url",
        ),
        (
            pb::CreateWebhookEndpointRequest {
                url: "https://hooks.example.com/x".into(),
                event_types: vec!["payment.exploded".into()],
                ..Default::default()
            },
            "event_types[0]",
        ),
        (
            pb::CreateWebhookEndpointRequest {
                url: "https://hooks.example.com/x".into(),
                description: "d".repeat(501),
                ..Default::default()
            },
            "description",
        ),
    ] {
        let request = pb::CreateWebhookEndpointRequest {
            request_id: request_id(),
            ..request
        };
        let status = client.create_webhook_endpoint(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        let fields: Vec<String> = status
            .get_details_bad_request()
            .unwrap()
            .field_violations
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(fields, [field]);
    }
    let listed = client
        .list_webhook_endpoints(pb::ListWebhookEndpointsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.endpoints.is_empty(), "nothing half-written");
    let status = client
        .get_webhook_endpoint(pb::GetWebhookEndpointRequest {
            endpoint_id: tandem_runtime_id(),
        })
        .await
        .unwrap_err();
    assert_eq!(orchestrator_reason(&status), "WEBHOOK_ENDPOINT_NOT_FOUND");

    let mut reader = WebhookServiceClient::new(stack.orchestrator.channel(Role::Reader).await);
    let status = reader
        .list_webhook_endpoints(pb::ListWebhookEndpointsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    let (off, _, _) = stack_with(|s| {
        s.webhook.secret_key = tandem_orchestrator::config::SecretString::new("");
    })
    .await;
    let receiver = Receiver::start().await;
    let status = hooks(&off)
        .await
        .create_webhook_endpoint(pb::CreateWebhookEndpointRequest {
            request_id: request_id(),
            url: receiver.url(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(orchestrator_reason(&status), "WEBHOOKS_NOT_CONFIGURED");
}

/// `RedeliverEvents` sends the events of a range again with their ids; deleting an endpoint
/// drops what it had not received.
#[tokio::test]
async fn redelivery_and_deletion() {
    let (stack, group, _) = stack_with(|s| s.webhook.redeliver_max = 2).await;
    let receiver = Receiver::start().await;
    let (endpoint, _) =
        register(&stack, &receiver, &["payment.created", "payment.succeeded"]).await;
    let start = time::OffsetDateTime::now_utc() - time::Duration::minutes(1);
    stack.pay(&group.id, "INV-RD", 1000, None).await;
    let first = receiver
        .wait_for(Duration::from_secs(20), "two events", |r| r.len() >= 2)
        .await;
    let wire = |t: time::OffsetDateTime| prost_types::Timestamp {
        seconds: t.unix_timestamp(),
        nanos: 0,
    };
    let mut client = hooks(&stack).await;
    let queued = client
        .redeliver_events(pb::RedeliverEventsRequest {
            request_id: request_id(),
            endpoint_id: endpoint.id.clone(),
            start_time: Some(wire(start)),
            end_time: Some(wire(
                time::OffsetDateTime::now_utc() + time::Duration::minutes(1),
            )),
        })
        .await
        .unwrap()
        .into_inner()
        .queued;
    assert_eq!(queued, 2);
    let again = receiver
        .wait_for(Duration::from_secs(20), "the redelivery", |r| r.len() >= 4)
        .await;
    assert_eq!(
        [&again[2].id, &again[3].id],
        [&first[0].id, &first[1].id],
        "the same ids, in order"
    );
    // Past webhook.redeliver_max events, nothing is queued: narrow the range.
    stack.pay(&group.id, "INV-RD2", 1000, None).await;
    receiver
        .wait_for(Duration::from_secs(20), "the second payment", |r| {
            r.len() >= 6
        })
        .await;
    let status = client
        .redeliver_events(pb::RedeliverEventsRequest {
            request_id: request_id(),
            endpoint_id: endpoint.id.clone(),
            start_time: Some(wire(start)),
            end_time: Some(wire(
                time::OffsetDateTime::now_utc() + time::Duration::minutes(1),
            )),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(orchestrator_reason(&status), "REDELIVERY_TOO_LARGE");
    let status = client
        .redeliver_events(pb::RedeliverEventsRequest {
            request_id: request_id(),
            endpoint_id: endpoint.id.clone(),
            start_time: Some(wire(start)),
            end_time: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    receiver_down_then_delete(&stack, &group, &endpoint).await;
}

async fn receiver_down_then_delete(
    stack: &Stack,
    group: &pb::CardGroup,
    endpoint: &pb::WebhookEndpoint,
) {
    set_state(stack, &endpoint.id, pb::WebhookEndpointState::Disabled).await;
    stack.pay(&group.id, "INV-DEL", 1000, None).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while self::endpoint(stack, &endpoint.id).await.pending_deliveries < 2 {
        assert!(tokio::time::Instant::now() < deadline, "events not kept");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut client = hooks(stack).await;
    let dropped = client
        .delete_webhook_endpoint(pb::DeleteWebhookEndpointRequest {
            request_id: request_id(),
            endpoint_id: endpoint.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .dropped_deliveries;
    assert_eq!(dropped, 2);
    let status = client
        .get_webhook_endpoint(pb::GetWebhookEndpointRequest {
            endpoint_id: endpoint.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

fn tandem_runtime_id() -> String {
    // A well-formed id no endpoint has.
    let id = format!("whe_{}", "a".repeat(26));
    assert_eq!(id.len(), 30);
    id
}
