//! A payment as the orchestrator keeps it: the saga's state plus what people and clients need
//! (members' labels, every attempt, charge ids, refunds), and the pure steps that change it.
//!
//! The workflow loads a record, asks it for the vault operations to run ([`PaymentRecord::
//! next_steps`]: the intents), commits, calls the vault, and records each answer
//! ([`PaymentRecord::record_authorization`], [`PaymentRecord::record_settlement`], ...), which
//! returns the events to publish, the ledger outcome to book and the spend to adjust, all
//! committed together. Nothing here does IO.
//!
//! Vault request ids are deterministic per payment, leg, attempt and operation
//! (`<payment>/leg/<n>/attempt/<k>/authorize`, `<payment>/leg/<n>/capture`,
//! `<payment>/leg/<n>/void`, `<payment>/refund/<refund>/leg/<n>`; a capture or void an
//! operator had sent again adds `/resend/<k>`), so re-sending an operation
//! after a crash is the vault's replay of the same request, never a second charge.
//!
//! Split by concern: the record and its totals here; [`steps`] (authorizations, captures and
//! voids: intents and answers), [`refunds`], [`events`] (what the outbox publishes) and
//! [`summary`] (the line for people).

use serde::{Deserialize, Serialize};
use tandem_money::{Currency, Money};
use time::OffsetDateTime;

use super::actor::Actor;
use super::saga::{LegState, NextAction, Payment, PaymentState};

pub mod events;
pub mod operator;
pub mod refunds;
pub mod review;
pub mod steps;
pub mod summary;
#[cfg(test)]
pub(crate) mod tests;

use events::{Event, EventKind};
use operator::Resolution;
use refunds::{Refund, RefundState};
use review::Review;

use super::risk::Assessment;

/// A member as the payment saw it at creation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberSnapshot {
    /// The vault token.
    pub token: String,
    /// The label ("card A").
    pub label: String,
    /// Priority, lower first.
    pub priority: u16,
    /// Where the member's spend is booked.
    pub cost_center: Option<String>,
    /// The calendar-month limit in force when the payment was created, in minor units.
    pub limit_per_month: Option<i64>,
    /// The card's last four digits as the group last knew them.
    pub last4: String,
}

/// What the saga's leg does not hold: the vault's charge and the card's details.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegDetail {
    /// The vault charge holding the leg's money.
    pub charge_id: Option<String>,
    /// The issuer's authorization code.
    pub authorization_code: Option<String>,
    /// The processor's reference of the authorization (the vault charge's), which the
    /// capture's booking carries for reconciliation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processor_reference: Option<String>,
    /// The card's last four digits, as the vault reported them.
    pub last4: Option<String>,
    /// The leg whose declined amount this leg took over (fallback).
    pub replaced: Option<usize>,
    /// Minor units refunded to the card.
    pub refunded: i64,
    /// How often the vault refused the leg's capture or void as it is sent now (its request
    /// id); back to 0 when an operator has it sent again.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub refusals: u32,
    /// The vault's reason for the last refusal (`PROCESSOR_REFUSED`, `CHARGE_NOT_AUTHORIZED`),
    /// while the leg's capture or void stands refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
    /// How often an operator had the leg's capture or void sent again: each time under a new
    /// request id, so that the vault asks its processor again instead of replaying its answer.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub resends: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// How one authorization attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttemptOutcome {
    /// Sent; the answer is not known yet.
    Pending,
    /// Approved in full.
    Approved,
    /// Approved for less than asked.
    PartiallyApproved,
    /// Declined by the issuer or processor.
    Declined,
    /// Refused before reaching the processor (the vault, or a member limit).
    Error,
}

/// One authorization attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// 1 for the first attempt of the payment.
    pub number: u32,
    /// The leg it was for.
    pub leg: usize,
    /// Minor units asked.
    pub requested: i64,
    /// Minor units approved.
    pub approved: i64,
    /// How it ended.
    pub outcome: AttemptOutcome,
    /// The decline code's name without its prefix (`INSUFFICIENT_FUNDS`), when declined.
    pub decline_code: Option<String>,
    /// The vault's advice, when declined.
    pub next_action: Option<NextAction>,
    /// Why it was refused (`TOKEN_REVOKED`, `MEMBER_LIMIT_REACHED`), when an error.
    pub error_reason: Option<String>,
    /// The vault charge it created.
    pub charge_id: Option<String>,
    /// The issuer's authorization code.
    pub authorization_code: Option<String>,
    /// When its intent was recorded.
    pub start_time: OffsetDateTime,
    /// When its outcome was recorded.
    pub end_time: Option<OffsetDateTime>,
}

