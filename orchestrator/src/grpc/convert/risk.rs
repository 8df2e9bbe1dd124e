//! Risk between wire and domain: the checks of `RiskService`'s and `ReviewPayment`'s requests,
//! and policies, assessments and reviews on the wire.

use std::collections::HashSet;

use tandem_proto::tandem::orchestrator::v1 as pb;
use tandem_runtime::fields::Violations;

use crate::commands::RiskPolicyChange;
use crate::domain::record::review::Review;
use crate::domain::risk::{
    Action, Assessment, BusinessHours, Limit, Policy, RULES_MAX, Rule, RuleKind, Scope,
    StoredPolicy, Window, is_time_zone,
};
use crate::domain::saga::Verdict;
use crate::error::Error;

use super::{actor, currency, is_id_text, request_hash, request_id, wire_time};

/// Most a rule adds to a score.
const RULE_SCORE_MAX: i32 = 10_000;
/// Most a score threshold may be.
const THRESHOLD_MAX: i32 = 100_000;
/// Bounds of an amount-over-median multiple, in ten-thousandths.
const MULTIPLE_BP_MIN: u32 = 10_000;
const MULTIPLE_BP_MAX: u32 = 10_000_000;

/// Checks a billing account id.
fn billing_account(v: &mut Violations, field: &str, id: &str) {
    if !is_id_text(id, 64) {
        v.add(field, "must be 1-64 characters of A-Z a-z 0-9 . _ : / -");
    }
}

/// The checks of `GetRiskPolicy`: the account.
pub fn get_risk_policy(request: &pb::GetRiskPolicyRequest) -> Result<String, Error> {
    let mut v = Violations::default();
    billing_account(&mut v, "billing_account_id", &request.billing_account_id);
    v.finish(request.billing_account_id.clone())
}

/// The checks of `SetRiskPolicy`: every rule named and whole, windows among those kept,
/// thresholds not negative, a known time zone where business hours are used.
pub fn set_risk_policy(request: &pb::SetRiskPolicyRequest) -> Result<RiskPolicyChange, Error> {
    let mut v = Violations::default();
    request_id(&mut v, "request_id", &request.request_id);
    billing_account(&mut v, "billing_account_id", &request.billing_account_id);
    let Some(wire) = request.policy.as_ref() else {
        v.add("policy", "is required");
        return Err(v.into_inner().into());
    };
    if !wire.billing_account_id.is_empty() && wire.billing_account_id != request.billing_account_id
    {
        v.add(
            "policy.billing_account_id",
            "must be empty or equal billing_account_id",
        );
    }
    if wire.version < 0 {
        v.add("policy.version", "must not be negative");
    }
    let policy = policy(&mut v, wire);
    let policy = v.finish_with::<_, Error>(|| policy)?;
    // Output-only fields are ignored, by the hash too.
    let mut given = request.clone();
    if let Some(wire) = given.policy.as_mut() {
        wire.default_policy = false;
        wire.update_time = None;
        wire.updater = None;
        wire.billing_account_id.clear();
    }
    Ok(RiskPolicyChange {
        request_id: request.request_id.clone(),
        request_hash: request_hash("SetRiskPolicy", &given),
        billing_account_id: request.billing_account_id.clone(),
        policy,
        expected_version: (wire.version > 0).then_some(wire.version),
    })
}

