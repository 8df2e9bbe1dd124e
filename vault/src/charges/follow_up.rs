//! Capturing, voiding and refunding a charge: the intent (the charge rules decide), the
//! processor call, and the result.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgConnection;
use tandem_money::Money;
use time::OffsetDateTime;

use crate::connector::{FollowUpAnswer, FollowUpCall, idempotency_key};
use crate::domain::charge::{
    CaptureCommand, ChargeId, ChargeState, ChargeView, RefundCommand, RefundId, RefundState,
    RefundView, VoidCommand,
};
use crate::domain::charge_rules::{self, ChargeFacts, Decision, Operation};
use crate::domain::{RequestId, Token};
use crate::error::Error;
use crate::kernel::{Recorded, RequestCheck, RequestContext, once_per_request};
use crate::storage::charges::{self as store};
use crate::writer::{Apply, Mutation};
use tandem_runtime::time::now_micros;

use super::{Charges, reload, settled_or_reload};

/// What a capture, void or refund asks of the processor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FollowUp {
    Capture,
    Void,
    Refund,
}

impl FollowUp {
    pub(super) fn rpc(self) -> &'static str {
        match self {
            FollowUp::Capture => "Capture",
            FollowUp::Void => "Void",
            FollowUp::Refund => "Refund",
        }
    }

    pub(super) fn from_rpc(rpc: &str) -> Option<FollowUp> {
        match rpc {
            "Capture" => Some(FollowUp::Capture),
            "Void" => Some(FollowUp::Void),
            "Refund" => Some(FollowUp::Refund),
            _ => None,
        }
    }
}

impl Charges {
    /// Captures an authorized charge.
    pub async fn capture(
        self: &Arc<Self>,
        ctx: RequestContext,
        command: CaptureCommand,
    ) -> Result<ChargeView, Error> {
        let this = self.clone();
        self.detached(async move {
            let amount = command.amount;
            let hash = this.request_hash(
                &ctx,
                &[
                    command.charge_id.as_str().as_bytes(),
                    amount.map_or(&b""[..], |m| m.currency.code().as_bytes()),
                    &amount.map_or(-1, |m| m.minor_units).to_be_bytes(),
                ],
            )?;
            let intent = FollowUpIntent::new(
                FollowUp::Capture,
                &command.request_id,
                hash,
                &command.charge_id,
                amount,
                "",
            );
            this.follow_up(&ctx, intent).await.map(|(charge, _)| charge)
        })
        .await
    }

    /// Releases the hold of an authorized charge.
    pub async fn void(
        self: &Arc<Self>,
        ctx: RequestContext,
        command: VoidCommand,
    ) -> Result<ChargeView, Error> {
        let this = self.clone();
        self.detached(async move {
            let hash = this.request_hash(
                &ctx,
                &[
                    command.charge_id.as_str().as_bytes(),
                    command.reason.as_str().as_bytes(),
                ],
            )?;
            // A pending authorization is resolved first: a hold it turns out to have placed
            // is then voided like any other.
            if let Ok(charge) = this.load(&command.charge_id).await
                && charge.state == ChargeState::Pending
            {
                this.resolve_pending(&ctx, charge, Duration::ZERO).await?;
            }
            let intent = FollowUpIntent::new(
                FollowUp::Void,
                &command.request_id,
                hash,
                &command.charge_id,
                None,
                command.reason.as_str(),
            );
            this.follow_up(&ctx, intent).await.map(|(charge, _)| charge)
        })
        .await
    }

    /// Refunds captured money.
    pub async fn refund(
        self: &Arc<Self>,
        ctx: RequestContext,
        command: RefundCommand,
    ) -> Result<(RefundView, ChargeView), Error> {
        let this = self.clone();
        self.detached(async move {
            let hash = this.request_hash(
                &ctx,
                &[
                    command.charge_id.as_str().as_bytes(),
                    command.amount.currency.code().as_bytes(),
                    &command.amount.minor_units.to_be_bytes(),
                    command.reason.as_str().as_bytes(),
                ],
            )?;
            let intent = FollowUpIntent::new(
                FollowUp::Refund,
                &command.request_id,
                hash,
                &command.charge_id,
                Some(command.amount),
                command.reason.as_str(),
            );
            let (charge, refund) = this.follow_up(&ctx, intent).await?;
            let refund = refund.ok_or(Error::Corrupt("refund request without refund"))?;
            Ok((refund, charge))
        })
        .await
    }

