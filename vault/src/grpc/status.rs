//! The one map from [`Error`] to `tonic::Status` (AIP-193): every status carries an
//! `ErrorInfo` with a reason clients can switch on and the domain `vault.tandem`;
//! `INVALID_ARGUMENT` also carries a `BadRequest` naming each field. Internal failures give the
//! client a generic message; their detail goes to the log only.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

use crate::error::{Error, ErrorReason};

/// The `ErrorInfo` domain of every vault error.
pub const DOMAIN: &str = "vault.tandem";

/// Converts a vault error into a gRPC status.
pub fn to_status(error: Error) -> Status {
    let kind = error.kind();
    let reason = kind.as_str();
    let code = code(kind);
    let message = match &error {
        Error::InvalidArgument(_) => "the request has invalid fields",
        Error::PermissionDenied { .. } => "the caller's role may not call this method",
        Error::Unauthenticated => "the client certificate does not carry a valid Tandem identity",
        Error::TokenNotFound => "token not found",
        Error::TokenRevoked => "token has been revoked",
        Error::TokenExpired => "token has expired",
        Error::RequestIdReused => "request_id was already used for a different request",
        Error::RequestIdTaken => "the same request is being processed; retry",
        Error::ConcurrentUpdate => "the card changed concurrently; retry",
        Error::ChargeNotFound => "charge not found",
        Error::ChargeNotAuthorized => {
            "the charge is not authorized (declined, voided, pending or already captured)"
        }
        Error::ChargeAlreadyCaptured => "the charge was captured; refund it instead",
        Error::ChargeNotCaptured => "the charge has no captured amount to refund",
        Error::CurrencyMismatch => "the amount's currency differs from the charge's",
        Error::AmountExceedsApproved => "the amount exceeds the approved amount",
        Error::AmountExceedsRefundable => "the amount exceeds what remains refundable",
        Error::RefundLimitReached => "the charge already has the maximum number of refunds",
        Error::ChargeBusy => "another capture or void of this charge is in progress; retry",
        Error::OutcomeUnknown => {
            "the processor's answer is not known yet; send the request again with the same \
             request_id"
        }
        Error::ProcessorUnavailable => "the processor is unavailable; nothing was charged",
        Error::ProcessorTimeout => {
            "the processor did not answer in time; send the request again with the same \
             request_id, or read the charge with GetCharge"
        }
        Error::ProcessorRefused(_) => "the processor refused the operation",
        Error::SettlementFileTooLarge { .. } => {
            "the settlement file holds more records than the vault delivers in one file"
        }
        Error::SettlementRecordNotFound => "settlement record not found",
        Error::KeyRetired => "the data key rotated while the request was processed; retry",
        Error::KeyVersionNotFound => "data key version not found",
        Error::KeyVersionActive => "the data key version is active; rotate the data key first",
        Error::KeyVersionInUse => {
            "rows still use the data key version; wait for the rewrap to finish"
        }
        Error::ShareMalformed(_) => "the share is malformed",
        Error::UnsealFailed => "the shares do not rebuild the root key; unseal progress was reset",
        Error::NotInitialised => "the vault's keys are not initialised; run tandemctl keys init",
        Error::AlreadyInitialised => "the vault's keys are already initialised",
        Error::Sealed => "the vault is sealed",
        Error::KeyBudgetExhausted => {
            "the data key's encryption budget is exhausted; an operator must rotate it"
        }
        Error::ShuttingDown => "the vault is shutting down",
        Error::CardDataUnreadable => {
            "the card's stored data cannot be read; tokenize the card again"
        }
        Error::Corrupt(what) => {
            tracing::error!(detail = what, "integrity check failed");
            "internal error"
        }
        Error::Database(e) => tandem_runtime::database::to_status_parts(e).1,
    };
    let mut details = ErrorDetails::with_error_info(reason, DOMAIN, HashMap::new());
    if let Error::InvalidArgument(violations) = &error {
        for violation in violations {
            details.add_bad_request_violation(&*violation.field, &violation.description);
        }
    }
    if let Error::ShareMalformed(problem) = &error {
        details.add_bad_request_violation("share", *problem);
    }
    Status::with_error_details(code, message, details)
}

