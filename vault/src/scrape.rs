//! The metrics endpoint: Prometheus metrics on a loopback HTTP port (`GET /metrics`, text
//! exposition format 0.0.4).
//!
//! Counters of vault operations come from [`crate::metrics`] (fed by the writer from the audit
//! rows it commits: what is counted is what was audited); gauges are read when scraped: the
//! seal, the connector's circuit breaker, the data keys and the rewrap.
//!
//! The endpoint is deliberately small: HTTP/1.1, one request per connection, a bounded request
//! head, a timeout, and a cap on concurrent scrapes. It serves metrics only and never card
//! data: labels are method names and outcome reasons.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::charges::Charges;
use crate::connector::breaker::BreakerState;
use crate::keys::admin::KeyAdmin;
use crate::metrics::Metrics;

/// Largest request head read, in bytes.
const REQUEST_BYTES_MAX: usize = 8192;
/// Time a scraper has to send its request and read the answer.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
/// Scrapes served at once.
const SCRAPES_MAX: usize = 4;

/// How long a scrape's key section (which counts card rows) is reused by later scrapes.
const KEY_SECTION_TTL: Duration = Duration::from_secs(5);

/// Everything a scrape reads.
#[derive(Debug, Clone)]
pub struct Sources {
    /// Operation counters.
    pub metrics: Arc<Metrics>,
    /// The charging side (connector breaker).
    pub charges: Arc<Charges>,
    /// Key administration (seal, data keys, rewrap).
    pub keys: Arc<KeyAdmin>,
    /// The key section of the last scrape and when it was rendered: scrapes share it for
    /// [`KEY_SECTION_TTL`], so frequent scrapes do not keep counting the cards table.
    pub key_section: Arc<tokio::sync::Mutex<Option<(std::time::Instant, String)>>>,
}

impl Sources {
    /// Sources with an empty key-section cache.
    pub fn new(metrics: Arc<Metrics>, charges: Arc<Charges>, keys: Arc<KeyAdmin>) -> Sources {
        Sources {
            metrics,
            charges,
            keys,
            key_section: Arc::new(tokio::sync::Mutex::new(None)),
        }
    }
}

/// A label value with `\`, `"` and newlines escaped, as the exposition format requires.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Renders the exposition text.
pub async fn render(sources: &Sources) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP tandem_vault_operations_total Vault calls and jobs by method and outcome (OK or the error reason), as audited.\n\
         # TYPE tandem_vault_operations_total counter"
    );
    let operations = sources.metrics.operations();
    for ((rpc, outcome), count) in &operations {
        let _ = writeln!(
            out,
            "tandem_vault_operations_total{{rpc=\"{}\",outcome=\"{}\"}} {count}",
            label(rpc),
            label(outcome)
        );
    }
    // The integrity alarm, always present so that an alert on its increase needs no label.
    let unreadable: u64 = operations
        .iter()
        .filter(|((_, outcome), _)| outcome == "CARD_DATA_UNREADABLE")
        .map(|(_, count)| count)
        .sum();
    let _ = writeln!(
        out,
        "# HELP tandem_vault_card_data_unreadable_total Calls refused because a card's stored data did not open (corrupted or moved ciphertext): an integrity alarm, see the key runbook.\n\
         # TYPE tandem_vault_card_data_unreadable_total counter\n\
         tandem_vault_card_data_unreadable_total {unreadable}"
    );
    let vault = sources.charges.vault();
    let _ = writeln!(
        out,
        "# HELP tandem_vault_sealed 1 while the vault is sealed.\n# TYPE tandem_vault_sealed gauge\n\
         tandem_vault_sealed {}",
        u8::from(vault.is_sealed())
    );
    let connector = sources.charges.connector();
    let state = connector.breaker_state();
    let _ = writeln!(
        out,
        "# HELP tandem_vault_connector_breaker_state The connector's circuit breaker: 0 closed, 1 half-open, 2 open.\n\
         # TYPE tandem_vault_connector_breaker_state gauge\n\
         tandem_vault_connector_breaker_state{{connector=\"{}\"}} {}",
        connector.name(),
        match state {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        }
    );
    let _ = writeln!(
        out,
        "# HELP tandem_vault_connector_breaker_opened_total Times the connector's circuit breaker opened.\n\
         # TYPE tandem_vault_connector_breaker_opened_total counter\n\
         tandem_vault_connector_breaker_opened_total{{connector=\"{}\"}} {}",
        connector.name(),
        connector.breaker_opened_total()
    );
    let mut cached = sources.key_section.lock().await;
    if let Some((at, section)) = cached.as_ref()
        && at.elapsed() < KEY_SECTION_TTL
    {
        out.push_str(section);
        return out;
    }
    let mut section = String::new();
    match sources.keys.status().await {
        Ok(status) => {
            let out = &mut section;
            let _ = writeln!(
                out,
                "# HELP tandem_vault_data_key_rows Card rows sealed under each data-key version.\n\
                 # TYPE tandem_vault_data_key_rows gauge"
            );
            for key in &status.data_keys {
                let _ = writeln!(
                    out,
                    "tandem_vault_data_key_rows{{version=\"{}\",state=\"{}\"}} {}",
                    key.version, key.state, key.rows
                );
            }
            let _ = writeln!(
                out,
                "# HELP tandem_vault_data_key_encryptions Encryptions counted against each data-key version's budget.\n\
                 # TYPE tandem_vault_data_key_encryptions gauge"
            );
            for key in &status.data_keys {
                let _ = writeln!(
                    out,
                    "tandem_vault_data_key_encryptions{{version=\"{}\"}} {}",
                    key.version, key.encryptions
                );
            }
            let rewrap = &status.rewrap;
            let _ = writeln!(
                out,
                "# HELP tandem_vault_rewrap_rows_remaining Card rows still under older data-key versions.\n\
                 # TYPE tandem_vault_rewrap_rows_remaining gauge\n\
                 tandem_vault_rewrap_rows_remaining {}\n\
                 # HELP tandem_vault_rewrap_rows_done Rows re-encrypted by the current rewrap.\n\
                 # TYPE tandem_vault_rewrap_rows_done gauge\n\
                 tandem_vault_rewrap_rows_done {}\n\
                 # HELP tandem_vault_rewrap_rows_per_second Rewrap rate over the last minute.\n\
                 # TYPE tandem_vault_rewrap_rows_per_second gauge\n\
                 tandem_vault_rewrap_rows_per_second {:.3}",
                rewrap.rows_remaining, rewrap.rows_done, rewrap.rows_per_s
            );
        }
        Err(error) => {
            tracing::warn!(%error, "key status unavailable for metrics");
        }
    }
    out.push_str(&section);
    *cached = Some((std::time::Instant::now(), section));
    out
}

/// Serves `/metrics` on `listener` until `stop`.
pub async fn serve(listener: TcpListener, sources: Sources, mut stop: watch::Receiver<bool>) {
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
        let sources = sources.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tokio::time::timeout(SCRAPE_TIMEOUT, answer(&mut stream, &sources)).await;
        });
    }
}

async fn answer(stream: &mut tokio::net::TcpStream, sources: &Sources) -> std::io::Result<()> {
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
        ("200 OK", render(sources).await)
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

    /// Label values are escaped as the exposition format requires.
    #[test]
    fn labels_are_escaped() {
        assert_eq!(
            label("tandem.vault.v1.ChargeService/Authorize"),
            "tandem.vault.v1.ChargeService/Authorize"
        );
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
