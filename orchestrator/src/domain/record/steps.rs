//! A payment's authorizations, captures and voids: the vault operations to run (intents, with
//! their deterministic request ids) and the recording of each answer.

use tandem_money::Currency;
use time::OffsetDateTime;

use super::events::{Event, EventKind};
use super::{
    Attempt, AttemptOutcome, LegDetail, PaymentRecord, makes_card_ineligible, suspends_member,
};
use crate::domain::saga::{
    self, Command, LegState, NextAction, Outcome, PaymentState, SagaError, Verdict,
};

/// A member to suspend in its card group, learned from a decline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suspension {
    /// The member's token.
    pub token: String,
    /// The decline code's name without prefix (`LOST_CARD`).
    pub decline_code: String,
}

/// A change of a member's month-to-date spend, committed with the step that causes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpendChange {
    /// The card.
    pub token: String,
    /// The card's currency, that of `delta` and `limit`.
    pub currency: Currency,
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
        /// The processor's reference of the authorization (empty if the vault gave none).
        processor_reference: String,
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
    /// The card's currency, that of `amount`.
    pub currency: Currency,
    /// Minor units of the card's currency: asked (authorize) or to capture; 0 for a void.
    pub amount: i64,
    /// The charge, for capture and void.
    pub charge_id: Option<String>,
    /// The attempt number, for an authorization: its answer is recorded only against it.
    pub attempt: Option<u32>,
    /// True when the intent was recorded in this call (a new operation), false when it is
    /// in flight from before (a re-send after a crash or a lost answer).
    pub new: bool,
}

impl PaymentRecord {
    /// The vault request id of an authorization attempt.
    pub fn authorize_request_id(&self, leg: usize, attempt: u32) -> String {
        format!("{}/leg/{}/attempt/{attempt}/authorize", self.id, leg + 1)
    }

    /// The request id of `leg`'s capture or void: `<payment>/leg/<n>/capture`, then
    /// `.../capture/resend/<k>` once an operator had it sent again `k` times.
    fn leg_request_id(&self, leg: usize, operation: &str) -> String {
        match self.legs[leg].resends {
            0 => format!("{}/leg/{}/{operation}", self.id, leg + 1),
            resends => format!("{}/leg/{}/{operation}/resend/{resends}", self.id, leg + 1),
        }
    }

    /// The vault operations to run now: those in flight from before (re-sent with the same
    /// request ids), then the new ones the saga decides, whose intents (attempts) this records.
    /// Returns the events of any state change.
    pub fn next_steps(
        &mut self,
        now: OffsetDateTime,
    ) -> Result<(Vec<Step>, Vec<Event>), SagaError> {
        // A review nobody decided in time expires: the holds are voided.
        let mut events = Vec::new();
        if self
            .review_expire_time()
            .is_some_and(|expire| expire <= now)
        {
            events = self
                .decide_review(Verdict::Expired, None, None, now)
                .expect("a payment in review takes the expiry");
        }
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
                    requested: self.saga.ask(leg),
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
        self.state_events(before, now, &mut events);
        Ok((steps, events))
    }

    /// The operation in flight on `leg`, if any; none while the payment waits for an
    /// operator.
    fn in_flight(&self, leg: usize) -> Option<Step> {
        if self.saga.state == PaymentState::NeedsOperator {
            return None;
        }
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
                self.saga.capture(leg),
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
            currency: self.saga.member_currency(&saga_leg.token),
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
                processor_reference,
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
                detail.processor_reference =
                    (!processor_reference.is_empty()).then_some(processor_reference);
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
                currency: self.saga.member_currency(&token),
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
        if !attempt.decline_code.as_deref().is_some_and(suspends_member) {
            return None;
        }
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
            currency: step.currency,
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
        // Done: a refusal before no longer stands.
        let detail = &mut self.legs[leg];
        detail.refusals = 0;
        detail.refusal = None;
        let mut events = vec![self.event(kind, Some(leg), None, None)];
        self.state_events(before, now, &mut events);
        // A void releases the hold; a capture of less than the hold (a converted leg's
        // partial approval) releases the rest.
        let released = match command {
            Command::Void(_) => self.saga.hold(leg),
            _ => self.saga.hold(leg) - self.saga.capture(leg),
        };
        let spend = if released > 0 {
            let token = self.saga.legs[leg].token.clone();
            vec![SpendChange {
                currency: self.saga.member_currency(&token),
                token,
                delta: -released,
                limit: None,
            }]
        } else {
            Vec::new()
        };
        Ok(Some((outcome, events, spend)))
    }
}
