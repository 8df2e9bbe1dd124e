//! Allocation: how an invoice amount is divided over a card group's members.
//!
//! Pure and deterministic: the same members, policy and amount give the same parts. The rules
//! are those of `AllocationStrategy` in `proto/tandem/orchestrator/v1/card_group_service.proto`:
//!
//! - `SEQUENTIAL`: members in priority order, each filled up to its room.
//! - `PARALLEL`: split by weights if given, evenly otherwise.
//! - `WEIGHTED`: split by basis points summing to 10000.
//! - `FIXED`: fixed amounts per member (taken in priority order; the last one is reduced if
//!   they exceed the amount), then the rest by a [`RemainderRule`].
//! - `BY_CURRENCY`: each invoice line to the members of its currency, in priority order.
//!
//! Every part is then capped by its member's room (what the member may still be charged in this
//! payment: its per-payment limit and what its monthly limit leaves, ceiling windows already
//! applied by the caller). What a cap cuts off moves to the next members in priority order,
//! within their room, when fallback is enabled, and stays uncovered otherwise.
//!
//! Rounding is the largest-remainder method: each share gets the floor of its exact value and
//! the minor units left over go one each to the largest fractional parts, ties broken by
//! priority (then token), so the parts always sum exactly to the amount.
//!
//! # Invariants (checked by the property tests below)
//!
//! - `sum(parts) + sum(uncovered) == amount`, per currency.
//! - Every part is positive and at most its member's room.
//! - Only eligible members get parts: active, in the part's currency, not excluded.
//! - The same input gives the same output.

use std::collections::BTreeMap;

use tandem_money::{Currency, Money};

/// Basis points in a whole.
pub const BASIS_POINTS_TOTAL: u32 = 10_000;

/// A card group member as allocation sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Member {
    /// The vault token: the member's identity within the group.
    pub token: String,
    /// Allocation order, lower first; unique within the group. Also every tie-break.
    pub priority: u16,
    /// The currency the card is charged in.
    pub currency: Currency,
    /// False for a suspended member: never allocated to.
    pub active: bool,
    /// What the member may still be charged in this payment, in minor units of `currency`;
    /// `None` is unlimited.
    pub room: Option<i64>,
}

/// A member's share, in basis points.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Weight {
    /// The member's token.
    pub token: String,
    /// 1-10000; a policy's weights sum to 10000.
    pub basis_points: u32,
}

/// A fixed amount for one member, in minor units of the invoice's currency.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FixedAmount {
    /// The member's token.
    pub token: String,
    /// Positive.
    pub minor_units: i64,
}

/// Where the part of a `FIXED` allocation not covered by fixed amounts goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RemainderRule {
    /// To the members without a fixed amount, in priority order, each up to its room.
    Sequential,
    /// Evenly over the members without a fixed amount.
    Even,
    /// Over the members with a fixed amount, in proportion to their fixed amounts.
    Proportional,
}

/// How the amount is first divided.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Strategy {
    /// Priority order, each member up to its room.
    Sequential,
    /// By `weights` if not empty, evenly over the eligible members otherwise.
    Parallel {
        /// Optional weights.
        weights: Vec<Weight>,
    },
    /// By basis points.
    Weighted {
        /// The weights, summing to 10000.
        weights: Vec<Weight>,
    },
    /// Fixed amounts, then the rest by `remainder`.
    Fixed {
        /// Fixed amounts per member.
        amounts: Vec<FixedAmount>,
        /// Where the rest goes.
        remainder: RemainderRule,
    },
    /// Invoice lines to members of their currency.
    ByCurrency,
}

/// One part of an allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// The member's token.
    pub token: String,
    /// The amount, positive, in the member's currency.
    pub amount: Money,
}

/// The result of an allocation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Allocation {
    /// Positive parts, in member priority order.
    pub parts: Vec<Part>,
    /// What no member could take, per currency (only non-zero amounts).
    pub uncovered: Vec<Money>,
}

/// Why a policy cannot be used for a payment; `field` names the request field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {description}")]
pub struct PolicyError {
    /// The offending field, e.g. `policy.weights[1].token`.
    pub field: String,
    /// What is wrong.
    pub description: String,
}

