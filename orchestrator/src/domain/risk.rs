//! Risk (DESIGN section 12): a billing account's policy, the features a payment is assessed
//! against, and the assessment itself, which names every rule that fired with what it saw.
//!
//! Features are kept by the orchestrator in the transactions that record payments (storage
//! counts payments and declines per card, card group and billing account in minute and hour
//! buckets), so a crash can neither skip nor double-count one. A window is whole buckets: 10
//! minutes is the current minute and the 9 before it, 1 hour the current minute and the 59
//! before, 24 hours the current hour and the 23 before ([`Window::start`]). The assessment here
//! is a pure function of the policy, the features read before the payment and the payment:
//! the payment itself counts in its velocity windows; its declines are yet to come.

use serde::{Deserialize, Serialize};
use tandem_money::{Currency, Money};
use time::OffsetDateTime;

use super::actor::Actor;

/// What a rule, or an assessment, decides; ordered from the mildest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Action {
    /// Go on (a rule only adds its score).
    Allow,
    /// Authorize, then wait for a reviewer before capture.
    Review,
    /// Refuse before any card is sent to the vault.
    Block,
}

/// What a velocity or decline rule counts over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Scope {
    /// Each card the payment plans to charge, apart.
    Card,
    /// The payment's card group.
    Group,
    /// The payment's billing account.
    Account,
}

impl Scope {
    /// The scope's name in feature names.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Card => "card",
            Scope::Group => "card_group",
            Scope::Account => "billing_account",
        }
    }
}

/// The windows features are kept over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Window {
    /// The current minute and the 9 before.
    TenMinutes,
    /// The current minute and the 59 before.
    Hour,
    /// The current hour and the 23 before.
    Day,
}

impl Window {
    /// Every window, in [`Tally`] order.
    pub const ALL: [Window; 3] = [Window::TenMinutes, Window::Hour, Window::Day];

    /// The window of `seconds`, if it is one of the three kept.
    pub fn of_seconds(seconds: i64) -> Option<Window> {
        match seconds {
            600 => Some(Window::TenMinutes),
            3_600 => Some(Window::Hour),
            86_400 => Some(Window::Day),
            _ => None,
        }
    }

    /// Its length in seconds.
    pub fn seconds(self) -> i64 {
        match self {
            Window::TenMinutes => 600,
            Window::Hour => 3_600,
            Window::Day => 86_400,
        }
    }

    /// Its name in feature names.
    pub fn as_str(self) -> &'static str {
        match self {
            Window::TenMinutes => "10m",
            Window::Hour => "1h",
            Window::Day => "24h",
        }
    }

    fn index(self) -> usize {
        match self {
            Window::TenMinutes => 0,
            Window::Hour => 1,
            Window::Day => 2,
        }
    }

    /// The first bucket counted at `now`, and the span of its buckets.
    pub fn start(self, now: OffsetDateTime) -> (Span, OffsetDateTime) {
        let minute = Span::Minute.bucket(now);
        match self {
            Window::TenMinutes => (Span::Minute, minute - time::Duration::minutes(9)),
            Window::Hour => (Span::Minute, minute - time::Duration::minutes(59)),
            Window::Day => (
                Span::Hour,
                Span::Hour.bucket(now) - time::Duration::hours(23),
            ),
        }
    }
}

/// The buckets features are counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Span {
    /// Per minute (kept an hour).
    Minute,
    /// Per hour (kept a day).
    Hour,
}

impl Span {
    /// Both spans.
    pub const ALL: [Span; 2] = [Span::Minute, Span::Hour];

    /// The start of `time`'s bucket.
    pub fn bucket(self, time: OffsetDateTime) -> OffsetDateTime {
        let seconds = time.unix_timestamp();
        let length = match self {
            Span::Minute => 60,
            Span::Hour => 3_600,
        };
        OffsetDateTime::from_unix_timestamp(seconds - seconds.rem_euclid(length))
            .expect("a bucket start is a valid time")
    }

    /// Its name in storage.
    pub fn as_str(self) -> &'static str {
        match self {
            Span::Minute => "m",
            Span::Hour => "h",
        }
    }

    /// How long its buckets are kept: the longest window counted in them.
    pub fn kept(self) -> time::Duration {
        match self {
            Span::Minute => time::Duration::hours(1),
            Span::Hour => time::Duration::hours(24),
        }
    }
}

/// What a velocity rule's limit is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Limit {
    /// Fires when more payments than this.
    Count(i64),
    /// Fires when the sum of the payments in `currency` is more than `max` minor units.
    Sum {
        /// The currency summed.
        currency: Currency,
        /// The most, in minor units.
        max: i64,
    },
}

