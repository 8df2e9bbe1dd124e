//! A payment as the orchestrator keeps it: the saga's state plus what people and clients need
//! (members' labels, every attempt, charge ids, refunds), and the pure steps that change it.
//!
//! The workflow loads a record, asks it for the vault operations to run ([`PaymentRecord::
//! next_steps`]: the intents), commits, calls the vault, and records each answer
//! ([`PaymentRecord::record_authorization`], [`PaymentRecord::record_capture`], ...), which
//! returns the events to publish, the ledger outcome to book and the spend to adjust, all
//! committed together. Nothing here does IO.
//!
//! Vault request ids are deterministic per payment, leg, attempt and operation
//! (`<payment>/leg/<n>/attempt/<k>/authorize`, `<payment>/leg/<n>/capture`,
//! `<payment>/leg/<n>/void`, `<payment>/refund/<refund>/leg/<n>`), so re-sending an operation
//! after a crash is the vault's replay of the same request, never a second charge.

use serde::{Deserialize, Serialize};
use tandem_money::{Currency, Money};
use time::OffsetDateTime;

use super::allocation::split;
use super::saga::{self, Command, LegState, NextAction, Outcome, Payment, PaymentState, SagaError};

/// Most refunds per payment.
pub const REFUNDS_MAX: usize = 100;

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
    /// The card's last four digits, as the vault reported them.
    pub last4: Option<String>,
    /// The leg whose declined amount this leg took over (fallback).
    pub replaced: Option<usize>,
    /// Minor units refunded to the card.
    pub refunded: i64,
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

/// The lifecycle of a refund and of each of its parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefundState {
    /// Not done yet; retried until it is.
    Pending,
    /// Done. Final.
    Succeeded,
    /// Refused by the processor. Final.
    Failed,
}

/// One leg's share of a refund.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundPart {
    /// The leg refunded.
    pub leg: usize,
    /// Minor units.
    pub amount: i64,
    /// The vault refund.
    pub charge_refund_id: Option<String>,
    /// State.
    pub state: RefundState,
}

/// One refund of a payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refund {
    /// `prf_` + 26 characters.
    pub id: String,
    /// The request that created it.
    pub request_id: String,
    /// Minor units of the invoice's currency.
    pub amount: i64,
    /// Why.
    pub reason: String,
    /// State.
    pub state: RefundState,
    /// The legs it is spread over.
    pub parts: Vec<RefundPart>,
    /// When it was recorded.
    pub create_time: OffsetDateTime,
    /// When it finished.
    pub complete_time: Option<OffsetDateTime>,
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
    /// `card.ineligible`: a leg's card was declined as lost or stolen; its member is suspended.
    CardIneligible,
}

/// The decline codes after which a card is never sent to its issuer again (the issuer will
/// never approve it, and card networks penalise re-sending it): its member is suspended in the
/// card group until the treasury reactivates it.
pub fn makes_card_ineligible(decline_code: &str) -> bool {
    matches!(decline_code, "LOST_CARD" | "STOLEN_CARD")
}

/// A member to suspend in its card group, learned from a decline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suspension {
    /// The member's token.
    pub token: String,
    /// The decline code's name without prefix (`LOST_CARD`).
    pub decline_code: String,
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
    /// One line for people; the payment's summary for terminal events.
    pub summary: String,
}

/// A change of a member's month-to-date spend, committed with the step that causes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpendChange {
    /// The card.
    pub token: String,
    /// Minor units: positive holds, negative releases.
    pub delta: i64,
    /// For a positive change, the monthly limit it must stay within.
    pub limit: Option<i64>,
}

/// The vault's answer to an authorization, in domain terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthorizeAnswer {
    /// Approved for `approved` (at most what was asked).
    Approved {
        /// The charge.
        charge_id: String,
        /// Minor units approved.
        approved: i64,
        /// The issuer's code.
        authorization_code: String,
        /// The card's last four digits.
        last4: String,
    },
    /// Declined.
    Declined {
        /// The charge.
        charge_id: String,
        /// The card's last four digits.
        last4: String,
        /// The decline code's name without prefix.
        decline_code: String,
        /// The advice.
        next_action: NextAction,
    },
    /// Refused before the processor; treated as a decline with `TRY_NEXT_CARD`.
    Refused {
        /// The reason (`TOKEN_REVOKED`, `MEMBER_LIMIT_REACHED`, ...).
        reason: String,
    },
}

