//! The whole stack for end-to-end payment tests: a vault with its sandbox acquirer and an
//! orchestrator in front of it, each with its own database, plus builders for card groups and
//! payments and readers for what the sandbox and the ledger recorded.

use std::time::Duration;

use tandem_orchestrator::workflow::CrashPlan;
use tandem_proto::tandem::orchestrator::v1 as pb;
use tandem_proto::tandem::orchestrator::v1::card_group_service_client::CardGroupServiceClient;
use tandem_proto::tandem::orchestrator::v1::ledger_service_client::LedgerServiceClient;
use tandem_proto::tandem::orchestrator::v1::payment_service_client::PaymentServiceClient;
use tandem_proto::tandem::r#type::v1 as types;
use tandem_proto::tandem::vault::v1 as vault_pb;
use tandem_proto::tandem::vault::v1::sandbox_service_client::SandboxServiceClient;
use tandem_tls::identity::Role;
use tonic::transport::Channel;

use crate::{RunningOrchestrator, RunningVault, TestDatabase};

/// A vault and an orchestrator in front of it.
#[derive(Debug)]
pub struct Stack {
    /// The vault (sandbox connector).
    pub vault: RunningVault,
    /// The orchestrator.
    pub orchestrator: RunningOrchestrator,
}

impl Stack {
    /// Starts both, each on its own fresh database.
    pub async fn start() -> Stack {
        let vault = RunningVault::start().await;
        let orchestrator = RunningOrchestrator::start(&vault).await;
        Stack {
            vault,
            orchestrator,
        }
    }

    /// A CardGroupService client as `treasury`.
    pub async fn groups(&self) -> CardGroupServiceClient<Channel> {
        CardGroupServiceClient::new(self.orchestrator.channel(Role::Treasury).await)
    }

    /// A PaymentService client as `payer`.
    pub async fn payments(&self) -> PaymentServiceClient<Channel> {
        PaymentServiceClient::new(self.orchestrator.channel(Role::Payer).await)
    }

    /// A LedgerService client as `treasury`.
    pub async fn ledger(&self) -> LedgerServiceClient<Channel> {
        LedgerServiceClient::new(self.orchestrator.channel(Role::Treasury).await)
    }

