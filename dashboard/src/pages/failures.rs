//! Failures: over the latest payments, the declines by code and by card, how often a decline
//! fell back to the next card or was retried on the same one, and the payments that did not
//! end paid.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use tandem_proto::tandem::orchestrator::v1 as pb;
use tandem_proto::tandem::r#type::v1 as types;

use super::payments::payments_table;
use super::{Page, Query, bare};
use crate::api::{Api, as_person};
use crate::forms::Visit;
use crate::html::{escape, page};

/// Payments read per call, the most payments one page looks at, and the most calls it makes
/// (a page of payments is cut to fit the orchestrator's messages, so it may hold fewer).
const BATCH: i32 = 100;
const PAYMENTS_MAX: usize = 1_000;
const CALLS_MAX: usize = 20;

/// What the latest payments' attempts add up to.
#[derive(Debug, Default)]
pub struct Failures {
    /// Payments looked at.
    pub payments: usize,
    /// Attempts looked at.
    pub attempts: usize,
    /// Declines by decline code.
    pub by_code: BTreeMap<String, usize>,
    /// By card (`label ····last4`): its attempts and its declines.
    pub by_card: BTreeMap<String, (usize, usize)>,
    /// Declines after which the next card was tried.
    pub fallbacks: usize,
    /// Declines after which the same card was tried again.
    pub retries: usize,
    /// Payments that ended failed or partly paid, newest first (at most 50).
    pub unpaid: Vec<pb::Payment>,
}

impl Failures {
    /// Adds `payment`'s attempts.
    pub fn add(&mut self, payment: &pb::Payment) {
        self.payments += 1;
        for attempt in &payment.attempts {
            self.attempts += 1;
            let card = format!("{} ····{}", attempt.label, attempt.last4);
            let counts = self.by_card.entry(card).or_default();
            counts.0 += 1;
            let Some(code) = types::DeclineCode::try_from(attempt.decline_code)
                .ok()
                .filter(|c| *c != types::DeclineCode::Unspecified)
            else {
                continue;
            };
            counts.1 += 1;
            *self
                .by_code
                .entry(bare(code.as_str_name(), "DECLINE_CODE_").to_owned())
                .or_default() += 1;
            match types::NextAction::try_from(attempt.next_action) {
                Ok(types::NextAction::TryNextCard) => self.fallbacks += 1,
                Ok(types::NextAction::RetrySameCard) => self.retries += 1,
                _ => {}
            }
        }
        let unpaid = [pb::PaymentState::Failed, pb::PaymentState::PartiallyPaid]
            .map(|s| s as i32)
            .contains(&payment.state);
        if unpaid && self.unpaid.len() < 50 {
            self.unpaid.push(payment.clone());
        }
    }
}

/// `/failures?card_group_id=..`: the latest payments' declines, fallbacks and retries.
pub async fn failures(api: &Api, visit: &Visit<'_>, query: Option<&str>) -> Page {
    let person = visit.person;
    let query = Query::parse(query, &["card_group_id"])?;
    let group = query.get("card_group_id");
    let mut failures = Failures::default();
    let mut page_token = String::new();
    for _ in 0..CALLS_MAX {
        let request = pb::ListPaymentsRequest {
            page_size: BATCH,
            page_token,
            card_group_id: group.clone(),
            ..Default::default()
        };
        let page_of = api
            .payments()
            .list_payments(as_person(request, person))
            .await?
            .into_inner();
        for payment in &page_of.payments {
            failures.add(payment);
        }
        if page_of.next_page_token.is_empty() || failures.payments >= PAYMENTS_MAX {
            break;
        }
        page_token = page_of.next_page_token;
    }
    let mut body = String::new();
    let _ = writeln!(
        body,
        "<form class=\"filters\" method=\"get\" action=\"/failures\" role=\"search\" data-live \
         aria-controls=\"results\">\n<label>Card group<input name=\"card_group_id\" \
         value=\"{}\"></label>\n<button type=\"submit\">Show</button>\n</form>\n<div id=\"results\">",
        escape(&group)
    );
    render(&mut body, &failures);
    body.push_str("</div>\n");
    Ok(page("Failures", person, &body))
}

