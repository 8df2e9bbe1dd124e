//! Who may call what: one table from RPC to the roles allowed (DESIGN section 2), and the
//! check every handler runs first.

use tandem_runtime::admission::RpcClass;
use tandem_tls::identity::{Caller, IdentityError, Role, caller_of};

use crate::error::Error;

/// Every RPC the orchestrator serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rpc {
    /// `CardGroupService/CreateCardGroup`
    CreateCardGroup,
    /// `CardGroupService/GetCardGroup`
    GetCardGroup,
    /// `CardGroupService/ListCardGroups`
    ListCardGroups,
    /// `CardGroupService/UpdateCardGroup`
    UpdateCardGroup,
    /// `CardGroupService/DeleteCardGroup`
    DeleteCardGroup,
    /// `PaymentService/CreatePayment`
    CreatePayment,
    /// `PaymentService/GetPayment`
    GetPayment,
    /// `PaymentService/ListPayments`
    ListPayments,
    /// `PaymentService/RefundPayment`
    RefundPayment,
    /// `PaymentService/WatchPayment`
    WatchPayment,
    /// `PaymentService/AddPaymentNote`
    AddPaymentNote,
    /// `PaymentService/ListEvents`
    ListEvents,
    /// `LedgerService/GetBalances`
    GetBalances,
    /// `LedgerService/ListEntries`
    ListEntries,
    /// `LedgerService/GetSpendReport`
    GetSpendReport,
    /// `LedgerService/ExportLedger`
    ExportLedger,
    /// `ReconciliationService/RunReconciliation`
    RunReconciliation,
    /// `ReconciliationService/GetReconciliationRun`
    GetReconciliationRun,
    /// `ReconciliationService/ListDiscrepancies`
    ListDiscrepancies,
    /// `ReconciliationService/ProposeAdjustment`
    ProposeAdjustment,
    /// `ReconciliationService/ApproveAdjustment`
    ApproveAdjustment,
    /// `ReconciliationService/RejectAdjustment`
    RejectAdjustment,
    /// `WebhookService/CreateWebhookEndpoint`
    CreateWebhookEndpoint,
    /// `WebhookService/GetWebhookEndpoint`
    GetWebhookEndpoint,
    /// `WebhookService/ListWebhookEndpoints`
    ListWebhookEndpoints,
    /// `WebhookService/UpdateWebhookEndpoint`
    UpdateWebhookEndpoint,
    /// `WebhookService/DeleteWebhookEndpoint`
    DeleteWebhookEndpoint,
    /// `WebhookService/RotateWebhookSecret`
    RotateWebhookSecret,
    /// `WebhookService/ListWebhookDeliveries`
    ListWebhookDeliveries,
    /// `WebhookService/RedeliverEvents`
    RedeliverEvents,
    /// `FxService/SetFxRate`
    SetFxRate,
    /// `FxService/GetFxRate`
    GetFxRate,
    /// `FxService/ListFxRates`
    ListFxRates,
    /// `PaymentService/ReviewPayment`
    ReviewPayment,
    /// `PaymentService/ResolvePayment`
    ResolvePayment,
    /// `RiskService/GetRiskPolicy`
    GetRiskPolicy,
    /// `RiskService/SetRiskPolicy`
    SetRiskPolicy,
}

