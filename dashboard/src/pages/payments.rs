//! Payments: the list (filters by state, card group, invoice and creation day, saved in the
//! URL), and a payment with everything that happened to it: the split by card, the attempts
//! as a timeline, the risk decision, its ledger entries, events and webhook deliveries, kept
//! current while it runs.

use std::fmt::Write as _;
use std::time::Duration;

use futures::StreamExt as _;
use tandem_proto::tandem::orchestrator::v1 as pb;
use tandem_proto::tandem::r#type::v1 as types;
use tandem_tls::identity::Caller;

use super::{FILTER_BYTES_MAX, PAGE_SIZE, Page, Query, bare, date, midnight, query_string};
use crate::api::{Api, ApiError, as_person};
use crate::forms::Visit;
use crate::html::{duration_between, escape, money, page, time};

/// The states a payment can be in, as the filter offers them.
const STATES: [&str; 11] = [
    "PENDING",
    "AUTHORIZING",
    "IN_REVIEW",
    "CAPTURING",
    "NEEDS_OPERATOR",
    "SUCCEEDED",
    "PARTIALLY_PAID",
    "REVERSING",
    "FAILED",
    "PARTIALLY_REFUNDED",
    "REFUNDED",
];

/// The filters of the payments page, as its query string carries them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PaymentFilters {
    /// A state's name without its prefix (`SUCCEEDED`), or empty.
    pub state: String,
    /// A card group id, or empty.
    pub card_group_id: String,
    /// An invoice id, or empty.
    pub invoice_id: String,
    /// The first day (UTC) payments were created on, `YYYY-MM-DD`, or empty.
    pub from: String,
    /// The last day (UTC, included), or empty.
    pub until: String,
    /// The page to show (`next_page_token` of the one before), or empty.
    pub page_token: String,
}

impl PaymentFilters {
    /// The filters of `query` (a URL's query string); unknown keys are ignored, values over
    /// [`FILTER_BYTES_MAX`] refused.
    pub fn parse(query: Option<&str>) -> Result<PaymentFilters, ApiError> {
        let query = Query::parse(
            query,
            &[
                "state",
                "card_group_id",
                "invoice_id",
                "from",
                "until",
                "page_token",
            ],
        )?;
        Ok(PaymentFilters {
            state: query.get("state"),
            card_group_id: query.get("card_group_id"),
            invoice_id: query.get("invoice_id"),
            from: query.get("from"),
            until: query.get("until"),
            page_token: query.get("page_token"),
        })
    }

    /// The `ListPayments` request of these filters.
    pub fn request(&self) -> Result<pb::ListPaymentsRequest, ApiError> {
        let state = if self.state.is_empty() {
            pb::PaymentState::Unspecified
        } else {
            pb::PaymentState::from_str_name(&format!("PAYMENT_STATE_{}", self.state))
                .filter(|state| *state != pb::PaymentState::Unspecified)
                .ok_or_else(|| ApiError::Invalid(format!("no state is named {}", self.state)))?
        };
        let from = date("from", &self.from)?;
        let until = date("until", &self.until)?;
        if let (Some(from), Some(until)) = (from, until)
            && until < from
        {
            return Err(ApiError::Invalid("until must not be before from".into()));
        }
        Ok(pb::ListPaymentsRequest {
            page_size: PAGE_SIZE,
            page_token: self.page_token.clone(),
            card_group_id: self.card_group_id.clone(),
            state: state as i32,
            invoice_id: self.invoice_id.clone(),
            billing_account_id: String::new(),
            start_time: from.map(midnight),
            end_time: until.and_then(|d| d.next_day()).map(midnight),
        })
    }

    /// The query string of these filters on the page `page_token`.
    pub fn query(&self, page_token: &str) -> String {
        query_string(&[
            ("state", &self.state),
            ("card_group_id", &self.card_group_id),
            ("invoice_id", &self.invoice_id),
            ("from", &self.from),
            ("until", &self.until),
            ("page_token", page_token),
        ])
    }
}

/// A payment state's name without its prefix.
pub fn state_name(state: i32) -> &'static str {
    bare(
        pb::PaymentState::try_from(state)
            .unwrap_or_default()
            .as_str_name(),
        "PAYMENT_STATE_",
    )
}

