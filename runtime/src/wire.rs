//! Errors tonic raises before a handler runs, in the client's terms. A request message that
//! does not decode reaches the client from tonic as `INTERNAL`, and one above the server's
//! `message_bytes_max` as `OUT_OF_RANGE`: neither says what the client did wrong. [`layer`]
//! rewrites them, on the way out, to `INVALID_ARGUMENT` (reason `MESSAGE_UNDECODABLE`) and
//! `RESOURCE_EXHAUSTED` (reason `MESSAGE_TOO_LARGE`), each with an `ErrorInfo` in the
//! service's domain. Statuses from handlers pass untouched.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

use crate::headers::{HeaderHook, HookLayer};

/// How tonic words its request decode failure (prost's error behind it).
const UNDECODABLE_PREFIX: &str = "failed to decode Protobuf message";
/// How tonic words a request above the decoding limit.
const TOO_LARGE_PREFIX: &str = "Error, decoded message length too large";

/// A status code's name as the gRPC specification spells it (`DEADLINE_EXCEEDED`), for audit
/// rows and metric labels.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The layer that rewrites tonic's own decode and size errors with `ErrorInfo` domain
/// `domain` (`vault.tandem`, `orchestrator.tandem`).
pub fn layer(domain: &'static str) -> HookLayer<WireErrors> {
    HookLayer(WireErrors { domain })
}

/// See [`layer`].
#[derive(Debug, Clone, Copy)]
pub struct WireErrors {
    domain: &'static str,
}

impl HeaderHook for WireErrors {
    type State = ();

    fn on_request(&self, _headers: &mut http::HeaderMap) {}

    fn on_response(&self, (): (), headers: &mut http::HeaderMap) {
        rewrite(headers, self.domain);
    }
}

/// The status a client should see instead of `status`, if tonic raised it on the request.
fn replacement(status: &Status, domain: &str) -> Option<Status> {
    let (code, message, reason) = match status.code() {
        Code::Internal if status.message().starts_with(UNDECODABLE_PREFIX) => (
            Code::InvalidArgument,
            "the request message does not decode as the method's request type",
            "MESSAGE_UNDECODABLE",
        ),
        Code::OutOfRange if status.message().starts_with(TOO_LARGE_PREFIX) => (
            Code::ResourceExhausted,
            "the request message is larger than the server accepts",
            "MESSAGE_TOO_LARGE",
        ),
        _ => return None,
    };
    let details = ErrorDetails::with_error_info(reason, domain, HashMap::new());
    Some(Status::with_error_details(code, message, details))
}

/// Replaces a trailers-only error status in `headers` by its [`replacement`].
fn rewrite(headers: &mut http::HeaderMap, domain: &str) {
    let Some(status) = Status::from_header_map(headers) else {
        return;
    };
    let Some(replacement) = replacement(&status, domain) else {
        return;
    };
    for name in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
        headers.remove(name);
    }
    if let Err(error) = replacement.add_header(headers) {
        tracing::warn!(%error, "cannot write the rewritten status");
        let _ = status.add_header(headers);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decode and size failures are rewritten with their reasons; anything else passes.
    #[test]
    fn tonic_request_errors_are_rewritten() {
        let cases = [
            (
                Status::internal("failed to decode Protobuf message: invalid wire type"),
                Some((Code::InvalidArgument, "MESSAGE_UNDECODABLE")),
            ),
            (
                Status::out_of_range(
                    "Error, decoded message length too large: found 9 bytes, the limit is: 4 bytes",
                ),
                Some((Code::ResourceExhausted, "MESSAGE_TOO_LARGE")),
            ),
            (Status::internal("internal error"), None),
            (Status::out_of_range("page out of range"), None),
            (
                Status::invalid_argument("failed to decode Protobuf message"),
                None,
            ),
        ];
        for (status, expected) in cases {
            let mut headers = http::HeaderMap::new();
            status.add_header(&mut headers).unwrap();
            rewrite(&mut headers, "test.tandem");
            let after = Status::from_header_map(&headers).unwrap();
            match expected {
                Some((code, reason)) => {
                    assert_eq!(after.code(), code, "{status:?}");
                    let info = after.get_details_error_info().expect("error info");
                    assert_eq!(
                        (info.reason.as_str(), info.domain.as_str()),
                        (reason, "test.tandem")
                    );
                }
                None => {
                    assert_eq!(after.code(), status.code());
                    assert_eq!(after.message(), status.message());
                }
            }
        }
    }
}
