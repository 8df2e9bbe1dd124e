//! Charges: `ChargeService`'s operations over checked commands, and the sandbox acquirer's
//! administration ([`sandbox`]).
//!
//! Every processor call follows the same recipe:
//!
//! 1. **Intent.** The request and its effect-to-be (a pending charge, a capture or void marked
//!    in flight, a pending refund) commit through the writer with an audit row, *before* the
//!    processor is called. A request id seen before is replayed from here.
//! 2. **Call.** The connector is called with an idempotency key derived from the request id,
//!    under a timeout and a circuit breaker, in a task of its own so that a cancelled caller
//!    cannot interrupt it half way.
//! 3. **Result.** The processor's answer commits with its audit row.
//!
//! A crash or timeout between 1 and 3 leaves the intent pending. It is finished by a replay of
//! the same request id (which sends the call again; the idempotency key makes that safe), by
//! `GetCharge` (which asks the processor with `inquire`), or by the recovery job, which does
//! both for work left pending longer than `charges.recovery_after_ms`.
//!
//! Copies of one request id in this process serialize on a per-id lock ([`RequestLocks`]), so
//! that 50 identical requests make one processor call and 49 replays.

pub mod locks;
pub mod sandbox;

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgConnection;
use tandem_money::Money;
use time::OffsetDateTime;

use crate::auth::Rpc;
use crate::config::{ChargeSettings, ConnectorSettings};
use crate::connector::sandbox::Sandbox;
use crate::connector::{
    AuthorizeAnswer, AuthorizeCall, ConnectorError, FollowUpAnswer, FollowUpCall, Guarded,
    idempotency_key,
};
use crate::domain::charge::{
    AuthorizeCommand, CaptureCommand, ChargeId, ChargeLookup, ChargeState, ChargeView, Decline,
    DeclineCode, RefundCommand, RefundId, RefundState, RefundView, VoidCommand,
};
use crate::domain::charge_rules::{self, ChargeFacts, Decision, Operation};
use crate::domain::{CardSecret, RequestId, Token, TokenState};
use crate::error::Error;
use crate::kernel::{Recorded, RequestCheck, RequestContext, Vault, now_micros, once_per_request};
use crate::storage::charges::{self as store, AuthorizationOutcome, NewCharge};
use crate::storage::tokens::{self as token_store, StoredCard};
use crate::writer::{Apply, Mutation};

use locks::RequestLocks;

/// The charging side of the vault.
#[derive(Debug)]
pub struct Charges {
    vault: Arc<Vault>,
    connector: Guarded,
    sandbox: Sandbox,
    settings: ChargeSettings,
    statement_descriptor_default: String,
    locks: RequestLocks,
}

/// What a capture, void or refund asks of the processor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FollowUp {
    Capture,
    Void,
    Refund,
}

impl FollowUp {
    fn rpc(self) -> &'static str {
        match self {
            FollowUp::Capture => "Capture",
            FollowUp::Void => "Void",
            FollowUp::Refund => "Refund",
        }
    }

    fn from_rpc(rpc: &str) -> Option<FollowUp> {
        match rpc {
            "Capture" => Some(FollowUp::Capture),
            "Void" => Some(FollowUp::Void),
            "Refund" => Some(FollowUp::Refund),
            _ => None,
        }
    }
}

impl Charges {
    /// Charging over `vault`, through `connector`.
    pub fn new(
        vault: Arc<Vault>,
        connector: Guarded,
        sandbox: Sandbox,
        settings: ChargeSettings,
        connector_settings: &ConnectorSettings,
    ) -> Charges {
        Charges {
            vault,
            connector,
            sandbox,
            settings,
            statement_descriptor_default: connector_settings.statement_descriptor_default.clone(),
            locks: RequestLocks::default(),
        }
    }

    /// The vault (authorization, audit, keys).
    pub fn vault(&self) -> &Arc<Vault> {
        &self.vault
    }

    /// The guarded connector, for health.
    pub fn connector(&self) -> &Guarded {
        &self.connector
    }

    /// The sandbox acquirer.
    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    /// The charging limits.
    pub fn settings(&self) -> &ChargeSettings {
        &self.settings
    }

