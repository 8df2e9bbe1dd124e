//! The allocation-policy flags of `tandemctl groups create` (the group's default policy) and
//! `tandemctl pay` (a policy for one payment). They parse syntax only: the orchestrator checks
//! the policy and names the bad field.

use anyhow::Context as _;
use tandem_proto::tandem::orchestrator::v1 as pb;

use crate::amounts::{parse_amount, wire};

/// The allocation-policy flags of `groups create` (the group's default policy) and `pay` (a
/// policy for one payment).
#[derive(Debug, clap::Args)]
pub(crate) struct PolicyArgs {
    /// How the amount is first divided among the members.
    #[arg(long, value_enum)]
    strategy: Option<Strategy>,
    /// A member's share in basis points (weighted, and optionally parallel); the shares sum
    /// to 10000.
    #[arg(long = "weight", value_name = "TOKEN:BP", requires = "strategy")]
    weights: Vec<String>,
    /// A member's fixed amount (fixed), in the group's or the invoice's currency.
    #[arg(long = "fixed", value_name = "TOKEN:AMOUNT", requires = "strategy")]
    fixed_amounts: Vec<String>,
    /// Where a fixed allocation's rest goes.
    #[arg(long, value_enum, requires = "strategy")]
    remainder: Option<Remainder>,
    /// Move what a declined card did not cover to the next members.
    #[arg(long, requires = "strategy")]
    fallback: bool,
    /// The bound on authorization attempts in one payment, 1-50; the orchestrator's default
    /// (10) if not given.
    #[arg(long, requires = "strategy", value_parser = clap::value_parser!(i32).range(1..=50))]
    attempts_max: Option<i32>,
    /// Keep what was covered when the whole amount cannot be (otherwise all or nothing).
    #[arg(long, requires = "strategy")]
    allow_partial: bool,
    /// BY_CURRENCY: pay a line whose currency no member holds from the other members,
    /// converted at the rate (otherwise such a line is refused).
    #[arg(long, requires = "strategy")]
    allow_conversion: bool,
}

/// `AllocationStrategy` on the command line; `by_currency`, as the output spells it, works too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Strategy {
    Sequential,
    Parallel,
    Weighted,
    Fixed,
    #[value(alias = "by_currency")]
    ByCurrency,
}

/// `RemainderRule` on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Remainder {
    Sequential,
    Even,
    Proportional,
}

impl From<Strategy> for pb::AllocationStrategy {
    fn from(strategy: Strategy) -> Self {
        match strategy {
            Strategy::Sequential => Self::Sequential,
            Strategy::Parallel => Self::Parallel,
            Strategy::Weighted => Self::Weighted,
            Strategy::Fixed => Self::Fixed,
            Strategy::ByCurrency => Self::ByCurrency,
        }
    }
}

impl From<Remainder> for pb::RemainderRule {
    fn from(remainder: Remainder) -> Self {
        match remainder {
            Remainder::Sequential => Self::Sequential,
            Remainder::Even => Self::Even,
            Remainder::Proportional => Self::Proportional,
        }
    }
}

impl PolicyArgs {
    /// The policy the flags describe, with fixed amounts read in `currency`; `None` without
    /// `--strategy` (clap refuses the other policy flags without it).
    pub(crate) fn policy(&self, currency: &str) -> anyhow::Result<Option<pb::AllocationPolicy>> {
        let Some(strategy) = self.strategy else {
            return Ok(None);
        };
        let weights = self
            .weights
            .iter()
            .map(|spec| parse_weight(spec))
            .collect::<anyhow::Result<_>>()?;
        let fixed_amounts = self
            .fixed_amounts
            .iter()
            .map(|spec| parse_fixed_amount(spec, currency))
            .collect::<anyhow::Result<_>>()?;
        let completion = if self.allow_partial {
            pb::Completion::AllowPartial
        } else {
            pb::Completion::AllOrNothing
        };
        Ok(Some(pb::AllocationPolicy {
            strategy: pb::AllocationStrategy::from(strategy).into(),
            weights,
            fixed_amounts,
            remainder_rule: self
                .remainder
                .map_or(pb::RemainderRule::Unspecified, pb::RemainderRule::from)
                .into(),
            fallback: Some(pb::FallbackPolicy {
                enabled: self.fallback,
                attempts_max: self.attempts_max.unwrap_or(0),
            }),
            completion: completion.into(),
            ceiling_windows: Vec::new(),
            allow_conversion: self.allow_conversion,
        }))
    }
}

/// `TOKEN:BP`, e.g. `tok_...:6000`.
fn parse_weight(spec: &str) -> anyhow::Result<pb::MemberWeight> {
    let (token, basis_points) = spec
        .split_once(':')
        .filter(|(token, _)| !token.is_empty())
        .with_context(|| format!("--weight {spec:?} must be TOKEN:BASIS_POINTS"))?;
    let basis_points = basis_points
        .parse()
        .with_context(|| format!("--weight {spec:?}: basis points must be an integer"))?;
    Ok(pb::MemberWeight {
        token: token.to_owned(),
        basis_points,
    })
}

