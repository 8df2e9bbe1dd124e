//! A payment's risk assessment and review: recorded before any step, decided by a reviewer or
//! by the clock (DESIGN section 12).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::events::{Event, EventKind};
use super::{AttemptOutcome, FailureReason, PaymentRecord};
use crate::domain::actor::Actor;
use crate::domain::risk::{Action, Assessment, PlannedCard, Subject};
use crate::domain::saga::{self, PaymentState, Verdict};

/// A payment's review: asked for by its assessment, open once the payment is covered, decided
/// once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Review {
    /// How long the payment may wait in review, from when it is covered.
    pub timeout_s: u64,
    /// When the payment entered IN_REVIEW.
    pub start_time: Option<OffsetDateTime>,
    /// When the review expires.
    pub expire_time: Option<OffsetDateTime>,
    /// The verdict, once decided.
    pub verdict: Option<Verdict>,
    /// Who decided (none for an expiry).
    pub reviewer: Option<Actor>,
    /// The reviewer's note.
    pub note: Option<String>,
    /// When it was decided.
    pub decide_time: Option<OffsetDateTime>,
}

/// Why a verdict cannot be recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    /// The payment is not waiting for a review.
    #[error("the payment is not in review")]
    NotInReview,
    /// The reviewer created the payment (four eyes).
    #[error("the payment's creator may not review it")]
    SameIdentity,
}

impl PaymentRecord {
    /// Records the payment's assessment, before any step, with its `payment.risk_assessed`
    /// event when a rule fired; a block ends the payment FAILED (nothing is ever sent), a
    /// review makes it wait for a reviewer once covered, for at most `review_timeout_s`.
    pub fn assess(
        &mut self,
        assessment: Assessment,
        review_timeout_s: u64,
        now: OffsetDateTime,
    ) -> Vec<Event> {
        assert_eq!(
            self.saga.state,
            PaymentState::Pending,
            "a payment is assessed before any step"
        );
        let action = assessment.action;
        let mut events = Vec::new();
        let summary = assessment.summary();
        let quiet = assessment.fired.is_empty();
        self.risk = Some(assessment);
        // A quiet assessment (nothing fired) is in every event's payment, `payment.created`'s
        // first; one that found something is an event of its own.
        if !quiet {
            let mut assessed = self.event(EventKind::RiskAssessed, None, None, None);
            assessed.summary = summary;
            events.push(assessed);
        }
        match action {
            Action::Allow => {}
            Action::Review => {
                self.saga.review = true;
                self.review = Some(Review {
                    timeout_s: review_timeout_s,
                    start_time: None,
                    expire_time: None,
                    verdict: None,
                    reviewer: None,
                    note: None,
                    decide_time: None,
                });
            }
            Action::Block => {
                saga::block(&mut self.saga).expect("a pending payment can be blocked");
                self.failure_reason = Some(FailureReason::RiskBlocked);
                self.complete_time = Some(now);
                events.push(self.event(EventKind::PaymentFailed, None, None, None));
            }
        }
        events
    }

    /// Opens the review when the saga has just entered IN_REVIEW (from the state events).
    pub(super) fn open_review(&mut self, now: OffsetDateTime) {
        if let Some(review) = &mut self.review
            && review.start_time.is_none()
        {
            let timeout =
                time::Duration::seconds(i64::try_from(review.timeout_s).unwrap_or(i64::MAX));
            review.start_time = Some(now);
            review.expire_time = Some(now.saturating_add(timeout));
        }
    }

    /// When the payment's review expires, while it waits in review.
    pub fn review_expire_time(&self) -> Option<OffsetDateTime> {
        if self.saga.state != PaymentState::InReview {
            return None;
        }
        self.review.as_ref().and_then(|r| r.expire_time)
    }

