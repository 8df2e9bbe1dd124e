//! `ChargeService` and `SandboxService`: thin handlers and their wire conversions.

use std::sync::Arc;

use tandem_money::{Currency, Money};
use tandem_proto::tandem::r#type::v1 as types;
use tandem_proto::tandem::vault::v1 as pb;
use tonic::{Request, Response, Status};
use tracing::instrument;

use super::convert::{Violations, brand, decode_cursor, encode_cursor, timestamp};
use super::status::to_status;
use super::{context, respond};
use crate::auth::Rpc;
use crate::charging::Charges;
use crate::connector::sandbox::{
    CardBehaviour, FAIL_FIRST_ATTEMPTS_MAX, LATENCY_MS_MAX, OperationFilter, SandboxCard,
    SandboxOperation, SettlementRecord,
};
use crate::domain::charge::{
    AuthorizeCommand, CaptureCommand, ChargeId, ChargeLookup, ChargeState, ChargeView, DeclineCode,
    MerchantReference, Metadata, NextAction, RefundCommand, RefundState, RefundView,
    StatementDescriptor, VoidCommand,
};
use crate::domain::{Reason, RequestId, Token, TokenState};
use crate::error::Error;
use crate::service::RequestContext;
use crate::storage;

/// Default and largest page of the sandbox's lists.
const PAGE_SIZE_DEFAULT: i64 = 100;
const PAGE_SIZE_MAX: i64 = 1000;

/// An amount to charge: a known currency and 1 to `max` minor units.
fn amount(money: Option<&types::Money>, max: i64) -> Result<Money, String> {
    let money = money.ok_or("is required")?;
    let currency = Currency::parse(&money.currency_code).map_err(|e| e.to_string())?;
    if !(1..=max).contains(&money.minor_units) {
        return Err(format!("minor_units must be 1 to {max}"));
    }
    Ok(Money::new(currency, money.minor_units))
}

fn money(value: Money) -> types::Money {
    types::Money {
        currency_code: value.currency.code().to_owned(),
        minor_units: value.minor_units,
    }
}

/// Checks an `AuthorizeRequest`.
pub fn authorize(request: &pb::AuthorizeRequest, max: i64) -> Result<AuthorizeCommand, Error> {
    let mut v = Violations::default();
    let request_id = v.check("request_id", RequestId::parse(&request.request_id));
    let token = v.check("token", Token::parse(&request.token));
    let amount = v.check("amount", amount(request.amount.as_ref(), max));
    let description = v.check("description", Reason::parse(&request.description));
    let statement_descriptor = v.check(
        "statement_descriptor",
        StatementDescriptor::parse(&request.statement_descriptor),
    );
    let reference = v.check("reference", MerchantReference::parse(&request.reference));
    let metadata = v.check("metadata", Metadata::parse(request.metadata.iter()));
    v.finish(|| {
        Some(AuthorizeCommand {
            request_id: request_id?,
            token: token?,
            amount: amount?,
            allow_partial_approval: request.allow_partial_approval,
            description: description?,
            statement_descriptor: statement_descriptor?,
            reference: reference?,
            metadata: metadata?,
        })
    })
}

/// Checks a `CaptureRequest`.
pub fn capture(request: &pb::CaptureRequest, max: i64) -> Result<CaptureCommand, Error> {
    let mut v = Violations::default();
    let request_id = v.check("request_id", RequestId::parse(&request.request_id));
    let charge_id = v.check("charge_id", ChargeId::parse(&request.charge_id));
    let amount = match &request.amount {
        None => Some(None),
        Some(value) => v.check("amount", amount(Some(value), max)).map(Some),
    };
    v.finish(|| {
        Some(CaptureCommand {
            request_id: request_id?,
            charge_id: charge_id?,
            amount: amount?,
        })
    })
}

/// Checks a `VoidRequest`.
pub fn void(request: &pb::VoidRequest) -> Result<VoidCommand, Error> {
    let mut v = Violations::default();
    let request_id = v.check("request_id", RequestId::parse(&request.request_id));
    let charge_id = v.check("charge_id", ChargeId::parse(&request.charge_id));
    let reason = v.check("reason", Reason::parse(&request.reason));
    v.finish(|| {
        Some(VoidCommand {
            request_id: request_id?,
            charge_id: charge_id?,
            reason: reason?,
        })
    })
}

