//! A database hiccup is not a reason to decline: while every connection of the vault's pool is
//! stuck for a few seconds, payments with good cards wait and retry, and none of them fails.
//! (The sandbox acquirer keeps its state in the vault's database: its storage errors must not
//! open the processor's circuit breaker, and a call the breaker refuses is "not sent, try
//! later", never a decline.)

use std::time::Duration;

use tandem_proto::tandem::orchestrator::v1 as pb;
use tandem_tests::stack::{Stack, group, member, payment_request, policy, state};
use tandem_tests::{RunningOrchestrator, RunningVault, TestDatabase, orchestrator_settings};

/// Payers keep paying from a group of good cards while, for three seconds, every connection of
/// the vault's database is killed as soon as it exists: the vault's operations (the sandbox
/// acquirer's included) fail on storage. The breaker never opens on that, and every payment
/// (created before, during or after the hiccup) ends SUCCEEDED.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_payment_with_good_cards_fails_after_a_database_hiccup() {
    const PAYERS: usize = 8;
    let vault_database = TestDatabase::create().await;
    let mut vault_settings = tandem_tests::vault_settings(&vault_database);
    vault_settings.database.connections_max = 4;
    vault_settings.database.acquire_timeout_ms = 300;
    // A breaker that opens easily: storage failures would open it at once.
    vault_settings.connector.breaker_failures_max = 3;
    vault_settings.connector.breaker_open_ms = 500;
    vault_settings.metrics.listen_addr = tandem_tests::free_local_addr();
    let vault = RunningVault::start_with(vault_settings, vault_database).await;
    let database = TestDatabase::create().await;
    let orchestrator =
        RunningOrchestrator::start_with(orchestrator_settings(&database, &vault), database, None)
            .await;
    let stack = Stack {
        vault,
        orchestrator,
    };
    let mut members = Vec::new();
    for (i, pan) in ["4242424242424242", "5555555555554444", "378282246310005"]
        .into_iter()
        .enumerate()
    {
        let token = stack.vault.tokenize(pan).await;
        members.push(member(
            &token,
            &format!("card {i}"),
            i as i32 + 1,
            None,
            None,
        ));
    }
    let created = stack
        .create_group(group(
            members,
            policy(
                pb::AllocationStrategy::Parallel,
                &[],
                pb::Completion::AllOrNothing,
            ),
        ))
        .await;

    let until = tokio::time::Instant::now() + Duration::from_secs(6);
    let payers: Vec<_> = (0..PAYERS)
        .map(|payer| {
            let group_id = created.id.clone();
            let client = stack.payments();
            async move {
                let mut client = client.await;
                let mut ids = Vec::new();
                let mut n = 0;
                while tokio::time::Instant::now() < until {
                    n += 1;
                    let invoice = format!("INV-H{payer}-{n}");
                    let request = payment_request(&group_id, &invoice, 3000, None);
                    // A refused CreatePayment (the orchestrator could not be reached) is
                    // sent again with the same request id.
                    let payment = loop {
                        match client.create_payment(request.clone()).await {
                            Ok(response) => break response.into_inner().payment.unwrap(),
                            Err(status) => {
                                assert_ne!(status.code(), tonic::Code::Internal, "{status:?}");
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        }
                    };
                    ids.push(payment.id);
                }
                ids
            }
        })
        .collect();
    // For three seconds every connection the vault opens is killed at once, whatever it was
    // doing, as when the database restarts or a proxy drops every session.
    let hiccup = async {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let mut admin = stack.vault.database.connect().await;
        let name = stack.vault.database.name.clone();
        let end = tokio::time::Instant::now() + Duration::from_secs(3);
        while tokio::time::Instant::now() < end {
            sqlx::query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = $1 AND pid <> pg_backend_pid()",
            )
            .bind(&name)
            .execute(&mut admin)
            .await
            .unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let (ids, ()) = tokio::join!(futures::future::join_all(payers), hiccup);
    let ids: Vec<String> = ids.into_iter().flatten().collect();
    assert!(ids.len() >= PAYERS * 2, "payments were made: {}", ids.len());
    let mut failed = Vec::new();
    for id in &ids {
        let payment = stack.settled(id).await;
        if state(&payment) != "SUCCEEDED" {
            failed.push(format!("{id}: {} {}", state(&payment), payment.summary));
        }
    }
    // The vault's own storage failing says nothing about the processor.
    let metrics = tandem_tests::scrape_metrics(stack.vault.settings.metrics.listen_addr).await;
    assert!(
        metrics.contains("tandem_vault_connector_breaker_opened_total{connector=\"sandbox\"} 0"),
        "the breaker opened on storage failures:\n{metrics}"
    );
    assert!(
        failed.is_empty(),
        "{} of {} payments did not succeed:\n{}",
        failed.len(),
        ids.len(),
        failed.join("\n")
    );
    stack.assert_ledger_invariants().await;
}
