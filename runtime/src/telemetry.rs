//! Logs and traces.
//!
//! - Logs: `tracing` with JSON lines (or human-readable text for a terminal), filtered by
//!   `RUST_LOG` (or a default the binary chooses). Every line carries the fields of the spans
//!   it was written in, so every line of a call carries its correlation id ([`layer`]).
//! - Traces: with `telemetry.otlp_endpoint` set, spans are exported over OTLP/gRPC (batched,
//!   sampled by `telemetry.sample_ratio` unless the caller decided). Each call is a span
//!   ([`layer`]) whose parent is the caller's W3C `traceparent`, and calls out carry the
//!   current span's ([`inject`]), so one trace runs from a caller through the orchestrator to
//!   the vault.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider,
};
use serde::Deserialize;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::settings::Check;

/// Output format of the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line, for collectors.
    Json,
    /// Human-readable, for a terminal.
    Text,
}

/// A server's `[telemetry]` section: where its spans go.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySettings {
    /// The OTLP/gRPC endpoint spans are exported to, plain `http://` (a collector's agent on
    /// the host or its pod, `http://127.0.0.1:4317`); empty (the default) exports nothing.
    pub otlp_endpoint: String,
    /// The share of traces started here that are kept, 0 to 1; a caller's `traceparent`
    /// decides for its own.
    pub sample_ratio: f64,
    /// How long spans wait to be exported in one batch, in milliseconds.
    pub export_interval_ms: u64,
    /// How long one export may take, in milliseconds.
    pub export_timeout_ms: u64,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        TelemetrySettings {
            otlp_endpoint: String::new(),
            sample_ratio: 1.0,
            export_interval_ms: 5_000,
            export_timeout_ms: 10_000,
        }
    }
}

impl TelemetrySettings {
    /// The range checks of the section.
    pub fn checks(&self) -> [Check; 3] {
        let endpoint = &self.otlp_endpoint;
        [
            (
                endpoint.is_empty()
                    || (endpoint.starts_with("http://") && endpoint.parse::<http::Uri>().is_ok()),
                "telemetry.otlp_endpoint",
                "must be empty or an http:// URL (a collector's agent beside the server: spans \
                 leave the host through it)",
            ),
            (
                (0.0..=1.0).contains(&self.sample_ratio),
                "telemetry.sample_ratio",
                "must be 0 to 1",
            ),
            (
                (10..=60_000).contains(&self.export_interval_ms)
                    && (100..=60_000).contains(&self.export_timeout_ms),
                "telemetry.export_interval_ms",
                "must be 10 to 60000 (and telemetry.export_timeout_ms 100 to 60000)",
            ),
        ]
    }
}

/// What [`init`] started: flushes the spans not yet exported when shut down.
#[derive(Debug, Default)]
#[must_use = "spans are flushed by Telemetry::shutdown"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still waiting (within the export timeout) and stops exporting.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        // The flush blocks its thread while the export runs on the runtime: off the workers.
        let flushed = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        if let Ok(Err(error)) = flushed {
            tracing::warn!(%error, "spans not flushed at shutdown");
        }
    }
}

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
#[error("telemetry: {0}")]
pub struct TelemetryError(String);

/// Installs the global subscriber: logs in `format`, filtered by `RUST_LOG` or else
/// `default_filter` (an `EnvFilter` directive such as `info`), and, when `settings` name an
/// endpoint, spans exported as `service`. Call once, from a binary's `main`, inside the Tokio
/// runtime (the exporter's connection runs on it). A second call in a process keeps the first
/// subscriber.
pub fn init(
    format: LogFormat,
    default_filter: &str,
    service: &str,
    settings: &TelemetrySettings,
) -> Result<Telemetry, TelemetryError> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    // Logs follow RUST_LOG; spans are exported at INFO whatever it says, so quieter logs do not
    // cost the traces.
    let logs = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let provider = if settings.otlp_endpoint.is_empty() {
        None
    } else {
        Some(provider(service, settings)?)
    };
    let spans = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("tandem"))
            // A span's own fields, not the code's location or threads.
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_filter(LevelFilter::INFO)
    });
    let registry = tracing_subscriber::registry().with(spans);
    let _ = match format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr)
                    .with_filter(logs),
            )
            .try_init(),
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .compact()
                    // Colours for a terminal only, not for a file the lines are kept in.
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                    .with_writer(std::io::stderr)
                    .with_filter(logs),
            )
            .try_init(),
    };
    Ok(Telemetry { provider })
}

