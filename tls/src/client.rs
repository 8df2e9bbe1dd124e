//! The client side: a tonic channel that verifies the server against the Tandem CA and presents
//! its own certificate.

use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::{TlsError, TlsFiles, read_file};

/// Errors while connecting.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The TLS material could not be loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The connection was not set up within the timeout.
    #[error("cannot connect to {endpoint}: timed out")]
    TimedOut {
        /// The endpoint that did not answer.
        endpoint: String,
    },
    /// The endpoint is invalid or the connection failed.
    #[error("cannot connect to {endpoint}: {source}")]
    Transport {
        /// The endpoint that failed.
        endpoint: String,
        /// The transport error.
        source: tonic::transport::Error,
    },
}

/// Builds an endpoint for `https://host:port` that authenticates with `files` and expects the
/// server certificate to name `server_name` (a DNS SAN such as `localhost`).
pub fn endpoint(
    uri: &str,
    files: &TlsFiles,
    server_name: &str,
    timeout: Duration,
) -> Result<Endpoint, ConnectError> {
    let transport = |source| ConnectError::Transport {
        endpoint: uri.to_owned(),
        source,
    };
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read_file(
            &files.ca_path,
            "CA certificate",
        )?))
        .identity(Identity::from_pem(
            read_file(&files.cert_path, "certificate")?,
            read_file(&files.key_path, "private key")?,
        ))
        .domain_name(server_name);
    Endpoint::from_shared(uri.to_owned())
        .map_err(transport)?
        .tls_config(tls)
        .map_err(transport)
        .map(|endpoint| endpoint.connect_timeout(timeout).timeout(timeout))
}

/// Connects to `uri` with `files`; see [`endpoint`]. `timeout` bounds the whole connection
/// set-up, TLS handshake included (a server at its connection bound accepts the TCP
/// connection into its backlog but does not start the handshake).
pub async fn connect(
    uri: &str,
    files: &TlsFiles,
    server_name: &str,
    timeout: Duration,
) -> Result<Channel, ConnectError> {
    let endpoint = endpoint(uri, files, server_name, timeout)?;
    match tokio::time::timeout(timeout, endpoint.connect()).await {
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(source)) => Err(ConnectError::Transport {
            endpoint: uri.to_owned(),
            source,
        }),
        Err(_) => Err(ConnectError::TimedOut {
            endpoint: uri.to_owned(),
        }),
    }
}
