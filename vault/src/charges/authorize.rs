//! Authorizing a charge (intent, processor call, result) and reading one, resolving a pending
//! authorization with the processor.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgConnection;
use tandem_money::Money;
use time::OffsetDateTime;

use crate::connector::{AuthorizeAnswer, AuthorizeCall, ConnectorError, idempotency_key};
use crate::domain::charge::{
    AuthorizeCommand, ChargeId, ChargeLookup, ChargeState, ChargeView, Decline, DeclineCode,
};
use crate::domain::{CardSecret, Token, TokenState};
use crate::error::Error;
use crate::kernel::{RequestCheck, RequestContext};
use crate::storage::charges::{self as store, AuthorizationOutcome, NewCharge};
use crate::storage::tokens::{self as token_store, StoredCard};
use crate::writer::{Apply, Mutation};
use tandem_runtime::time::now_micros;

use super::{Charges, reload, settled_or_reload};

impl Charges {
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
    pub(super) async fn connector_failure(
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
            // A settlement file's error never answers a charge's call.
            ConnectorError::Unavailable(_)
            | ConnectorError::CircuitOpen
            | ConnectorError::Storage(_)
            | ConnectorError::SettlementFileTooLarge { .. } => Error::OutcomeUnknown,
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
    pub(super) async fn resolve_pending(
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