impl Rpc {
    /// Every RPC, for tests that check the table is complete.
    pub const ALL: [Rpc; 37] = [
        Rpc::CreateCardGroup,
        Rpc::GetCardGroup,
        Rpc::ListCardGroups,
        Rpc::UpdateCardGroup,
        Rpc::DeleteCardGroup,
        Rpc::CreatePayment,
        Rpc::GetPayment,
        Rpc::ListPayments,
        Rpc::RefundPayment,
        Rpc::WatchPayment,
        Rpc::AddPaymentNote,
        Rpc::ListEvents,
        Rpc::GetBalances,
        Rpc::ListEntries,
        Rpc::GetSpendReport,
        Rpc::ExportLedger,
        Rpc::RunReconciliation,
        Rpc::GetReconciliationRun,
        Rpc::ListDiscrepancies,
        Rpc::ProposeAdjustment,
        Rpc::ApproveAdjustment,
        Rpc::RejectAdjustment,
        Rpc::CreateWebhookEndpoint,
        Rpc::GetWebhookEndpoint,
        Rpc::ListWebhookEndpoints,
        Rpc::UpdateWebhookEndpoint,
        Rpc::DeleteWebhookEndpoint,
        Rpc::RotateWebhookSecret,
        Rpc::ListWebhookDeliveries,
        Rpc::RedeliverEvents,
        Rpc::SetFxRate,
        Rpc::GetFxRate,
        Rpc::ListFxRates,
        Rpc::ReviewPayment,
        Rpc::ResolvePayment,
        Rpc::GetRiskPolicy,
        Rpc::SetRiskPolicy,
    ];