/// Checks a `RefundRequest`.
pub fn refund(request: &pb::RefundRequest, max: i64) -> Result<RefundCommand, Error> {
    let mut v = Violations::default();
    let request_id = v.check("request_id", RequestId::parse(&request.request_id));
    let charge_id = v.check("charge_id", ChargeId::parse(&request.charge_id));
    let amount = v.check("amount", amount(request.amount.as_ref(), max));
    let reason = v.check("reason", Reason::parse(&request.reason));
    v.finish(|| {
        Some(RefundCommand {
            request_id: request_id?,
            charge_id: charge_id?,
            amount: amount?,
            reason: reason?,
        })
    })
}

/// Checks a `GetChargeRequest`.
pub fn get_charge(request: &pb::GetChargeRequest) -> Result<ChargeLookup, Error> {
    use pb::get_charge_request::Lookup;
    match &request.lookup {
        Some(Lookup::ChargeId(id)) => ChargeId::parse(id)
            .map(ChargeLookup::Id)
            .map_err(|e| Error::invalid("charge_id", e)),
        Some(Lookup::RequestId(id)) => RequestId::parse(id)
            .map(ChargeLookup::RequestId)
            .map_err(|e| Error::invalid("request_id", e)),
        None => Err(Error::invalid(
            "charge_id",
            "charge_id or request_id is required",
        )),
    }
}

/// The wire form of a decline code.
pub fn decline_code(code: DeclineCode) -> types::DeclineCode {
    match code {
        DeclineCode::DoNotHonor => types::DeclineCode::DoNotHonor,
        DeclineCode::InsufficientFunds => types::DeclineCode::InsufficientFunds,
        DeclineCode::LimitExceeded => types::DeclineCode::LimitExceeded,
        DeclineCode::Blocked => types::DeclineCode::Blocked,
        DeclineCode::FraudSuspected => types::DeclineCode::FraudSuspected,
        DeclineCode::LostCard => types::DeclineCode::LostCard,
        DeclineCode::StolenCard => types::DeclineCode::StolenCard,
        DeclineCode::ExpiredCard => types::DeclineCode::ExpiredCard,
        DeclineCode::InvalidCard => types::DeclineCode::InvalidCard,
        DeclineCode::AuthenticationRequired => types::DeclineCode::AuthenticationRequired,
        DeclineCode::TransactionNotAllowed => types::DeclineCode::TransactionNotAllowed,
        DeclineCode::CurrencyNotSupported => types::DeclineCode::CurrencyNotSupported,
        DeclineCode::ProcessingError => types::DeclineCode::ProcessingError,
        DeclineCode::InvalidAmount => types::DeclineCode::InvalidAmount,
        DeclineCode::Other => types::DeclineCode::Other,
    }
}

fn decline_code_from_wire(value: i32) -> Result<Option<DeclineCode>, &'static str> {
    let code = types::DeclineCode::try_from(value).map_err(|_| "is not a known decline code")?;
    Ok(DeclineCode::ALL
        .iter()
        .copied()
        .find(|known| decline_code(*known) == code))
}

fn next_action(action: NextAction) -> types::NextAction {
    match action {
        NextAction::RetrySameCard => types::NextAction::RetrySameCard,
        NextAction::TryNextCard => types::NextAction::TryNextCard,
        NextAction::DoNotRetry => types::NextAction::DoNotRetry,
    }
}

fn charge_state(state: ChargeState) -> pb::ChargeState {
    match state {
        ChargeState::Pending => pb::ChargeState::Pending,
        ChargeState::Authorized => pb::ChargeState::Authorized,
        ChargeState::Declined => pb::ChargeState::Declined,
        ChargeState::Voided => pb::ChargeState::Voided,
        ChargeState::Captured => pb::ChargeState::Captured,
        ChargeState::PartiallyRefunded => pb::ChargeState::PartiallyRefunded,
        ChargeState::Refunded => pb::ChargeState::Refunded,
    }
}

