//! Reconciliation: the latest runs, the discrepancies they found, and the four-eyes correction
//! of one: the treasury proposes an adjustment (the amount is the discrepancy's, stated back as
//! a check), an approver, never the proposer, approves or rejects it.

use std::fmt::Write as _;

use tandem_proto::tandem::orchestrator::v1 as pb;
use tandem_proto::tandem::r#type::v1 as types;
use tandem_tls::identity::Caller;

use super::{Change, PAGE_SIZE, Page, Query, bare, query_string};
use crate::api::{Api, ApiError, as_person};
use crate::forms::{Posted, Visit};
use crate::html::{escape, money, page, time};

/// The runs shown, newest first.
const RUNS_SHOWN: usize = 20;
/// Pages of the run feed read to find the newest runs.
const RUN_PAGES_MAX: usize = 10;
/// The processor shown when no run names one: the sandbox acquirer, the orchestrator's
/// default `reconciliation.processor` (the filter changes it).
const DEFAULT_PROCESSOR: &str = "sandbox";
/// The longest reason, in characters (as the service allows).
const REASON_CHARS_MAX: usize = 1000;

/// Notices a change's redirect may ask the page to show (never text from the request).
const NOTICES: [(&str, &str); 3] = [
    (
        "proposed",
        "The adjustment was proposed; an approver decides it.",
    ),
    ("approved", "The adjustment was approved and booked."),
    ("rejected", "The adjustment was rejected."),
];

/// `/reconciliation?state=..&processor=..&settlement_date=..`: runs, then discrepancies
/// (open ones by default) with what the person may do about each.
pub async fn reconciliation(api: &Api, visit: &Visit<'_>, query: Option<&str>) -> Page {
    let person = visit.person;
    let query = Query::parse(
        query,
        &[
            "state",
            "processor",
            "settlement_date",
            "page_token",
            "notice",
        ],
    )?;
    let state_filter = match query.get("state").as_str() {
        "" | "OPEN" => pb::DiscrepancyState::Open,
        "ANY" => pb::DiscrepancyState::Unspecified,
        other => pb::DiscrepancyState::from_str_name(&format!("DISCREPANCY_STATE_{other}"))
            .filter(|s| *s != pb::DiscrepancyState::Unspecified)
            .ok_or_else(|| ApiError::Invalid(format!("no discrepancy state is named {other}")))?,
    };
    let mut body = String::new();
    let notice = query.get("notice");
    if let Some((_, text)) = NOTICES.iter().find(|(key, _)| *key == notice) {
        let _ = writeln!(body, "<p role=\"status\" class=\"notice\">{text}</p>");
    }
    let runs = runs(api, person).await;
    let processor = match query.get("processor") {
        chosen if !chosen.is_empty() => chosen,
        _ => runs
            .as_ref()
            .ok()
            .and_then(|(runs, _)| runs.first())
            .map_or(DEFAULT_PROCESSOR, |run| run.processor.as_str())
            .to_owned(),
    };
    body.push_str("<h2>Runs</h2>\n");
    match &runs {
        Ok((runs, true)) => runs_table(&mut body, runs),
        Ok((_, false)) => body.push_str(
            "<p class=\"unavailable\">More runs than this page reads from the event feed: \
             see <code>tandemctl recon show</code> for the latest.</p>\n",
        ),
        Err(error) => {
            let _ = writeln!(
                body,
                "<p class=\"unavailable\">Not shown: {}.</p>",
                escape(&error.to_string())
            );
        }
    }
    let state_name = bare(state_filter.as_str_name(), "DISCREPANCY_STATE_");
    let _ = write!(
        body,
        "<h2>Discrepancies</h2>\n<form class=\"filters\" method=\"get\" action=\"/reconciliation\" \
         role=\"search\" data-live aria-controls=\"results\">\n<label>State<select name=\"state\">"
    );
    for option in ["OPEN", "RESOLVED", "CLEARED", "ANY"] {
        let selected = if option == state_name || (option == "ANY" && state_name == "UNSPECIFIED") {
            " selected"
        } else {
            ""
        };
        let _ = write!(body, "<option{selected}>{option}</option>");
    }
    let _ = writeln!(
        body,
        "</select></label>\n<label>Processor<input name=\"processor\" value=\"{processor}\"></label>\n\
         <label>Settlement date<input type=\"date\" name=\"settlement_date\" value=\"{date}\"></label>\n\
         <button type=\"submit\">Filter</button>\n</form>\n<div id=\"results\">",
        processor = escape(&processor),
        date = escape(&query.get("settlement_date")),
    );
    let request = pb::ListDiscrepanciesRequest {
        page_size: PAGE_SIZE,
        page_token: query.get("page_token"),
        processor,
        settlement_date: query.get("settlement_date"),
        state: state_filter as i32,
        ..Default::default()
    };
    let page_of = api
        .reconciliation()
        .list_discrepancies(as_person(request, person))
        .await?
        .into_inner();
    discrepancies_table(&mut body, visit, &page_of.discrepancies);
    if !page_of.next_page_token.is_empty() {
        let next = query_string(&[
            ("state", &query.get("state")),
            ("processor", &query.get("processor")),
            ("settlement_date", &query.get("settlement_date")),
            ("page_token", &page_of.next_page_token),
        ]);
        let _ = writeln!(
            body,
            "<p><a href=\"/reconciliation?{}\" rel=\"next\">Next page</a></p>",
            escape(&next)
        );
    }
    body.push_str("</div>\n");
    Ok(page("Reconciliation", person, &body))
}

