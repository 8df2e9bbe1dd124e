//! The vault's error type: one enum for the service layer, mapped to gRPC in
//! `grpc::status` by one exhaustive match over its kinds ([`ErrorReason`]).

use tandem_runtime::database::StorageFailure;
use tandem_runtime::fields::FieldViolation;

/// The kinds of vault error, one per `ErrorInfo` reason (a database error by its class). The
/// one map from a kind to its status code is `grpc::status::code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorReason {
    /// `INVALID_ARGUMENT`.
    InvalidArgument,
    /// `ROLE_NOT_ALLOWED`.
    RoleNotAllowed,
    /// `IDENTITY_INVALID`.
    IdentityInvalid,
    /// `TOKEN_NOT_FOUND`.
    TokenNotFound,
    /// `TOKEN_REVOKED`.
    TokenRevoked,
    /// `TOKEN_EXPIRED`.
    TokenExpired,
    /// `REQUEST_ID_REUSED`.
    RequestIdReused,
    /// `REQUEST_IN_PROGRESS`.
    RequestInProgress,
    /// `CONCURRENT_UPDATE`.
    ConcurrentUpdate,
    /// `CHARGE_NOT_FOUND`.
    ChargeNotFound,
    /// `CHARGE_NOT_AUTHORIZED`.
    ChargeNotAuthorized,
    /// `CHARGE_ALREADY_CAPTURED`.
    ChargeAlreadyCaptured,
    /// `CHARGE_NOT_CAPTURED`.
    ChargeNotCaptured,
    /// `CURRENCY_MISMATCH`.
    CurrencyMismatch,
    /// `AMOUNT_EXCEEDS_APPROVED`.
    AmountExceedsApproved,
    /// `AMOUNT_EXCEEDS_REFUNDABLE`.
    AmountExceedsRefundable,
    /// `REFUND_LIMIT_REACHED`.
    RefundLimitReached,
    /// `CHARGE_OPERATION_IN_PROGRESS`.
    ChargeOperationInProgress,
    /// `OUTCOME_UNKNOWN`.
    OutcomeUnknown,
    /// `PROCESSOR_UNAVAILABLE`.
    ProcessorUnavailable,
    /// `PROCESSOR_TIMEOUT`.
    ProcessorTimeout,
    /// `PROCESSOR_REFUSED`.
    ProcessorRefused,
    /// `SETTLEMENT_FILE_TOO_LARGE`.
    SettlementFileTooLarge,
    /// `SETTLEMENT_RECORD_NOT_FOUND`.
    SettlementRecordNotFound,
    /// `KEY_ROTATED`.
    KeyRotated,
    /// `KEY_VERSION_NOT_FOUND`.
    KeyVersionNotFound,
    /// `KEY_VERSION_ACTIVE`.
    KeyVersionActive,
    /// `KEY_VERSION_IN_USE`.
    KeyVersionInUse,
    /// `SHARE_MALFORMED`.
    ShareMalformed,
    /// `UNSEAL_FAILED`.
    UnsealFailed,
    /// `VAULT_NOT_INITIALISED`.
    VaultNotInitialised,
    /// `VAULT_ALREADY_INITIALISED`.
    VaultAlreadyInitialised,
    /// `VAULT_SEALED`.
    VaultSealed,
    /// `KEY_BUDGET_EXHAUSTED`.
    KeyBudgetExhausted,
    /// `SHUTTING_DOWN`.
    ShuttingDown,
    /// `CARD_DATA_UNREADABLE`.
    CardDataUnreadable,
    /// `INTERNAL`.
    Internal,
    /// `STORAGE_UNAVAILABLE`.
    StorageUnavailable,
    /// `WRITE_CONFLICT`.
    WriteConflict,
    /// `CONSTRAINT_VIOLATED`.
    ConstraintViolated,
}