    /// Records a reviewer's verdict (`Approve` or `Reject`), or the expiry (`Expired`, no
    /// reviewer): the payment moves on to capture or to voiding its holds. Refused when the
    /// payment is not in review, or when the reviewer created it.
    pub fn decide_review(
        &mut self,
        verdict: Verdict,
        reviewer: Option<Actor>,
        note: Option<String>,
        now: OffsetDateTime,
    ) -> Result<Vec<Event>, ReviewError> {
        if self.saga.state != PaymentState::InReview {
            return Err(ReviewError::NotInReview);
        }
        // A review past its expiry takes no verdict but the expiry (the recovery worker records
        // it): its holds are voided however late a reviewer comes.
        if reviewer.is_some()
            && self
                .review_expire_time()
                .is_some_and(|expire| expire <= now)
        {
            return Err(ReviewError::NotInReview);
        }
        if let (Some(reviewer), Some(creator)) = (&reviewer, &self.creator)
            && reviewer.name == creator.name
        {
            return Err(ReviewError::SameIdentity);
        }
        let review = self.review.as_mut().ok_or(ReviewError::NotInReview)?;
        review.verdict = Some(verdict);
        review.reviewer = reviewer;
        review.note = note;
        review.decide_time = Some(now);
        match verdict {
            Verdict::Approve => {}
            Verdict::Reject => self.failure_reason = Some(FailureReason::ReviewRejected),
            Verdict::Expired => self.failure_reason = Some(FailureReason::ReviewExpired),
        }
        let before = self.saga.state;
        saga::review(&mut self.saga, verdict).expect("a payment in review takes a verdict");
        let mut events = vec![self.event(EventKind::PaymentReviewed, None, None, None)];
        self.state_events(before, now, &mut events);
        Ok(events)
    }

    /// One line for people about the review: "approved by reviewer/ana: known vendor".
    pub fn review_line(&self) -> Option<String> {
        let review = self.review.as_ref()?;
        let verdict = review.verdict?;
        let by = review
            .reviewer
            .as_ref()
            .map(|r| format!(" by {}", r.name))
            .unwrap_or_default();
        let note = review
            .note
            .as_deref()
            .map(|n| format!(": {n}"))
            .unwrap_or_default();
        Some(match verdict {
            Verdict::Approve => format!("Review approved{by}{note}"),
            Verdict::Reject => format!("Review rejected{by}{note}"),
            Verdict::Expired => "Review expired: nobody decided in time".to_owned(),
        })
    }
}

impl PaymentRecord {
    /// The payment as its assessment sees it: its account and group, the invoice, and each
    /// card its plan charges, once, with the part planned on it.
    pub fn risk_subject(
        &self,
        billing_account_id: &str,
        card_group_id: &str,
        now: OffsetDateTime,
    ) -> Subject {
        let mut cards: Vec<PlannedCard> = Vec::new();
        for (index, leg) in self.saga.legs.iter().enumerate() {
            match cards.iter_mut().find(|c| c.token == leg.token) {
                Some(card) => card.amount += leg.amount,
                None => cards.push(PlannedCard {
                    token: leg.token.clone(),
                    // The card as every other line for people names it ("card A ·4242").
                    label: self.card(index),
                    amount: leg.amount,
                }),
            }
        }
        Subject {
            billing_account_id: billing_account_id.to_owned(),
            card_group_id: card_group_id.to_owned(),
            amount: self.money(self.saga.amount),
            cards,
            now,
        }
    }

    /// The cards `events` record an issuer's decline of, once per decline (the declines risk
    /// counts; a refusal before the issuer is not one).
    pub fn declined_cards(&self, events: &[Event]) -> Vec<&str> {
        events
            .iter()
            .filter(|e| e.kind == EventKind::LegDeclined)
            .filter_map(|e| self.attempts.get(e.attempt? as usize - 1))
            .filter(|a| a.outcome == AttemptOutcome::Declined)
            .filter_map(|a| self.saga.legs.get(a.leg).map(|l| l.token.as_str()))
            .collect()
    }
}
