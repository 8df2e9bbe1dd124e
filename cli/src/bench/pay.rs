//! `tandemctl bench pay`: `CreatePayment(wait)` from card groups of sandbox cards, and the card
//! groups the payment benchmarks pay from.

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use tandem_proto::tandem::orchestrator::v1 as orchestrator_pb;
use tandem_proto::tandem::orchestrator::v1::card_group_service_client::CardGroupServiceClient;
use tandem_proto::tandem::orchestrator::v1::payment_service_client::PaymentServiceClient;
use tandem_proto::tandem::r#type::v1::Money;
use tandem_tls::identity::Role;

use super::measure::measure;
use super::stack::{CALL_TIMEOUT, Stack, channels};
use super::tokenize::tokenize_cards;
use super::{LoadArgs, baseline, check_shape};
use crate::dev;
use crate::dev::DEMO_USD_EUR;

/// How long the orchestrator may wait for a payment to finish before answering.
pub(super) const PAYMENT_WAIT_TIMEOUT_MS: i64 = 30_000;
/// How long one `CreatePayment` call may take: the wait plus time for the answer.
pub(super) const PAYMENT_CALL_TIMEOUT: Duration = Duration::from_secs(40);
/// Most cards in a card group (the orchestrator's limit).
const GROUP_CARDS_MAX: usize = 32;
/// Most card groups `bench pay` makes.
const GROUPS_MAX: usize = 1024;

/// Arguments of `tandemctl bench pay`.
#[derive(Debug, clap::Args)]
pub struct PayArgs {
    /// Cards in the group, 1-32: every payment has one leg per card.
    #[arg(long, default_value_t = 3)]
    cards: usize,
    /// How each payment is split over the cards.
    #[arg(long, value_enum, default_value = "weighted")]
    strategy: SplitStrategy,
    /// Card groups paid from, each with its own cards and billing account, as when many
    /// customers pay at once; client k pays from group k mod `groups`. One group puts every
    /// payment on the same few cards and ledger accounts (the hottest rows there are).
    #[arg(long, default_value_t = 1)]
    groups: usize,
    /// A running orchestrator to target (`https://host:port`); by default one is started as a
    /// child process on a fresh database. It must use the vault of `--vault`, where the cards
    /// are tokenized.
    #[arg(long, requires = "vault")]
    orchestrator: Option<String>,
    /// How many of each group's cards (the last ones) are held in euros: their legs are
    /// charged converted from the invoice's USD at a rate the bench sets, and booked through
    /// the FX clearing accounts.
    #[arg(long, default_value_t = 0)]
    converted: usize,
    #[command(flatten)]
    load: LoadArgs,
}

/// How `bench pay` splits each payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum SplitStrategy {
    /// WEIGHTED with equal basis points, legs authorized in priority order.
    Weighted,
    /// PARALLEL without weights (evenly), legs authorized at the same time.
    Parallel,
}

impl SplitStrategy {
    pub(super) fn name(self) -> &'static str {
        match self {
            SplitStrategy::Weighted => "weighted evenly",
            SplitStrategy::Parallel => "parallel",
        }
    }
}

