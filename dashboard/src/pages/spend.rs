//! Spend of a billing account: what its cards captured less what was refunded, by card, by
//! cost center and by month, as charts (drawn in the browser from the tables beside them, which
//! stay as their text alternative) over `GetSpendReport`.

use std::collections::HashMap;
use std::fmt::Write as _;

use tandem_proto::tandem::orchestrator::v1 as pb;
use tandem_proto::tandem::r#type::v1 as types;
use tandem_tls::identity::Caller;

use super::{Page, Query, date};
use crate::api::{Api, ApiError, as_person};
use crate::forms::Visit;
use crate::html::{escape, money, page};

/// Card groups read to offer their billing accounts and name their cards.
const GROUPS_MAX: i32 = 100;

/// `/spend?billing_account_id=..&from=..&until=..`: the charts, this year so far by default.
pub async fn spend(api: &Api, visit: &Visit<'_>, query: Option<&str>) -> Page {
    let person = visit.person;
    let query = Query::parse(query, &["billing_account_id", "from", "until"])?;
    let today = time::OffsetDateTime::now_utc().date();
    let from = date("from", &query.get("from"))?
        .unwrap_or_else(|| today.replace_ordinal(1).unwrap_or(today));
    let until = date("until", &query.get("until"))?.unwrap_or(today);
    if until < from {
        return Err(ApiError::Invalid("until must not be before from".into()));
    }
    let groups = card_groups(api, person).await?;
    let mut accounts: Vec<String> = groups
        .iter()
        .map(|g| g.billing_account_id.clone())
        .collect();
    let account = match query.get("billing_account_id") {
        chosen if !chosen.is_empty() => chosen,
        _ => accounts.iter().min().cloned().unwrap_or_default(),
    };
    // The account asked for is offered even when no group of the first page holds it, so
    // the form never shows one account over another's report.
    if !account.is_empty() {
        accounts.push(account.clone());
    }
    accounts.sort_unstable();
    accounts.dedup();
    let mut body = String::new();
    body.push_str(
        "<form class=\"filters\" method=\"get\" action=\"/spend\" role=\"search\" data-live \
         aria-controls=\"results\">\n<label>Billing account<select name=\"billing_account_id\">",
    );
    for candidate in &accounts {
        let selected = if *candidate == account {
            " selected"
        } else {
            ""
        };
        let _ = write!(body, "<option{selected}>{}</option>", escape(candidate));
    }
    let _ = writeln!(
        body,
        "</select></label>\n<label>From<input type=\"date\" name=\"from\" value=\"{from}\"></label>\n\
         <label>Until<input type=\"date\" name=\"until\" value=\"{until}\"></label>\n\
         <button type=\"submit\">Show</button>\n</form>\n<div id=\"results\">"
    );
    if account.is_empty() {
        body.push_str("<p>No billing account yet: no card group.</p>\n</div>\n");
        return Ok(page("Spend", person, &body));
    }
    let request = pb::GetSpendReportRequest {
        billing_account_id: account.clone(),
        start_date: from.to_string(),
        end_date: until.next_day().unwrap_or(until).to_string(),
    };
    let report = api
        .ledger()
        .get_spend_report(as_person(request, person))
        .await?
        .into_inner();
    let cards = card_names(&groups);
    let _ = writeln!(
        body,
        "<p>Spend of <strong>{}</strong> from {from} to {until} (UTC days, both included).</p>",
        escape(&account)
    );
    totals(&mut body, &report.totals);
    chart(
        &mut body,
        "spend-by-card",
        "Spend by card",
        &report.by_card,
        |line| {
            cards
                .get(line.card_token.as_str())
                .cloned()
                .unwrap_or_else(|| line.card_token.clone())
        },
    );
    chart(
        &mut body,
        "spend-by-cost-center",
        "Spend by cost center",
        &report.by_cost_center,
        |line| {
            if line.cost_center.is_empty() {
                "(none)".to_owned()
            } else {
                line.cost_center.clone()
            }
        },
    );
    chart(
        &mut body,
        "spend-by-month",
        "Spend by month",
        &report.by_month,
        |line| line.month.clone(),
    );
    body.push_str("</div>\n");
    Ok(page("Spend", person, &body))
}

/// The card groups `person` may read (their first [`GROUPS_MAX`]).
async fn card_groups(api: &Api, person: &Caller) -> Result<Vec<pb::CardGroup>, ApiError> {
    let request = pb::ListCardGroupsRequest {
        page_size: GROUPS_MAX,
        ..Default::default()
    };
    Ok(api
        .card_groups()
        .list_card_groups(as_person(request, person))
        .await?
        .into_inner()
        .card_groups)
}

/// Each card's name as its groups show it (`corporate Visa ····4242`), by token.
fn card_names(groups: &[pb::CardGroup]) -> HashMap<&str, String> {
    groups
        .iter()
        .flat_map(|g| &g.members)
        .map(|m| (m.token.as_str(), format!("{} ····{}", m.label, m.last4)))
        .collect()
}

