//! What a payment's changes publish: the outbox events, each with its line for people.

use time::OffsetDateTime;

use super::PaymentRecord;
use super::summary::reason_text;
use crate::domain::saga::PaymentState;

/// What happened, for the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// `payment.created`
    PaymentCreated,
    /// `payment.authorizing`
    PaymentAuthorizing,
    /// `payment.capturing`
    PaymentCapturing,
    /// `payment.succeeded`
    PaymentSucceeded,
    /// `payment.partially_paid`
    PaymentPartiallyPaid,
    /// `payment.reversing`
    PaymentReversing,
    /// `payment.failed`
    PaymentFailed,
    /// `payment.partially_refunded`
    PaymentPartiallyRefunded,
    /// `payment.refunded`
    PaymentRefunded,
    /// `leg.authorized`
    LegAuthorized,
    /// `leg.declined`
    LegDeclined,
    /// `leg.reallocated`
    LegReallocated,
    /// `leg.captured`
    LegCaptured,
    /// `leg.voided`
    LegVoided,
    /// `leg.refunded`
    LegRefunded,
    /// `refund.created`
    RefundCreated,
    /// `refund.succeeded`
    RefundSucceeded,
    /// `refund.failed`
    RefundFailed,
    /// `card.ineligible`: a leg's card was declined as lost, stolen, blocked or expired (lost
    /// and stolen cards' members are also suspended).
    CardIneligible,
    /// `payment.note_added`: an operator wrote a note on the payment.
    NoteAdded,
    /// `payment.delayed`: the payment is not terminal `notify.pending_after_s` after it was
    /// created.
    PaymentDelayed,
    /// `payment.risk_assessed`: the risk assessment, before any step.
    RiskAssessed,
    /// `payment.in_review`: covered, waiting for a reviewer.
    PaymentInReview,
    /// `payment.reviewed`: approved, rejected or expired.
    PaymentReviewed,
    /// `payment.needs_operator`: the vault refused a capture or void for good.
    PaymentNeedsOperator,
    /// `payment.resolved`: an operator resolved a payment that needed one.
    PaymentResolved,
}

/// An event to publish with the state change that caused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// The leg, for leg events.
    pub leg: Option<usize>,
    /// The attempt number, for `leg.authorized` and `leg.declined`.
    pub attempt: Option<u32>,
    /// The refund, for refund events and `leg.refunded`.
    pub refund: Option<String>,
    /// The note (its index in the record's notes), for `payment.note_added`.
    pub note: Option<usize>,
    /// One line for people; the payment's summary for terminal events.
    pub summary: String,
    /// For the first state event of a change: the state the payment left and how long it was
    /// in it (for the metrics' time per stage).
    pub left: Option<(PaymentState, time::Duration)>,
}

impl PaymentRecord {
    pub(super) fn state_events(
        &mut self,
        before: PaymentState,
        now: OffsetDateTime,
        events: &mut Vec<Event>,
    ) {
        let after = self.saga.state;
        if after == before {
            return;
        }
        if after.is_terminal() && self.complete_time.is_none() {
            self.complete_time = Some(now);
        }
        if after == PaymentState::InReview {
            self.open_review(now);
        }
        // A payment may pass several states in one step (PENDING -> AUTHORIZING -> FAILED):
        // each state entered gets its event, in order.
        let path: &[PaymentState] = match (before, after) {
            (PaymentState::Pending, PaymentState::Failed) => {
                &[PaymentState::Authorizing, PaymentState::Failed]
            }
            (PaymentState::Pending, PaymentState::Capturing) => {
                &[PaymentState::Authorizing, PaymentState::Capturing]
            }
            (PaymentState::Pending, PaymentState::Reversing) => {
                &[PaymentState::Authorizing, PaymentState::Reversing]
            }
            (PaymentState::Authorizing, PaymentState::Failed) => &[PaymentState::Failed],
            _ => std::slice::from_ref(&self.saga.state),
        };
        let entered = self.state_time.unwrap_or(self.create_time);
        self.state_time = Some(now);
        let mut left = Some((before, now - entered));
        for state in path.iter().copied() {
            let kind = match state {
                PaymentState::Pending => continue,
                PaymentState::Authorizing => EventKind::PaymentAuthorizing,
                PaymentState::InReview => EventKind::PaymentInReview,
                PaymentState::Capturing => EventKind::PaymentCapturing,
                PaymentState::Succeeded => EventKind::PaymentSucceeded,
                PaymentState::PartiallyPaid => EventKind::PaymentPartiallyPaid,
                PaymentState::Reversing => EventKind::PaymentReversing,
                PaymentState::Failed => EventKind::PaymentFailed,
                PaymentState::NeedsOperator => EventKind::PaymentNeedsOperator,
            };
            let mut event = self.event(kind, None, None, None);
            event.left = left.take();
            events.push(event);
        }
    }

