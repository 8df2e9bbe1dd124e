//! The gRPC edge: thin handlers, one module per service ([`tokens`], [`charges`],
//! [`sandbox`], [`keys`]), that identify the caller, check its role, convert the request, call
//! a capability and convert back. [`convert`] checks wire input once and builds domain types;
//! [`status`] is the one map from [`Error`] to `Status`. No business logic lives here.

pub mod charges;
pub mod convert;
pub mod keys;
pub mod sandbox;
pub mod status;
pub mod tokens;

use std::sync::Arc;

use tandem_proto::tandem::vault::v1 as pb;
use tandem_tls::identity::IdentityError;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

use crate::auth::Rpc;
use crate::domain::Token;
use crate::error::Error;
use crate::kernel::{Page, RequestContext, Vault};
use convert::{decode_cursor, encode_cursor};
use status::to_status;
use tandem_runtime::fields::Violations;

/// Metadata key of the correlation id.
pub const CORRELATION_HEADER: &str = "x-request-id";
/// Longest accepted correlation id, in bytes; longer ones are replaced.
const CORRELATION_BYTES_MAX: usize = 128;

/// What every service's handlers share: the vault handle and where caller identities live.
/// It opens each call (identify, authorize) and audits each refusal, the same way for all.
#[derive(Debug, Clone)]
pub(crate) struct Edge {
    vault: Arc<Vault>,
    uri_prefix: Arc<str>,
}

impl Edge {
    /// The edge of `vault`, reading caller identities under `uri_prefix`.
    pub(crate) fn new(vault: Arc<Vault>, uri_prefix: &str) -> Edge {
        Edge {
            vault,
            uri_prefix: uri_prefix.into(),
        }
    }

    /// The vault handle.
    pub(crate) fn vault(&self) -> &Arc<Vault> {
        &self.vault
    }

    /// Identifies the caller of `request` from its certificate, records it on the current
    /// span, and checks its role for `rpc` (a refusal is audited). The request id is kept for
    /// the audit row only if it is a valid one (so nothing unchecked, a card number least of
    /// all, reaches the log).
    pub(crate) async fn context<T: RequestIdField>(
        &self,
        request: &Request<T>,
        rpc: Rpc,
    ) -> Result<RequestContext, Status> {
        let request_id = crate::domain::RequestId::parse(request.get_ref().request_id_field())
            .ok()
            .map(|id| id.as_str().to_owned());
        let ctx = RequestContext {
            caller: tandem_tls::identity::caller_of(request, &self.uri_prefix),
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
        self.vault.authorize(&ctx).await.map_err(to_status)?;
        Ok(ctx)
    }

    /// Audits a call refused at the edge (bad input, a card or charge not found) and turns the
    /// error into its status.
    pub(crate) async fn refuse(
        &self,
        ctx: &RequestContext,
        token: Option<&Token>,
        error: Error,
    ) -> Status {
        to_status(self.vault.refuse(ctx, token, error).await)
    }

    /// Passes a checked request on, or audits its violation and returns it as a status.
    pub(crate) async fn check<C>(
        &self,
        ctx: &RequestContext,
        checked: Result<C, Error>,
    ) -> Result<C, Status> {
        match checked {
            Ok(command) => Ok(command),
            Err(error) => Err(self.refuse(ctx, None, error).await),
        }
    }
}

/// Default and largest page of the vault's lists (sandbox operations and settlement records,
/// audit events).
const PAGE_SIZE_DEFAULT: i64 = 100;
const PAGE_SIZE_MAX: i64 = 1000;

/// A list's paging: its page size and the position to continue after.
#[derive(Debug)]
pub(crate) struct Paging {
    /// Items per page.
    pub(crate) size: i64,
    /// The position of the last item of the previous page; `None` on the first page.
    pub(crate) after: Option<i64>,
    /// What page tokens of this query are bound to.
    scope: String,
}

impl Paging {
    /// A page size: the default for 0, at most the largest.
    pub(crate) fn size(requested: i32) -> Result<i64, &'static str> {
        match requested {
            0 => Ok(PAGE_SIZE_DEFAULT),
            n if n > 0 => Ok(i64::from(n).min(PAGE_SIZE_MAX)),
            _ => Err("must not be negative"),
        }
    }

    /// Checks `page_token` against the query's `scope`; `size` is the checked `page_size`.
    pub(crate) fn check(
        v: &mut Violations,
        size: Option<i64>,
        page_token: &str,
        scope: String,
    ) -> Option<Paging> {
        let after = if page_token.is_empty() {
            Some(None)
        } else {
            v.check(
                "page_token",
                decode_cursor(page_token, scope.as_bytes())
                    .map(Some)
                    .ok_or("is not a page token of this query"),
            )
        };
        Some(Paging {
            size: size?,
            after: after?,
            scope,
        })
    }

    /// The token of the page after `page`; `seq` reads an item's position.
    pub(crate) fn next_token<T>(&self, page: &Page<T>, seq: impl Fn(&T) -> i64) -> String {
        match page.items.last() {
            Some(last) if page.more => encode_cursor(seq(last), self.scope.as_bytes()),
            _ => String::new(),
        }
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
        pb::CorruptSettlementRecordRequest, pb::RotateDataKeyRequest, pb::RetireKeyVersionRequest, pb::RotateRootKeyRequest,
        pb::UnsealRequest, pb::SealRequest;
    without: pb::GetTokenRequest, pb::ListTokensRequest, pb::GetChargeRequest,
        pb::GetSandboxCardRequest, pb::ListSandboxOperationsRequest,
        pb::ListSettlementRecordsRequest, pb::GetKeyStatusRequest, pb::ListAuditEventsRequest,
        pb::VerifyAuditLogRequest, pb::BatchAuthorizeRequest, pb::BatchCaptureRequest,
        pb::BatchVoidRequest, pb::DownloadSettlementFileRequest,
);

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
