//! The vault's error type: one enum for the service layer, mapped to gRPC in
//! `grpc::status` by one exhaustive match.

/// One violated field of a request, for `google.rpc.BadRequest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The field's path in the request, e.g. `pan` or `expiry_month`.
    pub field: &'static str,
    /// What is wrong, never echoing the value.
    pub description: String,
}

impl FieldViolation {
    /// A violation of `field`.
    pub fn new(field: &'static str, description: impl ToString) -> Self {
        Self {
            field,
            description: description.to_string(),
        }
    }
}

/// Everything a vault operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed; each violation names its field.
    #[error("invalid argument")]
    InvalidArgument(Vec<FieldViolation>),
    /// The caller's role may not call this RPC (or is no role this vault knows).
    #[error("role {role} may not call this method")]
    PermissionDenied {
        /// The caller's role as its certificate names it.
        role: String,
    },
    /// The peer certificate names no valid caller.
    #[error("client certificate does not carry a valid identity")]
    Unauthenticated,
    /// No such token.
    #[error("token not found")]
    TokenNotFound,
    /// The token was revoked.
    #[error("token has been revoked")]
    TokenRevoked,
    /// The token's time to live ran out.
    #[error("token has expired")]
    TokenExpired,
    /// The request id was used before with different parameters.
    #[error("request_id was already used for a different request")]
    RequestIdReused,
    /// Another transaction recorded this request id first; handled inside the writer by
    /// replaying that result, and surfaced only if even the replay races.
    #[error("the same request is being processed; retry")]
    RequestIdTaken,
    /// The card changed while an update was being prepared, more often than retries allow.
    #[error("the card changed concurrently; retry")]
    ConcurrentUpdate,
    /// No such charge.
    #[error("charge not found")]
    ChargeNotFound,
    /// The charge is not AUTHORIZED (declined, voided, pending or captured).
    #[error("charge is not authorized")]
    ChargeNotAuthorized,
    /// The charge was captured; it can only be refunded.
    #[error("charge was already captured")]
    ChargeAlreadyCaptured,
    /// The charge has nothing captured to refund.
    #[error("charge is not captured")]
    ChargeNotCaptured,
    /// The amount's currency is not the charge's.
    #[error("currency differs from the charge's")]
    CurrencyMismatch,
    /// A capture above the approved amount.
    #[error("amount exceeds the approved amount")]
    AmountExceedsApproved,
    /// A refund above what remains refundable.
    #[error("amount exceeds the refundable amount")]
    AmountExceedsRefundable,
    /// The charge has its maximum number of refunds.
    #[error("the charge has the maximum number of refunds")]
    RefundLimitReached,
    /// Another capture or void of the charge is still in flight.
    #[error("another operation on the charge is in progress; retry")]
    ChargeBusy,
    /// The processor's answer about a pending charge is not known yet.
    #[error("the outcome of the authorization is not known yet; retry")]
    OutcomeUnknown,
    /// The processor is unreachable or its circuit breaker is open; nothing was done.
    #[error("processor unavailable")]
    ProcessorUnavailable,
    /// The processor did not answer in time; the outcome is unknown until resolved.
    #[error("processor did not answer in time")]
    ProcessorTimeout,
    /// The processor refused a capture, void or refund.
    #[error("processor refused the operation ({0})")]
    ProcessorRefused(&'static str),
    /// A card was sealed under a data-key version retired meanwhile; it must be sealed again
    /// under the current one (handled inside the vault; surfaced only if retries run out).
    #[error("the data key version was retired; retry")]
    KeyRetired,
    /// No such data-key version.
    #[error("data key version not found")]
    KeyVersionNotFound,
    /// The version is the active one.
    #[error("the data key version is active; rotate first")]
    KeyVersionActive,
    /// Rows still use the version.
    #[error("rows still use the data key version")]
    KeyVersionInUse,
    /// An unseal share is not a share.
    #[error("malformed share: {0}")]
    ShareMalformed(&'static str),
    /// The collected shares do not rebuild the root key.
    #[error("the shares do not rebuild the root key")]
    UnsealFailed,
    /// The vault's keys were never initialised (`tandemctl keys init`).
    #[error("the vault's keys are not initialised")]
    NotInitialised,
    /// The vault's keys exist already.
    #[error("the vault's keys are already initialised")]
    AlreadyInitialised,
    /// The vault is sealed: no data operation until custodians unseal it.
    #[error("vault is sealed")]
    Sealed,
    /// The active data key used up its encryption budget and no new key is active yet.
    #[error("data key encryption budget exhausted")]
    KeyBudgetExhausted,
    /// The service is shutting down.
    #[error("vault is shutting down")]
    ShuttingDown,
    /// A card's stored data does not open under its key and AAD (corrupted, or moved from
    /// another row): the card cannot be charged or updated until it is tokenized again.
    /// Nothing was committed for the call but its audit row.
    #[error("the card's stored data does not open")]
    CardDataUnreadable,
    /// A stored record failed an integrity check.
    #[error("stored record failed an integrity check: {0}")]
    Corrupt(&'static str),
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl Error {
    /// A single-field `InvalidArgument`.
    pub fn invalid(field: &'static str, description: impl ToString) -> Error {
        Error::InvalidArgument(vec![FieldViolation::new(field, description)])
    }

    /// The `google.rpc.ErrorInfo` reason clients switch on; also the audit row's outcome.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::InvalidArgument(_) => "INVALID_ARGUMENT",
            Error::PermissionDenied { .. } => "ROLE_NOT_ALLOWED",
            Error::Unauthenticated => "IDENTITY_INVALID",
            Error::TokenNotFound => "TOKEN_NOT_FOUND",
            Error::TokenRevoked => "TOKEN_REVOKED",
            Error::TokenExpired => "TOKEN_EXPIRED",
            Error::RequestIdReused => "REQUEST_ID_REUSED",
            Error::RequestIdTaken => "REQUEST_IN_PROGRESS",
            Error::ConcurrentUpdate => "CONCURRENT_UPDATE",
            Error::ChargeNotFound => "CHARGE_NOT_FOUND",
            Error::ChargeNotAuthorized => "CHARGE_NOT_AUTHORIZED",
            Error::ChargeAlreadyCaptured => "CHARGE_ALREADY_CAPTURED",
            Error::ChargeNotCaptured => "CHARGE_NOT_CAPTURED",
            Error::CurrencyMismatch => "CURRENCY_MISMATCH",
            Error::AmountExceedsApproved => "AMOUNT_EXCEEDS_APPROVED",
            Error::AmountExceedsRefundable => "AMOUNT_EXCEEDS_REFUNDABLE",
            Error::RefundLimitReached => "REFUND_LIMIT_REACHED",
            Error::ChargeBusy => "CHARGE_OPERATION_IN_PROGRESS",
            Error::OutcomeUnknown => "OUTCOME_UNKNOWN",
            Error::ProcessorUnavailable => "PROCESSOR_UNAVAILABLE",
            Error::ProcessorTimeout => "PROCESSOR_TIMEOUT",
            Error::ProcessorRefused(_) => "PROCESSOR_REFUSED",
            Error::KeyRetired => "KEY_ROTATED",
            Error::KeyVersionNotFound => "KEY_VERSION_NOT_FOUND",
            Error::KeyVersionActive => "KEY_VERSION_ACTIVE",
            Error::KeyVersionInUse => "KEY_VERSION_IN_USE",
            Error::ShareMalformed(_) => "SHARE_MALFORMED",
            Error::UnsealFailed => "UNSEAL_FAILED",
            Error::NotInitialised => "VAULT_NOT_INITIALISED",
            Error::AlreadyInitialised => "VAULT_ALREADY_INITIALISED",
            Error::Sealed => "VAULT_SEALED",
            Error::KeyBudgetExhausted => "KEY_BUDGET_EXHAUSTED",
            Error::ShuttingDown => "SHUTTING_DOWN",
            Error::CardDataUnreadable => "CARD_DATA_UNREADABLE",
            Error::Corrupt(_) => "INTERNAL",
            Error::Database(e) => tandem_runtime::database::classify(e).reason(),
        }
    }

    /// True for a database error that aborts the surrounding transaction.
    pub(crate) fn aborts_transaction(&self) -> bool {
        matches!(self, Error::Database(_))
    }
}
