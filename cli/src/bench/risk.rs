//! `tandemctl bench risk`: what a payment's risk assessment adds to its latency at half load
//! (DESIGN section 12).
//!
//! Card groups of sandbox cards in billing accounts of two kinds: half under a policy with
//! every rule kind over every scope and window (thresholds no payment crosses, so every
//! payment is assessed in full: its features read, every rule evaluated, the decision
//! recorded, and it goes on), half under a policy of no rules (no feature read, nothing
//! assessed; the features are still written, as for every payment, so the difference is the
//! assessment alone). Payments are sent open loop at `--rate` (by default half of what a closed
//! loop of `--concurrency` clients sustains in a probe of `--duration`), alternating between the
//! two kinds within each of `--windows` windows, so that both meet the same moments of a noisy
//! machine; each kind's latencies over every window give its percentiles, and their difference
//! is what the assessment adds.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context as _;
use tandem_proto::tandem::orchestrator::v1 as orchestrator_pb;
use tandem_proto::tandem::orchestrator::v1::payment_service_client::PaymentServiceClient;
use tandem_proto::tandem::orchestrator::v1::risk_service_client::RiskServiceClient;
use tandem_proto::tandem::r#type::v1::Money;
use tandem_tls::identity::Role;

use super::flood::payment;
use super::measure::{Report, Window, run_load};
use super::pay::{PAYMENT_CALL_TIMEOUT, SplitStrategy, create_groups};
use super::stack::{CALL_TIMEOUT, Stack, channels};
use super::tokenize::tokenize_cards;
use super::{LoadArgs, check_shape};
use crate::dev;

/// Most card groups of each kind.
const GROUPS_MAX: usize = 512;
/// Most measured windows.
const WINDOWS_MAX: usize = 20;
/// The p99 a risk assessment may add at half load (the target).
const ADDED_P99_MS_MAX: f64 = 2.0;

/// Arguments of `tandemctl bench risk`.
#[derive(Debug, clap::Args)]
pub struct RiskArgs {
    /// Cards in each group, 1-32 (paid in parallel).
    #[arg(long, default_value_t = 3)]
    cards: usize,
    /// Card groups of each kind, each in its own billing account.
    #[arg(long, default_value_t = 32)]
    groups: usize,
    /// Measured windows, each with payments of both kinds.
    #[arg(long, default_value_t = 3)]
    windows: usize,
    /// `--rate`: payments per second (0: half of what the probe sustains); `--concurrency`:
    /// the probe's clients and the most payments in flight; `--duration` and `--warmup`: of
    /// the probe and of every window.
    #[command(flatten)]
    load: LoadArgs,
}

/// A policy with every rule kind, over every scope and window, that no bench payment fires:
/// assessed in full, it decides ALLOW.
fn every_rule_kind() -> orchestrator_pb::RiskPolicy {
    use orchestrator_pb::risk_rule::Kind;
    use orchestrator_pb::{RiskAction, RiskScope};
    let window = |minutes: i64| {
        Some(prost_types::Duration {
            seconds: minutes * 60,
            nanos: 0,
        })
    };
    let mut rules = Vec::new();
    for (scope, scope_name) in [
        (RiskScope::Card, "card"),
        (RiskScope::CardGroup, "group"),
        (RiskScope::BillingAccount, "account"),
    ] {
        for (minutes, window_name) in [(10, "10m"), (60, "1h"), (24 * 60, "24h")] {
            rules.push(orchestrator_pb::RiskRule {
                name: format!("{scope_name}_payments_{window_name}"),
                action: RiskAction::Review as i32,
                score: 10,
                kind: Some(Kind::Velocity(orchestrator_pb::VelocityRule {
                    scope: scope as i32,
                    window: window(minutes),
                    count_max: Some(10_000_000),
                    sum_max: None,
                })),
            });
            rules.push(orchestrator_pb::RiskRule {
                name: format!("{scope_name}_amount_{window_name}"),
                action: RiskAction::Review as i32,
                score: 10,
                kind: Some(Kind::Velocity(orchestrator_pb::VelocityRule {
                    scope: scope as i32,
                    window: window(minutes),
                    count_max: None,
                    sum_max: Some(Money {
                        currency_code: "USD".into(),
                        minor_units: 1_000_000_000_000,
                    }),
                })),
            });
            rules.push(orchestrator_pb::RiskRule {
                name: format!("{scope_name}_declines_{window_name}"),
                action: RiskAction::Review as i32,
                score: 10,
                kind: Some(Kind::DeclineBurst(orchestrator_pb::DeclineBurstRule {
                    scope: scope as i32,
                    window: window(minutes),
                    count_max: 1_000_000,
                })),
            });
        }
    }
    rules.push(orchestrator_pb::RiskRule {
        name: "amount_over_median".into(),
        action: RiskAction::Review as i32,
        score: 10,
        kind: Some(Kind::AmountOverMedian(
            orchestrator_pb::AmountOverMedianRule {
                multiple: "1000".into(),
                history_min: 1,
            },
        )),
    });
    // Every payment but each card's first is scored, not held: ALLOW.
    rules.push(orchestrator_pb::RiskRule {
        name: "first_card_use".into(),
        action: RiskAction::Allow as i32,
        score: 1,
        kind: Some(Kind::FirstCardUse(orchestrator_pb::FirstCardUseRule {})),
    });
    // Every day around the clock: always inside.
    rules.push(orchestrator_pb::RiskRule {
        name: "outside_business_hours".into(),
        action: RiskAction::Review as i32,
        score: 10,
        kind: Some(Kind::OutsideBusinessHours(
            orchestrator_pb::OutsideBusinessHoursRule {},
        )),
    });
    orchestrator_pb::RiskPolicy {
        rules,
        business_hours: Some(orchestrator_pb::BusinessHours {
            time_zone: "Europe/Berlin".into(),
            start_hour: 0,
            end_hour: 24,
            weekdays: (1..=7).collect(),
        }),
        ..Default::default()
    }
}