impl ErrorReason {
    /// Every kind.
    pub const ALL: [ErrorReason; 40] = [
        ErrorReason::InvalidArgument,
        ErrorReason::RoleNotAllowed,
        ErrorReason::IdentityInvalid,
        ErrorReason::TokenNotFound,
        ErrorReason::TokenRevoked,
        ErrorReason::TokenExpired,
        ErrorReason::RequestIdReused,
        ErrorReason::RequestInProgress,
        ErrorReason::ConcurrentUpdate,
        ErrorReason::ChargeNotFound,
        ErrorReason::ChargeNotAuthorized,
        ErrorReason::ChargeAlreadyCaptured,
        ErrorReason::ChargeNotCaptured,
        ErrorReason::CurrencyMismatch,
        ErrorReason::AmountExceedsApproved,
        ErrorReason::AmountExceedsRefundable,
        ErrorReason::RefundLimitReached,
        ErrorReason::ChargeOperationInProgress,
        ErrorReason::OutcomeUnknown,
        ErrorReason::ProcessorUnavailable,
        ErrorReason::ProcessorTimeout,
        ErrorReason::ProcessorRefused,
        ErrorReason::SettlementFileTooLarge,
        ErrorReason::SettlementRecordNotFound,
        ErrorReason::KeyRotated,
        ErrorReason::KeyVersionNotFound,
        ErrorReason::KeyVersionActive,
        ErrorReason::KeyVersionInUse,
        ErrorReason::ShareMalformed,
        ErrorReason::UnsealFailed,
        ErrorReason::VaultNotInitialised,
        ErrorReason::VaultAlreadyInitialised,
        ErrorReason::VaultSealed,
        ErrorReason::KeyBudgetExhausted,
        ErrorReason::ShuttingDown,
        ErrorReason::CardDataUnreadable,
        ErrorReason::Internal,
        ErrorReason::StorageUnavailable,
        ErrorReason::WriteConflict,
        ErrorReason::ConstraintViolated,
    ];

