//! The edge between wire and domain: every request field is checked here once, and every
//! violation names its field path (`card_group.members[2].priority`); domain values become
//! wire messages here too. Nothing else in the crate reads a wire type's fields.

use prost::Message as _;
use sha2::{Digest as _, Sha256};
use tandem_money::{Currency, Money};
use tandem_proto::tandem::orchestrator::v1 as pb;
use tandem_proto::tandem::r#type::v1 as types;
use time::OffsetDateTime;

use crate::domain::allocation::{FixedAmount, PolicyError, RemainderRule, Strategy, Weight};
use crate::domain::group::{
    ATTEMPTS_DEFAULT, ATTEMPTS_MAX, CeilingWindow, LimitOverride, MemberRules, Policy,
};
use crate::domain::planning::Invoice;
use crate::domain::record::events::{Event, EventKind};
use crate::domain::record::refunds::{Refund, RefundState};
use crate::domain::record::steps::Suspension;
use crate::domain::record::{AttemptOutcome, PaymentRecord, Status};
use crate::domain::saga::{Completion, LegState, NextAction, PaymentState};
use crate::error::{Error, FieldViolation};
use crate::storage::{Cursor, StoredGroup, StoredPayment};

/// Violations collected while checking one request.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    /// Records a violation of `field`.
    pub fn add(&mut self, field: impl Into<String>, description: impl ToString) {
        self.0.push(FieldViolation::new(field, description));
    }

    /// Records domain policy errors, their `policy.` prefix replaced by `prefix`.
    pub fn add_policy(&mut self, errors: Vec<PolicyError>, prefix: &str) {
        for error in errors {
            let field = match error.field.strip_prefix("policy") {
                Some(rest) => format!("{prefix}{rest}"),
                None => error.field,
            };
            self.add(field, error.description);
        }
    }

    /// `Ok(value)` if nothing was violated.
    pub fn finish<T>(self, value: T) -> Result<T, Error> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(Error::InvalidArgument(self.0))
        }
    }

    /// True if nothing was violated yet.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
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
fn free_text(v: &mut Violations, field: &str, text: &str, max: usize, required: bool) {
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

fn money(currency: Currency, minor_units: i64) -> types::Money {
    types::Money {
        currency_code: currency.code().to_owned(),
        minor_units,
    }
}

/// A card group as the domain checks it.
#[derive(Debug, Clone)]
pub struct GroupInput {
    /// The billing account.
    pub billing_account_id: String,
    /// The members.
    pub members: Vec<MemberRules>,
    /// The default policy.
    pub policy: Policy,
}

/// Checks a group from a create or update request (output-only fields ignored).
pub fn group_input(v: &mut Violations, group: &pb::CardGroup) -> Option<GroupInput> {
    if !is_id_text(&group.billing_account_id, 64) {
        v.add(
            "card_group.billing_account_id",
            "must be 1-64 characters of A-Z a-z 0-9 . _ : / -",
        );
    }
    free_text(v, "card_group.display_name", &group.display_name, 100, true);
    let default_currency = currency(
        v,
        "card_group.default_currency_code",
        &group.default_currency_code,
    );
    let mut members = Vec::with_capacity(group.members.len());
    for (i, member) in group.members.iter().enumerate() {
        let field = |name: &str| format!("card_group.members[{i}].{name}");
        let Some(member_currency) = currency(v, &field("currency_code"), &member.currency_code)
        else {
            continue;
        };
        let active = match pb::CardGroupMemberState::try_from(member.state) {
            Ok(pb::CardGroupMemberState::Unspecified | pb::CardGroupMemberState::Active) => true,
            Ok(pb::CardGroupMemberState::Suspended) => false,
            Err(_) => {
                v.add(field("state"), "is not a known member state");
                true
            }
        };
        members.push(MemberRules {
            token: member.token.clone(),
            label: member.label.clone(),
            currency: member_currency,
            priority: u16::try_from(member.priority).unwrap_or(0),
            cost_center: Some(member.cost_center.clone()).filter(|c| !c.is_empty()),
            limit_per_payment: optional_limit(
                v,
                &field("limit_per_payment"),
                member.limit_per_payment.as_ref(),
                Some(member_currency),
            ),
            limit_per_month: optional_limit(
                v,
                &field("limit_per_month"),
                member.limit_per_month.as_ref(),
                Some(member_currency),
            ),
            active,
        });
    }
    let policy = match group.default_policy.as_ref() {
        Some(wire) => policy(
            v,
            "card_group.default_policy",
            wire,
            &members,
            default_currency,
        ),
        None => {
            v.add("card_group.default_policy", "is required");
            None
        }
    };
    if members.len() == group.members.len()
        && let Some(policy) = &policy
    {
        let errors = crate::domain::group::check_members(&members, &policy.windows);
        for error in errors {
            v.add(error.field, error.description);
        }
        // The policy's members and weights against the group; invoice checks come at payment.
        if let Some(currency) = default_currency {
            let domain: Vec<_> = members
                .iter()
                .map(|m| crate::domain::group::member_at(m, &[], OffsetDateTime::UNIX_EPOCH, 0))
                .collect();
            if let Err(errors) = crate::domain::allocation::check_policy(
                &policy.strategy,
                &domain,
                Money::new(currency, 1),
                &[],
            ) {
                let errors = errors
                    .into_iter()
                    .filter(|e| e.field.starts_with("policy."))
                    .collect();
                v.add_policy(errors, "card_group.default_policy");
            }
        }
    }
    Some(GroupInput {
        billing_account_id: group.billing_account_id.clone(),
        members,
        policy: policy?,
    })
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
    })
}