    pub(super) fn event(
        &self,
        kind: EventKind,
        leg: Option<usize>,
        attempt: Option<u32>,
        refund: Option<&str>,
    ) -> Event {
        let summary = match kind {
            EventKind::LegAuthorized | EventKind::LegDeclined => attempt
                .and_then(|n| self.attempts.get(n as usize - 1))
                .map(|a| self.attempt_line(a))
                .unwrap_or_default(),
            EventKind::LegReallocated => leg.map(|l| self.reallocation_line(l)).unwrap_or_default(),
            EventKind::CardIneligible => attempt
                .and_then(|n| self.attempts.get(n as usize - 1))
                .map(|a| {
                    let consequence = if a
                        .decline_code
                        .as_deref()
                        .is_some_and(super::suspends_member)
                    {
                        "suspended in its card group, not to be charged again"
                    } else {
                        "replace or update it before its next payment"
                    };
                    format!(
                        "{} declined as {}: {consequence}",
                        self.card(a.leg),
                        reason_text(a)
                    )
                })
                .unwrap_or_default(),
            EventKind::LegCaptured | EventKind::LegVoided => leg
                .map(|l| {
                    let verb = if kind == EventKind::LegCaptured {
                        "captured"
                    } else {
                        "voided"
                    };
                    // What the card paid (or was released from), in its currency.
                    let charge = if kind == EventKind::LegCaptured {
                        self.saga.capture(l)
                    } else {
                        self.saga.hold(l)
                    };
                    format!(
                        "{} {verb} {}{}",
                        self.card(l),
                        self.money(self.saga.legs[l].approved),
                        self.conversion(l, charge)
                    )
                })
                .unwrap_or_default(),
            EventKind::LegRefunded => leg
                .and_then(|l| {
                    let refund = self
                        .refunds
                        .iter()
                        .find(|r| Some(r.id.as_str()) == refund)?;
                    let part = refund.parts.iter().find(|p| p.leg == l)?;
                    let refunded = self.money(part.amount);
                    Some(match part.charge {
                        Some(charge) => format!(
                            "{} refunded {refunded} ({})",
                            self.card(l),
                            self.card_money(l, charge)
                        ),
                        None => format!("{} refunded {refunded}", self.card(l)),
                    })
                })
                .unwrap_or_default(),
            EventKind::RefundCreated | EventKind::RefundSucceeded | EventKind::RefundFailed => {
                let amount = self
                    .refunds
                    .iter()
                    .find(|r| Some(r.id.as_str()) == refund)
                    .map_or(0, |r| r.amount);
                let verb = match kind {
                    EventKind::RefundCreated => "requested",
                    EventKind::RefundSucceeded => "succeeded",
                    _ => "failed",
                };
                format!("Refund of {} {verb}", self.money(amount))
            }
            EventKind::PaymentDelayed => format!("Still in progress: {}", self.summary()),
            EventKind::RiskAssessed => self.risk.as_ref().map(|r| r.summary()).unwrap_or_default(),
            EventKind::PaymentInReview => {
                let expires = self
                    .review
                    .as_ref()
                    .and_then(|r| r.expire_time)
                    .map(|t| format!(" until {t}"))
                    .unwrap_or_default();
                format!("Waiting for review{expires}: {}", self.summary())
            }
            EventKind::PaymentReviewed => self.review_line().unwrap_or_default(),
            EventKind::PaymentNeedsOperator => self.refusal_line(),
            EventKind::PaymentResolved => self.resolution_line().unwrap_or_default(),
            EventKind::NoteAdded => self
                .notes
                .last()
                .map(|n| format!("Note by {}", n.author.name))
                .unwrap_or_default(),
            _ => self.summary(),
        };
        Event {
            kind,
            leg,
            attempt,
            refund: refund.map(str::to_owned),
            note: None,
            summary,
            left: None,
        }
    }
}
