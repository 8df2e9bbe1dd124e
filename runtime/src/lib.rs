//! tandem-runtime: what every Tandem server shares, so the vault and the orchestrator read
//! their settings, listen, and log the same way.
//!
//! - [`settings`]: a TOML file plus `TANDEM_<SERVICE>__<SECTION>__<KEY>` environment overrides,
//!   and the sections every server has (gRPC server limits, mutual TLS, the database pool),
//!   with their range checks.
//! - [`admission`]: limits per caller identity and RPC class (a rate and a cap on calls in
//!   flight), refusing at once with `RESOURCE_EXHAUSTED` and a `RetryInfo`.
//! - [`binary`]: the entry point of every server binary (`--config`, settings, listen, serve).
//! - [`correlation`]: the `x-request-id` of every call, taken when safe, made otherwise, echoed.
//! - [`headers`]: a layer that edits each call's request and response headers.
//! - [`database`]: what a failed statement means for the request (retry, conflict, broken
//!   invariant), one classification for both services.
//! - [`fields`]: bad input field by field, for `INVALID_ARGUMENT`'s `BadRequest`.
//! - [`ids`]: random ids of 128 bits with a type prefix.
//! - [`metrics`]: the process's Prometheus registry and each server's `/metrics` endpoint.
//! - [`pages`]: page tokens bound to the query they page.
//! - [`primary`]: the Postgres primary among the hosts of a multi-host database URL, found at
//!   start and followed across a failover.
//! - [`serving`]: the listening socket, the tonic server with the shared limits, reflection,
//!   and the graceful stop.
//! - [`telemetry`]: JSON logs, and traces over OTLP: every call a span, joined to the caller's
//!   W3C `traceparent`, with its correlation id on every line.
//! - [`time`]: now, in the microseconds Postgres keeps.
//! - [`wire`]: tonic's own request errors (undecodable, oversized) in the client's terms.

pub mod admission;
pub mod binary;
pub mod correlation;
pub mod database;
pub mod fields;
pub mod headers;
pub mod ids;
pub mod metrics;
pub mod pages;
pub mod primary;
pub mod serving;
pub mod settings;
pub mod telemetry;
pub mod time;
pub mod wire;

/// Completes on SIGINT or SIGTERM: the binaries' shutdown trigger.
pub async fn shutdown_signal() {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