    /// The intent, call and result of a capture, void or refund.
    async fn follow_up(
        &self,
        ctx: &RequestContext,
        intent: FollowUpIntent,
    ) -> Result<(ChargeView, Option<RefundView>), Error> {
        let request_id = intent.request_id.clone();
        let kind = intent.kind;
        let _guard = self.locks.lock(&request_id).await;
        let label = if intent.reason.is_empty() {
            "intent".to_owned()
        } else {
            format!("intent: {}", intent.reason)
        };
        match self.vault.submit(intent, ctx, &label).await? {
            Intended::Done(charge, refund) => Ok((charge, refund)),
            Intended::Send(charge, refund, amount_minor) => {
                self.send_follow_up(ctx, kind, &request_id, charge, refund, amount_minor)
                    .await
            }
        }
    }

    /// Sends a capture, void or refund recorded as pending and records the answer.
    pub(super) async fn send_follow_up(
        &self,
        ctx: &RequestContext,
        kind: FollowUp,
        request_id: &str,
        charge: ChargeView,
        refund: Option<RefundView>,
        amount_minor: Option<i64>,
    ) -> Result<(ChargeView, Option<RefundView>), Error> {
        let key = idempotency_key(&kind.rpc().to_lowercase(), request_id);
        let amount = match kind {
            FollowUp::Capture => Some(Money::new(
                charge.requested.currency,
                amount_minor.unwrap_or(charge.approved.minor_units),
            )),
            FollowUp::Void => None,
            FollowUp::Refund => refund.as_ref().map(|r| r.amount),
        };
        let call = FollowUpCall {
            idempotency_key: &key,
            authorization_reference: &charge.processor_reference,
            amount,
            token: &charge.token,
        };
        let answer = match kind {
            FollowUp::Capture => self.connector.capture(call).await,
            FollowUp::Void => self.connector.void(call).await,
            FollowUp::Refund => self.connector.refund(call).await,
        };
        let answer = match answer {
            Ok(answer) => answer,
            Err(error) => return Err(self.connector_failure(ctx, &charge, error).await),
        };
        let label = match &answer {
            FollowUpAnswer::Done { .. } => format!("{} confirmed", kind.rpc().to_lowercase()),
            FollowUpAnswer::Refused { code, .. } => format!("refused: {}", code.as_str()),
        };
        let result = FollowUpResult {
            kind,
            request_id: request_id.to_owned(),
            charge_id: charge.id.clone(),
            token: charge.token.clone(),
            refund_id: refund.map(|r| r.id),
            amount_minor: amount.map(|m| m.minor_units),
            answer,
            now: now_micros(),
        };
        self.vault.submit(result, ctx, &label).await
    }
}

/// What a capture, void or refund intent decided.
#[derive(Debug)]
enum Intended {
    /// Call the processor (first time, or again for a call left pending), with the amount to
    /// send for a capture or refund.
    Send(ChargeView, Option<RefundView>, Option<i64>),
    /// Nothing to send: a replay of a finished request, or a void with no hold to release.
    Done(ChargeView, Option<RefundView>),
}

/// Checks the preconditions of a capture, void or refund and records it as sent.
#[derive(Debug)]
struct FollowUpIntent {
    kind: FollowUp,
    request_id: String,
    request_hash: [u8; 32],
    charge_id: ChargeId,
    amount: Option<Money>,
    reason: String,
    /// The id a new refund gets (fixed before queuing, so that a retried batch reuses it).
    refund_id: RefundId,
    now: OffsetDateTime,
}

impl FollowUpIntent {
    fn new(
        kind: FollowUp,
        request_id: &RequestId,
        request_hash: [u8; 32],
        charge_id: &ChargeId,
        amount: Option<Money>,
        reason: &str,
    ) -> FollowUpIntent {
        FollowUpIntent {
            kind,
            request_id: request_id.as_str().to_owned(),
            request_hash,
            charge_id: charge_id.clone(),
            amount,
            reason: reason.to_owned(),
            refund_id: RefundId::generate(),
            now: now_micros(),
        }
    }

