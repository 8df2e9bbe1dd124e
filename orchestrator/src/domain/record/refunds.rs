//! A payment's refunds: planned over the captured legs, sent part by part, recorded as the
//! vault answers.

use serde::{Deserialize, Serialize};
use tandem_money::Currency;
use time::OffsetDateTime;

use super::events::{Event, EventKind};
use super::steps::SpendChange;
use super::{PaymentRecord, Status};
use crate::domain::actor::Actor;
use crate::domain::allocation::split;
use crate::domain::booking::RefundedPart;
use crate::domain::saga::{LegState, PaymentState};

/// Most refunds per payment.
pub const REFUNDS_MAX: usize = 100;

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
    /// Minor units of the invoice's currency.
    pub amount: i64,
    /// For a converted leg, what the card gets back, in minor units of its currency, at the
    /// leg's recorded rate (fixed when the refund is planned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub charge: Option<i64>,
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
    /// Who asked for it; `None` for refunds recorded before callers were kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requester: Option<Actor>,
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
    /// The card's currency, that of `amount`.
    pub currency: Currency,
    /// Minor units of the card's currency.
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

impl PaymentRecord {
    /// The refund `id`, if the payment has it.
    pub fn refund(&self, id: &str) -> Option<&Refund> {
        self.refunds.iter().find(|refund| refund.id == id)
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
        requester: Actor,
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
                charge: self.refund_charge(leg, part),
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
            requester: Some(requester),
        };
        self.refunds.push(refund.clone());
        let event = self.event(EventKind::RefundCreated, None, None, Some(&refund.id));
        Ok((refund, vec![event]))
    }

    /// What a converted leg's card gets back for `amount` more of the invoice refunded; `None`
    /// for a leg in the invoice's currency. Cumulative, so that the parts of a leg refunded in
    /// full return exactly what its capture took: the card is owed the conversion of all that
    /// is refunded of the leg (rounded up like the capture, the capture itself once the whole
    /// leg is refunded), less what earlier parts returned or are returning; possibly zero.
    fn refund_charge(&self, leg: usize, amount: i64) -> Option<i64> {
        let quote = self.saga.quote(leg)?;
        let captured = self.saga.capture(leg);
        let live = self
            .refunds
            .iter()
            .flat_map(|r| &r.parts)
            .filter(|p| p.leg == leg && p.state != RefundState::Failed);
        let (before, charged) = live.fold((0, 0), |(a, c), p| {
            (a + p.amount, c + p.charge.unwrap_or(p.amount))
        });
        let after = before + amount;
        let owed = if after >= self.saga.legs[leg].approved {
            captured
        } else {
            quote
                .convert(after)
                .map_or(captured, |c| c.charge.min(captured))
        };
        // Zero when the part converts to less than what earlier parts' rounding already gave
        // back: the part is then done without a call to the vault.
        Some((owed - charged).clamp(0, (captured - charged).max(0)))
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
                        currency: self.saga.member_currency(&self.saga.legs[p.leg].token),
                        amount: p.charge.unwrap_or(p.amount),
                    })
            })
            .collect()
    }

    /// What the ledger books for the refund part `step` once it succeeded (recorded with
    /// [`PaymentRecord::record_refund`]): its amounts and what the leg had refunded before it.
    pub fn refunded_part<'s>(
        &self,
        step: &'s RefundStep,
        processor_reference: Option<String>,
    ) -> RefundedPart<'s> {
        let amount = self
            .refund(&step.refund)
            .and_then(|r| r.parts.iter().find(|p| p.leg == step.leg))
            .map_or(0, |p| p.amount);
        RefundedPart {
            refund_id: &step.refund,
            amount,
            charge: step.amount,
            before: self.legs[step.leg].refunded - amount,
            processor_reference,
        }
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
        let refunded = part.amount;
        let mut events = Vec::new();
        let mut spend = Vec::new();
        if succeeded {
            self.legs[step.leg].refunded += refunded;
            spend.push(SpendChange {
                token: self.saga.legs[step.leg].token.clone(),
                currency: step.currency,
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
}