/// A group as stored and read back: the body with the output-only fields from the columns.
pub fn group_to_wire(stored: &StoredGroup) -> Result<pb::CardGroup, Error> {
    let mut group = pb::CardGroup::decode(stored.body.as_slice())
        .map_err(|e| Error::Corrupt(format!("card group {}: {e}", stored.id)))?;
    group.id = stored.id.clone();
    group.state = if stored.archived {
        pb::CardGroupState::Archived
    } else {
        pb::CardGroupState::Active
    } as i32;
    group.etag = etag(stored.version);
    group.create_time = Some(wire_time(stored.create_time));
    group.update_time = Some(wire_time(stored.update_time));
    group.archive_time = stored.archive_time.map(wire_time);
    Ok(group)
}

/// The group's stored body: the request's group without output-only fields, members' states
/// spelled out. A member still SUSPENDED keeps the suspension it had in `before` (the stored
/// members); any other member has none.
pub fn group_body(
    group: &pb::CardGroup,
    last4: &[(String, String)],
    before: &[pb::CardGroupMember],
) -> Vec<u8> {
    let mut body = group.clone();
    body.id.clear();
    body.state = 0;
    body.etag.clear();
    body.create_time = None;
    body.update_time = None;
    body.archive_time = None;
    for member in &mut body.members {
        if member.state == pb::CardGroupMemberState::Unspecified as i32 {
            // Unset keeps the member's stored state: an update that does not mention states
            // (a client adding a card) must not reactivate a card Tandem suspended.
            member.state = before
                .iter()
                .find(|b| b.token == member.token)
                .map_or(pb::CardGroupMemberState::Active as i32, |b| b.state);
        }
        member.month_to_date_spend = None;
        member.suspension = before
            .iter()
            .filter(|_| member.state == pb::CardGroupMemberState::Suspended as i32)
            .find(|b| b.token == member.token && b.state == member.state)
            .and_then(|b| b.suspension.clone());
        member.last4 = last4
            .iter()
            .find(|(token, _)| *token == member.token)
            .map(|(_, l)| l.clone())
            .unwrap_or_default();
    }
    body.encode_to_vec()
}