/// Pays invoices from card groups through the orchestrator, waiting for each payment.
pub(super) async fn run(args: PayArgs) -> anyhow::Result<()> {
    let load = &args.load;
    check_shape(&load.shape)?;
    anyhow::ensure!(
        (1..=GROUP_CARDS_MAX).contains(&args.cards),
        "--cards must be 1 to {GROUP_CARDS_MAX}"
    );
    anyhow::ensure!(
        (1..=GROUPS_MAX).contains(&args.groups),
        "--groups must be 1 to {GROUPS_MAX}"
    );
    anyhow::ensure!(
        args.converted <= args.cards,
        "--converted must be at most --cards"
    );
    dev::ensure_certificates(&load.certs)?;
    let baseline = baseline(&load.shape).await?;
    let mut stack = Stack::new()?;
    let vault_uri = stack.vault(load).await?;
    let orchestrator_uri = stack
        .orchestrator(args.orchestrator.as_deref(), load)
        .await?;
    let run_id = super::run_id();
    let tokens = tokenize_cards(&vault_uri, &load.certs, &run_id, args.cards * args.groups).await?;

    if args.converted > 0 {
        let treasury = channels(
            &orchestrator_uri,
            &load.certs,
            Role::Treasury,
            1,
            CALL_TIMEOUT,
        )
        .await?
        .remove(0);
        let rate_id = format!("bench-{run_id}-rate");
        crate::fx::set_rate(treasury, &rate_id, "USD", "EUR", DEMO_USD_EUR, None).await?;
    }
    let group_ids = create_groups(
        &orchestrator_uri,
        &load.certs,
        &run_id,
        tokens.chunks(args.cards),
        args.strategy,
        args.converted,
    )
    .await?;

    let clients: Vec<_> = channels(
        &orchestrator_uri,
        &load.certs,
        Role::Payer,
        load.shape.concurrency,
        PAYMENT_CALL_TIMEOUT,
    )
    .await?
    .into_iter()
    .map(PaymentServiceClient::new)
    .collect();
    let clients = Arc::new(clients);
    let group_ids = Arc::new(group_ids);
    // The first failure, to say why payments failed.
    let first_error = Arc::new(OnceLock::<String>::new());
    let failed = first_error.clone();
    let measured = measure(&load.shape, &stack, "payments", move |worker, n| {
        let mut client = clients[worker % clients.len()].clone();
        let request = orchestrator_pb::CreatePaymentRequest {
            request_id: format!("bench-{run_id}-{worker}-{n}"),
            invoice: Some(orchestrator_pb::Invoice {
                id: format!("BENCH-{worker}-{n}"),
                // 10.00 to 10.99 USD: at least a cent per card.
                amount: Some(usd(1000 + (n % 100) as i64)),
                ..Default::default()
            }),
            card_group_id: group_ids[worker % group_ids.len()].clone(),
            policy_override: None,
            wait: true,
            wait_timeout_ms: PAYMENT_WAIT_TIMEOUT_MS,
            note: String::new(),
        };
        let failed = failed.clone();
        async move {
            let error = match client.create_payment(request).await {
                Ok(response) => match response.into_inner().payment {
                    Some(p) if p.state == i32::from(orchestrator_pb::PaymentState::Succeeded) => {
                        return true;
                    }
                    Some(p) => format!(
                        "payment {} ended {}: {}",
                        p.id,
                        crate::print::value_name(
                            p.state,
                            "PAYMENT_STATE_",
                            orchestrator_pb::PaymentState::as_str_name
                        ),
                        p.summary
                    ),
                    None => "no payment in the response".to_owned(),
                },
                Err(status) => format!("{:#}", crate::connect::failure(status)),
            };
            let _ = failed.set(error);
            false
        }
    })
    .await?;
    stack.stop();
    let converted = if args.converted > 0 {
        format!(", {} converted to EUR", args.converted)
    } else {
        String::new()
    };
    println!(
        "pay ({} cards{converted}, {}; one authorize + capture per card; {} card groups): {}",
        args.cards,
        args.strategy.name(),
        args.groups,
        load.shape
    );
    measured.print(baseline.as_ref());
    if let Some(error) = first_error.get() {
        println!("  first error: {error}");
    }
    Ok(())
}

/// One card group per chunk of `cards` (each [`bench_group`] of its tokens, the last
/// `converted` of them in euros), made as `treasury`; their ids, in order.
pub(super) async fn create_groups<'a>(
    orchestrator_uri: &str,
    certs: &Path,
    run_id: &str,
    cards: impl IntoIterator<Item = &'a [String]>,
    strategy: SplitStrategy,
    converted: usize,
) -> anyhow::Result<Vec<String>> {
    let mut treasury = CardGroupServiceClient::new(
        channels(orchestrator_uri, certs, Role::Treasury, 1, CALL_TIMEOUT)
            .await?
            .remove(0),
    );
    let mut group_ids = Vec::new();
    for (index, tokens) in cards.into_iter().enumerate() {
        let group = treasury
            .create_card_group(orchestrator_pb::CreateCardGroupRequest {
                request_id: format!("bench-{run_id}-group-{index}"),
                card_group: Some(bench_group(run_id, index, tokens, strategy, converted)),
            })
            .await
            .map_err(crate::connect::failure)
            .context("creating the bench card groups")?
            .into_inner()
            .card_group
            .context("no card group in the response")?;
        group_ids.push(group.id);
    }
    Ok(group_ids)
}