    /// Request ids with a lock entry (bounded by requests in flight).
    pub fn locked_requests(&self) -> usize {
        self.locks.len()
    }

    /// Runs `work` in a task of its own, so that a caller who goes away does not cut a
    /// processor call in half; the work always runs to its end.
    async fn detached<T: Send + 'static>(
        self: &Arc<Self>,
        work: impl Future<Output = Result<T, Error>> + Send + 'static,
    ) -> Result<T, Error> {
        tokio::spawn(work).await.map_err(|error| {
            tracing::error!(%error, "charge task failed");
            Error::Corrupt("charge task failed")
        })?
    }

    fn request_hash(&self, ctx: &RequestContext, parts: &[&[u8]]) -> Result<[u8; 32], Error> {
        let mut all: Vec<&[u8]> = Vec::with_capacity(parts.len() + 1);
        all.push(ctx.rpc.method().as_bytes());
        all.extend_from_slice(parts);
        Ok(self.vault.keys()?.request_hash(&all))
    }

    /// Places a hold; see the module docs for the recipe.
    pub async fn authorize(
        self: &Arc<Self>,
        ctx: RequestContext,
        command: AuthorizeCommand,
    ) -> Result<ChargeView, Error> {
        let this = self.clone();
        self.detached(async move { this.authorize_detached(&ctx, command).await })
            .await
    }

    async fn authorize_detached(
        &self,
        ctx: &RequestContext,
        command: AuthorizeCommand,
    ) -> Result<ChargeView, Error> {
        let metadata = serde_json::to_vec(command.metadata.entries()).unwrap_or_default();
        let request_hash = self.request_hash(
            ctx,
            &[
                command.token.as_str().as_bytes(),
                command.amount.currency.code().as_bytes(),
                &command.amount.minor_units.to_be_bytes(),
                &[u8::from(command.allow_partial_approval)],
                command.description.as_str().as_bytes(),
                command.statement_descriptor.as_str().as_bytes(),
                command.reference.as_str().as_bytes(),
                &metadata,
            ],
        )?;
        let _guard = self.locks.lock(command.request_id.as_str()).await;

        let card = token_store::card(self.vault.pool(), &command.token).await?;
        let now = now_micros();
        let refusal = match card.as_ref().map(|card| card.view.state_at(now)) {
            None => Some(Error::TokenNotFound),
            Some(TokenState::Active) => None,
            Some(TokenState::Revoked) => Some(Error::TokenRevoked),
            Some(TokenState::Expired) => Some(Error::TokenExpired),
        };
        let refusal = refusal.or_else(|| {
            (self.connector.breaker_state() == crate::connector::breaker::BreakerState::Open)
                .then_some(Error::ProcessorUnavailable)
        });
        // The card must open before anything is committed: data that does not (corrupted, or
        // moved from another row) is refused like an unusable token, with no intent and no
        // charge, so the caller moves on to another card at once.
        let opened = match (refusal, card) {
            (Some(error), _) => Err(error),
            (None, None) => Err(Error::TokenNotFound),
            (None, Some(card)) => match self.open_card(card).await {
                Ok(opened) => Ok(opened),
                Err(Error::CardDataUnreadable) => Err(Error::CardDataUnreadable),
                // Storage or keys failing says nothing about this card.
                Err(error) => return Err(error),
            },
        };
        let (card, secret) = match opened {
            Ok(opened) => opened,
            Err(error) => {
                // A request id seen before replays its charge, whatever the card's state is
                // now. (On the way to a new charge the intent finds it instead: its insert
                // records nothing for a known request id, and it then reads the recorded
                // charge.)
                let stored =
                    store::charge_request(self.vault.pool(), command.request_id.as_str()).await?;
                let error = match RequestCheck::of(stored, "Authorize", &request_hash) {
                    RequestCheck::Replay(stored) => {
                        return self
                            .replay_authorization(ctx, &stored.charge_id, &command)
                            .await;
                    }
                    RequestCheck::Reused => Error::RequestIdReused,
                    RequestCheck::New => error,
                };
                if matches!(error, Error::CardDataUnreadable) {
                    integrity_alarm(&command.token);
                }
                return Err(self.vault.refuse(ctx, Some(&command.token), error).await);
            }
        };

        let currency = command.amount.currency;
        let view = ChargeView {
            id: ChargeId::generate(),
            request_id: command.request_id.as_str().to_owned(),
            token: command.token.clone(),
            brand: card.view.brand,
            last4: card.view.last4.clone(),
            requested: command.amount,
            approved: Money::zero(currency),
            captured: Money::zero(currency),
            refunded: Money::zero(currency),
            allow_partial_approval: command.allow_partial_approval,
            state: ChargeState::Pending,
            decline: None,
            processor: self.connector.name().to_owned(),
            processor_reference: String::new(),
            authorization_code: String::new(),
            description: command.description.as_str().to_owned(),
            statement_descriptor: command.statement_descriptor.as_str().to_owned(),
            reference: command.reference.as_str().to_owned(),
            metadata: command.metadata.clone(),
            pending_request_id: None,
            refunds: Vec::new(),
            created_at: now,
            updated_at: now,
            authorize_time: None,
            capture_time: None,
            void_time: None,
        };
        let new_id = view.id.clone();
        let intent = AuthorizeIntent { view, request_hash };
        let charge = self.vault.submit(intent, ctx, "intent").await?;
        if charge.state != ChargeState::Pending {
            return Ok(charge);
        }
        // A charge recorded before under this request id (by an earlier call) may have reached
        // the processor already: it is sent again as a re-send, not as a first call.
        let first_send = charge.id == new_id;
        self.send_authorization(ctx, charge, &command, first_send.then_some((card, secret)))
            .await
    }

    /// Replays an `Authorize`: the recorded charge, finished first if it is still pending.
    async fn replay_authorization(
        &self,
        ctx: &RequestContext,
        charge_id: &ChargeId,
        command: &AuthorizeCommand,
    ) -> Result<ChargeView, Error> {
        let charge = self.load(charge_id).await?;
        if charge.state != ChargeState::Pending {
            self.vault
                .audit(ctx, Some(&charge.token), "OK", "replay")
                .await?;
            return Ok(charge);
        }
        self.send_authorization(ctx, charge, command, None).await
    }

    /// Sends (or sends again) the authorization of a pending charge and records the answer.
    async fn send_authorization(
        &self,
        ctx: &RequestContext,
        charge: ChargeView,
        command: &AuthorizeCommand,
        opened: Option<(StoredCard, CardSecret)>,
    ) -> Result<ChargeView, Error> {
        // A first send carries the card opened before the intent; a re-send opens it now.
        let first_send = opened.is_some();
        let (card, secret) = match opened {
            Some(opened) => opened,
            None => {
                let card = token_store::card(self.vault.pool(), &charge.token)
                    .await?
                    .ok_or(Error::TokenNotFound)?;
                match self.open_card(card).await {
                    Ok(opened) => opened,
                    // The first call may have reached the processor, so the charge is not
                    // declined here: it stays pending until the processor is asked (GetCharge
                    // or the recovery job inquire without the card).
                    Err(Error::CardDataUnreadable) => {
                        integrity_alarm(&charge.token);
                        let error = Error::OutcomeUnknown;
                        return Err(self.vault.refuse(ctx, Some(&charge.token), error).await);
                    }
                    Err(error) => return Err(error),
                }
            }
        };
        let key = idempotency_key("authorize", &charge.request_id);
        let descriptor = if command.statement_descriptor.as_str().is_empty() {
            self.statement_descriptor_default.as_str()
        } else {
            command.statement_descriptor.as_str()
        };
        let answer = self
            .connector
            .authorize(AuthorizeCall {
                idempotency_key: &key,
                token: &charge.token,
                fingerprint: card.view.fingerprint,
                card: &secret,
                expiry: card.view.expiry,
                amount: charge.requested,
                allow_partial_approval: charge.allow_partial_approval,
                statement_descriptor: descriptor,
                reference: &charge.reference,
            })
            .await;
        drop(secret);
        match answer {
            Ok(answer) => self.record_authorization(ctx, &charge, answer).await,
            // The breaker refused the first call, so the processor never saw this charge: it
            // was not sent, which is no decline. The caller is told to try later; the charge
            // stays pending, so the same request sent again goes out under the same idempotency
            // key once the breaker lets it (or GetCharge and the recovery job settle it).
            Err(ConnectorError::CircuitOpen) if first_send => {
                tracing::warn!(charge = %charge.id, "processor breaker open: authorization not sent");
                Err(self
                    .vault
                    .refuse(ctx, Some(&charge.token), Error::ProcessorUnavailable)
                    .await)
            }
            Err(error) => Err(self.connector_failure(ctx, &charge, error).await),
        }
    }

    /// Opens `card`'s data. The card read before may have been re-encrypted since (and its old
    /// key retired), so it is read again once before its data counts as unreadable.
    async fn open_card(&self, card: StoredCard) -> Result<(StoredCard, CardSecret), Error> {
        let keys = self.vault.keys()?;
        let pool = self.vault.pool();
        let open = |card: &StoredCard| {
            let sealed = card.sealed.clone();
            let keys = keys.clone();
            let token = card.view.token.clone();
            async move {
                let sealed = sealed.ok_or(Error::CardDataUnreadable)?;
                keys.open_fresh(pool, &token, &sealed).await
            }
        };
        match open(&card).await {
            Ok(secret) => Ok((card, secret)),
            Err(Error::CardDataUnreadable) => {
                let card = token_store::card(pool, &card.view.token)
                    .await?
                    .ok_or(Error::TokenNotFound)?;
                let secret = open(&card).await?;
                Ok((card, secret))
            }
            Err(error) => Err(error),
        }
    }

    /// Audits a failed processor call and maps it to the caller's error.
    async fn connector_failure(
        &self,
        ctx: &RequestContext,
        charge: &ChargeView,
        error: ConnectorError,
    ) -> Error {
        tracing::warn!(charge = %charge.id, %error, "processor call failed");
        // Either way the intent stays pending: a replay with the same request id, GetCharge
        // or the recovery job finishes it.
        let error = match error {
            ConnectorError::Timeout => Error::ProcessorTimeout,
            ConnectorError::Unavailable(_)
            | ConnectorError::CircuitOpen
            | ConnectorError::Storage(_) => Error::OutcomeUnknown,
        };
        self.vault.refuse(ctx, Some(&charge.token), error).await
    }

    async fn record_authorization(
        &self,
        ctx: &RequestContext,
        charge: &ChargeView,
        answer: AuthorizeAnswer,
    ) -> Result<ChargeView, Error> {
        let outcome = authorization_outcome(answer);
        let label = match &outcome {
            AuthorizationOutcome::Approved { .. } => "authorized".to_owned(),
            AuthorizationOutcome::Declined { decline, .. } => {
                format!("declined: {}", decline.code.as_str())
            }
        };
        let mutation = RecordAuthorization {
            charge_id: charge.id.clone(),
            token: charge.token.clone(),
            outcome,
        };
        self.vault.submit(mutation, ctx, &label).await
    }

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
    async fn send_follow_up(
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

    /// Reads a charge, resolving a pending authorization with the processor when its call is
    /// over (at least one connector timeout old and not in flight here).
    pub async fn get(
        self: &Arc<Self>,
        ctx: RequestContext,
        lookup: ChargeLookup,
    ) -> Result<ChargeView, Error> {
        let this = self.clone();
        self.detached(async move {
            let mut conn = this.vault.pool().acquire().await?;
            let charge = match &lookup {
                ChargeLookup::Id(id) => store::charge(&mut conn, id, false).await?,
                ChargeLookup::RequestId(request_id) => {
                    store::charge_by_request(&mut conn, request_id.as_str()).await?
                }
            };
            drop(conn);
            let Some(charge) = charge else {
                return Err(this.vault.refuse(&ctx, None, Error::ChargeNotFound).await);
            };
            if charge.state == ChargeState::Pending {
                let timeout = this.connector.timeout();
                return this.resolve_pending(&ctx, charge, timeout).await;
            }
            this.vault
                .audit(&ctx, Some(&charge.token), "OK", "")
                .await?;
            Ok(charge)
        })
        .await
    }

    /// Resolves a pending authorization older than `min_age` by asking the processor. A
    /// charge the processor never received is declined with `PROCESSING_ERROR` once older than
    /// `charges.recovery_after_ms` (its call is long over; the caller may retry). A charge
    /// whose call is in flight here is returned as it is.
    async fn resolve_pending(
        &self,
        ctx: &RequestContext,
        charge: ChargeView,
        min_age: Duration,
    ) -> Result<ChargeView, Error> {
        let age = OffsetDateTime::now_utc() - charge.created_at;
        let guard = self.locks.try_lock(&charge.request_id);
        if guard.is_none() || age < min_age {
            // Its call may still be in flight: report it pending.
            self.vault
                .audit(ctx, Some(&charge.token), "OK", "pending")
                .await?;
            return Ok(charge);
        }
        let key = idempotency_key("authorize", &charge.request_id);
        match self
            .connector
            .inquire(&key, &charge.token, charge.requested)
            .await
        {
            Ok(Some(answer)) => self.record_authorization(ctx, &charge, answer).await,
            Ok(None) if age >= Duration::from_millis(self.settings.recovery_after_ms) => {
                let answer = AuthorizeAnswer::Declined {
                    reference: String::new(),
                    code: DeclineCode::ProcessingError,
                    processor_code: String::new(),
                };
                self.record_authorization(ctx, &charge, answer).await
            }
            Ok(None) => {
                self.vault
                    .audit(ctx, Some(&charge.token), "OK", "pending")
                    .await?;
                Ok(charge)
            }
            Err(error) => {
                tracing::warn!(charge = %charge.id, %error, "inquiry failed");
                self.vault
                    .audit(ctx, Some(&charge.token), "OK", "pending")
                    .await?;
                Ok(charge)
            }
        }
    }

    /// One pass of the recovery job: finishes work left pending by a crash, a timeout or a
    /// cancelled caller. Returns how many charges it looked at.
    pub async fn recover(&self) -> Result<usize, Error> {
        let before =
            OffsetDateTime::now_utc() - Duration::from_millis(self.settings.recovery_after_ms);
        let ids = store::stale_charges(
            self.vault.pool(),
            before,
            i64::from(self.settings.recovery_batch_max),
        )
        .await?;
        let ctx = RequestContext {
            caller: Err(tandem_tls::identity::IdentityError::NoCertificate),
            rpc: Rpc::RecoverCharges,
            correlation_id: uuid::Uuid::new_v4().to_string(),
            request_id: None,
        };
        for id in &ids {
            if let Err(error) = self.recover_one(&ctx, id).await {
                tracing::warn!(charge = %id, %error, "recovery of a charge failed");
            }
        }
        Ok(ids.len())
    }

    async fn recover_one(&self, ctx: &RequestContext, id: &ChargeId) -> Result<(), Error> {
        let charge = self.load(id).await?;
        if charge.state == ChargeState::Pending {
            self.resolve_pending(ctx, charge, Duration::ZERO).await?;
            return Ok(());
        }
        let mut pending: Vec<(String, Option<RefundView>)> = charge
            .refunds
            .iter()
            .filter(|r| r.state == RefundState::Pending)
            .map(|r| (r.request_id.clone(), Some(r.clone())))
            .collect();
        if let Some(request_id) = &charge.pending_request_id {
            pending.push((request_id.clone(), None));
        }
        for (request_id, refund) in pending {
            let Some(_guard) = self.locks.try_lock(&request_id) else {
                continue;
            };
            let stored = store::charge_request(self.vault.pool(), &request_id)
                .await?
                .ok_or(Error::Corrupt("pending operation without request"))?;
            let kind = FollowUp::from_rpc(&stored.rpc)
                .ok_or(Error::Corrupt("pending operation of unknown kind"))?;
            let charge = self.load(id).await?;
            self.send_follow_up(ctx, kind, &request_id, charge, refund, stored.amount_minor)
                .await?;
        }
        Ok(())
    }

    async fn load(&self, id: &ChargeId) -> Result<ChargeView, Error> {
        let mut conn = self.vault.pool().acquire().await?;
        store::charge(&mut conn, id, false)
            .await?
            .ok_or(Error::ChargeNotFound)
    }
}