/// A policy from the wire, every violation under `policy.`.
fn policy(v: &mut Violations, wire: &pb::RiskPolicy) -> Option<Policy> {
    if wire.rules.len() > RULES_MAX {
        v.add(
            "policy.rules",
            format!("must hold at most {RULES_MAX} rules"),
        );
        return None;
    }
    let mut names = HashSet::new();
    let mut rules = Vec::with_capacity(wire.rules.len());
    let mut whole = true;
    for (i, rule) in wire.rules.iter().enumerate() {
        let prefix = format!("policy.rules[{i}]");
        if !names.insert(rule.name.as_str()) {
            v.add(format!("{prefix}.name"), "is used by an earlier rule");
        }
        match self::rule(v, &prefix, rule) {
            Some(rule) => rules.push(rule),
            None => whole = false,
        }
    }
    let threshold = |v: &mut Violations, field: &str, value: i32| {
        if !(0..=THRESHOLD_MAX).contains(&value) {
            v.add(field, format!("must be from 0 to {THRESHOLD_MAX}"));
        }
        u32::try_from(value).ok()
    };
    let review_score = threshold(v, "policy.review_score", wire.review_score);
    let block_score = threshold(v, "policy.block_score", wire.block_score);
    if wire.review_score > 0 && wire.block_score > 0 && wire.block_score < wire.review_score {
        v.add("policy.block_score", "must not be under review_score");
    }
    let business_hours = wire
        .business_hours
        .as_ref()
        .map(|hours| self::business_hours(v, hours));
    let business_hours = match business_hours {
        Some(None) => {
            whole = false;
            None
        }
        Some(Some(hours)) => Some(hours),
        None => None,
    };
    for (i, rule) in rules.iter().enumerate() {
        if rule.kind == RuleKind::OutsideBusinessHours && wire.business_hours.is_none() {
            v.add(
                "policy.business_hours",
                format!("is required by rule policy.rules[{i}] (outside_business_hours)"),
            );
        }
    }
    if !whole {
        return None;
    }
    Some(Policy {
        rules,
        review_score: review_score?,
        block_score: block_score?,
        business_hours,
    })
}

fn rule(v: &mut Violations, prefix: &str, wire: &pb::RiskRule) -> Option<Rule> {
    use pb::risk_rule::Kind;
    let name_ok = (1..=64).contains(&wire.name.len())
        && wire
            .name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if !name_ok {
        v.add(
            format!("{prefix}.name"),
            "must be 1-64 characters of a-z 0-9 _ -",
        );
    }
    let action = match pb::RiskAction::try_from(wire.action) {
        Ok(pb::RiskAction::Allow) => Some(Action::Allow),
        Ok(pb::RiskAction::Review) => Some(Action::Review),
        Ok(pb::RiskAction::Block) => Some(Action::Block),
        Ok(pb::RiskAction::Unspecified) | Err(_) => {
            v.add(format!("{prefix}.action"), "must be ALLOW, REVIEW or BLOCK");
            None
        }
    };
    if !(0..=RULE_SCORE_MAX).contains(&wire.score) {
        v.add(
            format!("{prefix}.score"),
            format!("must be from 0 to {RULE_SCORE_MAX}"),
        );
    }
    let kind = match &wire.kind {
        None => {
            v.add(
                format!("{prefix}.kind"),
                "must be set to one rule kind this server knows (velocity, amount_over_median, \
                 first_card_use, decline_burst, outside_business_hours)",
            );
            None
        }
        Some(Kind::Velocity(rule)) => {
            let prefix = format!("{prefix}.velocity");
            let scope = scope(v, &prefix, rule.scope);
            let window = window(v, &prefix, rule.window.as_ref());
            let limit = match (rule.count_max, rule.sum_max.as_ref()) {
                (Some(count), None) if count >= 0 => Some(Limit::Count(count)),
                (Some(_), None) => {
                    v.add(format!("{prefix}.count_max"), "must not be negative");
                    None
                }
                (None, Some(sum)) => {
                    let field = format!("{prefix}.sum_max");
                    let currency =
                        currency(v, &format!("{field}.currency_code"), &sum.currency_code);
                    if sum.minor_units < 0 {
                        v.add(format!("{field}.minor_units"), "must not be negative");
                    }
                    currency
                        .filter(|_| sum.minor_units >= 0)
                        .map(|currency| Limit::Sum {
                            currency,
                            max: sum.minor_units,
                        })
                }
                _ => {
                    v.add(
                        format!("{prefix}.count_max"),
                        "exactly one of count_max and sum_max must be set",
                    );
                    None
                }
            };
            Some(RuleKind::Velocity {
                scope: scope?,
                window: window?,
                limit: limit?,
            })
        }
        Some(Kind::DeclineBurst(rule)) => {
            let prefix = format!("{prefix}.decline_burst");
            let scope = scope(v, &prefix, rule.scope);
            let window = window(v, &prefix, rule.window.as_ref());
            if rule.count_max < 0 {
                v.add(format!("{prefix}.count_max"), "must not be negative");
            }
            Some(RuleKind::DeclineBurst {
                scope: scope?,
                window: window?,
                count_max: Some(rule.count_max).filter(|c| *c >= 0)?,
            })
        }
        Some(Kind::AmountOverMedian(rule)) => {
            let prefix = format!("{prefix}.amount_over_median");
            let multiple = multiple_bp(&rule.multiple);
            if multiple.is_none() {
                v.add(
                    format!("{prefix}.multiple"),
                    "must be a plain decimal from 1 to 1000 with at most 4 decimal places",
                );
            }
            if !(1..=100).contains(&rule.history_min) {
                v.add(format!("{prefix}.history_min"), "must be from 1 to 100");
            }
            Some(RuleKind::AmountOverMedian {
                multiple_bp: multiple?,
                history_min: u32::try_from(rule.history_min)
                    .ok()
                    .filter(|h| (1..=100).contains(h))?,
            })
        }
        Some(Kind::FirstCardUse(_)) => Some(RuleKind::FirstCardUse),
        Some(Kind::OutsideBusinessHours(_)) => Some(RuleKind::OutsideBusinessHours),
    };
    if !name_ok || !(0..=RULE_SCORE_MAX).contains(&wire.score) {
        return None;
    }
    Some(Rule {
        name: wire.name.clone(),
        action: action?,
        score: u32::try_from(wire.score).ok()?,
        kind: kind?,
    })
}

