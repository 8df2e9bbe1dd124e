//! Thin gRPC handlers: check the caller's role, check the request into a
//! [`crate::commands`] value with [`convert`], call [`crate::groups`], [`crate::payments`] or
//! [`crate::ledger_reads`], [`crate::reconciliation`], [`crate::webhooks`], [`crate::fx`] or
//! [`crate::risk`],
//! turn the answer into its wire message with [`convert`], and map errors with
//! [`status::to_status`].

pub mod convert;
pub mod status;

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt as _};
use tandem_proto::tandem::orchestrator::v1 as pb;
use tandem_proto::tandem::orchestrator::v1::card_group_service_server::CardGroupService;
use tandem_proto::tandem::orchestrator::v1::fx_service_server::FxService;
use tandem_proto::tandem::orchestrator::v1::ledger_service_server::LedgerService;
use tandem_proto::tandem::orchestrator::v1::payment_service_server::PaymentService;
use tandem_proto::tandem::orchestrator::v1::reconciliation_service_server::ReconciliationService;
use tandem_proto::tandem::orchestrator::v1::risk_service_server::RiskService;
use tandem_proto::tandem::orchestrator::v1::webhook_service_server::WebhookService;
use tonic::{Request, Response, Status};

use crate::auth::{Rpc, authorize};
use crate::domain::actor::Actor;
use crate::fx::Fx;
use crate::groups::Groups;
use crate::ledger_reads::LedgerReads;
use crate::payments::{Call, Payments};
use crate::reconciliation::Reconciliation;
use crate::risk::Risk;
use crate::webhooks::Webhooks;
use status::to_status;
use tandem_runtime::admission::InFlight;

/// What a mutating call brings beside its message: deadline, correlation id, admission, and
/// the caller `actor` it is recorded under.
fn call<T>(request: &Request<T>, actor: Actor) -> Call {
    Call {
        deadline: deadline(request),
        correlation_id: tandem_runtime::correlation::of(request),
        admitted: request.extensions().get::<InFlight>().cloned(),
        actor,
    }
}

/// The caller of `request` if its role may call `rpc`, as changes record it.
fn check<T>(request: &Request<T>, uri_prefix: &str, rpc: Rpc) -> Result<Actor, Status> {
    let caller = authorize(request, uri_prefix, rpc).map_err(to_status)?;
    Ok(Actor {
        name: caller.name,
        role: caller.role.as_str().to_owned(),
    })
}

/// The caller's deadline from `grpc-timeout`, if any.
fn deadline<T>(request: &Request<T>) -> Option<std::time::Duration> {
    let value = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = digits.parse().ok()?;
    let millis = match unit {
        "H" => amount.checked_mul(3_600_000)?,
        "M" => amount.checked_mul(60_000)?,
        "S" => amount.checked_mul(1_000)?,
        "m" => amount,
        "u" => amount / 1_000,
        "n" => amount / 1_000_000,
        _ => return None,
    };
    Some(std::time::Duration::from_millis(millis))
}

/// `CardGroupService`.
pub struct CardGroupApi {
    groups: Arc<Groups>,
    uri_prefix: String,
}

impl CardGroupApi {
    /// The service over `groups`; callers are read from certificates with `uri_prefix`.
    pub fn new(groups: Arc<Groups>, uri_prefix: &str) -> Self {
        Self {
            groups,
            uri_prefix: uri_prefix.to_owned(),
        }
    }

    fn check<T>(&self, request: &Request<T>, rpc: Rpc) -> Result<Actor, Status> {
        check(request, &self.uri_prefix, rpc)
    }
}

#[tonic::async_trait]
impl CardGroupService for CardGroupApi {
    async fn create_card_group(
        &self,
        request: Request<pb::CreateCardGroupRequest>,
    ) -> Result<Response<pb::CreateCardGroupResponse>, Status> {
        let actor = self.check(&request, Rpc::CreateCardGroup)?;
        let group = convert::groups::create_card_group(request.get_ref()).map_err(to_status)?;
        let response = self.groups.create(group, actor).await.map_err(to_status)?;
        Ok(Response::new(pb::CreateCardGroupResponse {
            card_group: Some(convert::groups::card_group(&response).map_err(to_status)?),
        }))
    }

