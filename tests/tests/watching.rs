//! Watching is cheap: every `WatchPayment` stream of an instance is fed from one reader (the
//! instance's own commits, and one poll for other instances' changes), so hundreds of streams
//! cost the database what one does, and each still gets every event, in order, to the end.

use std::time::Duration;

use futures::future::join_all;
use sqlx::{Connection as _, PgConnection};
use tandem_proto::tandem::orchestrator::v1 as pb;
use tandem_proto::tandem::orchestrator::v1::payment_service_client::PaymentServiceClient;
use tandem_tests::stack::{Stack, group, member, payment_request, policy};
use tandem_tests::{RunningOrchestrator, TestDatabase, orchestrator_settings};
use tandem_tls::identity::Role;
use tonic::transport::Channel;

/// Streams each test opens on one payment.
const STREAMS: usize = 300;

/// A one-card group whose processor answers after `latency_ms`, so that its payments stay in
/// progress for a while, and a payment from it, not waited for.
async fn slow_payment(stack: &Stack, latency_ms: i64) -> pb::Payment {
    let token = stack.vault.tokenize("4242424242424242").await;
    stack.sandbox_latency(&token, latency_ms).await;
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
    let mut request = payment_request(&created.id, "INV-WATCH", 1_000, None);
    request.wait = false;
    stack
        .payments()
        .await
        .create_payment(request)
        .await
        .expect("create payment")
        .into_inner()
        .payment
        .expect("payment")
}

/// Opens `STREAMS` streams on `payment_id` over a few connections.
async fn open_streams(
    channels: &[Channel],
    payment_id: &str,
) -> Vec<tonic::Streaming<pb::WatchPaymentResponse>> {
    let mut streams = Vec::with_capacity(STREAMS);
    for n in 0..STREAMS {
        let mut client = PaymentServiceClient::new(channels[n % channels.len()].clone());
        streams.push(
            client
                .watch_payment(pb::WatchPaymentRequest {
                    payment_id: payment_id.to_owned(),
                    after_sequence: 0,
                })
                .await
                .expect("watch")
                .into_inner(),
        );
    }
    streams
}

/// Every stream's event sequences, read to the stream's end.
async fn drain(streams: Vec<tonic::Streaming<pb::WatchPaymentResponse>>) -> Vec<Vec<i64>> {
    join_all(streams.into_iter().map(|mut stream| async move {
        let mut sequences = Vec::new();
        while let Some(message) = stream.message().await.expect("stream") {
            sequences.push(message.event.expect("event").sequence);
        }
        sequences
    }))
    .await
}

/// Transactions committed in `database` so far (reads included).
async fn commits(connection: &mut PgConnection, database: &str) -> i64 {
    // The statistics are a snapshot per transaction; clear it to read fresh counters.
    sqlx::query("SELECT pg_stat_clear_snapshot()")
        .execute(&mut *connection)
        .await
        .expect("clear snapshot");
    sqlx::query_scalar("SELECT xact_commit FROM pg_stat_database WHERE datname = $1")
        .bind(database)
        .fetch_one(&mut *connection)
        .await
        .expect("xact_commit")
}

/// Asserts every stream got the events 1..=total in order, and ended.
fn assert_complete(sequences: &[Vec<i64>], total: i64) {
    let expected: Vec<i64> = (1..=total).collect();
    for (n, got) in sequences.iter().enumerate() {
        assert_eq!(got, &expected, "stream {n}");
    }
}

/// Three hundred streams on a payment in progress cost the database a few transactions a
/// second (one reader's rounds), not a few per stream; each stream still gets every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_streams_share_one_reader() {
    let stack = Stack::start().await;
    let payment = slow_payment(&stack, 3_500).await;
    let mut channels = Vec::new();
    for _ in 0..4 {
        channels.push(stack.orchestrator.channel(Role::Reader).await);
    }
    let mut streams = open_streams(&channels, &payment.id).await;
    // Each stream reads the database once to catch up as it starts; its first event says it
    // has.
    let mut firsts = Vec::with_capacity(STREAMS);
    for stream in &mut streams {
        let first = stream.message().await.expect("stream").expect("an event");
        firsts.push(first.event.expect("event").sequence);
    }
    // Postgres publishes a backend's counts up to a second late: let the catch-ups' show
    // before the window opens.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let database = &stack.orchestrator.database;
    let name = database.name.clone();
    let mut connection = PgConnection::connect(&database.url).await.expect("connect");
    let before = commits(&mut connection, &name).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during = commits(&mut connection, &name).await - before;
    // One stream polling on its own would alone make 2 queries every 50 ms (40 a second);
    // three hundred, 12000. The reader makes at most 2 per round, 20 rounds a second here,
    // beside the payment's own writes and the recovery worker's polls.
    assert!(
        during < 150,
        "{during} transactions in a second with {STREAMS} streams"
    );
    let mut sequences = drain(streams).await;
    for (sequence, first) in sequences.iter_mut().zip(firsts) {
        sequence.insert(0, first);
    }
    let settled = stack.settled(&payment.id).await;
    assert_eq!(settled.state(), pb::PaymentState::Succeeded);
    let total = *sequences[0].last().expect("events");
    assert!(
        total >= 3,
        "created, authorized, captured at least: {total}"
    );
    assert_complete(&sequences, total);
    connection.close().await.ok();
}

/// A stream on one instance sees the changes another instance commits (its reader's poll),
/// every event and the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streams_see_another_instances_commits() {
    let stack = Stack::start().await;
    let shared = TestDatabase {
        name: stack.orchestrator.database.name.clone(),
        url: stack.orchestrator.database.url.clone(),
    };
    let other =
        RunningOrchestrator::start_with(orchestrator_settings(&shared, &stack.vault), shared, None)
            .await;
    let payment = slow_payment(&stack, 500).await;
    let channel = other.channel(Role::Reader).await;
    let streams = open_streams(&[channel], &payment.id).await;
    let sequences = drain(streams).await;
    let settled = stack.settled(&payment.id).await;
    assert_eq!(settled.state(), pb::PaymentState::Succeeded);
    let total = *sequences[0].last().expect("events");
    assert!(
        total >= 3,
        "created, authorized, captured at least: {total}"
    );
    assert_complete(&sequences, total);
    other.stop().await;
}