/// `TOKEN:AMOUNT`, e.g. `tok_...:12.50`, the amount in `currency`.
fn parse_fixed_amount(spec: &str, currency: &str) -> anyhow::Result<pb::MemberAmount> {
    let (token, amount) = spec
        .split_once(':')
        .filter(|(token, _)| !token.is_empty())
        .with_context(|| format!("--fixed {spec:?} must be TOKEN:AMOUNT"))?;
    let amount = parse_amount(amount, currency).with_context(|| format!("--fixed {spec:?}"))?;
    Ok(pb::MemberAmount {
        token: token.to_owned(),
        amount: Some(wire(amount)),
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    /// The policy flags alone, parsed as `groups create` and `pay` parse them.
    #[derive(Debug, clap::Parser)]
    struct PolicyCli {
        #[command(flatten)]
        policy: PolicyArgs,
    }

    fn policy(args: &[&str]) -> anyhow::Result<Option<pb::AllocationPolicy>> {
        let cli = PolicyCli::try_parse_from(std::iter::once("test").chain(args.iter().copied()))?;
        cli.policy.policy("USD")
    }

    fn usd(minor_units: i64) -> Option<tandem_proto::tandem::r#type::v1::Money> {
        Some(tandem_proto::tandem::r#type::v1::Money {
            currency_code: "USD".to_owned(),
            minor_units,
        })
    }

    /// Each strategy's flags become the matching policy; without `--allow-partial` the
    /// completion is all or nothing, and no `--attempts-max` leaves the server's default.
    #[test]
    fn policy_flags() {
        let sequential = policy(&["--strategy", "sequential", "--fallback"])
            .unwrap()
            .unwrap();
        assert_eq!(
            sequential,
            pb::AllocationPolicy {
                strategy: pb::AllocationStrategy::Sequential.into(),
                fallback: Some(pb::FallbackPolicy {
                    enabled: true,
                    attempts_max: 0,
                }),
                completion: pb::Completion::AllOrNothing.into(),
                ..Default::default()
            }
        );

        let weighted = policy(&[
            "--strategy",
            "weighted",
            "--weight",
            "tok_a:6000",
            "--weight",
            "tok_b:4000",
            "--attempts-max",
            "5",
            "--allow-partial",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            weighted.strategy,
            i32::from(pb::AllocationStrategy::Weighted)
        );
        assert_eq!(
            weighted.weights,
            [("tok_a", 6000), ("tok_b", 4000)].map(|(token, basis_points)| pb::MemberWeight {
                token: token.to_owned(),
                basis_points,
            })
        );
        assert_eq!(
            weighted.fallback.map(|f| (f.enabled, f.attempts_max)),
            Some((false, 5))
        );
        assert_eq!(weighted.completion, i32::from(pb::Completion::AllowPartial));

        let fixed = policy(&[
            "--strategy",
            "fixed",
            "--fixed",
            "tok_a:12.50",
            "--remainder",
            "proportional",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(fixed.strategy, i32::from(pb::AllocationStrategy::Fixed));
        assert_eq!(
            fixed.fixed_amounts,
            [pb::MemberAmount {
                token: "tok_a".to_owned(),
                amount: usd(1250),
            }]
        );
        assert_eq!(
            fixed.remainder_rule,
            i32::from(pb::RemainderRule::Proportional)
        );

        for (flag, strategy) in [
            ("parallel", pb::AllocationStrategy::Parallel),
            ("by-currency", pb::AllocationStrategy::ByCurrency),
        ] {
            let parsed = policy(&["--strategy", flag]).unwrap().unwrap();
            assert_eq!(parsed.strategy, i32::from(strategy), "{flag}");
            assert_eq!(
                parsed.remainder_rule,
                i32::from(pb::RemainderRule::Unspecified)
            );
        }
    }

    /// No flags is no policy (the group's default applies); policy flags without
    /// `--strategy`, malformed weights and fixed amounts, and out-of-range attempts are
    /// refused.
    #[test]
    fn bad_policy_flags() {
        assert_eq!(policy(&[]).unwrap(), None);
        for args in [
            &["--fallback"][..],
            &["--weight", "tok_a:10000"],
            &["--strategy", "weighted", "--weight", "tok_a"],
            &["--strategy", "weighted", "--weight", ":10000"],
            &["--strategy", "weighted", "--weight", "tok_a:half"],
            &["--strategy", "fixed", "--fixed", "tok_a:1.005"],
            &["--strategy", "fixed", "--fixed", "tok_a"],
            &["--strategy", "fixed", "--remainder", "last"],
            &["--strategy", "sequential", "--attempts-max", "0"],
            &["--strategy", "sequential", "--attempts-max", "51"],
            &["--strategy", "random"],
        ] {
            assert!(policy(args).is_err(), "{args:?}");
        }
    }
}