fn policy_error(field: impl Into<String>, description: impl Into<String>) -> PolicyError {
    PolicyError {
        field: field.into(),
        description: description.into(),
    }
}

/// Checks `strategy` against the group's `members` and the invoice: weights sum to 10000, every
/// token is a member and appears once, fixed amounts are positive, some active member holds each
/// currency the invoice needs. Returns every violation.
pub fn check_policy(
    strategy: &Strategy,
    members: &[Member],
    amount: Money,
    lines: &[Money],
) -> Result<(), Vec<PolicyError>> {
    let mut errors = Vec::new();
    let is_member = |token: &str| members.iter().any(|m| m.token == token);
    let mut check_tokens = |field: &str, tokens: &mut dyn Iterator<Item = &str>| {
        let mut seen = Vec::new();
        for (i, token) in tokens.enumerate() {
            if !is_member(token) {
                errors.push(policy_error(
                    format!("policy.{field}[{i}].token"),
                    "is not a member of the card group",
                ));
            } else if seen.contains(&token) {
                errors.push(policy_error(
                    format!("policy.{field}[{i}].token"),
                    "appears more than once",
                ));
            }
            seen.push(token);
        }
    };
    match strategy {
        Strategy::Weighted { weights } | Strategy::Parallel { weights } => {
            check_tokens("weights", &mut weights.iter().map(|w| w.token.as_str()));
            let required = matches!(strategy, Strategy::Weighted { .. });
            if required || !weights.is_empty() {
                if weights
                    .iter()
                    .any(|w| !(1..=BASIS_POINTS_TOTAL).contains(&w.basis_points))
                {
                    errors.push(policy_error(
                        "policy.weights",
                        "each weight must be 1-10000 basis points",
                    ));
                }
                let total: u64 = weights.iter().map(|w| u64::from(w.basis_points)).sum();
                if total != u64::from(BASIS_POINTS_TOTAL) {
                    errors.push(policy_error(
                        "policy.weights",
                        format!("must sum to 10000 basis points, not {total}"),
                    ));
                }
            }
        }
        Strategy::Fixed { amounts, .. } => {
            check_tokens(
                "fixed_amounts",
                &mut amounts.iter().map(|a| a.token.as_str()),
            );
            if amounts.is_empty() {
                errors.push(policy_error(
                    "policy.fixed_amounts",
                    "is required for FIXED",
                ));
            }
            for (i, fixed) in amounts.iter().enumerate() {
                if fixed.minor_units <= 0 {
                    errors.push(policy_error(
                        format!("policy.fixed_amounts[{i}].amount"),
                        "must be positive",
                    ));
                }
            }
        }
        Strategy::Sequential => {}
        Strategy::ByCurrency => {
            if lines.is_empty() {
                errors.push(policy_error(
                    "invoice.lines",
                    "BY_CURRENCY needs invoice lines",
                ));
            }
            for (i, line) in lines.iter().enumerate() {
                if !members
                    .iter()
                    .any(|m| m.active && m.currency == line.currency)
                {
                    errors.push(policy_error(
                        format!("invoice.lines[{i}].amount.currency_code"),
                        format!("no active member of the group holds {}", line.currency),
                    ));
                }
            }
        }
    }
    if !matches!(strategy, Strategy::ByCurrency)
        && !members
            .iter()
            .any(|m| m.active && m.currency == amount.currency)
    {
        errors.push(policy_error(
            "invoice.amount.currency_code",
            format!("no active member of the group holds {}", amount.currency),
        ));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Divides `amount` (or, for `BY_CURRENCY`, each of `lines`) over `members` by `strategy`,
/// capped by each member's room; with `fallback`, what a cap cuts off moves to the next members
/// in priority order. The policy must have passed [`check_policy`]; tokens it names that are
/// not members are ignored.
pub fn allocate(
    amount: Money,
    lines: &[Money],
    members: &[Member],
    strategy: &Strategy,
    fallback: bool,
) -> Allocation {
    let ordered = by_priority(members);
    let mut book = Book::default();
    match strategy {
        Strategy::ByCurrency => {
            for line in lines {
                let rest = fill_in_order(&mut book, &ordered, line.currency, line.minor_units, &[]);
                book.leave_uncovered(line.currency, rest);
            }
        }
        Strategy::Sequential => {
            let rest = fill_in_order(
                &mut book,
                &ordered,
                amount.currency,
                amount.minor_units,
                &[],
            );
            book.leave_uncovered(amount.currency, rest);
        }
        Strategy::Weighted { weights } | Strategy::Parallel { weights } if !weights.is_empty() => {
            let shares: Vec<(&Member, u64)> = ordered
                .iter()
                .filter_map(|m| {
                    weights
                        .iter()
                        .find(|w| w.token == m.token)
                        .map(|w| (*m, u64::from(w.basis_points)))
                })
                .collect();
            let proposed = split(amount.minor_units, &shares);
            cap_and_spill(&mut book, &ordered, amount, proposed, fallback);
        }
        Strategy::Weighted { .. } | Strategy::Parallel { .. } => {
            let shares: Vec<(&Member, u64)> = ordered
                .iter()
                .filter(|m| eligible(m, amount.currency))
                .map(|m| (*m, 1))
                .collect();
            let proposed = split(amount.minor_units, &shares);
            cap_and_spill(&mut book, &ordered, amount, proposed, fallback);
        }
        Strategy::Fixed { amounts, remainder } => {
            let proposed = fixed(amount, &ordered, amounts, *remainder);
            cap_and_spill(&mut book, &ordered, amount, proposed, fallback);
        }
    }
    let allocation = book.finish(&ordered);
    match strategy {
        Strategy::ByCurrency => assert_sums(&allocation, lines),
        _ => assert_sums(&allocation, &[amount]),
    }
    allocation
}

/// Asserts that `allocation`'s parts and what it leaves uncovered sum exactly, per currency, to
/// the `totals` it divided.
fn assert_sums(allocation: &Allocation, totals: &[Money]) {
    let mut left: BTreeMap<Currency, i64> = BTreeMap::new();
    for total in totals {
        *left.entry(total.currency).or_default() += total.minor_units;
    }
    for money in allocation
        .parts
        .iter()
        .map(|part| &part.amount)
        .chain(&allocation.uncovered)
    {
        *left.entry(money.currency).or_default() -= money.minor_units;
    }
    assert!(
        left.values().all(|amount| *amount == 0),
        "an allocation's parts and uncovered amounts sum to what it divides: {left:?} left over"
    );
}

/// Moves `amount` not covered (a decline, a partial approval) to the eligible members not in
/// `excluded`, in priority order, within what their room leaves after `already` (the amounts
/// this payment already asks of them; a member may appear several times). The runtime side of
/// the fallback policy.
pub fn reallocate(
    amount: Money,
    members: &[Member],
    excluded: &[&str],
    already: &[Part],
) -> Allocation {
    let ordered = by_priority(members);
    let mut book = Book::default();
    for part in already {
        *book.already.entry(part.token.clone()).or_default() += part.amount.minor_units;
    }
    let rest = fill_in_order(
        &mut book,
        &ordered,
        amount.currency,
        amount.minor_units,
        excluded,
    );
    book.leave_uncovered(amount.currency, rest);
    book.already.clear();
    let allocation = book.finish(&ordered);
    assert_sums(&allocation, &[amount]);
    allocation
}

fn by_priority(members: &[Member]) -> Vec<&Member> {
    let mut ordered: Vec<&Member> = members.iter().collect();
    ordered.sort_by(|a, b| {
        a.priority
            .cmp(&b.priority)
            .then_with(|| a.token.cmp(&b.token))
    });
    ordered
}

fn eligible(member: &Member, currency: Currency) -> bool {
    member.active && member.currency == currency && member.room.is_none_or(|room| room > 0)
}

/// Parts being built, per member, and what stays uncovered.
#[derive(Default)]
struct Book {
    parts: BTreeMap<String, (Currency, i64)>,
    /// Amounts asked of members before this allocation (for [`reallocate`]).
    already: BTreeMap<String, i64>,
    uncovered: BTreeMap<Currency, i64>,
}

impl Book {
    /// What `member` can still take in this allocation.
    fn room_left(&self, member: &Member) -> i64 {
        let taken = self
            .parts
            .get(&member.token)
            .map_or(0, |(_, amount)| *amount)
            + self.already.get(&member.token).copied().unwrap_or(0);
        member.room.map_or(i64::MAX, |room| (room - taken).max(0))
    }

    fn add(&mut self, member: &Member, amount: i64) {
        assert!(amount >= 0, "a part is never negative");
        if amount > 0 {
            self.parts
                .entry(member.token.clone())
                .or_insert((member.currency, 0))
                .1 += amount;
        }
    }

    fn leave_uncovered(&mut self, currency: Currency, amount: i64) {
        if amount > 0 {
            *self.uncovered.entry(currency).or_default() += amount;
        }
    }

    fn finish(self, ordered: &[&Member]) -> Allocation {
        let parts = ordered
            .iter()
            .filter_map(|m| {
                self.parts
                    .get(&m.token)
                    .filter(|(_, amount)| *amount > 0)
                    .map(|(currency, amount)| Part {
                        token: m.token.clone(),
                        amount: Money::new(*currency, *amount),
                    })
            })
            .collect();
        let uncovered = self
            .uncovered
            .into_iter()
            .map(|(currency, amount)| Money::new(currency, amount))
            .collect();
        Allocation { parts, uncovered }
    }
}

/// Gives `amount` to the eligible members (not in `excluded`) in priority order, each up to its
/// room; returns what is left.
fn fill_in_order(
    book: &mut Book,
    ordered: &[&Member],
    currency: Currency,
    amount: i64,
    excluded: &[&str],
) -> i64 {
    let mut rest = amount;
    for member in ordered {
        if rest == 0 {
            break;
        }
        if !eligible(member, currency) || excluded.contains(&member.token.as_str()) {
            continue;
        }
        let take = rest.min(book.room_left(member));
        book.add(member, take);
        rest -= take;
    }
    rest
}

/// Splits `amount` in proportion to `shares` by the largest-remainder method, ties broken by
/// the order of `shares` (priority order). The parts sum exactly to `amount`.
pub fn split<T: Copy>(amount: i64, shares: &[(T, u64)]) -> Vec<(T, i64)> {
    let total: u128 = shares.iter().map(|(_, s)| u128::from(*s)).sum();
    if total == 0 || amount <= 0 {
        return Vec::new();
    }
    let amount_u = amount as u128;
    let mut parts: Vec<(T, i64, u128)> = shares
        .iter()
        .map(|(member, share)| {
            let exact = amount_u * u128::from(*share);
            // amount * share / total <= amount, which fits in i64.
            (*member, (exact / total) as i64, exact % total)
        })
        .collect();
    let given: i64 = parts.iter().map(|(_, part, _)| part).sum();
    let mut left = amount - given;
    // Indices by descending remainder; the stable sort keeps priority order among ties.
    let mut order: Vec<usize> = (0..parts.len()).collect();
    order.sort_by(|a, b| parts[*b].2.cmp(&parts[*a].2));
    for index in order {
        if left == 0 {
            break;
        }
        parts[index].1 += 1;
        left -= 1;
    }
    assert_eq!(
        left, 0,
        "largest remainder hands out fewer units than shares"
    );
    assert_eq!(
        parts.iter().map(|(_, part, _)| part).sum::<i64>(),
        amount,
        "a split sums to the amount it splits"
    );
    parts
        .into_iter()
        .map(|(member, part, _)| (member, part))
        .collect()
}

/// The proposed parts of a `FIXED` allocation, before caps. A remainder no member is proposed
/// for is left out (the cap step treats it as cut off).
fn fixed<'m>(
    amount: Money,
    ordered: &[&'m Member],
    amounts: &[FixedAmount],
    remainder: RemainderRule,
) -> Vec<(&'m Member, i64)> {
    let mut parts: Vec<(&Member, i64)> = Vec::new();
    let mut left = amount.minor_units;
    for member in ordered {
        if let Some(fixed) = amounts.iter().find(|a| a.token == member.token) {
            let take = fixed.minor_units.clamp(0, left);
            parts.push((member, take));
            left -= take;
        }
    }
    if left == 0 {
        return parts;
    }
    let without_fixed: Vec<&Member> = ordered
        .iter()
        .filter(|m| eligible(m, amount.currency) && !amounts.iter().any(|a| a.token == m.token))
        .copied()
        .collect();
    match remainder {
        RemainderRule::Sequential => {
            // In priority order, each up to its room.
            let mut rest = left;
            for member in &without_fixed {
                if rest == 0 {
                    break;
                }
                let take = member.room.map_or(rest, |room| room.min(rest)).max(0);
                parts.push((member, take));
                rest -= take;
            }
            // What no member without a fixed amount can take (`rest`) is left out: cut off
            // like a capped part (spilled with fallback, uncovered otherwise).
        }
        RemainderRule::Even => {
            let shares: Vec<(&Member, u64)> = without_fixed.iter().map(|m| (*m, 1)).collect();
            parts.extend(split(left, &shares));
        }
        RemainderRule::Proportional => {
            let shares: Vec<(&Member, u64)> = parts
                .iter()
                .filter_map(|(member, _)| {
                    amounts
                        .iter()
                        .find(|a| a.token == member.token)
                        .map(|a| (*member, a.minor_units.max(0) as u64))
                })
                .collect();
            parts.extend(split(left, &shares));
        }
    }
    parts
}

/// Books `proposed` parts capped by each member's room; what a cap (or ineligibility) cuts off
/// is spilled to the next members in priority order with `fallback`, or left uncovered.
fn cap_and_spill(
    book: &mut Book,
    ordered: &[&Member],
    amount: Money,
    proposed: Vec<(&Member, i64)>,
    fallback: bool,
) {
    let currency = amount.currency;
    // What no member was proposed for (no eligible member, a remainder nobody takes) is cut
    // off like a capped part.
    let mut cut = amount.minor_units - proposed.iter().map(|(_, part)| part).sum::<i64>();
    for (member, part) in proposed {
        let take = if eligible(member, currency) {
            part.min(book.room_left(member))
        } else {
            0
        };
        book.add(member, take);
        cut += part - take;
    }
    let rest = if fallback {
        fill_in_order(book, ordered, currency, cut, &[])
    } else {
        cut
    };
    book.leave_uncovered(currency, rest);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::{Just, any, prop_assert, prop_assert_eq, prop_oneof, proptest};
    use proptest::strategy::Strategy as _;

    fn usd() -> Currency {
        Currency::parse("USD").unwrap()
    }

    fn member(token: &str, priority: u16, room: Option<i64>) -> Member {
        Member {
            token: token.to_owned(),
            priority,
            currency: usd(),
            active: true,
            room,
        }
    }

    fn weights(pairs: &[(&str, u32)]) -> Vec<Weight> {
        pairs
            .iter()
            .map(|(token, basis_points)| Weight {
                token: (*token).to_owned(),
                basis_points: *basis_points,
            })
            .collect()
    }

    fn amounts(allocation: &Allocation) -> Vec<(String, i64)> {
        allocation
            .parts
            .iter()
            .map(|p| (p.token.clone(), p.amount.minor_units))
            .collect()
    }

    fn pairs(list: &[(&str, i64)]) -> Vec<(String, i64)> {
        list.iter().map(|(t, a)| ((*t).to_owned(), *a)).collect()
    }

    /// The documented cases, one `check` per strategy: the design's 60/20/20 split of 20.50
    /// USD, rounding ties, caps with and without fallback, fixed amounts with each remainder
    /// rule, and currency lines.
    #[test]
    fn documented_cases() {
        let group = [
            member("a", 1, None),
            member("b", 2, None),
            member("c", 3, None),
        ];
        let check = |amount: i64,
                     strategy: Strategy,
                     members: &[Member],
                     fallback,
                     expected: &[(&str, i64)],
                     uncovered: i64| {
            let result = allocate(Money::new(usd(), amount), &[], members, &strategy, fallback);
            assert_eq!(amounts(&result), pairs(expected), "{strategy:?}");
            let left: i64 = result.uncovered.iter().map(|m| m.minor_units).sum();
            assert_eq!(left, uncovered, "{strategy:?}");
        };
        let w = weights(&[("a", 6000), ("b", 2000), ("c", 2000)]);
        check(
            2050,
            Strategy::Weighted { weights: w.clone() },
            &group,
            false,
            &[("a", 1230), ("b", 410), ("c", 410)],
            0,
        );
        // 100 / 3: the leftover unit goes to the highest priority among equal remainders.
        check(
            100,
            Strategy::Parallel { weights: vec![] },
            &group,
            false,
            &[("a", 34), ("b", 33), ("c", 33)],
            0,
        );
        check(
            1000,
            Strategy::Sequential,
            &[
                member("a", 1, Some(300)),
                member("b", 2, Some(500)),
                member("c", 3, None),
            ],
            false,
            &[("a", 300), ("b", 500), ("c", 200)],
            0,
        );
        check(
            1000,
            Strategy::Sequential,
            &[member("a", 1, Some(300)), member("b", 2, Some(500))],
            false,
            &[("a", 300), ("b", 500)],
            200,
        );
        // A cap cuts a weighted part: uncovered without fallback, moved on with it.
        let capped = [
            member("a", 1, Some(500)),
            member("b", 2, None),
            member("c", 3, None),
        ];
        check(
            2050,
            Strategy::Weighted { weights: w.clone() },
            &capped,
            false,
            &[("a", 500), ("b", 410), ("c", 410)],
            730,
        );
        check(
            2050,
            Strategy::Weighted { weights: w },
            &capped,
            true,
            &[("a", 500), ("b", 1140), ("c", 410)],
            0,
        );
        let fixed = |remainder| Strategy::Fixed {
            amounts: vec![FixedAmount {
                token: "a".into(),
                minor_units: 700,
            }],
            remainder,
        };
        check(
            2050,
            fixed(RemainderRule::Even),
            &group,
            false,
            &[("a", 700), ("b", 675), ("c", 675)],
            0,
        );
        check(
            2050,
            fixed(RemainderRule::Sequential),
            &group,
            false,
            &[("a", 700), ("b", 1350)],
            0,
        );
        check(
            2050,
            fixed(RemainderRule::Proportional),
            &group,
            false,
            &[("a", 2050)],
            0,
        );
        check(
            500,
            fixed(RemainderRule::Even),
            &group,
            false,
            &[("a", 500)],
            0,
        );
        // Suspended members never get a part.
        let mut suspended = group.clone();
        suspended[0].active = false;
        check(
            100,
            Strategy::Parallel { weights: vec![] },
            &suspended,
            false,
            &[("b", 50), ("c", 50)],
            0,
        );

        let eur = Currency::parse("EUR").unwrap();
        let mixed = [
            member("a", 1, Some(1000)),
            Member {
                currency: eur,
                ..member("e", 2, None)
            },
            member("b", 3, None),
        ];
        let lines = [Money::new(usd(), 1500), Money::new(eur, 700)];
        let result = allocate(
            Money::new(usd(), 0),
            &lines,
            &mixed,
            &Strategy::ByCurrency,
            false,
        );
        assert_eq!(
            amounts(&result),
            pairs(&[("a", 1000), ("e", 700), ("b", 500)])
        );
        assert!(result.uncovered.is_empty());
    }

    /// Invalid policies name the field at fault.
    #[test]
    fn invalid_policies() {
        let group = [member("a", 1, None), member("b", 2, None)];
        let amount = Money::new(usd(), 100);
        let fields = |strategy: Strategy, lines: &[Money]| -> Vec<String> {
            check_policy(&strategy, &group, amount, lines)
                .err()
                .unwrap_or_default()
                .into_iter()
                .map(|e| e.field)
                .collect()
        };
        assert_eq!(
            fields(
                Strategy::Weighted {
                    weights: weights(&[("a", 5000), ("b", 4000)])
                },
                &[]
            ),
            ["policy.weights"]
        );
        assert_eq!(
            fields(
                Strategy::Weighted {
                    weights: weights(&[("a", 5000), ("z", 5000)])
                },
                &[]
            ),
            ["policy.weights[1].token"]
        );
        assert_eq!(
            fields(
                Strategy::Weighted {
                    weights: weights(&[("a", 5000), ("a", 5000)])
                },
                &[]
            ),
            ["policy.weights[1].token"]
        );
        assert_eq!(
            fields(Strategy::Weighted { weights: vec![] }, &[]),
            ["policy.weights"]
        );
        assert!(fields(Strategy::Parallel { weights: vec![] }, &[]).is_empty());
        assert_eq!(
            fields(
                Strategy::Fixed {
                    amounts: vec![FixedAmount {
                        token: "a".into(),
                        minor_units: 0
                    }],
                    remainder: RemainderRule::Even
                },
                &[]
            ),
            ["policy.fixed_amounts[0].amount"]
        );
        let eur = Currency::parse("EUR").unwrap();
        assert_eq!(
            fields(Strategy::ByCurrency, &[Money::new(eur, 5)]),
            ["invoice.lines[0].amount.currency_code"]
        );
        assert_eq!(
            check_policy(&Strategy::Sequential, &group, Money::new(eur, 5), &[]).unwrap_err()[0]
                .field,
            "invoice.amount.currency_code"
        );
    }

    /// Runtime fallback: a declined member is excluded, the others take the amount within what
    /// their room leaves after the parts they already carry.
    #[test]
    fn reallocation_skips_the_declined_and_respects_room() {
        let group = [
            member("a", 1, None),
            member("b", 2, Some(1000)),
            member("c", 3, None),
        ];
        let already = [Part {
            token: "b".into(),
            amount: Money::new(usd(), 800),
        }];
        let result = reallocate(Money::new(usd(), 500), &group, &["a"], &already);
        assert_eq!(amounts(&result), pairs(&[("b", 200), ("c", 300)]));
        // A member carrying two legs has the room both leave.
        let twice = [
            Part {
                token: "b".into(),
                amount: Money::new(usd(), 300),
            },
            Part {
                token: "b".into(),
                amount: Money::new(usd(), 600),
            },
        ];
        let result = reallocate(Money::new(usd(), 500), &group, &["a"], &twice);
        assert_eq!(amounts(&result), pairs(&[("b", 100), ("c", 400)]));
        let none_left = reallocate(Money::new(usd(), 500), &group[..2], &["a"], &already);
        assert_eq!(amounts(&none_left), pairs(&[("b", 200)]));
        assert_eq!(none_left.uncovered, [Money::new(usd(), 300)]);
    }

    fn arb_members() -> impl proptest::strategy::Strategy<Value = Vec<Member>> {
        proptest::collection::vec(
            (any::<bool>(), proptest::option::of(0i64..5_000), 0u8..3),
            1..8,
        )
        .prop_map(|specs| {
            let currencies = ["USD", "EUR", "JPY"];
            specs
                .into_iter()
                .enumerate()
                .map(|(i, (active, room, currency))| Member {
                    token: format!("tok{i}"),
                    priority: (i as u16) * 3 + 1,
                    currency: Currency::parse(currencies[usize::from(currency) % 2]).unwrap(),
                    active: active || i == 0,
                    room,
                })
                .collect()
        })
    }

    fn arb_strategy(tokens: Vec<String>) -> impl proptest::strategy::Strategy<Value = Strategy> {
        let n = tokens.len();
        let weighted = proptest::collection::vec(1u32..100, n).prop_map({
            let tokens = tokens.clone();
            move |raw| {
                // Scale raw weights to sum exactly 10000.
                let total: u32 = raw.iter().sum();
                let mut bps: Vec<u32> = raw.iter().map(|w| w * 10_000 / total).collect();
                let short = 10_000 - bps.iter().sum::<u32>();
                bps[0] += short;
                let weights = tokens
                    .iter()
                    .zip(bps)
                    .filter(|(_, b)| *b > 0)
                    .map(|(t, b)| Weight {
                        token: t.clone(),
                        basis_points: b,
                    })
                    .collect();
                Strategy::Weighted { weights }
            }
        });
        let fixed = (proptest::collection::vec(1i64..3_000, n), 0u8..3).prop_map({
            let tokens = tokens.clone();
            move |(values, rule)| Strategy::Fixed {
                amounts: tokens
                    .iter()
                    .zip(values)
                    .step_by(2)
                    .map(|(t, v)| FixedAmount {
                        token: t.clone(),
                        minor_units: v,
                    })
                    .collect(),
                remainder: [
                    RemainderRule::Sequential,
                    RemainderRule::Even,
                    RemainderRule::Proportional,
                ][usize::from(rule)],
            }
        });
        prop_oneof![
            Just(Strategy::Sequential),
            Just(Strategy::Parallel { weights: vec![] }),
            weighted,
            fixed,
        ]
    }

    proptest! {
        /// For any group, strategy and amount: the parts and the uncovered rest sum exactly to
        /// the amount; every part is positive, within its member's room and given to an
        /// eligible member; and the result does not depend on anything but the input.
        #[test]
        fn allocations_sum_exactly_and_respect_limits(
            (members, strategy) in arb_members().prop_flat_map(|members| {
                let tokens = members.iter().map(|m| m.token.clone()).collect();
                (Just(members), arb_strategy(tokens))
            }),
            amount in 0i64..20_000,
            fallback in any::<bool>(),
        ) {
            let usd = Currency::parse("USD").unwrap();
            let result = allocate(Money::new(usd, amount), &[], &members, &strategy, fallback);
            let parts: i64 = result.parts.iter().map(|p| p.amount.minor_units).sum();
            let uncovered: i64 = result.uncovered.iter().map(|m| m.minor_units).sum();
            prop_assert_eq!(parts + uncovered, amount);
            for part in &result.parts {
                let member = members.iter().find(|m| m.token == part.token).unwrap();
                prop_assert!(part.amount.minor_units > 0);
                prop_assert!(member.active);
                prop_assert_eq!(part.amount.currency, usd);
                prop_assert_eq!(member.currency, usd);
                if let Some(room) = member.room {
                    prop_assert!(part.amount.minor_units <= room);
                }
            }
            let again = allocate(Money::new(usd, amount), &[], &members, &strategy, fallback);
            prop_assert_eq!(again, result);
        }

        /// Fallback never uses an excluded or ineligible member and never exceeds the room
        /// left after what members already carry.
        #[test]
        fn reallocation_uses_only_eligible_members(
            members in arb_members(),
            amount in 0i64..20_000,
            excluded_mask in any::<u8>(),
            already_amount in 0i64..3_000,
        ) {
            let usd = Currency::parse("USD").unwrap();
            let excluded: Vec<&str> = members
                .iter()
                .enumerate()
                .filter(|(i, _)| excluded_mask & (1 << i) != 0)
                .map(|(_, m)| m.token.as_str())
                .collect();
            let already: Vec<Part> = members
                .iter()
                .take(1)
                .map(|m| Part { token: m.token.clone(), amount: Money::new(usd, already_amount) })
                .collect();
            let result = reallocate(Money::new(usd, amount), &members, &excluded, &already);
            let parts: i64 = result.parts.iter().map(|p| p.amount.minor_units).sum();
            let uncovered: i64 = result.uncovered.iter().map(|m| m.minor_units).sum();
            prop_assert_eq!(parts + uncovered, amount);
            for part in &result.parts {
                let member = members.iter().find(|m| m.token == part.token).unwrap();
                prop_assert!(!excluded.contains(&part.token.as_str()));
                prop_assert!(member.active && member.currency == usd);
                let carried = already.iter().find(|p| p.token == part.token).map_or(0, |p| p.amount.minor_units);
                if let Some(room) = member.room {
                    prop_assert!(part.amount.minor_units + carried <= room.max(carried));
                }
            }
        }
    }
}
