//! `tandemctl chaos`: the evidence that payments survive crashes.
//!
//! It runs the vault and the orchestrator as separate OS processes (the `tandem-vault` and
//! `tandem-orchestrator` binaries beside `tandemctl`) on fresh databases, drives a stream of
//! payments across policies and sandbox test cards (declines, partial approvals, latency,
//! transient failures, timeouts after authorization, a card in euros whose legs are converted),
//! and meanwhile kills -9 the orchestrator
//! and, separately, the vault at random moments and restarts them. At the end it verifies:
//!
//! - every payment is terminal;
//! - no operation was authorized twice at the sandbox (the sandbox processed exactly as many
//!   approvals as the payments recorded approved attempts);
//! - every capture has its ledger post and every post its capture (counts and amounts per card);
//! - each `ALL_OR_NOTHING` payment is fully captured or fully voided;
//! - no hold is left open, at the sandbox or in the ledger;
//! - the ledger's invariant check passes;
//! - a reconciliation run of every day the sandbox settled matches every settlement record
//!   with its ledger capture or refund, and finds no discrepancy of any class;
//! - every event of the feed reached a webhook receiver in this process, registered before the
//!   first payment, signed, at least once ([`webhooks`]); duplicates are counted;
//! - the vault's audit log verifies as one intact hash chain.
//!
//! With `--replicas N` it runs N vault and N orchestrator processes on the same two databases
//! (orchestrator i calls vault i), spreads the payments across the orchestrators and kills any
//! of the 2N: the checks are the same. Several vaults append one audit chain because each
//! write locks the chain's head row last and extends the chain from it (docs/database.md).
//!
//! It prints one line such as `chaos: 500 payments, 37 kills, 0 double charges, 0 lost
//! captures, 0 orphan holds, ...` and exits non-zero on any violation.
//!
//! With `--ha` it is the HA drill ([`ha`], `scripts/ha-drill.sh`): the servers run on the
//! multi-host URLs of a highly available Postgres, are never killed, and must find the new
//! primary by themselves after a command kills the old one mid-run. On top of the checks
//! above, nothing a client saw acknowledged or read before the kill is missing afterwards, and
//! the servers are the processes that started, each having logged its move to the new
//! primary. It prints `ha drill: 200 payments, failover in 12.2 s (writes resumed after 13.6
//! s), 118 in flight at the kill, 0 lost, 0 double charges, ...`.

mod ha;
mod webhooks;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tandem_proto::tandem::orchestrator::v1 as pb;
use tandem_proto::tandem::orchestrator::v1::card_group_service_client::CardGroupServiceClient;
use tandem_proto::tandem::orchestrator::v1::payment_service_client::PaymentServiceClient;
use tandem_proto::tandem::orchestrator::v1::reconciliation_service_client::ReconciliationServiceClient;
use tandem_proto::tandem::r#type::v1 as types;
use tandem_proto::tandem::vault::v1 as vault_pb;
use tandem_proto::tandem::vault::v1::key_admin_service_client::KeyAdminServiceClient;
use tandem_proto::tandem::vault::v1::sandbox_service_client::SandboxServiceClient;
use tandem_proto::tandem::vault::v1::token_service_client::TokenServiceClient;
use tandem_tls::identity::Role;
use tokio::sync::Mutex;
use tonic::transport::Channel;

use crate::process::{ORCHESTRATOR_UNLIMITED, Server, VAULT_UNLIMITED, connect, free_address};

/// Most replicas of each server.
const REPLICAS_MAX: usize = 8;
/// Most kills of the Postgres primary in one HA drill.
const PRIMARY_KILLS_MAX: usize = 20;

