//! The edge between wire and domain: every request field is checked here once, into a
//! [`crate::commands`] value, and every violation names its field path
//! (`card_group.members[2].priority`); domain values become wire messages here too, and so do
//! the group responses stored with request ids and the groups stored as encoded messages
//! before groups were kept as domain data. Apart from the vault client (the edge to the
//! vault), nothing else in the crate reads a wire type's fields.

use std::collections::HashMap;

use prost::Message as _;
use sha2::{Digest as _, Sha256};
use tandem_money::{Currency, Money};
use tandem_proto::tandem::orchestrator::v1 as pb;
use tandem_proto::tandem::r#type::v1 as types;
use tandem_runtime::fields::Violations;
use time::OffsetDateTime;

use crate::commands::{
    GroupArchive, GroupQuery, GroupUpdate, NewGroup, NewPayment, NewRefund, PaymentQuery,
    PolicyOverride, Watch,
};
use crate::config::PaymentSettings;
use crate::domain::allocation::{FixedAmount, PolicyError, RemainderRule, Strategy, Weight};
use crate::domain::group::{
    ATTEMPTS_DEFAULT, ATTEMPTS_MAX, CardGroup, CeilingWindow, GroupDraft, GroupMember,
    LimitOverride, MemberRules, MemberSuspension, Policy,
};
use crate::domain::planning::Invoice;
use crate::domain::record::events::{Event, EventKind};
use crate::domain::record::refunds::{Refund, RefundState};
use crate::domain::record::{AttemptOutcome, PaymentRecord, Status};
use crate::domain::saga::{Completion, LegState, NextAction, PaymentState};
use crate::error::Error;
use crate::storage::{Cursor, PaymentFilter, StoredContent, StoredGroup, StoredPayment};

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
                add_policy(v, errors, "card_group.default_policy");
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

/// A stored group as a domain value: its data, or (a row written before groups were kept as
/// domain data) its encoded `CardGroup` message converted as when it was written.
pub fn group_data(stored: &StoredGroup) -> Result<CardGroup, Error> {
    match &stored.content {
        StoredContent::Data(group) => Ok(group.as_ref().clone()),
        StoredContent::Encoded(body) => decode_group(&stored.id, body),
    }
}

/// Group `id` as domain data from its encoded `CardGroup` message (how groups were stored
/// before they were kept as domain data), converted as when it was written.
pub fn decode_group(id: &str, body: &[u8]) -> Result<CardGroup, Error> {
    let wire =
        pb::CardGroup::decode(body).map_err(|e| Error::Corrupt(format!("card group {id}: {e}")))?;
    let mut v = Violations::default();
    let draft = group_draft(&mut v, &wire)
        .filter(|_| v.is_empty())
        .ok_or_else(|| Error::Corrupt(format!("card group {id} does not check")))?;
    let mut group = draft.group;
    for (member, stored) in group.members.iter_mut().zip(&wire.members) {
        member.last4 = stored.last4.clone();
        member.suspension = stored.suspension.as_ref().map(|s| MemberSuspension {
            decline_code: types::DeclineCode::try_from(s.decline_code)
                .unwrap_or_default()
                .as_str_name()
                .trim_start_matches("DECLINE_CODE_")
                .to_owned(),
            payment_id: s.payment_id.clone(),
            suspend_time: timestamp(s.suspend_time.as_ref()).unwrap_or(OffsetDateTime::UNIX_EPOCH),
        });
    }
    Ok(group)
}

/// A group as stored and read back: its content with the output-only fields from the columns.
pub fn group_to_wire(stored: &StoredGroup) -> Result<pb::CardGroup, Error> {
    let data = group_data(stored)?;
    let default_policy = pb::AllocationPolicy::decode(data.policy_given.as_slice())
        .map_err(|e| Error::Corrupt(format!("card group {} policy: {e}", stored.id)))?;
    Ok(pb::CardGroup {
        id: stored.id.clone(),
        billing_account_id: data.billing_account_id,
        display_name: data.display_name,
        default_currency_code: data.default_currency_code,
        members: data.members.into_iter().map(member_to_wire).collect(),
        default_policy: Some(default_policy),
        state: if stored.archived {
            pb::CardGroupState::Archived
        } else {
            pb::CardGroupState::Active
        } as i32,
        etag: etag(stored.version),
        create_time: Some(wire_time(stored.create_time)),
        update_time: Some(wire_time(stored.update_time)),
        archive_time: stored.archive_time.map(wire_time),
    })
}