fn render(body: &mut String, failures: &Failures) {
    let declines: usize = failures.by_code.values().sum();
    let _ = writeln!(
        body,
        "<p>Over the latest <strong>{payments}</strong> payments: {attempts} attempts, \
         <strong data-field=\"declines\">{declines}</strong> declined; \
         <span data-field=\"fallbacks\">{fallbacks}</span> fell back to the next card, \
         <span data-field=\"retries\">{retries}</span> were retried on the same card.</p>",
        payments = failures.payments,
        attempts = failures.attempts,
        fallbacks = failures.fallbacks,
        retries = failures.retries,
    );
    body.push_str(
        "<table id=\"declines-by-code\">\n<caption>Declines by code</caption>\n<thead><tr>\
         <th scope=\"col\">Decline code</th><th scope=\"col\">Declines</th></tr></thead>\n<tbody>\n",
    );
    let mut by_code: Vec<_> = failures.by_code.iter().collect();
    by_code.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    for (code, count) in by_code {
        let _ = writeln!(
            body,
            "<tr><th scope=\"row\">{}</th><td class=\"amount\">{count}</td></tr>",
            escape(code)
        );
    }
    body.push_str(
        "</tbody>\n</table>\n<table id=\"declines-by-card\">\n<caption>Attempts and declines \
         by card</caption>\n<thead><tr><th scope=\"col\">Card</th><th scope=\"col\">Attempts</th>\
         <th scope=\"col\">Declines</th></tr></thead>\n<tbody>\n",
    );
    for (card, (attempts, declined)) in &failures.by_card {
        let _ = writeln!(
            body,
            "<tr><th scope=\"row\">{}</th><td class=\"amount\">{attempts}</td>\
             <td class=\"amount\">{declined}</td></tr>",
            escape(card)
        );
    }
    body.push_str("</tbody>\n</table>\n<h2>Payments not paid in full</h2>\n");
    payments_table(
        body,
        &failures.unpaid,
        "Failed or partly paid, newest first",
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Declines count by code and by card; a fallback and a retry are told apart; only
    /// unpaid payments are listed.
    #[test]
    fn attempts_add_up() {
        let attempt =
            |last4: &str, code: types::DeclineCode, next: types::NextAction| pb::PaymentAttempt {
                label: "Visa".into(),
                last4: last4.into(),
                decline_code: code as i32,
                next_action: next as i32,
                ..Default::default()
            };
        let mut failures = Failures::default();
        failures.add(&pb::Payment {
            state: pb::PaymentState::Succeeded as i32,
            attempts: vec![
                attempt(
                    "0002",
                    types::DeclineCode::InsufficientFunds,
                    types::NextAction::TryNextCard,
                ),
                attempt(
                    "4242",
                    types::DeclineCode::Unspecified,
                    types::NextAction::Unspecified,
                ),
            ],
            ..Default::default()
        });
        failures.add(&pb::Payment {
            state: pb::PaymentState::Failed as i32,
            attempts: vec![attempt(
                "0002",
                types::DeclineCode::ProcessingError,
                types::NextAction::RetrySameCard,
            )],
            ..Default::default()
        });
        assert_eq!(failures.payments, 2);
        assert_eq!(failures.attempts, 3);
        assert_eq!(failures.by_code.get("INSUFFICIENT_FUNDS"), Some(&1));
        assert_eq!(failures.by_card.get("Visa ····0002"), Some(&(2, 2)));
        assert_eq!(failures.by_card.get("Visa ····4242"), Some(&(1, 0)));
        assert_eq!((failures.fallbacks, failures.retries), (1, 1));
        assert_eq!(failures.unpaid.len(), 1);
        let mut body = String::new();
        render(&mut body, &failures);
        assert!(
            body.contains("<strong data-field=\"declines\">2</strong>"),
            "{body}"
        );
    }
}