    /// The reason as clients and the audit log see it.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorReason::InvalidArgument => "INVALID_ARGUMENT",
            ErrorReason::RoleNotAllowed => "ROLE_NOT_ALLOWED",
            ErrorReason::IdentityInvalid => "IDENTITY_INVALID",
            ErrorReason::TokenNotFound => "TOKEN_NOT_FOUND",
            ErrorReason::TokenRevoked => "TOKEN_REVOKED",
            ErrorReason::TokenExpired => "TOKEN_EXPIRED",
            ErrorReason::RequestIdReused => "REQUEST_ID_REUSED",
            ErrorReason::RequestInProgress => "REQUEST_IN_PROGRESS",
            ErrorReason::ConcurrentUpdate => "CONCURRENT_UPDATE",
            ErrorReason::ChargeNotFound => "CHARGE_NOT_FOUND",
            ErrorReason::ChargeNotAuthorized => "CHARGE_NOT_AUTHORIZED",
            ErrorReason::ChargeAlreadyCaptured => "CHARGE_ALREADY_CAPTURED",
            ErrorReason::ChargeNotCaptured => "CHARGE_NOT_CAPTURED",
            ErrorReason::CurrencyMismatch => "CURRENCY_MISMATCH",
            ErrorReason::AmountExceedsApproved => "AMOUNT_EXCEEDS_APPROVED",
            ErrorReason::AmountExceedsRefundable => "AMOUNT_EXCEEDS_REFUNDABLE",
            ErrorReason::RefundLimitReached => "REFUND_LIMIT_REACHED",
            ErrorReason::ChargeOperationInProgress => "CHARGE_OPERATION_IN_PROGRESS",
            ErrorReason::OutcomeUnknown => "OUTCOME_UNKNOWN",
            ErrorReason::ProcessorUnavailable => "PROCESSOR_UNAVAILABLE",
            ErrorReason::ProcessorTimeout => "PROCESSOR_TIMEOUT",
            ErrorReason::ProcessorRefused => "PROCESSOR_REFUSED",
            ErrorReason::SettlementFileTooLarge => "SETTLEMENT_FILE_TOO_LARGE",
            ErrorReason::SettlementRecordNotFound => "SETTLEMENT_RECORD_NOT_FOUND",
            ErrorReason::KeyRotated => "KEY_ROTATED",
            ErrorReason::KeyVersionNotFound => "KEY_VERSION_NOT_FOUND",
            ErrorReason::KeyVersionActive => "KEY_VERSION_ACTIVE",
            ErrorReason::KeyVersionInUse => "KEY_VERSION_IN_USE",
            ErrorReason::ShareMalformed => "SHARE_MALFORMED",
            ErrorReason::UnsealFailed => "UNSEAL_FAILED",
            ErrorReason::VaultNotInitialised => "VAULT_NOT_INITIALISED",
            ErrorReason::VaultAlreadyInitialised => "VAULT_ALREADY_INITIALISED",
            ErrorReason::VaultSealed => "VAULT_SEALED",
            ErrorReason::KeyBudgetExhausted => "KEY_BUDGET_EXHAUSTED",
            ErrorReason::ShuttingDown => "SHUTTING_DOWN",
            ErrorReason::CardDataUnreadable => "CARD_DATA_UNREADABLE",
            ErrorReason::Internal => "INTERNAL",
            ErrorReason::StorageUnavailable => "STORAGE_UNAVAILABLE",
            ErrorReason::WriteConflict => "WRITE_CONFLICT",
            ErrorReason::ConstraintViolated => "CONSTRAINT_VIOLATED",
        }
    }

    /// The kind of a stored reason, if it is one this vault writes.
    pub fn parse(text: &str) -> Option<ErrorReason> {
        ErrorReason::ALL
            .into_iter()
            .find(|reason| reason.as_str() == text)
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
    /// The day's settlement file holds more records than the vault delivers in one file.
    #[error("the settlement file holds more than {records_max} records")]
    SettlementFileTooLarge {
        /// The limit (`connector.settlement_file_records_max`).
        records_max: u64,
    },
    /// The sandbox's settlement day has no such record.
    #[error("settlement record not found")]
    SettlementRecordNotFound,
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

impl From<Vec<FieldViolation>> for Error {
    fn from(violations: Vec<FieldViolation>) -> Self {
        Error::InvalidArgument(violations)
    }
}

impl Error {
    /// A single-field `InvalidArgument`.
    pub fn invalid(field: &'static str, description: impl ToString) -> Error {
        Error::InvalidArgument(vec![FieldViolation::new(field, description)])
    }

    /// What kind of error this is, without its detail.
    pub fn kind(&self) -> ErrorReason {
        match self {
            Error::InvalidArgument(_) => ErrorReason::InvalidArgument,
            Error::PermissionDenied { .. } => ErrorReason::RoleNotAllowed,
            Error::Unauthenticated => ErrorReason::IdentityInvalid,
            Error::TokenNotFound => ErrorReason::TokenNotFound,
            Error::TokenRevoked => ErrorReason::TokenRevoked,
            Error::TokenExpired => ErrorReason::TokenExpired,
            Error::RequestIdReused => ErrorReason::RequestIdReused,
            Error::RequestIdTaken => ErrorReason::RequestInProgress,
            Error::ConcurrentUpdate => ErrorReason::ConcurrentUpdate,
            Error::ChargeNotFound => ErrorReason::ChargeNotFound,
            Error::ChargeNotAuthorized => ErrorReason::ChargeNotAuthorized,
            Error::ChargeAlreadyCaptured => ErrorReason::ChargeAlreadyCaptured,
            Error::ChargeNotCaptured => ErrorReason::ChargeNotCaptured,
            Error::CurrencyMismatch => ErrorReason::CurrencyMismatch,
            Error::AmountExceedsApproved => ErrorReason::AmountExceedsApproved,
            Error::AmountExceedsRefundable => ErrorReason::AmountExceedsRefundable,
            Error::RefundLimitReached => ErrorReason::RefundLimitReached,
            Error::ChargeBusy => ErrorReason::ChargeOperationInProgress,
            Error::OutcomeUnknown => ErrorReason::OutcomeUnknown,
            Error::ProcessorUnavailable => ErrorReason::ProcessorUnavailable,
            Error::ProcessorTimeout => ErrorReason::ProcessorTimeout,
            Error::ProcessorRefused(_) => ErrorReason::ProcessorRefused,
            Error::SettlementFileTooLarge { .. } => ErrorReason::SettlementFileTooLarge,
            Error::SettlementRecordNotFound => ErrorReason::SettlementRecordNotFound,
            Error::KeyRetired => ErrorReason::KeyRotated,
            Error::KeyVersionNotFound => ErrorReason::KeyVersionNotFound,
            Error::KeyVersionActive => ErrorReason::KeyVersionActive,
            Error::KeyVersionInUse => ErrorReason::KeyVersionInUse,
            Error::ShareMalformed(_) => ErrorReason::ShareMalformed,
            Error::UnsealFailed => ErrorReason::UnsealFailed,
            Error::NotInitialised => ErrorReason::VaultNotInitialised,
            Error::AlreadyInitialised => ErrorReason::VaultAlreadyInitialised,
            Error::Sealed => ErrorReason::VaultSealed,
            Error::KeyBudgetExhausted => ErrorReason::KeyBudgetExhausted,
            Error::ShuttingDown => ErrorReason::ShuttingDown,
            Error::CardDataUnreadable => ErrorReason::CardDataUnreadable,
            Error::Corrupt(_) => ErrorReason::Internal,
            Error::Database(e) => match tandem_runtime::database::classify(e) {
                StorageFailure::Unavailable => ErrorReason::StorageUnavailable,
                StorageFailure::Conflict => ErrorReason::WriteConflict,
                StorageFailure::Constraint => ErrorReason::ConstraintViolated,
                StorageFailure::Other => ErrorReason::Internal,
            },
        }
    }

    /// The `google.rpc.ErrorInfo` reason clients switch on; also the audit row's outcome.
    pub fn reason(&self) -> &'static str {
        self.kind().as_str()
    }

    /// True for a database error that aborts the surrounding transaction.
    pub(crate) fn aborts_transaction(&self) -> bool {
        matches!(self, Error::Database(_))
    }
}

impl tandem_runtime::database::TransactionError for Error {
    fn is_transaction_conflict(&self) -> bool {
        matches!(self, Error::Database(e) if tandem_runtime::database::is_transaction_conflict(e))
    }
}