fn scope(v: &mut Violations, prefix: &str, scope: i32) -> Option<Scope> {
    match pb::RiskScope::try_from(scope) {
        Ok(pb::RiskScope::Card) => Some(Scope::Card),
        Ok(pb::RiskScope::CardGroup) => Some(Scope::Group),
        Ok(pb::RiskScope::BillingAccount) => Some(Scope::Account),
        Ok(pb::RiskScope::Unspecified) | Err(_) => {
            v.add(
                format!("{prefix}.scope"),
                "must be CARD, CARD_GROUP or BILLING_ACCOUNT",
            );
            None
        }
    }
}

fn window(
    v: &mut Violations,
    prefix: &str,
    window: Option<&prost_types::Duration>,
) -> Option<Window> {
    let field = format!("{prefix}.window");
    let Some(window) = window else {
        v.add(field, "is required: 10 minutes, 1 hour or 24 hours");
        return None;
    };
    let found = (window.nanos == 0)
        .then(|| Window::of_seconds(window.seconds))
        .flatten();
    if found.is_none() {
        v.add(
            field,
            "must be 10 minutes, 1 hour or 24 hours (600s, 3600s or 86400s)",
        );
    }
    found
}

/// "2.5" as 25000 ten-thousandths, within the bounds; `None` otherwise.
fn multiple_bp(text: &str) -> Option<u32> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty()
        || whole.len() > 4
        || fraction.len() > 4
        || !digits(whole)
        || !digits(fraction)
    {
        return None;
    }
    if text.contains('.') && fraction.is_empty() {
        return None;
    }
    let whole: u32 = whole.parse().ok()?;
    let fraction: u32 = format!("{fraction:0<4}").parse().ok()?;
    let bp = whole.checked_mul(10_000)?.checked_add(fraction)?;
    (MULTIPLE_BP_MIN..=MULTIPLE_BP_MAX)
        .contains(&bp)
        .then_some(bp)
}

