//! Payment planning: the legs a new payment charges, from its card group's members, the policy
//! in force and the invoice.
//!
//! Pure and deterministic. Each member's room is worked out at the payment's creation time
//! (ceiling windows applied, month-to-date spend taken off), the policy is checked against
//! those members and the invoice, and the allocation's parts become the saga's legs, each
//! PENDING. What no member could take stays uncovered: the saga reallocates or completes
//! partially by the policy's fallback and completion rules.
//!
//! A payment converts with the quotes it is planned with ([`conversions_needed`] says which
//! pairs the caller must fetch first); they are kept in the saga, so the legs never change with
//! later rates.

use tandem_money::{Currency, Money};
use time::OffsetDateTime;

use super::allocation::{Exchange, Line, PolicyError, Strategy, allocate, check_policy};
use super::fx::Quote;
use super::group::{CeilingWindow, MemberRules, Policy, limits_at, member_at};
use super::record::MemberSnapshot;
use super::saga::{Leg, LegState, Payment, PaymentState, Reallocation};

/// An invoice as a payment pays it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invoice {
    /// The caller's invoice id.
    pub id: String,
    /// The amount, positive.
    pub amount: Money,
    /// The cost center, for bookings of members without their own.
    pub cost_center: Option<String>,
    /// Lines, their amounts (in the invoice's currency) summing to `amount` when given
    /// (`BY_CURRENCY` divides them by their cards' currency).
    pub lines: Vec<Line>,
}

/// A new payment's plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The saga in state PENDING: one PENDING leg per allocated part (in member priority
    /// order), the members as allocation saw them, and the policy's rules.
    pub saga: Payment,
    /// What no member could take, per currency (only non-zero amounts).
    pub uncovered: Vec<Money>,
}

/// The currencies a payment of `invoice` under `policy` may convert the invoice's currency
/// into (sorted, without the invoice's): those of the active members that can take a part.
/// Under `BY_CURRENCY` without conversion, only the lines' currencies that members hold.
pub fn conversions_needed(
    members: &[MemberRules],
    policy: &Policy,
    invoice: &Invoice,
) -> Vec<Currency> {
    let own = invoice.amount.currency;
    let held = |currency: Currency| members.iter().any(|m| m.active && m.currency == currency);
    let mut needed: Vec<Currency> = match policy.strategy {
        Strategy::ByCurrency if !policy.allow_conversion => invoice
            .lines
            .iter()
            .map(|line| line.currency)
            .filter(|currency| held(*currency))
            .collect(),
        _ => members
            .iter()
            .filter(|m| m.active)
            .map(|m| m.currency)
            .collect(),
    };
    needed.retain(|currency| *currency != own);
    needed.sort_unstable();
    needed.dedup();
    needed
}

/// Plans a payment of `invoice` from the group's `members` under `policy` at `now`, after
/// `month_to_date(member)` minor units of each member's spend this calendar month, converting
/// with `quotes` (from the invoice's currency; [`conversions_needed`] says which).
///
/// Fails with the policy's violations against these members and this invoice (fields under
/// `policy.` and `invoice.`, as [`check_policy`] names them).
pub fn plan(
    members: &[MemberRules],
    policy: &Policy,
    invoice: &Invoice,
    month_to_date: impl Fn(&MemberRules) -> i64,
    now: OffsetDateTime,
    quotes: Vec<Quote>,
) -> Result<Plan, Vec<PolicyError>> {
    let members: Vec<_> = members
        .iter()
        .map(|rules| member_at(rules, &policy.windows, now, month_to_date(rules)))
        .collect();
    let exchange = Exchange {
        invoice: invoice.amount.currency,
        quotes: &quotes,
        allow_conversion: policy.allow_conversion,
    };
    check_policy(
        &policy.strategy,
        &members,
        invoice.amount,
        &invoice.lines,
        &exchange,
    )?;
    // Every part is at most the invoice: it converts if the whole invoice does.
    let too_large: Vec<PolicyError> = quotes
        .iter()
        .filter(|quote| quote.convert(invoice.amount.minor_units).is_none())
        .map(|quote| PolicyError {
            field: "invoice.amount.minor_units".into(),
            description: format!(
                "is too large to convert to {} at the rate {}",
                quote.to, quote.rate
            ),
        })
        .collect();
    if !too_large.is_empty() {
        return Err(too_large);
    }
    let allocation = allocate(
        invoice.amount,
        &invoice.lines,
        &members,
        &policy.strategy,
        policy.fallback,
        &exchange,
    );
    let legs: Vec<Leg> = allocation
        .parts
        .iter()
        .map(|part| Leg {
            token: part.token.clone(),
            amount: part.amount.minor_units,
            approved: 0,
            held: 0,
            state: LegState::Pending,
            attempts: 0,
        })
        .collect();
    let planned: i64 = legs.iter().map(|leg| leg.amount).sum();
    let uncovered: i64 = allocation.uncovered.iter().map(|m| m.minor_units).sum();
    assert_eq!(
        planned + uncovered,
        invoice.amount.minor_units,
        "the legs and what stays uncovered must sum to the invoice amount"
    );
    assert!(
        legs.iter().all(|leg| leg.amount > 0),
        "every leg charges a positive amount"
    );
    let saga = Payment {
        state: PaymentState::Pending,
        currency: invoice.amount.currency,
        amount: invoice.amount.minor_units,
        legs,
        members,
        fallback: policy.fallback,
        attempts_max: policy.attempts_max,
        completion: policy.completion,
        dispatch: policy.dispatch(),
        stopped: false,
        reallocation: match policy.strategy {
            Strategy::ByCurrency => Reallocation::SameCurrency {
                then_any: policy.allow_conversion,
            },
            _ => Reallocation::Any,
        },
        quotes,
        review: false,
    };
    Ok(Plan {
        saga,
        uncovered: allocation.uncovered,
    })
}

/// The members as a payment keeps them: labels, cost centers, the monthly limit in force at
/// `now` (`windows` applied) and the last four digits the group knows (`last4(token)`).
pub fn snapshots(
    members: &[MemberRules],
    windows: &[CeilingWindow],
    now: OffsetDateTime,
    last4: impl Fn(&str) -> String,
) -> Vec<MemberSnapshot> {
    members
        .iter()
        .map(|m| {
            let (_, per_month) = limits_at(m, windows, now);
            MemberSnapshot {
                token: m.token.clone(),
                label: m.label.clone(),
                priority: m.priority,
                cost_center: m.cost_center.clone(),
                limit_per_month: per_month,
                last4: last4(&m.token),
            }
        })
        .collect()
}