    /// The full gRPC method name.
    pub const fn method(self) -> &'static str {
        match self {
            Rpc::CreateCardGroup => "tandem.orchestrator.v1.CardGroupService/CreateCardGroup",
            Rpc::GetCardGroup => "tandem.orchestrator.v1.CardGroupService/GetCardGroup",
            Rpc::ListCardGroups => "tandem.orchestrator.v1.CardGroupService/ListCardGroups",
            Rpc::UpdateCardGroup => "tandem.orchestrator.v1.CardGroupService/UpdateCardGroup",
            Rpc::DeleteCardGroup => "tandem.orchestrator.v1.CardGroupService/DeleteCardGroup",
            Rpc::CreatePayment => "tandem.orchestrator.v1.PaymentService/CreatePayment",
            Rpc::GetPayment => "tandem.orchestrator.v1.PaymentService/GetPayment",
            Rpc::ListPayments => "tandem.orchestrator.v1.PaymentService/ListPayments",
            Rpc::RefundPayment => "tandem.orchestrator.v1.PaymentService/RefundPayment",
            Rpc::WatchPayment => "tandem.orchestrator.v1.PaymentService/WatchPayment",
            Rpc::AddPaymentNote => "tandem.orchestrator.v1.PaymentService/AddPaymentNote",
            Rpc::ListEvents => "tandem.orchestrator.v1.PaymentService/ListEvents",
            Rpc::GetBalances => "tandem.orchestrator.v1.LedgerService/GetBalances",
            Rpc::ListEntries => "tandem.orchestrator.v1.LedgerService/ListEntries",
            Rpc::GetSpendReport => "tandem.orchestrator.v1.LedgerService/GetSpendReport",
            Rpc::ExportLedger => "tandem.orchestrator.v1.LedgerService/ExportLedger",
            Rpc::RunReconciliation => {
                "tandem.orchestrator.v1.ReconciliationService/RunReconciliation"
            }
            Rpc::GetReconciliationRun => {
                "tandem.orchestrator.v1.ReconciliationService/GetReconciliationRun"
            }
            Rpc::ListDiscrepancies => {
                "tandem.orchestrator.v1.ReconciliationService/ListDiscrepancies"
            }
            Rpc::ProposeAdjustment => {
                "tandem.orchestrator.v1.ReconciliationService/ProposeAdjustment"
            }
            Rpc::ApproveAdjustment => {
                "tandem.orchestrator.v1.ReconciliationService/ApproveAdjustment"
            }
            Rpc::RejectAdjustment => {
                "tandem.orchestrator.v1.ReconciliationService/RejectAdjustment"
            }
            Rpc::CreateWebhookEndpoint => {
                "tandem.orchestrator.v1.WebhookService/CreateWebhookEndpoint"
            }
            Rpc::GetWebhookEndpoint => "tandem.orchestrator.v1.WebhookService/GetWebhookEndpoint",
            Rpc::ListWebhookEndpoints => {
                "tandem.orchestrator.v1.WebhookService/ListWebhookEndpoints"
            }
            Rpc::UpdateWebhookEndpoint => {
                "tandem.orchestrator.v1.WebhookService/UpdateWebhookEndpoint"
            }
            Rpc::DeleteWebhookEndpoint => {
                "tandem.orchestrator.v1.WebhookService/DeleteWebhookEndpoint"
            }
            Rpc::RotateWebhookSecret => "tandem.orchestrator.v1.WebhookService/RotateWebhookSecret",
            Rpc::ListWebhookDeliveries => {
                "tandem.orchestrator.v1.WebhookService/ListWebhookDeliveries"
            }
            Rpc::RedeliverEvents => "tandem.orchestrator.v1.WebhookService/RedeliverEvents",
            Rpc::SetFxRate => "tandem.orchestrator.v1.FxService/SetFxRate",
            Rpc::GetFxRate => "tandem.orchestrator.v1.FxService/GetFxRate",
            Rpc::ListFxRates => "tandem.orchestrator.v1.FxService/ListFxRates",
            Rpc::ReviewPayment => "tandem.orchestrator.v1.PaymentService/ReviewPayment",
            Rpc::ResolvePayment => "tandem.orchestrator.v1.PaymentService/ResolvePayment",
            Rpc::GetRiskPolicy => "tandem.orchestrator.v1.RiskService/GetRiskPolicy",
            Rpc::SetRiskPolicy => "tandem.orchestrator.v1.RiskService/SetRiskPolicy",
        }
    }

    /// The roles allowed to call this RPC.
    pub const fn roles(self) -> &'static [Role] {
        match self {
            Rpc::CreateCardGroup | Rpc::UpdateCardGroup | Rpc::DeleteCardGroup => &[Role::Treasury],
            Rpc::GetCardGroup | Rpc::ListCardGroups => &[Role::Treasury, Role::Payer, Role::Reader],
            Rpc::CreatePayment | Rpc::RefundPayment => &[Role::Payer],
            // Reviewers read payments to decide them (the review queue is a list).
            Rpc::GetPayment | Rpc::ListPayments | Rpc::WatchPayment => {
                &[Role::Payer, Role::Treasury, Role::Reader, Role::Reviewer]
            }
            Rpc::ReviewPayment => &[Role::Reviewer],
            // The treasury steers the money: it resolves what the vault refused for good.
            Rpc::ResolvePayment => &[Role::Treasury],
            // Risk policies are set by the treasury and read by whoever judges by them.
            Rpc::SetRiskPolicy => &[Role::Treasury],
            Rpc::GetRiskPolicy => &[Role::Treasury, Role::Reviewer, Role::Reader],
            Rpc::AddPaymentNote => &[Role::Payer, Role::Treasury],
            Rpc::ListEvents
            | Rpc::GetBalances
            | Rpc::ListEntries
            | Rpc::GetSpendReport
            | Rpc::ExportLedger => &[Role::Treasury, Role::Reader],
            Rpc::RunReconciliation | Rpc::ProposeAdjustment => &[Role::Treasury],
            Rpc::GetReconciliationRun | Rpc::ListDiscrepancies => {
                &[Role::Treasury, Role::Approver, Role::Reader]
            }
            Rpc::ApproveAdjustment | Rpc::RejectAdjustment => &[Role::Approver],
            Rpc::CreateWebhookEndpoint
            | Rpc::GetWebhookEndpoint
            | Rpc::ListWebhookEndpoints
            | Rpc::UpdateWebhookEndpoint
            | Rpc::DeleteWebhookEndpoint
            | Rpc::RotateWebhookSecret
            | Rpc::ListWebhookDeliveries
            | Rpc::RedeliverEvents => &[Role::Treasury],
            // Rates are set by the treasury and read by whoever reads the ledger they convert.
            Rpc::SetFxRate => &[Role::Treasury],
            Rpc::GetFxRate | Rpc::ListFxRates => &[Role::Treasury, Role::Reader],
        }
    }

    /// True if `role` may call this RPC.
    pub fn allows(self, role: Role) -> bool {
        self.roles().contains(&role)
    }

    /// The class its calls are limited in, per caller (`[limits]`).
    pub const fn class(self) -> RpcClass {
        match self {
            Rpc::GetCardGroup
            | Rpc::ListCardGroups
            | Rpc::GetPayment
            | Rpc::ListPayments
            | Rpc::ListEvents
            | Rpc::GetBalances
            | Rpc::ListEntries
            | Rpc::GetSpendReport
            | Rpc::GetReconciliationRun
            | Rpc::ListDiscrepancies
            | Rpc::GetWebhookEndpoint
            | Rpc::ListWebhookEndpoints
            | Rpc::ListWebhookDeliveries
            | Rpc::GetFxRate
            | Rpc::ListFxRates
            | Rpc::GetRiskPolicy => RpcClass::Read,
            Rpc::CreateCardGroup
            | Rpc::UpdateCardGroup
            | Rpc::DeleteCardGroup
            | Rpc::CreatePayment
            | Rpc::RefundPayment
            | Rpc::AddPaymentNote
            | Rpc::RunReconciliation
            | Rpc::ProposeAdjustment
            | Rpc::ApproveAdjustment
            | Rpc::RejectAdjustment
            | Rpc::CreateWebhookEndpoint
            | Rpc::UpdateWebhookEndpoint
            | Rpc::DeleteWebhookEndpoint
            | Rpc::RotateWebhookSecret
            | Rpc::RedeliverEvents
            | Rpc::SetFxRate
            | Rpc::ReviewPayment
            | Rpc::ResolvePayment
            | Rpc::SetRiskPolicy => RpcClass::Write,
            Rpc::WatchPayment | Rpc::ExportLedger => RpcClass::Stream,
        }
    }

    /// The class of the call to gRPC path `path` (`/package.Service/Method`); health and
    /// reflection read.
    pub fn class_of_path(path: &str) -> RpcClass {
        let method = path.strip_prefix('/').unwrap_or(path);
        Rpc::ALL
            .iter()
            .find(|rpc| rpc.method() == method)
            .map_or(RpcClass::Read, |rpc| rpc.class())
    }
}

