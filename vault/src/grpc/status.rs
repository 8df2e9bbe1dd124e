//! The one map from [`Error`] to `tonic::Status` (AIP-193): every status carries an
//! `ErrorInfo` with a reason clients can switch on and the domain `vault.tandem`;
//! `INVALID_ARGUMENT` also carries a `BadRequest` naming each field. Internal failures give the
//! client a generic message; their detail goes to the log only.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

use crate::error::Error;

/// The `ErrorInfo` domain of every vault error.
pub const DOMAIN: &str = "vault.tandem";

/// Converts a vault error into a gRPC status.
pub fn to_status(error: Error) -> Status {
    let reason = error.reason();
    let (code, message) = match &error {
        Error::InvalidArgument(_) => (Code::InvalidArgument, "the request has invalid fields"),
        Error::PermissionDenied { .. } => (
            Code::PermissionDenied,
            "the caller's role may not call this method",
        ),
        Error::Unauthenticated => (
            Code::Unauthenticated,
            "the client certificate does not carry a valid Tandem identity",
        ),
        Error::TokenNotFound => (Code::NotFound, "token not found"),
        Error::TokenRevoked => (Code::FailedPrecondition, "token has been revoked"),
        Error::TokenExpired => (Code::FailedPrecondition, "token has expired"),
        Error::RequestIdReused => (
            Code::AlreadyExists,
            "request_id was already used for a different request",
        ),
        Error::RequestIdTaken => (Code::Aborted, "the same request is being processed; retry"),
        Error::ConcurrentUpdate => (Code::Aborted, "the card changed concurrently; retry"),
        Error::ChargeNotFound => (Code::NotFound, "charge not found"),
        Error::ChargeNotAuthorized => (
            Code::FailedPrecondition,
            "the charge is not authorized (declined, voided, pending or already captured)",
        ),
        Error::ChargeAlreadyCaptured => (
            Code::FailedPrecondition,
            "the charge was captured; refund it instead",
        ),
        Error::ChargeNotCaptured => (
            Code::FailedPrecondition,
            "the charge has no captured amount to refund",
        ),
        Error::CurrencyMismatch => (
            Code::FailedPrecondition,
            "the amount's currency differs from the charge's",
        ),
        Error::AmountExceedsApproved => (
            Code::FailedPrecondition,
            "the amount exceeds the approved amount",
        ),
        Error::AmountExceedsRefundable => (
            Code::FailedPrecondition,
            "the amount exceeds what remains refundable",
        ),
        Error::RefundLimitReached => (
            Code::FailedPrecondition,
            "the charge already has the maximum number of refunds",
        ),
        Error::ChargeBusy => (
            Code::Aborted,
            "another capture or void of this charge is in progress; retry",
        ),
        Error::OutcomeUnknown => (
            Code::Unavailable,
            "the processor's answer is not known yet; send the request again with the same \
             request_id",
        ),
        Error::ProcessorUnavailable => (
            Code::Unavailable,
            "the processor is unavailable; nothing was charged",
        ),
        Error::ProcessorTimeout => (
            Code::DeadlineExceeded,
            "the processor did not answer in time; send the request again with the same \
             request_id, or read the charge with GetCharge",
        ),
        Error::ProcessorRefused(_) => (
            Code::FailedPrecondition,
            "the processor refused the operation",
        ),
        Error::KeyRetired => (
            Code::Aborted,
            "the data key rotated while the request was processed; retry",
        ),
        Error::KeyVersionNotFound => (Code::NotFound, "data key version not found"),
        Error::KeyVersionActive => (
            Code::FailedPrecondition,
            "the data key version is active; rotate the data key first",
        ),
        Error::KeyVersionInUse => (
            Code::FailedPrecondition,
            "rows still use the data key version; wait for the rewrap to finish",
        ),
        Error::ShareMalformed(_) => (Code::InvalidArgument, "the share is malformed"),
        Error::UnsealFailed => (
            Code::FailedPrecondition,
            "the shares do not rebuild the root key; unseal progress was reset",
        ),
        Error::NotInitialised => (
            Code::FailedPrecondition,
            "the vault's keys are not initialised; run tandemctl keys init",
        ),
        Error::AlreadyInitialised => (
            Code::FailedPrecondition,
            "the vault's keys are already initialised",
        ),
        Error::Sealed => (Code::Unavailable, "the vault is sealed"),
        Error::KeyBudgetExhausted => (
            Code::Unavailable,
            "the data key's encryption budget is exhausted; an operator must rotate it",
        ),
        Error::ShuttingDown => (Code::Unavailable, "the vault is shutting down"),
        Error::CardDataUnreadable => (
            Code::DataLoss,
            "the card's stored data cannot be read; tokenize the card again",
        ),
        Error::Corrupt(what) => {
            tracing::error!(detail = what, "integrity check failed");
            (Code::Internal, "internal error")
        }
        Error::Database(e) => tandem_runtime::database::to_status_parts(e),
    };
    let mut details = ErrorDetails::with_error_info(reason, DOMAIN, HashMap::new());
    match &error {
        Error::InvalidArgument(violations) => {
            for violation in violations {
                details.add_bad_request_violation(violation.field, &violation.description);
            }
        }
        Error::ShareMalformed(problem) => {
            details.add_bad_request_violation("share", *problem);
        }
        _ => {}
    }
    Status::with_error_details(code, message, details)
}

/// The gRPC status code name of an audited outcome (`OK` or an `ErrorInfo` reason), for
/// `AuditEvent.status_code`.
pub fn code_name(outcome: &str) -> &'static str {
    match outcome {
        "OK" => "OK",
        "INVALID_ARGUMENT" | "SHARE_MALFORMED" => "INVALID_ARGUMENT",
        "ROLE_NOT_ALLOWED" => "PERMISSION_DENIED",
        "IDENTITY_INVALID" => "UNAUTHENTICATED",
        "TOKEN_NOT_FOUND" | "CHARGE_NOT_FOUND" | "KEY_VERSION_NOT_FOUND" => "NOT_FOUND",
        "REQUEST_ID_REUSED" => "ALREADY_EXISTS",
        "REQUEST_IN_PROGRESS"
        | "CONCURRENT_UPDATE"
        | "CHARGE_OPERATION_IN_PROGRESS"
        | "KEY_ROTATED"
        | "WRITE_CONFLICT"
        | "CONSTRAINT_VIOLATED" => "ABORTED",
        "CARD_DATA_UNREADABLE" => "DATA_LOSS",
        "VAULT_SEALED"
        | "KEY_BUDGET_EXHAUSTED"
        | "SHUTTING_DOWN"
        | "STORAGE_UNAVAILABLE"
        | "PROCESSOR_UNAVAILABLE"
        | "OUTCOME_UNKNOWN" => "UNAVAILABLE",
        "PROCESSOR_TIMEOUT" => "DEADLINE_EXCEEDED",
        "INTERNAL" => "INTERNAL",
        _ => "FAILED_PRECONDITION",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::FieldViolation;

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
}