fn member_to_wire(member: GroupMember) -> pb::CardGroupMember {
    let rules = member.rules;
    let limit = |limit: Option<i64>| limit.map(|units| money(rules.currency, units));
    pb::CardGroupMember {
        token: rules.token.clone(),
        label: rules.label.clone(),
        currency_code: rules.currency.code().to_owned(),
        priority: i32::from(rules.priority),
        cost_center: rules.cost_center.clone().unwrap_or_default(),
        limit_per_payment: limit(rules.limit_per_payment),
        limit_per_month: limit(rules.limit_per_month),
        state: if rules.active {
            pb::CardGroupMemberState::Active
        } else {
            pb::CardGroupMemberState::Suspended
        } as i32,
        suspension: member.suspension.map(|s| pb::MemberSuspension {
            decline_code: types::DeclineCode::from_str_name(&format!(
                "DECLINE_CODE_{}",
                s.decline_code
            ))
            .unwrap_or_default() as i32,
            payment_id: s.payment_id,
            suspend_time: Some(wire_time(s.suspend_time)),
        }),
        last4: member.last4,
        month_to_date_spend: None,
    }
}

/// A group from a request (or as stored before groups were kept as domain data), checked:
/// `None` if it does not check (the violations are in `v`).
fn group_draft(v: &mut Violations, wire: &pb::CardGroup) -> Option<GroupDraft> {
    let input = group_input(v, wire)?;
    if input.members.len() != wire.members.len() {
        return None;
    }
    let states = wire
        .members
        .iter()
        .map(|m| match pb::CardGroupMemberState::try_from(m.state) {
            Ok(pb::CardGroupMemberState::Active) => Some(true),
            Ok(pb::CardGroupMemberState::Suspended) => Some(false),
            Ok(pb::CardGroupMemberState::Unspecified) | Err(_) => None,
        })
        .collect();
    let members = input
        .members
        .into_iter()
        .map(|rules| GroupMember {
            rules,
            last4: String::new(),
            suspension: None,
        })
        .collect();
    let group = CardGroup {
        billing_account_id: input.billing_account_id,
        display_name: wire.display_name.clone(),
        default_currency_code: wire.default_currency_code.clone(),
        members,
        policy: input.policy,
        policy_given: wire
            .default_policy
            .as_ref()
            .map(prost::Message::encode_to_vec)
            .unwrap_or_default(),
    };
    Some(GroupDraft { group, states })
}

/// Paths `UpdateCardGroup` may replace.
const UPDATABLE: [&str; 4] = [
    "display_name",
    "default_currency_code",
    "members",
    "default_policy",
];

/// The checks of `CreateCardGroup`: the command, or every violation.
pub fn create_card_group(request: &pb::CreateCardGroupRequest) -> Result<NewGroup, Error> {
    let mut v = Violations::default();
    request_id(&mut v, "request_id", &request.request_id);
    let group = request.card_group.clone().unwrap_or_default();
    if request.card_group.is_none() {
        v.add("card_group", "is required");
    }
    let draft = group_draft(&mut v, &group);
    let draft = v
        .finish::<_, Error>(draft)?
        .ok_or_else(|| Error::invalid("card_group", "is invalid"))?;
    Ok(NewGroup {
        request_id: request.request_id.clone(),
        request_hash: request_hash("CreateCardGroup", request),
        billing_account_id: draft.group.billing_account_id.clone(),
        draft,
    })
}