/// Arguments of `tandemctl chaos`.
#[derive(Debug, clap::Args)]
pub struct ChaosArgs {
    /// Payments to drive.
    #[arg(long, default_value_t = 500)]
    payments: usize,
    /// Keep killing until at least this many kills happened (and every payment was created).
    #[arg(long, default_value_t = 20, conflicts_with = "ha")]
    kills_min: u32,
    /// Concurrent payment drivers.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Vault processes, and as many orchestrator processes, on the same two databases: the
    /// payments are spread across the orchestrators (each calls its own vault), and any of
    /// them may be killed.
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// Seed of the random choices (payments, kill moments); printed so a run can be repeated.
    #[arg(long)]
    seed: Option<u64>,
    /// How long the stack may take to settle every payment after the last kill.
    #[arg(long, default_value = "180s", value_parser = crate::bench::parse_duration)]
    settle_timeout: Duration,
    /// Postgres server URL (the chaos databases are created beside it).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    database_url: String,
    /// The HA drill: the servers run on the databases given by `--vault-database-url` and
    /// `--orchestrator-database-url` (multi-host URLs of a highly available Postgres, created
    /// empty), no server is killed, and `--kill-primary-command` kills the Postgres primary
    /// mid-run. The servers must find the new primary by themselves.
    #[arg(
        long,
        requires_all = ["vault_database_url", "orchestrator_database_url", "kill_primary_command"]
    )]
    ha: bool,
    /// With `--ha`: the vault's database, empty (the vault migrates it).
    #[arg(long, requires = "ha")]
    vault_database_url: Option<String>,
    /// With `--ha`: the orchestrator's database, empty; its hosts are probed for the primary.
    #[arg(long, requires = "ha")]
    orchestrator_database_url: Option<String>,
    /// With `--ha`: a shell command (`sh -c`) that kills the Postgres primary and returns once
    /// it is dead. It runs once half the payments are acknowledged (with `--primary-kills N`,
    /// at 1/(N+1), 2/(N+1), ... of them), and may first wait for the formation to be whole
    /// again.
    #[arg(long, requires = "ha")]
    kill_primary_command: Option<String>,
    /// With `--ha`: how many times the primary is killed.
    #[arg(long, default_value_t = 1, requires = "ha")]
    primary_kills: usize,
    /// With `--ha`: the longest a failover may take, from the kill until another host accepts
    /// writes.
    #[arg(
        long,
        default_value = "120s",
        value_parser = crate::bench::parse_duration,
        requires = "ha"
    )]
    failover_timeout: Duration,
}

/// A small deterministic generator (xorshift), so a run can be replayed from its seed.
#[derive(Debug, Clone)]
struct Draws(u64);

