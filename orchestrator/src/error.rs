//! The orchestrator's error type: one enum for the service layer, mapped to gRPC in
//! [`crate::grpc::status`] by one exhaustive match.

use tandem_money::Currency;
use tandem_runtime::fields::FieldViolation;

/// Everything an orchestrator operation can fail with. A payment that cannot be covered is not
/// an error: it is a payment that ends FAILED or PARTIALLY_PAID.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed; each violation names its field.
    #[error("invalid argument")]
    InvalidArgument(Vec<FieldViolation>),
    /// The caller's role may not call this RPC (or is no role this orchestrator knows).
    #[error("role {role} may not call this method")]
    PermissionDenied {
        /// The caller's role as its certificate names it.
        role: String,
    },
    /// The peer certificate names no valid caller.
    #[error("client certificate does not carry a valid identity")]
    Unauthenticated,
    /// No such card group.
    #[error("card group not found")]
    CardGroupNotFound,
    /// The card group is archived.
    #[error("card group is archived")]
    CardGroupArchived,
    /// The etag sent is not the group's current one.
    #[error("etag does not match")]
    EtagMismatch,
    /// A member's token is unknown to the vault, revoked or expired.
    #[error("a member's token is not usable")]
    TokenNotUsable {
        /// The member's field path, e.g. `card_group.members[1].token`.
        member: String,
        /// Why (the vault's reason).
        reason: String,
    },
    /// No such payment.
    #[error("payment not found")]
    PaymentNotFound,
    /// The payment is not in a refundable state, or captured nothing.
    #[error("payment is not refundable")]
    PaymentNotRefundable,
    /// The refund's currency is not the payment's.
    #[error("currency differs from the payment's")]
    CurrencyMismatch,
    /// The refund exceeds what remains refundable.
    #[error("amount exceeds the refundable amount")]
    AmountExceedsRefundable,
    /// The payment has its maximum number of refunds.
    #[error("refund limit reached")]
    RefundLimitReached,
    /// The payment has its maximum number of notes.
    #[error("note limit reached")]
    NoteLimitReached,
    /// No reconciliation run has the id.
    #[error("reconciliation run not found")]
    ReconciliationRunNotFound,
    /// No discrepancy has the id.
    #[error("discrepancy not found")]
    DiscrepancyNotFound,
    /// The discrepancy is cleared or resolved, an adjustment already waits for it, or a later
    /// run changed it since its adjustment was proposed.
    #[error("the discrepancy is not open")]
    DiscrepancyNotOpen,
    /// The discrepancy is pending: nothing to correct yet.
    #[error("the discrepancy is pending")]
    DiscrepancyPending,
    /// No adjustment has the id.
    #[error("adjustment not found")]
    AdjustmentNotFound,
    /// The adjustment was approved or rejected already.
    #[error("the adjustment is not proposed")]
    AdjustmentNotProposed,
    /// An adjustment's proposer tried to decide it, or a payment's creator to review it (four
    /// eyes).
    #[error("the identity that made a change may not decide it")]
    SameIdentity,
    /// `ReviewPayment` on a payment not waiting for review.
    #[error("the payment is not in review")]
    PaymentNotInReview,
    /// `ResolvePayment` on a payment not waiting for an operator.
    #[error("the payment does not need an operator")]
    PaymentNotNeedingOperator,
    /// `ResolvePayment` confirmed a capture or void the vault does not show done.
    #[error("the vault does not show charge {charge_id} captured or released")]
    ChargeNotSettled {
        /// The charge.
        charge_id: String,
    },
    /// `SetRiskPolicy` named a version that is no longer current.
    #[error("the risk policy changed since the version given")]
    RiskPolicyChanged,
    /// The processor's settlement file is malformed, too large, or was refused by the vault.
    #[error("the settlement file cannot be read: {0}")]
    SettlementFileInvalid(String),
    /// No webhook endpoint has the id (or it was deleted).
    #[error("webhook endpoint not found")]
    WebhookEndpointNotFound,
    /// `webhook.endpoints_max` endpoints exist.
    #[error("too many webhook endpoints")]
    WebhookEndpointsExhausted,
    /// A redelivery's range holds more than `webhook.redeliver_max` events.
    #[error("too many events to redeliver")]
    RedeliveryTooLarge,
    /// `webhook.secret_key` is not set: webhooks are off.
    #[error("webhooks are not configured")]
    WebhooksNotConfigured,
    /// The rate source has no rate for the pair (`GetFxRate`).
    #[error("fx rate not found")]
    FxRateNotFound,
    /// A payment needs a conversion the rate source has no rate for.
    #[error("no fx rate from {from} to {to}")]
    FxRateMissing {
        /// The currency converted from (the invoice's).
        from: Currency,
        /// The currency converted to (the card's).
        to: Currency,
    },
    /// A payment needs a conversion whose rate is older than `fx.rate_age_s_max`.
    #[error("the fx rate from {from} to {to} is stale")]
    FxRateStale {
        /// The currency converted from (the invoice's).
        from: Currency,
        /// The currency converted to (the card's).
        to: Currency,
    },
    /// The request id was used before for a different request.
    #[error("request_id was already used for a different request")]
    RequestIdReused,
    /// Another call with the same request id is being processed.
    #[error("the same request is being processed; retry")]
    RequestInProgress,
    /// The vault could not be reached to check tokens.
    #[error("the vault is unavailable")]
    VaultUnavailable,
    /// The server is shutting down.
    #[error("shutting down")]
    ShuttingDown,
    /// Stored data does not decode or breaks an invariant: a bug or tampering.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

