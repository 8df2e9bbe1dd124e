//! Webhook endpoints (where events go, whether they are failing or disabled, what is waiting)
//! and an endpoint's deliveries with each attempt's answer.

use std::fmt::Write as _;

use tandem_proto::tandem::orchestrator::v1 as pb;

use super::payments::deliveries_table;
use super::{FILTER_BYTES_MAX, PAGE_SIZE, Page, Query, bare, query_string};
use crate::api::{Api, ApiError, as_person};
use crate::forms::Visit;
use crate::html::{escape, page, time};

/// `/webhooks`: every endpoint.
pub async fn endpoints(api: &Api, visit: &Visit<'_>, query: Option<&str>) -> Page {
    let person = visit.person;
    let query = Query::parse(query, &["page_token"])?;
    let request = pb::ListWebhookEndpointsRequest {
        page_size: PAGE_SIZE,
        page_token: query.get("page_token"),
    };
    let page_of = api
        .webhooks()
        .list_webhook_endpoints(as_person(request, person))
        .await?
        .into_inner();
    let mut body = String::from("<div id=\"results\">\n");
    if page_of.endpoints.is_empty() {
        body.push_str("<p>No webhook endpoint.</p>\n");
    } else {
        body.push_str(
            "<table class=\"endpoints\">\n<caption>Webhook endpoints</caption>\n<thead><tr>\
             <th scope=\"col\">Endpoint</th><th scope=\"col\">URL</th><th scope=\"col\">Events</th>\
             <th scope=\"col\">State</th><th scope=\"col\">Failing since</th>\
             <th scope=\"col\">Waiting</th></tr></thead>\n<tbody>\n",
        );
        for endpoint in &page_of.endpoints {
            let _ = writeln!(
                body,
                "<tr><td><a href=\"/webhooks/{id}\">{id}</a></td><td>{url}</td><td>{events}</td>\
                 <td>{state}</td><td>{failing}</td><td>{waiting}</td></tr>",
                id = escape(&endpoint.id),
                url = escape(&endpoint.url),
                events = if endpoint.event_types.is_empty() {
                    "every event".to_owned()
                } else {
                    escape(&endpoint.event_types.join(", "))
                },
                state = state(endpoint),
                failing = time(endpoint.failing_since.as_ref()),
                waiting = endpoint.pending_deliveries,
            );
        }
        body.push_str("</tbody>\n</table>\n");
    }
    if !page_of.next_page_token.is_empty() {
        let _ = writeln!(
            body,
            "<p><a href=\"/webhooks?{}\" rel=\"next\">Next page</a></p>",
            escape(&query_string(&[("page_token", &page_of.next_page_token)]))
        );
    }
    body.push_str("</div>\n");
    Ok(page("Webhooks", person, &body))
}

/// An endpoint's state, with why when disabled.
fn state(endpoint: &pb::WebhookEndpoint) -> String {
    let state = bare(
        pb::WebhookEndpointState::try_from(endpoint.state)
            .unwrap_or_default()
            .as_str_name(),
        "WEBHOOK_ENDPOINT_STATE_",
    );
    match pb::WebhookDisabledReason::try_from(endpoint.disabled_reason) {
        Ok(reason) if reason != pb::WebhookDisabledReason::Unspecified => format!(
            "{state} ({})",
            bare(reason.as_str_name(), "WEBHOOK_DISABLED_REASON_")
        ),
        _ => state.to_owned(),
    }
}

/// `/webhooks/{id}?state=..`: an endpoint and its deliveries, newest first.
pub async fn endpoint(api: &Api, visit: &Visit<'_>, id: &str, query: Option<&str>) -> Page {
    let person = visit.person;
    if id.len() > FILTER_BYTES_MAX {
        return Err(ApiError::NotFound);
    }
    let query = Query::parse(query, &["state", "page_token"])?;
    let delivery_state = match query.get("state").as_str() {
        "" => pb::WebhookDeliveryState::Unspecified,
        other => {
            pb::WebhookDeliveryState::from_str_name(&format!("WEBHOOK_DELIVERY_STATE_{other}"))
                .filter(|s| *s != pb::WebhookDeliveryState::Unspecified)
                .ok_or_else(|| ApiError::Invalid(format!("no delivery state is named {other}")))?
        }
    };
    let request = pb::GetWebhookEndpointRequest {
        endpoint_id: id.to_owned(),
    };
    let endpoint = api
        .webhooks()
        .get_webhook_endpoint(as_person(request, person))
        .await?
        .into_inner()
        .endpoint
        .ok_or(ApiError::NotFound)?;
    let request = pb::ListWebhookDeliveriesRequest {
        endpoint_id: endpoint.id.clone(),
        page_size: PAGE_SIZE,
        page_token: query.get("page_token"),
        state: delivery_state as i32,
        ..Default::default()
    };
    let page_of = api
        .webhooks()
        .list_webhook_deliveries(as_person(request, person))
        .await?
        .into_inner();
    let mut body = String::new();
    let _ = writeln!(
        body,
        "<dl>\n<dt>URL</dt><dd>{url}</dd>\n<dt>State</dt><dd>{state}</dd>\n\
         <dt>Failing since</dt><dd>{failing}</dd>\n<dt>Waiting</dt><dd>{waiting}</dd>\n\
         <dt>Secret version</dt><dd>{secret}</dd>\n</dl>",
        url = escape(&endpoint.url),
        state = state(&endpoint),
        failing = time(endpoint.failing_since.as_ref()),
        waiting = endpoint.pending_deliveries,
        secret = endpoint.secret_version,
    );
    let shown = bare(delivery_state.as_str_name(), "WEBHOOK_DELIVERY_STATE_");
    let _ = write!(
        body,
        "<h2>Deliveries</h2>\n<form class=\"filters\" method=\"get\" action=\"/webhooks/{id}\" \
         role=\"search\" data-live aria-controls=\"results\">\n<label>State<select name=\"state\">\
         <option value=\"\">Any</option>",
        id = escape(&endpoint.id),
    );
    for name in ["PENDING", "DELIVERED", "CANCELED"] {
        let selected = if name == shown { " selected" } else { "" };
        let _ = write!(body, "<option{selected}>{name}</option>");
    }
    body.push_str(
        "</select></label>\n<button type=\"submit\">Filter</button>\n</form>\n<div id=\"results\">\n",
    );
    deliveries_table(&mut body, &page_of.deliveries);
    if !page_of.next_page_token.is_empty() {
        let _ = writeln!(
            body,
            "<p><a href=\"/webhooks/{id}?{next}\" rel=\"next\">Next page</a></p>",
            id = escape(&endpoint.id),
            next = escape(&query_string(&[
                ("state", &query.get("state")),
                ("page_token", &page_of.next_page_token)
            ]))
        );
    }
    body.push_str("</div>\n");
    Ok(page(
        &format!("Webhook endpoint {}", endpoint.id),
        person,
        &body,
    ))
}