/// The wire form of a refund.
pub fn refund_message(view: &RefundView) -> pb::ChargeRefund {
    pb::ChargeRefund {
        id: view.id.as_str().to_owned(),
        request_id: view.request_id.clone(),
        amount: Some(money(view.amount)),
        state: match view.state {
            RefundState::Pending => pb::RefundState::Pending,
            RefundState::Succeeded => pb::RefundState::Succeeded,
            RefundState::Failed => pb::RefundState::Failed,
        } as i32,
        processor_reference: view.processor_reference.clone(),
        reason: view.reason.clone(),
        create_time: Some(timestamp(view.created_at)),
        complete_time: view.complete_time.map(timestamp),
    }
}

/// The wire form of a charge.
pub fn charge_message(view: &ChargeView) -> pb::Charge {
    pb::Charge {
        id: view.id.as_str().to_owned(),
        request_id: view.request_id.clone(),
        token: view.token.as_str().to_owned(),
        brand: brand(view.brand) as i32,
        last4: view.last4.clone(),
        requested: Some(money(view.requested)),
        approved: Some(money(view.approved)),
        captured: Some(money(view.captured)),
        refunded: Some(money(view.refunded)),
        allow_partial_approval: view.allow_partial_approval,
        state: charge_state(view.state) as i32,
        decline_code: view
            .decline
            .as_ref()
            .map_or(types::DeclineCode::Unspecified, |d| decline_code(d.code))
            as i32,
        next_action: view
            .decline
            .as_ref()
            .map_or(types::NextAction::Unspecified, |d| {
                next_action(d.next_action)
            }) as i32,
        processor_decline_code: view
            .decline
            .as_ref()
            .map(|d| d.processor_code.clone())
            .unwrap_or_default(),
        processor: view.processor.clone(),
        processor_reference: view.processor_reference.clone(),
        authorization_code: view.authorization_code.clone(),
        description: view.description.clone(),
        statement_descriptor: view.statement_descriptor.clone(),
        reference: view.reference.clone(),
        metadata: view.metadata.entries().clone().into_iter().collect(),
        refunds: view.refunds.iter().map(refund_message).collect(),
        create_time: Some(timestamp(view.created_at)),
        update_time: Some(timestamp(view.updated_at)),
        authorize_time: view.authorize_time.map(timestamp),
        capture_time: view.capture_time.map(timestamp),
        void_time: view.void_time.map(timestamp),
    }
}

/// `ChargeService` over the vault's charging side.
#[derive(Debug, Clone)]
pub struct ChargeApi {
    charges: Arc<Charges>,
    uri_prefix: Arc<str>,
    amount_minor_max: i64,
}

impl ChargeApi {
    /// Serves `charges`, reading caller identities under `uri_prefix`.
    pub fn new(charges: Arc<Charges>, uri_prefix: &str) -> ChargeApi {
        let amount_minor_max = charges.settings().amount_minor_max;
        ChargeApi {
            charges,
            uri_prefix: uri_prefix.into(),
            amount_minor_max,
        }
    }

    async fn context<T: super::RequestIdField>(
        &self,
        request: &Request<T>,
        rpc: Rpc,
    ) -> Result<RequestContext, Status> {
        context(self.charges.vault(), &self.uri_prefix, request, rpc).await
    }

    /// Checks a request with `convert`; a violation is audited and returned as a status.
    async fn check<T, C>(
        &self,
        ctx: &RequestContext,
        request: &T,
        convert: impl FnOnce(&T) -> Result<C, Error>,
    ) -> Result<C, Status> {
        match convert(request) {
            Ok(command) => Ok(command),
            Err(error) => Err(to_status(
                self.charges.vault().refuse(ctx, None, error).await,
            )),
        }
    }
}

fn record_charge(charge: &ChargeView) {
    let span = tracing::Span::current();
    span.record("charge", charge.id.as_str());
    span.record("token", charge.token.as_str());
}

