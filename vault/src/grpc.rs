//! The gRPC edge: thin handlers that identify the caller, check its role, convert the request,
//! call the service layer and convert back. No business logic lives here.

pub mod charge;
pub mod convert;
pub mod key_admin;
pub mod status;

use std::sync::Arc;

use tandem_proto::tandem::vault::v1 as pb;
use tandem_tls::identity::IdentityError;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::auth::Rpc;
use crate::error::Error;
use crate::service::{RequestContext, Vault};
use status::to_status;

/// Metadata key of the correlation id.
pub const CORRELATION_HEADER: &str = "x-request-id";
/// Longest accepted correlation id, in bytes; longer ones are replaced.
const CORRELATION_BYTES_MAX: usize = 128;

/// `TokenService` over the vault.
#[derive(Debug, Clone)]
pub struct TokenApi {
    vault: Arc<Vault>,
    uri_prefix: Arc<str>,
}

impl TokenApi {
    /// Serves `vault`, reading caller identities under `uri_prefix`.
    pub fn new(vault: Arc<Vault>, uri_prefix: &str) -> TokenApi {
        TokenApi {
            vault,
            uri_prefix: uri_prefix.into(),
        }
    }

    /// Identifies and authorizes the caller of `request` for `rpc`.
    async fn context<T: RequestIdField>(
        &self,
        request: &Request<T>,
        rpc: Rpc,
    ) -> Result<RequestContext, Status> {
        context(&self.vault, &self.uri_prefix, request, rpc).await
    }

    /// Audits a conversion failure and turns it into a status.
    async fn refuse(&self, ctx: &RequestContext, error: Error) -> Status {
        to_status(self.vault.refuse(ctx, None, error).await)
    }
}

/// A request message's AIP-155 `request_id`, for the audit row ("" for a request without one).
pub(crate) trait RequestIdField {
    /// The raw field.
    fn request_id_field(&self) -> &str;
}

macro_rules! request_id_fields {
    (with: $($with:ty),* ; without: $($without:ty),* $(,)?) => {
        $(impl RequestIdField for $with {
            fn request_id_field(&self) -> &str {
                &self.request_id
            }
        })*
        $(impl RequestIdField for $without {
            fn request_id_field(&self) -> &str {
                ""
            }
        })*
    };
}

request_id_fields!(
    with: pb::TokenizeRequest, pb::UpdateCardRequest, pb::RevokeTokenRequest,
        pb::RevokeByFingerprintRequest, pb::AuthorizeRequest, pb::CaptureRequest,
        pb::VoidRequest, pb::RefundRequest, pb::ConfigureSandboxCardRequest,
        pb::RotateDataKeyRequest, pb::RetireKeyVersionRequest, pb::RotateRootKeyRequest,
        pb::UnsealRequest, pb::SealRequest;
    without: pb::GetTokenRequest, pb::ListTokensRequest, pb::GetChargeRequest,
        pb::GetSandboxCardRequest, pb::ListSandboxOperationsRequest,
        pb::ListSettlementRecordsRequest, pb::GetKeyStatusRequest, pb::ListAuditEventsRequest,
        pb::VerifyAuditLogRequest,
);

/// Identifies the caller of `request` from its certificate (identities under `uri_prefix`),
/// records it on the current span, and checks its role for `rpc` (a refusal is audited). The
/// request id is kept for the audit row only if it is a valid one (so nothing unchecked, a card
/// number least of all, reaches the log).
pub(crate) async fn context<T: RequestIdField>(
    vault: &Vault,
    uri_prefix: &str,
    request: &Request<T>,
    rpc: Rpc,
) -> Result<RequestContext, Status> {
    let request_id = crate::domain::RequestId::parse(request.get_ref().request_id_field())
        .ok()
        .map(|id| id.as_str().to_owned());
    let ctx = RequestContext {
        caller: tandem_tls::identity::caller_of(request, uri_prefix),
        rpc,
        correlation_id: correlation_id(request),
        request_id,
    };
    let span = tracing::Span::current();
    span.record("correlation_id", ctx.correlation_id.as_str());
    match &ctx.caller {
        Ok(caller) => {
            span.record("caller", tracing::field::display(caller));
        }
        Err(IdentityError::UnknownRole { identity, .. }) => {
            span.record("caller", identity.as_str());
        }
        Err(_) => {}
    }
    vault.authorize(&ctx).await.map_err(to_status)?;
    Ok(ctx)
}

/// The client's `x-request-id` if it is short printable ASCII holding no card number,
/// otherwise a new UUID: the correlation id is logged and audited in clear.
fn correlation_id<T>(request: &Request<T>) -> String {
    request
        .metadata()
        .get(CORRELATION_HEADER)
        .and_then(|value| value.to_str().ok())
        .filter(|id| {
            !id.is_empty()
                && id.len() <= CORRELATION_BYTES_MAX
                && id.bytes().all(|b| b.is_ascii_graphic())
                && !crate::domain::pan::contains_card_number(id)
        })
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned)
}

pub(crate) fn respond<T>(ctx: &RequestContext, message: T) -> Response<T> {
    let mut response = Response::new(message);
    if let Ok(value) = MetadataValue::try_from(ctx.correlation_id.as_str()) {
        response.metadata_mut().insert(CORRELATION_HEADER, value);
    }
    response
}

