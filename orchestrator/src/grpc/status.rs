//! The one map from [`Error`] to `tonic::Status` (AIP-193): every status carries an
//! `ErrorInfo` with a reason clients can switch on and the domain `orchestrator.tandem`;
//! `INVALID_ARGUMENT` also carries a `BadRequest` naming each field, `TOKEN_NOT_USABLE` a
//! `PreconditionFailure` naming the member, `FX_RATE_MISSING` and `FX_RATE_STALE` metadata naming
//! the pair (`base_currency_code`, `quote_currency_code`). Internal failures give the client a generic
//! message; their detail goes to the log only.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

use crate::error::Error;

/// The `ErrorInfo` domain of every orchestrator error.
pub const DOMAIN: &str = "orchestrator.tandem";

/// Converts an orchestrator error into a gRPC status.
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
        Error::CardGroupNotFound => (Code::NotFound, "card group not found"),
        Error::CardGroupArchived => (Code::FailedPrecondition, "the card group is archived"),
        Error::EtagMismatch => (
            Code::Aborted,
            "the card group changed since it was read; read it again",
        ),
        Error::TokenNotUsable { .. } => (
            Code::FailedPrecondition,
            "a member's token is unknown to the vault, revoked or expired",
        ),
        Error::PaymentNotFound => (Code::NotFound, "payment not found"),
        Error::PaymentNotRefundable => (
            Code::FailedPrecondition,
            "the payment is not refundable (not paid, or nothing left to refund)",
        ),
        Error::CurrencyMismatch => (
            Code::FailedPrecondition,
            "the amount's currency differs from the payment's",
        ),
        Error::AmountExceedsRefundable => (
            Code::FailedPrecondition,
            "the amount exceeds what remains refundable",
        ),
        Error::RefundLimitReached => (
            Code::FailedPrecondition,
            "the payment already has the maximum number of refunds",
        ),
        Error::NoteLimitReached => (
            Code::FailedPrecondition,
            "the payment already holds its most notes (100 notes, 8 KiB of text)",
        ),
        Error::ReconciliationRunNotFound => (Code::NotFound, "reconciliation run not found"),
        Error::DiscrepancyNotFound => (Code::NotFound, "discrepancy not found"),
        Error::DiscrepancyNotOpen => (
            Code::FailedPrecondition,
            "the discrepancy is not open (cleared, resolved, or an adjustment already waits)",
        ),
        Error::DiscrepancyPending => (
            Code::FailedPrecondition,
            "the discrepancy is pending: its record may still settle within the grace period",
        ),
        Error::AdjustmentNotFound => (Code::NotFound, "adjustment not found"),
        Error::AdjustmentNotProposed => (
            Code::FailedPrecondition,
            "the adjustment was already approved or rejected",
        ),
        Error::SameIdentity => (
            Code::PermissionDenied,
            "four eyes: an adjustment is decided by another identity than its proposer, a payment \
             reviewed by another than its creator",
        ),
        Error::PaymentNotInReview => (
            Code::FailedPrecondition,
            "the payment is not in review (state IN_REVIEW), or its review expired",
        ),
        Error::PaymentNotNeedingOperator => (
            Code::FailedPrecondition,
            "the payment does not need an operator (state NEEDS_OPERATOR)",
        ),
        Error::ChargeNotSettled { .. } => (
            Code::FailedPrecondition,
            "the vault does not show a refused capture captured (or a refused void released): \
             CONFIRM records only what the vault shows done; RETRY sends it again",
        ),
        Error::RiskPolicyChanged => (
            Code::FailedPrecondition,
            "the risk policy changed since the version given; read it again",
        ),
        Error::SettlementFileInvalid(what) => {
            tracing::warn!(detail = %what, "settlement file refused");
            (
                Code::FailedPrecondition,
                "the processor's settlement file cannot be read; see the orchestrator's log",
            )
        }
        Error::WebhookEndpointNotFound => (Code::NotFound, "webhook endpoint not found"),
        Error::WebhookEndpointsExhausted => (
            Code::ResourceExhausted,
            "the most webhook endpoints (webhook.endpoints_max) exist; delete one first",
        ),
        Error::RedeliveryTooLarge => (
            Code::ResourceExhausted,
            "the range holds more events than one redelivery sends (webhook.redeliver_max); \
             narrow it",
        ),
        Error::WebhooksNotConfigured => (
            Code::FailedPrecondition,
            "webhooks are off: the orchestrator has no webhook.secret_key",
        ),
        Error::FxRateNotFound => (Code::NotFound, "no rate for the currency pair"),
        Error::FxRateMissing { .. } => (
            Code::FailedPrecondition,
            "the rate source has no rate for a conversion the payment needs; set one \
             (FxService.SetFxRate or the rates file)",
        ),
        Error::FxRateStale { .. } => (
            Code::FailedPrecondition,
            "the rate of a conversion the payment needs is older than fx.rate_age_s_max; set a \
             fresh one",
        ),
        Error::RequestIdReused => (
            Code::AlreadyExists,
            "request_id was already used for a different request",
        ),
        Error::RequestInProgress => (
            Code::Aborted,
            "the same request is being processed; retry with the same request_id",
        ),
        Error::VaultUnavailable => (
            Code::Unavailable,
            "the vault is unavailable; nothing was changed, retry",
        ),
        Error::ShuttingDown => (Code::Unavailable, "the orchestrator is shutting down"),
        Error::Corrupt(what) => {
            tracing::error!(detail = %what, "integrity check failed");
            (Code::Internal, "internal error")
        }
        Error::Database(e) => tandem_runtime::database::to_status_parts(e),
    };
    // A conversion's errors name their pair in the metadata, as `FxRate` names its fields.
    let mut metadata = HashMap::new();
    if let Error::FxRateMissing { from, to } | Error::FxRateStale { from, to } = &error {
        metadata.insert("base_currency_code".to_owned(), from.code().to_owned());
        metadata.insert("quote_currency_code".to_owned(), to.code().to_owned());
    }
    let mut details = ErrorDetails::with_error_info(reason, DOMAIN, metadata);
    // Two kinds of error carry details beyond ErrorInfo (the map above is the exhaustive one).
    if let Error::InvalidArgument(violations) = &error {
        for violation in violations {
            details.add_bad_request_violation(&violation.field, &violation.description);
        }
    }
    if let Error::TokenNotUsable { member, reason } = &error {
        details.add_precondition_failure_violation("TOKEN_NOT_USABLE", member, reason);
    }
    Status::with_error_details(code, message, details)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_runtime::fields::FieldViolation;

    /// Every error carries ErrorInfo with its reason and the orchestrator domain; invalid input
    /// also carries the violated fields, an unusable token the member.
    #[test]
    fn statuses_carry_error_details() {
        let status = to_status(Error::InvalidArgument(vec![FieldViolation::new(
            "card_group.default_policy.weights[1].basis_points",
            "must be 1-10000",
        )]));
        assert_eq!(status.code(), Code::InvalidArgument);
        let info = status.get_details_error_info().unwrap();
        assert_eq!(
            (info.reason.as_str(), info.domain.as_str()),
            ("INVALID_ARGUMENT", DOMAIN)
        );
        let violation = &status.get_details_bad_request().unwrap().field_violations[0];
        assert_eq!(
            violation.field,
            "card_group.default_policy.weights[1].basis_points"
        );
        let status = to_status(Error::TokenNotUsable {
            member: "card_group.members[0].token".into(),
            reason: "TOKEN_REVOKED".into(),
        });
        assert_eq!(status.code(), Code::FailedPrecondition);
        let failure = status.get_details_precondition_failure().unwrap();
        assert_eq!(failure.violations[0].subject, "card_group.members[0].token");
        for (error, code, reason) in [
            (
                Error::RequestInProgress,
                Code::Aborted,
                "REQUEST_IN_PROGRESS",
            ),
            (
                Error::RequestIdReused,
                Code::AlreadyExists,
                "REQUEST_ID_REUSED",
            ),
            (Error::EtagMismatch, Code::Aborted, "ETAG_MISMATCH"),
            (Error::FxRateNotFound, Code::NotFound, "FX_RATE_NOT_FOUND"),
            (Error::Corrupt("x".into()), Code::Internal, "INTERNAL"),
            (
                Error::Database(sqlx::Error::PoolTimedOut),
                Code::Unavailable,
                "STORAGE_UNAVAILABLE",
            ),
        ] {
            let status = to_status(error);
            assert_eq!(status.code(), code);
            assert_eq!(status.get_details_error_info().unwrap().reason, reason);
        }
        // A conversion's errors name their pair.
        let usd = tandem_money::Currency::parse("USD").unwrap();
        let eur = tandem_money::Currency::parse("EUR").unwrap();
        for (error, reason) in [
            (
                Error::FxRateMissing { from: usd, to: eur },
                "FX_RATE_MISSING",
            ),
            (Error::FxRateStale { from: usd, to: eur }, "FX_RATE_STALE"),
        ] {
            let status = to_status(error);
            assert_eq!(status.code(), Code::FailedPrecondition);
            let info = status.get_details_error_info().unwrap();
            assert_eq!(info.reason, reason);
            assert_eq!(info.metadata["base_currency_code"], "USD");
            assert_eq!(info.metadata["quote_currency_code"], "EUR");
        }
    }
}