#[tonic::async_trait]
impl pb::charge_service_server::ChargeService for ChargeApi {
    #[instrument(
        skip_all,
        fields(rpc = "Authorize", correlation_id, caller, token, charge)
    )]
    async fn authorize(
        &self,
        request: Request<pb::AuthorizeRequest>,
    ) -> Result<Response<pb::AuthorizeResponse>, Status> {
        let ctx = self.context(&request, Rpc::Authorize).await?;
        let max = self.amount_minor_max;
        let command = self
            .check(&ctx, request.get_ref(), |r| authorize(r, max))
            .await?;
        let charge = self
            .charges
            .authorize(ctx.clone(), command)
            .await
            .map_err(to_status)?;
        record_charge(&charge);
        tracing::info!(state = charge.state.as_str(), last4 = %charge.last4, "authorize");
        Ok(respond(
            &ctx,
            pb::AuthorizeResponse {
                charge: Some(charge_message(&charge)),
            },
        ))
    }

    #[instrument(
        skip_all,
        fields(rpc = "Capture", correlation_id, caller, token, charge)
    )]
    async fn capture(
        &self,
        request: Request<pb::CaptureRequest>,
    ) -> Result<Response<pb::CaptureResponse>, Status> {
        let ctx = self.context(&request, Rpc::Capture).await?;
        let max = self.amount_minor_max;
        let command = self
            .check(&ctx, request.get_ref(), |r| capture(r, max))
            .await?;
        let charge = self
            .charges
            .capture(ctx.clone(), command)
            .await
            .map_err(to_status)?;
        record_charge(&charge);
        Ok(respond(
            &ctx,
            pb::CaptureResponse {
                charge: Some(charge_message(&charge)),
            },
        ))
    }

    #[instrument(skip_all, fields(rpc = "Void", correlation_id, caller, token, charge))]
    async fn void(
        &self,
        request: Request<pb::VoidRequest>,
    ) -> Result<Response<pb::VoidResponse>, Status> {
        let ctx = self.context(&request, Rpc::Void).await?;
        let command = self.check(&ctx, request.get_ref(), void).await?;
        let charge = self
            .charges
            .void(ctx.clone(), command)
            .await
            .map_err(to_status)?;
        record_charge(&charge);
        Ok(respond(
            &ctx,
            pb::VoidResponse {
                charge: Some(charge_message(&charge)),
            },
        ))
    }

    #[instrument(
        skip_all,
        fields(rpc = "Refund", correlation_id, caller, token, charge)
    )]
    async fn refund(
        &self,
        request: Request<pb::RefundRequest>,
    ) -> Result<Response<pb::RefundResponse>, Status> {
        let ctx = self.context(&request, Rpc::Refund).await?;
        let max = self.amount_minor_max;
        let command = self
            .check(&ctx, request.get_ref(), |r| refund(r, max))
            .await?;
        let (refund, charge) = self
            .charges
            .refund(ctx.clone(), command)
            .await
            .map_err(to_status)?;
        record_charge(&charge);
        Ok(respond(
            &ctx,
            pb::RefundResponse {
                refund: Some(refund_message(&refund)),
                charge: Some(charge_message(&charge)),
            },
        ))
    }

    #[instrument(
        skip_all,
        fields(rpc = "GetCharge", correlation_id, caller, token, charge)
    )]
    async fn get_charge(
        &self,
        request: Request<pb::GetChargeRequest>,
    ) -> Result<Response<pb::GetChargeResponse>, Status> {
        let ctx = self.context(&request, Rpc::GetCharge).await?;
        let lookup = self.check(&ctx, request.get_ref(), get_charge).await?;
        let charge = self
            .charges
            .get(ctx.clone(), lookup)
            .await
            .map_err(to_status)?;
        record_charge(&charge);
        Ok(respond(
            &ctx,
            pb::GetChargeResponse {
                charge: Some(charge_message(&charge)),
            },
        ))
    }
}

/// `SandboxService`: the sandbox acquirer's administration.
#[derive(Debug, Clone)]
pub struct SandboxApi {
    charges: Arc<Charges>,
    uri_prefix: Arc<str>,
}

impl SandboxApi {
    /// Serves the sandbox of `charges`.
    pub fn new(charges: Arc<Charges>, uri_prefix: &str) -> SandboxApi {
        SandboxApi {
            charges,
            uri_prefix: uri_prefix.into(),
        }
    }

    async fn context<T: super::RequestIdField>(
        &self,
        request: &Request<T>,
        rpc: Rpc,
    ) -> Result<RequestContext, Status> {
        context(self.charges.vault(), &self.uri_prefix, request, rpc).await
    }

    async fn refuse(&self, ctx: &RequestContext, token: Option<&Token>, error: Error) -> Status {
        to_status(self.charges.vault().refuse(ctx, token, error).await)
    }

