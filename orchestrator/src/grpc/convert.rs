//! The edge between wire and domain: every request field is checked here once, into a
//! [`crate::commands`] value, and every violation names its field path
//! (`card_group.members[2].priority`); domain values become wire messages here too, and so do
//! the group responses stored with request ids and the groups stored as encoded messages
//! before groups were kept as domain data. Apart from the vault client (the edge to the
//! vault), nothing else in the crate reads a wire type's fields.
//!
//! [`groups`] and [`payments`] hold each service's requests and answers; this module holds
//! what they share: the field checks (ids, text, currencies, amounts, policies), times,
//! money, request hashes and page tokens.

use sha2::{Digest as _, Sha256};
use tandem_money::{Currency, Money};
use tandem_proto::tandem::orchestrator::v1 as pb;
use tandem_proto::tandem::r#type::v1 as types;
use tandem_runtime::fields::Violations;
use time::OffsetDateTime;

use crate::domain::actor::Actor;
use crate::domain::allocation::{FixedAmount, PolicyError, RemainderRule, Strategy, Weight};
use crate::domain::group::{
    ATTEMPTS_DEFAULT, ATTEMPTS_MAX, CeilingWindow, LimitOverride, MemberRules, Policy,
};
use crate::domain::saga::Completion;
use crate::storage::Cursor;

pub mod fx;
pub mod groups;
pub mod ledger;
pub mod payments;
pub mod reconciliation;
pub mod risk;
pub mod webhooks;

/// Records domain policy errors in `v`, their `policy.` prefix replaced by `prefix`.
pub fn add_policy(v: &mut Violations, errors: Vec<PolicyError>, prefix: &str) {
    for error in errors {
        let field = match error.field.strip_prefix("policy") {
            Some(rest) => format!("{prefix}{rest}"),
            None => error.field,
        };
        v.add(field, error.description);
    }
}

/// Longest description or reason, in characters.
const TEXT_CHARS_MAX: usize = 200;
/// Most invoice lines.
const LINES_MAX: usize = 100;

/// Checks an AIP-155 request id: 1-128 characters of `A-Z a-z 0-9 . _ : / -`.
pub fn request_id(v: &mut Violations, field: &str, text: &str) {
    if !is_id_text(text, 128) {
        v.add(field, "must be 1-128 characters of A-Z a-z 0-9 . _ : / -");
    }
}

/// True for 1-`max` characters of `A-Z a-z 0-9 . _ : / -`.
fn is_id_text(text: &str, max: usize) -> bool {
    (1..=max).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:/".contains(&b))
}

/// Checks free text: at most `max` characters, no control characters.
pub(super) fn free_text(v: &mut Violations, field: &str, text: &str, max: usize, required: bool) {
    let chars = text.chars().count();
    if (required && chars == 0) || chars > max || text.chars().any(char::is_control) {
        let need = if required { "1" } else { "0" };
        v.add(
            field,
            format!("must be {need}-{max} characters without control characters"),
        );
    }
}

/// Checks a random id (`cg_`, `pay_`) and returns it.
pub fn resource_id(v: &mut Violations, field: &str, prefix: &str, text: &str) -> String {
    if !tandem_runtime::ids::is_random_id(prefix, text) {
        v.add(
            field,
            format!("must be \"{prefix}\" followed by 26 lower-case base32 characters"),
        );
    }
    text.to_owned()
}

fn currency(v: &mut Violations, field: &str, code: &str) -> Option<Currency> {
    match Currency::parse(code) {
        Ok(currency) => Some(currency),
        Err(_) => {
            v.add(field, "must be a known ISO 4217 currency code");
            None
        }
    }
}

/// A positive amount in `expected` (when given) of at most `max` minor units.
fn amount(
    v: &mut Violations,
    field: &str,
    money: Option<&types::Money>,
    expected: Option<Currency>,
    max: i64,
) -> Option<Money> {
    let Some(money) = money else {
        v.add(field, "is required");
        return None;
    };
    let currency = currency(v, &format!("{field}.currency_code"), &money.currency_code)?;
    if let Some(expected) = expected
        && currency != expected
    {
        v.add(
            format!("{field}.currency_code"),
            format!("must be {expected}"),
        );
        return None;
    }
    if money.minor_units <= 0 || money.minor_units > max {
        v.add(
            format!("{field}.minor_units"),
            format!("must be 1 to {max}"),
        );
        return None;
    }
    Some(Money::new(currency, money.minor_units))
}

fn optional_limit(
    v: &mut Violations,
    field: &str,
    money: Option<&types::Money>,
    expected: Option<Currency>,
) -> Option<i64> {
    money.and_then(|m| amount(v, field, Some(m), expected, i64::MAX).map(|m| m.minor_units))
}

