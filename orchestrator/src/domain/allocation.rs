//! Allocation: how an invoice amount is divided over a card group's members.
//!
//! Pure and deterministic: the same members, policy, rates and amount give the same parts. The
//! rules are those of `AllocationStrategy` in
//! `proto/tandem/orchestrator/v1/card_group_service.proto`:
//!
//! - `SEQUENTIAL`: members in priority order, each filled up to its room.
//! - `PARALLEL`: split by weights if given, evenly otherwise.
//! - `WEIGHTED`: split by basis points summing to 10000.
//! - `FIXED`: fixed amounts per member (taken in priority order; the last one is reduced if
//!   they exceed the amount), then the rest by a [`RemainderRule`].
//! - `BY_CURRENCY`: each invoice line to the members of its currency, in priority order; a line
//!   whose currency no active member holds to every member, in priority order, when the policy
//!   allows conversion (refused by [`check_policy`] otherwise).
//!
//! Parts are in the invoice's currency: each is the part of the invoice a member covers. A
//! member in another currency is charged its part converted at the payment's quote
//! ([`Exchange`]); its room (limits are in the member's currency) is what that room covers at
//! the quote, so the converted charge never exceeds it. A member in another currency without a
//! quote takes nothing.
//!
//! Every part is capped by its member's room (what the member may still be charged in this
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
//! - `sum(parts) + uncovered == amount`, in the invoice's currency.
//! - Every part is positive and, converted to its member's currency, at most its room.
//! - Only eligible members get parts: active, of the line's currency (`BY_CURRENCY`) or
//!   convertible, not excluded.
//! - The same input gives the same output.

use std::collections::BTreeMap;

use tandem_money::{Currency, Money};

use super::fx::Quote;

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

/// An invoice line as `BY_CURRENCY` divides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line {
    /// The line's amount, in minor units of the invoice's currency.
    pub amount: i64,
    /// The currency of the cards that pay it.
    pub currency: Currency,
}

/// The currencies of a payment: the invoice's, the quotes it fixed (from the invoice's
/// currency to members' currencies), and whether a `BY_CURRENCY` line no member's currency
/// matches may go to the other members.
#[derive(Debug, Clone, Copy)]
pub struct Exchange<'q> {
    /// The invoice's currency: every part is in it.
    pub invoice: Currency,
    /// The quotes from `invoice`.
    pub quotes: &'q [Quote],
    /// The policy allows a `BY_CURRENCY` line whose currency no active member holds to be
    /// converted to the other members.
    pub allow_conversion: bool,
}

impl<'q> Exchange<'q> {
    /// Amounts in `invoice`, nothing converted.
    pub fn none(invoice: Currency) -> Exchange<'q> {
        Exchange {
            invoice,
            quotes: &[],
            allow_conversion: false,
        }
    }

    /// The quote from the invoice's currency to `currency`, if the payment has one.
    pub fn quote(&self, currency: Currency) -> Option<&'q Quote> {
        self.quotes
            .iter()
            .find(|q| q.from == self.invoice && q.to == currency)
    }

    /// True if `member` can be charged a part of the invoice: in its currency, or with a quote.
    fn payable(&self, member: &Member) -> bool {
        member.currency == self.invoice || self.quote(member.currency).is_some()
    }

    /// The most of the invoice `charge` minor units of `member`'s currency cover.
    fn covers(&self, member: &Member, charge: i64) -> i64 {
        if member.currency == self.invoice {
            return charge;
        }
        self.quote(member.currency)
            .and_then(|q| q.covered_by(charge.max(0)))
            .unwrap_or(0)
    }
}

/// Which members may take an amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Reach {
    /// Every payable member.
    Any,
    /// The payable members of one currency (a `BY_CURRENCY` line).
    Currency(Currency),
}