/// What a rule looks at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RuleKind {
    /// Payments over a window.
    Velocity {
        /// Counted per.
        scope: Scope,
        /// Over.
        window: Window,
        /// Fires above.
        limit: Limit,
    },
    /// The amount against the account's trailing median.
    AmountOverMedian {
        /// Fires above `multiple_bp / 10000` times the median.
        multiple_bp: u32,
        /// Payments needed before it applies.
        history_min: u32,
    },
    /// A card charged for the first time.
    FirstCardUse,
    /// Declines over a window.
    DeclineBurst {
        /// Counted per.
        scope: Scope,
        /// Over.
        window: Window,
        /// Fires above.
        count_max: i64,
    },
    /// Outside the policy's business hours.
    OutsideBusinessHours,
}

/// A rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// Unique in its policy.
    pub name: String,
    /// What it decides when it fires.
    pub action: Action,
    /// What it adds to the score when it fires.
    pub score: u32,
    /// What it looks at.
    pub kind: RuleKind,
}

/// The hours an account works.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BusinessHours {
    /// An IANA time zone (checked when the policy is set).
    pub time_zone: String,
    /// The first working hour, inclusive.
    pub start_hour: u8,
    /// The hour work ends, exclusive (24 for midnight).
    pub end_hour: u8,
    /// ISO 8601 weekdays (1 Monday ... 7 Sunday), sorted.
    pub weekdays: Vec<u8>,
}

/// Most rules a policy holds.
pub const RULES_MAX: usize = 32;

/// Payments of an account's history the median is taken over (`risk_record_payment`, migration
/// 0009, keeps this many).
pub const HISTORY_MAX: usize = 100;

/// How long a card's last use is remembered for [`RuleKind::FirstCardUse`].
pub const CARD_MEMORY_DAYS: i64 = 35;

/// A billing account's policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// The rules, in order.
    pub rules: Vec<Rule>,
    /// A score at or over this is reviewed; 0 never.
    pub review_score: u32,
    /// A score at or over this is blocked; 0 never.
    pub block_score: u32,
    /// For [`RuleKind::OutsideBusinessHours`].
    pub business_hours: Option<BusinessHours>,
}

impl Policy {
    /// The policy of an account that has none of its own (documented in `docs/risk.md`): it
    /// reviews only an amount far above the account's usual, scores the rest for people to see,
    /// and blocks nothing, so that turning risk on stops no ordinary payment (a card that
    /// declines often is common under fallback, and is flagged, not held).
    pub fn default_policy() -> Policy {
        Policy {
            rules: vec![
                Rule {
                    name: "amount_over_10x_median".into(),
                    action: Action::Review,
                    score: 50,
                    kind: RuleKind::AmountOverMedian {
                        multiple_bp: 100_000,
                        history_min: 20,
                    },
                },
                Rule {
                    name: "card_decline_burst".into(),
                    action: Action::Allow,
                    score: 40,
                    kind: RuleKind::DeclineBurst {
                        scope: Scope::Card,
                        window: Window::TenMinutes,
                        count_max: 20,
                    },
                },
                Rule {
                    name: "account_payments_per_10m".into(),
                    action: Action::Allow,
                    score: 20,
                    kind: RuleKind::Velocity {
                        scope: Scope::Account,
                        window: Window::TenMinutes,
                        limit: Limit::Count(10_000),
                    },
                },
                Rule {
                    name: "first_card_use".into(),
                    action: Action::Allow,
                    score: 10,
                    kind: RuleKind::FirstCardUse,
                },
            ],
            review_score: 0,
            block_score: 0,
            business_hours: None,
        }
    }

    /// True when the policy reads no feature (it has no rule).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// A policy as stored for an account (or the default, version 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPolicy {
    /// The policy.
    pub policy: Policy,
    /// 1 for the first set, one more per change; 0 for the default.
    pub version: i64,
    /// When it was set.
    pub update_time: Option<OffsetDateTime>,
    /// Who set it.
    pub updater: Option<Actor>,
}

impl StoredPolicy {
    /// The default policy, for an account without one.
    pub fn default_for_account() -> StoredPolicy {
        StoredPolicy {
            policy: Policy::default_policy(),
            version: 0,
            update_time: None,
            updater: None,
        }
    }
}

/// Payments and declines over each window ([`Window::ALL`] order), before the payment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Payments (every currency).
    pub payments: [i64; 3],
    /// Their sum in the payment's currency.
    pub amount: [i64; 3],
    /// Declines.
    pub declines: [i64; 3],
}