/// The stored body of group `group_id` with the members named in `suspensions` SUSPENDED by
/// payment `payment_id` at `now`; `None` if every one of them was suspended already (members
/// already suspended keep their first suspension).
pub fn suspended_body(
    body: &[u8],
    group_id: &str,
    payment_id: &str,
    suspensions: &[Suspension],
    now: OffsetDateTime,
) -> Result<Option<Vec<u8>>, Error> {
    let mut group = pb::CardGroup::decode(body)
        .map_err(|e| Error::Corrupt(format!("card group {group_id}: {e}")))?;
    let mut changed = false;
    for member in &mut group.members {
        let Some(suspension) = suspensions.iter().find(|s| s.token == member.token) else {
            continue;
        };
        if member.state == pb::CardGroupMemberState::Suspended as i32 {
            continue;
        }
        member.state = pb::CardGroupMemberState::Suspended as i32;
        member.suspension = Some(pb::MemberSuspension {
            decline_code: types::DeclineCode::from_str_name(&format!(
                "DECLINE_CODE_{}",
                suspension.decline_code
            ))
            .unwrap_or_default() as i32,
            payment_id: payment_id.to_owned(),
            suspend_time: Some(wire_time(now)),
        });
        changed = true;
        tracing::warn!(
            card_group_id = group_id,
            payment_id,
            token = %member.token,
            decline_code = %suspension.decline_code,
            "member suspended: its card was declined as lost or stolen"
        );
    }
    Ok(changed.then(|| group.encode_to_vec()))
}

/// The etag of a group version.
pub fn etag(version: i64) -> String {
    format!("\"v{version}\"")
}

/// A hash identifying a request for idempotency: its method and its encoded fields.
pub fn request_hash(method: &str, message: &impl prost::Message) -> Vec<u8> {
    let mut hash = Sha256::new();
    hash.update(method.as_bytes());
    hash.update([0]);
    hash.update(message.encode_to_vec());
    hash.finalize().to_vec()
}