/// `/payments`: the payments the filters select, newest first, a page at a time.
pub async fn payments(api: &Api, visit: &Visit<'_>, query: Option<&str>) -> Page {
    let person = visit.person;
    let filters = PaymentFilters::parse(query)?;
    let request = filters.request()?;
    let mut body = String::new();
    body.push_str(
        "<form class=\"filters\" method=\"get\" action=\"/payments\" role=\"search\" \
         data-live aria-controls=\"results\">\n<label>State<select name=\"state\">\
         <option value=\"\">Any</option>",
    );
    for state in STATES {
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
         <label>Created from<input type=\"date\" name=\"from\" value=\"{from}\"></label>\n\
         <label>Created until<input type=\"date\" name=\"until\" value=\"{until}\"></label>\n\
         <button type=\"submit\">Filter</button>\n</form>\n<div id=\"results\">\n",
        group = escape(&filters.card_group_id),
        invoice = escape(&filters.invoice_id),
        from = escape(&filters.from),
        until = escape(&filters.until),
    );
    let page_of = api
        .payments()
        .list_payments(as_person(request, person))
        .await?
        .into_inner();
    payments_table(&mut body, &page_of.payments, "Payments, newest first");
    if !page_of.next_page_token.is_empty() {
        let _ = writeln!(
            body,
            "<p><a href=\"/payments?{}\" rel=\"next\">Next page</a></p>",
            escape(&filters.query(&page_of.next_page_token))
        );
    }
    body.push_str("</div>\n");
    Ok(page("Payments", person, &body))
}