/// The checks of `UpdateCardGroup` that need no database: the command, or every violation.
pub fn update_card_group(request: &pb::UpdateCardGroupRequest) -> Result<GroupUpdate, Error> {
    let mut v = Violations::default();
    request_id(&mut v, "request_id", &request.request_id);
    let changes = request.card_group.clone().unwrap_or_default();
    let id = resource_id(&mut v, "card_group.id", "cg_", &changes.id);
    let paths: Vec<String> = request
        .update_mask
        .as_ref()
        .map(|m| m.paths.clone())
        .unwrap_or_default();
    if paths.is_empty() {
        v.add("update_mask", "is required");
    }
    for (i, path) in paths.iter().enumerate() {
        if path != "*" && !UPDATABLE.contains(&path.as_str()) {
            v.add(
                format!("update_mask.paths[{i}]"),
                "must be display_name, default_currency_code, members, default_policy or *",
            );
        }
    }
    v.finish::<_, Error>(())?;
    Ok(GroupUpdate {
        request_id: request.request_id.clone(),
        request_hash: request_hash("UpdateCardGroup", request),
        card_group_id: id,
        etag: changes.etag.clone(),
        merge: Box::new(move |current: &CardGroup| merged_group(current, &changes, &paths)),
    })
}

/// The group `current` with the fields of `changes` named in `paths` applied, checked as a
/// whole like a new group's.
fn merged_group(
    current: &CardGroup,
    changes: &pb::CardGroup,
    paths: &[String],
) -> Result<GroupDraft, Error> {
    let default_policy = pb::AllocationPolicy::decode(current.policy_given.as_slice())
        .map_err(|e| Error::Corrupt(format!("card group policy: {e}")))?;
    let mut group = pb::CardGroup {
        billing_account_id: current.billing_account_id.clone(),
        display_name: current.display_name.clone(),
        default_currency_code: current.default_currency_code.clone(),
        members: current
            .members
            .iter()
            .cloned()
            .map(member_to_wire)
            .collect(),
        default_policy: Some(default_policy),
        ..Default::default()
    };
    let all = paths.iter().any(|p| p == "*");
    let has = |name: &str| all || paths.iter().any(|p| p == name);
    if has("display_name") {
        group.display_name = changes.display_name.clone();
    }
    if has("default_currency_code") {
        group.default_currency_code = changes.default_currency_code.clone();
    }
    if has("members") {
        group.members = changes.members.clone();
    }
    if has("default_policy") {
        group.default_policy = changes.default_policy.clone();
    }
    let mut v = Violations::default();
    let draft = group_draft(&mut v, &group);
    v.finish::<_, Error>(draft)?
        .ok_or_else(|| Error::invalid("card_group", "is invalid"))
}

/// The checks of `DeleteCardGroup`.
pub fn delete_card_group(request: &pb::DeleteCardGroupRequest) -> Result<GroupArchive, Error> {
    let mut v = Violations::default();
    request_id(&mut v, "request_id", &request.request_id);
    let id = resource_id(&mut v, "card_group_id", "cg_", &request.card_group_id);
    v.finish(GroupArchive {
        request_id: request.request_id.clone(),
        request_hash: request_hash("DeleteCardGroup", request),
        card_group_id: id,
        etag: request.etag.clone(),
    })
}

/// The group id of `GetCardGroup`.
pub fn get_card_group(request: &pb::GetCardGroupRequest) -> Result<String, Error> {
    let mut v = Violations::default();
    let id = resource_id(&mut v, "card_group_id", "cg_", &request.card_group_id);
    v.finish(id)
}

/// The query of `ListCardGroups`, and the scope its page tokens belong to.
pub fn list_card_groups(
    request: &pb::ListCardGroupsRequest,
    page_size_max: i32,
) -> Result<(GroupQuery, String), Error> {
    let mut v = Violations::default();
    let size = page_size(&mut v, request.page_size, page_size_max);
    let scope = format!("{}|{}", request.billing_account_id, request.show_archived);
    let after = page_after(&mut v, &request.page_token, &scope);
    let query = GroupQuery {
        billing_account_id: Some(request.billing_account_id.clone()).filter(|b| !b.is_empty()),
        show_archived: request.show_archived,
        size,
        after,
    };
    v.finish((query, scope))
}

/// A page of `ListCardGroups`.
pub fn groups_page(
    groups: &[StoredGroup],
    next: Option<&Cursor>,
    scope: &str,
) -> Result<pb::ListCardGroupsResponse, Error> {
    Ok(pb::ListCardGroupsResponse {
        card_groups: groups.iter().map(group_to_wire).collect::<Result<_, _>>()?,
        next_page_token: next_page_token(next, scope),
    })
}

/// The stored group's members as `(token, last four digits)`.
pub fn group_cards(stored: &StoredGroup) -> Result<Vec<(String, String)>, Error> {
    Ok(group_data(stored)?
        .members
        .into_iter()
        .map(|m| (m.rules.token, m.last4))
        .collect())
}