impl tandem_runtime::database::TransactionError for Error {
    fn is_transaction_conflict(&self) -> bool {
        matches!(self, Error::Database(e) if tandem_runtime::database::is_transaction_conflict(e))
    }
}

impl From<tandem_ledger::LedgerError> for Error {
    fn from(error: tandem_ledger::LedgerError) -> Self {
        match error {
            tandem_ledger::LedgerError::Database(e) => Error::Database(e),
            other => Error::Corrupt(format!("ledger: {other}")),
        }
    }
}

impl Error {
    /// The `ErrorInfo` reason clients switch on.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::InvalidArgument(_) => "INVALID_ARGUMENT",
            Error::PermissionDenied { .. } => "ROLE_NOT_ALLOWED",
            Error::Unauthenticated => "IDENTITY_INVALID",
            Error::CardGroupNotFound => "CARD_GROUP_NOT_FOUND",
            Error::CardGroupArchived => "CARD_GROUP_ARCHIVED",
            Error::EtagMismatch => "ETAG_MISMATCH",
            Error::TokenNotUsable { .. } => "TOKEN_NOT_USABLE",
            Error::PaymentNotFound => "PAYMENT_NOT_FOUND",
            Error::PaymentNotRefundable => "PAYMENT_NOT_REFUNDABLE",
            Error::CurrencyMismatch => "CURRENCY_MISMATCH",
            Error::AmountExceedsRefundable => "AMOUNT_EXCEEDS_REFUNDABLE",
            Error::RefundLimitReached => "REFUND_LIMIT_REACHED",
            Error::NoteLimitReached => "NOTE_LIMIT_REACHED",
            Error::ReconciliationRunNotFound => "RECONCILIATION_RUN_NOT_FOUND",
            Error::DiscrepancyNotFound => "DISCREPANCY_NOT_FOUND",
            Error::DiscrepancyNotOpen => "DISCREPANCY_NOT_OPEN",
            Error::DiscrepancyPending => "DISCREPANCY_PENDING",
            Error::AdjustmentNotFound => "ADJUSTMENT_NOT_FOUND",
            Error::AdjustmentNotProposed => "ADJUSTMENT_NOT_PROPOSED",
            Error::SameIdentity => "SAME_IDENTITY",
            Error::PaymentNotInReview => "PAYMENT_NOT_IN_REVIEW",
            Error::PaymentNotNeedingOperator => "PAYMENT_NOT_NEEDING_OPERATOR",
            Error::ChargeNotSettled { .. } => "CHARGE_NOT_SETTLED",
            Error::RiskPolicyChanged => "RISK_POLICY_CHANGED",
            Error::SettlementFileInvalid(_) => "SETTLEMENT_FILE_INVALID",
            Error::WebhookEndpointNotFound => "WEBHOOK_ENDPOINT_NOT_FOUND",
            Error::WebhookEndpointsExhausted => "WEBHOOK_ENDPOINTS_EXHAUSTED",
            Error::RedeliveryTooLarge => "REDELIVERY_TOO_LARGE",
            Error::WebhooksNotConfigured => "WEBHOOKS_NOT_CONFIGURED",
            Error::FxRateNotFound => "FX_RATE_NOT_FOUND",
            Error::FxRateMissing { .. } => "FX_RATE_MISSING",
            Error::FxRateStale { .. } => "FX_RATE_STALE",
            Error::RequestIdReused => "REQUEST_ID_REUSED",
            Error::RequestInProgress => "REQUEST_IN_PROGRESS",
            Error::VaultUnavailable => "VAULT_UNAVAILABLE",
            Error::ShuttingDown => "SHUTTING_DOWN",
            Error::Database(e) => tandem_runtime::database::classify(e).reason(),
            Error::Corrupt(_) => "INTERNAL",
        }
    }

    /// An `INVALID_ARGUMENT` for one field.
    pub fn invalid(field: impl Into<String>, description: impl ToString) -> Error {
        Error::InvalidArgument(vec![FieldViolation::new(field, description)])
    }
}

/// True when a statement gave up waiting for a lock (`lock_not_available`): another
/// transaction holds the row, for example the first call of a request id.
pub fn is_lock_timeout(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code == "55P03")
}

impl From<Vec<FieldViolation>> for Error {
    fn from(violations: Vec<FieldViolation>) -> Self {
        Error::InvalidArgument(violations)
    }
}