/// Checks the invoice of a CreatePayment request.
pub fn invoice(v: &mut Violations, wire: Option<&pb::Invoice>, max: i64) -> Option<Invoice> {
    let Some(wire) = wire else {
        v.add("invoice", "is required");
        return None;
    };
    if !is_id_text(&wire.id, 64) {
        v.add(
            "invoice.id",
            "must be 1-64 characters of A-Z a-z 0-9 . _ : / -",
        );
    }
    free_text(
        v,
        "invoice.description",
        &wire.description,
        TEXT_CHARS_MAX,
        false,
    );
    free_text(v, "invoice.cost_center", &wire.cost_center, 64, false);
    let total = amount(v, "invoice.amount", wire.amount.as_ref(), None, max);
    if wire.lines.len() > LINES_MAX {
        v.add("invoice.lines", "must have at most 100 lines");
    }
    let mut lines = Vec::new();
    for (i, line) in wire.lines.iter().enumerate() {
        let field = |name: &str| format!("invoice.lines[{i}].{name}");
        let Some(total) = total else { break };
        let Some(line_amount) = amount(
            v,
            &field("amount"),
            line.amount.as_ref(),
            Some(total.currency),
            max,
        ) else {
            continue;
        };
        if !line.currency_code.is_empty() && line.currency_code != total.currency.code() {
            v.add(
                field("currency_code"),
                "must be empty or the invoice's currency: this orchestrator has no FX rates \
                 configured to convert between currencies",
            );
        }
        free_text(v, &field("cost_center"), &line.cost_center, 64, false);
        free_text(
            v,
            &field("description"),
            &line.description,
            TEXT_CHARS_MAX,
            false,
        );
        lines.push(line_amount);
    }
    if let Some(total) = total
        && !lines.is_empty()
        && lines.iter().map(|l| l.minor_units).sum::<i64>() != total.minor_units
    {
        v.add("invoice.lines", "must sum exactly to invoice.amount");
    }
    Some(Invoice {
        id: wire.id.clone(),
        amount: total?,
        cost_center: Some(wire.cost_center.clone()).filter(|c| !c.is_empty()),
        lines,
    })
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

/// A page token: the last row's position and a hash of the filters it belongs to.
pub fn encode_page_token(cursor: &Cursor, scope: &[u8]) -> String {
    let micros = cursor.create_time.unix_timestamp_nanos() / 1000;
    let text = format!("{micros}.{}.{}", cursor.id, hex_prefix(scope));
    data_encoding::BASE64URL_NOPAD.encode(text.as_bytes())
}

/// The position of a page token made with the same filters; `None` if malformed or made for
/// other filters.
pub fn decode_page_token(token: &str, scope: &[u8]) -> Option<Cursor> {
    let bytes = data_encoding::BASE64URL_NOPAD
        .decode(token.as_bytes())
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let mut parts = text.splitn(3, '.');
    let micros: i128 = parts.next()?.parse().ok()?;
    let id = parts.next()?.to_owned();
    (parts.next()? == hex_prefix(scope)).then_some(())?;
    let create_time = OffsetDateTime::from_unix_timestamp_nanos(micros.checked_mul(1000)?).ok()?;
    Some(Cursor { create_time, id })
}

fn hex_prefix(scope: &[u8]) -> String {
    Sha256::digest(scope)[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The wire name of a status, for `payments.state` filters.
pub fn state_filter(v: &mut Violations, state: i32) -> Option<&'static str> {
    match pb::PaymentState::try_from(state) {
        Ok(pb::PaymentState::Unspecified) => None,
        Ok(pb::PaymentState::Pending) => Some("pending"),
        Ok(pb::PaymentState::Authorizing) => Some("authorizing"),
        Ok(pb::PaymentState::Capturing) => Some("capturing"),
        Ok(pb::PaymentState::Succeeded) => Some("succeeded"),
        Ok(pb::PaymentState::PartiallyPaid) => Some("partially_paid"),
        Ok(pb::PaymentState::Reversing) => Some("reversing"),
        Ok(pb::PaymentState::Failed) => Some("failed"),
        Ok(pb::PaymentState::PartiallyRefunded) => Some("partially_refunded"),
        Ok(pb::PaymentState::Refunded) => Some("refunded"),
        Err(_) => {
            v.add("state", "is not a known payment state");
            None
        }
    }
}

fn status_to_wire(status: Status) -> pb::PaymentState {
    match status {
        Status::Saga(PaymentState::Pending) => pb::PaymentState::Pending,
        Status::Saga(PaymentState::Authorizing) => pb::PaymentState::Authorizing,
        Status::Saga(PaymentState::Capturing) => pb::PaymentState::Capturing,
        Status::Saga(PaymentState::Succeeded) => pb::PaymentState::Succeeded,
        Status::Saga(PaymentState::PartiallyPaid) => pb::PaymentState::PartiallyPaid,
        Status::Saga(PaymentState::Reversing) => pb::PaymentState::Reversing,
        Status::Saga(PaymentState::Failed) => pb::PaymentState::Failed,
        Status::PartiallyRefunded => pb::PaymentState::PartiallyRefunded,
        Status::Refunded => pb::PaymentState::Refunded,
    }
}

fn refund_state(state: RefundState) -> pb::PaymentRefundState {
    match state {
        RefundState::Pending => pb::PaymentRefundState::Pending,
        RefundState::Succeeded => pb::PaymentRefundState::Succeeded,
        RefundState::Failed => pb::PaymentRefundState::Failed,
    }
}

/// A refund of a payment on the wire.
pub fn refund_to_wire(record: &PaymentRecord, refund: &Refund) -> pb::PaymentRefund {
    let currency = record.currency();
    pb::PaymentRefund {
        id: refund.id.clone(),
        request_id: refund.request_id.clone(),
        amount: Some(money(currency, refund.amount)),
        reason: refund.reason.clone(),
        state: refund_state(refund.state) as i32,
        parts: refund
            .parts
            .iter()
            .map(|p| pb::PaymentRefundPart {
                leg_index: p.leg as i32 + 1,
                amount: Some(money(currency, p.amount)),
                charge_refund_id: p.charge_refund_id.clone().unwrap_or_default(),
                state: refund_state(p.state) as i32,
            })
            .collect(),
        create_time: Some(wire_time(refund.create_time)),
        complete_time: refund.complete_time.map(wire_time),
    }
}

/// A payment on the wire: the record, with the invoice and policy as they were given.
pub fn payment_to_wire(stored: &StoredPayment, update_time: OffsetDateTime) -> pb::Payment {
    let record = &stored.record;
    let request = pb::CreatePaymentRequest::decode(stored.request.as_slice()).unwrap_or_default();
    let currency = record.currency();
    let legs = record
        .saga
        .legs
        .iter()
        .zip(&record.legs)
        .enumerate()
        .map(|(i, (leg, detail))| {
            let member = record.member(&leg.token);
            let state = match leg.state {
                LegState::Pending => pb::LegState::Pending,
                LegState::Authorizing => pb::LegState::Authorizing,
                LegState::Authorized | LegState::Capturing | LegState::Voiding => {
                    pb::LegState::Authorized
                }
                LegState::Declined => pb::LegState::Declined,
                LegState::Voided => pb::LegState::Voided,
                LegState::Captured if detail.refunded >= leg.approved && leg.approved > 0 => {
                    pb::LegState::Refunded
                }
                LegState::Captured if detail.refunded > 0 => pb::LegState::PartiallyRefunded,
                LegState::Captured => pb::LegState::Captured,
            };
            let covers = match leg.state {
                LegState::Declined => 0,
                LegState::Pending | LegState::Authorizing => leg.amount,
                _ => leg.approved,
            };
            let held = matches!(
                leg.state,
                LegState::Authorized | LegState::Capturing | LegState::Voiding
            );
            pb::PaymentLeg {
                index: i as i32 + 1,
                token: leg.token.clone(),
                label: member.map(|m| m.label.clone()).unwrap_or_default(),
                last4: detail
                    .last4
                    .clone()
                    .or(member.map(|m| m.last4.clone()))
                    .unwrap_or_default(),
                cost_center: member
                    .and_then(|m| m.cost_center.clone())
                    .or(record.cost_center.clone())
                    .unwrap_or_default(),
                amount: Some(money(currency, covers)),
                charge_amount: Some(money(currency, covers)),
                fx_rate: String::new(),
                state: state as i32,
                authorized: Some(money(currency, if held { leg.approved } else { 0 })),
                captured: Some(money(
                    currency,
                    if leg.state == LegState::Captured {
                        leg.approved
                    } else {
                        0
                    },
                )),
                refunded: Some(money(currency, detail.refunded)),
                charge_id: detail.charge_id.clone().unwrap_or_default(),
                authorization_code: detail.authorization_code.clone().unwrap_or_default(),
            }
        })
        .collect();
    let attempts = record
        .attempts
        .iter()
        .map(|a| {
            let leg = &record.saga.legs[a.leg];
            let member = record.member(&leg.token);
            pb::PaymentAttempt {
                number: a.number as i32,
                leg_index: a.leg as i32 + 1,
                token: leg.token.clone(),
                label: member.map(|m| m.label.clone()).unwrap_or_default(),
                last4: record.legs[a.leg]
                    .last4
                    .clone()
                    .or(member.map(|m| m.last4.clone()))
                    .unwrap_or_default(),
                requested: Some(money(currency, a.requested)),
                approved: Some(money(currency, a.approved)),
                outcome: match a.outcome {
                    AttemptOutcome::Pending => pb::AttemptOutcome::Pending,
                    AttemptOutcome::Approved => pb::AttemptOutcome::Approved,
                    AttemptOutcome::PartiallyApproved => pb::AttemptOutcome::PartiallyApproved,
                    AttemptOutcome::Declined => pb::AttemptOutcome::Declined,
                    AttemptOutcome::Error => pb::AttemptOutcome::Error,
                } as i32,
                decline_code: a
                    .decline_code
                    .as_deref()
                    .and_then(|c| types::DeclineCode::from_str_name(&format!("DECLINE_CODE_{c}")))
                    .unwrap_or_default() as i32,
                next_action: match a.next_action {
                    Some(NextAction::RetrySameCard) => types::NextAction::RetrySameCard,
                    Some(NextAction::TryNextCard) => types::NextAction::TryNextCard,
                    Some(NextAction::DoNotRetry) => types::NextAction::DoNotRetry,
                    None => types::NextAction::Unspecified,
                } as i32,
                error_reason: a.error_reason.clone().unwrap_or_default(),
                charge_id: a.charge_id.clone().unwrap_or_default(),
                authorization_code: a.authorization_code.clone().unwrap_or_default(),
                start_time: Some(wire_time(a.start_time)),
                end_time: a.end_time.map(wire_time),
            }
        })
        .collect();
    pb::Payment {
        id: record.id.clone(),
        request_id: request.request_id.clone(),
        invoice: request.invoice.clone(),
        card_group_id: stored.card_group_id.clone(),
        billing_account_id: stored.billing_account_id.clone(),
        policy: match &stored.policy {
            Some(policy) => pb::AllocationPolicy::decode(policy.as_slice()).ok(),
            None => request.policy_override.clone(),
        },
        state: status_to_wire(record.status()) as i32,
        authorized: Some(money(currency, record.authorized())),
        captured: Some(money(currency, record.captured())),
        refunded: Some(money(currency, record.refunded())),
        remaining: Some(money(currency, record.remaining())),
        legs,
        attempts,
        refunds: record
            .refunds
            .iter()
            .map(|r| refund_to_wire(record, r))
            .collect(),
        summary: record.summary(),
        create_time: Some(wire_time(record.create_time)),
        update_time: Some(wire_time(update_time)),
        complete_time: record.complete_time.map(wire_time),
    }
}

/// An event's wire type and its encoded `PaymentEvent`, with the payment as it is now.
pub fn event_body(
    stored: &StoredPayment,
    event: &Event,
    id: &str,
    sequence: i64,
    now: OffsetDateTime,
) -> Result<(&'static str, Vec<u8>), Error> {
    let (name, kind) = event_type(event.kind);
    let message = pb::PaymentEvent {
        id: id.to_owned(),
        sequence,
        r#type: kind as i32,
        payment: Some(payment_to_wire(stored, now)),
        create_time: Some(wire_time(now)),
        summary: event.summary.clone(),
        leg_index: event.leg.map_or(0, |l| l as i32 + 1),
        attempt_number: event.attempt.map_or(0, |n| n as i32),
        refund_id: event.refund.clone().unwrap_or_default(),
    };
    Ok((name, message.encode_to_vec()))
}

fn event_type(kind: EventKind) -> (&'static str, pb::PaymentEventType) {
    use pb::PaymentEventType as T;
    match kind {
        EventKind::PaymentCreated => ("payment.created", T::PaymentCreated),
        EventKind::PaymentAuthorizing => ("payment.authorizing", T::PaymentAuthorizing),
        EventKind::PaymentCapturing => ("payment.capturing", T::PaymentCapturing),
        EventKind::PaymentSucceeded => ("payment.succeeded", T::PaymentSucceeded),
        EventKind::PaymentPartiallyPaid => ("payment.partially_paid", T::PaymentPartiallyPaid),
        EventKind::PaymentReversing => ("payment.reversing", T::PaymentReversing),
        EventKind::PaymentFailed => ("payment.failed", T::PaymentFailed),
        EventKind::PaymentPartiallyRefunded => {
            ("payment.partially_refunded", T::PaymentPartiallyRefunded)
        }
        EventKind::PaymentRefunded => ("payment.refunded", T::PaymentRefunded),
        EventKind::LegAuthorized => ("leg.authorized", T::LegAuthorized),
        EventKind::LegDeclined => ("leg.declined", T::LegDeclined),
        EventKind::LegReallocated => ("leg.reallocated", T::LegReallocated),
        EventKind::LegCaptured => ("leg.captured", T::LegCaptured),
        EventKind::LegVoided => ("leg.voided", T::LegVoided),
        EventKind::LegRefunded => ("leg.refunded", T::LegRefunded),
        EventKind::RefundCreated => ("refund.created", T::RefundCreated),
        EventKind::RefundSucceeded => ("refund.succeeded", T::RefundSucceeded),
        EventKind::RefundFailed => ("refund.failed", T::RefundFailed),
        EventKind::CardIneligible => ("card.ineligible", T::CardIneligible),
    }
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

    #[test]
    fn invoice_violations_name_their_fields() {
        let mut v = Violations::default();
        let wire = pb::Invoice {
            id: "bad id with spaces".into(),
            amount: Some(types::Money {
                currency_code: "USD".into(),
                minor_units: 1000,
            }),
            lines: vec![pb::InvoiceLine {
                amount: Some(types::Money {
                    currency_code: "USD".into(),
                    minor_units: 999,
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        invoice(&mut v, Some(&wire), 1_000_000);
        let fields: Vec<_> = v.0.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, ["invoice.id", "invoice.lines"]);
        let mut v = Violations::default();
        let mut zero = wire.clone();
        zero.id = "INV-1".into();
        zero.lines.clear();
        zero.amount.as_mut().unwrap().minor_units = 0;
        invoice(&mut v, Some(&zero), 1_000_000);
        assert_eq!(v.0[0].field, "invoice.amount.minor_units");
    }
}