    /// Answers a request id recorded before for this same request.
    async fn replay(
        &self,
        conn: &mut PgConnection,
        stored: store::ChargeRequest,
    ) -> Result<Intended, Error> {
        if let Some(code) = stored.refusal {
            return Err(Error::ProcessorRefused(code.as_str()));
        }
        let charge = reload(conn, &stored.charge_id).await?;
        let refund = stored
            .refund_id
            .and_then(|id| charge.refunds.iter().find(|r| r.id == id).cloned());
        let pending = match self.kind {
            FollowUp::Refund => refund
                .as_ref()
                .is_some_and(|r| r.state == RefundState::Pending),
            FollowUp::Capture | FollowUp::Void => {
                charge.pending_request_id.as_deref() == Some(self.request_id.as_str())
            }
        };
        Ok(if pending {
            Intended::Send(charge, refund, stored.amount_minor)
        } else {
            Intended::Done(charge, refund)
        })
    }

    async fn record(
        &self,
        conn: &mut PgConnection,
        refund_id: Option<&RefundId>,
        amount_minor: Option<i64>,
    ) -> Result<(), Error> {
        if store::insert_charge_request(
            conn,
            &self.request_id,
            self.kind.rpc(),
            &self.request_hash,
            &self.charge_id,
            refund_id,
            amount_minor,
        )
        .await?
        {
            Ok(())
        } else {
            Err(Error::RequestIdTaken)
        }
    }

    /// Records a capture or void of an authorized charge and marks the charge as waiting for
    /// it, in one statement; returns the charge as marked.
    async fn record_pending(
        &self,
        conn: &mut PgConnection,
        amount_minor: Option<i64>,
    ) -> Result<ChargeView, Error> {
        store::insert_pending_follow_up(
            conn,
            &self.request_id,
            self.kind.rpc(),
            &self.request_hash,
            &self.charge_id,
            amount_minor,
            self.now,
        )
        .await?
        .ok_or(Error::RequestIdTaken)
    }

    /// Locks the charge, replays a recorded request, or applies what the charge rules decide.
    async fn decide(&self, conn: &mut PgConnection) -> Result<Intended, Error> {
        // Lock the charge first: a copy of this request from another vault process then waits
        // here and, once this one commits, finds its record and replays it.
        let charge = store::charge(conn, &self.charge_id, true).await?;
        let stored = store::charge_request(&mut *conn, &self.request_id).await?;
        if let Some(stored) =
            RequestCheck::of(stored, self.kind.rpc(), &self.request_hash).replay()?
        {
            return self.replay(conn, stored).await;
        }
        let charge = charge.ok_or(Error::ChargeNotFound)?;
        match charge_rules::decide(&ChargeFacts::of(&charge), &self.operation()?)? {
            Decision::Capture { amount_minor } => {
                let charge = self.record_pending(conn, Some(amount_minor)).await?;
                Ok(Intended::Send(charge, None, Some(amount_minor)))
            }
            Decision::Void => {
                let charge = self.record_pending(conn, None).await?;
                Ok(Intended::Send(charge, None, None))
            }
            Decision::AlreadyReleased => {
                self.record(conn, None, None).await?;
                Ok(Intended::Done(charge, None))
            }
            Decision::Refund { amount } => {
                let refund = RefundView {
                    id: self.refund_id.clone(),
                    request_id: self.request_id.clone(),
                    amount,
                    state: RefundState::Pending,
                    processor_reference: String::new(),
                    reason: self.reason.clone(),
                    created_at: self.now,
                    complete_time: None,
                };
                store::insert_refund(conn, &refund, &self.charge_id).await?;
                self.record(conn, Some(&refund.id), Some(amount.minor_units))
                    .await?;
                let charge = reload(conn, &self.charge_id).await?;
                let refund = charge
                    .refunds
                    .iter()
                    .find(|r| r.id == self.refund_id)
                    .cloned();
                Ok(Intended::Send(charge, refund, Some(amount.minor_units)))
            }
        }
    }

    /// The operation this intent asks of the charge rules.
    fn operation(&self) -> Result<Operation, Error> {
        Ok(match self.kind {
            FollowUp::Capture => Operation::Capture {
                amount: self.amount,
            },
            FollowUp::Void => Operation::Void,
            FollowUp::Refund => Operation::Refund {
                amount: self.amount.ok_or(Error::Corrupt("refund without amount"))?,
            },
        })
    }
}