impl AuthorizeAnswer {
    /// The answer as the payment takes it `age` after its creation: a transient decline
    /// (`RETRY_SAME_CARD`) once the payment's retry window is over moves the amount on as
    /// `TRY_NEXT_CARD` does, so a card that keeps failing cannot hold the payment forever.
    pub fn within_retry_window(self, age: time::Duration, window: time::Duration) -> Self {
        match self {
            AuthorizeAnswer::Declined {
                charge_id,
                last4,
                decline_code,
                next_action: NextAction::RetrySameCard,
            } if age > window => AuthorizeAnswer::Declined {
                charge_id,
                last4,
                decline_code,
                next_action: NextAction::TryNextCard,
            },
            other => other,
        }
    }

    /// True for a transient decline whose advice is to try the same card again.
    pub fn retries_same_card(&self) -> bool {
        matches!(
            self,
            AuthorizeAnswer::Declined {
                next_action: NextAction::RetrySameCard,
                ..
            }
        )
    }
}

/// What recording an answer gives: the saga outcome to book, the events to publish, the
/// spend to adjust.
pub type Recorded = (Outcome, Vec<Event>, Vec<SpendChange>);

/// A vault operation to run, with its deterministic request id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// What to run.
    pub command: Command,
    /// The vault `request_id`.
    pub request_id: String,
    /// The card.
    pub token: String,
    /// Minor units: asked (authorize) or approved (capture); 0 for a void.
    pub amount: i64,
    /// The charge, for capture and void.
    pub charge_id: Option<String>,
    /// The attempt number, for an authorization: its answer is recorded only against it.
    pub attempt: Option<u32>,
    /// True when the intent was recorded in this call (a new operation), false when it is
    /// in flight from before (a re-send after a crash or a lost answer).
    pub new: bool,
}

/// A refund part to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundStep {
    /// The refund.
    pub refund: String,
    /// The leg.
    pub leg: usize,
    /// The vault request id.
    pub request_id: String,
    /// The leg's charge.
    pub charge_id: String,
    /// Minor units.
    pub amount: i64,
}

/// Why a refund cannot be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RefundError {
    /// The payment captured nothing, or is not finished.
    #[error("the payment is not refundable")]
    NotRefundable,
    /// More than what remains refundable.
    #[error("the amount exceeds what remains refundable")]
    AmountExceedsRefundable,
    /// [`REFUNDS_MAX`] refunds already.
    #[error("the payment has the maximum number of refunds")]
    LimitReached,
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
}