/// The answer to `GetCardGroup`: the group with each member's month-to-date spend.
pub fn group_with_spend(
    stored: &StoredGroup,
    spend: &HashMap<(String, String), i64>,
) -> Result<pb::CardGroup, Error> {
    let mut group = group_to_wire(stored)?;
    for member in &mut group.members {
        let key = (member.token.clone(), member.currency_code.clone());
        member.month_to_date_spend = Some(types::Money {
            currency_code: member.currency_code.clone(),
            minor_units: spend.get(&key).copied().unwrap_or(0),
        });
    }
    Ok(group)
}

/// A group as the response stored with the request id that wrote it (an encoded
/// `CardGroup`).
pub fn group_response(stored: &StoredGroup) -> Result<Vec<u8>, Error> {
    Ok(group_to_wire(stored)?.encode_to_vec())
}

/// A stored group response as the answer to a card-group mutation.
pub fn card_group(response: &[u8]) -> Result<pb::CardGroup, Error> {
    pb::CardGroup::decode(response).map_err(|e| Error::Corrupt(format!("stored response: {e}")))
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
const PAGES: &str = "tandem/orchestrator";

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

/// The checks of `CreatePayment` that need no database: the command, or every violation.
pub fn create_payment(
    request: pb::CreatePaymentRequest,
    settings: &PaymentSettings,
) -> Result<NewPayment, Error> {
    let mut v = Violations::default();
    request_id(&mut v, "request_id", &request.request_id);
    let group_id = resource_id(&mut v, "card_group_id", "cg_", &request.card_group_id);
    let invoice = invoice(&mut v, request.invoice.as_ref(), settings.amount_minor_max);
    let wait_ms = match request.wait_timeout_ms {
        0 => 30_000,
        ms if (1..=i64::try_from(settings.wait_timeout_ms_max).unwrap_or(i64::MAX))
            .contains(&ms) =>
        {
            ms as u64
        }
        _ => {
            v.add(
                "wait_timeout_ms",
                format!("must be 0 or 1-{}", settings.wait_timeout_ms_max),
            );
            0
        }
    };
    let invoice = v
        .finish::<_, Error>(invoice)?
        .ok_or_else(|| Error::invalid("invoice", "is invalid"))?;
    // `wait` and its timeout are not part of the request's identity.
    let mut identity = request.clone();
    identity.wait = false;
    identity.wait_timeout_ms = 0;
    let policy_override = request.policy_override.map(|wire| PolicyOverride {
        encoded: wire.encode_to_vec(),
        check: Box::new(move |members: &[MemberRules], currency: Currency| {
            let mut v = Violations::default();
            let checked = policy(&mut v, "policy_override", &wire, members, Some(currency));
            (checked, v.into_inner())
        }),
    });
    Ok(NewPayment {
        request_id: request.request_id,
        card_group_id: group_id,
        invoice,
        policy_override,
        wait: request.wait,
        wait_ms,
        request_hash: request_hash("CreatePayment", &identity),
        request: identity.encode_to_vec(),
    })
}

/// The violations of a payment's plan, named after the request's fields: an override's under
/// `policy_override`, the group's default policy's under `card_group_id`.
pub fn plan_violations(errors: Vec<PolicyError>, overridden: bool) -> Error {
    let mut v = Violations::default();
    if overridden {
        add_policy(&mut v, errors, "policy_override");
    } else {
        for error in errors {
            if error.field.starts_with("policy") {
                v.add(
                    "card_group_id",
                    format!("the group's default policy: {}", error.description),
                );
            } else {
                v.add(error.field, error.description);
            }
        }
    }
    Error::InvalidArgument(v.into_inner())
}

/// The payment id of `GetPayment`.
pub fn get_payment(request: &pb::GetPaymentRequest) -> Result<String, Error> {
    let mut v = Violations::default();
    let id = resource_id(&mut v, "payment_id", "pay_", &request.payment_id);
    v.finish(id)
}

/// The query of `ListPayments`, and the scope its page tokens belong to.
pub fn list_payments(
    request: &pb::ListPaymentsRequest,
    page_size_max: i32,
) -> Result<(PaymentQuery, String), Error> {
    let mut v = Violations::default();
    let size = page_size(&mut v, request.page_size, page_size_max);
    if !request.card_group_id.is_empty() {
        resource_id(&mut v, "card_group_id", "cg_", &request.card_group_id);
    }
    let state = state_filter(&mut v, request.state);
    let filter = PaymentFilter {
        card_group_id: Some(request.card_group_id.clone()).filter(|s| !s.is_empty()),
        state,
        invoice_id: Some(request.invoice_id.clone()).filter(|s| !s.is_empty()),
        billing_account_id: Some(request.billing_account_id.clone()).filter(|s| !s.is_empty()),
    };
    let scope = format!(
        "{}|{}|{}|{}",
        request.card_group_id, request.state, request.invoice_id, request.billing_account_id
    );
    let after = page_after(&mut v, &request.page_token, &scope);
    v.finish((
        PaymentQuery {
            filter,
            size,
            after,
        },
        scope,
    ))
}

/// Where a page starts: after the row of `token` (none when empty); a token made for other
/// filters than `scope`'s is a violation of `page_token`.
fn page_after(v: &mut Violations, token: &str, scope: &str) -> Option<Cursor> {
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
fn next_page_token(next: Option<&Cursor>, scope: &str) -> String {
    next.map(|cursor| encode_page_token(cursor, scope.as_bytes()))
        .unwrap_or_default()
}

/// A page of `ListPayments`.
pub fn payments_page(
    payments: &[StoredPayment],
    next: Option<&Cursor>,
    scope: &str,
) -> pb::ListPaymentsResponse {
    pb::ListPaymentsResponse {
        payments: payments
            .iter()
            .map(|p| payment_to_wire(p, p.update_time))
            .collect(),
        next_page_token: next_page_token(next, scope),
    }
}

/// The checks of `RefundPayment`: the command, or every violation.
pub fn refund_payment(request: &pb::RefundPaymentRequest) -> Result<NewRefund, Error> {
    let mut v = Violations::default();
    request_id(&mut v, "request_id", &request.request_id);
    let payment_id = resource_id(&mut v, "payment_id", "pay_", &request.payment_id);
    if request.reason.chars().count() > 200 || request.reason.chars().any(char::is_control) {
        v.add(
            "reason",
            "must be at most 200 characters without control characters",
        );
    }
    let mut amount = None;
    if let Some(wire) = &request.amount {
        let currency = Currency::parse(&wire.currency_code);
        if currency.is_err() {
            v.add(
                "amount.currency_code",
                "must be a known ISO 4217 currency code",
            );
        }
        if wire.minor_units <= 0 {
            v.add("amount.minor_units", "must be positive");
        }
        amount = currency.ok().map(|c| Money::new(c, wire.minor_units));
    }
    v.finish(NewRefund {
        request_id: request.request_id.clone(),
        payment_id,
        amount,
        reason: request.reason.clone(),
        request_hash: request_hash("RefundPayment", request),
    })
}

/// The answer to `RefundPayment`: refund `refund_id` and its payment.
pub fn refund_response(
    payment: &StoredPayment,
    refund_id: &str,
) -> Result<pb::RefundPaymentResponse, Error> {
    let refund = payment
        .record
        .refunds
        .iter()
        .find(|r| r.id == refund_id)
        .ok_or_else(|| Error::Corrupt(format!("refund {refund_id} missing")))?;
    Ok(pb::RefundPaymentResponse {
        refund: Some(refund_to_wire(&payment.record, refund)),
        payment: Some(payment_to_wire(payment, payment.update_time)),
    })
}

/// The checks of `WatchPayment`.
pub fn watch_payment(request: &pb::WatchPaymentRequest) -> Result<Watch, Error> {
    let mut v = Violations::default();
    let payment_id = resource_id(&mut v, "payment_id", "pay_", &request.payment_id);
    if request.after_sequence < 0 {
        v.add("after_sequence", "must not be negative");
    }
    v.finish(Watch {
        payment_id,
        after_sequence: request.after_sequence,
    })
}

/// A stored event (an encoded `PaymentEvent`) as `WatchPayment` sends it.
pub fn watch_event(body: &[u8]) -> Result<pb::WatchPaymentResponse, Error> {
    let event =
        pb::PaymentEvent::decode(body).map_err(|e| Error::Corrupt(format!("event: {e}")))?;
    Ok(pb::WatchPaymentResponse { event: Some(event) })
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

    /// A group the previous version stored (its encoded `CardGroup` message) reads back exactly
    /// as it was written, converts to domain data that reads back the same, and pays: the
    /// suspended member is left out, the limited one gives what its limit allows.
    #[test]
    fn groups_stored_as_messages_read_and_pay_as_before() {
        let usd = |minor_units| {
            Some(types::Money {
                currency_code: "USD".into(),
                minor_units,
            })
        };
        let token = |c: char| format!("tok_{c}{}", "a".repeat(25));
        let time = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let member = |c: char, priority: i32, state: pb::CardGroupMemberState, last4: &str| {
            pb::CardGroupMember {
                token: token(c),
                label: format!("card {c}"),
                currency_code: "USD".into(),
                priority,
                state: state as i32,
                last4: last4.into(),
                ..Default::default()
            }
        };
        let mut limited = member('a', 1, pb::CardGroupMemberState::Active, "4242");
        limited.limit_per_payment = usd(5_000);
        limited.cost_center = "ops".into();
        let mut suspended = member('b', 2, pb::CardGroupMemberState::Suspended, "1881");
        suspended.suspension = Some(pb::MemberSuspension {
            decline_code: types::DeclineCode::LostCard as i32,
            payment_id: "pay_x".into(),
            suspend_time: Some(wire_time(time)),
        });
        let body = pb::CardGroup {
            billing_account_id: "acct-1".into(),
            display_name: "Travel".into(),
            default_currency_code: "USD".into(),
            members: vec![
                limited,
                suspended,
                member('c', 3, pb::CardGroupMemberState::Active, "0005"),
            ],
            // Weights mean nothing to SEQUENTIAL, but a group shows its policy as given.
            default_policy: Some(pb::AllocationPolicy {
                strategy: pb::AllocationStrategy::Sequential as i32,
                weights: vec![pb::MemberWeight {
                    token: token('a'),
                    basis_points: 7,
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let stored = |content| StoredGroup {
            id: "cg_aaaaaaaaaaaaaaaaaaaaaaaaaa".into(),
            content,
            version: 3,
            archived: false,
            create_time: time,
            update_time: time,
            archive_time: None,
        };
        let old = stored(StoredContent::Encoded(body.encode_to_vec()));
        let mut expected = body.clone();
        expected.id = old.id.clone();
        expected.state = pb::CardGroupState::Active as i32;
        expected.etag = etag(3);
        expected.create_time = Some(wire_time(time));
        expected.update_time = Some(wire_time(time));
        assert_eq!(group_to_wire(&old).unwrap(), expected);

        let group = decode_group(&old.id, &body.encode_to_vec()).unwrap();
        let converted = stored(StoredContent::Data(Box::new(group.clone())));
        assert_eq!(group_to_wire(&converted).unwrap(), expected);
        assert_eq!(
            group.policy_given,
            body.default_policy.as_ref().unwrap().encode_to_vec()
        );

        let invoice = Invoice {
            id: "INV-1".into(),
            amount: Money::new(Currency::parse("USD").unwrap(), 12_000),
            cost_center: None,
            lines: Vec::new(),
        };
        let plan =
            crate::domain::planning::plan(&group.rules(), &group.policy, &invoice, |_| 0, time)
                .unwrap();
        let legs: Vec<_> = plan
            .saga
            .legs
            .iter()
            .map(|leg| (leg.token.clone(), leg.amount))
            .collect();
        assert_eq!(legs, [(token('a'), 5_000), (token('c'), 7_000)]);
        assert_eq!(group.last4(&token('c')), "0005");
    }

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
        let violations = v.into_inner();
        let fields: Vec<_> = violations.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, ["invoice.id", "invoice.lines"]);
        let mut v = Violations::default();
        let mut zero = wire.clone();
        zero.id = "INV-1".into();
        zero.lines.clear();
        zero.amount.as_mut().unwrap().minor_units = 0;
        invoice(&mut v, Some(&zero), 1_000_000);
        assert_eq!(v.into_inner()[0].field, "invoice.amount.minor_units");
    }
}
