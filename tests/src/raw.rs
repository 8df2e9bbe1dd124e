//! Raw connections to the servers, below gRPC: a TLS handshake with chosen protocol versions,
//! and the HTTP/2 settings a server announces.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, SupportedProtocolVersion};
use tandem_tls::identity::Role;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::pki;

/// HTTP/2's `SETTINGS_MAX_CONCURRENT_STREAMS`.
pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;

/// A client configuration trusting the test CA, presenting `role`'s valid certificate, offering
/// ALPN `h2` (as gRPC clients do) and only the protocol `versions`.
pub fn client_config(role: Role, versions: &[&'static SupportedProtocolVersion]) -> ClientConfig {
    let files = pki().client(role);
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(&files.ca_path).expect("read the test CA") {
        roots
            .add(ca.expect("a CA certificate"))
            .expect("add the test CA");
    }
    let chain = CertificateDer::pem_file_iter(&files.cert_path)
        .expect("read the client certificate")
        .collect::<Result<Vec<_>, _>>()
        .expect("a client certificate");
    let key = PrivateKeyDer::from_pem_file(&files.key_path).expect("the client key");
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)
            .expect("the ring provider supports the version")
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .expect("a usable client identity");
    config.alpn_protocols = vec![b"h2".to_vec()];
    config
}

/// A TLS handshake with the server at `addr` (whose certificate names `localhost`) as `role`,
/// offering only `versions`, within ten seconds.
pub async fn handshake(
    addr: SocketAddr,
    role: Role,
    versions: &[&'static SupportedProtocolVersion],
) -> io::Result<TlsStream<TcpStream>> {
    let connector = TlsConnector::from(Arc::new(client_config(role, versions)));
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").expect("a DNS name");
    tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "handshake timed out"))?
}

/// Sends the HTTP/2 client preface on `stream` and returns the server's first SETTINGS frame
/// as (identifier, value) pairs; panics, naming `server`, if the server does not answer with
/// one (it answers only on a connection it kept).
pub async fn server_settings(stream: &mut TlsStream<TcpStream>, server: &str) -> Vec<(u16, u32)> {
    // The client preface, then an empty SETTINGS frame (length 0, type 4, flags 0, stream 0).
    let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    preface.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    stream
        .write_all(&preface)
        .await
        .unwrap_or_else(|e| panic!("{server}: send the HTTP/2 preface: {e}"));
    stream.flush().await.expect("flush");
    let mut header = [0_u8; 9];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut header))
        .await
        .unwrap_or_else(|_| panic!("{server}: no HTTP/2 frame within 10 s"))
        .unwrap_or_else(|e| panic!("{server}: the server dropped the client: {e}"));
    assert_eq!(
        header[3], 4,
        "{server}: the server's first HTTP/2 frame is SETTINGS: {header:?}"
    );
    let length =
        usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
    let mut payload = vec![0_u8; length];
    stream
        .read_exact(&mut payload)
        .await
        .unwrap_or_else(|e| panic!("{server}: read the SETTINGS payload: {e}"));
    payload
        .chunks_exact(6)
        .map(|entry| {
            (
                u16::from_be_bytes([entry[0], entry[1]]),
                u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]),
            )
        })
        .collect()
}