impl PaymentRecord {
    /// A new payment in state PENDING, with its `payment.created` event.
    pub fn new(
        id: String,
        invoice_id: String,
        cost_center: Option<String>,
        saga: Payment,
        members: Vec<MemberSnapshot>,
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
        };
        let event = record.event(EventKind::PaymentCreated, None, None, None);
        (record, event)
    }

    /// The currency of the invoice and of every leg.
    pub fn currency(&self) -> Currency {
        self.saga.currency
    }

    /// `minor_units` in the payment's currency.
    pub fn money(&self, minor_units: i64) -> Money {
        Money::new(self.saga.currency, minor_units)
    }

    /// The member of `token`.
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

    /// Minor units refunded (succeeded refund parts).
    pub fn refunded(&self) -> i64 {
        self.legs.iter().map(|l| l.refunded).sum()
    }

    /// The invoice amount not captured.
    pub fn remaining(&self) -> i64 {
        self.saga.amount - self.captured()
    }

    /// The vault request id of an authorization attempt.
    pub fn authorize_request_id(&self, leg: usize, attempt: u32) -> String {
        format!("{}/leg/{}/attempt/{attempt}/authorize", self.id, leg + 1)
    }

    fn leg_request_id(&self, leg: usize, operation: &str) -> String {
        format!("{}/leg/{}/{operation}", self.id, leg + 1)
    }

    /// The vault operations to run now: those in flight from before (re-sent with the same
    /// request ids), then the new ones the saga decides, whose intents (attempts) this records.
    /// Returns the events of any state change.
    pub fn next_steps(
        &mut self,
        now: OffsetDateTime,
    ) -> Result<(Vec<Step>, Vec<Event>), SagaError> {
        let before = self.saga.state;
        let mut steps: Vec<Step> = (0..self.saga.legs.len())
            .filter_map(|leg| self.in_flight(leg))
            .collect();
        let commands = saga::decide(&mut self.saga)?;
        for command in commands {
            if let Command::Authorize(leg) = command {
                let number = u32::try_from(self.attempts.len()).unwrap_or(u32::MAX) + 1;
                self.attempts.push(Attempt {
                    number,
                    leg,
                    requested: self.saga.legs[leg].amount,
                    approved: 0,
                    outcome: AttemptOutcome::Pending,
                    decline_code: None,
                    next_action: None,
                    error_reason: None,
                    charge_id: None,
                    authorization_code: None,
                    start_time: now,
                    end_time: None,
                });
            }
            let leg = match command {
                Command::Authorize(leg) | Command::Capture(leg) | Command::Void(leg) => leg,
            };
            if let Some(mut step) = self.in_flight(leg) {
                step.new = true;
                steps.push(step);
            }
        }
        let mut events = Vec::new();
        self.state_events(before, now, &mut events);
        Ok((steps, events))
    }

    /// The operation in flight on `leg`, if any.
    fn in_flight(&self, leg: usize) -> Option<Step> {
        let saga_leg = &self.saga.legs[leg];
        let detail = &self.legs[leg];
        let (command, request_id, amount, attempt) = match saga_leg.state {
            LegState::Authorizing => {
                let attempt = self.pending_attempt(leg)?;
                (
                    Command::Authorize(leg),
                    self.authorize_request_id(leg, attempt.number),
                    attempt.requested,
                    Some(attempt.number),
                )
            }
            LegState::Capturing => (
                Command::Capture(leg),
                self.leg_request_id(leg, "capture"),
                saga_leg.approved,
                None,
            ),
            LegState::Voiding => (
                Command::Void(leg),
                self.leg_request_id(leg, "void"),
                0,
                None,
            ),
            _ => return None,
        };
        Some(Step {
            command,
            request_id,
            token: saga_leg.token.clone(),
            amount,
            charge_id: detail.charge_id.clone(),
            attempt,
            new: false,
        })
    }

    fn pending_attempt(&self, leg: usize) -> Option<&Attempt> {
        self.attempts
            .iter()
            .rev()
            .find(|a| a.leg == leg && a.outcome == AttemptOutcome::Pending)
    }

    /// Records the answer to `leg`'s pending authorization (attempt `attempt`, or whichever is
    /// pending when `None`): the attempt, the saga outcome (with any fallback legs), events and
    /// the spend to release. Returns `None` if the leg was not waiting for this answer (a
    /// duplicate, or the answer of an earlier attempt).
    pub fn record_authorization(
        &mut self,
        leg: usize,
        attempt: Option<u32>,
        answer: AuthorizeAnswer,
        now: OffsetDateTime,
    ) -> Result<Option<Recorded>, SagaError> {
        if self.saga.legs.get(leg).map(|l| l.state) != Some(LegState::Authorizing) {
            return Ok(None);
        }
        let Some(index) = self
            .attempts
            .iter()
            .rposition(|a| a.leg == leg && a.outcome == AttemptOutcome::Pending)
        else {
            return Ok(None);
        };
        if attempt.is_some_and(|number| number != self.attempts[index].number) {
            return Ok(None);
        }
        let before = self.saga.state;
        let legs_before = self.saga.legs.len();
        let requested = self.attempts[index].requested;
        let token = self.saga.legs[leg].token.clone();
        let attempt = &mut self.attempts[index];
        attempt.end_time = Some(now);
        let number = attempt.number;
        let (outcome, kind, released) = match answer {
            AuthorizeAnswer::Approved {
                charge_id,
                approved,
                authorization_code,
                last4,
            } => {
                let approved = approved.clamp(1, requested);
                attempt.approved = approved;
                attempt.outcome = if approved < requested {
                    AttemptOutcome::PartiallyApproved
                } else {
                    AttemptOutcome::Approved
                };
                attempt.charge_id = Some(charge_id.clone());
                attempt.authorization_code = Some(authorization_code.clone());
                let detail = &mut self.legs[leg];
                detail.charge_id = Some(charge_id);
                detail.authorization_code = Some(authorization_code);
                detail.last4 = Some(last4);
                (
                    Outcome::Authorized { leg, approved },
                    EventKind::LegAuthorized,
                    requested - approved,
                )
            }
            AuthorizeAnswer::Declined {
                charge_id,
                last4,
                decline_code,
                next_action,
            } => {
                attempt.outcome = AttemptOutcome::Declined;
                attempt.decline_code = Some(decline_code);
                attempt.next_action = Some(next_action);
                attempt.charge_id = Some(charge_id);
                self.legs[leg].last4 = Some(last4);
                (
                    Outcome::Declined { leg, next_action },
                    EventKind::LegDeclined,
                    requested,
                )
            }
            AuthorizeAnswer::Refused { reason } => {
                attempt.outcome = AttemptOutcome::Error;
                attempt.error_reason = Some(reason);
                (
                    Outcome::Declined {
                        leg,
                        next_action: NextAction::TryNextCard,
                    },
                    EventKind::LegDeclined,
                    requested,
                )
            }
        };
        saga::apply(&mut self.saga, outcome)?;
        self.legs.resize(self.saga.legs.len(), LegDetail::default());
        let mut events = vec![self.event(kind, Some(leg), Some(number), None)];
        if self.attempts[index]
            .decline_code
            .as_deref()
            .is_some_and(makes_card_ineligible)
        {
            events.push(self.event(EventKind::CardIneligible, Some(leg), Some(number), None));
        }
        if self.saga.legs.len() > legs_before {
            for new_leg in legs_before..self.saga.legs.len() {
                self.legs[new_leg].replaced = Some(leg);
            }
            events.push(self.event(EventKind::LegReallocated, Some(leg), None, None));
        }
        self.state_events(before, now, &mut events);
        let spend = if released > 0 {
            vec![SpendChange {
                token,
                delta: -released,
                limit: None,
            }]
        } else {
            Vec::new()
        };
        Ok(Some((outcome, events, spend)))
    }

    /// The member a `card.ineligible` event asks to suspend; `None` for any other event.
    pub fn suspension(&self, event: &Event) -> Option<Suspension> {
        if event.kind != EventKind::CardIneligible {
            return None;
        }
        let attempt = self.attempts.get(event.attempt? as usize - 1)?;
        Some(Suspension {
            token: self.saga.legs.get(attempt.leg)?.token.clone(),
            decline_code: attempt.decline_code.clone()?,
        })
    }

    /// True if `token`'s spend is counted: its member has a monthly limit. Cards without one
    /// are not counted, so their spend rows (hot when every payment uses the same cards) are
    /// never locked.
    pub fn tracks_spend(&self, token: &str) -> bool {
        self.member(token)
            .is_some_and(|m| m.limit_per_month.is_some())
    }

    /// The spend an authorization intent holds: the amount asked, within the member's monthly
    /// limit.
    pub fn reservation(&self, step: &Step) -> SpendChange {
        SpendChange {
            token: step.token.clone(),
            delta: step.amount,
            limit: self.member(&step.token).and_then(|m| m.limit_per_month),
        }
    }

    /// Records a confirmed capture or void of `leg`. Returns the saga outcome to book, `None`
    /// for a duplicate.
    pub fn record_settlement(
        &mut self,
        command: Command,
        now: OffsetDateTime,
    ) -> Result<Option<Recorded>, SagaError> {
        let (leg, waiting, outcome, kind) = match command {
            Command::Capture(leg) => (
                leg,
                LegState::Capturing,
                Outcome::Captured { leg },
                EventKind::LegCaptured,
            ),
            Command::Void(leg) => (
                leg,
                LegState::Voiding,
                Outcome::Voided { leg },
                EventKind::LegVoided,
            ),
            Command::Authorize(_) => return Ok(None),
        };
        if self.saga.legs.get(leg).map(|l| l.state) != Some(waiting) {
            return Ok(None);
        }
        let before = self.saga.state;
        saga::apply(&mut self.saga, outcome)?;
        let mut events = vec![self.event(kind, Some(leg), None, None)];
        self.state_events(before, now, &mut events);
        let spend = match command {
            Command::Void(_) => vec![SpendChange {
                token: self.saga.legs[leg].token.clone(),
                delta: -self.saga.legs[leg].approved,
                limit: None,
            }],
            _ => Vec::new(),
        };
        Ok(Some((outcome, events, spend)))
    }

    /// Plans a refund of `amount` (all that remains refundable when `None`), spread over the
    /// captured legs in proportion to what each has captured and not yet refunded or put in a
    /// pending refund (largest remainder, ties by member priority). Records it PENDING.
    pub fn plan_refund(
        &mut self,
        id: String,
        request_id: String,
        amount: Option<i64>,
        reason: String,
        now: OffsetDateTime,
    ) -> Result<(Refund, Vec<Event>), RefundError> {
        if !matches!(
            self.saga.state,
            PaymentState::Succeeded | PaymentState::PartiallyPaid
        ) {
            return Err(RefundError::NotRefundable);
        }
        if self.refunds.len() >= REFUNDS_MAX {
            return Err(RefundError::LimitReached);
        }
        let mut open: Vec<(usize, i64)> = self
            .saga
            .legs
            .iter()
            .enumerate()
            .filter(|(_, l)| l.state == LegState::Captured)
            .map(|(i, l)| {
                (
                    i,
                    l.approved - self.legs[i].refunded - self.pending_refund(i),
                )
            })
            .filter(|(_, open)| *open > 0)
            .collect();
        let refundable: i64 = open.iter().map(|(_, o)| o).sum();
        if refundable == 0 {
            return Err(RefundError::NotRefundable);
        }
        let amount = amount.unwrap_or(refundable);
        if amount > refundable {
            return Err(RefundError::AmountExceedsRefundable);
        }
        open.sort_by_key(|(leg, _)| {
            let token = &self.saga.legs[*leg].token;
            (self.member(token).map_or(u16::MAX, |m| m.priority), *leg)
        });
        let shares: Vec<(usize, u64)> = open
            .iter()
            .map(|(leg, o)| (*leg, u64::try_from(*o).unwrap_or(0)))
            .collect();
        let mut parts: Vec<RefundPart> = split(amount, &shares)
            .into_iter()
            .filter(|(_, part)| *part > 0)
            .map(|(leg, part)| RefundPart {
                leg,
                amount: part,
                charge_refund_id: None,
                state: RefundState::Pending,
            })
            .collect();
        parts.sort_by_key(|p| p.leg);
        let refund = Refund {
            id,
            request_id,
            amount,
            reason,
            state: RefundState::Pending,
            parts,
            create_time: now,
            complete_time: None,
        };
        self.refunds.push(refund.clone());
        let event = self.event(EventKind::RefundCreated, None, None, Some(&refund.id));
        Ok((refund, vec![event]))
    }

    fn pending_refund(&self, leg: usize) -> i64 {
        self.refunds
            .iter()
            .flat_map(|r| &r.parts)
            .filter(|p| p.leg == leg && p.state == RefundState::Pending)
            .map(|p| p.amount)
            .sum()
    }

    /// The refund parts still to send, with their request ids.
    pub fn refund_steps(&self) -> Vec<RefundStep> {
        self.refunds
            .iter()
            .flat_map(|refund| {
                refund
                    .parts
                    .iter()
                    .filter(|p| p.state == RefundState::Pending)
                    .map(move |p| RefundStep {
                        refund: refund.id.clone(),
                        leg: p.leg,
                        request_id: format!("{}/refund/{}/leg/{}", self.id, refund.id, p.leg + 1),
                        charge_id: self.legs[p.leg].charge_id.clone().unwrap_or_default(),
                        amount: p.amount,
                    })
            })
            .collect()
    }

    /// Records the vault's final answer for a refund part. Returns true when it was pending
    /// (false for a duplicate), with events and spend released.
    pub fn record_refund(
        &mut self,
        step: &RefundStep,
        succeeded: bool,
        charge_refund_id: Option<String>,
        now: OffsetDateTime,
    ) -> Option<(Vec<Event>, Vec<SpendChange>)> {
        let status_before = self.status();
        let refund_index = self.refunds.iter().position(|r| r.id == step.refund)?;
        let part = self.refunds[refund_index]
            .parts
            .iter_mut()
            .find(|p| p.leg == step.leg && p.state == RefundState::Pending)?;
        part.state = if succeeded {
            RefundState::Succeeded
        } else {
            RefundState::Failed
        };
        part.charge_refund_id = charge_refund_id;
        let mut events = Vec::new();
        let mut spend = Vec::new();
        if succeeded {
            self.legs[step.leg].refunded += step.amount;
            spend.push(SpendChange {
                token: self.saga.legs[step.leg].token.clone(),
                delta: -step.amount,
                limit: None,
            });
            events.push(self.event(
                EventKind::LegRefunded,
                Some(step.leg),
                None,
                Some(&step.refund),
            ));
        }
        let refund = &mut self.refunds[refund_index];
        if refund.parts.iter().all(|p| p.state != RefundState::Pending) {
            let failed = refund.parts.iter().any(|p| p.state == RefundState::Failed);
            refund.state = if failed {
                RefundState::Failed
            } else {
                RefundState::Succeeded
            };
            refund.complete_time = Some(now);
            let kind = if failed {
                EventKind::RefundFailed
            } else {
                EventKind::RefundSucceeded
            };
            let id = refund.id.clone();
            events.push(self.event(kind, None, None, Some(&id)));
        }
        let status = self.status();
        if status != status_before {
            let kind = match status {
                Status::Refunded => Some(EventKind::PaymentRefunded),
                Status::PartiallyRefunded => Some(EventKind::PaymentPartiallyRefunded),
                Status::Saga(_) => None,
            };
            if let Some(kind) = kind {
                events.push(self.event(kind, None, None, Some(&step.refund)));
            }
        }
        Some((events, spend))
    }

    fn state_events(&mut self, before: PaymentState, now: OffsetDateTime, events: &mut Vec<Event>) {
        let after = self.saga.state;
        if after == before {
            return;
        }
        if after.is_terminal() && self.complete_time.is_none() {
            self.complete_time = Some(now);
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
        for state in path.iter().copied() {
            let kind = match state {
                PaymentState::Pending => continue,
                PaymentState::Authorizing => EventKind::PaymentAuthorizing,
                PaymentState::Capturing => EventKind::PaymentCapturing,
                PaymentState::Succeeded => EventKind::PaymentSucceeded,
                PaymentState::PartiallyPaid => EventKind::PaymentPartiallyPaid,
                PaymentState::Reversing => EventKind::PaymentReversing,
                PaymentState::Failed => EventKind::PaymentFailed,
            };
            events.push(self.event(kind, None, None, None));
        }
    }

    fn event(
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
                    format!(
                        "{} declined as {}: suspended in its card group, not to be charged again",
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
                    format!(
                        "{} {verb} {}",
                        self.card(l),
                        self.money(self.saga.legs[l].approved)
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
                    Some(format!(
                        "{} refunded {}",
                        self.card(l),
                        self.money(part.amount)
                    ))
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
            _ => self.summary(),
        };
        Event {
            kind,
            leg,
            attempt,
            refund: refund.map(str::to_owned),
            summary,
        }
    }

    /// "card A ·4242" (the last four digits once known).
    fn card(&self, leg: usize) -> String {
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

    fn attempt_line(&self, attempt: &Attempt) -> String {
        let card = self.card(attempt.leg);
        match attempt.outcome {
            AttemptOutcome::Approved => {
                format!("{card} approved {}", self.money(attempt.approved))
            }
            AttemptOutcome::PartiallyApproved => format!(
                "{card} approved {} of {}",
                self.money(attempt.approved),
                self.money(attempt.requested)
            ),
            AttemptOutcome::Declined | AttemptOutcome::Error => format!(
                "{card} declined {} ({})",
                self.money(attempt.requested),
                reason_text(attempt)
            ),
            AttemptOutcome::Pending => format!("{card} asked {}", self.money(attempt.requested)),
        }
    }

    fn reallocation_line(&self, from: usize) -> String {
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
                matches!(
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
        // One entry per card, its legs added up (a card may carry a fallback leg too).
        let mut per_card: Vec<(usize, i64)> = Vec::new();
        for &i in &covering {
            let token = &self.saga.legs[i].token;
            match per_card
                .iter_mut()
                .find(|(first, _)| self.saga.legs[*first].token == *token)
            {
                Some((_, total)) => *total += self.saga.legs[i].approved,
                None => per_card.push((i, self.saga.legs[i].approved)),
            }
        }
        let parts = per_card
            .iter()
            .map(|&(i, total)| format!("{} {}", self.card(i), self.money(total).decimal()))
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
                let why = if declines.is_empty() {
                    "no card had room for it".to_owned()
                } else {
                    declines
                };
                format!(
                    "Invoice {} not paid ({amount}): {why}; no financial effect",
                    self.invoice_id
                )
            }
            PaymentState::Reversing => format!(
                "Invoice {} not covered ({amount}): releasing holds on {parts}",
                self.invoice_id
            ),
            PaymentState::Pending | PaymentState::Authorizing | PaymentState::Capturing => {
                let state = match self.saga.state {
                    PaymentState::Pending => "pending",
                    PaymentState::Authorizing => "authorizing",
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

    fn label(&self, leg: usize) -> &str {
        let token = &self.saga.legs[leg].token;
        self.member(token)
            .map_or(token.as_str(), |m| m.label.as_str())
    }
}

/// "insufficient funds", "token revoked": a decline code or refusal reason for people.
fn reason_text(attempt: &Attempt) -> String {
    attempt
        .decline_code
        .as_deref()
        .or(attempt.error_reason.as_deref())
        .unwrap_or("declined")
        .to_lowercase()
        .replace('_', " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::allocation::Member;
    use crate::domain::saga::{Completion, Dispatch, Leg};

    fn usd() -> Currency {
        Currency::parse("USD").unwrap()
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH
    }

    fn record(legs: &[(&str, i64)], members: &[(&str, &str, &str)]) -> PaymentRecord {
        let saga = Payment {
            state: PaymentState::Pending,
            currency: usd(),
            amount: legs.iter().map(|(_, a)| a).sum(),
            legs: legs
                .iter()
                .map(|(t, a)| Leg {
                    token: (*t).to_owned(),
                    amount: *a,
                    approved: 0,
                    state: LegState::Pending,
                    attempts: 0,
                })
                .collect(),
            members: members
                .iter()
                .enumerate()
                .map(|(i, (t, _, _))| Member {
                    token: (*t).to_owned(),
                    priority: i as u16 + 1,
                    currency: usd(),
                    active: true,
                    room: None,
                })
                .collect(),
            fallback: true,
            attempts_max: 10,
            completion: Completion::AllOrNothing,
            dispatch: Dispatch::OneAtATime,
            stopped: false,
        };
        let members = members
            .iter()
            .enumerate()
            .map(|(i, (t, label, last4))| MemberSnapshot {
                token: (*t).to_owned(),
                label: (*label).to_owned(),
                priority: i as u16 + 1,
                cost_center: None,
                limit_per_month: None,
                last4: (*last4).to_owned(),
            })
            .collect();
        PaymentRecord::new("pay_x".into(), "12345".into(), None, saga, members, now()).0
    }

    fn approve(record: &mut PaymentRecord, leg: usize, approved: i64, last4: &str) {
        record
            .record_authorization(
                leg,
                None,
                AuthorizeAnswer::Approved {
                    charge_id: format!("ch_{leg}"),
                    approved,
                    authorization_code: format!("A{leg}"),
                    last4: last4.into(),
                },
                now(),
            )
            .unwrap()
            .unwrap();
    }

    /// Drives every step to the end, approving legs by `answer` and confirming captures and
    /// voids.
    fn run(record: &mut PaymentRecord, mut answer: impl FnMut(&Step) -> AuthorizeAnswer) {
        for _ in 0..50 {
            let (steps, _) = record.next_steps(now()).unwrap();
            if steps.is_empty() {
                return;
            }
            for step in steps {
                match step.command {
                    Command::Authorize(leg) => {
                        let reply = answer(&step);
                        record
                            .record_authorization(leg, None, reply, now())
                            .unwrap();
                    }
                    command => {
                        record.record_settlement(command, now()).unwrap().unwrap();
                    }
                }
            }
        }
        panic!("the payment did not finish");
    }

    /// Invoice 12345 of DESIGN section 8: the summary names each card, its last four digits and
    /// its part, and the replacement after a decline.
    #[test]
    fn summary_names_each_card_and_the_replacement() {
        let mut record = record(
            &[("tok_a", 700), ("tok_d", 1300), ("tok_c", 50)],
            &[
                ("tok_a", "card A", "4242"),
                ("tok_d", "card D", "0341"),
                ("tok_c", "card C", "0005"),
                ("tok_b", "card B", "1881"),
            ],
        );
        run(&mut record, |step| {
            if step.token == "tok_d" {
                AuthorizeAnswer::Declined {
                    charge_id: "ch_d".into(),
                    last4: "0341".into(),
                    decline_code: "INSUFFICIENT_FUNDS".into(),
                    next_action: NextAction::TryNextCard,
                }
            } else {
                AuthorizeAnswer::Approved {
                    charge_id: format!("ch_{}", step.token),
                    approved: step.amount,
                    authorization_code: "A1".into(),
                    last4: match step.token.as_str() {
                        "tok_a" => "4242",
                        "tok_b" => "1881",
                        _ => "0005",
                    }
                    .into(),
                }
            }
        });
        assert_eq!(record.saga.state, PaymentState::Succeeded);
        assert_eq!(
            record.summary(),
            "Invoice 12345 paid 20.50 USD: card A ·4242 7.00, card C ·0005 0.50, \
             card B ·1881 13.00 (card B replaced card D after insufficient funds)"
        );
        assert_eq!(record.captured(), 2050);
        assert_eq!(record.attempts.len(), 4);
        assert_eq!(
            record.attempts[1].decline_code.as_deref(),
            Some("INSUFFICIENT_FUNDS")
        );
    }

    /// A card that takes over a declined card's amount on a second leg appears once in the
    /// summary, with its legs added up.
    #[test]
    fn summary_adds_up_a_cards_legs() {
        let mut record = record(
            &[("tok_a", 500), ("tok_d", 500)],
            &[("tok_a", "card A", "4242"), ("tok_d", "card D", "0341")],
        );
        run(&mut record, |step| {
            if step.token == "tok_d" {
                AuthorizeAnswer::Declined {
                    charge_id: "ch_d".into(),
                    last4: "0341".into(),
                    decline_code: "INSUFFICIENT_FUNDS".into(),
                    next_action: NextAction::TryNextCard,
                }
            } else {
                AuthorizeAnswer::Approved {
                    charge_id: format!("ch_{}", step.amount),
                    approved: step.amount,
                    authorization_code: "A1".into(),
                    last4: "4242".into(),
                }
            }
        });
        assert_eq!(record.saga.legs.len(), 3);
        assert_eq!(
            record.summary(),
            "Invoice 12345 paid 10.00 USD: card A ·4242 10.00 \
             (card A replaced card D after insufficient funds)"
        );
    }

    /// Request ids are deterministic per payment, leg, attempt and operation, and an operation
    /// in flight is offered again with the same id (a re-send, not a new operation).
    #[test]
    fn steps_in_flight_are_resent_with_the_same_request_id() {
        let mut record = record(&[("tok_a", 500)], &[("tok_a", "card A", "4242")]);
        let (first, events) = record.next_steps(now()).unwrap();
        assert_eq!(first.len(), 1);
        assert!(first[0].new);
        assert_eq!(first[0].request_id, "pay_x/leg/1/attempt/1/authorize");
        assert!(
            events
                .iter()
                .any(|e| e.kind == EventKind::PaymentAuthorizing)
        );
        let (again, _) = record.next_steps(now()).unwrap();
        assert_eq!(again.len(), 1);
        assert!(!again[0].new);
        assert_eq!(again[0].request_id, first[0].request_id);
        assert_eq!(again[0].attempt, Some(1));
        // The answer of another attempt than the pending one is not this attempt's.
        let stale = AuthorizeAnswer::Refused { reason: "X".into() };
        assert!(
            record
                .record_authorization(0, Some(7), stale, now())
                .unwrap()
                .is_none()
        );
        approve(&mut record, 0, 500, "4242");
        let (capture, _) = record.next_steps(now()).unwrap();
        assert_eq!(capture[0].request_id, "pay_x/leg/1/capture");
        assert_eq!(capture[0].charge_id.as_deref(), Some("ch_0"));
        // A duplicate answer changes nothing.
        assert!(
            record
                .record_authorization(
                    0,
                    Some(1),
                    AuthorizeAnswer::Refused { reason: "X".into() },
                    now()
                )
                .unwrap()
                .is_none()
        );
    }

    /// Under ALL_OR_NOTHING a shortfall voids the holds; the summary says no financial effect
    /// and the voids release the spend they held.
    #[test]
    fn a_shortfall_voids_and_says_so() {
        let mut record = record(
            &[("tok_a", 500), ("tok_b", 500)],
            &[("tok_a", "card A", "4242"), ("tok_b", "card B", "1881")],
        );
        record.saga.fallback = false;
        let mut released = 0;
        for _ in 0..10 {
            let (steps, _) = record.next_steps(now()).unwrap();
            if steps.is_empty() {
                break;
            }
            for step in steps {
                let result = match step.command {
                    Command::Authorize(leg) => {
                        let answer = if step.token == "tok_a" {
                            AuthorizeAnswer::Approved {
                                charge_id: "ch_a".into(),
                                approved: step.amount,
                                authorization_code: "A".into(),
                                last4: "4242".into(),
                            }
                        } else {
                            AuthorizeAnswer::Declined {
                                charge_id: "ch_b".into(),
                                last4: "1881".into(),
                                decline_code: "BLOCKED".into(),
                                next_action: NextAction::TryNextCard,
                            }
                        };
                        record
                            .record_authorization(leg, None, answer, now())
                            .unwrap()
                    }
                    command => record.record_settlement(command, now()).unwrap(),
                };
                let (_, _, spend) = result.unwrap();
                released -= spend.iter().map(|s| s.delta).sum::<i64>();
            }
        }
        assert_eq!(record.saga.state, PaymentState::Failed);
        assert_eq!(
            released, 1000,
            "the decline and the void release every hold"
        );
        assert_eq!(
            record.summary(),
            "Invoice 12345 not paid (10.00 USD): card B ·1881 declined 5.00 USD (blocked); \
             no financial effect"
        );
    }

    /// Refunds are spread in proportion to what each leg captured, sum exactly, cannot exceed
    /// what is refundable, and move the status to PARTIALLY_REFUNDED then REFUNDED.
    #[test]
    fn refunds_spread_over_captured_legs() {
        let mut record = record(
            &[("tok_a", 700), ("tok_b", 1300), ("tok_c", 50)],
            &[
                ("tok_a", "card A", "4242"),
                ("tok_b", "card B", "1881"),
                ("tok_c", "card C", "0005"),
            ],
        );
        run(&mut record, |step| AuthorizeAnswer::Approved {
            charge_id: format!("ch_{}", step.token),
            approved: step.amount,
            authorization_code: "A".into(),
            last4: "0000".into(),
        });
        assert_eq!(record.saga.state, PaymentState::Succeeded);
        let (refund, _) = record
            .plan_refund(
                "prf_1".into(),
                "r1".into(),
                Some(1001),
                String::new(),
                now(),
            )
            .unwrap();
        let parts: Vec<(usize, i64)> = refund.parts.iter().map(|p| (p.leg, p.amount)).collect();
        assert_eq!(parts.iter().map(|(_, a)| a).sum::<i64>(), 1001);
        assert_eq!(parts, vec![(0, 342), (1, 635), (2, 24)]);
        assert_eq!(
            record.plan_refund(
                "prf_2".into(),
                "r2".into(),
                Some(1050),
                String::new(),
                now()
            ),
            Err(RefundError::AmountExceedsRefundable)
        );
        for step in record.refund_steps() {
            record
                .record_refund(&step, true, Some("rf".into()), now())
                .unwrap();
        }
        assert_eq!(record.status(), Status::PartiallyRefunded);
        record
            .plan_refund("prf_2".into(), "r2".into(), None, String::new(), now())
            .unwrap();
        for step in record.refund_steps() {
            record
                .record_refund(&step, true, Some("rf".into()), now())
                .unwrap();
        }
        assert_eq!(record.status(), Status::Refunded);
        assert_eq!(record.refunded(), 2050);
        assert!(record.is_settled());
    }
}
