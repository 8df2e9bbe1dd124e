//! `ChargeService`: thin handlers over [`crate::charges`] and their wire conversions.

use std::future::Future;
use std::sync::Arc;

use futures::StreamExt as _;
use futures::future::join_all;
use futures::stream::BoxStream;
use tandem_money::{Currency, Money};
use tandem_proto::tandem::r#type::v1 as types;
use tandem_proto::tandem::vault::v1 as pb;
use tonic::{Request, Response, Status};
use tracing::instrument;

use super::convert::{brand, required_date, timestamp};
use super::status::to_status;
use super::{Edge, RequestIdField, respond, today};
use crate::auth::Rpc;
use crate::charges::Charges;
use crate::domain::charge::{
    AuthorizeCommand, CaptureCommand, ChargeId, ChargeLookup, ChargeState, ChargeView, DeclineCode,
    MerchantReference, Metadata, NextAction, RefundCommand, RefundState, RefundView,
    StatementDescriptor, VoidCommand,
};
use crate::domain::settlement::{CHUNK_BYTES_MAX, ChunkedFile};
use crate::domain::{Reason, RequestId, Token};
use crate::error::Error;
use crate::kernel::RequestContext;
use tandem_runtime::fields::Violations;

/// An amount to charge: a known currency and 1 to `max` minor units.
fn amount(money: Option<&types::Money>, max: i64) -> Result<Money, String> {
    let money = money.ok_or("is required")?;
    let currency = Currency::parse(&money.currency_code).map_err(|e| e.to_string())?;
    if !(1..=max).contains(&money.minor_units) {
        return Err(format!("minor_units must be 1 to {max}"));
    }
    Ok(Money::new(currency, money.minor_units))
}