/// A card the payment plans to charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedCard {
    /// Its token.
    pub token: String,
    /// How people know it ("card A ·4242").
    pub label: String,
    /// The part of the invoice planned on it.
    pub amount: i64,
}

/// What storage keeps, read before the payment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Features {
    /// The billing account's.
    pub account: Tally,
    /// The card group's.
    pub group: Tally,
    /// Per planned card (by token).
    pub cards: Vec<(String, Tally)>,
    /// The planned cards charged before (within [`CARD_MEMORY_DAYS`]).
    pub used_cards: Vec<String>,
    /// The account's last payments in the payment's currency, at most [`HISTORY_MAX`].
    pub history: Vec<i64>,
}

/// The payment being assessed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    /// Its billing account.
    pub billing_account_id: String,
    /// Its card group.
    pub card_group_id: String,
    /// The invoice amount.
    pub amount: Money,
    /// The cards it plans to charge, each once.
    pub cards: Vec<PlannedCard>,
    /// When it is assessed.
    pub now: OffsetDateTime,
}

/// A rule that fired, with what it saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fired {
    /// The rule's name.
    pub rule: String,
    /// Its action.
    pub action: Action,
    /// Its score.
    pub score: u32,
    /// The feature ("billing_account.payments.10m").
    pub feature: String,
    /// The feature's value.
    pub value: String,
    /// The limit crossed.
    pub threshold: String,
    /// One line for people.
    pub explanation: String,
}

/// A payment's assessment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assessment {
    /// The decision.
    pub action: Action,
    /// The fired rules' scores, summed.
    pub score: u32,
    /// Every rule that fired, in policy order.
    pub fired: Vec<Fired>,
    /// The policy's version (0 for the default).
    pub policy_version: i64,
    /// The account had no policy of its own.
    pub default_policy: bool,
    /// When.
    pub assess_time: OffsetDateTime,
}

impl Assessment {
    /// One line for people: "risk REVIEW, score 60: amount_over_median (...)".
    pub fn summary(&self) -> String {
        let action = match self.action {
            Action::Allow => "ALLOW",
            Action::Review => "REVIEW",
            Action::Block => "BLOCK",
        };
        if self.fired.is_empty() {
            return format!("risk {action}, score 0: no rule fired");
        }
        let fired: Vec<String> = self
            .fired
            .iter()
            .map(|f| format!("{} ({})", f.rule, f.explanation))
            .collect();
        format!("risk {action}, score {}: {}", self.score, fired.join("; "))
    }
}

/// Assesses `subject` under `stored`, from `features` read before it.
pub fn assess(stored: &StoredPolicy, features: &Features, subject: &Subject) -> Assessment {
    let policy = &stored.policy;
    let mut fired = Vec::new();
    for rule in &policy.rules {
        if let Some(mut seen) = look(rule, policy, features, subject) {
            seen.rule.clone_from(&rule.name);
            fired.push(seen);
        }
    }
    let score = fired
        .iter()
        .fold(0u32, |total, f| total.saturating_add(f.score));
    let mut action = fired
        .iter()
        .map(|f| f.action)
        .max()
        .unwrap_or(Action::Allow);
    if policy.review_score > 0 && score >= policy.review_score {
        action = action.max(Action::Review);
    }
    if policy.block_score > 0 && score >= policy.block_score {
        action = Action::Block;
    }
    Assessment {
        action,
        score,
        fired,
        policy_version: stored.version,
        default_policy: stored.version == 0,
        assess_time: subject.now,
    }
}