impl Draws {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn usd(minor_units: i64) -> types::Money {
    types::Money {
        currency_code: "USD".to_owned(),
        minor_units,
    }
}

/// Runs the chaos harness.
pub async fn run(args: ChaosArgs) -> anyhow::Result<()> {
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1
    });
    println!("chaos: seed {seed}");
    let dir = std::env::temp_dir().join(format!("tandem-chaos-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let certs = dir.join("certs");
    tandem_tls::issue::write_set(
        &certs,
        tandem_tls::identity::DEFAULT_URI_PREFIX,
        &["localhost", "127.0.0.1"],
        "chaos",
        1,
    )?;
    let suffix = std::process::id();
    anyhow::ensure!(
        (1..=REPLICAS_MAX).contains(&args.replicas),
        "--replicas must be 1 to {REPLICAS_MAX}"
    );
    let ha = match (
        args.ha,
        &args.vault_database_url,
        &args.orchestrator_database_url,
        &args.kill_primary_command,
    ) {
        (true, Some(_), Some(orchestrator_url), Some(kill_command)) => {
            anyhow::ensure!(
                (1..=PRIMARY_KILLS_MAX).contains(&args.primary_kills)
                    && args.payments >= 4 * (args.primary_kills + 1),
                "--primary-kills must be 1 to {PRIMARY_KILLS_MAX}, with at least 4 payments \
                 per share"
            );
            Some(ha::Plan {
                orchestrator_url: orchestrator_url.clone(),
                kill_command: kill_command.clone(),
                kills: args.primary_kills,
                failover_timeout: args.failover_timeout,
            })
        }
        _ => None,
    };
    let (vault_url, orchestrator_url) = match (&ha, &args.vault_database_url) {
        (Some(plan), Some(vault_url)) => (vault_url.clone(), plan.orchestrator_url.clone()),
        _ => (
            crate::dev::ensure_fresh_database(
                &args.database_url,
                &format!("tandem_test_chaos_vault_{suffix}"),
            )
            .await?,
            crate::dev::ensure_fresh_database(
                &args.database_url,
                &format!("tandem_test_chaos_orchestrator_{suffix}"),
            )
            .await?,
        ),
    };
    // A charge whose processor never received its call is declined once it is this old.
    // The sandbox acquirer keeps its state in the vault's own database, so a failover stalls
    // it with the vault, which no real processor does: an authorization still queued at the
    // sandbox when a short wait ran out would be declined as never received, then approved.
    // The HA drill keeps the vault's default (30 s), the other runs a short one.
    let recovery_after_ms = if ha.is_some() { "30000" } else { "600" };
    let webhook_env = webhooks::orchestrator_env()?;
    let mut vaults = Vec::new();
    let mut orchestrators = Vec::new();
    let mut orchestrator_addresses = Vec::new();
    for replica in 0..args.replicas {
        let vault_address = free_address()?;
        let orchestrator_address = free_address()?;
        let mut vault = Server::vault(
            &vault_address,
            &certs,
            &vault_url,
            &dir.join("root.key"),
            dir.join(format!("vault-{replica}.log")),
            &[
                &VAULT_UNLIMITED[..],
                &[
                    ("TANDEM_VAULT__METRICS__ENABLED", "false"),
                    ("TANDEM_VAULT__CONNECTOR__TIMEOUT_MS", "300"),
                    (
                        "TANDEM_VAULT__CHARGES__RECOVERY_AFTER_MS",
                        recovery_after_ms,
                    ),
                    ("TANDEM_VAULT__CHARGES__RECOVERY_INTERVAL_MS", "200"),
                ],
            ]
            .concat(),
        )?;
        let mut orchestrator = Server::orchestrator(
            &orchestrator_address,
            &certs,
            &orchestrator_url,
            &vault_address,
            dir.join(format!("orchestrator-{replica}.log")),
            &[
                &ORCHESTRATOR_UNLIMITED[..],
                &[
                    ("TANDEM_ORCHESTRATOR__VAULT__TIMEOUT_MS", "1000"),
                    ("TANDEM_ORCHESTRATOR__PAYMENTS__LEASE_MS", "4000"),
                    ("TANDEM_ORCHESTRATOR__PAYMENTS__RECOVERY_INTERVAL_MS", "200"),
                ],
                &webhook_env
                    .iter()
                    .map(|(name, value)| (*name, value.as_str()))
                    .collect::<Vec<_>>(),
            ]
            .concat(),
        )?;
        // One at a time: the first of each migrates its database.
        vault.start()?;
        vault.wait_ready(&certs).await?;
        orchestrator.start()?;
        orchestrator.wait_ready(&certs).await?;
        vaults.push(Arc::new(Mutex::new(vault)));
        orchestrators.push(Arc::new(Mutex::new(orchestrator)));
        orchestrator_addresses.push(orchestrator_address);
    }
    let vault_address = vaults[0].lock().await.address.clone();
    let orchestrator_address = orchestrator_addresses[0].clone();
    // The processes as started: the HA drill checks at the end that they are the same.
    let mut started = Vec::new();
    for server in orchestrators.iter().chain(&vaults) {
        started.push(server.lock().await.pid());
    }
    let watch = webhooks::Watch::start(&orchestrator_address, &certs).await?;

    let groups = seed_groups(&vault_address, &orchestrator_address, &certs).await?;

    // The payments, driven by `concurrency` workers; each request is retried with its own
    // request id until the orchestrator answers (it may be down or restarting).
    let next = Arc::new(AtomicUsize::new(0));
    let created: Arc<Mutex<Vec<(String, bool)>>> = Arc::default();
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let writes = Arc::new(ha::Writes::default());
    let done_creating = Arc::new(AtomicBool::new(false));
    let kills = Arc::new(AtomicU32::new(0));
    let mut workers = Vec::new();
    for worker in 0..args.concurrency {
        let next = next.clone();
        let created = created.clone();
        let acknowledged = acknowledged.clone();
        let writes = writes.clone();
        let ha = ha.clone();
        let groups = groups.clone();
        let certs = certs.clone();
        let addresses = orchestrator_addresses.clone();
        let total = args.payments;
        let mut draws = Draws(seed ^ (worker as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        workers.push(tokio::spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::SeqCst);
                if index >= total {
                    return Ok::<(), anyhow::Error>(());
                }
                // In the HA drill, payments well after a kill's moment wait for it, so that
                // some are always sent after it.
                if let Some(plan) = &ha {
                    loop {
                        match writes.may_send(plan, index, total) {
                            Some(true) => break,
                            Some(false) => tokio::time::sleep(Duration::from_millis(20)).await,
                            // The kills failed: their task reports why.
                            None => return Ok(()),
                        }
                    }
                }
                let group = &groups[draws.below(groups.len() as u64) as usize];
                let amount = 100 + draws.below(40_000) as i64;
                let request = pb::CreatePaymentRequest {
                    request_id: format!("chaos-{seed}-{index}"),
                    invoice: Some(pb::Invoice {
                        id: format!("CHAOS-{index}"),
                        amount: Some(usd(amount)),
                        description: "chaos".into(),
                        cost_center: String::new(),
                        lines: Vec::new(),
                    }),
                    card_group_id: group.0.clone(),
                    policy_override: None,
                    wait: false,
                    wait_timeout_ms: 0,
                    note: String::new(),
                };
                let deadline = Instant::now() + Duration::from_secs(120);
                // Spread across the orchestrators; a retry may go to another one.
                let mut replica = index;
                writes.creating.fetch_add(1, Ordering::SeqCst);
                loop {
                    let address = &addresses[replica % addresses.len()];
                    replica += 1;
                    let sent = Instant::now();
                    let answer = match connect(address, &certs, Role::Payer).await {
                        Ok(channel) => PaymentServiceClient::new(channel)
                            .create_payment(request.clone())
                            .await
                            .map_err(|s| s.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    match answer {
                        Ok(response) => {
                            writes.acknowledged(sent);
                            let id = response.into_inner().payment.map(|p| p.id);
                            created
                                .lock()
                                .await
                                .push((id.context("no payment")?, group.1));
                            acknowledged.fetch_add(1, Ordering::SeqCst);
                            writes.creating.fetch_sub(1, Ordering::SeqCst);
                            break;
                        }
                        Err(error) if Instant::now() > deadline => {
                            bail!("payment {index} not accepted within 120 s: {error}")
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            }
        }));
    }

    // The HA drill kills the Postgres primary instead, at its moments, and no server.
    let primary_kills = ha.clone().map(|plan| {
        let acknowledged = acknowledged.clone();
        let writes = writes.clone();
        let certs = certs.clone();
        let orchestrator_address = orchestrator_address.clone();
        let vault_address = vault_address.clone();
        let total = args.payments;
        tokio::spawn(async move {
            ha::run_kills(
                &plan,
                total,
                &acknowledged,
                &writes,
                &orchestrator_address,
                &vault_address,
                &certs,
            )
            .await
        })
    });
    // The killer: every 150-650 ms, kill -9 an orchestrator (three times in four) or a vault,
    // any of the replicas, and start it again after a moment.
    let killer = ha.is_none().then(|| {
        let vaults = vaults.clone();
        let orchestrators = orchestrators.clone();
        let done = done_creating.clone();
        let kills = kills.clone();
        let certs = certs.clone();
        let kills_min = args.kills_min;
        let mut draws = Draws(seed.rotate_left(17) | 1);
        tokio::spawn(async move {
            loop {
                if done.load(Ordering::SeqCst) && kills.load(Ordering::SeqCst) >= kills_min {
                    return Ok::<(), anyhow::Error>(());
                }
                tokio::time::sleep(Duration::from_millis(150 + draws.below(500))).await;
                let kind = if draws.below(4) == 0 {
                    &vaults
                } else {
                    &orchestrators
                };
                let server = &kind[draws.below(kind.len() as u64) as usize];
                let mut server = server.lock().await;
                server.kill();
                kills.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50 + draws.below(250))).await;
                server.start()?;
                server.wait_ready(&certs).await?;
            }
        })
    });
    for worker in workers {
        worker.await??;
    }
    done_creating.store(true, Ordering::SeqCst);
    if let Some(killer) = killer {
        killer.await??;
    }
    let primary_kills = match primary_kills {
        Some(task) => task.await??,
        None => Vec::new(),
    };

    // Let everything settle, then verify.
    let created = created.lock().await.clone();
    let reader =
        PaymentServiceClient::new(connect(&orchestrator_address, &certs, Role::Reader).await?);
    let payments = settle(reader, &created, args.settle_timeout).await?;
    let report = verify(
        &payments,
        &vault_address,
        &orchestrator_address,
        &certs,
        &orchestrator_url,
    )
    .await?;
    let mut report = report;
    let delivered = watch
        .check(&orchestrator_address, &certs, Duration::from_secs(120))
        .await?;
    report.violations.extend(delivered.violations);
    let drill = match &ha {
        Some(_) => {
            let outcome = ha::check(
                &primary_kills,
                &writes,
                &created,
                &orchestrator_address,
                &vault_address,
                &certs,
            )
            .await?;
            report.violations.extend(outcome.violations.iter().cloned());
            Some(outcome)
        }
        None => None,
    };
    // Every server is still the process that started (the HA drill never restarts one), and
    // each logged that its pool moved to the new primary, once per kill.
    let mut restarted = Vec::new();
    let mut moves = Vec::new();
    for (server, pid) in orchestrators.iter().chain(&vaults).zip(&started) {
        let mut server = server.lock().await;
        if !server.running() || server.pid() != *pid {
            restarted.push(server.name);
        }
        let log = std::fs::read_to_string(server.log()).unwrap_or_default();
        moves.push((server.name, log.matches(ha::MOVED_LOG_LINE).count()));
    }
    for server in orchestrators.iter().chain(&vaults) {
        server.lock().await.kill();
    }
    if let Some(outcome) = &drill {
        for name in &restarted {
            report.violations.push(format!(
                "the {name} is not the process that started (it exited or was restarted)"
            ));
        }
        for (name, count) in &moves {
            if *count != primary_kills.len() {
                report.violations.push(format!(
                    "the {name} logged {count} moves of its pool to a new primary, not {}",
                    primary_kills.len()
                ));
            }
        }
        println!(
            "ha drill: {} settlement records reconciled, {} lost captures, {} events delivered \
             by webhook ({} duplicates); {}",
            report.reconciled,
            report.lost_captures,
            delivered.events,
            delivered.duplicates,
            outcome.compared,
        );
        let (kill_count, in_flight) = match outcome.in_flight.as_slice() {
            [one] => (String::new(), format!("{one} in flight at the kill")),
            [first @ .., last] => (
                format!("{} primary kills, slowest ", primary_kills.len()),
                format!(
                    "{} and {last} in flight at the kills",
                    first
                        .iter()
                        .map(usize::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
            [] => (String::new(), "no kill".to_owned()),
        };
        println!(
            "ha drill: {} payments, {kill_count}failover in {:.1} s (writes resumed after {:.1} s), \
             {in_flight}, {} lost, {} double charges, {} orphan holds, ledger check {}, audit \
             chain {}, services {}",
            payments.len(),
            outcome.failover.as_secs_f64(),
            outcome.resumed.as_secs_f64(),
            outcome.lost,
            report.double_charges,
            report.orphan_holds,
            if report.ledger_violations == 0 {
                "ok"
            } else {
                "failed"
            },
            report.audit_chain,
            if restarted.is_empty() {
                "not restarted"
            } else {
                "restarted"
            },
        );
        return finish(&report, seed, &dir, None).await;
    }
    let replicas = if args.replicas > 1 {
        format!(" across {} replicas of each server", args.replicas)
    } else {
        String::new()
    };
    println!(
        "chaos: {} payments, {} kills{replicas}, {} double charges, {} lost captures, {} orphan \
         holds, {} settlement records reconciled, {} events delivered by webhook ({} \
         duplicates), audit chain {}",
        payments.len(),
        kills.load(Ordering::SeqCst),
        report.double_charges,
        report.lost_captures,
        report.orphan_holds,
        report.reconciled,
        delivered.events,
        delivered.duplicates,
        report.audit_chain,
    );
    finish(&report, seed, &dir, Some((&args.database_url, suffix))).await
}

/// Ends a run: on success removes its directory and the databases it made (on the server of
/// `made`, with the run's suffix), otherwise lists the violations and fails.
async fn finish(
    report: &Report,
    seed: u64,
    dir: &Path,
    made: Option<(&str, u32)>,
) -> anyhow::Result<()> {
    if report.violations.is_empty() {
        let _ = std::fs::remove_dir_all(dir);
        if let Some((server_url, suffix)) = made {
            for database in ["vault", "orchestrator"] {
                crate::dev::drop_database(
                    server_url,
                    &format!("tandem_test_chaos_{database}_{suffix}"),
                )
                .await;
            }
        }
        Ok(())
    } else {
        for violation in &report.violations {
            eprintln!("chaos: violation: {violation}");
        }
        bail!(
            "{} violations (seed {seed}; logs in {})",
            report.violations.len(),
            dir.display()
        )
    }
}

/// Card groups over the sandbox's test cards, one per policy; the bool says ALL_OR_NOTHING.
async fn seed_groups(
    vault: &str,
    orchestrator: &str,
    certs: &Path,
) -> anyhow::Result<Vec<(String, bool)>> {
    let mut tokens = TokenServiceClient::new(connect(vault, certs, Role::Tokenizer).await?);
    let mut tokenized = Vec::new();
    for pan in [
        "4242424242424242",
        "5555555555554444",
        "378282246310005",
        "4000000000009995",
        "4100000000000019",
        "4000009900000012",
        "4000009900000046",
        "4000009900000038",
        "4000056655665556",
        // A second token of the Mastercard, held in euros: its legs are converted.
        "5555555555554444",
    ] {
        let card = tokens
            .tokenize(vault_pb::TokenizeRequest {
                request_id: uuid::Uuid::new_v4().to_string(),
                pan: pan.to_owned(),
                expiry_month: 12,
                expiry_year: 2030,
                holder_name: "Chaos Monkey".into(),
                reuse_existing: false,
                ttl_seconds: 0,
            })
            .await?
            .into_inner()
            .card
            .context("no card")?;
        tokenized.push(card.token);
    }
    let [
        visa,
        mastercard,
        amex,
        insufficient,
        blocked,
        limited,
        flaky,
        timeout,
        slow,
        euro,
    ]: [String; 10] = tokenized
        .try_into()
        .map_err(|_| anyhow::anyhow!("ten cards"))?;
    // Faults injected at run time: latency on one card; transient failures come from the
    // fail-first card and timeouts after authorization from the timeout card.
    let mut sandbox = SandboxServiceClient::new(connect(vault, certs, Role::Admin).await?);
    sandbox
        .configure_sandbox_card(vault_pb::ConfigureSandboxCardRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            token: slow.clone(),
            config: Some(vault_pb::SandboxCardConfig {
                latency_ms: 120,
                ..Default::default()
            }),
        })
        .await?;
    let treasury_channel = connect(orchestrator, certs, Role::Treasury).await?;
    // The euro card's legs convert at this rate, fixed by each payment when it is created.
    let rate_id = uuid::Uuid::new_v4().to_string();
    crate::fx::set_rate(
        treasury_channel.clone(),
        &rate_id,
        "USD",
        "EUR",
        crate::dev::DEMO_USD_EUR,
        None,
    )
    .await?;
    let mut treasury = CardGroupServiceClient::new(treasury_channel);
    let member = |token: &str, label: &str, priority: i32| pb::CardGroupMember {
        token: token.to_owned(),
        label: label.to_owned(),
        currency_code: "USD".into(),
        priority,
        state: pb::CardGroupMemberState::Active as i32,
        ..Default::default()
    };
    let weights = |pairs: &[(&str, i32)]| {
        pairs
            .iter()
            .map(|(token, basis_points)| pb::MemberWeight {
                token: (*token).to_owned(),
                basis_points: *basis_points,
            })
            .collect()
    };
    let fallback = Some(pb::FallbackPolicy {
        enabled: true,
        attempts_max: 0,
    });
    let plans: Vec<(Vec<pb::CardGroupMember>, pb::AllocationPolicy)> = vec![
        (
            vec![
                member(&visa, "A", 1),
                pb::CardGroupMember {
                    currency_code: "EUR".into(),
                    ..member(&euro, "E", 2)
                },
                member(&amex, "C", 3),
            ],
            pb::AllocationPolicy {
                strategy: pb::AllocationStrategy::Weighted as i32,
                weights: weights(&[(&visa, 6000), (&euro, 2000), (&amex, 2000)]),
                fallback,
                ..Default::default()
            },
        ),
        (
            vec![
                member(&insufficient, "D", 1),
                member(&flaky, "F", 2),
                member(&visa, "A", 3),
            ],
            pb::AllocationPolicy {
                strategy: pb::AllocationStrategy::Sequential as i32,
                fallback,
                ..Default::default()
            },
        ),
        (
            vec![
                member(&blocked, "X", 1),
                member(&timeout, "T", 2),
                member(&slow, "S", 3),
                member(&mastercard, "B", 4),
            ],
            pb::AllocationPolicy {
                strategy: pb::AllocationStrategy::Parallel as i32,
                fallback,
                ..Default::default()
            },
        ),
        (
            vec![member(&limited, "L", 1), member(&insufficient, "D", 2)],
            pb::AllocationPolicy {
                strategy: pb::AllocationStrategy::Sequential as i32,
                fallback,
                completion: pb::Completion::AllowPartial as i32,
                ..Default::default()
            },
        ),
        (
            vec![member(&limited, "L", 1), member(&amex, "C", 2)],
            pb::AllocationPolicy {
                strategy: pb::AllocationStrategy::Sequential as i32,
                fallback: None,
                ..Default::default()
            },
        ),
    ];
    let mut groups = Vec::new();
    for (i, (members, policy)) in plans.into_iter().enumerate() {
        let all_or_nothing = policy.completion != pb::Completion::AllowPartial as i32;
        let group = treasury
            .create_card_group(pb::CreateCardGroupRequest {
                request_id: format!("chaos-group-{i}-{}", uuid::Uuid::new_v4()),
                card_group: Some(pb::CardGroup {
                    billing_account_id: format!("chaos-{i}"),
                    display_name: format!("chaos {i}"),
                    default_currency_code: "USD".into(),
                    members,
                    default_policy: Some(policy),
                    ..Default::default()
                }),
            })
            .await?
            .into_inner()
            .card_group
            .context("no group")?;
        groups.push((group.id, all_or_nothing));
    }
    Ok(groups)
}

/// Whether a read that failed with `status` is worth asking again: UNAVAILABLE while a server
/// finds its database again (after a failover), CANCELLED or DEADLINE_EXCEEDED when it timed
/// out while a busy server catches up.
fn read_again(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::DeadlineExceeded
    )
}

/// Waits until every payment is settled (terminal, no refund pending); returns them with
/// whether their policy is ALL_OR_NOTHING.
async fn settle(
    mut reader: PaymentServiceClient<Channel>,
    created: &[(String, bool)],
    timeout: Duration,
) -> anyhow::Result<Vec<(pb::Payment, bool)>> {
    let deadline = Instant::now() + timeout;
    let mut settled = Vec::with_capacity(created.len());
    for (id, all_or_nothing) in created {
        loop {
            let answer = reader
                .get_payment(pb::GetPaymentRequest {
                    payment_id: id.clone(),
                })
                .await;
            let payment = match answer {
                Err(status) if read_again(&status) && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                answer => answer?.into_inner().payment.context("no payment")?,
            };
            let terminal = matches!(
                pb::PaymentState::try_from(payment.state),
                Ok(pb::PaymentState::Succeeded
                    | pb::PaymentState::PartiallyPaid
                    | pb::PaymentState::Failed)
            );
            if terminal {
                settled.push((payment, *all_or_nothing));
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "payment {id} not terminal after the settle timeout: {:?} {}",
                    pb::PaymentState::try_from(payment.state),
                    payment.summary
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(settled)
}

#[derive(Debug, Default)]
struct Report {
    double_charges: usize,
    lost_captures: usize,
    orphan_holds: usize,
    /// Violations of the ledger's invariants.
    ledger_violations: usize,
    reconciled: i64,
    /// What the audit chain's verification found: `intact over N events` or where it breaks.
    audit_chain: String,
    violations: Vec<String>,
}

/// Checks the end state against the sandbox and the ledger.
async fn verify(
    payments: &[(pb::Payment, bool)],
    vault: &str,
    orchestrator: &str,
    certs: &Path,
    orchestrator_url: &str,
) -> anyhow::Result<Report> {
    let mut report = Report::default();
    // The vault's audit log is one hash chain however many vault processes appended to it,
    // and whichever of them were killed mid-write.
    let audit = KeyAdminServiceClient::new(connect(vault, certs, Role::Auditor).await?)
        .verify_audit_log(vault_pb::VerifyAuditLogRequest::default())
        .await?
        .into_inner();
    report.audit_chain = if audit.intact {
        format!("intact over {} events", audit.events_checked)
    } else {
        let broken = format!("broken at event {}", audit.first_broken_sequence);
        report
            .violations
            .push(format!("the audit chain is {broken}"));
        broken
    };
    let mut sandbox = SandboxServiceClient::new(connect(vault, certs, Role::Admin).await?);
    // Per card: the attempts the payments recorded as approved, and their captures. (A
    // decline may come from the vault without reaching the sandbox, for example while its
    // circuit breaker is open, so approvals are what must match one for one.)
    let mut answered: HashMap<String, usize> = HashMap::new();
    let mut captured: HashMap<String, (usize, i64)> = HashMap::new();
    for (payment, all_or_nothing) in payments {
        for attempt in &payment.attempts {
            let reached = matches!(
                pb::AttemptOutcome::try_from(attempt.outcome),
                Ok(pb::AttemptOutcome::Approved | pb::AttemptOutcome::PartiallyApproved)
            );
            if reached {
                *answered.entry(attempt.token.clone()).or_default() += 1;
            }
        }
        for leg in &payment.legs {
            if leg.state == pb::LegState::Captured as i32 {
                let entry = captured.entry(leg.token.clone()).or_default();
                entry.0 += 1;
                entry.1 += leg.captured.as_ref().map_or(0, |m| m.minor_units);
            }
        }
        let amount = payment
            .invoice
            .as_ref()
            .and_then(|i| i.amount.as_ref())
            .map_or(0, |m| m.minor_units);
        let paid = payment.captured.as_ref().map_or(0, |m| m.minor_units);
        if *all_or_nothing && !(paid == 0 || paid == amount) {
            report.violations.push(format!(
                "{} is ALL_OR_NOTHING but captured {paid} of {amount}",
                payment.id
            ));
        }
    }
    // What the sandbox processed, per card.
    let mut tokens: Vec<String> = answered.keys().chain(captured.keys()).cloned().collect();
    tokens.sort();
    tokens.dedup();
    let mut sandbox_captured_total = 0;
    for token in &tokens {
        let mut operations = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = sandbox
                .list_sandbox_operations(vault_pb::ListSandboxOperationsRequest {
                    page_size: 100,
                    page_token,
                    token: token.clone(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            operations.extend(page.operations);
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        let fresh = |kind: vault_pb::SandboxOperationType| {
            operations
                .iter()
                .filter(move |o| {
                    o.r#type == kind as i32
                        && o.outcome != vault_pb::SandboxOperationOutcome::Replayed as i32
                })
                .collect::<Vec<_>>()
        };
        let authorizations = fresh(vault_pb::SandboxOperationType::Authorize)
            .into_iter()
            .filter(|o| {
                matches!(
                    vault_pb::SandboxOperationOutcome::try_from(o.outcome),
                    Ok(vault_pb::SandboxOperationOutcome::Approved
                        | vault_pb::SandboxOperationOutcome::PartiallyApproved)
                )
            })
            .count();
        let expected = answered.get(token).copied().unwrap_or(0);
        if authorizations > expected {
            report.double_charges += authorizations - expected;
            report.violations.push(format!(
                "card {token}: the sandbox approved {authorizations} authorizations for \
                 {expected} approved attempts"
            ));
        } else if authorizations < expected {
            report.violations.push(format!(
                "card {token}: {expected} approved attempts but {authorizations} sandbox \
                 approvals"
            ));
        }
        let captures = fresh(vault_pb::SandboxOperationType::Capture);
        let capture_amount: i64 = captures
            .iter()
            .map(|o| o.approved.as_ref().map_or(0, |m| m.minor_units))
            .sum();
        sandbox_captured_total += capture_amount;
        let (legs, leg_amount) = captured.get(token).copied().unwrap_or_default();
        if captures.len() != legs || capture_amount != leg_amount {
            report.lost_captures += legs.abs_diff(captures.len()).max(1);
            report.violations.push(format!(
                "card {token}: {} sandbox captures of {capture_amount} vs {legs} captured legs \
                 of {leg_amount}",
                captures.len()
            ));
        }
        let held = sandbox
            .get_sandbox_card(vault_pb::GetSandboxCardRequest {
                token: token.clone(),
            })
            .await?
            .into_inner()
            .card
            .and_then(|c| c.held)
            .map_or(0, |m| m.minor_units);
        if held != 0 {
            report.orphan_holds += 1;
            report
                .violations
                .push(format!("card {token}: {held} still held at the sandbox"));
        }
    }
    // The ledger: posts per card match the captures, nothing pending, invariants hold, and the
    // settlement report matches it.
    // Through the services' own pool, which takes the HA drill's multi-host URL.
    let pool = tandem_runtime::settings::DatabaseSettings {
        url: tandem_runtime::settings::SecretString::new(orchestrator_url),
        connections_max: 4,
        ..tandem_runtime::settings::DatabaseSettings::local("unused")
    }
    .connect()
    .await?;
    let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "SELECT card_token, debits_pending, debits_posted, \
         (SELECT count(*) FROM ledger_transfers t WHERE t.kind = 'post_pending' \
          AND t.debit_account_id = a.id) \
         FROM ledger_accounts a WHERE code = 'funding_source'",
    )
    .fetch_all(&pool)
    .await?;
    let mut ledger_posted_total = 0;
    for (token, pending, posted, posts) in rows {
        ledger_posted_total += posted;
        if pending != 0 {
            report.orphan_holds += 1;
            report
                .violations
                .push(format!("card {token}: {pending} pending in the ledger"));
        }
        let (legs, amount) = captured.get(&token).copied().unwrap_or_default();
        if posts as usize != legs || posted != amount {
            report.lost_captures += 1;
            report.violations.push(format!(
                "card {token}: {posts} ledger posts of {posted} vs {legs} captured legs of {amount}"
            ));
        }
    }
    let invariants =
        tandem_ledger::invariants::check(&pool, time::OffsetDateTime::now_utc()).await?;
    for journal in &invariants.journals {
        println!("chaos: {journal}");
    }
    report.ledger_violations = invariants.violations.len();
    for violation in invariants.violations {
        report.violations.push(format!("ledger: {violation}"));
    }
    pool.close().await;
    let mut settled_total = 0;
    let mut days = std::collections::BTreeSet::new();
    let mut page_token = String::new();
    loop {
        let page = sandbox
            .list_settlement_records(vault_pb::ListSettlementRecordsRequest {
                page_size: 100,
                page_token,
                ..Default::default()
            })
            .await?
            .into_inner();
        for record in &page.records {
            days.insert(record.settlement_date.clone());
            let amount = record.amount.as_ref().map_or(0, |m| m.minor_units);
            settled_total += if record.r#type == vault_pb::SettlementRecordType::Refund as i32 {
                -amount
            } else {
                amount
            };
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    if settled_total != ledger_posted_total || sandbox_captured_total != ledger_posted_total {
        report.violations.push(format!(
            "settlement {settled_total} and sandbox captures {sandbox_captured_total} vs ledger \
             posts {ledger_posted_total}"
        ));
    }
    // The final word is reconciliation's: every record of every day matched, nothing else.
    let mut recon =
        ReconciliationServiceClient::new(connect(orchestrator, certs, Role::Treasury).await?);
    for day in days {
        let request = pb::RunReconciliationRequest {
            request_id: format!("chaos-final-check-{day}-{}", uuid::Uuid::new_v4()),
            processor: "sandbox".to_owned(),
            settlement_date: day.clone(),
        };
        // The orchestrator's connection to a vault killed last may need a moment to come
        // back: UNAVAILABLE is retried, with the same request id.
        let mut tries = 0;
        let run = loop {
            match recon.run_reconciliation(request.clone()).await {
                Err(status) if status.code() == tonic::Code::Unavailable && tries < 50 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                answer => break answer.with_context(|| format!("reconcile {day}"))?,
            }
        }
        .into_inner()
        .run
        .context("a run")?;
        let found = run.missing_in_ledger
            + run.missing_at_processor
            + run.amount_mismatch
            + run.currency_mismatch
            + run.duplicate_settlement
            + run.pending;
        if found != 0 || run.matched != run.records {
            report.violations.push(format!(
                "reconciliation of {day} ({}): {} records, {} matched, {found} discrepancies",
                run.id, run.records, run.matched
            ));
        }
        report.reconciled += run.matched;
    }
    Ok(report)
}
