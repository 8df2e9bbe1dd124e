//! The pages: each reads what it shows through [`crate::api`] as the person, and renders it
//! with [`crate::html`]. Filters live in the URL's query string, so a view can be saved and
//! shared.

use std::fmt::Write as _;

use tandem_proto::tandem::orchestrator::v1 as pb;
use tandem_proto::tandem::r#type::v1 as types;
use tandem_tls::identity::Caller;

use crate::api::{Api, ApiError};
use crate::html::{escape, money, page, time};

/// Payments per page.
const PAGE_SIZE: i32 = 50;
/// Longest filter value read from a query string, in bytes.
const FILTER_BYTES_MAX: usize = 128;

/// The filters of the payments page, as its query string carries them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PaymentFilters {
    /// A state's name without its prefix (`SUCCEEDED`), or empty.
    pub state: String,
    /// A card group id, or empty.
    pub card_group_id: String,
    /// An invoice id, or empty.
    pub invoice_id: String,
    /// The page to show (`next_page_token` of the one before), or empty.
    pub page_token: String,
}

impl PaymentFilters {
    /// The filters of `query` (a URL's query string); unknown keys are ignored, values over
    /// [`FILTER_BYTES_MAX`] refused.
    pub fn parse(query: Option<&str>) -> Result<PaymentFilters, ApiError> {
        let mut filters = PaymentFilters::default();
        for (key, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            if value.len() > FILTER_BYTES_MAX {
                return Err(ApiError::Invalid(format!("{key} is too long")));
            }
            let value = value.trim().to_owned();
            match key.as_ref() {
                "state" => filters.state = value,
                "card_group_id" => filters.card_group_id = value,
                "invoice_id" => filters.invoice_id = value,
                "page_token" => filters.page_token = value,
                _ => {}
            }
        }
        Ok(filters)
    }

    fn request(&self) -> Result<pb::ListPaymentsRequest, ApiError> {
        let state = if self.state.is_empty() {
            pb::PaymentState::Unspecified
        } else {
            pb::PaymentState::from_str_name(&format!("PAYMENT_STATE_{}", self.state))
                .filter(|state| *state != pb::PaymentState::Unspecified)
                .ok_or_else(|| ApiError::Invalid(format!("no state is named {}", self.state)))?
        };
        Ok(pb::ListPaymentsRequest {
            page_size: PAGE_SIZE,
            page_token: self.page_token.clone(),
            card_group_id: self.card_group_id.clone(),
            state: state as i32,
            invoice_id: self.invoice_id.clone(),
            billing_account_id: String::new(),
            start_time: None,
            end_time: None,
        })
    }

    /// The query string of these filters on the page `page_token`.
    fn query(&self, page_token: &str) -> String {
        url::form_urlencoded::Serializer::new(String::new())
            .append_pair("state", &self.state)
            .append_pair("card_group_id", &self.card_group_id)
            .append_pair("invoice_id", &self.invoice_id)
            .append_pair("page_token", page_token)
            .finish()
    }
}

/// A state's name without its prefix.
fn state_name(state: i32) -> &'static str {
    pb::PaymentState::try_from(state)
        .unwrap_or_default()
        .as_str_name()
        .trim_start_matches("PAYMENT_STATE_")
}