/// A table of `payments` with links to each, or a line saying there is none.
pub fn payments_table(body: &mut String, payments: &[pb::Payment], caption: &str) {
    if payments.is_empty() {
        body.push_str("<p>No payment matches.</p>\n");
        return;
    }
    let _ = write!(
        body,
        "<table class=\"payments\">\n<caption>{caption}</caption>\n<thead><tr>\
         <th scope=\"col\">Payment</th><th scope=\"col\">Invoice</th><th scope=\"col\">State</th>\
         <th scope=\"col\">Amount</th><th scope=\"col\">Captured</th>\
         <th scope=\"col\">Card group</th><th scope=\"col\">Created</th></tr></thead>\n<tbody>\n",
        caption = escape(caption),
    );
    for payment in payments {
        let invoice = payment.invoice.as_ref();
        let _ = writeln!(
            body,
            "<tr data-payment-id=\"{id}\"><td><a href=\"/payments/{id}\">{id}</a></td>\
             <td>{invoice}</td><td>{state}</td>\
             <td class=\"amount\">{amount}</td><td class=\"amount\">{captured}</td>\
             <td><a href=\"/card-groups/{group}\">{group}</a></td><td>{created}</td></tr>",
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
}

/// `/payments/{id}`: the invoice, how it was split across cards, every attempt on a timeline
/// with its outcome, decline code and duration, the risk decision, the ledger entries, the
/// events and their webhook deliveries; the page follows the payment while it runs.
pub async fn payment(api: &Api, visit: &Visit<'_>, id: &str) -> Page {
    let person = visit.person;
    if id.len() > FILTER_BYTES_MAX {
        return Err(ApiError::NotFound);
    }
    let request = pb::GetPaymentRequest {
        payment_id: id.to_owned(),
    };
    let payment = api
        .payments()
        .get_payment(as_person(request, person))
        .await?
        .into_inner()
        .payment
        .ok_or(ApiError::NotFound)?;
    let (entries, events) = tokio::join!(
        ledger_entries(api, person, &payment.id),
        events(api, person, &payment.id),
    );
    let deliveries = match &events {
        Ok(events) => deliveries(api, person, events).await,
        Err(_) => Err(ApiError::Unavailable),
    };
    // The live updates start after the last event shown here.
    let after = events
        .as_ref()
        .ok()
        .and_then(|events| events.last())
        .map_or(0, |event| event.sequence);
    let mut body = String::new();
    let _ = writeln!(
        body,
        "<section id=\"live\" data-watch=\"/payments/{id}/events?after={after}\" \
         aria-live=\"polite\">",
        id = escape(&payment.id)
    );
    overview(&mut body, &payment);
    legs(&mut body, &payment);
    attempts(&mut body, &payment);
    section(&mut body, "Ledger entries", entries, |body, entries| {
        ledger_table(body, entries)
    });
    section(&mut body, "Events", events, |body, events| {
        events_list(body, events)
    });
    section(
        &mut body,
        "Webhook deliveries",
        deliveries,
        deliveries_section,
    );
    body.push_str("</section>\n");
    Ok(page(&format!("Payment {}", payment.id), person, &body))
}

/// A part of the payment page read from its own API: the part, or why it is not shown (a
/// role that may not read it sees a line saying so, not an error page).
fn section<T>(
    body: &mut String,
    title: &str,
    read: Result<T, ApiError>,
    render: impl FnOnce(&mut String, &T),
) {
    let _ = writeln!(body, "<h2>{}</h2>", escape(title));
    match read {
        Ok(value) => render(body, &value),
        Err(error) => {
            let _ = writeln!(
                body,
                "<p class=\"unavailable\">Not shown: {}.</p>",
                escape(&error.to_string())
            );
        }
    }
}

fn overview(body: &mut String, payment: &pb::Payment) {
    let invoice = payment.invoice.clone().unwrap_or_default();
    let _ = write!(
        body,
        "<p class=\"summary\">{summary}</p>\n<dl>\n\
         <dt>State</dt><dd data-field=\"state\">{state}</dd>\n\
         <dt>Invoice</dt><dd>{invoice} · {amount}</dd>\n\
         <dt>Captured</dt><dd data-field=\"captured\">{captured}</dd>\n\
         <dt>Card group</dt><dd><a href=\"/card-groups/{group}\">{group}</a></dd>\n\
         <dt>Created</dt><dd>{created}</dd>\n<dt>Completed</dt><dd>{completed}</dd>\n\
         <dt>End to end</dt><dd data-field=\"duration\">{took}</dd>\n",
        summary = escape(&payment.summary),
        state = state_name(payment.state),
        invoice = escape(&invoice.id),
        amount = money(invoice.amount.as_ref()),
        captured = money(payment.captured.as_ref()),
        group = escape(&payment.card_group_id),
        created = time(payment.create_time.as_ref()),
        completed = time(payment.complete_time.as_ref()),
        took = duration_between(payment.create_time.as_ref(), payment.complete_time.as_ref()),
    );
    if !payment.failure_reason.is_empty() {
        let _ = writeln!(
            body,
            "<dt>Failure</dt><dd>{}</dd>",
            escape(&payment.failure_reason)
        );
    }
    if let Some(risk) = &payment.risk {
        let action = bare(
            pb::RiskAction::try_from(risk.action)
                .unwrap_or_default()
                .as_str_name(),
            "RISK_ACTION_",
        );
        let _ = writeln!(
            body,
            "<dt>Risk</dt><dd data-field=\"risk\">{action}, score {score}</dd>",
            score = risk.score
        );
    }
    if let Some(review) = &payment.review {
        let verdict = bare(
            pb::ReviewVerdict::try_from(review.verdict)
                .unwrap_or_default()
                .as_str_name(),
            "REVIEW_VERDICT_",
        );
        let reviewer = review
            .reviewer
            .as_ref()
            .map(|actor| format!(" by {}", escape(&actor.name)))
            .unwrap_or_default();
        let _ = writeln!(
            body,
            "<dt>Review</dt><dd data-field=\"review\">{verdict}{reviewer}</dd>"
        );
    }
    body.push_str("</dl>\n");
}

fn legs(body: &mut String, payment: &pb::Payment) {
    body.push_str(
        "<h2>Split by card</h2>\n<table class=\"legs\">\n<thead><tr>\
         <th scope=\"col\">Card</th><th scope=\"col\">Last four</th>\
         <th scope=\"col\">Cost center</th><th scope=\"col\">Amount</th>\
         <th scope=\"col\">Charged</th><th scope=\"col\">Captured</th>\
         <th scope=\"col\">Refunded</th><th scope=\"col\">State</th></tr></thead>\n<tbody>\n",
    );
    for leg in &payment.legs {
        let state = bare(
            pb::LegState::try_from(leg.state)
                .unwrap_or_default()
                .as_str_name(),
            "LEG_STATE_",
        );
        let charged = if leg.fx_rate.is_empty() {
            money(leg.charge_amount.as_ref())
        } else {
            format!(
                "{} at {}",
                money(leg.charge_amount.as_ref()),
                escape(&leg.fx_rate)
            )
        };
        let _ = writeln!(
            body,
            "<tr data-leg-index=\"{index}\"><td>{label}</td><td data-field=\"last4\">{last4}</td>\
             <td>{cost_center}</td><td class=\"amount\" data-field=\"amount\">{amount}</td>\
             <td class=\"amount\">{charged}</td>\
             <td class=\"amount\" data-field=\"captured\">{captured}</td>\
             <td class=\"amount\">{refunded}</td><td data-field=\"state\">{state}</td></tr>",
            index = leg.index,
            label = escape(&leg.label),
            last4 = escape(&leg.last4),
            cost_center = escape(&leg.cost_center),
            amount = money(leg.amount.as_ref()),
            captured = money(leg.captured.as_ref()),
            refunded = money(leg.refunded.as_ref()),
        );
    }
    body.push_str("</tbody>\n</table>\n");
}

/// The attempts in order, each placed on the payment's timeline (a bar from its start to its
/// end, relative to the payment's first and last moment), with its duration, outcome,
/// decline code and what came next (a retry, a fallback to the next card).
fn attempts(body: &mut String, payment: &pb::Payment) {
    body.push_str("<h2>Attempts</h2>\n");
    if payment.attempts.is_empty() {
        body.push_str("<p>No attempt yet.</p>\n");
        return;
    }
    let nanos = |t: Option<&prost_types::Timestamp>| {
        t.map(|t| i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos))
    };
    let start = nanos(payment.create_time.as_ref()).unwrap_or(0);
    let end = payment
        .attempts
        .iter()
        .filter_map(|a| nanos(a.end_time.as_ref()).or(nanos(a.start_time.as_ref())))
        .chain(nanos(payment.complete_time.as_ref()))
        .max()
        .unwrap_or(start);
    let span = (end - start).max(1);
    let percent = |t: i128| ((t - start).clamp(0, span) * 1000 / span) as f64 / 10.0;
    body.push_str("<ol class=\"attempts timeline\">\n");
    for attempt in &payment.attempts {
        let outcome = bare(
            pb::AttemptOutcome::try_from(attempt.outcome)
                .unwrap_or_default()
                .as_str_name(),
            "ATTEMPT_OUTCOME_",
        );
        let declined = types::DeclineCode::try_from(attempt.decline_code)
            .ok()
            .filter(|code| *code != types::DeclineCode::Unspecified)
            .map(|code| bare(code.as_str_name(), "DECLINE_CODE_"))
            .unwrap_or("");
        let next = types::NextAction::try_from(attempt.next_action)
            .ok()
            .filter(|next| *next != types::NextAction::Unspecified)
            .map(|next| bare(next.as_str_name(), "NEXT_ACTION_"))
            .unwrap_or("");
        let from = nanos(attempt.start_time.as_ref()).unwrap_or(start);
        let to = nanos(attempt.end_time.as_ref()).unwrap_or(from);
        let (left, width) = (percent(from), (percent(to) - percent(from)).max(0.5));
        let _ = write!(
            body,
            "<li data-attempt=\"{number}\" data-outcome=\"{outcome}\">\
             <span class=\"what\">#{number} {label} ····{last4}: {requested} asked, \
             {approved} approved: <strong>{outcome}</strong>",
            number = attempt.number,
            label = escape(&attempt.label),
            last4 = escape(&attempt.last4),
            requested = money(attempt.requested.as_ref()),
            approved = money(attempt.approved.as_ref()),
        );
        if !declined.is_empty() {
            let _ = write!(
                body,
                ", declined <span data-field=\"decline\">{declined}</span>"
            );
        }
        if !next.is_empty() {
            let _ = write!(body, ", then {}", next.to_lowercase().replace('_', " "));
        }
        let _ = writeln!(
            body,
            "; {took}</span><span class=\"track\" aria-hidden=\"true\">\
             <span class=\"bar {outcome}\" style=\"margin-left:{left:.1}%;width:{width:.1}%\"></span>\
             </span></li>",
            took = duration_between(attempt.start_time.as_ref(), attempt.end_time.as_ref()),
            outcome = outcome.to_lowercase(),
        );
    }
    body.push_str("</ol>\n");
}

/// The payment's ledger entries, oldest first (at most 100: a payment has about a dozen).
async fn ledger_entries(
    api: &Api,
    person: &Caller,
    payment_id: &str,
) -> Result<Vec<pb::LedgerEntry>, ApiError> {
    let request = pb::ListEntriesRequest {
        page_size: 100,
        payment_id: payment_id.to_owned(),
        ..Default::default()
    };
    Ok(api
        .ledger()
        .list_entries(as_person(request, person))
        .await?
        .into_inner()
        .entries)
}

fn ledger_table(body: &mut String, entries: &[pb::LedgerEntry]) {
    if entries.is_empty() {
        body.push_str("<p>No entry yet.</p>\n");
        return;
    }
    body.push_str(
        "<table class=\"ledger\">\n<thead><tr><th scope=\"col\">Sequence</th>\
         <th scope=\"col\">Kind</th><th scope=\"col\">Debit</th><th scope=\"col\">Credit</th>\
         <th scope=\"col\">Amount</th><th scope=\"col\">Cost center</th>\
         <th scope=\"col\">Booked</th></tr></thead>\n<tbody>\n",
    );
    for entry in entries {
        let kind = bare(
            pb::LedgerEntryKind::try_from(entry.kind)
                .unwrap_or_default()
                .as_str_name(),
            "LEDGER_ENTRY_KIND_",
        );
        let _ = writeln!(
            body,
            "<tr><td>{sequence}</td><td>{kind}</td><td>{debit}</td><td>{credit}</td>\
             <td class=\"amount\">{amount}</td><td>{cost_center}</td><td>{booked}</td></tr>",
            sequence = entry.sequence,
            debit = escape(&entry.debit_account_id),
            credit = escape(&entry.credit_account_id),
            amount = money(entry.amount.as_ref()),
            cost_center = escape(&entry.cost_center),
            booked = time(entry.create_time.as_ref()),
        );
    }
    body.push_str("</tbody>\n</table>\n");
}

/// How long the events of a running payment are waited for: the stored ones come at once,
/// and the page's live updates bring what commits later.
const EVENTS_QUIET: Duration = Duration::from_millis(200);
/// The most events read for one page, and the longest time spent reading them.
const EVENTS_MAX: usize = 500;
const EVENTS_TOTAL: Duration = Duration::from_secs(2);

/// The payment's events so far, from `WatchPayment`: the stored ones arrive first; the stream
/// ends by itself once a payment is settled, and a running one's is left once it goes quiet.
async fn events(
    api: &Api,
    person: &Caller,
    payment_id: &str,
) -> Result<Vec<pb::PaymentEvent>, ApiError> {
    let request = pb::WatchPaymentRequest {
        payment_id: payment_id.to_owned(),
        after_sequence: 0,
    };
    let mut stream = api
        .payments()
        .watch_payment(as_person(request, person))
        .await?
        .into_inner();
    let mut events = Vec::new();
    let started = std::time::Instant::now();
    while events.len() < EVENTS_MAX && started.elapsed() < EVENTS_TOTAL {
        match tokio::time::timeout(EVENTS_QUIET, stream.next()).await {
            Ok(Some(Ok(message))) => events.extend(message.event),
            Ok(Some(Err(status))) => return Err(status.into()),
            Ok(None) | Err(_) => break,
        }
    }
    Ok(events)
}

fn events_list(body: &mut String, events: &[pb::PaymentEvent]) {
    if events.is_empty() {
        body.push_str("<p>No event yet.</p>\n");
        return;
    }
    body.push_str("<ol class=\"events\">\n");
    for event in events {
        let actor = event
            .actor
            .as_ref()
            .map(|actor| format!(" · {}", escape(&actor.name)))
            .unwrap_or_default();
        let _ = writeln!(
            body,
            "<li data-sequence=\"{sequence}\"><time>{at}</time> <code>{kind}</code> \
             {summary}{actor}</li>",
            sequence = event.sequence,
            at = time(event.create_time.as_ref()),
            kind = escape(&event.type_name),
            summary = escape(&event.summary),
        );
    }
    body.push_str("</ol>\n");
}

/// The most endpoints whose deliveries a payment page looks up, and the most lookups (one
/// per endpoint and event).
const ENDPOINTS_MAX: i32 = 20;
const LOOKUPS_MAX: usize = 100;

/// A payment's webhook deliveries as far as the page looked them up.
#[derive(Debug, Default)]
struct Deliveries {
    /// Newest first; deliveries made together, newest event first.
    found: Vec<pb::WebhookDelivery>,
    /// Endpoints or events left out by the bounds above.
    incomplete: bool,
    /// Lookups that failed.
    failed: usize,
}

/// Deliveries of the payment's events to the first [`ENDPOINTS_MAX`] endpoints (each
/// endpoint's deliveries of each event, looked up a few at a time).
async fn deliveries(
    api: &Api,
    person: &Caller,
    events: &[pb::PaymentEvent],
) -> Result<Deliveries, ApiError> {
    let request = pb::ListWebhookEndpointsRequest {
        page_size: ENDPOINTS_MAX,
        page_token: String::new(),
    };
    let listed = api
        .webhooks()
        .list_webhook_endpoints(as_person(request, person))
        .await?
        .into_inner();
    let wanted = listed.endpoints.len() * events.len();
    let lookups: Vec<(String, String)> = listed
        .endpoints
        .iter()
        .flat_map(|endpoint| {
            events
                .iter()
                .map(|event| (endpoint.id.clone(), event.id.clone()))
        })
        .take(LOOKUPS_MAX)
        .collect();
    let mut deliveries = Deliveries {
        incomplete: !listed.next_page_token.is_empty() || wanted > lookups.len(),
        ..Deliveries::default()
    };
    let found: Vec<Result<Vec<pb::WebhookDelivery>, ApiError>> =
        futures::stream::iter(lookups.into_iter().map(|(endpoint_id, event_id)| {
            let mut client = api.webhooks();
            async move {
                let request = pb::ListWebhookDeliveriesRequest {
                    endpoint_id,
                    event_id,
                    page_size: 10,
                    ..Default::default()
                };
                Ok(client
                    .list_webhook_deliveries(as_person(request, person))
                    .await?
                    .into_inner()
                    .deliveries)
            }
        }))
        .buffered(8)
        .collect()
        .await;
    for found in found {
        match found {
            Ok(found) => deliveries.found.extend(found),
            Err(_) => deliveries.failed += 1,
        }
    }
    let at = |t: Option<&prost_types::Timestamp>| t.map(|t| (t.seconds, t.nanos));
    deliveries.found.sort_by_key(|d| {
        std::cmp::Reverse((at(d.create_time.as_ref()), at(d.event_time.as_ref())))
    });
    Ok(deliveries)
}

/// The deliveries found, and what the page could not look up.
fn deliveries_section(body: &mut String, deliveries: &Deliveries) {
    deliveries_table(body, &deliveries.found);
    if deliveries.incomplete {
        let _ = writeln!(
            body,
            "<p class=\"unavailable\">Looked up for the first {ENDPOINTS_MAX} endpoints and \
             {LOOKUPS_MAX} endpoint-event pairs only: <code>tandemctl webhooks deliveries</code> \
             lists the rest.</p>"
        );
    }
    if deliveries.failed > 0 {
        let _ = writeln!(
            body,
            "<p class=\"unavailable\">{} lookups failed: reload to try again.</p>",
            deliveries.failed
        );
    }
}

/// A table of webhook deliveries, or a line saying there is none.
pub fn deliveries_table(body: &mut String, deliveries: &[pb::WebhookDelivery]) {
    if deliveries.is_empty() {
        body.push_str("<p>No delivery.</p>\n");
        return;
    }
    body.push_str(
        "<table class=\"deliveries\">\n<thead><tr><th scope=\"col\">Event</th>\
         <th scope=\"col\">Endpoint</th><th scope=\"col\">State</th>\
         <th scope=\"col\">Attempts</th><th scope=\"col\">Last answer</th>\
         <th scope=\"col\">Delivered</th></tr></thead>\n<tbody>\n",
    );
    for delivery in deliveries {
        let state = bare(
            pb::WebhookDeliveryState::try_from(delivery.state)
                .unwrap_or_default()
                .as_str_name(),
            "WEBHOOK_DELIVERY_STATE_",
        );
        let last = delivery
            .attempts
            .last()
            .map(|attempt| {
                if attempt.error.is_empty() {
                    format!("HTTP {} in {} ms", attempt.status_code, attempt.latency_ms)
                } else {
                    escape(&attempt.error)
                }
            })
            .unwrap_or_else(|| "—".to_owned());
        let _ = writeln!(
            body,
            "<tr><td><code>{kind}</code></td><td><a href=\"/webhooks/{endpoint}\">{endpoint}</a></td>\
             <td>{state}</td><td>{attempts}</td><td>{last}</td><td>{delivered}</td></tr>",
            kind = escape(&delivery.event_type),
            endpoint = escape(&delivery.endpoint_id),
            attempts = delivery.attempts.len(),
            delivered = time(delivery.deliver_time.as_ref()),
        );
    }
    body.push_str("</tbody>\n</table>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Filters come from the query string, round-trip through the next page's link, and a
    /// state or day that does not exist is refused.
    #[test]
    fn filters() {
        let filters = PaymentFilters::parse(Some(
            "state=SUCCEEDED&invoice_id=INV+7&other=x&from=2026-12-01&until=2026-12-06",
        ))
        .expect("ok");
        assert_eq!(filters.state, "SUCCEEDED");
        assert_eq!(filters.invoice_id, "INV 7");
        let request = filters.request().expect("request");
        assert_eq!(request.state, pb::PaymentState::Succeeded as i32);
        assert_eq!(request.page_size, PAGE_SIZE);
        // From the first day's midnight to the midnight after the last day (UTC).
        let day = 86_400;
        let start = request.start_time.expect("start").seconds;
        assert_eq!(start % day, 0);
        assert_eq!(request.end_time.expect("end").seconds - start, 6 * day);
        let next = PaymentFilters::parse(Some(&filters.query("tok"))).expect("next");
        assert_eq!(next.page_token, "tok");
        assert_eq!(next.invoice_id, "INV 7");
        assert_eq!(next.until, "2026-12-06");
        for bad in [
            "state=PAID",
            "from=yesterday",
            "from=2026-12-06&until=2026-12-01",
        ] {
            let parsed = PaymentFilters::parse(Some(bad)).expect("parsed");
            assert!(
                matches!(parsed.request(), Err(ApiError::Invalid(_))),
                "{bad}"
            );
        }
        let long = format!("invoice_id={}", "x".repeat(FILTER_BYTES_MAX + 1));
        assert!(PaymentFilters::parse(Some(&long)).is_err());
    }

    /// Each attempt sits on the timeline with its duration, decline code and next step.
    #[test]
    fn attempts_timeline() {
        let at = |ms: i64| prost_types::Timestamp {
            seconds: 1_800_000_000 + ms / 1000,
            nanos: i32::try_from((ms % 1000) * 1_000_000).expect("nanos"),
        };
        let payment = pb::Payment {
            create_time: Some(at(0)),
            complete_time: Some(at(1000)),
            attempts: vec![
                pb::PaymentAttempt {
                    number: 1,
                    label: "Visa <corp>".into(),
                    last4: "4242".into(),
                    outcome: pb::AttemptOutcome::Declined as i32,
                    decline_code: types::DeclineCode::InsufficientFunds as i32,
                    next_action: types::NextAction::TryNextCard as i32,
                    start_time: Some(at(0)),
                    end_time: Some(at(250)),
                    ..Default::default()
                },
                pb::PaymentAttempt {
                    number: 2,
                    outcome: pb::AttemptOutcome::Approved as i32,
                    start_time: Some(at(500)),
                    end_time: Some(at(1000)),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let mut body = String::new();
        attempts(&mut body, &payment);
        assert!(body.contains("Visa &lt;corp&gt;"), "{body}");
        assert!(body.contains("INSUFFICIENT_FUNDS"), "{body}");
        assert!(body.contains("then try next card"), "{body}");
        assert!(body.contains("; 250 ms"), "{body}");
        assert!(body.contains("margin-left:0.0%;width:25.0%"), "{body}");
        assert!(body.contains("margin-left:50.0%;width:50.0%"), "{body}");
    }
}