/// What `rule` sees of the payment: `Some` when it fires (the rule's name is filled in by the
/// caller).
fn look(rule: &Rule, policy: &Policy, features: &Features, subject: &Subject) -> Option<Fired> {
    let fire = |feature: String, value: String, threshold: String, explanation: String| Fired {
        rule: String::new(),
        action: rule.action,
        score: rule.score,
        feature,
        value,
        threshold,
        explanation,
    };
    let currency = subject.amount.currency;
    match &rule.kind {
        RuleKind::Velocity {
            scope,
            window,
            limit,
        } => {
            let w = window.index();
            // The payment itself counts: with the part planned on the card for a card.
            tallies(*scope, features, subject).find_map(|(who, tally, part)| {
                let (measure, value, threshold, over) = match limit {
                    Limit::Count(max) => {
                        let count = tally.payments[w].saturating_add(1);
                        ("payments", count.to_string(), max.to_string(), count > *max)
                    }
                    Limit::Sum { currency: of, max } if *of == currency => {
                        let sum = tally.amount[w].saturating_add(part);
                        let over = sum > *max;
                        let (sum, max) = (Money::new(currency, sum), Money::new(currency, *max));
                        ("amount", sum.to_string(), max.to_string(), over)
                    }
                    Limit::Sum { .. } => return None,
                };
                over.then(|| {
                    let explanation = format!(
                        "{measure} of {who} over {}: {value}, more than {threshold}",
                        window.as_str()
                    );
                    let feature = format!("{}.{measure}.{}", scope.as_str(), window.as_str());
                    fire(feature, value, threshold, explanation)
                })
            })
        }
        RuleKind::DeclineBurst {
            scope,
            window,
            count_max,
        } => {
            let w = window.index();
            tallies(*scope, features, subject).find_map(|(who, tally, _)| {
                let declines = tally.declines[w];
                (declines > *count_max).then(|| {
                    fire(
                        format!("{}.declines.{}", scope.as_str(), window.as_str()),
                        declines.to_string(),
                        count_max.to_string(),
                        format!(
                            "declines of {who} over {}: {declines}, more than {count_max}",
                            window.as_str()
                        ),
                    )
                })
            })
        }
        RuleKind::AmountOverMedian {
            multiple_bp,
            history_min,
        } => {
            if features.history.len() < *history_min as usize || features.history.is_empty() {
                return None;
            }
            let median = median(&features.history);
            let amount = subject.amount.minor_units;
            // amount > multiple x median, in exact integers.
            let over = i128::from(amount) * 10_000 > i128::from(*multiple_bp) * i128::from(median);
            over.then(|| {
                let multiple = multiple_text(*multiple_bp);
                let median = Money::new(currency, median);
                fire(
                    "billing_account.median_amount".into(),
                    subject.amount.to_string(),
                    format!("{multiple} x {median}"),
                    format!(
                        "{} is more than {multiple} times the median {median} of the \
                         account's last {} payments",
                        subject.amount,
                        features.history.len()
                    ),
                )
            })
        }
        RuleKind::FirstCardUse => {
            let new: Vec<&PlannedCard> = subject
                .cards
                .iter()
                .filter(|c| !features.used_cards.contains(&c.token))
                .collect();
            (!new.is_empty()).then(|| {
                let labels: Vec<&str> = new.iter().map(|c| c.label.as_str()).collect();
                fire(
                    "card.first_use".into(),
                    labels.join(", "),
                    "charged before".into(),
                    format!("first use of {}", labels.join(", ")),
                )
            })
        }
        RuleKind::OutsideBusinessHours => {
            let hours = policy.business_hours.as_ref()?;
            let local = local_time(hours, subject.now);
            let inside = local.as_ref().is_some_and(|(weekday, hour, _)| {
                hours.weekdays.contains(weekday)
                    && *hour >= hours.start_hour
                    && *hour < hours.end_hour
            });
            (!inside).then(|| {
                let value = match local {
                    Some((weekday, hour, minute)) => format!(
                        "{} {hour:02}:{minute:02} {}",
                        weekday_name(weekday),
                        hours.time_zone
                    ),
                    None => format!("unknown time zone {}", hours.time_zone),
                };
                let threshold = business_hours_text(hours);
                fire(
                    "local_time".into(),
                    value.clone(),
                    threshold.clone(),
                    format!("created {value}, outside business hours {threshold}"),
                )
            })
        }
    }
}

/// The tallies `scope` counts the payment in: who (for people), the tally, and the payment's
/// part in it.
fn tallies<'a>(
    scope: Scope,
    features: &'a Features,
    subject: &'a Subject,
) -> Box<dyn Iterator<Item = (String, Tally, i64)> + 'a> {
    let amount = subject.amount.minor_units;
    match scope {
        Scope::Account => Box::new(std::iter::once((
            format!("billing account {}", subject.billing_account_id),
            features.account,
            amount,
        ))),
        Scope::Group => Box::new(std::iter::once((
            format!("card group {}", subject.card_group_id),
            features.group,
            amount,
        ))),
        Scope::Card => Box::new(subject.cards.iter().map(|card| {
            let tally = features
                .cards
                .iter()
                .find(|(token, _)| *token == card.token)
                .map(|(_, tally)| *tally)
                .unwrap_or_default();
            (card.label.clone(), tally, card.amount)
        })),
    }
}

/// The median of `amounts` (not empty): the lower of the two middle values for an even count,
/// so that it is always an amount the account paid.
pub fn median(amounts: &[i64]) -> i64 {
    assert!(!amounts.is_empty(), "a median needs amounts");
    let mut sorted = amounts.to_vec();
    sorted.sort_unstable();
    sorted[(sorted.len() - 1) / 2]
}