fn totals(body: &mut String, totals: &[pb::SpendLine]) {
    body.push_str(
        "<table class=\"totals\" id=\"spend-totals\">\n<caption>Totals</caption>\n<thead><tr>\
         <th scope=\"col\">Currency</th><th scope=\"col\">Net</th><th scope=\"col\">Captured</th>\
         <th scope=\"col\">Refunded</th></tr></thead>\n<tbody>\n",
    );
    for line in totals {
        let _ = writeln!(
            body,
            "<tr><th scope=\"row\">{currency}</th>{net}{captured}{refunded}</tr>",
            currency = escape(&line.currency_code),
            net = cell(line.net.as_ref()),
            captured = cell(line.captured.as_ref()),
            refunded = cell(line.refunded.as_ref()),
        );
    }
    if totals.is_empty() {
        body.push_str("<tr><td colspan=\"4\">Nothing spent in these days.</td></tr>\n");
    }
    body.push_str("</tbody>\n</table>\n");
}

/// A chart of `lines`: a figure holding the table it is drawn from (net, captured and refunded
/// per label), which the page's script turns into bars.
fn chart(
    body: &mut String,
    id: &str,
    title: &str,
    lines: &[pb::SpendLine],
    label: impl Fn(&pb::SpendLine) -> String,
) {
    if lines.is_empty() {
        let _ = writeln!(
            body,
            "<h2>{}</h2>\n<p>Nothing spent in these days.</p>",
            escape(title)
        );
        return;
    }
    // A label spent in several currencies has a bar per currency: each says which.
    let labels: Vec<String> = lines.iter().map(&label).collect();
    let repeated = |name: &String| labels.iter().filter(|other| *other == name).count() > 1;
    let _ = write!(
        body,
        "<figure class=\"chart\" data-chart=\"bar\" id=\"{id}\">\n<figcaption>{title}</figcaption>\n\
         <table>\n<thead><tr><th scope=\"col\">{title}</th><th scope=\"col\">Net</th>\
         <th scope=\"col\">Captured</th><th scope=\"col\">Refunded</th></tr></thead>\n<tbody>\n",
        title = escape(title),
    );
    for (line, name) in lines.iter().zip(&labels) {
        let shown = if repeated(name) {
            format!("{name} ({})", line.currency_code)
        } else {
            name.clone()
        };
        let _ = writeln!(
            body,
            "<tr><th scope=\"row\">{label}</th>{net}{captured}{refunded}</tr>",
            label = escape(&shown),
            net = cell(line.net.as_ref()),
            captured = cell(line.captured.as_ref()),
            refunded = cell(line.refunded.as_ref()),
        );
    }
    body.push_str("</tbody>\n</table>\n</figure>\n");
}

/// A table cell of an amount with its minor units, currency and exponent for the chart.
fn cell(amount: Option<&types::Money>) -> String {
    let Some(amount) = amount else {
        return "<td>—</td>".to_owned();
    };
    let exponent = tandem_money::Currency::parse(&amount.currency_code)
        .map(|c| c.exponent())
        .unwrap_or(0);
    format!(
        "<td class=\"amount\" data-minor-units=\"{units}\" data-currency=\"{currency}\" \
         data-exponent=\"{exponent}\">{shown}</td>",
        units = amount.minor_units,
        currency = escape(&amount.currency_code),
        shown = money(Some(amount)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chart's table carries each amount in minor units with its currency and exponent,
    /// labels escaped.
    #[test]
    fn chart_tables_carry_minor_units() {
        let usd = |units| types::Money {
            currency_code: "USD".into(),
            minor_units: units,
        };
        let line = pb::SpendLine {
            cost_center: "<ops>".into(),
            currency_code: "USD".into(),
            net: Some(usd(1500)),
            captured: Some(usd(2000)),
            refunded: Some(usd(500)),
            ..Default::default()
        };
        let mut body = String::new();
        chart(
            &mut body,
            "c",
            "By cost center",
            &[line.clone(), line],
            |l| l.cost_center.clone(),
        );
        // Twice the same label: each bar says its currency.
        assert!(
            body.contains("<th scope=\"row\">&lt;ops&gt; (USD)</th>"),
            "{body}"
        );
        let mut empty = String::new();
        chart(&mut empty, "c", "By cost center", &[], |l| {
            l.cost_center.clone()
        });
        assert!(
            !empty.contains("<figure") && empty.contains("Nothing spent"),
            "{empty}"
        );
        assert!(
            body.contains(
                "data-minor-units=\"1500\" data-currency=\"USD\" data-exponent=\"2\">15.00 USD"
            ),
            "{body}"
        );
        let jpy = cell(Some(&types::Money {
            currency_code: "JPY".into(),
            minor_units: 700,
        }));
        assert!(jpy.contains("data-exponent=\"0\""), "{jpy}");
    }
}