impl Recorded for FollowUpIntent {
    type Output = Intended;

    fn apply_once<'a>(&'a self, conn: &'a mut PgConnection) -> Apply<'a, Intended> {
        Box::pin(self.decide(conn))
    }

    // A refund writes its row before its request record; a capture or void writes nothing
    // before it (and nothing at all when the id is taken).
    fn writes_before_record(&self) -> bool {
        self.kind == FollowUp::Refund
    }
}

impl Mutation for FollowUpIntent {
    type Output = Intended;

    fn apply<'a>(&'a self, conn: &'a mut PgConnection) -> Apply<'a, Intended> {
        // A copy of this request recorded by another writer between the lookup and the insert
        // undoes this job only, which then replays it.
        Box::pin(once_per_request(self, conn))
    }

    fn audit_token(&self, output: &Result<Intended, Error>) -> Option<String> {
        match output {
            Ok(Intended::Send(charge, _, _) | Intended::Done(charge, _)) => {
                Some(charge.token.as_str().to_owned())
            }
            Err(_) => None,
        }
    }

    fn audit_resource(&self, output: &Result<Intended, Error>) -> Option<String> {
        match (self.kind, output) {
            (
                FollowUp::Refund,
                Ok(Intended::Send(_, Some(refund), _) | Intended::Done(_, Some(refund))),
            ) => Some(refund.id.as_str().to_owned()),
            _ => Some(self.charge_id.as_str().to_owned()),
        }
    }
}

/// Records the processor's answer to a capture, void or refund.
#[derive(Debug)]
struct FollowUpResult {
    kind: FollowUp,
    request_id: String,
    charge_id: ChargeId,
    token: Token,
    refund_id: Option<RefundId>,
    amount_minor: Option<i64>,
    answer: FollowUpAnswer,
    now: OffsetDateTime,
}

impl Mutation for FollowUpResult {
    type Output = (ChargeView, Option<RefundView>);

    fn apply<'a>(&'a self, conn: &'a mut PgConnection) -> Apply<'a, Self::Output> {
        Box::pin(async move {
            let reference = match &self.answer {
                FollowUpAnswer::Done { reference } => Some(reference.as_str()),
                FollowUpAnswer::Refused { .. } => None,
            };
            let settled = match (self.kind, reference) {
                (FollowUp::Capture, Some(_)) => {
                    let amount = self
                        .amount_minor
                        .ok_or(Error::Corrupt("capture without amount"))?;
                    store::record_capture(conn, &self.charge_id, amount, self.now).await?
                }
                (FollowUp::Void, Some(_)) => {
                    store::record_void(conn, &self.charge_id, self.now).await?
                }
                (FollowUp::Capture | FollowUp::Void, None) => {
                    store::clear_pending_request(conn, &self.charge_id, &self.request_id, self.now)
                        .await?;
                    if let FollowUpAnswer::Refused { code, .. } = &self.answer {
                        store::record_refusal(conn, &self.request_id, *code).await?;
                    }
                    None
                }
                (FollowUp::Refund, reference) => {
                    let refund_id = self
                        .refund_id
                        .as_ref()
                        .ok_or(Error::Corrupt("refund result without refund"))?;
                    store::record_refund(conn, refund_id, reference, self.now).await?;
                    None
                }
            };
            if let (FollowUp::Capture | FollowUp::Void, FollowUpAnswer::Refused { code, .. }) =
                (self.kind, &self.answer)
            {
                return Err(Error::ProcessorRefused(code.as_str()));
            }
            // A capture or void settled now came back from its update; any other result (or a
            // charge another vault process settled first) is read.
            let charge = settled_or_reload(conn, settled, &self.charge_id).await?;
            let refund = self
                .refund_id
                .as_ref()
                .and_then(|id| charge.refunds.iter().find(|r| &r.id == id).cloned());
            Ok((charge, refund))
        })
    }

    fn audit_token(&self, _output: &Result<Self::Output, Error>) -> Option<String> {
        Some(self.token.as_str().to_owned())
    }

    fn audit_resource(&self, _output: &Result<Self::Output, Error>) -> Option<String> {
        Some(match &self.refund_id {
            Some(refund) => refund.as_str().to_owned(),
            None => self.charge_id.as_str().to_owned(),
        })
    }
}