/// The runs the feed's `reconciliation.run_completed` events hold, newest first (at most
/// [`RUNS_SHOWN`]), and whether the feed was read to its end: the feed is oldest first, and a
/// page reads at most [`RUN_PAGES_MAX`] of its pages.
async fn runs(api: &Api, person: &Caller) -> Result<(Vec<pb::ReconciliationRun>, bool), ApiError> {
    let mut runs = Vec::new();
    let mut page_token = String::new();
    let mut complete = false;
    for _ in 0..RUN_PAGES_MAX {
        let request = pb::ListEventsRequest {
            page_size: 1000,
            page_token,
            event_types: vec!["reconciliation.run_completed".to_owned()],
        };
        let page_of = api
            .payments()
            .list_events(as_person(request, person))
            .await?
            .into_inner();
        runs.extend(
            page_of
                .events
                .into_iter()
                .filter_map(|event| match event.subject? {
                    pb::event::Subject::ReconciliationEvent(event) => match event.subject? {
                        pb::reconciliation_event::Subject::Run(run) => Some(run),
                        pb::reconciliation_event::Subject::Adjustment(_) => None,
                    },
                    _ => None,
                }),
        );
        if page_of.next_page_token.is_empty() {
            complete = true;
            break;
        }
        page_token = page_of.next_page_token;
    }
    runs.reverse();
    runs.truncate(RUNS_SHOWN);
    Ok((runs, complete))
}

fn runs_table(body: &mut String, runs: &[pb::ReconciliationRun]) {
    if runs.is_empty() {
        body.push_str("<p>No run yet.</p>\n");
        return;
    }
    body.push_str(
        "<table class=\"runs\">\n<caption>Latest runs, newest first</caption>\n<thead><tr>\
         <th scope=\"col\">Run</th><th scope=\"col\">Processor</th><th scope=\"col\">Day</th>\
         <th scope=\"col\">Records</th><th scope=\"col\">Matched</th>\
         <th scope=\"col\">Discrepancies</th><th scope=\"col\">Pending</th>\
         <th scope=\"col\">Finished</th></tr></thead>\n<tbody>\n",
    );
    for run in runs {
        let found = run.missing_in_ledger
            + run.missing_at_processor
            + run.amount_mismatch
            + run.currency_mismatch
            + run.duplicate_settlement;
        let _ = writeln!(
            body,
            "<tr><td>{id}</td><td>{processor}</td><td>{day}</td><td>{records}</td>\
             <td>{matched}</td><td>{found}</td><td>{pending}</td><td>{finished}</td></tr>",
            id = escape(&run.id),
            processor = escape(&run.processor),
            day = escape(&run.settlement_date),
            records = run.records,
            matched = run.matched,
            pending = run.pending,
            finished = time(run.finish_time.as_ref()),
        );
    }
    body.push_str("</tbody>\n</table>\n");
}

/// What is left to correct of a discrepancy: its correction less what was applied, without
/// its sign (what a proposal states).
fn remaining(discrepancy: &pb::Discrepancy) -> Option<types::Money> {
    let correction = discrepancy.correction.as_ref()?;
    let applied = discrepancy
        .applied
        .as_ref()
        .filter(|a| a.currency_code == correction.currency_code)
        .map_or(0, |a| a.minor_units);
    Some(types::Money {
        currency_code: correction.currency_code.clone(),
        minor_units: correction.minor_units.checked_sub(applied)?.checked_abs()?,
    })
}

