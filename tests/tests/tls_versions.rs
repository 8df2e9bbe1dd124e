//! The protocol versions the servers speak: TLS 1.3 only, on the vault's port and on the
//! orchestrator's. A client limited to TLS 1.2 is refused during the handshake even with a
//! valid client certificate; the same client allowed TLS 1.3 gets through, so the refusal is
//! the version's doing and nothing else's.

use std::io;

use rustls::version::{TLS12, TLS13};
use rustls::{AlertDescription, ProtocolVersion};
use tandem_tests::raw::{handshake, server_settings};
use tandem_tests::{RunningOrchestrator, RunningVault};
use tandem_tls::identity::Role;

/// The rustls error inside an I/O error from tokio-rustls, if there is one.
fn rustls_error(error: &io::Error) -> Option<&rustls::Error> {
    error.get_ref()?.downcast_ref::<rustls::Error>()
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
        // In TLS 1.3 the server checks the client's certificate after the client considers the
        // handshake done, so a finished handshake alone proves nothing: the server answers the
        // HTTP/2 preface with its SETTINGS only on a connection it kept.
        server_settings(&mut stream, server).await;
    }

    orchestrator.stop().await;
    vault.stop().await;
}