fn provider(
    service: &str,
    settings: &TelemetrySettings,
) -> Result<SdkTracerProvider, TelemetryError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(settings.otlp_endpoint.clone())
        .with_timeout(Duration::from_millis(settings.export_timeout_ms))
        .build()
        .map_err(|error| TelemetryError(error.to_string()))?;
    let processor = BatchSpanProcessor::builder(exporter)
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_scheduled_delay(Duration::from_millis(settings.export_interval_ms))
                .build(),
        )
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            settings.sample_ratio,
        ))))
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service.to_owned())
                .build(),
        )
        .build())
}

/// Sets the current span's trace context (W3C `traceparent`, `tracestate`) on an outgoing
/// call's metadata. Nothing is set when no span is exported.
pub fn inject(metadata: &mut tonic::metadata::MetadataMap) {
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut MetadataInjector(metadata));
    });
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// The layer that makes every call a span: named after its method (`otel.name`), with the
/// service's name and the call's correlation id (so every log line of the call carries it),
/// child of the caller's `traceparent` when it sent one. Goes inside
/// [`crate::correlation::layer`], which sets the id.
pub fn layer(service: &'static str) -> RpcSpanLayer {
    RpcSpanLayer { service }
}

/// See [`layer`].
#[derive(Debug, Clone, Copy)]
pub struct RpcSpanLayer {
    service: &'static str,
}

impl<S> tower::Layer<S> for RpcSpanLayer {
    type Service = RpcSpan<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcSpan {
            inner,
            service: self.service,
        }
    }
}

/// A service whose calls are spans: see [`layer`].
#[derive(Debug, Clone)]
pub struct RpcSpan<S> {
    inner: S,
    service: &'static str,
}

impl<S, RequestBody, ResponseBody> tower::Service<http::Request<RequestBody>> for RpcSpan<S>
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
        let headers = request.headers();
        // Only a safe id is logged (never one that looks like a card number).
        let correlation_id = headers
            .get(crate::correlation::HEADER)
            .and_then(|value| value.to_str().ok())
            .and_then(crate::correlation::accept)
            .unwrap_or_default();
        // At ERROR, so that every line of the call carries it whatever RUST_LOG lets through;
        // named after its method (an unsafe path, never a route, is `unknown`).
        let span = tracing::error_span!(
            "rpc",
            otel.name = crate::correlation::accept(request.uri().path()).unwrap_or("unknown"),
            otel.kind = "server",
            rpc.system = "grpc",
            service = self.service,
            correlation_id,
        );
        let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.extract(&HeaderExtractor(headers))
        });
        // Only fails once the span was entered, which it was not.
        let _ = span.set_parent(parent);
        let response = span.in_scope(|| self.inner.call(request));
        Box::pin(response.instrument(span))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The section's checks name the key at fault.
    #[test]
    fn settings_are_checked() {
        let ok = |settings: &TelemetrySettings| settings.checks().iter().all(|check| check.0);
        let mut settings = TelemetrySettings::default();
        assert!(ok(&settings));
        settings.otlp_endpoint = "http://127.0.0.1:4317".into();
        assert!(ok(&settings));
        settings.otlp_endpoint = "collector:4317".into();
        assert!(!ok(&settings));
        settings.otlp_endpoint = "https://collector:4317".into();
        assert!(!ok(&settings));
        settings.otlp_endpoint = String::new();
        settings.sample_ratio = 1.5;
        assert!(!ok(&settings));
        settings.sample_ratio = 0.1;
        settings.export_interval_ms = 0;
        assert!(!ok(&settings));
    }
}