/// Raises the integrity alarm for a card whose data does not open: the log line here, the
/// audit row (outcome `CARD_DATA_UNREADABLE`) and the metric that counts it come with the
/// refusal. What to do is in the security runbook (`vault/docs/keys.md`).
fn integrity_alarm(token: &Token) {
    tracing::error!(
        %token,
        "integrity alarm: the card's stored data does not open (corrupted or moved); see the \
         key runbook"
    );
}

fn authorization_outcome(answer: AuthorizeAnswer) -> AuthorizationOutcome {
    match answer {
        AuthorizeAnswer::Approved {
            reference,
            approved,
            authorization_code,
        } => AuthorizationOutcome::Approved {
            approved_minor: approved.minor_units,
            reference,
            authorization_code,
        },
        AuthorizeAnswer::Declined {
            reference,
            code,
            processor_code,
        } => AuthorizationOutcome::Declined {
            reference,
            decline: Decline {
                code,
                next_action: code.default_next_action(),
                processor_code,
            },
        },
    }
}

async fn reload(conn: &mut PgConnection, id: &ChargeId) -> Result<ChargeView, Error> {
    store::charge(conn, id, false)
        .await?
        .ok_or(Error::ChargeNotFound)
}

/// The charge a settling update returned, or (when it changed nothing) the charge as it is.
async fn settled_or_reload(
    conn: &mut PgConnection,
    settled: Option<ChargeView>,
    id: &ChargeId,
) -> Result<ChargeView, Error> {
    match settled {
        Some(charge) => Ok(charge),
        None => reload(conn, id).await,
    }
}

