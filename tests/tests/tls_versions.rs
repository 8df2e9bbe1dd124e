//! The protocol versions the servers speak: TLS 1.3 only, on the vault's port and on the
//! orchestrator's. A client limited to TLS 1.2 is refused during the handshake even with a
//! valid client certificate; the same client allowed TLS 1.3 gets through, so the refusal is
//! the version's doing and nothing else's.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::version::{TLS12, TLS13};
use rustls::{
    AlertDescription, ClientConfig, ProtocolVersion, RootCertStore, SupportedProtocolVersion,
};
use tandem_tests::{RunningOrchestrator, RunningVault, pki};
use tandem_tls::identity::Role;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A client configuration trusting the test CA, presenting `role`'s valid certificate, offering
/// ALPN `h2` (as gRPC clients do) and only the protocol `versions`.
fn client_config(role: Role, versions: &[&'static SupportedProtocolVersion]) -> ClientConfig {
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
/// offering only `versions`.
async fn handshake(
    addr: SocketAddr,
    role: Role,
    versions: &[&'static SupportedProtocolVersion],
) -> io::Result<TlsStream<TcpStream>> {
    let connector = TlsConnector::from(Arc::new(client_config(role, versions)));
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").expect("a DNS name");
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        connector.connect(name, tcp),
    )
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "handshake timed out"))?
}

/// The rustls error inside an I/O error from tokio-rustls, if there is one.
fn rustls_error(error: &io::Error) -> Option<&rustls::Error> {
    error.get_ref()?.downcast_ref::<rustls::Error>()
}

/// Proves that the server accepted the connection, client certificate included: in TLS 1.3
/// the server checks the client's certificate after the client considers the handshake done,
/// so a finished handshake alone proves nothing. The server must answer the HTTP/2 preface
/// with its SETTINGS frame, which it only does on a connection it kept.
async fn assert_server_speaks_h2(stream: &mut TlsStream<TcpStream>, server: &str) {
    // The client preface, then an empty SETTINGS frame (length 0, type 4, flags 0, stream 0).
    let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    preface.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    stream
        .write_all(&preface)
        .await
        .unwrap_or_else(|e| panic!("{server}: send the HTTP/2 preface: {e}"));
    stream.flush().await.expect("flush");
    let mut header = [0_u8; 9];
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_exact(&mut header),
    )
    .await
    .unwrap_or_else(|_| panic!("{server}: no HTTP/2 frame within 10 s"))
    .unwrap_or_else(|e| {
        panic!("{server}: the server dropped the TLS 1.3 client after the handshake: {e}")
    });
    assert_eq!(
        header[3], 4,
        "{server}: the server's first HTTP/2 frame is SETTINGS: {header:?}"
    );
}

/// On the vault's port and on the orchestrator's, a client that offers only TLS 1.2 with a
/// valid certificate is refused during the handshake with a `protocol_version` alert, while the
/// same client offering only TLS 1.3 completes a TLS 1.3 handshake (ALPN `h2`) and the server
/// keeps the connection and speaks HTTP/2 on it.
#[tokio::test]
async fn tls_1_2_is_refused_and_tls_1_3_accepted_on_both_ports() {
    let vault = RunningVault::start().await;
    let orchestrator = RunningOrchestrator::start(&vault).await;
    let servers = [
        ("vault", vault.addr, Role::Tokenizer),
        ("orchestrator", orchestrator.addr, Role::Reader),
    ];

    for (server, addr, role) in servers {
        let error = handshake(addr, role, &[&TLS12])
            .await
            .map(|_| ())
            .expect_err(&format!("{server} completed a TLS 1.2 handshake"));
        assert_eq!(
            rustls_error(&error),
            Some(&rustls::Error::AlertReceived(
                AlertDescription::ProtocolVersion
            )),
            "{server}: a TLS 1.2 client is refused for its version, not for anything else: \
             {error}"
        );

        let mut stream = handshake(addr, role, &[&TLS13])
            .await
            .unwrap_or_else(|e| panic!("{server}: the TLS 1.3 control handshake failed: {e}"));
        let (_, connection) = stream.get_ref();
        assert_eq!(
            connection.protocol_version(),
            Some(ProtocolVersion::TLSv1_3),
            "{server}"
        );
        assert_eq!(connection.alpn_protocol(), Some(&b"h2"[..]), "{server}");
        assert_server_speaks_h2(&mut stream, server).await;
    }

    orchestrator.stop().await;
    vault.stop().await;
}