/// The reach of a `BY_CURRENCY` line of `currency`: its members when an active member holds
/// it, every member when none does and the policy allows conversion, nobody otherwise.
pub fn line_reach(members: &[Member], currency: Currency, allow_conversion: bool) -> Option<Reach> {
    if members.iter().any(|m| m.active && m.currency == currency) {
        Some(Reach::Currency(currency))
    } else if allow_conversion {
        Some(Reach::Any)
    } else {
        None
    }
}

/// One part of an allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// The member's token.
    pub token: String,
    /// The part of the invoice the member covers, positive, in the invoice's currency.
    pub amount: Money,
}

/// The result of an allocation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Allocation {
    /// Positive parts, in member priority order.
    pub parts: Vec<Part>,
    /// What no member could take, in the invoice's currency (only a non-zero amount).
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

impl PolicyError {
    /// True when no member can pay the invoice (or one of its lines): an error of
    /// `invoice.amount.currency_code` or `invoice.lines[i].currency_code`.
    pub fn is_unpayable(&self) -> bool {
        self.field.starts_with("invoice.") && self.field.ends_with("currency_code")
    }
}

fn policy_error(field: impl Into<String>, description: impl Into<String>) -> PolicyError {
    PolicyError {
        field: field.into(),
        description: description.into(),
    }
}