/// `multiple_bp` ten-thousandths as a decimal ("2.5").
pub fn multiple_text(multiple_bp: u32) -> String {
    let whole = multiple_bp / 10_000;
    let fraction = multiple_bp % 10_000;
    if fraction == 0 {
        return whole.to_string();
    }
    let digits = format!("{fraction:04}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

/// The weekday (ISO number), hour and minute of `now` in the hours' time zone; `None` if the
/// time zone is unknown (a policy is checked when set, so only after a time zone is retired).
fn local_time(hours: &BusinessHours, now: OffsetDateTime) -> Option<(u8, u8, u8)> {
    let zone = jiff::tz::TimeZone::get(&hours.time_zone).ok()?;
    let timestamp = jiff::Timestamp::from_second(now.unix_timestamp()).ok()?;
    let local = timestamp.to_zoned(zone);
    let weekday = u8::try_from(local.weekday().to_monday_one_offset()).ok()?;
    let hour = u8::try_from(local.hour()).ok()?;
    let minute = u8::try_from(local.minute()).ok()?;
    Some((weekday, hour, minute))
}

/// True when `name` is a time zone the assessment knows.
pub fn is_time_zone(name: &str) -> bool {
    jiff::tz::TimeZone::get(name).is_ok()
}

fn weekday_name(weekday: u8) -> &'static str {
    ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
        .get(usize::from(weekday).wrapping_sub(1))
        .copied()
        .unwrap_or("?")
}

/// "Mon-Fri 09:00-18:00 Europe/Berlin" (days listed when not a run).
pub fn business_hours_text(hours: &BusinessHours) -> String {
    let days = match hours.weekdays.as_slice() {
        [] => String::new(),
        [one] => weekday_name(*one).to_owned(),
        [first, .., last] if usize::from(last - first) + 1 == hours.weekdays.len() => {
            format!("{}-{}", weekday_name(*first), weekday_name(*last))
        }
        days => days
            .iter()
            .map(|d| weekday_name(*d))
            .collect::<Vec<_>>()
            .join(","),
    };
    format!(
        "{days} {:02}:00-{:02}:00 {}",
        hours.start_hour, hours.end_hour, hours.time_zone
    )
}

/// What a payment adds to the features, recorded with it: per scope key and bucket, payments,
/// their sum and declines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Count {
    /// [`Scope`].
    pub scope: Scope,
    /// The account, group or token.
    pub key: String,
    /// The bucket's span.
    pub span: Span,
    /// The bucket's start.
    pub bucket: OffsetDateTime,
    /// The payments' currency; `None` for declines.
    pub currency: Option<Currency>,
    /// Payments.
    pub payments: i64,
    /// Their sum.
    pub amount: i64,
    /// Declines.
    pub declines: i64,
}

/// The counts a new payment adds: one payment, with its amount, to its account and group, and
/// to each planned card with its part; in every span.
pub fn payment_counts(subject: &Subject) -> Vec<Count> {
    let mut counts = Vec::new();
    let currency = Some(subject.amount.currency);
    let amount = subject.amount.minor_units;
    for span in Span::ALL {
        let bucket = span.bucket(subject.now);
        let mut add = |scope, key: &str, amount| {
            counts.push(Count {
                scope,
                key: key.to_owned(),
                span,
                bucket,
                currency,
                payments: 1,
                amount,
                declines: 0,
            });
        };
        add(Scope::Account, &subject.billing_account_id, amount);
        add(Scope::Group, &subject.card_group_id, amount);
        for card in &subject.cards {
            add(Scope::Card, &card.token, card.amount);
        }
    }
    counts
}

