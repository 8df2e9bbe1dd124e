//! Bounded HTTP/2: each server announces its cap on concurrent streams per connection (so a
//! client holds further calls itself and nothing queues inside the server), and accepts no
//! more than `server.connections_max` connections at once: the next waits in the listen backlog
//! until one closes.

use std::time::Duration;

use rustls::version::TLS13;
use tandem_tests::raw::{MAX_CONCURRENT_STREAMS, handshake, server_settings};
use tandem_tests::{RunningOrchestrator, RunningVault, TestDatabase, orchestrator_settings};
use tandem_tls::identity::Role;

/// Both servers announce `server.concurrency_per_connection_max` as HTTP/2's
/// `SETTINGS_MAX_CONCURRENT_STREAMS`.
#[tokio::test]
async fn servers_announce_their_stream_cap() {
    let database = TestDatabase::create().await;
    let mut settings = tandem_tests::vault_settings(&database);
    settings.server.concurrency_per_connection_max = 7;
    let vault = RunningVault::start_with(settings, database).await;
    let database = TestDatabase::create().await;
    let mut settings = orchestrator_settings(&database, &vault);
    settings.server.concurrency_per_connection_max = 9;
    let orchestrator = RunningOrchestrator::start_with(settings, database, None).await;
    for (server, addr, role, cap) in [
        ("vault", vault.addr, Role::Tokenizer, 7),
        ("orchestrator", orchestrator.addr, Role::Reader, 9),
    ] {
        let mut stream = handshake(addr, role, &[&TLS13]).await.expect("handshake");
        let settings = server_settings(&mut stream, server).await;
        assert!(
            settings.contains(&(MAX_CONCURRENT_STREAMS, cap)),
            "{server}: {settings:?}"
        );
    }
}

/// With two connections allowed, a third waits (its TLS handshake does not even start) until
/// one of the two closes, then is served.
#[tokio::test]
async fn connections_beyond_the_cap_wait_for_one_to_close() {
    let vault = RunningVault::start().await;
    let database = TestDatabase::create().await;
    let mut settings = orchestrator_settings(&database, &vault);
    settings.server.connections_max = 2;
    let orchestrator = RunningOrchestrator::start_with(settings, database, None).await;
    // The harness's own readiness probe held a connection; let the server see it close.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let addr = orchestrator.addr;
    let mut first = handshake(addr, Role::Reader, &[&TLS13])
        .await
        .expect("first");
    server_settings(&mut first, "first").await;
    let mut second = handshake(addr, Role::Reader, &[&TLS13])
        .await
        .expect("second");
    server_settings(&mut second, "second").await;

    let third = tokio::spawn(async move {
        let mut stream = handshake(addr, Role::Reader, &[&TLS13]).await?;
        server_settings(&mut stream, "third").await;
        Ok::<_, std::io::Error>(stream)
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !third.is_finished(),
        "a third connection was served while two were open"
    );
    drop(first);
    let third = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("the third connection is served once one closes")
        .expect("task");
    assert!(third.is_ok(), "{third:?}");
    drop(second);
}