/// 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z, the range of a protobuf `Timestamp`.
const TIMESTAMP_SECONDS_MIN: i64 = -62_135_596_800;
const TIMESTAMP_SECONDS_MAX: i64 = 253_402_300_799;

/// The time in `field`: a missing one is named when `required`, one outside protobuf's range
/// (years 1 to 9999, which Postgres also holds) always.
fn read_time(
    v: &mut Violations,
    field: &str,
    wire: Option<&prost_types::Timestamp>,
    required: bool,
) -> Option<OffsetDateTime> {
    let Some(wire) = wire else {
        if required {
            v.add(field, "is required: a range has a start and an end");
        }
        return None;
    };
    let time = Some(wire)
        .filter(|w| (TIMESTAMP_SECONDS_MIN..=TIMESTAMP_SECONDS_MAX).contains(&w.seconds))
        .and_then(|w| timestamp(Some(w)));
    if time.is_none() {
        v.add(field, "must be a time from year 1 to 9999");
    }
    time
}

fn timestamp(time: Option<&prost_types::Timestamp>) -> Option<OffsetDateTime> {
    let time = time?;
    let nanos = i128::from(time.seconds) * 1_000_000_000 + i128::from(time.nanos);
    OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()
}

/// A time as a protobuf timestamp.
pub fn wire_time(time: OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.unix_timestamp(),
        nanos: i32::try_from(time.nanosecond()).unwrap_or(0),
    }
}

/// Who made a change, on the wire.
pub fn actor(actor: &Actor) -> types::Actor {
    types::Actor {
        name: actor.name.clone(),
        role: actor.role.clone(),
    }
}

fn money(currency: Currency, minor_units: i64) -> types::Money {
    types::Money {
        currency_code: currency.code().to_owned(),
        minor_units,
    }
}

/// Checks a policy at `prefix` against the group's members; fixed amounts are in
/// `fixed_currency`.
pub fn policy(
    v: &mut Violations,
    prefix: &str,
    wire: &pb::AllocationPolicy,
    members: &[MemberRules],
    fixed_currency: Option<Currency>,
) -> Option<Policy> {
    let field = |name: &str| format!("{prefix}.{name}");
    let weights: Vec<Weight> = wire
        .weights
        .iter()
        .map(|w| Weight {
            token: w.token.clone(),
            basis_points: u32::try_from(w.basis_points).unwrap_or(0),
        })
        .collect();
    let strategy = match pb::AllocationStrategy::try_from(wire.strategy) {
        Ok(pb::AllocationStrategy::Sequential) => Some(Strategy::Sequential),
        Ok(pb::AllocationStrategy::Parallel) => Some(Strategy::Parallel { weights }),
        Ok(pb::AllocationStrategy::Weighted) => Some(Strategy::Weighted { weights }),
        Ok(pb::AllocationStrategy::ByCurrency) => Some(Strategy::ByCurrency),
        Ok(pb::AllocationStrategy::Fixed) => {
            let remainder = match pb::RemainderRule::try_from(wire.remainder_rule) {
                Ok(pb::RemainderRule::Sequential) => Some(RemainderRule::Sequential),
                Ok(pb::RemainderRule::Even) => Some(RemainderRule::Even),
                Ok(pb::RemainderRule::Proportional) => Some(RemainderRule::Proportional),
                _ => {
                    v.add(field("remainder_rule"), "is required for FIXED");
                    None
                }
            };
            let amounts = wire
                .fixed_amounts
                .iter()
                .enumerate()
                .map(|(i, fixed)| FixedAmount {
                    token: fixed.token.clone(),
                    minor_units: amount(
                        v,
                        &field(&format!("fixed_amounts[{i}].amount")),
                        fixed.amount.as_ref(),
                        fixed_currency,
                        i64::MAX,
                    )
                    .map_or(0, |m| m.minor_units),
                })
                .collect();
            remainder.map(|remainder| Strategy::Fixed { amounts, remainder })
        }
        _ => {
            v.add(field("strategy"), "must be a known allocation strategy");
            None
        }
    };
    let fallback = wire.fallback.unwrap_or_default();
    let attempts_max = match fallback.attempts_max {
        0 => ATTEMPTS_DEFAULT,
        n if (1..=ATTEMPTS_MAX as i32).contains(&n) => n as u32,
        _ => {
            v.add(field("fallback.attempts_max"), "must be 0 (10) or 1-50");
            ATTEMPTS_DEFAULT
        }
    };
    let completion = match pb::Completion::try_from(wire.completion) {
        Ok(pb::Completion::Unspecified | pb::Completion::AllOrNothing) => Completion::AllOrNothing,
        Ok(pb::Completion::AllowPartial) => Completion::AllowPartial,
        Err(_) => {
            v.add(field("completion"), "is not a known completion");
            Completion::AllOrNothing
        }
    };
    let mut windows = Vec::with_capacity(wire.ceiling_windows.len());
    for (i, window) in wire.ceiling_windows.iter().enumerate() {
        let field = |name: &str| format!("{prefix}.ceiling_windows[{i}].{name}");
        free_text(v, &field("display_name"), &window.display_name, 100, true);
        let start = timestamp(window.start_time.as_ref());
        let end = timestamp(window.end_time.as_ref());
        if start.is_none() {
            v.add(field("start_time"), "is required");
        }
        if end.is_none() {
            v.add(field("end_time"), "is required");
        }
        let mut overrides = Vec::new();
        for (j, over) in window.overrides.iter().enumerate() {
            let member_currency = members
                .iter()
                .find(|m| m.token == over.token)
                .map(|m| m.currency);
            overrides.push(LimitOverride {
                token: over.token.clone(),
                limit_per_payment: optional_limit(
                    v,
                    &field(&format!("overrides[{j}].limit_per_payment")),
                    over.limit_per_payment.as_ref(),
                    member_currency,
                ),
                limit_per_month: optional_limit(
                    v,
                    &field(&format!("overrides[{j}].limit_per_month")),
                    over.limit_per_month.as_ref(),
                    member_currency,
                ),
            });
        }
        if let (Some(start), Some(end)) = (start, end) {
            windows.push(CeilingWindow {
                display_name: window.display_name.clone(),
                start,
                end,
                overrides,
            });
        }
    }
    Some(Policy {
        strategy: strategy?,
        fallback: fallback.enabled,
        attempts_max,
        completion,
        windows,
        allow_conversion: wire.allow_conversion,
    })
}

