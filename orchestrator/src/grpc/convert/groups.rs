//! Card groups between wire and domain: the checks of `CardGroupService`'s requests, and
//! groups (as stored, and as stored before they were kept as domain data) on the wire.

use std::collections::HashMap;

use prost::Message as _;
use tandem_money::Money;
use tandem_proto::tandem::orchestrator::v1 as pb;
use tandem_proto::tandem::r#type::v1 as types;
use tandem_runtime::fields::Violations;
use time::OffsetDateTime;

use crate::commands::{GroupArchive, GroupQuery, GroupUpdate, NewGroup};
use crate::domain::group::{
    CardGroup, GroupDraft, GroupMember, MemberRules, MemberSuspension, Policy,
};
use crate::error::Error;
use crate::storage::{Cursor, NewEvent, StoredContent, StoredGroup};

use super::{
    add_policy, currency, free_text, is_id_text, money, next_page_token, optional_limit,
    page_after, page_size, policy, request_hash, request_id, resource_id, timestamp, wire_time,
};

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
                &crate::domain::allocation::Exchange::none(currency),
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
        creator: stored.creator.as_ref().map(super::actor),
        updater: stored.updater.as_ref().map(super::actor),
    })
}

/// The kinds of a card group's events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupEventKind {
    /// `card_group.created`
    Created,
    /// `card_group.updated`
    Updated,
    /// `card_group.archived`
    Archived,
}

/// The names of a card group's event types, as the feed filters them.
pub const GROUP_EVENT_TYPES: [&str; 3] = [
    "card_group.created",
    "card_group.updated",
    "card_group.archived",
];

/// The next event of `stored` (its `events` already counting it), by `actor`, as its outbox
/// row: an encoded `CardGroupEvent` with the group as it is now.
pub fn group_event(
    stored: &StoredGroup,
    kind: GroupEventKind,
    now: OffsetDateTime,
) -> Result<NewEvent, Error> {
    let (name, wire) = match kind {
        GroupEventKind::Created => (GROUP_EVENT_TYPES[0], pb::CardGroupEventType::Created),
        GroupEventKind::Updated => (GROUP_EVENT_TYPES[1], pb::CardGroupEventType::Updated),
        GroupEventKind::Archived => (GROUP_EVENT_TYPES[2], pb::CardGroupEventType::Archived),
    };
    let id = tandem_runtime::ids::random_id("evt_");
    let message = pb::CardGroupEvent {
        id: id.clone(),
        sequence: stored.events,
        r#type: wire as i32,
        card_group: Some(group_to_wire(stored)?),
        actor: stored.updater.as_ref().map(super::actor),
        create_time: Some(wire_time(now)),
        type_name: name.to_owned(),
    };
    Ok(NewEvent {
        sequence: stored.events,
        id,
        kind: name,
        body: message.encode_to_vec(),
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

#[cfg(test)]
mod tests {
    use tandem_money::Currency;

    use super::*;
    use crate::domain::planning::Invoice;

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
            creator: None,
            updater: None,
            events: 0,
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
        let plan = crate::domain::planning::plan(
            &group.rules(),
            &group.policy,
            &invoice,
            |_| 0,
            time,
            Vec::new(),
        )
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
}