fn discrepancies_table(body: &mut String, visit: &Visit<'_>, found: &[pb::Discrepancy]) {
    if found.is_empty() {
        body.push_str("<p>No discrepancy matches.</p>\n");
        return;
    }
    body.push_str(
        "<table class=\"discrepancies\">\n<caption>Discrepancies, oldest first</caption>\n\
         <thead><tr><th scope=\"col\">Discrepancy</th><th scope=\"col\">Class</th>\
         <th scope=\"col\">Day</th><th scope=\"col\">Settled</th><th scope=\"col\">Booked</th>\
         <th scope=\"col\">Correction</th><th scope=\"col\">Payment</th>\
         <th scope=\"col\">State</th><th scope=\"col\">Action</th></tr></thead>\n<tbody>\n",
    );
    for discrepancy in found {
        let class = bare(
            pb::DiscrepancyClass::try_from(discrepancy.class)
                .unwrap_or_default()
                .as_str_name(),
            "DISCREPANCY_CLASS_",
        );
        let state = pb::DiscrepancyState::try_from(discrepancy.state).unwrap_or_default();
        let waiting = state == pb::DiscrepancyState::Open && !discrepancy.adjustment_id.is_empty();
        let shown_state = if waiting {
            "AWAITING APPROVAL"
        } else {
            bare(state.as_str_name(), "DISCREPANCY_STATE_")
        };
        let payment = if discrepancy.payment_id.is_empty() {
            "—".to_owned()
        } else {
            format!(
                "<a href=\"/payments/{id}\">{id}</a>",
                id = escape(&discrepancy.payment_id)
            )
        };
        let _ = write!(
            body,
            "<tr data-discrepancy-id=\"{id}\"><td>{id}</td><td>{class}</td><td>{day}</td>\
             <td class=\"amount\">{settled}</td><td class=\"amount\">{booked}</td>\
             <td class=\"amount\">{correction}</td><td>{payment}</td>\
             <td data-field=\"state\">{shown_state}</td><td>",
            id = escape(&discrepancy.id),
            day = escape(&discrepancy.settlement_date),
            settled = money(discrepancy.settled_amount.as_ref()),
            booked = money(discrepancy.ledger_amount.as_ref()),
            correction = money(discrepancy.correction.as_ref()),
        );
        let pending = discrepancy.class == pb::DiscrepancyClass::Pending as i32;
        let proposable = state == pb::DiscrepancyState::Open && !waiting && !pending;
        if let (true, Some(amount)) = (
            proposable && Change::ProposeAdjustment.offered_to(visit.person.role),
            remaining(discrepancy),
        ) {
            let action = format!("/reconciliation/discrepancies/{}/propose", discrepancy.id);
            let _ = write!(
                body,
                "<form class=\"inline propose\" method=\"post\" action=\"{action}\">{hidden}\
                 <input type=\"hidden\" name=\"amount_minor\" value=\"{units}\">\
                 <input type=\"hidden\" name=\"currency\" value=\"{currency}\">\
                 <label>Reason<input name=\"reason\" required maxlength=\"{REASON_CHARS_MAX}\">\
                 </label><button type=\"submit\">Propose {shown}</button></form>",
                action = escape(&action),
                hidden = visit.hidden_fields(&action),
                units = amount.minor_units,
                currency = escape(&amount.currency_code),
                shown = money(Some(&amount)),
            );
        }
        if waiting && Change::DecideAdjustment.offered_to(visit.person.role) {
            let approve = format!(
                "/reconciliation/adjustments/{}/approve",
                discrepancy.adjustment_id
            );
            let reject = format!(
                "/reconciliation/adjustments/{}/reject",
                discrepancy.adjustment_id
            );
            let _ = write!(
                body,
                "<form class=\"inline approve\" method=\"post\" action=\"{approve_action}\">\
                 {approve_hidden}<button type=\"submit\">Approve</button></form> \
                 <form class=\"inline reject\" method=\"post\" action=\"{reject_action}\">\
                 {reject_hidden}<label>Reason<input name=\"reason\" required \
                 maxlength=\"{REASON_CHARS_MAX}\"></label>\
                 <button type=\"submit\">Reject</button></form>",
                approve_action = escape(&approve),
                approve_hidden = visit.hidden_fields(&approve),
                reject_action = escape(&reject),
                reject_hidden = visit.hidden_fields(&reject),
            );
        }
        body.push_str("</td></tr>\n");
    }
    body.push_str("</tbody>\n</table>\n");
}