/// A hash identifying a request for idempotency: its method and its encoded fields.
pub fn request_hash(method: &str, message: &impl prost::Message) -> Vec<u8> {
    let mut hash = Sha256::new();
    hash.update(method.as_bytes());
    hash.update([0]);
    hash.update(message.encode_to_vec());
    hash.finalize().to_vec()
}

/// The rows of a page: `requested` (0 means 50), at most `max`; a negative size is a
/// violation of `page_size`.
pub fn page_size(v: &mut Violations, requested: i32, max: i32) -> i32 {
    if requested < 0 {
        v.add("page_size", "must not be negative");
    }
    match requested {
        0 => 50.min(max),
        n => n.clamp(1, max),
    }
}

/// A page token (AIP-158) of the orchestrator: the last row's position (its create time and
/// id) in the list `scope` (the RPC and its filters), which a token used with other filters
/// does not decode.
pub fn encode_page_token(cursor: &Cursor, scope: &[u8]) -> String {
    let micros = cursor.create_time.unix_timestamp_nanos() / 1000;
    let mut position = i64::try_from(micros)
        .expect("a stored time fits 64 bits of microseconds")
        .to_be_bytes()
        .to_vec();
    position.extend_from_slice(cursor.id.as_bytes());
    tandem_runtime::pages::encode(PAGES, scope, &position)
}

/// The position of a page token made with the same filters; `None` if malformed or made for
/// other filters.
pub fn decode_page_token(token: &str, scope: &[u8]) -> Option<Cursor> {
    let position = tandem_runtime::pages::decode(PAGES, scope, token)?;
    let (micros, id) = position.split_at_checked(8)?;
    let micros = i64::from_be_bytes(micros.try_into().ok()?);
    let create_time =
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros).checked_mul(1000)?).ok()?;
    let id = String::from_utf8(id.to_vec()).ok()?;
    Some(Cursor { create_time, id })
}

/// The service the orchestrator's page tokens belong to.
pub(crate) const PAGES: &str = "tandem/orchestrator";

/// Where a page starts: after the row of `token` (none when empty); a token made for other
/// filters than `scope`'s is a violation of `page_token`.
pub(super) fn page_after(v: &mut Violations, token: &str, scope: &str) -> Option<Cursor> {
    if token.is_empty() {
        return None;
    }
    let cursor = decode_page_token(token, scope.as_bytes());
    if cursor.is_none() {
        v.add(
            "page_token",
            "is not a page token of this list with these filters",
        );
    }
    cursor
}

/// The page token of the page after `next`, empty when there is none.
pub(super) fn next_page_token(next: Option<&Cursor>, scope: &str) -> String {
    next.map(|cursor| encode_page_token(cursor, scope.as_bytes()))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_only_for_their_filters() {
        let cursor = Cursor {
            create_time: OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_000)
                .unwrap(),
            id: "pay_abc".into(),
        };
        let token = encode_page_token(&cursor, b"group=1");
        assert_eq!(decode_page_token(&token, b"group=1"), Some(cursor));
        assert_eq!(decode_page_token(&token, b"group=2"), None);
        assert_eq!(decode_page_token("not a token", b"group=1"), None);
    }
}
