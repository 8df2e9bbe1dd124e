//! A tower layer that edits the headers of each gRPC request before the service sees it and of
//! its response on the way out (a trailers-only error's status included): the one mechanism
//! behind [`crate::correlation`] and [`crate::wire`].

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// What a [`HookLayer`] does to the headers of one call.
pub trait HeaderHook: Clone + Send + 'static {
    /// What the request side hands to the response side.
    type State: Send + 'static;

    /// Edits the request's headers.
    fn on_request(&self, headers: &mut http::HeaderMap) -> Self::State;

    /// Edits the response's headers.
    fn on_response(&self, state: Self::State, headers: &mut http::HeaderMap);
}

/// Runs a [`HeaderHook`] around every call: `tonic::transport::Server::builder().layer(..)`.
#[derive(Debug, Clone, Copy)]
pub struct HookLayer<H>(pub H);

impl<S, H: HeaderHook> tower::Layer<S> for HookLayer<H> {
    type Service = Hooked<S, H>;

    fn layer(&self, inner: S) -> Self::Service {
        Hooked {
            inner,
            hook: self.0.clone(),
        }
    }
}

/// A service with a [`HeaderHook`] around it.
#[derive(Debug, Clone)]
pub struct Hooked<S, H> {
    inner: S,
    hook: H,
}

impl<S, H, RequestBody, ResponseBody> tower::Service<http::Request<RequestBody>> for Hooked<S, H>
where
    S: tower::Service<http::Request<RequestBody>, Response = http::Response<ResponseBody>>,
    S::Future: Send + 'static,
    H: HeaderHook,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<RequestBody>) -> Self::Future {
        let state = self.hook.on_request(request.headers_mut());
        let hook = self.hook.clone();
        let response = self.inner.call(request);
        Box::pin(async move {
            let mut response = response.await?;
            hook.on_response(state, response.headers_mut());
            Ok(response)
        })
    }
}