/// `/payments`: the payments the filters select, newest first, a page at a time.
pub async fn payments(api: &Api, person: &Caller, query: Option<&str>) -> Result<String, ApiError> {
    let filters = PaymentFilters::parse(query)?;
    let page_of = api.payments(person, filters.request()?).await?;
    let mut body = String::new();
    let states = [
        "PENDING",
        "AUTHORIZING",
        "IN_REVIEW",
        "CAPTURING",
        "SUCCEEDED",
        "PARTIALLY_PAID",
        "REVERSING",
        "FAILED",
        "PARTIALLY_REFUNDED",
        "REFUNDED",
    ];
    let _ = write!(
        body,
        "<form class=\"filters\" method=\"get\" action=\"/payments\" role=\"search\">\n\
         <label>State<select name=\"state\"><option value=\"\">Any</option>"
    );
    for state in states {
        let selected = if filters.state == state {
            " selected"
        } else {
            ""
        };
        let _ = write!(body, "<option{selected}>{state}</option>");
    }
    let _ = write!(
        body,
        "</select></label>\n\
         <label>Card group<input name=\"card_group_id\" value=\"{group}\"></label>\n\
         <label>Invoice<input name=\"invoice_id\" value=\"{invoice}\"></label>\n\
         <button type=\"submit\">Filter</button>\n</form>\n",
        group = escape(&filters.card_group_id),
        invoice = escape(&filters.invoice_id),
    );
    if page_of.payments.is_empty() {
        body.push_str("<p>No payment matches.</p>\n");
        return Ok(page("Payments", person, &body));
    }
    body.push_str(
        "<table>\n<caption>Payments, newest first</caption>\n<thead><tr><th scope=\"col\">Payment</th>\
         <th scope=\"col\">Invoice</th><th scope=\"col\">State</th><th scope=\"col\">Amount</th>\
         <th scope=\"col\">Captured</th><th scope=\"col\">Card group</th>\
         <th scope=\"col\">Created</th></tr></thead>\n<tbody>\n",
    );
    for payment in &page_of.payments {
        let invoice = payment.invoice.as_ref();
        let _ = writeln!(
            body,
            "<tr><td><a href=\"/payments/{id}\">{id}</a></td><td>{invoice}</td><td>{state}</td>\
             <td class=\"amount\">{amount}</td><td class=\"amount\">{captured}</td>\
             <td>{group}</td><td>{created}</td></tr>",
            id = escape(&payment.id),
            invoice = escape(invoice.map_or("", |i| i.id.as_str())),
            state = state_name(payment.state),
            amount = money(invoice.and_then(|i| i.amount.as_ref())),
            captured = money(payment.captured.as_ref()),
            group = escape(&payment.card_group_id),
            created = time(payment.create_time.as_ref()),
        );
    }
    body.push_str("</tbody>\n</table>\n");
    if !page_of.next_page_token.is_empty() {
        let _ = writeln!(
            body,
            "<p><a href=\"/payments?{}\" rel=\"next\">Next page</a></p>",
            escape(&filters.query(&page_of.next_page_token))
        );
    }
    Ok(page("Payments", person, &body))
}

/// `/payments/{id}`: the invoice, how it was split across cards, every attempt with its
/// outcome and decline code, and the risk decision.
pub async fn payment(api: &Api, person: &Caller, id: &str) -> Result<String, ApiError> {
    let payment = api.payment(person, id).await?;
    let invoice = payment.invoice.clone().unwrap_or_default();
    let mut body = String::new();
    let _ = write!(
        body,
        "<p class=\"summary\">{summary}</p>\n<dl>\n<dt>State</dt><dd>{state}</dd>\n\
         <dt>Invoice</dt><dd>{invoice} · {amount}</dd>\n<dt>Card group</dt><dd>{group}</dd>\n\
         <dt>Created</dt><dd>{created}</dd>\n<dt>Completed</dt><dd>{completed}</dd>\n",
        summary = escape(&payment.summary),
        state = state_name(payment.state),
        invoice = escape(&invoice.id),
        amount = money(invoice.amount.as_ref()),
        group = escape(&payment.card_group_id),
        created = time(payment.create_time.as_ref()),
        completed = time(payment.complete_time.as_ref()),
    );
    if let Some(risk) = &payment.risk {
        let action = pb::RiskAction::try_from(risk.action)
            .unwrap_or_default()
            .as_str_name()
            .trim_start_matches("RISK_ACTION_");
        let _ = writeln!(
            body,
            "<dt>Risk</dt><dd>{action}, score {score}</dd>",
            score = risk.score
        );
    }
    body.push_str("</dl>\n<h2>Split by card</h2>\n<table class=\"legs\">\n<thead><tr>\
        <th scope=\"col\">Card</th><th scope=\"col\">Last four</th><th scope=\"col\">Cost center</th>\
        <th scope=\"col\">Amount</th><th scope=\"col\">Captured</th><th scope=\"col\">Refunded</th>\
        <th scope=\"col\">State</th></tr></thead>\n<tbody>\n");
    for leg in &payment.legs {
        let state = pb::LegState::try_from(leg.state)
            .unwrap_or_default()
            .as_str_name()
            .trim_start_matches("LEG_STATE_");
        let _ = writeln!(
            body,
            "<tr><td>{label}</td><td>{last4}</td><td>{cost_center}</td>\
             <td class=\"amount\">{amount}</td><td class=\"amount\">{captured}</td>\
             <td class=\"amount\">{refunded}</td><td>{state}</td></tr>",
            label = escape(&leg.label),
            last4 = escape(&leg.last4),
            cost_center = escape(&leg.cost_center),
            amount = money(leg.amount.as_ref()),
            captured = money(leg.captured.as_ref()),
            refunded = money(leg.refunded.as_ref()),
        );
    }
    body.push_str("</tbody>\n</table>\n<h2>Attempts</h2>\n<ol class=\"attempts\">\n");
    for attempt in &payment.attempts {
        let outcome = pb::AttemptOutcome::try_from(attempt.outcome)
            .unwrap_or_default()
            .as_str_name()
            .trim_start_matches("ATTEMPT_OUTCOME_");
        let declined = types::DeclineCode::try_from(attempt.decline_code)
            .ok()
            .filter(|code| *code != types::DeclineCode::Unspecified)
            .map(|code| {
                format!(
                    ", declined {}",
                    code.as_str_name().trim_start_matches("DECLINE_CODE_")
                )
            })
            .unwrap_or_default();
        let _ = writeln!(
            body,
            "<li>{label} ····{last4}: {requested} asked, {approved} approved: {outcome}{declined}</li>",
            label = escape(&attempt.label),
            last4 = escape(&attempt.last4),
            requested = money(attempt.requested.as_ref()),
            approved = money(attempt.approved.as_ref()),
        );
    }
    body.push_str("</ol>\n");
    Ok(page(&format!("Payment {}", payment.id), person, &body))
}