fn business_hours(v: &mut Violations, wire: &pb::BusinessHours) -> Option<BusinessHours> {
    let prefix = "policy.business_hours";
    let mut whole = true;
    if !is_time_zone(&wire.time_zone) {
        v.add(
            format!("{prefix}.time_zone"),
            "must be an IANA time zone (for example Europe/Berlin)",
        );
        whole = false;
    }
    if !(0..=23).contains(&wire.start_hour) {
        v.add(format!("{prefix}.start_hour"), "must be from 0 to 23");
        whole = false;
    }
    if !(1..=24).contains(&wire.end_hour) || wire.end_hour <= wire.start_hour {
        v.add(
            format!("{prefix}.end_hour"),
            "must be from 1 to 24 and after start_hour",
        );
        whole = false;
    }
    let mut weekdays: Vec<u8> = Vec::new();
    for (i, day) in wire.weekdays.iter().enumerate() {
        match u8::try_from(*day).ok().filter(|d| (1..=7).contains(d)) {
            Some(day) if !weekdays.contains(&day) => weekdays.push(day),
            _ => {
                v.add(
                    format!("{prefix}.weekdays[{i}]"),
                    "must be an ISO weekday from 1 (Monday) to 7 (Sunday), each once",
                );
                whole = false;
            }
        }
    }
    if weekdays.is_empty() {
        weekdays = vec![1, 2, 3, 4, 5];
    }
    weekdays.sort_unstable();
    whole.then(|| BusinessHours {
        time_zone: wire.time_zone.clone(),
        start_hour: u8::try_from(wire.start_hour).unwrap_or(0),
        end_hour: u8::try_from(wire.end_hour).unwrap_or(24),
        weekdays,
    })
}

fn action_to_wire(action: Action) -> pb::RiskAction {
    match action {
        Action::Allow => pb::RiskAction::Allow,
        Action::Review => pb::RiskAction::Review,
        Action::Block => pb::RiskAction::Block,
    }
}

fn scope_to_wire(scope: Scope) -> pb::RiskScope {
    match scope {
        Scope::Card => pb::RiskScope::Card,
        Scope::Group => pb::RiskScope::CardGroup,
        Scope::Account => pb::RiskScope::BillingAccount,
    }
}

fn window_to_wire(window: Window) -> prost_types::Duration {
    prost_types::Duration {
        seconds: window.seconds(),
        nanos: 0,
    }
}

/// An account's policy on the wire.
pub fn policy_to_wire(billing_account_id: &str, stored: &StoredPolicy) -> pb::RiskPolicy {
    use pb::risk_rule::Kind;
    let policy = &stored.policy;
    let rules = policy
        .rules
        .iter()
        .map(|rule| pb::RiskRule {
            name: rule.name.clone(),
            action: action_to_wire(rule.action) as i32,
            score: i32::try_from(rule.score).unwrap_or(i32::MAX),
            kind: Some(match &rule.kind {
                RuleKind::Velocity {
                    scope,
                    window,
                    limit,
                } => Kind::Velocity(pb::VelocityRule {
                    scope: scope_to_wire(*scope) as i32,
                    window: Some(window_to_wire(*window)),
                    count_max: match limit {
                        Limit::Count(count) => Some(*count),
                        Limit::Sum { .. } => None,
                    },
                    sum_max: match limit {
                        Limit::Count(_) => None,
                        Limit::Sum { currency, max } => Some(super::money(*currency, *max)),
                    },
                }),
                RuleKind::AmountOverMedian {
                    multiple_bp,
                    history_min,
                } => Kind::AmountOverMedian(pb::AmountOverMedianRule {
                    multiple: crate::domain::risk::multiple_text(*multiple_bp),
                    history_min: i32::try_from(*history_min).unwrap_or(i32::MAX),
                }),
                RuleKind::FirstCardUse => Kind::FirstCardUse(pb::FirstCardUseRule {}),
                RuleKind::DeclineBurst {
                    scope,
                    window,
                    count_max,
                } => Kind::DeclineBurst(pb::DeclineBurstRule {
                    scope: scope_to_wire(*scope) as i32,
                    window: Some(window_to_wire(*window)),
                    count_max: *count_max,
                }),
                RuleKind::OutsideBusinessHours => {
                    Kind::OutsideBusinessHours(pb::OutsideBusinessHoursRule {})
                }
            }),
        })
        .collect();
    pb::RiskPolicy {
        billing_account_id: billing_account_id.to_owned(),
        rules,
        review_score: i32::try_from(policy.review_score).unwrap_or(i32::MAX),
        block_score: i32::try_from(policy.block_score).unwrap_or(i32::MAX),
        business_hours: policy.business_hours.as_ref().map(|h| pb::BusinessHours {
            time_zone: h.time_zone.clone(),
            start_hour: i32::from(h.start_hour),
            end_hour: i32::from(h.end_hour),
            weekdays: h.weekdays.iter().map(|d| i32::from(*d)).collect(),
        }),
        default_policy: stored.version == 0,
        version: stored.version,
        update_time: stored.update_time.map(wire_time),
        updater: stored.updater.as_ref().map(actor),
    }
}