/// The one map from a kind of error to its status code.
pub fn code(reason: ErrorReason) -> Code {
    match reason {
        ErrorReason::InvalidArgument => Code::InvalidArgument,
        ErrorReason::RoleNotAllowed => Code::PermissionDenied,
        ErrorReason::IdentityInvalid => Code::Unauthenticated,
        ErrorReason::TokenNotFound => Code::NotFound,
        ErrorReason::TokenRevoked => Code::FailedPrecondition,
        ErrorReason::TokenExpired => Code::FailedPrecondition,
        ErrorReason::RequestIdReused => Code::AlreadyExists,
        ErrorReason::RequestInProgress => Code::Aborted,
        ErrorReason::ConcurrentUpdate => Code::Aborted,
        ErrorReason::ChargeNotFound => Code::NotFound,
        ErrorReason::ChargeNotAuthorized => Code::FailedPrecondition,
        ErrorReason::ChargeAlreadyCaptured => Code::FailedPrecondition,
        ErrorReason::ChargeNotCaptured => Code::FailedPrecondition,
        ErrorReason::CurrencyMismatch => Code::FailedPrecondition,
        ErrorReason::AmountExceedsApproved => Code::FailedPrecondition,
        ErrorReason::AmountExceedsRefundable => Code::FailedPrecondition,
        ErrorReason::RefundLimitReached => Code::FailedPrecondition,
        ErrorReason::ChargeOperationInProgress => Code::Aborted,
        ErrorReason::OutcomeUnknown => Code::Unavailable,
        ErrorReason::ProcessorUnavailable => Code::Unavailable,
        ErrorReason::ProcessorTimeout => Code::DeadlineExceeded,
        ErrorReason::ProcessorRefused => Code::FailedPrecondition,
        ErrorReason::SettlementFileTooLarge => Code::ResourceExhausted,
        ErrorReason::SettlementRecordNotFound => Code::NotFound,
        ErrorReason::KeyRotated => Code::Aborted,
        ErrorReason::KeyVersionNotFound => Code::NotFound,
        ErrorReason::KeyVersionActive => Code::FailedPrecondition,
        ErrorReason::KeyVersionInUse => Code::FailedPrecondition,
        ErrorReason::ShareMalformed => Code::InvalidArgument,
        ErrorReason::UnsealFailed => Code::FailedPrecondition,
        ErrorReason::VaultNotInitialised => Code::FailedPrecondition,
        ErrorReason::VaultAlreadyInitialised => Code::FailedPrecondition,
        ErrorReason::VaultSealed => Code::Unavailable,
        ErrorReason::KeyBudgetExhausted => Code::Unavailable,
        ErrorReason::ShuttingDown => Code::Unavailable,
        ErrorReason::CardDataUnreadable => Code::DataLoss,
        ErrorReason::Internal => Code::Internal,
        ErrorReason::StorageUnavailable => Code::Unavailable,
        ErrorReason::WriteConflict => Code::Aborted,
        ErrorReason::ConstraintViolated => Code::Aborted,
    }
}