    async fn get_card_group(
        &self,
        request: Request<pb::GetCardGroupRequest>,
    ) -> Result<Response<pb::GetCardGroupResponse>, Status> {
        self.check(&request, Rpc::GetCardGroup)?;
        let id = convert::groups::get_card_group(request.get_ref()).map_err(to_status)?;
        let (group, spend) = self.groups.get(&id).await.map_err(to_status)?;
        Ok(Response::new(pb::GetCardGroupResponse {
            card_group: Some(convert::groups::group_with_spend(&group, &spend).map_err(to_status)?),
        }))
    }

    async fn list_card_groups(
        &self,
        request: Request<pb::ListCardGroupsRequest>,
    ) -> Result<Response<pb::ListCardGroupsResponse>, Status> {
        self.check(&request, Rpc::ListCardGroups)?;
        let page_size_max = self.groups.settings().page_size_max;
        let (query, scope) = convert::groups::list_card_groups(request.get_ref(), page_size_max)
            .map_err(to_status)?;
        let (groups, next) = self.groups.list(&query).await.map_err(to_status)?;
        let page =
            convert::groups::groups_page(&groups, next.as_ref(), &scope).map_err(to_status)?;
        Ok(Response::new(page))
    }

    async fn update_card_group(
        &self,
        request: Request<pb::UpdateCardGroupRequest>,
    ) -> Result<Response<pb::UpdateCardGroupResponse>, Status> {
        let actor = self.check(&request, Rpc::UpdateCardGroup)?;
        let update = convert::groups::update_card_group(request.get_ref()).map_err(to_status)?;
        let response = self.groups.update(update, actor).await.map_err(to_status)?;
        Ok(Response::new(pb::UpdateCardGroupResponse {
            card_group: Some(convert::groups::card_group(&response).map_err(to_status)?),
        }))
    }

    async fn delete_card_group(
        &self,
        request: Request<pb::DeleteCardGroupRequest>,
    ) -> Result<Response<pb::DeleteCardGroupResponse>, Status> {
        let actor = self.check(&request, Rpc::DeleteCardGroup)?;
        let archive = convert::groups::delete_card_group(request.get_ref()).map_err(to_status)?;
        let response = self
            .groups
            .delete(archive, actor)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::DeleteCardGroupResponse {
            card_group: Some(convert::groups::card_group(&response).map_err(to_status)?),
        }))
    }
}

/// Room kept in every message for what is not a list's rows (tokens, framing).
const REPLY_MARGIN_BYTES: usize = 4096;

/// The most bytes of rows a reply may carry when messages are at most `message_bytes_max`.
fn reply_bytes_max(message_bytes_max: usize) -> usize {
    message_bytes_max.saturating_sub(REPLY_MARGIN_BYTES).max(1)
}

/// `PaymentService`.
pub struct PaymentApi {
    payments: Arc<Payments>,
    uri_prefix: String,
    reply_bytes_max: usize,
}

impl PaymentApi {
    /// The service over `payments`; callers are read from certificates with `uri_prefix`;
    /// replies stay within `message_bytes_max`.
    pub fn new(payments: Arc<Payments>, uri_prefix: &str, message_bytes_max: usize) -> Self {
        Self {
            payments,
            uri_prefix: uri_prefix.to_owned(),
            reply_bytes_max: reply_bytes_max(message_bytes_max),
        }
    }

    fn check<T>(&self, request: &Request<T>, rpc: Rpc) -> Result<Actor, Status> {
        check(request, &self.uri_prefix, rpc)
    }
}

/// The `WatchPayment` stream.
type EventStream = Pin<Box<dyn Stream<Item = Result<pb::WatchPaymentResponse, Status>> + Send>>;

