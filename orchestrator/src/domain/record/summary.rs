//! A payment's summary for people: what was paid from which card, what replaced what, what
//! remains.

use super::PaymentRecord;
use super::{Attempt, AttemptOutcome, FailureReason};
use crate::domain::saga::{LegState, PaymentState};

impl PaymentRecord {
    /// "card A ·4242" (the last four digits once known).
    pub(super) fn card(&self, leg: usize) -> String {
        let token = &self.saga.legs[leg].token;
        let member = self.member(token);
        let label = member.map_or(token.as_str(), |m| m.label.as_str());
        let last4 = self.legs[leg]
            .last4
            .as_deref()
            .or(member.map(|m| m.last4.as_str()))
            .unwrap_or("");
        if last4.is_empty() {
            label.to_owned()
        } else {
            format!("{label} ·{last4}")
        }
    }

    /// What leg `leg`'s card pays in its own currency when the leg is converted, after the
    /// part of the invoice it covers: ` (12.01 EUR at 0.9238)` for `charge` minor units of the
    /// card's currency; empty for a leg in the invoice's currency.
    pub(super) fn conversion(&self, leg: usize, charge: i64) -> String {
        match self.saga.quote(leg) {
            Some(quote) => format!(" ({} at {})", self.card_money(leg, charge), quote.rate),
            None => String::new(),
        }
    }

    pub(super) fn attempt_line(&self, attempt: &Attempt) -> String {
        let card = self.card(attempt.leg);
        match attempt.outcome {
            AttemptOutcome::Approved => {
                format!(
                    "{card} approved {}",
                    self.card_money(attempt.leg, attempt.approved)
                )
            }
            AttemptOutcome::PartiallyApproved => format!(
                "{card} approved {} of {}",
                self.card_money(attempt.leg, attempt.approved),
                self.card_money(attempt.leg, attempt.requested)
            ),
            AttemptOutcome::Declined | AttemptOutcome::Error => format!(
                "{card} declined {} ({})",
                self.card_money(attempt.leg, attempt.requested),
                reason_text(attempt)
            ),
            AttemptOutcome::Pending => format!(
                "{card} asked {}",
                self.card_money(attempt.leg, attempt.requested)
            ),
        }
    }

    pub(super) fn reallocation_line(&self, from: usize) -> String {
        let to: Vec<String> = self
            .legs
            .iter()
            .enumerate()
            .filter(|(_, d)| d.replaced == Some(from))
            .map(|(i, _)| self.card(i))
            .collect();
        format!("{} moved to {}", self.card(from), to.join(", "))
    }

