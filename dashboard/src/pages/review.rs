//! The review queue: payments the risk rules held before capture, oldest deadline first, with
//! why they were held; a reviewer (never the payment's creator: the service checks) approves
//! or rejects each.

use std::fmt::Write as _;

use tandem_proto::tandem::orchestrator::v1 as pb;

use super::{Change, PAGE_SIZE, Page, Query, bare, query_string};
use crate::api::{Api, ApiError, as_person};
use crate::forms::{Posted, Visit};
use crate::html::{escape, money, page, time};

/// The longest review note, in characters.
const NOTE_CHARS_MAX: usize = 1000;

/// `/review`: the payments in review.
pub async fn queue(api: &Api, visit: &Visit<'_>, query: Option<&str>) -> Page {
    let person = visit.person;
    let query = Query::parse(query, &["page_token", "notice"])?;
    let request = pb::ListPaymentsRequest {
        page_size: PAGE_SIZE,
        page_token: query.get("page_token"),
        state: pb::PaymentState::InReview as i32,
        ..Default::default()
    };
    let page_of = api
        .payments()
        .list_payments(as_person(request, person))
        .await?
        .into_inner();
    let mut body = String::new();
    if query.get("notice") == "reviewed" {
        body.push_str("<p role=\"status\" class=\"notice\">The payment was reviewed.</p>\n");
    }
    body.push_str("<div id=\"results\">\n");
    if page_of.payments.is_empty() {
        body.push_str("<p>No payment is waiting for review.</p>\n");
    } else {
        body.push_str(
            "<table class=\"review\">\n<caption>Payments in review</caption>\n<thead><tr>\
             <th scope=\"col\">Payment</th><th scope=\"col\">Invoice</th>\
             <th scope=\"col\">Amount</th><th scope=\"col\">Created by</th>\
             <th scope=\"col\">Why</th><th scope=\"col\">Decide by</th>\
             <th scope=\"col\">Decision</th></tr></thead>\n<tbody>\n",
        );
        for payment in &page_of.payments {
            row(&mut body, visit, payment);
        }
        body.push_str("</tbody>\n</table>\n");
    }
    if !page_of.next_page_token.is_empty() {
        let _ = writeln!(
            body,
            "<p><a href=\"/review?{}\" rel=\"next\">Next page</a></p>",
            escape(&query_string(&[("page_token", &page_of.next_page_token)]))
        );
    }
    body.push_str("</div>\n");
    Ok(page("Review", person, &body))
}

fn row(body: &mut String, visit: &Visit<'_>, payment: &pb::Payment) {
    let invoice = payment.invoice.as_ref();
    let why = payment
        .risk
        .as_ref()
        .map(|risk| {
            let rules: Vec<String> = risk
                .fired
                .iter()
                .map(|fired| {
                    let action = bare(
                        pb::RiskAction::try_from(fired.action)
                            .unwrap_or_default()
                            .as_str_name(),
                        "RISK_ACTION_",
                    );
                    format!("{} ({action}, +{})", escape(&fired.rule), fired.score)
                })
                .collect();
            format!("score {}: {}", risk.score, rules.join(", "))
        })
        .unwrap_or_default();
    let _ = write!(
        body,
        "<tr data-payment-id=\"{id}\"><td><a href=\"/payments/{id}\">{id}</a></td>\
         <td>{invoice}</td><td class=\"amount\">{amount}</td><td>{creator}</td><td>{why}</td>\
         <td>{deadline}</td><td>",
        id = escape(&payment.id),
        invoice = escape(invoice.map_or("", |i| i.id.as_str())),
        amount = money(invoice.and_then(|i| i.amount.as_ref())),
        creator = escape(payment.creator.as_ref().map_or("", |c| c.name.as_str())),
        deadline = time(payment.review.as_ref().and_then(|r| r.expire_time.as_ref())),
    );
    if Change::ReviewPayment.offered_to(visit.person.role) {
        let action = format!("/review/{}", payment.id);
        let _ = write!(
            body,
            "<form class=\"inline review\" method=\"post\" action=\"{action}\">{hidden}\
             <label>Note<input name=\"note\" maxlength=\"{NOTE_CHARS_MAX}\"></label>\
             <button type=\"submit\" name=\"verdict\" value=\"APPROVE\">Approve</button>\
             <button type=\"submit\" name=\"verdict\" value=\"REJECT\">Reject</button></form>",
            action = escape(&action),
            hidden = visit.hidden_fields(&action),
        );
    } else {
        body.push('—');
    }
    body.push_str("</td></tr>\n");
}

/// `POST /review/{payment_id}`: the reviewer's verdict and note.
pub async fn decide(
    api: &Api,
    visit: &Visit<'_>,
    payment_id: &str,
    posted: &Posted,
) -> Result<String, ApiError> {
    let verdict = match posted.get("verdict") {
        "APPROVE" => pb::ReviewVerdict::Approve,
        "REJECT" => pb::ReviewVerdict::Reject,
        _ => {
            return Err(ApiError::Invalid(
                "verdict must be APPROVE or REJECT".into(),
            ));
        }
    };
    let note = posted.get("note");
    if note.chars().count() > NOTE_CHARS_MAX {
        return Err(ApiError::Invalid(format!(
            "note is over {NOTE_CHARS_MAX} characters"
        )));
    }
    let request = pb::ReviewPaymentRequest {
        request_id: posted.request_id()?.to_owned(),
        payment_id: payment_id.to_owned(),
        verdict: verdict as i32,
        note: note.to_owned(),
    };
    api.payments()
        .review_payment(as_person(request, visit.person))
        .await?;
    Ok("/review?notice=reviewed".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forms::{FormKey, fingerprint};
    use tandem_tls::identity::{Caller, Role};

    /// A reviewer gets the approve and reject buttons; a reader sees the row without them.
    #[test]
    fn only_a_reviewer_is_offered_the_decision() {
        let payment = pb::Payment {
            id: "pay_1".into(),
            risk: Some(pb::RiskAssessment {
                score: 70,
                fired: vec![pb::RiskRuleFired {
                    rule: "large <amount>".into(),
                    action: pb::RiskAction::Review as i32,
                    score: 70,
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let key = FormKey::generate().expect("key");
        let print = fingerprint(b"cert");
        let render = |role| {
            let person = Caller {
                role,
                name: "someone".into(),
            };
            let mut body = String::new();
            row(&mut body, &Visit::new(&person, &print, &key), &payment);
            body
        };
        let reviewer = render(Role::Reviewer);
        assert!(reviewer.contains("action=\"/review/pay_1\""), "{reviewer}");
        assert!(reviewer.contains("value=\"APPROVE\""), "{reviewer}");
        assert!(
            reviewer.contains("large &lt;amount&gt; (REVIEW, +70)"),
            "{reviewer}"
        );
        let reader = render(Role::Reader);
        assert!(!reader.contains("<form"), "{reader}");
    }
}