#[tonic::async_trait]
impl PaymentService for PaymentApi {
    async fn create_payment(
        &self,
        request: Request<pb::CreatePaymentRequest>,
    ) -> Result<Response<pb::CreatePaymentResponse>, Status> {
        let actor = self.check(&request, Rpc::CreatePayment)?;
        let call = call(&request, actor);
        let payment =
            convert::payments::create_payment(request.into_inner(), self.payments.settings())
                .map_err(to_status)?;
        let payment = self
            .payments
            .create(payment, call)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::CreatePaymentResponse {
            payment: Some(convert::payments::payment_to_wire(
                &payment,
                payment.update_time,
            )),
        }))
    }

    async fn get_payment(
        &self,
        request: Request<pb::GetPaymentRequest>,
    ) -> Result<Response<pb::GetPaymentResponse>, Status> {
        self.check(&request, Rpc::GetPayment)?;
        let id = convert::payments::get_payment(request.get_ref()).map_err(to_status)?;
        let payment = self.payments.get(&id).await.map_err(to_status)?;
        Ok(Response::new(pb::GetPaymentResponse {
            payment: Some(convert::payments::payment_to_wire(
                &payment,
                payment.update_time,
            )),
        }))
    }

    async fn list_payments(
        &self,
        request: Request<pb::ListPaymentsRequest>,
    ) -> Result<Response<pb::ListPaymentsResponse>, Status> {
        self.check(&request, Rpc::ListPayments)?;
        let page_size_max = self.payments.settings().page_size_max;
        let (query, scope) = convert::payments::list_payments(request.get_ref(), page_size_max)
            .map_err(to_status)?;
        let (payments, more) = self.payments.list(&query).await.map_err(to_status)?;
        Ok(Response::new(convert::payments::payments_page(
            &payments,
            more,
            &scope,
            self.reply_bytes_max,
        )))
    }

    async fn refund_payment(
        &self,
        request: Request<pb::RefundPaymentRequest>,
    ) -> Result<Response<pb::RefundPaymentResponse>, Status> {
        let actor = self.check(&request, Rpc::RefundPayment)?;
        let call = call(&request, actor);
        let refund = convert::payments::refund_payment(request.get_ref()).map_err(to_status)?;
        let (payment, refund_id) = self
            .payments
            .refund(refund, call)
            .await
            .map_err(to_status)?;
        let response =
            convert::payments::refund_response(&payment, &refund_id).map_err(to_status)?;
        Ok(Response::new(response))
    }

    type WatchPaymentStream = EventStream;

    async fn watch_payment(
        &self,
        request: Request<pb::WatchPaymentRequest>,
    ) -> Result<Response<Self::WatchPaymentStream>, Status> {
        self.check(&request, Rpc::WatchPayment)?;
        let watch = convert::payments::watch_payment(request.get_ref()).map_err(to_status)?;
        let stream = self.payments.watch(watch).await.map_err(to_status)?;
        let stream = stream.map(|event| {
            event
                .and_then(|body| convert::payments::watch_event(&body))
                .map_err(to_status)
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn add_payment_note(
        &self,
        request: Request<pb::AddPaymentNoteRequest>,
    ) -> Result<Response<pb::AddPaymentNoteResponse>, Status> {
        let actor = self.check(&request, Rpc::AddPaymentNote)?;
        let note = convert::payments::add_payment_note(request.get_ref()).map_err(to_status)?;
        let (payment, index) = self
            .payments
            .add_note(note, actor)
            .await
            .map_err(to_status)?;
        let response = convert::payments::note_response(&payment, index).map_err(to_status)?;
        Ok(Response::new(response))
    }

    async fn review_payment(
        &self,
        request: Request<pb::ReviewPaymentRequest>,
    ) -> Result<Response<pb::ReviewPaymentResponse>, Status> {
        let actor = self.check(&request, Rpc::ReviewPayment)?;
        let call = call(&request, actor);
        let review = convert::payments::review_payment(request.get_ref()).map_err(to_status)?;
        let payment = self
            .payments
            .review(review, call)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::ReviewPaymentResponse {
            payment: Some(convert::payments::payment_to_wire(
                &payment,
                payment.update_time,
            )),
        }))
    }

    async fn resolve_payment(
        &self,
        request: Request<pb::ResolvePaymentRequest>,
    ) -> Result<Response<pb::ResolvePaymentResponse>, Status> {
        let actor = self.check(&request, Rpc::ResolvePayment)?;
        let call = call(&request, actor);
        let resolution =
            convert::payments::resolve_payment(request.get_ref()).map_err(to_status)?;
        let payment = self
            .payments
            .resolve(resolution, call)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::ResolvePaymentResponse {
            payment: Some(convert::payments::payment_to_wire(
                &payment,
                payment.update_time,
            )),
        }))
    }

    async fn list_events(
        &self,
        request: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        self.check(&request, Rpc::ListEvents)?;
        let page_size_max = self.payments.settings().events_page_size_max;
        let query =
            convert::payments::list_events(request.get_ref(), page_size_max).map_err(to_status)?;
        let events = self.payments.events(&query).await.map_err(to_status)?;
        let page = convert::payments::events_page(&events, &query, self.reply_bytes_max)
            .map_err(to_status)?;
        Ok(Response::new(page))
    }
}