/// Card group `index` of `bench pay`: the cards of `tokens` (the last `converted` in euros),
/// without limits, split evenly by `strategy`, all or nothing, on a billing account of its own.
pub(super) fn bench_group(
    run_id: &str,
    index: usize,
    tokens: &[String],
    strategy: SplitStrategy,
    converted: usize,
) -> orchestrator_pb::CardGroup {
    let euros_from = tokens.len().saturating_sub(converted);
    let members = tokens
        .iter()
        .zip(1..)
        .enumerate()
        .map(|(i, (token, priority))| orchestrator_pb::CardGroupMember {
            token: token.clone(),
            label: format!("bench card {priority}"),
            currency_code: if i >= euros_from { "EUR" } else { "USD" }.to_owned(),
            priority,
            state: orchestrator_pb::CardGroupMemberState::Active.into(),
            ..Default::default()
        })
        .collect();
    let (strategy, weights) = match strategy {
        SplitStrategy::Weighted => (
            orchestrator_pb::AllocationStrategy::Weighted,
            tokens
                .iter()
                .zip(even_basis_points(tokens.len()))
                .map(|(token, basis_points)| orchestrator_pb::MemberWeight {
                    token: token.clone(),
                    basis_points,
                })
                .collect(),
        ),
        // PARALLEL without weights splits evenly.
        SplitStrategy::Parallel => (orchestrator_pb::AllocationStrategy::Parallel, Vec::new()),
    };
    orchestrator_pb::CardGroup {
        billing_account_id: format!("bench-{index}"),
        display_name: format!("bench {run_id} {index}"),
        default_currency_code: "USD".to_owned(),
        members,
        default_policy: Some(orchestrator_pb::AllocationPolicy {
            strategy: strategy.into(),
            weights,
            completion: orchestrator_pb::Completion::AllOrNothing.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(super) fn usd(minor_units: i64) -> Money {
    Money {
        currency_code: "USD".to_owned(),
        minor_units,
    }
}

/// `cards` shares of 10000 basis points that differ by at most one, the larger ones first.
pub(super) fn even_basis_points(cards: usize) -> Vec<i32> {
    assert!((1..=GROUP_CARDS_MAX).contains(&cards));
    let cards_i32 = cards as i32;
    let (share, rest) = (10_000 / cards_i32, 10_000 % cards_i32);
    let shares: Vec<i32> = (0..cards_i32)
        .map(|i| share + i32::from(i < rest))
        .collect();
    assert_eq!(shares.iter().sum::<i32>(), 10_000);
    shares
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Even shares of 10000 basis points sum to 10000 and differ by at most one, larger first.
    #[test]
    fn even_shares() {
        assert_eq!(even_basis_points(1), [10_000]);
        assert_eq!(even_basis_points(3), [3334, 3333, 3333]);
        for cards in 1..=GROUP_CARDS_MAX {
            let shares = even_basis_points(cards);
            assert_eq!(shares.len(), cards);
            assert_eq!(shares.iter().sum::<i32>(), 10_000);
            assert!(shares.windows(2).all(|w| w[0] - w[1] <= 1 && w[0] >= w[1]));
        }
    }

    /// The bench group has one member per card in priority order and, when weighted, one
    /// weight per member summing to 10000; parallel leaves the split to the orchestrator.
    #[test]
    fn bench_groups() {
        let tokens: Vec<String> = (1..=3).map(|i| format!("tok_{i}")).collect();
        let group = bench_group("run", 0, &tokens, SplitStrategy::Weighted, 0);
        let members: Vec<(&str, i32)> = group
            .members
            .iter()
            .map(|m| (m.token.as_str(), m.priority))
            .collect();
        assert_eq!(members, [("tok_1", 1), ("tok_2", 2), ("tok_3", 3)]);
        let policy = group.default_policy.unwrap();
        let weights: Vec<(&str, i32)> = policy
            .weights
            .iter()
            .map(|w| (w.token.as_str(), w.basis_points))
            .collect();
        assert_eq!(weights, [("tok_1", 3334), ("tok_2", 3333), ("tok_3", 3333)]);

        let policy = bench_group("run", 0, &tokens, SplitStrategy::Parallel, 0)
            .default_policy
            .unwrap();
        assert_eq!(
            policy.strategy,
            i32::from(orchestrator_pb::AllocationStrategy::Parallel)
        );
        assert!(policy.weights.is_empty());
    }
}
