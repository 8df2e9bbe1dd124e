//! Errors tonic raises before a handler runs, in the client's terms. A request message that
//! does not decode reaches the client from tonic as `INTERNAL`, and one above the server's
//! `message_bytes_max` as `OUT_OF_RANGE`: neither says what the client did wrong. [`WireErrors`]
//! rewrites them, on the way out, to `INVALID_ARGUMENT` (reason `MESSAGE_UNDECODABLE`) and
//! `RESOURCE_EXHAUSTED` (reason `MESSAGE_TOO_LARGE`), each with an `ErrorInfo` in the
//! service's domain. Statuses from handlers pass untouched.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

/// How tonic words its request decode failure (prost's error behind it).
const UNDECODABLE_PREFIX: &str = "failed to decode Protobuf message";
/// How tonic words a request above the decoding limit.
const TOO_LARGE_PREFIX: &str = "Error, decoded message length too large";

/// The layer of [`WireErrors`], for `tonic::transport::Server::builder().layer(..)`.
#[derive(Debug, Clone, Copy)]
pub struct WireErrorsLayer {
    domain: &'static str,
}

impl WireErrorsLayer {
    /// Rewrites with `ErrorInfo` domain `domain` (`vault.tandem`, `orchestrator.tandem`).
    pub fn new(domain: &'static str) -> Self {
        Self { domain }
    }
}

impl<S> tower::Layer<S> for WireErrorsLayer {
    type Service = WireErrors<S>;

    fn layer(&self, inner: S) -> Self::Service {
        WireErrors {
            inner,
            domain: self.domain,
        }
    }
}

/// Rewrites tonic's own decode and size errors; see the module docs.
#[derive(Debug, Clone)]
pub struct WireErrors<S> {
    inner: S,
    domain: &'static str,
}

impl<S, RequestBody, ResponseBody> tower::Service<http::Request<RequestBody>> for WireErrors<S>
where
    S: tower::Service<http::Request<RequestBody>, Response = http::Response<ResponseBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<RequestBody>) -> Self::Future {
        let response = self.inner.call(request);
        let domain = self.domain;
        Box::pin(async move {
            let mut response = response.await?;
            rewrite(response.headers_mut(), domain);
            Ok(response)
        })
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