/// `LedgerService`.
pub struct LedgerApi {
    ledger: Arc<LedgerReads>,
    uri_prefix: String,
    reply_bytes_max: usize,
}

impl LedgerApi {
    /// The service over `ledger`; callers are read from certificates with `uri_prefix`;
    /// replies stay within `message_bytes_max`.
    pub fn new(ledger: Arc<LedgerReads>, uri_prefix: &str, message_bytes_max: usize) -> Self {
        Self {
            ledger,
            uri_prefix: uri_prefix.to_owned(),
            reply_bytes_max: reply_bytes_max(message_bytes_max),
        }
    }
}

/// The `ExportLedger` stream.
type ExportStream = Pin<Box<dyn Stream<Item = Result<pb::ExportLedgerResponse, Status>> + Send>>;

#[tonic::async_trait]
impl LedgerService for LedgerApi {
    async fn get_balances(
        &self,
        request: Request<pb::GetBalancesRequest>,
    ) -> Result<Response<pb::GetBalancesResponse>, Status> {
        check(&request, &self.uri_prefix, Rpc::GetBalances)?;
        let query = convert::ledger::get_balances(request.get_ref()).map_err(to_status)?;
        let accounts = self.ledger.balances(&query).await.map_err(to_status)?;
        Ok(Response::new(convert::ledger::balances(&accounts)))
    }

    async fn list_entries(
        &self,
        request: Request<pb::ListEntriesRequest>,
    ) -> Result<Response<pb::ListEntriesResponse>, Status> {
        check(&request, &self.uri_prefix, Rpc::ListEntries)?;
        let (query, scope) =
            convert::ledger::list_entries(request.get_ref(), self.ledger.settings())
                .map_err(to_status)?;
        let (entries, more) = self.ledger.entries(&query).await.map_err(to_status)?;
        Ok(Response::new(convert::ledger::entries_page(
            &entries,
            more,
            &scope,
            self.reply_bytes_max,
        )))
    }

    async fn get_spend_report(
        &self,
        request: Request<pb::GetSpendReportRequest>,
    ) -> Result<Response<pb::GetSpendReportResponse>, Status> {
        check(&request, &self.uri_prefix, Rpc::GetSpendReport)?;
        let query = convert::ledger::get_spend_report(request.get_ref(), self.ledger.settings())
            .map_err(to_status)?;
        let report = self.ledger.spend(&query).await.map_err(to_status)?;
        Ok(Response::new(convert::ledger::spend_report(&report)))
    }

    type ExportLedgerStream = ExportStream;