/// The stored response of `SetRiskPolicy`.
pub fn set_response(billing_account_id: &str, stored: &StoredPolicy) -> Vec<u8> {
    use prost::Message as _;
    pb::SetRiskPolicyResponse {
        policy: Some(policy_to_wire(billing_account_id, stored)),
    }
    .encode_to_vec()
}

/// An assessment on the wire.
pub fn assessment_to_wire(assessment: &Assessment) -> pb::RiskAssessment {
    pb::RiskAssessment {
        action: action_to_wire(assessment.action) as i32,
        score: i32::try_from(assessment.score).unwrap_or(i32::MAX),
        fired: assessment
            .fired
            .iter()
            .map(|f| pb::RiskRuleFired {
                rule: f.rule.clone(),
                action: action_to_wire(f.action) as i32,
                score: i32::try_from(f.score).unwrap_or(i32::MAX),
                feature: f.feature.clone(),
                value: f.value.clone(),
                threshold: f.threshold.clone(),
                explanation: f.explanation.clone(),
            })
            .collect(),
        policy_version: assessment.policy_version,
        default_policy: assessment.default_policy,
        assess_time: Some(wire_time(assessment.assess_time)),
    }
}

/// A review on the wire.
pub fn review_to_wire(review: &Review) -> pb::PaymentReview {
    pb::PaymentReview {
        verdict: match review.verdict {
            None => pb::ReviewVerdict::Unspecified,
            Some(Verdict::Approve) => pb::ReviewVerdict::Approve,
            Some(Verdict::Reject) => pb::ReviewVerdict::Reject,
            Some(Verdict::Expired) => pb::ReviewVerdict::Expired,
        } as i32,
        reviewer: review.reviewer.as_ref().map(actor),
        note: review.note.clone().unwrap_or_default(),
        start_time: review.start_time.map(wire_time),
        expire_time: review.expire_time.map(wire_time),
        decide_time: review.decide_time.map(wire_time),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multiples_are_plain_decimals_in_bounds() {
        assert_eq!(multiple_bp("5"), Some(50_000));
        assert_eq!(multiple_bp("2.5"), Some(25_000));
        assert_eq!(multiple_bp("1.0001"), Some(10_001));
        assert_eq!(multiple_bp("1000"), Some(10_000_000));
        for bad in [
            "", "0.5", "1001", "1.", ".5", "1.00001", "-2", "1e3", "2,5", " 2",
        ] {
            assert_eq!(multiple_bp(bad), None, "{bad:?}");
        }
    }
}