/// The payment's state as clients see it: the saga's, then refunds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The saga's state.
    Saga(PaymentState),
    /// Part of the captured amount was refunded.
    PartiallyRefunded,
    /// All of it was.
    Refunded,
}

/// Everything the orchestrator stores about a payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRecord {
    /// `pay_` + 26 characters.
    pub id: String,
    /// The invoice id.
    pub invoice_id: String,
    /// The invoice's cost center, for bookings of members without their own.
    pub cost_center: Option<String>,
    /// The saga.
    pub saga: Payment,
    /// The group's members at creation.
    pub members: Vec<MemberSnapshot>,
    /// One per saga leg.
    pub legs: Vec<LegDetail>,
    /// Every attempt, in order.
    pub attempts: Vec<Attempt>,
    /// Every refund, oldest first.
    pub refunds: Vec<Refund>,
    /// When the payment was created.
    pub create_time: OffsetDateTime,
    /// When the saga first reached a terminal state.
    pub complete_time: Option<OffsetDateTime>,
    /// The `x-request-id` of the `CreatePayment` call, sent to the vault with every call made
    /// for the payment (beside each call's own operation id), so the caller's id reaches the
    /// vault's audit rows. `None` for payments recorded before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// Who created the payment; `None` for payments recorded before callers were kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creator: Option<Actor>,
    /// Operator notes, oldest first; append-only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<Note>,
    /// When its `payment.delayed` event was written; `None` until then (at most one per
    /// payment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delayed_time: Option<OffsetDateTime>,
    /// The risk assessment made before any step; `None` for payments created before risk was
    /// assessed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub risk: Option<Assessment>,
    /// The review the assessment asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review: Option<Review>,
    /// Why the payment failed, when no card's answer says it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<FailureReason>,
    /// When the saga entered its current state; `None` until it first leaves `PENDING` (the
    /// creation time is then when it entered), and for payments recorded before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_time: Option<OffsetDateTime>,
    /// Operators' resolutions of the payment while it needed one, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resolutions: Vec<Resolution>,
}

/// Why a FAILED payment failed when no card's answer says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureReason {
    /// The risk assessment blocked it.
    RiskBlocked,
    /// A reviewer rejected it.
    ReviewRejected,
    /// Nobody reviewed it in time.
    ReviewExpired,
}

impl FailureReason {
    /// The reason as clients switch on it.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::RiskBlocked => "RISK_BLOCKED",
            FailureReason::ReviewRejected => "REVIEW_REJECTED",
            FailureReason::ReviewExpired => "REVIEW_EXPIRED",
        }
    }
}

/// The decline codes that make a card ineligible until the treasury acts (a `card.ineligible`
/// event): lost, stolen, blocked by its issuer, or expired.
pub fn makes_card_ineligible(decline_code: &str) -> bool {
    matches!(
        decline_code,
        "LOST_CARD" | "STOLEN_CARD" | "BLOCKED" | "EXPIRED_CARD"
    )
}

/// The decline codes after which a card is never sent to its issuer again (the issuer will
/// never approve it, and card networks penalise re-sending it): its member is suspended in the
/// card group until the treasury reactivates it. A blocked or expired card stays a member: an
/// issuer may lift a block, and an expired card reissued through the vault keeps its token.
pub fn suspends_member(decline_code: &str) -> bool {
    matches!(decline_code, "LOST_CARD" | "STOLEN_CARD")
}

/// Most notes a payment keeps: a record (and every event, which carries the payment) stays
/// small however often people write on it.
pub const NOTES_MAX: usize = 100;

/// Most bytes of note text a payment keeps, all notes together.
pub const NOTES_BYTES_MAX: usize = 8 * 1024;

/// An operator note on a payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Note {
    /// The note.
    pub text: String,
    /// Who wrote it.
    pub author: Actor,
    /// When it was recorded.
    pub create_time: OffsetDateTime,
}

impl PaymentRecord {
    /// A new payment in state PENDING, created by `creator`, with its `payment.created` event.
    pub fn new(
        id: String,
        invoice_id: String,
        cost_center: Option<String>,
        saga: Payment,
        members: Vec<MemberSnapshot>,
        creator: Actor,
        now: OffsetDateTime,
    ) -> (PaymentRecord, Event) {
        let legs = vec![LegDetail::default(); saga.legs.len()];
        let record = PaymentRecord {
            id,
            invoice_id,
            cost_center,
            saga,
            members,
            legs,
            attempts: Vec::new(),
            refunds: Vec::new(),
            create_time: now,
            complete_time: None,
            correlation_id: None,
            creator: Some(creator),
            notes: Vec::new(),
            delayed_time: None,
            risk: None,
            review: None,
            failure_reason: None,
            state_time: None,
            resolutions: Vec::new(),
        };
        let event = record.event(EventKind::PaymentCreated, None, None, None);
        (record, event)
    }

