//! Limits per caller (DESIGN section 12): each caller identity has, per RPC class, a rate and
//! a cap on calls in flight. Over either, a call is refused at once with `RESOURCE_EXHAUSTED`,
//! an `ErrorInfo` reason and a `RetryInfo`; another caller, or another class, is not touched.
//! Open streams and the background work a call starts (a payment's drive) count as in flight.

use std::time::Duration;

use tandem_orchestrator::config::{ClassLimits, LimitSettings};
use tandem_proto::tandem::orchestrator::v1 as pb;
use tandem_proto::tandem::orchestrator::v1::payment_service_client::PaymentServiceClient;
use tandem_tests::stack::{Stack, group, member, payment_request, policy};
use tandem_tests::{
    RunningOrchestrator, RunningVault, TestDatabase, orchestrator_reason, orchestrator_settings,
    pki,
};
use tonic::Code;
use tonic_types::StatusExt as _;

/// A stack whose orchestrator has `limits`.
async fn stack_with(limits: LimitSettings) -> Stack {
    let vault = RunningVault::start().await;
    let database = TestDatabase::create().await;
    let mut settings = orchestrator_settings(&database, &vault);
    settings.limits = limits;
    settings.metrics.listen_addr = tandem_tests::free_local_addr();
    let orchestrator = RunningOrchestrator::start_with(settings, database, None).await;
    Stack {
        vault,
        orchestrator,
    }
}

/// The reason, class and retry delay of a refusal.
fn refusal(status: &tonic::Status) -> (String, String, Duration) {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let info = status.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.domain, "orchestrator.tandem");
    let retry = status
        .get_details_retry_info()
        .and_then(|retry| retry.retry_delay)
        .expect("RetryInfo with a delay");
    let class = info.metadata.get("class").cloned().unwrap_or_default();
    (orchestrator_reason(status), class, retry)
}

/// A payer over its write rate is refused at once, told when to come back; its reads, and
/// another payer's writes, still pass.
#[tokio::test]
async fn a_caller_over_its_rate_is_refused_with_retry_info_and_others_are_not() {
    let stack = stack_with(LimitSettings {
        write: ClassLimits {
            requests_per_s: 1,
            burst: 3,
            in_flight_max: 100,
        },
        ..LimitSettings::uniform(ClassLimits::UNLIMITED)
    })
    .await;
    let mut payer = stack.payments().await;
    // Empty requests: the handler refuses them, but admission counts them first.
    for _ in 0..3 {
        let status = payer
            .create_payment(pb::CreatePaymentRequest::default())
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    }
    let status = payer
        .create_payment(pb::CreatePaymentRequest::default())
        .await
        .unwrap_err();
    let (reason, class, retry) = refusal(&status);
    assert_eq!((reason.as_str(), class.as_str()), ("RATE_LIMITED", "write"));
    assert!(
        retry > Duration::ZERO && retry <= Duration::from_secs(1),
        "{retry:?}"
    );
    // Counted for the operators, by class and reason (never by caller).
    let metrics =
        tandem_tests::scrape_metrics(stack.orchestrator.settings.metrics.listen_addr).await;
    assert!(
        metrics.lines().any(|line| line.starts_with(
            "tandem_orchestrator_admission_refusals_total{class=\"write\",reason=\"RATE_LIMITED\"}"
        )),
        "{metrics}"
    );

    // Reads are another class.
    let status = payer
        .get_payment(pb::GetPaymentRequest {
            payment_id: "pay_00000000000000000000000000".to_owned(),
        })
        .await
        .unwrap_err();
    assert_ne!(status.code(), Code::ResourceExhausted, "{status:?}");

    // Another payer has its own bucket.
    let channel = stack
        .orchestrator
        .try_channel(&pki().second_payer())
        .await
        .expect("second payer connects");
    let status = PaymentServiceClient::new(channel)
        .create_payment(pb::CreatePaymentRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // The bucket refills at the rate.
    tokio::time::sleep(retry).await;
    let status = payer
        .create_payment(pb::CreatePaymentRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
}

/// A payment created without waiting keeps its call in flight while it is driven, and an open
/// WatchPayment stream counts until it ends: with one of each allowed, the second is refused
/// with TOO_MANY_IN_FLIGHT until the first is over.
#[tokio::test]
async fn background_work_and_open_streams_count_in_flight() {
    let one = ClassLimits {
        requests_per_s: 1_000,
        burst: 1_000,
        in_flight_max: 1,
    };
    let stack = stack_with(LimitSettings {
        write: one,
        stream: one,
        ..LimitSettings::uniform(ClassLimits::UNLIMITED)
    })
    .await;
    let token = stack.vault.tokenize("4242424242424242").await;
    // A slow processor keeps the payment in flight for a while.
    stack.sandbox_latency(&token, 1_500).await;
    let created = stack
        .create_group(group(
            vec![member(&token, "slow card", 1, None, None)],
            policy(
                pb::AllocationStrategy::Sequential,
                &[],
                pb::Completion::AllOrNothing,
            ),
        ))
        .await;
    let mut payer = stack.payments().await;
    let mut first = payment_request(&created.id, "INV-A1", 1_000, None);
    first.wait = false;
    let payment = payer
        .create_payment(first)
        .await
        .expect("first payment admitted")
        .into_inner()
        .payment
        .unwrap();

    let mut second = payment_request(&created.id, "INV-A2", 1_000, None);
    second.wait = false;
    let status = payer.create_payment(second.clone()).await.unwrap_err();
    let (reason, class, retry) = refusal(&status);
    assert_eq!(
        (reason.as_str(), class.as_str()),
        ("TOO_MANY_IN_FLIGHT", "write")
    );
    assert_eq!(retry, Duration::from_millis(100));

    let watch = || pb::WatchPaymentRequest {
        payment_id: payment.id.clone(),
        after_sequence: 0,
    };
    let mut stream = payer
        .watch_payment(watch())
        .await
        .expect("first stream admitted")
        .into_inner();
    let status = payer.watch_payment(watch()).await.unwrap_err();
    let (reason, class, _) = refusal(&status);
    assert_eq!(
        (reason.as_str(), class.as_str()),
        ("TOO_MANY_IN_FLIGHT", "stream")
    );

    // The stream ends once the payment is settled; then both slots are free again.
    while stream.message().await.expect("stream event").is_some() {}
    drop(stream);
    let settled = stack.settled(&payment.id).await;
    assert_eq!(settled.state(), pb::PaymentState::Succeeded);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match payer.create_payment(second.clone()).await {
            Ok(_) => break,
            Err(status) if status.code() == Code::ResourceExhausted => {
                assert!(tokio::time::Instant::now() < deadline, "slot never freed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(status) => panic!("{status:?}"),
        }
    }
    payer
        .watch_payment(watch())
        .await
        .expect("a stream is admitted once the first has ended");
}