/// The counts of `declines` declines of card `token` in a payment of `account` and `group`.
pub fn decline_counts(
    account: &str,
    group: &str,
    tokens: &[&str],
    now: OffsetDateTime,
) -> Vec<Count> {
    let mut counts: Vec<Count> = Vec::new();
    if tokens.is_empty() {
        return counts;
    }
    for span in Span::ALL {
        let bucket = span.bucket(now);
        let keys = [(Scope::Account, account), (Scope::Group, group)]
            .into_iter()
            .map(|(scope, key)| (scope, key, tokens.len() as i64))
            .chain(tokens.iter().map(|token| (Scope::Card, *token, 1)));
        for (scope, key, declines) in keys {
            match counts
                .iter_mut()
                .find(|c| c.scope == scope && c.key == key && c.span == span)
            {
                Some(count) => count.declines += declines,
                None => counts.push(Count {
                    scope,
                    key: key.to_owned(),
                    span,
                    bucket,
                    currency: None,
                    payments: 0,
                    amount: 0,
                    declines,
                }),
            }
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd(minor_units: i64) -> Money {
        Money::new(Currency::parse("USD").unwrap(), minor_units)
    }

    fn usd_sum(max: i64) -> Limit {
        Limit::Sum {
            currency: Currency::parse("USD").unwrap(),
            max,
        }
    }

    /// Tuesday 2026-12-01 14:30:00 UTC.
    fn tuesday_afternoon() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_796_135_400).unwrap()
    }

    fn subject(amount: i64, now: OffsetDateTime) -> Subject {
        Subject {
            billing_account_id: "acme".into(),
            card_group_id: "cg_1".into(),
            amount: usd(amount),
            cards: vec![
                PlannedCard {
                    token: "tok_a".into(),
                    label: "card A ·4242".into(),
                    amount: amount - amount / 4,
                },
                PlannedCard {
                    token: "tok_b".into(),
                    label: "card B ·1881".into(),
                    amount: amount / 4,
                },
            ],
            now,
        }
    }

    fn rule(kind: RuleKind) -> Rule {
        Rule {
            name: "r".into(),
            action: Action::Review,
            score: 10,
            kind,
        }
    }

    fn policy(rules: Vec<Rule>) -> StoredPolicy {
        StoredPolicy {
            policy: Policy {
                rules,
                review_score: 0,
                block_score: 0,
                business_hours: Some(BusinessHours {
                    time_zone: "Europe/Berlin".into(),
                    start_hour: 9,
                    end_hour: 18,
                    weekdays: vec![1, 2, 3, 4, 5],
                }),
            },
            version: 3,
            update_time: None,
            updater: None,
        }
    }

    fn tally(window: Window, payments: i64, amount: i64, declines: i64) -> Tally {
        let mut tally = Tally::default();
        tally.payments[window.index()] = payments;
        tally.amount[window.index()] = amount;
        tally.declines[window.index()] = declines;
        tally
    }

    /// One case: a rule, the features before the payment, the payment's amount and time, and
    /// whether the rule fires (with the value it reports).
    struct Case {
        name: &'static str,
        kind: RuleKind,
        features: Features,
        amount: i64,
        now: OffsetDateTime,
        fires: Option<&'static str>,
    }

    fn check(case: Case) {
        let stored = policy(vec![rule(case.kind)]);
        let assessment = assess(&stored, &case.features, &subject(case.amount, case.now));
        let value = assessment.fired.first().map(|f| f.value.as_str());
        assert_eq!(value, case.fires, "{}", case.name);
        let expected = if case.fires.is_some() {
            Action::Review
        } else {
            Action::Allow
        };
        assert_eq!(assessment.action, expected, "{}", case.name);
        assert_eq!(assessment.score, if case.fires.is_some() { 10 } else { 0 });
    }

    #[test]
    fn each_rule_fires_exactly_when_its_threshold_is_crossed() {
        let now = tuesday_afternoon();
        let velocity = |scope, window, limit| RuleKind::Velocity {
            scope,
            window,
            limit,
        };
        let account = |t| Features {
            account: t,
            ..Features::default()
        };
        let cases = vec![
            // The payment itself counts: 9 before + 1 = 10, not more than 10.
            Case {
                name: "account count at its limit",
                kind: velocity(Scope::Account, Window::TenMinutes, Limit::Count(10)),
                features: account(tally(Window::TenMinutes, 9, 0, 0)),
                amount: 100,
                now,
                fires: None,
            },
            Case {
                name: "account count over its limit",
                kind: velocity(Scope::Account, Window::TenMinutes, Limit::Count(10)),
                features: account(tally(Window::TenMinutes, 10, 0, 0)),
                amount: 100,
                now,
                fires: Some("11"),
            },
            Case {
                name: "another window's count does not count",
                kind: velocity(Scope::Account, Window::Hour, Limit::Count(10)),
                features: account(tally(Window::TenMinutes, 50, 0, 0)),
                amount: 100,
                now,
                fires: None,
            },
            Case {
                name: "group sum at its limit",
                kind: velocity(Scope::Group, Window::Day, usd_sum(10_000)),
                features: Features {
                    group: tally(Window::Day, 3, 9_000, 0),
                    ..Features::default()
                },
                amount: 1_000,
                now,
                fires: None,
            },
            Case {
                name: "group sum over its limit",
                kind: velocity(Scope::Group, Window::Day, usd_sum(10_000)),
                features: Features {
                    group: tally(Window::Day, 3, 9_000, 0),
                    ..Features::default()
                },
                amount: 1_001,
                now,
                fires: Some("100.01 USD"),
            },
            Case {
                name: "a sum in another currency is not this rule's",
                kind: velocity(
                    Scope::Group,
                    Window::Day,
                    Limit::Sum {
                        currency: Currency::parse("EUR").unwrap(),
                        max: 0,
                    },
                ),
                features: Features::default(),
                amount: 1_001,
                now,
                fires: None,
            },
            Case {
                name: "card count over its limit on one card",
                kind: velocity(Scope::Card, Window::Hour, Limit::Count(2)),
                features: Features {
                    cards: vec![("tok_b".into(), tally(Window::Hour, 2, 0, 0))],
                    ..Features::default()
                },
                amount: 400,
                now,
                fires: Some("3"),
            },
            // Card A is planned 3.00, card B 1.00 (with 2.00 before): each at the limit.
            Case {
                name: "card sum counts the card's part only",
                kind: velocity(Scope::Card, Window::Hour, usd_sum(300)),
                features: Features {
                    cards: vec![("tok_b".into(), tally(Window::Hour, 1, 200, 0))],
                    ..Features::default()
                },
                amount: 400,
                now,
                fires: None,
            },
            Case {
                name: "card sum over its limit on one card",
                kind: velocity(Scope::Card, Window::Hour, usd_sum(300)),
                features: Features {
                    cards: vec![("tok_b".into(), tally(Window::Hour, 1, 201, 0))],
                    ..Features::default()
                },
                amount: 400,
                now,
                fires: Some("3.01 USD"),
            },
            Case {
                name: "declines at their limit",
                kind: RuleKind::DeclineBurst {
                    scope: Scope::Card,
                    window: Window::TenMinutes,
                    count_max: 3,
                },
                features: Features {
                    cards: vec![("tok_a".into(), tally(Window::TenMinutes, 0, 0, 3))],
                    ..Features::default()
                },
                amount: 100,
                now,
                fires: None,
            },
            Case {
                name: "declines over their limit",
                kind: RuleKind::DeclineBurst {
                    scope: Scope::Account,
                    window: Window::TenMinutes,
                    count_max: 3,
                },
                features: account(tally(Window::TenMinutes, 0, 0, 4)),
                amount: 100,
                now,
                fires: Some("4"),
            },
            Case {
                name: "median: too little history",
                kind: RuleKind::AmountOverMedian {
                    multiple_bp: 50_000,
                    history_min: 3,
                },
                features: Features {
                    history: vec![100, 100],
                    ..Features::default()
                },
                amount: 100_000,
                now,
                fires: None,
            },
            Case {
                name: "median: exactly the multiple",
                kind: RuleKind::AmountOverMedian {
                    multiple_bp: 25_000,
                    history_min: 3,
                },
                features: Features {
                    history: vec![90, 100, 5_000, 100],
                    ..Features::default()
                },
                amount: 250,
                now,
                fires: None,
            },
            Case {
                name: "median: over the multiple",
                kind: RuleKind::AmountOverMedian {
                    multiple_bp: 25_000,
                    history_min: 3,
                },
                features: Features {
                    history: vec![90, 100, 5_000, 100],
                    ..Features::default()
                },
                amount: 251,
                now,
                fires: Some("2.51 USD"),
            },
            Case {
                name: "first use of one card",
                kind: RuleKind::FirstCardUse,
                features: Features {
                    used_cards: vec!["tok_a".into()],
                    ..Features::default()
                },
                amount: 100,
                now,
                fires: Some("card B ·1881"),
            },
            Case {
                name: "both cards used before",
                kind: RuleKind::FirstCardUse,
                features: Features {
                    used_cards: vec!["tok_a".into(), "tok_b".into()],
                    ..Features::default()
                },
                amount: 100,
                now,
                fires: None,
            },
            // 14:30 UTC is 15:30 in Berlin in winter.
            Case {
                name: "inside business hours",
                kind: RuleKind::OutsideBusinessHours,
                features: Features::default(),
                amount: 100,
                now,
                fires: None,
            },
            // 17:00 UTC is 18:00 in Berlin: work has ended.
            Case {
                name: "at the hour work ends",
                kind: RuleKind::OutsideBusinessHours,
                features: Features::default(),
                amount: 100,
                now: now + time::Duration::minutes(150),
                fires: Some("Tue 18:00 Europe/Berlin"),
            },
            Case {
                name: "16:59 UTC is still work",
                kind: RuleKind::OutsideBusinessHours,
                features: Features::default(),
                amount: 100,
                now: now + time::Duration::minutes(149),
                fires: None,
            },
            Case {
                name: "a Saturday",
                kind: RuleKind::OutsideBusinessHours,
                features: Features::default(),
                amount: 100,
                now: now + time::Duration::days(4),
                fires: Some("Sat 15:30 Europe/Berlin"),
            },
        ];
        for case in cases {
            check(case);
        }
    }

    #[test]
    fn the_decision_is_the_strictest_of_rules_and_scores() {
        let now = tuesday_afternoon();
        let first_use = |action, score| Rule {
            name: format!("first_{score}"),
            action,
            score,
            kind: RuleKind::FirstCardUse,
        };
        let mut stored = policy(vec![
            first_use(Action::Allow, 30),
            first_use(Action::Allow, 40),
        ]);
        let features = Features::default();
        let subject = subject(100, now);
        let assessment = assess(&stored, &features, &subject);
        assert_eq!((assessment.action, assessment.score), (Action::Allow, 70));
        assert_eq!(assessment.fired.len(), 2);
        assert_eq!(assessment.fired[1].rule, "first_40");
        stored.policy.review_score = 70;
        assert_eq!(assess(&stored, &features, &subject).action, Action::Review);
        stored.policy.block_score = 70;
        assert_eq!(assess(&stored, &features, &subject).action, Action::Block);
        stored.policy.block_score = 71;
        stored.policy.rules.push(first_use(Action::Block, 0));
        assert_eq!(assess(&stored, &features, &subject).action, Action::Block);
        // A rule that does not fire decides nothing.
        let used = Features {
            used_cards: vec!["tok_a".into(), "tok_b".into()],
            ..Features::default()
        };
        let quiet = assess(&stored, &used, &subject);
        assert_eq!((quiet.action, quiet.score), (Action::Allow, 0));
        assert!(quiet.summary().contains("no rule fired"));
    }

    #[test]
    fn windows_are_whole_buckets() {
        // 14:30:00 on a Tuesday: 10 minutes start at 14:21, an hour at 13:31, a day at 15:00
        // the day before.
        let now = tuesday_afternoon() + time::Duration::seconds(59);
        let at = |offset_s: i64| tuesday_afternoon() + time::Duration::seconds(offset_s);
        assert_eq!(Window::TenMinutes.start(now), (Span::Minute, at(-540)));
        assert_eq!(Window::Hour.start(now), (Span::Minute, at(-3_540)));
        assert_eq!(
            Window::Day.start(now),
            (Span::Hour, at(-1_800 - 23 * 3_600))
        );
        assert_eq!(Window::of_seconds(600), Some(Window::TenMinutes));
        assert_eq!(Window::of_seconds(0), None);
    }

    #[test]
    fn counts_cover_every_scope_and_span() {
        let now = tuesday_afternoon();
        let counts = payment_counts(&subject(400, now));
        assert_eq!(counts.len(), 8);
        let card_b = counts
            .iter()
            .find(|c| c.key == "tok_b" && c.span == Span::Hour)
            .unwrap();
        assert_eq!((card_b.payments, card_b.amount), (1, 100));
        let declines = decline_counts("acme", "cg_1", &["tok_a", "tok_a"], now);
        let account = declines
            .iter()
            .find(|c| c.scope == Scope::Account && c.span == Span::Minute)
            .unwrap();
        assert_eq!(account.declines, 2);
        let card = declines
            .iter()
            .find(|c| c.key == "tok_a" && c.span == Span::Minute)
            .unwrap();
        assert_eq!(card.declines, 2);
        assert_eq!(declines.len(), 6);
        assert!(decline_counts("acme", "cg_1", &[], now).is_empty());
    }

    #[test]
    fn texts_for_people() {
        assert_eq!(multiple_text(25_000), "2.5");
        assert_eq!(multiple_text(100_000), "10");
        assert_eq!(multiple_text(10_001), "1.0001");
        assert_eq!(median(&[5, 1, 3]), 3);
        assert_eq!(median(&[4, 1, 3, 2]), 2);
        let hours = BusinessHours {
            time_zone: "UTC".into(),
            start_hour: 9,
            end_hour: 17,
            weekdays: vec![1, 2, 3, 4, 5],
        };
        assert_eq!(business_hours_text(&hours), "Mon-Fri 09:00-17:00 UTC");
        assert!(is_time_zone("America/New_York"));
        assert!(!is_time_zone("Mars/Olympus"));
    }
}