    /// Appends a note by `author`, with its `payment.note_added` event; `None` once the
    /// payment holds [`NOTES_MAX`] notes or the note would take its text past
    /// [`NOTES_BYTES_MAX`].
    pub fn add_note(
        &mut self,
        text: String,
        author: Actor,
        now: OffsetDateTime,
    ) -> Option<(usize, Event)> {
        let bytes: usize = self.notes.iter().map(|n| n.text.len()).sum();
        if self.notes.len() >= NOTES_MAX || bytes + text.len() > NOTES_BYTES_MAX {
            return None;
        }
        self.notes.push(Note {
            text,
            author,
            create_time: now,
        });
        let index = self.notes.len() - 1;
        let mut event = self.event(EventKind::NoteAdded, None, None, None);
        event.note = Some(index);
        Some((index, event))
    }

    /// Marks the payment delayed, if it is not terminal and was not marked before: the
    /// `payment.delayed` event to publish.
    pub fn mark_delayed(&mut self, now: OffsetDateTime) -> Option<Event> {
        if self.saga.state.is_terminal() || self.delayed_time.is_some() {
            return None;
        }
        self.delayed_time = Some(now);
        Some(self.event(EventKind::PaymentDelayed, None, None, None))
    }

    /// Whose call caused `event`: a refund's requester for the refund's events, a note's author
    /// for its event, the payment's creator otherwise.
    pub fn actor_of(&self, event: &Event) -> Option<&Actor> {
        if let Some(note) = event.note {
            return self.notes.get(note).map(|n| &n.author);
        }
        if event.kind == EventKind::PaymentReviewed {
            return self.review.as_ref().and_then(|r| r.reviewer.as_ref());
        }
        if event.kind == EventKind::PaymentResolved {
            return self.resolutions.last().map(|r| &r.operator);
        }
        if let Some(refund) = &event.refund {
            return self
                .refunds
                .iter()
                .find(|r| &r.id == refund)
                .and_then(|r| r.requester.as_ref());
        }
        self.creator.as_ref()
    }

    /// The currency of the invoice: of every leg's covered amount and of refunds (a leg of a
    /// card in another currency is charged in the card's: [`PaymentRecord::card_money`]).
    pub fn currency(&self) -> Currency {
        self.saga.currency
    }

    /// `minor_units` in the payment's currency.
    pub fn money(&self, minor_units: i64) -> Money {
        Money::new(self.saga.currency, minor_units)
    }

    /// `minor_units` in the currency of leg `leg`'s card.
    pub fn card_money(&self, leg: usize, minor_units: i64) -> Money {
        let currency = self.saga.member_currency(&self.saga.legs[leg].token);
        Money::new(currency, minor_units)
    }

    /// The member `token` as the payment saw it.
    pub fn member(&self, token: &str) -> Option<&MemberSnapshot> {
        self.members.iter().find(|m| m.token == token)
    }

    /// The state clients see.
    pub fn status(&self) -> Status {
        let refunded = self.refunded();
        if refunded > 0 && refunded == self.captured() {
            Status::Refunded
        } else if refunded > 0 {
            Status::PartiallyRefunded
        } else {
            Status::Saga(self.saga.state)
        }
    }

    /// True when nothing is left to do: the saga is terminal and no refund is pending.
    pub fn is_settled(&self) -> bool {
        self.saga.state.is_terminal()
            && self.refunds.iter().all(|r| r.state != RefundState::Pending)
    }

    /// Minor units held now (authorized, not yet captured or voided).
    pub fn authorized(&self) -> i64 {
        self.saga
            .legs
            .iter()
            .filter(|l| {
                matches!(
                    l.state,
                    LegState::Authorized | LegState::Capturing | LegState::Voiding
                )
            })
            .map(|l| l.approved)
            .sum()
    }

    /// Minor units captured.
    pub fn captured(&self) -> i64 {
        self.saga
            .legs
            .iter()
            .filter(|l| l.state == LegState::Captured)
            .map(|l| l.approved)
            .sum()
    }

    /// What leg `leg`'s card got back, in minor units of the card's currency (succeeded refund
    /// parts).
    pub fn card_refunded(&self, leg: usize) -> i64 {
        self.refunds
            .iter()
            .flat_map(|r| &r.parts)
            .filter(|p| p.leg == leg && p.state == RefundState::Succeeded)
            .map(|p| p.charge.unwrap_or(p.amount))
            .sum()
    }

    /// Minor units refunded (succeeded refund parts).
    pub fn refunded(&self) -> i64 {
        self.legs.iter().map(|l| l.refunded).sum()
    }

    /// The invoice amount not captured.
    pub fn remaining(&self) -> i64 {
        self.saga.amount - self.captured()
    }
}