pub(crate) fn money(value: Money) -> types::Money {
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
    v.finish_with(|| {
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
    v.finish_with(|| {
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
    v.finish_with(|| {
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
    v.finish_with(|| {
        Some(RefundCommand {
            request_id: request_id?,
            charge_id: charge_id?,
            amount: amount?,
            reason: reason?,
        })
    })
}

/// Most items of one batch call (`BatchAuthorize`, `BatchCapture`, `BatchVoid`): as many as
/// a card group has members, so that a payment's round is one call.
pub const BATCH_ITEMS_MAX: usize = 32;

/// Checks the shape of a batch: 1 to [`BATCH_ITEMS_MAX`] items, no two with one request id
/// (the second would otherwise run as a replay of the first). Each item's own fields are its
/// single RPC's to check.
pub(crate) fn batch<R: RequestIdField>(requests: &[R]) -> Result<(), Error> {
    let mut v = Violations::default();
    if requests.is_empty() || requests.len() > BATCH_ITEMS_MAX {
        v.add(
            "requests",
            format!("must hold 1 to {BATCH_ITEMS_MAX} requests"),
        );
    }
    let mut seen = std::collections::HashSet::with_capacity(requests.len());
    for (i, request) in requests.iter().enumerate() {
        if !seen.insert(request.request_id_field()) {
            v.add(
                format!("requests[{i}].request_id"),
                "is the request id of an earlier request of the batch",
            );
        }
    }
    v.finish(())
}

/// One item's result in a batch response: its charge, or the status its single RPC would have
/// returned, with the same code, `ErrorInfo` reason and `BadRequest` fields.
pub fn batch_result(result: Result<ChargeView, Status>) -> pb::BatchChargeResult {
    use pb::batch_charge_result::Result as Item;
    use tonic_types::StatusExt as _;
    let item = match result {
        Ok(charge) => Item::Charge(charge_message(&charge)),
        Err(status) => {
            let details = status.get_error_details();
            let field_violations = details
                .bad_request()
                .map(|bad| bad.field_violations.clone())
                .unwrap_or_default()
                .into_iter()
                .map(|v| pb::batch_item_error::FieldViolation {
                    field: v.field,
                    description: v.description,
                })
                .collect();
            Item::Error(pb::BatchItemError {
                code: status.code() as i32,
                reason: details
                    .error_info()
                    .map(|info| info.reason.clone())
                    .unwrap_or_default(),
                message: status.message().to_owned(),
                field_violations,
            })
        }
    };
    pb::BatchChargeResult { result: Some(item) }
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

/// Checks a `DownloadSettlementFileRequest` against the vault's `processor` (its connector's
/// name) and `today` (UTC): the day must have begun. Today's file is the day so far (final
/// once the day has ended), so a reconciliation may check the day while it runs.
pub fn download_settlement_file(
    request: &pb::DownloadSettlementFileRequest,
    processor: &str,
    today: time::Date,
) -> Result<time::Date, Error> {
    let mut v = Violations::default();
    if request.processor != processor {
        v.add(
            "processor",
            format!("must be the processor this vault charges through (\"{processor}\")"),
        );
    }
    let day = v.check(
        "settlement_date",
        required_date(&request.settlement_date).and_then(|day| {
            if day <= today {
                Ok(day)
            } else {
                Err("must not be in the future (UTC)")
            }
        }),
    );
    v.finish_with(|| day)
}

/// Bytes a `DownloadSettlementFileResponse` adds to its chunk (two field tags, the chunk's
/// length and the record count as varints: 11 at most), kept free under the message limit.
const CHUNK_FRAMING_BYTES: usize = 16;

/// The largest chunk that fits both the proto's limit and the server's message limit.
fn chunk_bytes_max(message_bytes_max: usize) -> usize {
    CHUNK_BYTES_MAX.min(message_bytes_max.saturating_sub(CHUNK_FRAMING_BYTES))
}

/// The stream of a settlement file's chunks, each copied out of the file as it is sent.
fn settlement_chunks(
    file: ChunkedFile,
) -> BoxStream<'static, Result<pb::DownloadSettlementFileResponse, Status>> {
    let ChunkedFile { csv, chunks, .. } = file;
    let messages = chunks.into_iter().map(move |chunk| {
        // The chunks were cut from this file; a range outside it is a bug, never a panic.
        let data = csv
            .get(chunk.bytes)
            .ok_or_else(|| to_status(Error::Corrupt("a settlement chunk lies outside its file")))?;
        Ok(pb::DownloadSettlementFileResponse {
            data: data.to_vec(),
            records: i32::try_from(chunk.records).unwrap_or(i32::MAX),
        })
    });
    futures::stream::iter(messages).boxed()
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

pub(crate) fn decline_code_from_wire(value: i32) -> Result<Option<DeclineCode>, &'static str> {
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
    edge: Edge,
    amount_minor_max: i64,
    /// Largest chunk of a settlement file in one response, within the message limit.
    chunk_bytes_max: usize,
}

impl ChargeApi {
    /// Serves `charges`, reading caller identities under `uri_prefix`, sending messages of at
    /// most `message_bytes_max` bytes (`server.message_bytes_max`).
    pub fn new(charges: Arc<Charges>, uri_prefix: &str, message_bytes_max: usize) -> ChargeApi {
        let amount_minor_max = charges.settings().amount_minor_max;
        let edge = Edge::new(charges.vault().clone(), uri_prefix);
        ChargeApi {
            charges,
            edge,
            amount_minor_max,
            chunk_bytes_max: chunk_bytes_max(message_bytes_max),
        }
    }
}

impl ChargeApi {
    /// Serves a batch call: identifies the caller for `batch_rpc`, checks the batch's shape,
    /// then runs its `items` all at once, each as `item_rpc` alone would run, with its own
    /// context (its request id, hash and audit row): `check` is the single RPC's conversion (a
    /// bad item is refused and audited alone) and `run` its operation. Returns the call's
    /// context and the results in the order of the items.
    async fn run_batch<B, R, C, F, Fut>(
        &self,
        request: &Request<B>,
        (batch_rpc, item_rpc): (Rpc, Rpc),
        items: &[R],
        check: impl Fn(&R) -> Result<C, Error>,
        run: F,
    ) -> Result<(RequestContext, Vec<pb::BatchChargeResult>), Status>
    where
        B: RequestIdField,
        R: RequestIdField,
        F: Fn(Arc<Charges>, RequestContext, C) -> Fut,
        Fut: Future<Output = Result<ChargeView, Error>>,
    {
        let ctx = self.edge.context(request, batch_rpc).await?;
        self.edge.check(&ctx, batch(items)).await?;
        let runs = items.iter().map(|item| {
            let item_ctx = ctx.item(item_rpc, item.request_id_field());
            let command = check(item);
            let charges = self.charges.clone();
            let run = &run;
            async move {
                match command {
                    Ok(command) => run(charges, item_ctx, command).await.map_err(to_status),
                    Err(error) => Err(self.edge.refuse(&item_ctx, None, error).await),
                }
            }
        });
        let results = join_all(runs).await.into_iter().map(batch_result).collect();
        Ok((ctx, results))
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
        let ctx = self.edge.context(&request, Rpc::Authorize).await?;
        let max = self.amount_minor_max;
        let command = self
            .edge
            .check(&ctx, authorize(request.get_ref(), max))
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
        let ctx = self.edge.context(&request, Rpc::Capture).await?;
        let max = self.amount_minor_max;
        let command = self
            .edge
            .check(&ctx, capture(request.get_ref(), max))
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
        let ctx = self.edge.context(&request, Rpc::Void).await?;
        let command = self.edge.check(&ctx, void(request.get_ref())).await?;
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
        let ctx = self.edge.context(&request, Rpc::Refund).await?;
        let max = self.amount_minor_max;
        let command = self
            .edge
            .check(&ctx, refund(request.get_ref(), max))
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

    #[instrument(skip_all, fields(rpc = "BatchAuthorize", correlation_id, caller))]
    async fn batch_authorize(
        &self,
        request: Request<pb::BatchAuthorizeRequest>,
    ) -> Result<Response<pb::BatchAuthorizeResponse>, Status> {
        let max = self.amount_minor_max;
        let (ctx, results) = self
            .run_batch(
                &request,
                (Rpc::BatchAuthorize, Rpc::Authorize),
                &request.get_ref().requests,
                |r| authorize(r, max),
                |charges, ctx, c| async move { charges.authorize(ctx, c).await },
            )
            .await?;
        Ok(respond(&ctx, pb::BatchAuthorizeResponse { results }))
    }

    #[instrument(skip_all, fields(rpc = "BatchCapture", correlation_id, caller))]
    async fn batch_capture(
        &self,
        request: Request<pb::BatchCaptureRequest>,
    ) -> Result<Response<pb::BatchCaptureResponse>, Status> {
        let max = self.amount_minor_max;
        let (ctx, results) = self
            .run_batch(
                &request,
                (Rpc::BatchCapture, Rpc::Capture),
                &request.get_ref().requests,
                |r| capture(r, max),
                |charges, ctx, c| async move { charges.capture(ctx, c).await },
            )
            .await?;
        Ok(respond(&ctx, pb::BatchCaptureResponse { results }))
    }

    #[instrument(skip_all, fields(rpc = "BatchVoid", correlation_id, caller))]
    async fn batch_void(
        &self,
        request: Request<pb::BatchVoidRequest>,
    ) -> Result<Response<pb::BatchVoidResponse>, Status> {
        let (ctx, results) = self
            .run_batch(
                &request,
                (Rpc::BatchVoid, Rpc::Void),
                &request.get_ref().requests,
                void,
                |charges, ctx, c| async move { charges.void(ctx, c).await },
            )
            .await?;
        Ok(respond(&ctx, pb::BatchVoidResponse { results }))
    }

    #[instrument(
        skip_all,
        fields(rpc = "GetCharge", correlation_id, caller, token, charge)
    )]
    async fn get_charge(
        &self,
        request: Request<pb::GetChargeRequest>,
    ) -> Result<Response<pb::GetChargeResponse>, Status> {
        let ctx = self.edge.context(&request, Rpc::GetCharge).await?;
        let lookup = self.edge.check(&ctx, get_charge(request.get_ref())).await?;
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

    type DownloadSettlementFileStream =
        BoxStream<'static, Result<pb::DownloadSettlementFileResponse, Status>>;

    #[instrument(
        skip_all,
        fields(
            rpc = "DownloadSettlementFile",
            correlation_id,
            caller,
            settlement_date
        )
    )]
    async fn download_settlement_file(
        &self,
        request: Request<pb::DownloadSettlementFileRequest>,
    ) -> Result<Response<Self::DownloadSettlementFileStream>, Status> {
        let ctx = self
            .edge
            .context(&request, Rpc::DownloadSettlementFile)
            .await?;
        let processor = self.charges.connector().name();
        let checked = download_settlement_file(request.get_ref(), processor, today());
        let day = self.edge.check(&ctx, checked).await?;
        tracing::Span::current().record("settlement_date", tracing::field::display(day));
        let file = self
            .charges
            .settlement_file(ctx.clone(), day, self.chunk_bytes_max)
            .await
            .map_err(to_status)?;
        tracing::info!(
            records = file.records,
            bytes = file.csv.len(),
            chunks = file.chunks.len(),
            "settlement file"
        );
        Ok(respond(&ctx, settlement_chunks(file)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    fn fields(error: Error) -> Vec<String> {
        match error {
            Error::InvalidArgument(violations) => violations.into_iter().map(|v| v.field).collect(),
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    /// A settlement file is asked of this vault's processor for a day that has begun (UTC):
    /// a later day, a malformed or missing day and another processor are refused, each naming
    /// its field.
    #[test]
    fn settlement_file_requests() {
        let today = date!(2026 - 11 - 30);
        let request = |processor: &str, day: &str| pb::DownloadSettlementFileRequest {
            processor: processor.to_owned(),
            settlement_date: day.to_owned(),
        };
        assert_eq!(
            download_settlement_file(&request("sandbox", "2026-11-29"), "sandbox", today).unwrap(),
            date!(2026 - 11 - 29)
        );
        assert_eq!(
            download_settlement_file(&request("sandbox", "2026-11-30"), "sandbox", today).unwrap(),
            today
        );
        let refused = [
            (request("sandbox", "2026-12-01"), vec!["settlement_date"]),
            (request("sandbox", "29/11/2026"), vec!["settlement_date"]),
            (request("sandbox", ""), vec!["settlement_date"]),
            (request("acme", "2026-11-29"), vec!["processor"]),
            (
                request("", "2026-12-01"),
                vec!["processor", "settlement_date"],
            ),
        ];
        for (request, expected) in refused {
            let error = download_settlement_file(&request, "sandbox", today).unwrap_err();
            assert_eq!(fields(error), expected, "{request:?}");
        }
    }

    /// Chunks fit both the proto's 1 MiB and the server's message limit, framing included.
    #[test]
    fn chunks_fit_the_message_limit() {
        assert_eq!(chunk_bytes_max(64 * 1024), 64 * 1024 - CHUNK_FRAMING_BYTES);
        assert_eq!(chunk_bytes_max(16 * 1024 * 1024), CHUNK_BYTES_MAX);
        let largest = pb::DownloadSettlementFileResponse {
            data: vec![b'x'; chunk_bytes_max(64 * 1024)],
            records: i32::MAX,
        };
        assert!(prost::Message::encoded_len(&largest) <= 64 * 1024);
    }
}