    /// The card behind `token` (any state but purged) with its number, for the sandbox.
    async fn card(
        &self,
        ctx: &RequestContext,
        token: &Token,
    ) -> Result<(crate::domain::Fingerprint, crate::domain::CardSecret), Status> {
        let vault = self.charges.vault();
        let stored = match storage::card(vault.pool(), token).await {
            Ok(Some(card)) if card.view.state != TokenState::Expired => card,
            Ok(_) => return Err(self.refuse(ctx, Some(token), Error::TokenNotFound).await),
            Err(error) => return Err(self.refuse(ctx, Some(token), error).await),
        };
        let Some(sealed) = stored.sealed.as_ref() else {
            return Err(self.refuse(ctx, Some(token), Error::TokenNotFound).await);
        };
        let keys = match vault.keys() {
            Ok(keys) => keys,
            Err(error) => return Err(self.refuse(ctx, Some(token), error).await),
        };
        match keys.open_fresh(vault.pool(), token, sealed).await {
            Ok(secret) => Ok((stored.view.fingerprint, secret)),
            Err(error) => Err(self.refuse(ctx, Some(token), error).await),
        }
    }
}

fn behaviour(config: &pb::SandboxCardConfig) -> Result<CardBehaviour, Error> {
    let mut v = Violations::default();
    let decline = v.check(
        "config.decline_code",
        decline_code_from_wire(config.decline_code),
    );
    let balance = match &config.balance {
        None => Some(None),
        Some(balance) => v
            .check(
                "config.balance",
                Currency::parse(&balance.currency_code)
                    .map_err(|e| e.to_string())
                    .and_then(|currency| {
                        if balance.minor_units < 0 {
                            Err("minor_units must not be negative".to_owned())
                        } else {
                            Ok(Money::new(currency, balance.minor_units))
                        }
                    }),
            )
            .map(Some),
    };
    let latency_ms = v.check(
        "config.latency_ms",
        u32::try_from(config.latency_ms)
            .ok()
            .filter(|ms| *ms <= LATENCY_MS_MAX)
            .ok_or(format!("must be 0 to {LATENCY_MS_MAX}")),
    );
    let fail_first_attempts = v.check(
        "config.fail_first_attempts",
        u32::try_from(config.fail_first_attempts)
            .ok()
            .filter(|n| *n <= FAIL_FIRST_ATTEMPTS_MAX)
            .ok_or(format!("must be 0 to {FAIL_FIRST_ATTEMPTS_MAX}")),
    );
    v.finish(|| {
        Some(CardBehaviour {
            decline: decline?,
            balance: balance?,
            latency_ms: latency_ms?,
            fail_first_attempts: fail_first_attempts?,
            timeout_after_authorize: config.timeout_after_authorize,
        })
    })
}

fn sandbox_card(card: &SandboxCard) -> pb::SandboxCard {
    let b = &card.behaviour;
    pb::SandboxCard {
        token: card.token.clone(),
        last4: card.last4.clone(),
        configured: card.configured,
        config: Some(pb::SandboxCardConfig {
            decline_code: b
                .decline
                .map_or(types::DeclineCode::Unspecified, decline_code)
                as i32,
            balance: b.balance.map(money),
            latency_ms: i64::from(b.latency_ms),
            fail_first_attempts: b.fail_first_attempts as i32,
            timeout_after_authorize: b.timeout_after_authorize,
        }),
        available: card.available.map(money),
        held: card.held.map(money),
        fail_first_attempts_remaining: card.fail_remaining as i32,
        update_time: Some(timestamp(card.updated_at)),
    }
}

fn operation_type(kind: &str) -> pb::SandboxOperationType {
    match kind {
        "authorize" => pb::SandboxOperationType::Authorize,
        "capture" => pb::SandboxOperationType::Capture,
        "void" => pb::SandboxOperationType::Void,
        "refund" => pb::SandboxOperationType::Refund,
        "inquire" => pb::SandboxOperationType::Inquire,
        _ => pb::SandboxOperationType::Unspecified,
    }
}

