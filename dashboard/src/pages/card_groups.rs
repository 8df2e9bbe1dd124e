//! Card groups: the list, and a group's cards with their limits, this month's spend and its
//! policy.

use std::fmt::Write as _;

use tandem_proto::tandem::orchestrator::v1 as pb;

use super::{PAGE_SIZE, Page, Query, bare, query_string};
use crate::api::{Api, ApiError, as_person};
use crate::forms::Visit;
use crate::html::{escape, money, page};

/// `/card-groups`: the active card groups, newest first, a page at a time.
pub async fn card_groups(api: &Api, visit: &Visit<'_>, query: Option<&str>) -> Page {
    let person = visit.person;
    let query = Query::parse(query, &["page_token"])?;
    let request = pb::ListCardGroupsRequest {
        page_size: PAGE_SIZE,
        page_token: query.get("page_token"),
        ..Default::default()
    };
    let page_of = api
        .card_groups()
        .list_card_groups(as_person(request, person))
        .await?
        .into_inner();
    let mut body = String::new();
    if page_of.card_groups.is_empty() {
        body.push_str("<p>No card group.</p>\n");
        return Ok(page("Card groups", person, &body));
    }
    body.push_str(
        "<table>\n<caption>Card groups, newest first</caption>\n<thead><tr>\
         <th scope=\"col\">Group</th><th scope=\"col\">Billing account</th>\
         <th scope=\"col\">Currency</th><th scope=\"col\">Cards</th><th scope=\"col\">State</th>\
         </tr></thead>\n<tbody>\n",
    );
    for group in &page_of.card_groups {
        let state = pb::CardGroupState::try_from(group.state).unwrap_or_default();
        let _ = writeln!(
            body,
            "<tr><td><a href=\"/card-groups/{id}\">{name}</a></td><td>{account}</td>\
             <td>{currency}</td><td>{cards}</td><td>{state}</td></tr>",
            id = escape(&group.id),
            name = escape(&group.display_name),
            account = escape(&group.billing_account_id),
            currency = escape(&group.default_currency_code),
            cards = group.members.len(),
            state = bare(state.as_str_name(), "CARD_GROUP_STATE_"),
        );
    }
    body.push_str("</tbody>\n</table>\n");
    if !page_of.next_page_token.is_empty() {
        let next = query_string(&[("page_token", &page_of.next_page_token)]);
        let _ = writeln!(
            body,
            "<p><a href=\"/card-groups?{}\" rel=\"next\">Next page</a></p>",
            escape(&next)
        );
    }
    Ok(page("Card groups", person, &body))
}

/// `/card-groups/{id}`: a group's members with their limits and this month's spend, and its
/// policy.
pub async fn card_group(api: &Api, visit: &Visit<'_>, id: &str) -> Page {
    let person = visit.person;
    let request = pb::GetCardGroupRequest {
        card_group_id: id.to_owned(),
    };
    let group = api
        .card_groups()
        .get_card_group(as_person(request, person))
        .await?
        .into_inner()
        .card_group
        .ok_or(ApiError::NotFound)?;
    let mut body = String::new();
    let policy = group.default_policy.clone().unwrap_or_default();
    let strategy = pb::AllocationStrategy::try_from(policy.strategy).unwrap_or_default();
    let _ = writeln!(
        body,
        "<dl>\n<dt>Billing account</dt><dd>{account}</dd>\n<dt>Currency</dt><dd>{currency}</dd>\n\
         <dt>Policy</dt><dd>{strategy}</dd>\n<dt>Payments</dt>\
         <dd><a href=\"/payments?card_group_id={id}\">this group's payments</a></dd>\n</dl>",
        account = escape(&group.billing_account_id),
        currency = escape(&group.default_currency_code),
        strategy = bare(strategy.as_str_name(), "ALLOCATION_STRATEGY_"),
        id = escape(&group.id),
    );
    body.push_str(
        "<h2>Cards</h2>\n<table class=\"members\">\n<thead><tr><th scope=\"col\">Card</th>\
         <th scope=\"col\">Last four</th><th scope=\"col\">Priority</th>\
         <th scope=\"col\">Cost center</th><th scope=\"col\">Limit per payment</th>\
         <th scope=\"col\">Limit per month</th><th scope=\"col\">Spent this month</th>\
         <th scope=\"col\">State</th></tr></thead>\n<tbody>\n",
    );
    for member in &group.members {
        let state = pb::CardGroupMemberState::try_from(member.state).unwrap_or_default();
        let _ = writeln!(
            body,
            "<tr><td>{label}</td><td>{last4}</td><td>{priority}</td><td>{cost_center}</td>\
             <td class=\"amount\">{per_payment}</td><td class=\"amount\">{per_month}</td>\
             <td class=\"amount\">{spent}</td><td>{state}</td></tr>",
            label = escape(&member.label),
            last4 = escape(&member.last4),
            priority = member.priority,
            cost_center = escape(&member.cost_center),
            per_payment = money(member.limit_per_payment.as_ref()),
            per_month = money(member.limit_per_month.as_ref()),
            spent = money(member.month_to_date_spend.as_ref()),
            state = bare(state.as_str_name(), "CARD_GROUP_MEMBER_STATE_"),
        );
    }
    body.push_str("</tbody>\n</table>\n");
    Ok(page(
        &format!("Card group {}", group.display_name),
        person,
        &body,
    ))
}
