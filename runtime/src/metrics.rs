//! Metrics: one Prometheus registry per process on the `metrics` crate, and each server's
//! endpoint on a loopback port (`GET /metrics`, text exposition format 0.0.4).
//!
//! Code records with the `metrics` macros (`counter!`, `histogram!`, `gauge!`); until a server
//! with `metrics.enabled` starts, no recorder is installed and they cost nothing. Durations are
//! histograms with [`SECONDS_BUCKETS`] (every metric named `*_seconds`), counts per payment
//! with [`COUNT_BUCKETS`] (`*_count_per_payment`).
//!
//! Both servers may run in one process (`tandemctl dev`, the end-to-end tests): the registry is
//! the process's, and each endpoint serves only the metric families of its own prefix
//! (`tandem_vault_`, `tandem_orchestrator_`), so a scraper of both counts nothing twice.
//!
//! Labels are bounded sets named in each service's docs (methods, states, outcomes, reasons,
//! card groups): never card data, a token, or a payment's id.
//!
//! The endpoint is deliberately small: HTTP/1.1, one request per connection, a bounded request
//! head, a timeout, and a cap on concurrent scrapes.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use serde::Deserialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::settings::Check;

/// Upper bounds (seconds) of the buckets of every `*_seconds` histogram: from a millisecond
/// (a vault call) to a day (a payment waiting for its reviewer).
pub const SECONDS_BUCKETS: [f64; 20] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 900.0, 3600.0, 21600.0, 86400.0,
];

/// Upper bounds of the buckets of every `*_count_per_payment` histogram (attempts, legs).
pub const COUNT_BUCKETS: [f64; 10] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0];

/// Largest request head read, in bytes.
const REQUEST_BYTES_MAX: usize = 8192;
/// Time a scraper has to send its request and read the answer.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
/// Scrapes served at once.
const SCRAPES_MAX: usize = 4;

/// A server's `[metrics]` section: its Prometheus endpoint (plain HTTP: keep it on loopback or
/// a private network).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSettings {
    /// Whether to record metrics and serve `/metrics`.
    pub enabled: bool,
    /// Address of the endpoint.
    pub listen_addr: SocketAddr,
    /// The endpoint is unauthenticated plain HTTP: a non-loopback `listen_addr` is refused
    /// unless this is set (for a private network or a scraping sidecar).
    pub allow_non_loopback: bool,
}

/// Enabled on loopback port 9464; each server's own default takes its place (the vault's is
/// 9464, the orchestrator's 9465), also for the keys a file leaves out.
impl Default for MetricsSettings {
    fn default() -> Self {
        MetricsSettings::on_port(9464)
    }
}

impl MetricsSettings {
    /// Enabled on loopback `port`.
    pub fn on_port(port: u16) -> MetricsSettings {
        MetricsSettings {
            enabled: true,
            listen_addr: SocketAddr::from(([127, 0, 0, 1], port)),
            allow_non_loopback: false,
        }
    }

    /// The range checks of the section.
    pub fn checks(&self) -> [Check; 1] {
        [(
            !self.enabled || self.allow_non_loopback || self.listen_addr.ip().is_loopback(),
            "metrics.listen_addr",
            "must be a loopback address (the endpoint is plain, unauthenticated HTTP), \
             or set metrics.allow_non_loopback",
        )]
    }
}

/// A recorder with Tandem's buckets, not installed: [`registry`]'s, or a test's own (with
/// `metrics::with_local_recorder`).
pub fn recorder() -> PrometheusRecorder {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
        .and_then(|builder| {
            builder.set_buckets_for_metric(
                Matcher::Suffix("_count_per_payment".into()),
                &COUNT_BUCKETS,
            )
        })
        // The bucket lists are constants, never empty.
        .unwrap_or_else(|_| PrometheusBuilder::new())
        .build_recorder()
}

/// The process's registry: installed as the global recorder on first use.
pub fn registry() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!(
                "a metrics recorder was installed before Tandem's: /metrics stays empty"
            );
        }
        handle
    })
}