/// An enum value's name without its prefix (`ACTIVE` for `CARD_GROUP_STATE_ACTIVE`).
fn bare<'a>(name: &'a str, prefix: &str) -> &'a str {
    name.strip_prefix(prefix).unwrap_or(name)
}

/// `/card-groups`: the active card groups, newest first, a page at a time.
pub async fn card_groups(
    api: &Api,
    person: &Caller,
    query: Option<&str>,
) -> Result<String, ApiError> {
    let page_token = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(key, _)| key == "page_token")
        .map(|(_, value)| value.into_owned())
        .unwrap_or_default();
    if page_token.len() > FILTER_BYTES_MAX * 4 {
        return Err(ApiError::Invalid("page_token is too long".into()));
    }
    let request = pb::ListCardGroupsRequest {
        page_size: PAGE_SIZE,
        page_token,
        ..Default::default()
    };
    let page_of = api.card_groups(person, request).await?;
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
        let next = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("page_token", &page_of.next_page_token)
            .finish();
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
pub async fn card_group(api: &Api, person: &Caller, id: &str) -> Result<String, ApiError> {
    let group = api.card_group(person, id).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Filters come from the query string, round-trip through the next page's link, and a
    /// state that does not exist is refused.
    #[test]
    fn filters() {
        let filters =
            PaymentFilters::parse(Some("state=SUCCEEDED&invoice_id=INV+7&other=x")).expect("ok");
        assert_eq!(filters.state, "SUCCEEDED");
        assert_eq!(filters.invoice_id, "INV 7");
        let request = filters.request().expect("request");
        assert_eq!(request.state, pb::PaymentState::Succeeded as i32);
        assert_eq!(request.page_size, PAGE_SIZE);
        let next = PaymentFilters::parse(Some(&filters.query("tok"))).expect("next");
        assert_eq!(next.page_token, "tok");
        assert_eq!(next.invoice_id, "INV 7");
        let unknown = PaymentFilters::parse(Some("state=PAID")).expect("parsed");
        assert!(matches!(unknown.request(), Err(ApiError::Invalid(_))));
        let long = format!("invoice_id={}", "x".repeat(FILTER_BYTES_MAX + 1));
        assert!(PaymentFilters::parse(Some(&long)).is_err());
    }
}