/// Checks `strategy` against the group's `members` and the invoice: weights sum to 10000, every
/// token is a member and appears once, fixed amounts are positive, some active member can pay
/// the invoice (or each `BY_CURRENCY` line). Returns every violation.
pub fn check_policy(
    strategy: &Strategy,
    members: &[Member],
    amount: Money,
    lines: &[Line],
    exchange: &Exchange<'_>,
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
                if line_reach(members, line.currency, exchange.allow_conversion).is_none() {
                    errors.push(policy_error(
                        format!("invoice.lines[{i}].currency_code"),
                        format!(
                            "no active member of the group holds {} and the policy does not \
                             allow conversion",
                            line.currency
                        ),
                    ));
                }
            }
        }
    }
    if !matches!(strategy, Strategy::ByCurrency)
        && !members.iter().any(|m| m.active && exchange.payable(m))
    {
        errors.push(policy_error(
            "invoice.amount.currency_code",
            format!(
                "no active member of the group holds {} or has a rate from it",
                amount.currency
            ),
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
    lines: &[Line],
    members: &[Member],
    strategy: &Strategy,
    fallback: bool,
    exchange: &Exchange<'_>,
) -> Allocation {
    assert_eq!(
        amount.currency, exchange.invoice,
        "an allocation divides an amount in the invoice's currency"
    );
    let ordered = by_priority(members);
    let mut book = Book::new(*exchange);
    let any = Reach::Any;
    match strategy {
        Strategy::ByCurrency => {
            for line in lines {
                let rest = match line_reach(members, line.currency, exchange.allow_conversion) {
                    Some(reach) => fill_in_order(&mut book, &ordered, reach, line.amount, &[]),
                    None => line.amount,
                };
                book.leave_uncovered(rest);
            }
        }
        Strategy::Sequential => {
            let rest = fill_in_order(&mut book, &ordered, any, amount.minor_units, &[]);
            book.leave_uncovered(rest);
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
                .filter(|m| book.eligible(m, any))
                .map(|m| (*m, 1))
                .collect();
            let proposed = split(amount.minor_units, &shares);
            cap_and_spill(&mut book, &ordered, amount, proposed, fallback);
        }
        Strategy::Fixed { amounts, remainder } => {
            let proposed = fixed(&book, amount, &ordered, amounts, *remainder);
            cap_and_spill(&mut book, &ordered, amount, proposed, fallback);
        }
    }
    let allocation = book.finish(&ordered);
    let total = match strategy {
        Strategy::ByCurrency => lines.iter().map(|line| line.amount).sum(),
        _ => amount.minor_units,
    };
    assert_sums(&allocation, total);
    allocation
}

/// Asserts that `allocation`'s parts and what it leaves uncovered sum exactly to the `total` it
/// divided.
fn assert_sums(allocation: &Allocation, total: i64) {
    let given: i64 = allocation
        .parts
        .iter()
        .map(|part| &part.amount)
        .chain(&allocation.uncovered)
        .map(|money| money.minor_units)
        .sum();
    assert_eq!(
        given, total,
        "an allocation's parts and uncovered amount sum to what it divides"
    );
}

/// Moves `amount` not covered (a decline, a partial approval) to the members in `reach` not in
/// `excluded`, in priority order, within what their room leaves after `charged` (what this
/// payment already asks of each, in the member's currency; a member may appear several times).
/// The runtime side of the fallback policy.
pub fn reallocate(
    amount: Money,
    members: &[Member],
    excluded: &[&str],
    charged: &[(String, i64)],
    reach: Reach,
    exchange: &Exchange<'_>,
) -> Allocation {
    let ordered = by_priority(members);
    let mut book = Book::new(*exchange);
    for (token, charge) in charged {
        *book.charged.entry(token.clone()).or_default() += charge;
    }
    let rest = fill_in_order(&mut book, &ordered, reach, amount.minor_units, excluded);
    book.leave_uncovered(rest);
    let allocation = book.finish(&ordered);
    assert_sums(&allocation, amount.minor_units);
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

/// Parts being built, per member, and what stays uncovered.
struct Book<'q> {
    exchange: Exchange<'q>,
    /// Parts, in minor units of the invoice's currency.
    parts: BTreeMap<String, i64>,
    /// What members were asked before this allocation (for [`reallocate`]), in minor units of
    /// each member's currency.
    charged: BTreeMap<String, i64>,
    uncovered: i64,
}

impl<'q> Book<'q> {
    fn new(exchange: Exchange<'q>) -> Book<'q> {
        Book {
            exchange,
            parts: BTreeMap::new(),
            charged: BTreeMap::new(),
            uncovered: 0,
        }
    }

    /// True if `member` may take a part within `reach`: active, payable, with room.
    fn eligible(&self, member: &Member, reach: Reach) -> bool {
        let in_reach = match reach {
            Reach::Any => true,
            Reach::Currency(currency) => member.currency == currency,
        };
        in_reach
            && member.active
            && self.exchange.payable(member)
            && member.room.is_none_or(|room| room > 0)
    }

    /// What `member` can still take in this allocation, in the invoice's currency: what its
    /// room left after earlier charges covers, less its part so far.
    fn room_left(&self, member: &Member) -> i64 {
        let Some(room) = member.room else {
            return i64::MAX;
        };
        let charged = self.charged.get(&member.token).copied().unwrap_or(0);
        let covers = self.exchange.covers(member, (room - charged).max(0));
        let taken = self.parts.get(&member.token).copied().unwrap_or(0);
        (covers - taken).max(0)
    }

    fn add(&mut self, member: &Member, amount: i64) {
        assert!(amount >= 0, "a part is never negative");
        if amount > 0 {
            *self.parts.entry(member.token.clone()).or_default() += amount;
        }
    }

    fn leave_uncovered(&mut self, amount: i64) {
        self.uncovered += amount.max(0);
    }

    fn finish(self, ordered: &[&Member]) -> Allocation {
        let invoice = self.exchange.invoice;
        let parts = ordered
            .iter()
            .filter_map(|m| {
                self.parts
                    .get(&m.token)
                    .filter(|amount| **amount > 0)
                    .map(|amount| Part {
                        token: m.token.clone(),
                        amount: Money::new(invoice, *amount),
                    })
            })
            .collect();
        let uncovered = (self.uncovered > 0)
            .then(|| Money::new(invoice, self.uncovered))
            .into_iter()
            .collect();
        Allocation { parts, uncovered }
    }
}

/// Gives `amount` to the eligible members in `reach` (not in `excluded`) in priority order,
/// each up to its room; returns what is left.
fn fill_in_order(
    book: &mut Book<'_>,
    ordered: &[&Member],
    reach: Reach,
    amount: i64,
    excluded: &[&str],
) -> i64 {
    let mut rest = amount;
    for member in ordered {
        if rest == 0 {
            break;
        }
        if !book.eligible(member, reach) || excluded.contains(&member.token.as_str()) {
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
    book: &Book<'_>,
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
        .filter(|m| book.eligible(m, Reach::Any) && !amounts.iter().any(|a| a.token == m.token))
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
                let take = book.room_left(member).min(rest).max(0);
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
    book: &mut Book<'_>,
    ordered: &[&Member],
    amount: Money,
    proposed: Vec<(&Member, i64)>,
    fallback: bool,
) {
    // What no member was proposed for (no eligible member, a remainder nobody takes) is cut
    // off like a capped part.
    let mut cut = amount.minor_units - proposed.iter().map(|(_, part)| part).sum::<i64>();
    for (member, part) in proposed {
        let take = if book.eligible(member, Reach::Any) {
            part.min(book.room_left(member))
        } else {
            0
        };
        book.add(member, take);
        cut += part - take;
    }
    let rest = if fallback {
        fill_in_order(book, ordered, Reach::Any, cut, &[])
    } else {
        cut
    };
    book.leave_uncovered(rest);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::{Just, any, prop_assert, prop_assert_eq, prop_oneof, proptest};
    use proptest::strategy::Strategy as _;

    fn usd() -> Currency {
        Currency::parse("USD").unwrap()
    }

    fn quote(from: Currency, to: Currency, rate: &str) -> Quote {
        Quote {
            from,
            to,
            rate: rate.parse().unwrap(),
            source: "test".into(),
            as_of: time::OffsetDateTime::UNIX_EPOCH,
        }
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
            let result = allocate(
                Money::new(usd(), amount),
                &[],
                members,
                &strategy,
                fallback,
                &Exchange::none(usd()),
            );
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

        // BY_CURRENCY: each line to its currency's members (the EUR line converted at the
        // quote, within the EUR member's room in euros), a line of a currency nobody holds to
        // every member when conversion is allowed.
        let eur = Currency::parse("EUR").unwrap();
        let gbp = Currency::parse("GBP").unwrap();
        let quotes = [quote(usd(), eur, "0.9238")];
        let mixed = [
            member("a", 1, Some(1000)),
            Member {
                currency: eur,
                ..member("e", 2, Some(1201))
            },
            member("b", 3, None),
        ];
        let lines = [
            Line {
                amount: 1500,
                currency: usd(),
            },
            Line {
                amount: 1400,
                currency: eur,
            },
        ];
        let exchange = Exchange {
            invoice: usd(),
            quotes: &quotes,
            allow_conversion: false,
        };
        let result = allocate(
            Money::new(usd(), 2900),
            &lines,
            &mixed,
            &Strategy::ByCurrency,
            false,
            &exchange,
        );
        assert_eq!(
            amounts(&result),
            pairs(&[("a", 1000), ("e", 1300), ("b", 500)])
        );
        assert_eq!(result.uncovered, [Money::new(usd(), 100)]);
        let pounds = [Line {
            amount: 2000,
            currency: gbp,
        }];
        let converting = Exchange {
            allow_conversion: true,
            ..exchange
        };
        let result = allocate(
            Money::new(usd(), 2000),
            &pounds,
            &mixed,
            &Strategy::ByCurrency,
            false,
            &converting,
        );
        assert_eq!(amounts(&result), pairs(&[("a", 1000), ("e", 1000)]));
        let result = allocate(
            Money::new(usd(), 2000),
            &pounds,
            &mixed,
            &Strategy::ByCurrency,
            false,
            &exchange,
        );
        assert_eq!(result.uncovered, [Money::new(usd(), 2000)]);
        // Other strategies: a member in another currency takes part only with a quote.
        let result = allocate(
            Money::new(usd(), 3000),
            &[],
            &mixed,
            &Strategy::Sequential,
            false,
            &exchange,
        );
        assert_eq!(
            amounts(&result),
            pairs(&[("a", 1000), ("e", 1300), ("b", 700)])
        );
        let result = allocate(
            Money::new(usd(), 3000),
            &[],
            &mixed,
            &Strategy::Sequential,
            false,
            &Exchange::none(usd()),
        );
        assert_eq!(amounts(&result), pairs(&[("a", 1000), ("b", 2000)]));
    }

    /// Invalid policies name the field at fault.
    #[test]
    fn invalid_policies() {
        let group = [member("a", 1, None), member("b", 2, None)];
        let amount = Money::new(usd(), 100);
        let fields = |strategy: Strategy, lines: &[Line]| -> Vec<String> {
            check_policy(&strategy, &group, amount, lines, &Exchange::none(usd()))
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
            fields(
                Strategy::ByCurrency,
                &[Line {
                    amount: 5,
                    currency: eur
                }]
            ),
            ["invoice.lines[0].currency_code"]
        );
        assert_eq!(
            check_policy(
                &Strategy::Sequential,
                &group,
                Money::new(eur, 5),
                &[],
                &Exchange::none(eur)
            )
            .unwrap_err()[0]
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
        let none = Exchange::none(usd());
        let realloc = |amount, members: &[Member], charged: &[(String, i64)]| {
            reallocate(
                Money::new(usd(), amount),
                members,
                &["a"],
                charged,
                Reach::Any,
                &none,
            )
        };
        let already = [("b".to_owned(), 800)];
        let result = realloc(500, &group, &already);
        assert_eq!(amounts(&result), pairs(&[("b", 200), ("c", 300)]));
        // A member carrying two legs has the room both leave.
        let twice = [("b".to_owned(), 300), ("b".to_owned(), 600)];
        let result = realloc(500, &group, &twice);
        assert_eq!(amounts(&result), pairs(&[("b", 100), ("c", 400)]));
        let none_left = realloc(500, &group[..2], &already);
        assert_eq!(amounts(&none_left), pairs(&[("b", 200)]));
        assert_eq!(none_left.uncovered, [Money::new(usd(), 300)]);
    }

    fn arb_members() -> impl proptest::strategy::Strategy<Value = Vec<Member>> {
        arb_members_in(&["USD", "EUR"])
    }

    fn arb_members_in(
        currencies: &'static [&'static str],
    ) -> impl proptest::strategy::Strategy<Value = Vec<Member>> {
        proptest::collection::vec(
            (any::<bool>(), proptest::option::of(0i64..5_000), 0u8..3),
            1..8,
        )
        .prop_map(move |specs| {
            specs
                .into_iter()
                .enumerate()
                .map(|(i, (active, room, currency))| Member {
                    token: format!("tok{i}"),
                    priority: (i as u16) * 3 + 1,
                    currency: Currency::parse(currencies[usize::from(currency) % currencies.len()])
                        .unwrap(),
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
            let none = Exchange::none(usd);
            let result = allocate(Money::new(usd, amount), &[], &members, &strategy, fallback, &none);
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
            let again = allocate(Money::new(usd, amount), &[], &members, &strategy, fallback, &none);
            prop_assert_eq!(again, result);
        }

        /// Across currencies of exponents 0, 2 and 3 at random rates, for any strategy (and
        /// BY_CURRENCY lines of any currency, with or without conversion): the parts and the
        /// uncovered rest cover the invoice exactly in its currency; every part goes to an
        /// active member that is in the invoice's currency, the line's, or has a quote; its
        /// charge in the member's currency (rounded up) is within the member's room and differs
        /// from the exact conversion by less than one minor unit.
        #[test]
        fn allocations_across_currencies_cover_the_invoice_exactly(
            (members, strategy) in arb_members_in(&["JPY", "USD", "BHD"]).prop_flat_map(|members| {
                let tokens = members.iter().map(|m| m.token.clone()).collect();
                (Just(members), arb_strategy(tokens))
            }),
            invoice in 0usize..3,
            rates in proptest::collection::vec((1u64..2_000_000, 0u32..7), 3),
            amount in 0i64..50_000,
            by_currency in any::<bool>(),
            line_currencies in proptest::collection::vec(0usize..4, 1..4),
            allow_conversion in any::<bool>(),
            fallback in any::<bool>(),
        ) {
            let codes = ["JPY", "USD", "BHD", "GBP"];
            let invoice = Currency::parse(codes[invoice]).unwrap();
            let quotes: Vec<Quote> = codes[..3]
                .iter()
                .zip(&rates)
                .map(|(code, (mantissa, scale))| Quote {
                    from: invoice,
                    to: Currency::parse(code).unwrap(),
                    rate: tandem_money::fx::Rate::new(rust_decimal::Decimal::new(
                        *mantissa as i64,
                        *scale,
                    ))
                    .unwrap(),
                    source: "test".into(),
                    as_of: time::OffsetDateTime::UNIX_EPOCH,
                })
                .filter(|q| q.to != invoice)
                .collect();
            let exchange = Exchange { invoice, quotes: &quotes, allow_conversion };
            let (strategy, lines) = if by_currency {
                let share = amount / line_currencies.len() as i64;
                let mut lines: Vec<Line> = line_currencies
                    .iter()
                    .map(|c| Line { amount: share, currency: Currency::parse(codes[*c]).unwrap() })
                    .collect();
                lines[0].amount += amount - share * line_currencies.len() as i64;
                (Strategy::ByCurrency, lines)
            } else {
                (strategy, Vec::new())
            };
            let total = Money::new(invoice, amount);
            let result = allocate(total, &lines, &members, &strategy, fallback, &exchange);
            let parts: i64 = result.parts.iter().map(|p| p.amount.minor_units).sum();
            let uncovered: i64 = result.uncovered.iter().map(|m| m.minor_units).sum();
            prop_assert_eq!(parts + uncovered, amount);
            for part in &result.parts {
                let member = members.iter().find(|m| m.token == part.token).unwrap();
                prop_assert!(part.amount.minor_units > 0);
                prop_assert_eq!(part.amount.currency, invoice);
                prop_assert!(member.active);
                let charge = if member.currency == invoice {
                    part.amount.minor_units
                } else {
                    let quote = exchange.quote(member.currency);
                    prop_assert!(quote.is_some());
                    let conversion = quote.unwrap().convert(part.amount.minor_units).unwrap();
                    prop_assert!((0..=1).contains(&conversion.rounding));
                    conversion.charge
                };
                if let Some(room) = member.room {
                    prop_assert!(charge <= room, "{} > room {}", charge, room);
                }
                if by_currency {
                    let in_line = lines.iter().any(|l| l.currency == member.currency);
                    prop_assert!(in_line || allow_conversion);
                }
            }
            let again = allocate(total, &lines, &members, &strategy, fallback, &exchange);
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
            let already: Vec<(String, i64)> = members
                .iter()
                .take(1)
                .map(|m| (m.token.clone(), already_amount))
                .collect();
            let none = Exchange::none(usd);
            let result =
                reallocate(Money::new(usd, amount), &members, &excluded, &already, Reach::Any, &none);
            let parts: i64 = result.parts.iter().map(|p| p.amount.minor_units).sum();
            let uncovered: i64 = result.uncovered.iter().map(|m| m.minor_units).sum();
            prop_assert_eq!(parts + uncovered, amount);
            for part in &result.parts {
                let member = members.iter().find(|m| m.token == part.token).unwrap();
                prop_assert!(!excluded.contains(&part.token.as_str()));
                prop_assert!(member.active && member.currency == usd);
                let carried = already.iter().find(|p| p.0 == part.token).map_or(0, |p| p.1);
                if let Some(room) = member.room {
                    prop_assert!(part.amount.minor_units + carried <= room.max(carried));
                }
            }
        }
    }
}