fn operation(op: &SandboxOperation) -> pb::SandboxOperation {
    pb::SandboxOperation {
        processor_reference: op.reference.clone(),
        authorization_reference: op.authorization_reference.clone(),
        r#type: operation_type(&op.kind) as i32,
        idempotency_key: op.idempotency_key.clone(),
        token: op.token.clone(),
        requested: op.requested.map(money),
        approved: op.approved.map(money),
        outcome: match op.outcome.as_str() {
            "approved" => pb::SandboxOperationOutcome::Approved,
            "partially_approved" => pb::SandboxOperationOutcome::PartiallyApproved,
            "declined" => pb::SandboxOperationOutcome::Declined,
            "replayed" => pb::SandboxOperationOutcome::Replayed,
            _ => pb::SandboxOperationOutcome::Unspecified,
        } as i32,
        decline_code: op
            .decline
            .map_or(types::DeclineCode::Unspecified, decline_code) as i32,
        authorization_code: op.authorization_code.clone(),
        create_time: Some(timestamp(op.created_at)),
    }
}

fn settlement_record(record: &SettlementRecord) -> pb::SettlementRecord {
    pb::SettlementRecord {
        id: record.id.clone(),
        settlement_date: record.settlement_date.to_string(),
        r#type: match record.kind.as_str() {
            "capture" => pb::SettlementRecordType::Capture,
            "refund" => pb::SettlementRecordType::Refund,
            _ => pb::SettlementRecordType::Unspecified,
        } as i32,
        processor_reference: record.processor_reference.clone(),
        authorization_reference: record.authorization_reference.clone(),
        amount: Some(money(record.amount)),
        create_time: Some(timestamp(record.created_at)),
    }
}

fn page_size(requested: i32) -> Result<i64, &'static str> {
    match requested {
        0 => Ok(PAGE_SIZE_DEFAULT),
        n if n > 0 => Ok(i64::from(n).min(PAGE_SIZE_MAX)),
        _ => Err("must not be negative"),
    }
}

fn date(text: &str) -> Result<Option<time::Date>, &'static str> {
    if text.is_empty() {
        return Ok(None);
    }
    let format = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(text, format)
        .map(Some)
        .map_err(|_| "must be a date YYYY-MM-DD")
}