/// The caller of `request`, if its role may call `rpc`.
pub fn authorize<T>(
    request: &tonic::Request<T>,
    uri_prefix: &str,
    rpc: Rpc,
) -> Result<Caller, Error> {
    let refuse = |identity: &str, role: &str| {
        tracing::warn!(
            method = rpc.method(),
            role,
            caller = identity,
            "role not allowed"
        );
        Error::PermissionDenied {
            role: role.to_owned(),
        }
    };
    match caller_of(request, uri_prefix) {
        Ok(caller) if rpc.allows(caller.role) => Ok(caller),
        Ok(caller) => Err(refuse(&caller.to_string(), caller.role.as_str())),
        // A proven caller whose role this orchestrator does not know lacks a role; it is not
        // unauthenticated.
        Err(IdentityError::UnknownRole { identity, role }) => Err(refuse(&identity, &role)),
        Err(_) => Err(Error::Unauthenticated),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table matches DESIGN sections 2 and 11 and the services' docs: treasury manages
    /// card groups, payers pay and refund, both write notes, treasury and readers read the
    /// ledger and the event feed (payers do not), every orchestrator role reads payments and
    /// groups, and the vault's roles reach nothing here. Reconciliation: treasury runs and
    /// proposes, approvers alone decide, all three read. Webhooks are the treasury's alone.
    /// Rates (DESIGN section 10): treasury sets, treasury and readers (the ledger's readers)
    /// read. Risk (section 12): treasury sets policies, treasury, reviewers and readers read
    /// them; reviewers alone review, and read payments. The treasury alone resolves a payment
    /// that needs an operator.
    #[test]
    fn role_table() {
        for rpc in Rpc::ALL {
            let payment_reads =
                matches!(rpc, Rpc::GetPayment | Rpc::ListPayments | Rpc::WatchPayment);
            assert_eq!(
                rpc.allows(Role::Reviewer),
                payment_reads || matches!(rpc, Rpc::ReviewPayment | Rpc::GetRiskPolicy),
                "{rpc:?}"
            );
            if rpc == Rpc::ReviewPayment {
                for role in Role::ALL {
                    assert_eq!(rpc.allows(role), role == Role::Reviewer, "{rpc:?} {role}");
                }
                continue;
            }
            if rpc.method().contains("RiskService/") {
                let reads = rpc == Rpc::GetRiskPolicy;
                for role in Role::ALL {
                    let allowed = role == Role::Treasury
                        || (reads && matches!(role, Role::Reader | Role::Reviewer));
                    assert_eq!(rpc.allows(role), allowed, "{rpc:?} {role}");
                }
                continue;
            }
            if rpc.method().contains("FxService/") {
                let reads = matches!(rpc, Rpc::GetFxRate | Rpc::ListFxRates);
                for role in Role::ALL {
                    let allowed = role == Role::Treasury || (reads && role == Role::Reader);
                    assert_eq!(rpc.allows(role), allowed, "{rpc:?} {role}");
                }
                continue;
            }
            if rpc.method().contains("WebhookService/") {
                for role in Role::ALL {
                    assert_eq!(rpc.allows(role), role == Role::Treasury, "{rpc:?} {role}");
                }
                continue;
            }
            if rpc.method().contains("ReconciliationService/") {
                let reads = matches!(rpc, Rpc::GetReconciliationRun | Rpc::ListDiscrepancies);
                let decides = matches!(rpc, Rpc::ApproveAdjustment | Rpc::RejectAdjustment);
                assert_eq!(rpc.allows(Role::Treasury), !decides, "{rpc:?}");
                assert_eq!(rpc.allows(Role::Approver), reads || decides, "{rpc:?}");
                assert_eq!(rpc.allows(Role::Reader), reads, "{rpc:?}");
                assert!(!rpc.allows(Role::Payer), "{rpc:?}");
                continue;
            }
            assert!(!rpc.allows(Role::Approver), "{rpc:?}");
            let groups = rpc.method().contains("CardGroupService/");
            let books = rpc.method().contains("LedgerService/") || rpc == Rpc::ListEvents;
            let reads = matches!(
                rpc,
                Rpc::GetCardGroup
                    | Rpc::ListCardGroups
                    | Rpc::GetPayment
                    | Rpc::ListPayments
                    | Rpc::WatchPayment
            );
            let notes = rpc == Rpc::AddPaymentNote;
            let resolves = rpc == Rpc::ResolvePayment;
            assert_eq!(
                rpc.allows(Role::Treasury),
                groups || reads || books || notes || resolves,
                "{rpc:?}"
            );
            assert_eq!(
                rpc.allows(Role::Payer),
                (!groups && !books && !resolves) || reads,
                "{rpc:?}"
            );
            assert_eq!(rpc.allows(Role::Reader), reads || books, "{rpc:?}");
            for role in [
                Role::Tokenizer,
                Role::Orchestrator,
                Role::Admin,
                Role::Auditor,
                Role::Service,
            ] {
                assert!(!rpc.allows(role), "{rpc:?} {role}");
            }
        }
    }

    /// Paths map to their RPC's class: reads read, the one stream streams, the rest write;
    /// health and reflection are reads.
    #[test]
    fn classes() {
        for rpc in Rpc::ALL {
            let name = rpc.method().rsplit('/').next().unwrap_or_default();
            let expected = if rpc == Rpc::WatchPayment || rpc == Rpc::ExportLedger {
                RpcClass::Stream
            } else if name.starts_with("Get") || name.starts_with("List") {
                RpcClass::Read
            } else {
                RpcClass::Write
            };
            assert_eq!(Rpc::class_of_path(&format!("/{}", rpc.method())), expected);
        }
        assert_eq!(
            Rpc::class_of_path("/grpc.health.v1.Health/Check"),
            RpcClass::Read
        );
    }
}