    async fn export_ledger(
        &self,
        request: Request<pb::ExportLedgerRequest>,
    ) -> Result<Response<Self::ExportLedgerStream>, Status> {
        check(&request, &self.uri_prefix, Rpc::ExportLedger)?;
        let (query, scope) = convert::ledger::export_ledger(
            request.get_ref(),
            self.ledger.settings(),
            tandem_runtime::time::now_micros(),
            self.reply_bytes_max,
        )
        .map_err(to_status)?;
        let chunks = self.ledger.export(query).await.map_err(to_status)?;
        let stream = chunks.map(move |chunk| {
            chunk
                .map(|chunk| convert::ledger::export_chunk(chunk, &scope))
                .map_err(to_status)
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// `ReconciliationService`.
pub struct ReconciliationApi {
    reconciliation: Arc<Reconciliation>,
    uri_prefix: String,
}

impl ReconciliationApi {
    /// The service over `reconciliation`; callers are read from certificates with
    /// `uri_prefix`.
    pub fn new(reconciliation: Arc<Reconciliation>, uri_prefix: &str) -> Self {
        Self {
            reconciliation,
            uri_prefix: uri_prefix.to_owned(),
        }
    }
}

/// Decodes a stored response.
fn stored<M: prost::Message + Default>(bytes: &[u8]) -> Result<M, Status> {
    M::decode(bytes).map_err(|e| {
        to_status(crate::error::Error::Corrupt(format!(
            "stored response: {e}"
        )))
    })
}

#[tonic::async_trait]
impl ReconciliationService for ReconciliationApi {
    async fn run_reconciliation(
        &self,
        request: Request<pb::RunReconciliationRequest>,
    ) -> Result<Response<pb::RunReconciliationResponse>, Status> {
        let actor = check(&request, &self.uri_prefix, Rpc::RunReconciliation)?;
        let command = convert::reconciliation::run_reconciliation(
            request.get_ref(),
            self.reconciliation.settings(),
            tandem_runtime::time::now_micros(),
        )
        .map_err(to_status)?;
        let response = self
            .reconciliation
            .run(command, actor)
            .await
            .map_err(to_status)?;
        Ok(Response::new(stored(&response)?))
    }

    async fn get_reconciliation_run(
        &self,
        request: Request<pb::GetReconciliationRunRequest>,
    ) -> Result<Response<pb::GetReconciliationRunResponse>, Status> {
        check(&request, &self.uri_prefix, Rpc::GetReconciliationRun)?;
        let id = convert::reconciliation::get_run(request.get_ref()).map_err(to_status)?;
        let run = self.reconciliation.get_run(&id).await.map_err(to_status)?;
        Ok(Response::new(pb::GetReconciliationRunResponse {
            run: Some(convert::reconciliation::run(&run)),
        }))
    }

    async fn list_discrepancies(
        &self,
        request: Request<pb::ListDiscrepanciesRequest>,
    ) -> Result<Response<pb::ListDiscrepanciesResponse>, Status> {
        check(&request, &self.uri_prefix, Rpc::ListDiscrepancies)?;
        let (query, scope) = convert::reconciliation::list_discrepancies(
            request.get_ref(),
            self.reconciliation.settings(),
        )
        .map_err(to_status)?;
        let (page, more) = self
            .reconciliation
            .discrepancies(&query)
            .await
            .map_err(to_status)?;
        Ok(Response::new(convert::reconciliation::discrepancies_page(
            &page, more, &scope,
        )))
    }

    async fn propose_adjustment(
        &self,
        request: Request<pb::ProposeAdjustmentRequest>,
    ) -> Result<Response<pb::ProposeAdjustmentResponse>, Status> {
        let actor = check(&request, &self.uri_prefix, Rpc::ProposeAdjustment)?;
        let proposal =
            convert::reconciliation::propose_adjustment(request.get_ref()).map_err(to_status)?;
        let response = self
            .reconciliation
            .propose(proposal, actor)
            .await
            .map_err(to_status)?;
        Ok(Response::new(stored(&response)?))
    }

    async fn approve_adjustment(
        &self,
        request: Request<pb::ApproveAdjustmentRequest>,
    ) -> Result<Response<pb::ApproveAdjustmentResponse>, Status> {
        let actor = check(&request, &self.uri_prefix, Rpc::ApproveAdjustment)?;
        let decision =
            convert::reconciliation::approve_adjustment(request.get_ref()).map_err(to_status)?;
        let response = self
            .reconciliation
            .decide(decision, actor)
            .await
            .map_err(to_status)?;
        Ok(Response::new(stored(&response)?))
    }

    async fn reject_adjustment(
        &self,
        request: Request<pb::RejectAdjustmentRequest>,
    ) -> Result<Response<pb::RejectAdjustmentResponse>, Status> {
        let actor = check(&request, &self.uri_prefix, Rpc::RejectAdjustment)?;
        let decision =
            convert::reconciliation::reject_adjustment(request.get_ref()).map_err(to_status)?;
        let response = self
            .reconciliation
            .decide(decision, actor)
            .await
            .map_err(to_status)?;
        Ok(Response::new(stored(&response)?))
    }
}

/// `WebhookService`.
pub struct WebhookApi {
    webhooks: Arc<Webhooks>,
    uri_prefix: String,
}

impl WebhookApi {
    /// The service over `webhooks`; callers are read from certificates with `uri_prefix`.
    pub fn new(webhooks: Arc<Webhooks>, uri_prefix: &str) -> Self {
        Self {
            webhooks,
            uri_prefix: uri_prefix.to_owned(),
        }
    }
}

/// A secret as it is shown once; empty when there is none to show.
fn shown(secret: Option<crate::webhooks::secrets::Secret>) -> String {
    secret
        .map(|s| crate::domain::webhooks::secret_text(&s))
        .unwrap_or_default()
}

#[tonic::async_trait]
impl WebhookService for WebhookApi {
    async fn create_webhook_endpoint(
        &self,
        request: Request<pb::CreateWebhookEndpointRequest>,
    ) -> Result<Response<pb::CreateWebhookEndpointResponse>, Status> {
        let actor = check(&request, &self.uri_prefix, Rpc::CreateWebhookEndpoint)?;
        let command =
            convert::webhooks::create_endpoint(request.get_ref(), self.webhooks.settings())
                .map_err(to_status)?;
        let (response, secret) = self
            .webhooks
            .create(command, actor)
            .await
            .map_err(to_status)?;
        let mut response: pb::CreateWebhookEndpointResponse = stored(&response)?;
        response.secret = shown(secret);
        Ok(Response::new(response))
    }

    async fn get_webhook_endpoint(
        &self,
        request: Request<pb::GetWebhookEndpointRequest>,
    ) -> Result<Response<pb::GetWebhookEndpointResponse>, Status> {
        check(&request, &self.uri_prefix, Rpc::GetWebhookEndpoint)?;
        let id = convert::webhooks::get_endpoint(request.get_ref()).map_err(to_status)?;
        let endpoint = self.webhooks.get(&id).await.map_err(to_status)?;
        Ok(Response::new(pb::GetWebhookEndpointResponse {
            endpoint: Some(convert::webhooks::endpoint(&endpoint)),
        }))
    }

    async fn list_webhook_endpoints(
        &self,
        request: Request<pb::ListWebhookEndpointsRequest>,
    ) -> Result<Response<pb::ListWebhookEndpointsResponse>, Status> {
        check(&request, &self.uri_prefix, Rpc::ListWebhookEndpoints)?;
        let (after, size) =
            convert::webhooks::list_endpoints(request.get_ref()).map_err(to_status)?;
        let (page, more) = self.webhooks.list(after, size).await.map_err(to_status)?;
        Ok(Response::new(convert::webhooks::endpoints_page(
            &page, more,
        )))
    }

    async fn update_webhook_endpoint(
        &self,
        request: Request<pb::UpdateWebhookEndpointRequest>,
    ) -> Result<Response<pb::UpdateWebhookEndpointResponse>, Status> {
        let actor = check(&request, &self.uri_prefix, Rpc::UpdateWebhookEndpoint)?;
        let command =
            convert::webhooks::update_endpoint(request.get_ref(), self.webhooks.settings())
                .map_err(to_status)?;
        let response = self
            .webhooks
            .update(command, actor)
            .await
            .map_err(to_status)?;
        Ok(Response::new(stored(&response)?))
    }

    async fn delete_webhook_endpoint(
        &self,
        request: Request<pb::DeleteWebhookEndpointRequest>,
    ) -> Result<Response<pb::DeleteWebhookEndpointResponse>, Status> {
        let actor = check(&request, &self.uri_prefix, Rpc::DeleteWebhookEndpoint)?;
        let command = convert::webhooks::delete_endpoint(request.get_ref()).map_err(to_status)?;
        let response = self
            .webhooks
            .delete(command, actor)
            .await
            .map_err(to_status)?;
        Ok(Response::new(stored(&response)?))
    }

    async fn rotate_webhook_secret(
        &self,
        request: Request<pb::RotateWebhookSecretRequest>,
    ) -> Result<Response<pb::RotateWebhookSecretResponse>, Status> {
        let actor = check(&request, &self.uri_prefix, Rpc::RotateWebhookSecret)?;
        let command = convert::webhooks::rotate_secret(request.get_ref()).map_err(to_status)?;
        let (response, secret) = self
            .webhooks
            .rotate(command, actor)
            .await
            .map_err(to_status)?;
        let mut response: pb::RotateWebhookSecretResponse = stored(&response)?;
        response.secret = shown(secret);
        Ok(Response::new(response))
    }

    async fn list_webhook_deliveries(
        &self,
        request: Request<pb::ListWebhookDeliveriesRequest>,
    ) -> Result<Response<pb::ListWebhookDeliveriesResponse>, Status> {
        check(&request, &self.uri_prefix, Rpc::ListWebhookDeliveries)?;
        let (query, scope) =
            convert::webhooks::list_deliveries(request.get_ref()).map_err(to_status)?;
        let (page, more) = self.webhooks.deliveries(&query).await.map_err(to_status)?;
        Ok(Response::new(convert::webhooks::deliveries_page(
            &page, more, &scope,
        )))
    }

    async fn redeliver_events(
        &self,
        request: Request<pb::RedeliverEventsRequest>,
    ) -> Result<Response<pb::RedeliverEventsResponse>, Status> {
        let actor = check(&request, &self.uri_prefix, Rpc::RedeliverEvents)?;
        let command = convert::webhooks::redeliver(request.get_ref()).map_err(to_status)?;
        let response = self
            .webhooks
            .redeliver(command, actor)
            .await
            .map_err(to_status)?;
        Ok(Response::new(stored(&response)?))
    }
}

/// `FxService`.
pub struct FxApi {
    fx: Arc<Fx>,
    uri_prefix: String,
}

impl FxApi {
    /// The service over `fx`; callers are read from certificates with `uri_prefix`.
    pub fn new(fx: Arc<Fx>, uri_prefix: &str) -> Self {
        Self {
            fx,
            uri_prefix: uri_prefix.to_owned(),
        }
    }
}

#[tonic::async_trait]
impl FxService for FxApi {
    async fn set_fx_rate(
        &self,
        request: Request<pb::SetFxRateRequest>,
    ) -> Result<Response<pb::SetFxRateResponse>, Status> {
        let actor = check(&request, &self.uri_prefix, Rpc::SetFxRate)?;
        let command = convert::fx::set_fx_rate(
            request.get_ref(),
            self.fx.settings(),
            tandem_runtime::time::now_micros(),
        )
        .map_err(to_status)?;
        let response = self.fx.set(command, actor).await.map_err(to_status)?;
        Ok(Response::new(stored(&response)?))
    }

    async fn get_fx_rate(
        &self,
        request: Request<pb::GetFxRateRequest>,
    ) -> Result<Response<pb::GetFxRateResponse>, Status> {
        check(&request, &self.uri_prefix, Rpc::GetFxRate)?;
        let (base, quote) = convert::fx::get_fx_rate(request.get_ref()).map_err(to_status)?;
        let rate = self.fx.get(base, quote).await.map_err(to_status)?;
        Ok(Response::new(pb::GetFxRateResponse {
            rate: Some(convert::fx::fx_rate(&rate)),
        }))
    }

    async fn list_fx_rates(
        &self,
        request: Request<pb::ListFxRatesRequest>,
    ) -> Result<Response<pb::ListFxRatesResponse>, Status> {
        check(&request, &self.uri_prefix, Rpc::ListFxRates)?;
        let (query, scope) = convert::fx::list_fx_rates(request.get_ref()).map_err(to_status)?;
        let (page, more) = self.fx.list(&query).await.map_err(to_status)?;
        Ok(Response::new(convert::fx::rates_page(&page, more, &scope)))
    }
}

/// `RiskService`.
pub struct RiskApi {
    risk: Arc<Risk>,
    uri_prefix: String,
}

impl RiskApi {
    /// The service over `risk`; callers are read from certificates with `uri_prefix`.
    pub fn new(risk: Arc<Risk>, uri_prefix: &str) -> Self {
        Self {
            risk,
            uri_prefix: uri_prefix.to_owned(),
        }
    }
}

#[tonic::async_trait]
impl RiskService for RiskApi {
    async fn get_risk_policy(
        &self,
        request: Request<pb::GetRiskPolicyRequest>,
    ) -> Result<Response<pb::GetRiskPolicyResponse>, Status> {
        check(&request, &self.uri_prefix, Rpc::GetRiskPolicy)?;
        let account = convert::risk::get_risk_policy(request.get_ref()).map_err(to_status)?;
        let policy = self.risk.get(&account).await.map_err(to_status)?;
        Ok(Response::new(pb::GetRiskPolicyResponse {
            policy: Some(convert::risk::policy_to_wire(&account, &policy)),
        }))
    }

    async fn set_risk_policy(
        &self,
        request: Request<pb::SetRiskPolicyRequest>,
    ) -> Result<Response<pb::SetRiskPolicyResponse>, Status> {
        let actor = check(&request, &self.uri_prefix, Rpc::SetRiskPolicy)?;
        let command = convert::risk::set_risk_policy(request.get_ref()).map_err(to_status)?;
        let response = self.risk.set(command, actor).await.map_err(to_status)?;
        Ok(Response::new(stored(&response)?))
    }
}