#[tonic::async_trait]
impl pb::sandbox_service_server::SandboxService for SandboxApi {
    #[instrument(
        skip_all,
        fields(rpc = "ConfigureSandboxCard", correlation_id, caller, token)
    )]
    async fn configure_sandbox_card(
        &self,
        request: Request<pb::ConfigureSandboxCardRequest>,
    ) -> Result<Response<pb::ConfigureSandboxCardResponse>, Status> {
        let ctx = self.context(&request, Rpc::ConfigureSandboxCard).await?;
        let request = request.get_ref();
        let checked = {
            let mut v = Violations::default();
            let request_id = v.check("request_id", RequestId::parse(&request.request_id));
            let token = v.check("token", Token::parse(&request.token));
            let config = match &request.config {
                None => Some(None),
                Some(config) => match behaviour(config) {
                    Ok(behaviour) => Some(Some(behaviour)),
                    Err(Error::InvalidArgument(violations)) => {
                        for violation in violations {
                            v.check::<(), _>(violation.field, Err(violation.description));
                        }
                        None
                    }
                    Err(other) => return Err(self.refuse(&ctx, None, other).await),
                },
            };
            v.finish(|| Some((request_id?, token?, config?)))
        };
        let (request_id, token, config) = match checked {
            Ok(checked) => checked,
            Err(error) => return Err(self.refuse(&ctx, None, error).await),
        };
        tracing::Span::current().record("token", token.as_str());
        let (fingerprint, secret) = self.card(&ctx, &token).await?;
        let vault = self.charges.vault();
        let config_text = format!("{config:?}");
        let keys = vault.keys().map_err(to_status)?;
        let hash = keys.request_hash(&[
            Rpc::ConfigureSandboxCard.method().as_bytes(),
            token.as_str().as_bytes(),
            config_text.as_bytes(),
        ]);
        let sandbox = self.charges.sandbox();
        let mut conn = vault
            .pool()
            .acquire()
            .await
            .map_err(|e| to_status(e.into()))?;
        let stored = storage::request(&mut conn, request_id.as_str())
            .await
            .map_err(to_status)?;
        let card = match stored {
            Some(stored)
                if stored.rpc == Rpc::ConfigureSandboxCard.method()
                    && stored.request_hash == hash =>
            {
                sandbox.card(fingerprint).await
            }
            Some(_) => {
                return Err(self
                    .refuse(&ctx, Some(&token), Error::RequestIdReused)
                    .await);
            }
            None => {
                let card = sandbox
                    .configure(fingerprint, &token, &secret.pan, config)
                    .await
                    .map(Some);
                let record = storage::StoredRequest {
                    rpc: Rpc::ConfigureSandboxCard.method().to_owned(),
                    request_hash: hash,
                    result_tokens: vec![token.clone()],
                    created: false,
                };
                storage::insert_request(&mut conn, request_id.as_str(), &record)
                    .await
                    .map_err(to_status)?;
                card
            }
        };
        drop(conn);
        drop(secret);
        let card = match card {
            Ok(Some(card)) => card,
            Ok(None) => return Err(self.refuse(&ctx, Some(&token), Error::TokenNotFound).await),
            Err(error) => return Err(self.refuse(&ctx, Some(&token), error.into()).await),
        };
        vault
            .audit(&ctx, Some(&token), "OK", "sandbox card configured")
            .await
            .map_err(to_status)?;
        Ok(respond(
            &ctx,
            pb::ConfigureSandboxCardResponse {
                card: Some(sandbox_card(&card)),
            },
        ))
    }

    #[instrument(
        skip_all,
        fields(rpc = "GetSandboxCard", correlation_id, caller, token)
    )]
    async fn get_sandbox_card(
        &self,
        request: Request<pb::GetSandboxCardRequest>,
    ) -> Result<Response<pb::GetSandboxCardResponse>, Status> {
        let ctx = self.context(&request, Rpc::GetSandboxCard).await?;
        let token = match Token::parse(&request.get_ref().token) {
            Ok(token) => token,
            Err(e) => return Err(self.refuse(&ctx, None, Error::invalid("token", e)).await),
        };
        let (fingerprint, secret) = self.card(&ctx, &token).await?;
        let sandbox = self.charges.sandbox();
        // A card the sandbox has not seen yet shows its test card behaviour.
        let card = match sandbox.ensure_card(fingerprint, &token, &secret.pan).await {
            Ok(()) => sandbox.card(fingerprint).await,
            Err(error) => Err(error),
        };
        drop(secret);
        let card = match card {
            Ok(Some(card)) => card,
            Ok(None) => return Err(self.refuse(&ctx, Some(&token), Error::TokenNotFound).await),
            Err(error) => return Err(self.refuse(&ctx, Some(&token), error.into()).await),
        };
        self.charges
            .vault()
            .audit(&ctx, Some(&token), "OK", "")
            .await
            .map_err(to_status)?;
        Ok(respond(
            &ctx,
            pb::GetSandboxCardResponse {
                card: Some(sandbox_card(&card)),
            },
        ))
    }

    #[instrument(
        skip_all,
        fields(rpc = "ListSandboxOperations", correlation_id, caller)
    )]
    async fn list_sandbox_operations(
        &self,
        request: Request<pb::ListSandboxOperationsRequest>,
    ) -> Result<Response<pb::ListSandboxOperationsResponse>, Status> {
        let ctx = self.context(&request, Rpc::ListSandboxOperations).await?;
        let request = request.get_ref();
        let scope = format!(
            "operations/{}/{}/{}",
            request.token, request.r#type, request.authorization_reference
        );
        let checked = {
            let mut v = Violations::default();
            let size = v.check("page_size", page_size(request.page_size));
            let token = if request.token.is_empty() {
                Some(None)
            } else {
                v.check("token", Token::parse(&request.token)).map(Some)
            };
            let kind = v.check(
                "type",
                match pb::SandboxOperationType::try_from(request.r#type) {
                    Ok(pb::SandboxOperationType::Unspecified) => Ok(None),
                    Ok(pb::SandboxOperationType::Authorize) => Ok(Some("authorize")),
                    Ok(pb::SandboxOperationType::Capture) => Ok(Some("capture")),
                    Ok(pb::SandboxOperationType::Void) => Ok(Some("void")),
                    Ok(pb::SandboxOperationType::Refund) => Ok(Some("refund")),
                    Ok(pb::SandboxOperationType::Inquire) => Ok(Some("inquire")),
                    Err(_) => Err("is not a known operation type"),
                },
            );
            let reference = v.check(
                "authorization_reference",
                if request.authorization_reference.len() <= 128 {
                    Ok(request.authorization_reference.clone())
                } else {
                    Err("is too long")
                },
            );
            let after = if request.page_token.is_empty() {
                Some(0)
            } else {
                v.check(
                    "page_token",
                    decode_cursor(&request.page_token, scope.as_bytes())
                        .ok_or("is not a page token of this query"),
                )
            };
            v.finish(|| Some((size?, token?, kind?, reference?, after?)))
        };
        let (size, token, kind, reference, after) = match checked {
            Ok(checked) => checked,
            Err(error) => return Err(self.refuse(&ctx, None, error).await),
        };
        // The sandbox keeps the token it was addressed by; a filter by another token of the
        // same card is answered by that card's own operations.
        let filter = OperationFilter {
            token: token.map(|t| t.as_str().to_owned()),
            kind,
            authorization_reference: (!reference.is_empty()).then_some(reference),
        };
        let mut operations = self
            .charges
            .sandbox()
            .operations(&filter, after, size + 1)
            .await
            .map_err(|e| to_status(e.into()))?;
        let next_page_token = if operations.len() as i64 > size {
            operations.truncate(size as usize);
            operations
                .last()
                .map(|op| encode_cursor(op.seq, scope.as_bytes()))
                .unwrap_or_default()
        } else {
            String::new()
        };
        self.charges
            .vault()
            .audit(&ctx, None, "OK", "")
            .await
            .map_err(to_status)?;
        Ok(respond(
            &ctx,
            pb::ListSandboxOperationsResponse {
                operations: operations.iter().map(operation).collect(),
                next_page_token,
            },
        ))
    }

    #[instrument(
        skip_all,
        fields(rpc = "ListSettlementRecords", correlation_id, caller)
    )]
    async fn list_settlement_records(
        &self,
        request: Request<pb::ListSettlementRecordsRequest>,
    ) -> Result<Response<pb::ListSettlementRecordsResponse>, Status> {
        let ctx = self.context(&request, Rpc::ListSettlementRecords).await?;
        let request = request.get_ref();
        let scope = format!(
            "settlement/{}/{}/{}",
            request.start_date, request.end_date, request.r#type
        );
        let checked = {
            let mut v = Violations::default();
            let size = v.check("page_size", page_size(request.page_size));
            let start = v.check("start_date", date(&request.start_date));
            let end = v.check("end_date", date(&request.end_date));
            if let (Some(Some(start)), Some(Some(end))) = (start, end)
                && end < start
            {
                v.check::<(), _>("end_date", Err("must not be before start_date"));
            }
            let kind = v.check(
                "type",
                match pb::SettlementRecordType::try_from(request.r#type) {
                    Ok(pb::SettlementRecordType::Unspecified) => Ok(None),
                    Ok(pb::SettlementRecordType::Capture) => Ok(Some("capture")),
                    Ok(pb::SettlementRecordType::Refund) => Ok(Some("refund")),
                    Err(_) => Err("is not a known settlement record type"),
                },
            );
            let after = if request.page_token.is_empty() {
                Some(0)
            } else {
                v.check(
                    "page_token",
                    decode_cursor(&request.page_token, scope.as_bytes())
                        .ok_or("is not a page token of this query"),
                )
            };
            v.finish(|| Some((size?, start?, end?, kind?, after?)))
        };
        let (size, start, end, kind, after) = match checked {
            Ok(checked) => checked,
            Err(error) => return Err(self.refuse(&ctx, None, error).await),
        };
        // The cursor is the record's seq; records are ordered by day then seq, and a seq
        // only grows, so the day is recovered from the record itself.
        let sandbox = self.charges.sandbox();
        let after_position = if after > 0 {
            sandbox
                .settlement_record_position(after)
                .await
                .map_err(|e| to_status(e.into()))?
        } else {
            None
        };
        let mut records = sandbox
            .settlement_records(start, end, kind, after_position, size + 1)
            .await
            .map_err(|e| to_status(e.into()))?;
        let next_page_token = if records.len() as i64 > size {
            records.truncate(size as usize);
            records
                .last()
                .map(|r| encode_cursor(r.seq, scope.as_bytes()))
                .unwrap_or_default()
        } else {
            String::new()
        };
        self.charges
            .vault()
            .audit(&ctx, None, "OK", "")
            .await
            .map_err(to_status)?;
        Ok(respond(
            &ctx,
            pb::ListSettlementRecordsResponse {
                records: records.iter().map(settlement_record).collect(),
                next_page_token,
            },
        ))
    }
}
