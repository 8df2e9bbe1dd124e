//! The APIs the dashboard reads, called with its own identity on behalf of the person
//! (`x-tandem-on-behalf-of`): the services check the person's role, never the dashboard's.

use tandem_proto::tandem::orchestrator::v1 as pb;
use tandem_proto::tandem::orchestrator::v1::card_group_service_client::CardGroupServiceClient;
use tandem_proto::tandem::orchestrator::v1::payment_service_client::PaymentServiceClient;
use tandem_runtime::admission::ON_BEHALF_OF;
use tandem_tls::identity::Caller;
use tonic::transport::Channel;

use crate::config::Settings;

/// Channels to the services (connected on first use, shared by every page).
#[derive(Debug, Clone)]
pub struct Api {
    orchestrator: Channel,
}

/// Why a page could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The person's role may not read it.
    #[error("your role may not see this")]
    Forbidden,
    /// It does not exist.
    #[error("not found")]
    NotFound,
    /// The request was refused as invalid (a filter out of range).
    #[error("{0}")]
    Invalid(String),
    /// The service did not answer.
    #[error("the service is unavailable; try again")]
    Unavailable,
}

impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> ApiError {
        match status.code() {
            tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => ApiError::Forbidden,
            tonic::Code::NotFound => ApiError::NotFound,
            tonic::Code::InvalidArgument => ApiError::Invalid(status.message().to_owned()),
            _ => ApiError::Unavailable,
        }
    }
}

impl Api {
    /// Channels to the services of `settings`, with the dashboard's identity; they connect
    /// when first used.
    pub fn new(settings: &Settings) -> Result<Api, tandem_tls::client::ConnectError> {
        let orchestrator = &settings.orchestrator;
        let channel = tandem_tls::client::endpoint(
            &orchestrator.endpoint,
            &orchestrator.files(),
            "localhost",
            orchestrator.timeout(),
        )?
        .connect_lazy();
        Ok(Api {
            orchestrator: channel,
        })
    }

    /// A page of payments, as `person` may see them.
    pub async fn payments(
        &self,
        person: &Caller,
        query: pb::ListPaymentsRequest,
    ) -> Result<pb::ListPaymentsResponse, ApiError> {
        let mut client = PaymentServiceClient::new(self.orchestrator.clone());
        Ok(client
            .list_payments(for_person(query, person))
            .await?
            .into_inner())
    }

    /// One payment, as `person` may see it.
    pub async fn payment(&self, person: &Caller, id: &str) -> Result<pb::Payment, ApiError> {
        let mut client = PaymentServiceClient::new(self.orchestrator.clone());
        let request = pb::GetPaymentRequest {
            payment_id: id.to_owned(),
        };
        client
            .get_payment(for_person(request, person))
            .await?
            .into_inner()
            .payment
            .ok_or(ApiError::NotFound)
    }
}

impl Api {
    /// A page of card groups, as `person` may see them.
    pub async fn card_groups(
        &self,
        person: &Caller,
        query: pb::ListCardGroupsRequest,
    ) -> Result<pb::ListCardGroupsResponse, ApiError> {
        let mut client = CardGroupServiceClient::new(self.orchestrator.clone());
        Ok(client
            .list_card_groups(for_person(query, person))
            .await?
            .into_inner())
    }

    /// One card group with its members' month-to-date spend, as `person` may see it.
    pub async fn card_group(&self, person: &Caller, id: &str) -> Result<pb::CardGroup, ApiError> {
        let mut client = CardGroupServiceClient::new(self.orchestrator.clone());
        let request = pb::GetCardGroupRequest {
            card_group_id: id.to_owned(),
        };
        client
            .get_card_group(for_person(request, person))
            .await?
            .into_inner()
            .card_group
            .ok_or(ApiError::NotFound)
    }
}

/// `message` sent for `person`, with the current span's trace context.
fn for_person<T>(message: T, person: &Caller) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = person.to_string().parse() {
        request.metadata_mut().insert(ON_BEHALF_OF, value);
    }
    tandem_runtime::telemetry::inject(request.metadata_mut());
    request
}
