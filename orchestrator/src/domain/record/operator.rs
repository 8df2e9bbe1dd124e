//! A capture or void the vault refuses for good, and the operator who resolves it.
//!
//! The vault answers a repeated request id with its first answer, so a refused capture sent
//! again is refused again: after `settle_refusals_max` refusals the payment stops in
//! NEEDS_OPERATOR (a `payment.needs_operator` event) and nothing more is sent for it. An
//! operator who has looked at the charge at the processor resolves it ([`PaymentRecord::
//! resolve`]): sent again under a new request id (the processor is asked afresh), or confirmed
//! as done at the processor (recorded and booked as if the vault had confirmed it). The payment
//! goes back to capturing or reversing and ends as the saga says.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::PaymentRecord;
use super::events::{Event, EventKind};
use super::steps::Recorded;
use crate::domain::actor::Actor;
use crate::domain::saga::{self, Command, LegState, PaymentState, SagaError};

/// What an operator decided about a payment's refused captures or voids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Decision {
    /// Send them again, each under a new request id.
    Retry,
    /// They took effect at the processor: record them captured or voided.
    Confirm,
}

/// One operator's resolution of a payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolution {
    /// What was decided.
    pub decision: Decision,
    /// Who decided.
    pub operator: Actor,
    /// Why.
    pub note: String,
    /// When.
    pub create_time: OffsetDateTime,
}

/// Why a resolution cannot be recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// The payment is not waiting for an operator.
    #[error("the payment does not need an operator")]
    NotNeedingOperator,
    /// The record does not fit the saga (a bug, never the caller's).
    #[error("saga: {0}")]
    Saga(#[from] SagaError),
}

impl PaymentRecord {
    /// Records the vault's refusal of `leg`'s capture or void (`command`): the charge is not
    /// captured or voided and the vault will not do it as asked. The operation stays in flight,
    /// to be sent again, until it was refused `refusals_max` times: then the payment stops in
    /// NEEDS_OPERATOR, with its event. Returns the events; `None` if the leg was not waiting
    /// for this answer.
    pub fn record_refusal(
        &mut self,
        command: Command,
        reason: String,
        refusals_max: u32,
        now: OffsetDateTime,
    ) -> Option<Vec<Event>> {
        let (leg, waiting) = match command {
            Command::Capture(leg) => (leg, LegState::Capturing),
            Command::Void(leg) => (leg, LegState::Voiding),
            Command::Authorize(_) => return None,
        };
        if self.saga.legs.get(leg).map(|l| l.state) != Some(waiting) {
            return None;
        }
        // A late answer of a round sent before the payment stopped changes nothing.
        if self.saga.state == PaymentState::NeedsOperator {
            return Some(Vec::new());
        }
        let detail = &mut self.legs[leg];
        detail.refusals = detail.refusals.saturating_add(1);
        detail.refusal = Some(reason);
        let mut events = Vec::new();
        let before = self.saga.state;
        if detail.refusals >= refusals_max
            && matches!(before, PaymentState::Capturing | PaymentState::Reversing)
        {
            saga::hold_for_operator(&mut self.saga).expect("capturing or reversing");
            self.state_events(before, now, &mut events);
        }
        Some(events)
    }

    /// The legs whose capture or void the vault refused, in order.
    pub fn refused_legs(&self) -> Vec<usize> {
        (0..self.legs.len())
            .filter(|&leg| {
                self.legs[leg].refusals > 0
                    && matches!(
                        self.saga.legs[leg].state,
                        LegState::Capturing | LegState::Voiding
                    )
            })
            .collect()
    }

    /// Records an operator's `decision` on a payment in NEEDS_OPERATOR: the payment goes back
    /// to capturing or reversing, its refused operations either to be sent again under new
    /// request ids, or recorded as done (each with what the vault's confirmation would have
    /// recorded, for the caller to book). Returns the events and those records.
    pub fn resolve(
        &mut self,
        decision: Decision,
        operator: Actor,
        note: String,
        now: OffsetDateTime,
    ) -> Result<(Vec<Event>, Vec<Recorded>), ResolveError> {
        if self.saga.state != PaymentState::NeedsOperator {
            return Err(ResolveError::NotNeedingOperator);
        }
        let refused = self.refused_legs();
        self.resolutions.push(Resolution {
            decision,
            operator,
            note,
            create_time: now,
        });
        let mut events = vec![self.event(EventKind::PaymentResolved, None, None, None)];
        let before = self.saga.state;
        saga::resume(&mut self.saga).map_err(SagaError::from)?;
        self.state_events(before, now, &mut events);
        let mut recorded = Vec::new();
        for leg in refused {
            let detail = &mut self.legs[leg];
            detail.refusals = 0;
            detail.refusal = None;
            match decision {
                Decision::Retry => detail.resends = detail.resends.saturating_add(1),
                Decision::Confirm => {
                    let command = if self.saga.legs[leg].state == LegState::Capturing {
                        Command::Capture(leg)
                    } else {
                        Command::Void(leg)
                    };
                    if let Some((outcome, mut more, spend)) =
                        self.record_settlement(command, now)?
                    {
                        events.append(&mut more);
                        recorded.push((outcome, Vec::new(), spend));
                    }
                }
            }
        }
        Ok((events, recorded))
    }

    /// One line for people about the latest resolution: "Resolved by treasury/ana: sent again:
    /// the processor's outage is over".
    pub fn resolution_line(&self) -> Option<String> {
        let resolution = self.resolutions.last()?;
        let decided = match resolution.decision {
            Decision::Retry => "sent again",
            Decision::Confirm => "confirmed done at the processor",
        };
        Some(format!(
            "Resolved by {}: {decided}: {}",
            resolution.operator, resolution.note
        ))
    }

    /// One line for people about what needs an operator: "Needs an operator: the vault refused
    /// the capture of card B ·4242 3 times (PROCESSOR_REFUSED)".
    pub fn refusal_line(&self) -> String {
        format!("Needs an operator: {}", self.refusals_text())
    }

    /// What the vault refused: "the vault refused the capture of card B ·4242 3 times
    /// (PROCESSOR_REFUSED)".
    pub fn refusals_text(&self) -> String {
        let refused: Vec<String> = self
            .refused_legs()
            .into_iter()
            .map(|leg| {
                let operation = if self.saga.legs[leg].state == LegState::Capturing {
                    "capture"
                } else {
                    "void"
                };
                let detail = &self.legs[leg];
                format!(
                    "the {operation} of {} {} times ({})",
                    self.card(leg),
                    detail.refusals,
                    detail.refusal.as_deref().unwrap_or("refused")
                )
            })
            .collect();
        format!("the vault refused {}", refused.join(", "))
    }
}
