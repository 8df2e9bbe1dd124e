//! The HTTP edge of webhooks: one POST per attempt, over hyper's HTTP/1.1 client on a TCP (and,
//! for https, rustls) connection to an address the destination check passed. Redirects are
//! never followed (hyper's connection-level client does not follow them; a 3xx is an answer like
//! any other), the whole attempt (resolving, connecting, the handshake, the request and the
//! answer's head) is bounded by `webhook.request_timeout_ms`, and the answer's body is not read.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::destination::Destination;
use crate::domain::webhooks::retry_after_seconds;

/// The `User-Agent` of every delivery.
const USER_AGENT: &str = concat!("Tandem-Webhooks/", env!("CARGO_PKG_VERSION"));

/// An answer's head: what delivery decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// Its `Retry-After`, in seconds or as an HTTP date.
    pub retry_after: Option<Duration>,
}

/// Sends deliveries.
pub struct Sender {
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
}

impl Sender {
    /// A sender trusting the roots of `roots_path` (a PEM bundle; a missing or unreadable
    /// bundle is logged, and https destinations then fail their handshake), each attempt
    /// bounded by `timeout`.
    pub fn new(roots_path: &Path, timeout: Duration) -> Self {
        let mut roots = RootCertStore::empty();
        match CertificateDer::pem_file_iter(roots_path) {
            Ok(certs) => {
                let (added, _) = roots.add_parsable_certificates(certs.filter_map(Result::ok));
                tracing::debug!(added, path = %roots_path.display(), "webhook roots loaded");
            }
            Err(error) => tracing::warn!(
                path = %roots_path.display(), %error,
                "webhook roots not read: https endpoints will fail their handshake"
            ),
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Self {
            tls: Arc::new(config),
            timeout,
        }
    }

    /// Posts `body` (JSON) with `headers` to `destination`; the error says why there was no
    /// answer, for the attempt's record.
    pub async fn post(
        &self,
        destination: &Destination,
        headers: &[(&'static str, String)],
        body: Bytes,
    ) -> Result<Answer, String> {
        match tokio::time::timeout(self.timeout, self.attempt(destination, headers, body)).await {
            Ok(result) => result,
            Err(_) => Err(format!("timed out after {} ms", self.timeout.as_millis())),
        }
    }

    async fn attempt(
        &self,
        destination: &Destination,
        headers: &[(&'static str, String)],
        body: Bytes,
    ) -> Result<Answer, String> {
        let addresses = destination.resolve().await?;
        let mut last_error = String::new();
        let mut stream = None;
        for address in addresses {
            match TcpStream::connect(address).await {
                Ok(connected) => {
                    stream = Some(connected);
                    break;
                }
                Err(error) => last_error = format!("connecting to {address}: {error}"),
            }
        }
        let stream = stream.ok_or(last_error)?;
        let _ = stream.set_nodelay(true);
        if destination.tls {
            let name = ServerName::try_from(destination.host.trim_matches(['[', ']']).to_owned())
                .map_err(|e| format!("server name: {e}"))?;
            let connector = tokio_rustls::TlsConnector::from(self.tls.clone());
            let stream = connector
                .connect(name, stream)
                .await
                .map_err(|e| format!("TLS handshake: {e}"))?;
            exchange(stream, destination, headers, body).await
        } else {
            exchange(stream, destination, headers, body).await
        }
    }
}

/// One HTTP/1.1 request and the head of its answer.
async fn exchange<S>(
    stream: S,
    destination: &Destination,
    headers: &[(&'static str, String)],
    body: Bytes,
) -> Result<Answer, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    // The connection is driven beside the request and closes once the answer is dropped.
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let url = &destination.url;
    let target = match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_owned(),
    };
    let authority = match url.port() {
        Some(port) => format!("{}:{port}", destination.host),
        None => destination.host.clone(),
    };
    let mut request = http::Request::post(target)
        .header(http::header::HOST, authority)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::USER_AGENT, USER_AGENT);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let request = request
        .body(Full::new(body))
        .map_err(|e| format!("request: {e}"))?;
    let answer = sender.send_request(request).await;
    driver.abort();
    let response = answer.map_err(|e| format!("no answer: {e}"))?;
    let retry_after = response
        .headers()
        .get(http::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| retry_after(value, tandem_runtime::time::now_micros()));
    Ok(Answer {
        status: response.status().as_u16(),
        retry_after,
    })
}

/// A `Retry-After` value: seconds, or an HTTP date (the wait until it, none if it passed).
fn retry_after(value: &str, now: OffsetDateTime) -> Option<Duration> {
    if let Some(wait) = retry_after_seconds(value) {
        return Some(wait);
    }
    let date =
        OffsetDateTime::parse(value.trim(), &time::format_description::well_known::Rfc2822).ok()?;
    Some((date - now).try_into().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = time::macros::datetime!(2015-10-21 07:27:00 UTC);
        assert_eq!(retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:20:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("soon", now), None);
    }
}