/// Pays at half load from accounts assessed in full and accounts assessed not at all, in
/// alternating windows, and prints what the assessment adds.
pub(super) async fn run(args: RiskArgs) -> anyhow::Result<()> {
    let load = &args.load;
    check_shape(&load.shape)?;
    anyhow::ensure!((1..=32).contains(&args.cards), "--cards must be 1 to 32");
    anyhow::ensure!(
        (1..=GROUPS_MAX).contains(&args.groups),
        "--groups must be 1 to {GROUPS_MAX}"
    );
    anyhow::ensure!(
        (1..=WINDOWS_MAX).contains(&args.windows),
        "--windows must be 1 to {WINDOWS_MAX}"
    );
    dev::ensure_certificates(&load.certs)?;
    let mut stack = Stack::new()?;
    let vault_uri = stack.vault(load).await?;
    let orchestrator_uri = stack.orchestrator(None, load).await?;
    let run_id = super::run_id();
    let tokens = tokenize_cards(
        &vault_uri,
        &load.certs,
        &run_id,
        args.cards * args.groups * 2,
    )
    .await?;
    let group_ids = create_groups(
        &orchestrator_uri,
        &load.certs,
        &run_id,
        tokens.chunks(args.cards),
        SplitStrategy::Parallel,
        0,
    )
    .await?;
    // Groups of even index (accounts bench-0, bench-2, ...) are assessed in full, the others not
    // at all: the two kinds' cards are tokenized, and their groups made, interleaved.
    let mut treasury = RiskServiceClient::new(
        channels(
            &orchestrator_uri,
            &load.certs,
            Role::Treasury,
            1,
            CALL_TIMEOUT,
        )
        .await?
        .remove(0),
    );
    for index in 0..group_ids.len() {
        let policy = if index % 2 == 0 {
            every_rule_kind()
        } else {
            orchestrator_pb::RiskPolicy::default()
        };
        treasury
            .set_risk_policy(orchestrator_pb::SetRiskPolicyRequest {
                request_id: format!("bench-{run_id}-risk-{index}"),
                billing_account_id: format!("bench-{index}"),
                policy: Some(policy),
            })
            .await
            .map_err(crate::connect::failure)
            .context("setting the bench risk policies")?;
    }
    let assessed: Vec<String> = group_ids.iter().step_by(2).cloned().collect();
    let unassessed: Vec<String> = group_ids.iter().skip(1).step_by(2).cloned().collect();
    let clients: Arc<Vec<_>> = Arc::new(
        channels(
            &orchestrator_uri,
            &load.certs,
            Role::Payer,
            load.shape.concurrency,
            PAYMENT_CALL_TIMEOUT,
        )
        .await?
        .into_iter()
        .map(PaymentServiceClient::new)
        .collect(),
    );
    // Payments alternate between the two kinds of account within every window, so that both
    // meet the same moment of a noisy machine; each payment's latency is kept by its kind.
    let latencies = Arc::new(Mutex::new([Vec::new(), Vec::new()]));
    let failures = Arc::new(Mutex::new([0u64, 0u64]));
    let pay = |label: String| {
        let clients = clients.clone();
        let run_id = run_id.clone();
        let kinds = [assessed.clone(), unassessed.clone()];
        let latencies = latencies.clone();
        let failures = failures.clone();
        move |worker: usize, n: u64| {
            let mut client = clients[worker % clients.len()].clone();
            // Each worker alternates, starting with either kind.
            let kind = ((n + worker as u64) % 2) as usize;
            let groups = &kinds[kind];
            let request = payment(
                &groups[(worker + (n / 2) as usize) % groups.len()],
                format!("bench-{run_id}-{label}-{worker}-{n}"),
                true,
            );
            let latencies = latencies.clone();
            let failures = failures.clone();
            async move {
                let sent = Instant::now();
                let ok = matches!(
                    client.create_payment(request).await,
                    Ok(response) if response.get_ref().payment.as_ref().is_some_and(|p| {
                        p.state == i32::from(orchestrator_pb::PaymentState::Succeeded)
                    })
                );
                let done = Instant::now();
                if ok {
                    lock(&latencies)[kind].push((sent, done));
                } else {
                    lock(&failures)[kind] += 1;
                }
                ok
            }
        }
    };

    // Half load: half of what a closed loop sustains.
    let mut shape = load.shape.clone();
    let window = Window::after(shape.warmup, shape.duration);
    let rate = if shape.rate > 0 {
        shape.rate
    } else {
        let probe = run_load(&shape, window, pay("probe".into())).await?;
        anyhow::ensure!(
            probe.ok > 0,
            "the probe paid nothing: see the servers' logs"
        );
        println!(
            "probe (closed loop, {} clients): {probe}",
            shape.concurrency
        );
        ((probe.per_second / 2.0).round() as u32).max(1)
    };
    shape.rate = rate;
    // Only the measured windows count.
    let mut kept: [Vec<u64>; 2] = [Vec::new(), Vec::new()];
    let mut failed = [0u64; 2];
    for index in 0..args.windows {
        *lock(&latencies) = [Vec::new(), Vec::new()];
        *lock(&failures) = [0, 0];
        let window = Window::after(shape.warmup, shape.duration);
        let report = run_load(&shape, window, pay(format!("w{index}"))).await?;
        println!("  window {}: {report}", index + 1);
        let taken = std::mem::take(&mut *lock(&latencies));
        for (kind, timings) in taken.into_iter().enumerate() {
            kept[kind].extend(
                timings
                    .into_iter()
                    .filter(|(sent, done)| window.holds(*sent, *done))
                    .map(|(sent, done)| (done - sent).as_micros() as u64),
            );
        }
        let fails = std::mem::take(&mut *lock(&failures));
        failed[0] += fails[0];
        failed[1] += fails[1];
    }
    stack.stop();
    println!(
        "risk ({} cards, parallel; {} accounts assessed under {} rules, {} under none, \
         payments alternating between them; open loop at {rate} payments/s, {} windows, {}):",
        args.cards,
        args.groups,
        every_rule_kind().rules.len(),
        args.groups,
        args.windows,
        load.shape,
    );
    let [mut full, mut none] = kept;
    full.sort_unstable();
    none.sort_unstable();
    let full = Report::new(&full, failed[0], shape.duration * args.windows as u32);
    let none = Report::new(&none, failed[1], shape.duration * args.windows as u32);
    println!("  without assessment: {none}");
    println!("  with assessment:    {full}");
    let ms = |us: u64| us as f64 / 1000.0;
    let added = ms(full.p99_us) - ms(none.p99_us);
    println!(
        "  assessment adds:    p50 {:+.2} ms  p90 {:+.2} ms  p99 {added:+.2} ms \
         (target: p99 under +{ADDED_P99_MS_MAX:.1} ms: {})",
        ms(full.p50_us) - ms(none.p50_us),
        ms(full.p90_us) - ms(none.p90_us),
        if added < ADDED_P99_MS_MAX {
            "met"
        } else {
            "NOT met"
        }
    );
    Ok(())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bench's policy holds every rule kind, and no rule a bench payment fires but the
    /// ALLOW first-use score.
    #[test]
    fn the_bench_policy_covers_every_rule_kind() {
        use orchestrator_pb::risk_rule::Kind;
        let policy = every_rule_kind();
        let kinds: std::collections::BTreeSet<&str> = policy
            .rules
            .iter()
            .map(|r| match r.kind.as_ref().expect("a kind") {
                Kind::Velocity(_) => "velocity",
                Kind::AmountOverMedian(_) => "amount_over_median",
                Kind::FirstCardUse(_) => "first_card_use",
                Kind::DeclineBurst(_) => "decline_burst",
                Kind::OutsideBusinessHours(_) => "outside_business_hours",
            })
            .collect();
        assert_eq!(kinds.len(), 5);
        let names: std::collections::BTreeSet<&str> =
            policy.rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names.len(), policy.rules.len(), "names are unique");
        assert!(policy.rules.len() <= 32, "within the policy's limit");
    }
}