    /// One line for people: what was paid from which card, what replaced what, what remains.
    /// For example `Invoice 12345 paid 20.50 USD: card A ·4242 7.00, card B ·1881 13.00,
    /// card C ·0005 0.50 (card B replaced card D after insufficient funds)`.
    pub fn summary(&self) -> String {
        let amount = self.money(self.saga.amount);
        let mut covering: Vec<usize> = self
            .saga
            .legs
            .iter()
            .enumerate()
            .filter(|(_, l)| {
                // A converted hold worth less than the invoice's minor unit covers nothing.
                l.approved > 0
                    && matches!(
                        l.state,
                        LegState::Authorized
                            | LegState::Capturing
                            | LegState::Captured
                            | LegState::Voiding
                            | LegState::Voided
                    )
            })
            .map(|(i, _)| i)
            .collect();
        covering.sort_by_key(|&i| {
            let token = &self.saga.legs[i].token;
            (self.member(token).map_or(u16::MAX, |m| m.priority), i)
        });
        // One entry per card, its legs added up (a card may carry a fallback leg too), with
        // what a card in another currency pays in its own.
        let mut per_card: Vec<(usize, i64, i64)> = Vec::new();
        for &i in &covering {
            let token = &self.saga.legs[i].token;
            let (covers, charge) = (self.saga.legs[i].approved, self.saga.capture(i));
            match per_card
                .iter_mut()
                .find(|(first, _, _)| self.saga.legs[*first].token == *token)
            {
                Some((_, total, charged)) => {
                    *total += covers;
                    *charged += charge;
                }
                None => per_card.push((i, covers, charge)),
            }
        }
        let parts = per_card
            .iter()
            .map(|&(i, total, charged)| {
                format!(
                    "{} {}{}",
                    self.card(i),
                    self.money(total).decimal(),
                    self.conversion(i, charged)
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let mut replacements = Vec::new();
        for (i, detail) in self.legs.iter().enumerate() {
            let Some(from) = detail.replaced else {
                continue;
            };
            if !covering.contains(&i) {
                continue;
            }
            let why = self
                .attempts
                .iter()
                .rev()
                .find(|a| a.leg == from && a.outcome != AttemptOutcome::Pending)
                .map(|a| match a.outcome {
                    AttemptOutcome::PartiallyApproved => "a partial approval".to_owned(),
                    _ => reason_text(a),
                })
                .unwrap_or_else(|| "a decline".to_owned());
            let line = format!(
                "{} replaced {} after {why}",
                self.label(i),
                self.label(from)
            );
            if !replacements.contains(&line) {
                replacements.push(line);
            }
        }
        let declines = self
            .attempts
            .iter()
            .filter(|a| matches!(a.outcome, AttemptOutcome::Declined | AttemptOutcome::Error))
            .map(|a| self.attempt_line(a))
            .collect::<Vec<_>>()
            .join(", ");
        let notes = if replacements.is_empty() {
            String::new()
        } else {
            format!(" ({})", replacements.join("; "))
        };
        let mut line = match self.saga.state {
            PaymentState::Succeeded => {
                format!("Invoice {} paid {amount}: {parts}{notes}", self.invoice_id)
            }
            PaymentState::PartiallyPaid => format!(
                "Invoice {} partly paid {} of {amount}: {parts}{notes}; {} remaining",
                self.invoice_id,
                self.money(self.captured()).decimal(),
                self.money(self.remaining())
            ),
            PaymentState::Failed => {
                let reviewed = self.review_line().filter(|_| self.failure_reason.is_some());
                let blocked = self
                    .risk
                    .as_ref()
                    .filter(|_| self.failure_reason == Some(FailureReason::RiskBlocked))
                    .map(|r| format!("blocked by {}", r.summary()));
                let why = if let Some(why) = blocked.or(reviewed) {
                    why
                } else if declines.is_empty() {
                    "no card had room for it".to_owned()
                } else {
                    declines
                };
                format!(
                    "Invoice {} not paid ({amount}): {why}; no financial effect",
                    self.invoice_id
                )
            }
            PaymentState::Reversing => {
                match self.review_line().filter(|_| self.failure_reason.is_some()) {
                    // Rejected or expired in review: covered, but not to be paid.
                    Some(review) => format!(
                        "Invoice {} not paid ({amount}): {review}; releasing holds on {parts}",
                        self.invoice_id
                    ),
                    None => format!(
                        "Invoice {} not covered ({amount}): releasing holds on {parts}",
                        self.invoice_id
                    ),
                }
            }
            PaymentState::NeedsOperator => format!(
                "Invoice {} waits for an operator ({amount}): {}",
                self.invoice_id,
                self.refusals_text()
            ),
            PaymentState::Pending
            | PaymentState::Authorizing
            | PaymentState::InReview
            | PaymentState::Capturing => {
                let state = match self.saga.state {
                    PaymentState::Pending => "pending",
                    PaymentState::Authorizing => "authorizing",
                    PaymentState::InReview => "in review",
                    _ => "capturing",
                };
                if parts.is_empty() {
                    format!("Invoice {} {state} {amount}", self.invoice_id)
                } else {
                    format!(
                        "Invoice {} {state} {amount}: {parts}{notes}",
                        self.invoice_id
                    )
                }
            }
        };
        let refunded = self.refunded();
        if refunded > 0 {
            line.push_str(&format!("; refunded {}", self.money(refunded)));
        }
        line
    }

    pub(super) fn label(&self, leg: usize) -> &str {
        let token = &self.saga.legs[leg].token;
        self.member(token)
            .map_or(token.as_str(), |m| m.label.as_str())
    }
}

/// "insufficient funds", "token revoked": a decline code or refusal reason for people.
pub(super) fn reason_text(attempt: &Attempt) -> String {
    attempt
        .decline_code
        .as_deref()
        .or(attempt.error_reason.as_deref())
        .unwrap_or("declined")
        .to_lowercase()
        .replace('_', " ")
}