pub(crate) fn today() -> time::Date {
    time::OffsetDateTime::now_utc().date()
}

#[tonic::async_trait]
impl pb::token_service_server::TokenService for TokenApi {
    #[instrument(skip_all, fields(rpc = "Tokenize", correlation_id, caller, token))]
    async fn tokenize(
        &self,
        request: Request<pb::TokenizeRequest>,
    ) -> Result<Response<pb::TokenizeResponse>, Status> {
        let ctx = self.context(&request, Rpc::Tokenize).await?;
        let ttl_max = self.vault.token_settings().ttl_seconds_max;
        let command = match convert::tokenize(request.into_inner(), today(), ttl_max) {
            Ok(command) => command,
            Err(error) => return Err(self.refuse(&ctx, error).await),
        };
        let (card, created) = self
            .vault
            .tokenize(&ctx, command)
            .await
            .map_err(to_status)?;
        tracing::Span::current().record("token", card.token.as_str());
        tracing::info!(created, last4 = %card.last4, "tokenized");
        Ok(respond(
            &ctx,
            pb::TokenizeResponse {
                card: Some(convert::card(&card)),
                created,
            },
        ))
    }

    #[instrument(skip_all, fields(rpc = "GetToken", correlation_id, caller, token))]
    async fn get_token(
        &self,
        request: Request<pb::GetTokenRequest>,
    ) -> Result<Response<pb::GetTokenResponse>, Status> {
        let ctx = self.context(&request, Rpc::GetToken).await?;
        let token = match convert::token(&request.get_ref().token) {
            Ok(token) => token,
            Err(error) => return Err(self.refuse(&ctx, error).await),
        };
        tracing::Span::current().record("token", token.as_str());
        let card = self
            .vault
            .get_token(&ctx, &token)
            .await
            .map_err(to_status)?;
        Ok(respond(
            &ctx,
            pb::GetTokenResponse {
                card: Some(convert::card(&card)),
            },
        ))
    }

    #[instrument(skip_all, fields(rpc = "ListTokens", correlation_id, caller))]
    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let ctx = self.context(&request, Rpc::ListTokens).await?;
        let settings = self.vault.token_settings();
        let query = match convert::list_tokens(
            request.get_ref(),
            settings.page_size_default,
            settings.page_size_max,
        ) {
            Ok(query) => query,
            Err(error) => return Err(self.refuse(&ctx, error).await),
        };
        let page = self
            .vault
            .list_tokens(&ctx, &query.filter, query.before_id, query.page_size)
            .await
            .map_err(to_status)?;
        Ok(respond(
            &ctx,
            pb::ListTokensResponse {
                cards: page.cards.iter().map(convert::card).collect(),
                next_page_token: page
                    .next_before_id
                    .map(|id| convert::encode_page_token(id, &query.filter))
                    .unwrap_or_default(),
            },
        ))
    }

    #[instrument(skip_all, fields(rpc = "UpdateCard", correlation_id, caller, token))]
    async fn update_card(
        &self,
        request: Request<pb::UpdateCardRequest>,
    ) -> Result<Response<pb::UpdateCardResponse>, Status> {
        let ctx = self.context(&request, Rpc::UpdateCard).await?;
        let command = match convert::update_card(request.into_inner(), today()) {
            Ok(command) => command,
            Err(error) => return Err(self.refuse(&ctx, error).await),
        };
        tracing::Span::current().record("token", command.token.as_str());
        let card = self
            .vault
            .update_card(&ctx, command)
            .await
            .map_err(to_status)?;
        Ok(respond(
            &ctx,
            pb::UpdateCardResponse {
                card: Some(convert::card(&card)),
            },
        ))
    }

    #[instrument(skip_all, fields(rpc = "RevokeToken", correlation_id, caller, token))]
    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let ctx = self.context(&request, Rpc::RevokeToken).await?;
        let (request_id, token, reason) = match convert::revoke_token(request.get_ref()) {
            Ok(checked) => checked,
            Err(error) => return Err(self.refuse(&ctx, error).await),
        };
        tracing::Span::current().record("token", token.as_str());
        let card = self
            .vault
            .revoke_token(&ctx, request_id, token, reason)
            .await
            .map_err(to_status)?;
        Ok(respond(
            &ctx,
            pb::RevokeTokenResponse {
                card: Some(convert::card(&card)),
            },
        ))
    }

    #[instrument(skip_all, fields(rpc = "RevokeByFingerprint", correlation_id, caller))]
    async fn revoke_by_fingerprint(
        &self,
        request: Request<pb::RevokeByFingerprintRequest>,
    ) -> Result<Response<pb::RevokeByFingerprintResponse>, Status> {
        let ctx = self.context(&request, Rpc::RevokeByFingerprint).await?;
        let (request_id, selector, reason) =
            match convert::revoke_by_fingerprint(request.into_inner()) {
                Ok(checked) => checked,
                Err(error) => return Err(self.refuse(&ctx, error).await),
            };
        let tokens = self
            .vault
            .revoke_by_fingerprint(&ctx, request_id, selector, reason)
            .await
            .map_err(to_status)?;
        tracing::info!(revoked = tokens.len(), "revoked by fingerprint");
        Ok(respond(
            &ctx,
            pb::RevokeByFingerprintResponse {
                revoked_tokens: tokens.iter().map(|t| t.as_str().to_owned()).collect(),
            },
        ))
    }
}