    /// The spend report of `billing_account` for today and yesterday (UTC), from the ledger.
    pub async fn spend_report(&self, billing_account: &str) -> pb::GetSpendReportResponse {
        let today = time::OffsetDateTime::now_utc().date();
        let day =
            |d: time::Date| format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day());
        self.ledger()
            .await
            .get_spend_report(pb::GetSpendReportRequest {
                billing_account_id: billing_account.to_owned(),
                start_date: day(today.previous_day().expect("yesterday")),
                end_date: day(today.next_day().expect("tomorrow")),
            })
            .await
            .expect("spend report")
            .into_inner()
    }

    /// Asserts that the ledger's spend report of `billing_account` holds exactly what its
    /// payments (each read back once settled) captured less what they refunded, by card and by
    /// cost center, in USD.
    pub async fn assert_spend_matches(&self, billing_account: &str) {
        use std::collections::BTreeMap;
        let mut by_card: BTreeMap<String, i64> = BTreeMap::new();
        let mut by_cost_center: BTreeMap<String, i64> = BTreeMap::new();
        let mut payments = Vec::new();
        let mut reader = PaymentServiceClient::new(self.orchestrator.channel(Role::Reader).await);
        let mut page_token = String::new();
        loop {
            let page = reader
                .list_payments(pb::ListPaymentsRequest {
                    page_size: 100,
                    page_token,
                    billing_account_id: billing_account.to_owned(),
                    ..Default::default()
                })
                .await
                .expect("list payments")
                .into_inner();
            payments.extend(page.payments);
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        assert!(!payments.is_empty(), "no payments of {billing_account}");
        for payment in &payments {
            let payment = self.settled(&payment.id).await;
            for leg in &payment.legs {
                let captured = leg.captured.as_ref().map_or(0, |m| m.minor_units);
                let refunded = leg.refunded.as_ref().map_or(0, |m| m.minor_units);
                let paid = captured - refunded;
                *by_card.entry(leg.token.clone()).or_default() += paid;
                *by_cost_center.entry(leg.cost_center.clone()).or_default() += paid;
            }
        }
        by_card.retain(|_, paid| *paid != 0);
        by_cost_center.retain(|_, paid| *paid != 0);
        let report = self.spend_report(billing_account).await;
        let net = |line: &pb::SpendLine| line.net.as_ref().map_or(0, |m| m.minor_units);
        let reported_cards: BTreeMap<String, i64> = report
            .by_card
            .iter()
            .map(|l| (l.card_token.clone(), net(l)))
            .filter(|(_, paid)| *paid != 0)
            .collect();
        let reported_cost_centers: BTreeMap<String, i64> = report
            .by_cost_center
            .iter()
            .map(|l| (l.cost_center.clone(), net(l)))
            .filter(|(_, paid)| *paid != 0)
            .collect();
        assert_eq!(reported_cards, by_card, "spend by card");
        assert_eq!(
            reported_cost_centers, by_cost_center,
            "spend by cost center"
        );
        assert!(
            report.by_card.iter().all(|l| l.currency_code == "USD"),
            "{report:?}"
        );
    }

    /// Creates `group` and returns it.
    pub async fn create_group(&self, group: pb::CardGroup) -> pb::CardGroup {
        self.groups()
            .await
            .create_card_group(pb::CreateCardGroupRequest {
                request_id: uuid::Uuid::new_v4().to_string(),
                card_group: Some(group),
            })
            .await
            .expect("create card group")
            .into_inner()
            .card_group
            .expect("card group")
    }

    /// Pays `amount` minor units of USD on invoice `invoice` from `group`, waiting for the end.
    pub async fn pay(
        &self,
        group: &str,
        invoice: &str,
        amount: i64,
        policy: Option<pb::AllocationPolicy>,
    ) -> pb::Payment {
        self.create_payment(payment_request(group, invoice, amount, policy))
            .await
    }

    /// Sends `request` as `payer` and returns the payment it answers with.
    pub async fn create_payment(&self, request: pb::CreatePaymentRequest) -> pb::Payment {
        self.payments()
            .await
            .create_payment(request)
            .await
            .expect("create payment")
            .into_inner()
            .payment
            .expect("payment")
    }

    /// Creates the payment of `request`, not waiting for it, on an orchestrator started with
    /// `plan` (the one running is stopped first), waits until the drive stops dead at the
    /// plan's point, and starts a fresh instance in its place, as after a process killed there.
    /// Returns the stack, with its new orchestrator, and the payment as it was created.
    pub async fn pay_through_a_crash(
        mut self,
        settings: &tandem_orchestrator::config::Settings,
        database: &TestDatabase,
        plan: std::sync::Arc<CrashPlan>,
        mut request: pb::CreatePaymentRequest,
    ) -> (Stack, pb::Payment) {
        self.orchestrator.stop().await;
        self.orchestrator =
            RunningOrchestrator::start_with(settings.clone(), database.clone(), Some(plan.clone()))
                .await;
        request.wait = false;
        let created = self.create_payment(request).await;
        tokio::time::timeout(Duration::from_secs(30), plan.crashed.notified())
            .await
            .unwrap_or_else(|_| panic!("no crash at {:?} #{}", plan.point, plan.nth));
        self.orchestrator.stop().await;
        self.orchestrator =
            RunningOrchestrator::start_with(settings.clone(), database.clone(), None).await;
        (self, created)
    }

    /// Every sandbox operation on `token`'s card, oldest first.
    pub async fn sandbox_operations(&self, token: &str) -> Vec<vault_pb::SandboxOperation> {
        let mut sandbox = SandboxServiceClient::new(self.vault.channel(Role::Admin).await);
        let mut operations = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = sandbox
                .list_sandbox_operations(vault_pb::ListSandboxOperationsRequest {
                    page_size: 100,
                    page_token,
                    token: token.to_owned(),
                    ..Default::default()
                })
                .await
                .expect("list sandbox operations")
                .into_inner();
            operations.extend(page.operations);
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        operations.sort_by_key(|o| o.create_time.map(|t| (t.seconds, t.nanos)));
        operations
    }

    /// The sandbox card's open holds, in minor units.
    pub async fn sandbox_held(&self, token: &str) -> i64 {
        let mut sandbox = SandboxServiceClient::new(self.vault.channel(Role::Admin).await);
        sandbox
            .get_sandbox_card(vault_pb::GetSandboxCardRequest {
                token: token.to_owned(),
            })
            .await
            .map(|r| {
                r.into_inner()
                    .card
                    .and_then(|c| c.held)
                    .map_or(0, |m| m.minor_units)
            })
            .unwrap_or(0)
    }

    /// A card's funding-source balances in the ledger (USD): (pending debits, posted debits,
    /// posted credits).
    pub async fn ledger_card(&self, token: &str) -> (i64, i64, i64) {
        let pool = self.orchestrator.pool().await;
        let id =
            tandem_orchestrator::domain::booking::funding_source(token, "USD").expect("account id");
        let balances = tandem_ledger::ledger::accounts_by_id(&pool, &[id])
            .await
            .expect("ledger account")
            .pop()
            .map(|a| a.balances)
            .unwrap_or_default();
        pool.close().await;
        (
            balances.debits_pending,
            balances.debits_posted,
            balances.credits_posted,
        )
    }

    /// Every ledger transfer matching `filter`, in ledger order.
    pub async fn ledger_transfers(
        &self,
        filter: &tandem_ledger::ledger::TransferFilter,
    ) -> Vec<tandem_ledger::types::StoredTransfer> {
        let pool = self.orchestrator.pool().await;
        let mut transfers = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = tandem_ledger::ledger::list_transfers(&pool, filter, 1000, token.as_deref())
                .await
                .expect("list transfers");
            transfers.extend(page.transfers);
            match page.next_page_token {
                Some(next) => token = Some(next),
                None => break,
            }
        }
        pool.close().await;
        transfers
    }

    /// What the ledger says was paid under `filter`: captured (posted) amounts less refunds.
    pub async fn ledger_paid(&self, filter: &tandem_ledger::ledger::TransferFilter) -> i64 {
        use tandem_ledger::types::StoredKind;
        self.ledger_transfers(filter)
            .await
            .iter()
            .map(|t| match t.kind {
                StoredKind::PostPending => t.amount,
                StoredKind::Single => -t.amount,
                StoredKind::Pending | StoredKind::VoidPending => 0,
            })
            .sum()
    }

    /// Sets the sandbox behaviour of `token`'s card to answer every operation after
    /// `latency_ms` (admin role).
    pub async fn sandbox_latency(&self, token: &str, latency_ms: i64) {
        self.configure_sandbox(
            token,
            vault_pb::SandboxCardConfig {
                latency_ms,
                ..Default::default()
            },
        )
        .await;
    }

    /// Sets the sandbox behaviour of `token`'s card to decline with `code` (admin role).
    pub async fn sandbox_decline(
        &self,
        token: &str,
        code: tandem_proto::tandem::r#type::v1::DeclineCode,
    ) {
        self.configure_sandbox(
            token,
            vault_pb::SandboxCardConfig {
                decline_code: code as i32,
                ..Default::default()
            },
        )
        .await;
    }

    /// Sets the sandbox behaviour of `token`'s card to `config` (admin role).
    async fn configure_sandbox(&self, token: &str, config: vault_pb::SandboxCardConfig) {
        let mut sandbox = SandboxServiceClient::new(self.vault.channel(Role::Admin).await);
        sandbox
            .configure_sandbox_card(vault_pb::ConfigureSandboxCardRequest {
                request_id: uuid::Uuid::new_v4().to_string(),
                token: token.to_owned(),
                config: Some(config),
            })
            .await
            .expect("configure sandbox card");
    }

    /// Asserts that no operation was authorized twice at the sandbox on `tokens`' cards: every
    /// authorization it processed (replays aside) has its own idempotency key. Returns how many
    /// there were.
    pub async fn assert_single_authorizations(&self, tokens: &[&str]) -> usize {
        let mut keys = std::collections::HashSet::new();
        for token in tokens {
            for operation in authorizations(&self.sandbox_operations(token).await) {
                assert!(
                    keys.insert(operation.idempotency_key.clone()),
                    "authorized twice: {operation:?}"
                );
            }
        }
        keys.len()
    }

    /// Runs the ledger's invariant check on the orchestrator's database and asserts it holds.
    pub async fn assert_ledger_invariants(&self) {
        let pool = self.orchestrator.pool().await;
        let report = tandem_ledger::invariants::check(&pool, time::OffsetDateTime::now_utc())
            .await
            .expect("invariant check");
        assert!(report.holds(), "ledger invariants: {:?}", report.violations);
        pool.close().await;
    }

    /// Payment `id` as a reader sees it now.
    pub async fn payment(&self, id: &str) -> pb::Payment {
        PaymentServiceClient::new(self.orchestrator.channel(Role::Reader).await)
            .get_payment(pb::GetPaymentRequest {
                payment_id: id.to_owned(),
            })
            .await
            .expect("get payment")
            .into_inner()
            .payment
            .expect("payment")
    }

    /// Waits until payment `id` is settled (terminal with no refund pending) and returns it.
    pub async fn settled(&self, id: &str) -> pb::Payment {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut payments = PaymentServiceClient::new(self.orchestrator.channel(Role::Reader).await);
        loop {
            let payment = payments
                .get_payment(pb::GetPaymentRequest {
                    payment_id: id.to_owned(),
                })
                .await
                .expect("get payment")
                .into_inner()
                .payment
                .expect("payment");
            let terminal = matches!(
                pb::PaymentState::try_from(payment.state),
                Ok(pb::PaymentState::Succeeded
                    | pb::PaymentState::PartiallyPaid
                    | pb::PaymentState::Failed
                    | pb::PaymentState::PartiallyRefunded
                    | pb::PaymentState::Refunded)
            );
            let refunding = payment
                .refunds
                .iter()
                .any(|r| r.state == pb::PaymentRefundState::Pending as i32);
            if terminal && !refunding {
                return payment;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "payment {id} not settled within 60 s: {payment:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// `minor_units` of USD.
pub fn usd(minor_units: i64) -> types::Money {
    types::Money {
        currency_code: "USD".to_owned(),
        minor_units,
    }
}

/// A USD member with a label, priority and optional limits.
pub fn member(
    token: &str,
    label: &str,
    priority: i32,
    limit_per_payment: Option<i64>,
    limit_per_month: Option<i64>,
) -> pb::CardGroupMember {
    pb::CardGroupMember {
        token: token.to_owned(),
        label: label.to_owned(),
        currency_code: "USD".to_owned(),
        priority,
        cost_center: format!("cc-{}", label.replace(' ', "-")),
        limit_per_payment: limit_per_payment.map(usd),
        limit_per_month: limit_per_month.map(usd),
        state: pb::CardGroupMemberState::Active as i32,
        ..Default::default()
    }
}

/// A policy of `strategy` with fallback on and the given completion.
pub fn policy(
    strategy: pb::AllocationStrategy,
    weights: &[(&str, i32)],
    completion: pb::Completion,
) -> pb::AllocationPolicy {
    pb::AllocationPolicy {
        strategy: strategy as i32,
        weights: weights
            .iter()
            .map(|(token, basis_points)| pb::MemberWeight {
                token: (*token).to_owned(),
                basis_points: *basis_points,
            })
            .collect(),
        fallback: Some(pb::FallbackPolicy {
            enabled: true,
            attempts_max: 0,
        }),
        completion: completion as i32,
        ..Default::default()
    }
}

/// A USD group of billing account `acct-1` with `members` and `policy`.
pub fn group(members: Vec<pb::CardGroupMember>, policy: pb::AllocationPolicy) -> pb::CardGroup {
    pb::CardGroup {
        billing_account_id: "acct-1".to_owned(),
        display_name: "GlobalOps".to_owned(),
        default_currency_code: "USD".to_owned(),
        members,
        default_policy: Some(policy),
        ..Default::default()
    }
}

/// A CreatePayment request that waits for the end.
pub fn payment_request(
    group: &str,
    invoice: &str,
    amount: i64,
    policy: Option<pb::AllocationPolicy>,
) -> pb::CreatePaymentRequest {
    pb::CreatePaymentRequest {
        request_id: uuid::Uuid::new_v4().to_string(),
        invoice: Some(pb::Invoice {
            id: invoice.to_owned(),
            amount: Some(usd(amount)),
            description: format!("Invoice {invoice}"),
            cost_center: "cc-invoice".to_owned(),
            lines: Vec::new(),
        }),
        card_group_id: group.to_owned(),
        policy_override: policy,
        wait: true,
        wait_timeout_ms: 30_000,
        note: String::new(),
    }
}

/// Each leg as (label, amount covered, state name without prefix).
pub fn legs(payment: &pb::Payment) -> Vec<(String, i64, String)> {
    payment
        .legs
        .iter()
        .map(|leg| {
            (
                leg.label.clone(),
                leg.amount.as_ref().map_or(0, |m| m.minor_units),
                pb::LegState::try_from(leg.state)
                    .unwrap_or_default()
                    .as_str_name()
                    .trim_start_matches("LEG_STATE_")
                    .to_owned(),
            )
        })
        .collect()
}

/// The payment's state name without prefix.
pub fn state(payment: &pb::Payment) -> &'static str {
    pb::PaymentState::try_from(payment.state)
        .unwrap_or_default()
        .as_str_name()
        .trim_start_matches("PAYMENT_STATE_")
}

/// Authorizations the sandbox processed (not replays) among `operations`.
pub fn authorizations(
    operations: &[vault_pb::SandboxOperation],
) -> Vec<&vault_pb::SandboxOperation> {
    operations
        .iter()
        .filter(|o| {
            o.r#type == vault_pb::SandboxOperationType::Authorize as i32
                && o.outcome != vault_pb::SandboxOperationOutcome::Replayed as i32
        })
        .collect()
}

/// Reads the feed from `page_token` (of `types`, all when empty) until `want` events came or
/// 10 s passed: an event is listed once no transaction still running can commit one before it,
/// so one a moment old may need another poll. Returns the events and where to read on.
pub async fn read_feed(
    feed: &mut PaymentServiceClient<Channel>,
    types: &[&str],
    mut page_token: String,
    page_size: i32,
    want: usize,
) -> (Vec<pb::Event>, String) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut events = Vec::new();
    loop {
        let page = feed
            .list_events(pb::ListEventsRequest {
                page_size,
                page_token: page_token.clone(),
                event_types: types.iter().map(|t| (*t).to_owned()).collect(),
            })
            .await
            .expect("events")
            .into_inner();
        events.extend(page.events);
        let caught_up = page.next_page_token.is_empty();
        page_token = if caught_up {
            page.resume_page_token
        } else {
            page.next_page_token
        };
        if events.len() >= want || tokio::time::Instant::now() > deadline {
            return (events, page_token);
        }
        if caught_up {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}