/// Records a new `Authorize` as a pending charge, or finds the charge of a repeated one.
#[derive(Debug)]
struct AuthorizeIntent {
    view: ChargeView,
    request_hash: [u8; 32],
}

impl Mutation for AuthorizeIntent {
    type Output = ChargeView;

    fn apply<'a>(&'a self, conn: &'a mut PgConnection) -> Apply<'a, ChargeView> {
        Box::pin(async move {
            let new = NewCharge {
                view: &self.view,
                request_hash: &self.request_hash,
            };
            if store::insert_pending_charge(conn, &new).await? {
                return Ok(self.view.clone());
            }
            // The request id was recorded before: by an earlier call (a retry) or by a copy of
            // this one in another vault process.
            let stored = store::charge_request(&mut *conn, &self.view.request_id).await?;
            match RequestCheck::of(stored, "Authorize", &self.request_hash) {
                RequestCheck::Replay(stored) => reload(conn, &stored.charge_id).await,
                RequestCheck::Reused => Err(Error::RequestIdReused),
                // Not recorded after all: the insert lost to a transaction that then rolled back.
                RequestCheck::New => Err(Error::RequestIdTaken),
            }
        })
    }

    fn audit_token(&self, _output: &Result<ChargeView, Error>) -> Option<String> {
        Some(self.view.token.as_str().to_owned())
    }

    fn audit_resource(&self, output: &Result<ChargeView, Error>) -> Option<String> {
        // A replay names the charge recorded first; a refused intent recorded none.
        output
            .as_ref()
            .ok()
            .map(|charge| charge.id.as_str().to_owned())
    }
}

/// Records the processor's answer to an authorization.
#[derive(Debug)]
struct RecordAuthorization {
    charge_id: ChargeId,
    token: Token,
    outcome: AuthorizationOutcome,
}

impl Mutation for RecordAuthorization {
    type Output = ChargeView;

    fn apply<'a>(&'a self, conn: &'a mut PgConnection) -> Apply<'a, ChargeView> {
        Box::pin(async move {
            let settled =
                store::record_authorization(conn, &self.charge_id, &self.outcome, now_micros())
                    .await?;
            // A charge settled before (by another vault process) is read as it is.
            settled_or_reload(conn, settled, &self.charge_id).await
        })
    }

    fn audit_token(&self, _output: &Result<ChargeView, Error>) -> Option<String> {
        Some(self.token.as_str().to_owned())
    }

    fn audit_resource(&self, _output: &Result<ChargeView, Error>) -> Option<String> {
        Some(self.charge_id.as_str().to_owned())
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
