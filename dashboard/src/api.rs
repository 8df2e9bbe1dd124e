//! The APIs the dashboard reads and calls, with its own identity, on behalf of the person
//! (`x-tandem-on-behalf-of`): the services check the person's role, never the dashboard's.
//!
//! Pages take a generated client from [`Api`] and wrap each message with [`as_person`].

use tandem_proto::tandem::orchestrator::v1::card_group_service_client::CardGroupServiceClient;
use tandem_proto::tandem::orchestrator::v1::ledger_service_client::LedgerServiceClient;
use tandem_proto::tandem::orchestrator::v1::payment_service_client::PaymentServiceClient;
use tandem_proto::tandem::orchestrator::v1::reconciliation_service_client::ReconciliationServiceClient;
use tandem_proto::tandem::orchestrator::v1::webhook_service_client::WebhookServiceClient;
use tandem_proto::tandem::vault::v1::key_admin_service_client::KeyAdminServiceClient;
use tandem_runtime::admission::ON_BEHALF_OF;
use tandem_tls::identity::Caller;
use tonic::transport::Channel;

use crate::config::{Settings, Upstream};

/// Channels to the services (connected on first use, shared by every page).
#[derive(Debug, Clone)]
pub struct Api {
    orchestrator: Channel,
    vault: Channel,
}

/// Why a page could not be read or a form not done.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The person may not read or do it (their role, or four eyes), as the service or the
    /// form check said.
    #[error("{0}")]
    Forbidden(String),
    /// It does not exist.
    #[error("not found")]
    NotFound,
    /// The request was refused as invalid (a filter out of range, a form's bad value).
    #[error("{0}")]
    Invalid(String),
    /// The request conflicts with the current state (an adjustment already decided, a
    /// payment no longer in review, the same person deciding what they proposed).
    #[error("{0}")]
    Conflict(String),
    /// The service did not answer.
    #[error("the service is unavailable; try again")]
    Unavailable,
}

impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> ApiError {
        use tonic::Code;
        match status.code() {
            Code::PermissionDenied | Code::Unauthenticated => {
                ApiError::Forbidden(status.message().to_owned())
            }
            Code::NotFound => ApiError::NotFound,
            Code::InvalidArgument => ApiError::Invalid(invalid_fields(&status)),
            Code::FailedPrecondition | Code::AlreadyExists | Code::Aborted => {
                ApiError::Conflict(status.message().to_owned())
            }
            code => {
                // The person sees that the service did not answer; the log says how.
                tracing::warn!(
                    code = tandem_runtime::wire::code_name(code),
                    message = status.message(),
                    "a service call failed"
                );
                ApiError::Unavailable
            }
        }
    }
}

/// What an INVALID_ARGUMENT says, with each field its `BadRequest` names and why.
fn invalid_fields(status: &tonic::Status) -> String {
    use tonic_types::StatusExt as _;
    let mut text = status.message().to_owned();
    if let Some(bad) = status.get_details_bad_request() {
        for violation in &bad.field_violations {
            text.push_str(&format!("; {}: {}", violation.field, violation.description));
        }
    }
    text
}

impl Api {
    /// Channels to the services of `settings`, with the dashboard's identity; they connect
    /// when first used.
    pub fn new(settings: &Settings) -> Result<Api, tandem_tls::client::ConnectError> {
        let lazy = |upstream: &Upstream| {
            tandem_tls::client::endpoint(
                &upstream.endpoint,
                &upstream.files(),
                "localhost",
                upstream.timeout(),
            )
            .map(|endpoint| endpoint.connect_lazy())
        };
        Ok(Api {
            orchestrator: lazy(&settings.orchestrator)?,
            vault: lazy(&settings.vault)?,
        })
    }

    /// The orchestrator's payments.
    pub fn payments(&self) -> PaymentServiceClient<Channel> {
        PaymentServiceClient::new(self.orchestrator.clone())
    }

    /// The orchestrator's card groups.
    pub fn card_groups(&self) -> CardGroupServiceClient<Channel> {
        CardGroupServiceClient::new(self.orchestrator.clone())
    }

    /// The orchestrator's ledger reads.
    pub fn ledger(&self) -> LedgerServiceClient<Channel> {
        LedgerServiceClient::new(self.orchestrator.clone())
    }

    /// The orchestrator's reconciliation.
    pub fn reconciliation(&self) -> ReconciliationServiceClient<Channel> {
        ReconciliationServiceClient::new(self.orchestrator.clone())
    }

    /// The orchestrator's webhook endpoints and deliveries.
    pub fn webhooks(&self) -> WebhookServiceClient<Channel> {
        WebhookServiceClient::new(self.orchestrator.clone())
    }

    /// The vault's key administration (status only: the dashboard changes no key).
    pub fn keys(&self) -> KeyAdminServiceClient<Channel> {
        KeyAdminServiceClient::new(self.vault.clone())
    }
}

/// `message` sent for `person`, with the current span's trace context.
pub fn as_person<T>(message: T, person: &Caller) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = person.to_string().parse() {
        request.metadata_mut().insert(ON_BEHALF_OF, value);
    }
    tandem_runtime::telemetry::inject(request.metadata_mut());
    request
}

/// A fresh AIP-155 request id, rendered into each form: the same form posted twice (a double
/// click, a page resent) replays the first call's result instead of changing anything twice.
pub fn request_id() -> String {
    format!("dash-{}", uuid::Uuid::new_v4())
}