/// A reason from a form: 1 to [`REASON_CHARS_MAX`] characters.
fn reason(posted: &Posted) -> Result<String, ApiError> {
    let reason = posted.required("reason", REASON_CHARS_MAX * 4)?;
    if reason.chars().count() > REASON_CHARS_MAX {
        return Err(ApiError::Invalid(format!(
            "reason is over {REASON_CHARS_MAX} characters"
        )));
    }
    Ok(reason.to_owned())
}

/// `POST /reconciliation/discrepancies/{id}/propose`: proposes the adjustment the form
/// states; returns where to go next.
pub async fn propose(
    api: &Api,
    visit: &Visit<'_>,
    discrepancy_id: &str,
    posted: &Posted,
) -> Result<String, ApiError> {
    let units: i64 = posted
        .required("amount_minor", 20)?
        .parse()
        .map_err(|_| ApiError::Invalid("amount_minor must be a whole number".into()))?;
    let request = pb::ProposeAdjustmentRequest {
        request_id: posted.request_id()?.to_owned(),
        discrepancy_id: discrepancy_id.to_owned(),
        amount: Some(types::Money {
            currency_code: posted.required("currency", 3)?.to_owned(),
            minor_units: units,
        }),
        reason: reason(posted)?,
    };
    api.reconciliation()
        .propose_adjustment(as_person(request, visit.person))
        .await?;
    Ok("/reconciliation?notice=proposed".to_owned())
}

/// `POST /reconciliation/adjustments/{id}/approve` or `.../reject`.
pub async fn decide(
    api: &Api,
    visit: &Visit<'_>,
    adjustment_id: &str,
    approve: bool,
    posted: &Posted,
) -> Result<String, ApiError> {
    let request_id = posted.request_id()?.to_owned();
    let mut client = api.reconciliation();
    if approve {
        let request = pb::ApproveAdjustmentRequest {
            request_id,
            adjustment_id: adjustment_id.to_owned(),
        };
        client
            .approve_adjustment(as_person(request, visit.person))
            .await?;
        Ok("/reconciliation?notice=approved&state=ANY".to_owned())
    } else {
        let request = pb::RejectAdjustmentRequest {
            request_id,
            adjustment_id: adjustment_id.to_owned(),
            reason: reason(posted)?,
        };
        client
            .reject_adjustment(as_person(request, visit.person))
            .await?;
        Ok("/reconciliation?notice=rejected".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forms::{FormKey, fingerprint};
    use tandem_tls::identity::Role;

    fn usd(units: i64) -> types::Money {
        types::Money {
            currency_code: "USD".into(),
            minor_units: units,
        }
    }

    /// A treasurer is offered a proposal of what is left to correct; an approver the decision
    /// of one waiting; a reader neither.
    #[test]
    fn forms_follow_role_and_state() {
        let open = pb::Discrepancy {
            id: "dsc_1".into(),
            state: pb::DiscrepancyState::Open as i32,
            class: pb::DiscrepancyClass::AmountMismatch as i32,
            correction: Some(usd(-700)),
            applied: Some(usd(-200)),
            ..Default::default()
        };
        let waiting = pb::Discrepancy {
            id: "dsc_2".into(),
            adjustment_id: "adj_2".into(),
            ..open.clone()
        };
        let key = FormKey::generate().expect("key");
        let print = fingerprint(b"cert");
        let render = |role| {
            let person = Caller {
                role,
                name: "someone".into(),
            };
            let visit = Visit::new(&person, &print, &key);
            let mut body = String::new();
            discrepancies_table(&mut body, &visit, &[open.clone(), waiting.clone()]);
            body
        };
        let treasury = render(Role::Treasury);
        assert!(
            treasury.contains("action=\"/reconciliation/discrepancies/dsc_1/propose\""),
            "{treasury}"
        );
        assert!(
            treasury.contains("name=\"amount_minor\" value=\"500\""),
            "{treasury}"
        );
        assert!(!treasury.contains("dsc_2/propose"), "{treasury}");
        assert!(!treasury.contains("approve"), "{treasury}");
        let approver = render(Role::Approver);
        assert!(
            approver.contains("action=\"/reconciliation/adjustments/adj_2/approve\""),
            "{approver}"
        );
        assert!(!approver.contains("propose\""), "{approver}");
        let reader = render(Role::Reader);
        assert!(!reader.contains("<form"), "{reader}");
        assert!(reader.contains("AWAITING APPROVAL"), "{reader}");
    }
}