/// The gRPC status code name of an audited outcome (`OK` or an `ErrorInfo` reason), for
/// `AuditEvent.status_code`, from [`code`]. An outcome this vault does not write (a reason
/// retired since its row was written) reads as `FAILED_PRECONDITION`, as refusals do.
pub fn code_name(outcome: &str) -> &'static str {
    if outcome == "OK" {
        return "OK";
    }
    ErrorReason::parse(outcome).map_or("FAILED_PRECONDITION", |reason| {
        tandem_runtime::wire::code_name(code(reason))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_runtime::fields::FieldViolation;

    /// Every error carries ErrorInfo with its reason and the vault domain; invalid input also
    /// carries the violated fields.
    #[test]
    fn statuses_carry_error_details() {
        let status = to_status(Error::InvalidArgument(vec![
            FieldViolation::new("pan", "fails the Luhn check"),
            FieldViolation::new("expiry_month", "must be 1 to 12"),
        ]));
        assert_eq!(status.code(), Code::InvalidArgument);
        let info = status.get_details_error_info().unwrap();
        assert_eq!(
            (info.reason.as_str(), info.domain.as_str()),
            ("INVALID_ARGUMENT", DOMAIN)
        );
        let fields: Vec<String> = status
            .get_details_bad_request()
            .unwrap()
            .field_violations
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(fields, ["pan", "expiry_month"]);

        let cases = [
            (
                Error::TokenRevoked,
                Code::FailedPrecondition,
                "TOKEN_REVOKED",
            ),
            (
                Error::RequestIdReused,
                Code::AlreadyExists,
                "REQUEST_ID_REUSED",
            ),
            (Error::Sealed, Code::Unavailable, "VAULT_SEALED"),
            (
                Error::CardDataUnreadable,
                Code::DataLoss,
                "CARD_DATA_UNREADABLE",
            ),
            (Error::Corrupt("x"), Code::Internal, "INTERNAL"),
            (
                Error::Database(sqlx::Error::PoolTimedOut),
                Code::Unavailable,
                "STORAGE_UNAVAILABLE",
            ),
        ];
        for (error, code, reason) in cases {
            let status = to_status(error);
            assert_eq!(status.code(), code);
            assert_eq!(status.get_details_error_info().unwrap().reason, reason);
        }
    }

    /// The audit log's status code names agree with the statuses actually returned.
    #[test]
    fn code_names_match_statuses() {
        let errors = [
            Error::invalid("x", "y"),
            Error::PermissionDenied {
                role: "payer".into(),
            },
            Error::Unauthenticated,
            Error::TokenNotFound,
            Error::TokenRevoked,
            Error::TokenExpired,
            Error::RequestIdReused,
            Error::RequestIdTaken,
            Error::ConcurrentUpdate,
            Error::ChargeNotFound,
            Error::ChargeNotAuthorized,
            Error::ChargeAlreadyCaptured,
            Error::ChargeNotCaptured,
            Error::CurrencyMismatch,
            Error::AmountExceedsApproved,
            Error::AmountExceedsRefundable,
            Error::RefundLimitReached,
            Error::ChargeBusy,
            Error::OutcomeUnknown,
            Error::ProcessorUnavailable,
            Error::ProcessorTimeout,
            Error::ProcessorRefused("other"),
            Error::SettlementFileTooLarge { records_max: 1 },
            Error::SettlementRecordNotFound,
            Error::KeyRetired,
            Error::KeyVersionNotFound,
            Error::KeyVersionActive,
            Error::KeyVersionInUse,
            Error::ShareMalformed("x"),
            Error::UnsealFailed,
            Error::NotInitialised,
            Error::AlreadyInitialised,
            Error::Sealed,
            Error::KeyBudgetExhausted,
            Error::ShuttingDown,
            Error::CardDataUnreadable,
            Error::Corrupt("x"),
            Error::Database(sqlx::Error::PoolTimedOut),
        ];
        for error in errors {
            let reason = error.reason();
            let code = to_status(error).code();
            let expected = format!("{code:?}");
            let name = code_name(reason).replace('_', "").to_lowercase();
            assert_eq!(name, expected.to_lowercase(), "{reason}");
        }
        assert_eq!(code_name("OK"), "OK");
    }

    /// Every kind of error reads back from its stored reason, so the audit log's code names
    /// come from the one map for every outcome the vault writes.
    #[test]
    fn every_reason_reads_back() {
        for reason in ErrorReason::ALL {
            assert_eq!(ErrorReason::parse(reason.as_str()), Some(reason));
            assert_eq!(
                code_name(reason.as_str()).replace('_', "").to_lowercase(),
                format!("{:?}", code(reason)).to_lowercase(),
            );
        }
        assert_eq!(ErrorReason::parse("OK"), None);
    }
}