/// Work a scrape does before rendering: gauges read at that moment (a seal, a breaker, a
/// table's rows).
pub type Refresh = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// One server's endpoint: the families of its prefix, refreshed before each scrape.
#[derive(Clone)]
pub struct Endpoint {
    /// The prefix of the server's metric names, such as `tandem_vault_`.
    pub prefix: &'static str,
    /// Gauges to read before each scrape.
    pub refresh: Option<Refresh>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// The exposition text of the server's families.
    pub async fn render(&self) -> String {
        if let Some(refresh) = &self.refresh {
            refresh().await;
        }
        let registry = registry();
        registry.run_upkeep();
        families_of(&registry.render(), self.prefix)
    }
}

/// The lines of `text` (exposition format) that belong to the families named `prefix*`.
fn families_of(text: &str, prefix: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let name = match line.strip_prefix("# ") {
            Some(comment) => comment.split(' ').nth(1).unwrap_or_default(),
            None => line,
        };
        if name.starts_with(prefix) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Binds `settings.listen_addr` and serves the endpoint `make` builds there until `stop`;
/// `None` when metrics are off. Installs the registry first, so that what `make` describes and
/// the server records from then on is kept.
pub async fn start(
    settings: &MetricsSettings,
    make: impl FnOnce() -> Endpoint,
    stop: watch::Receiver<bool>,
) -> std::io::Result<Option<(SocketAddr, tokio::task::JoinHandle<()>)>> {
    if !settings.enabled {
        return Ok(None);
    }
    registry();
    let endpoint = make();
    let listener = TcpListener::bind(settings.listen_addr).await?;
    let addr = listener.local_addr()?;
    tracing::info!(address = %addr, "metrics serving");
    Ok(Some((addr, tokio::spawn(serve(listener, endpoint, stop)))))
}

/// Serves `/metrics` on `listener` until `stop`.
pub async fn serve(listener: TcpListener, endpoint: Endpoint, mut stop: watch::Receiver<bool>) {
    let permits = Arc::new(Semaphore::new(SCRAPES_MAX));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = async { let _ = stop.wait_for(|stopped| *stopped).await; } => return,
        };
        let Ok((mut stream, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            // Too many scrapes at once: refuse this one rather than queue.
            let _ = stream
                .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await;
            continue;
        };
        let endpoint = endpoint.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tokio::time::timeout(SCRAPE_TIMEOUT, answer(&mut stream, &endpoint)).await;
        });
    }
}

async fn answer(stream: &mut tokio::net::TcpStream, endpoint: &Endpoint) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buffer = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let read = stream.read(&mut buffer).await?;
        if read == 0 || head.len() + read > REQUEST_BYTES_MAX {
            return Ok(());
        }
        head.extend_from_slice(&buffer[..read]);
    }
    let request_line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let (status, body) = if request_line.starts_with(b"GET /metrics ") {
        ("200 OK", endpoint.render().await)
    } else {
        ("404 Not Found", String::new())
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An endpoint serves its own families only: their help, type and samples, buckets
    /// included.
    #[test]
    fn families_are_served_by_prefix() {
        let text = "# HELP tandem_vault_sealed 1 while sealed.\n\
                    # TYPE tandem_vault_sealed gauge\n\
                    tandem_vault_sealed 0\n\
                    # TYPE tandem_orchestrator_stage_seconds histogram\n\
                    tandem_orchestrator_stage_seconds_bucket{stage=\"PENDING\",le=\"0.001\"} 1\n\
                    tandem_orchestrator_stage_seconds_count{stage=\"PENDING\"} 1\n";
        assert_eq!(
            families_of(text, "tandem_vault_"),
            "# HELP tandem_vault_sealed 1 while sealed.\n\
             # TYPE tandem_vault_sealed gauge\n\
             tandem_vault_sealed 0\n"
        );
        let orchestrator = families_of(text, "tandem_orchestrator_");
        assert_eq!(orchestrator.lines().count(), 3, "{orchestrator}");
        assert!(!orchestrator.contains("vault"));
    }

    /// The endpoint's address must stay on loopback unless explicitly allowed off it.
    #[test]
    fn the_endpoint_stays_on_loopback() {
        let mut settings = MetricsSettings::on_port(9464);
        assert!(settings.checks()[0].0);
        settings.listen_addr = "0.0.0.0:9464".parse().expect("address");
        assert!(!settings.checks()[0].0);
        settings.allow_non_loopback = true;
        assert!(settings.checks()[0].0);
        settings.allow_non_loopback = false;
        settings.enabled = false;
        assert!(settings.checks()[0].0);
    }
}
