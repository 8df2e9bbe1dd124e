//! The server side: a TLS 1.3-only configuration that requires client certificates, and an
//! accept loop with bounded, time-limited handshakes and a cap on open connections.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use crate::{TlsError, TlsFiles, load_certs, load_key};

/// Builds the server configuration: TLS 1.3 only, ALPN `h2`, and a client certificate that
/// chains to `files.ca_path` required on every connection.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for ca in load_certs(&files.ca_path, "CA certificate")? {
        roots.add(ca)?;
    }
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            load_certs(&files.cert_path, "certificate")?,
            load_key(&files.key_path)?,
        )?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// [`server_config`] for a web server speaking HTTP/1.1 to browsers (ALPN `http/1.1`): the same
/// TLS 1.3 and the same required client certificate.
pub fn web_server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = Arc::unwrap_or_clone(server_config(files)?);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Limits of the accept loop.
#[derive(Debug, Clone, Copy)]
pub struct AcceptLimits {
    /// Time a peer has to finish its TLS handshake before the connection is dropped.
    pub handshake_timeout: Duration,
    /// Handshakes in progress at once; further connections wait in the kernel's backlog.
    pub handshakes_max: usize,
    /// Connections open at once, handshakes included; further ones wait in the kernel's
    /// backlog until one closes.
    pub connections_max: usize,
}

/// An accepted connection whose handshake succeeded. It holds its place among the server's
/// open connections until it is dropped.
#[derive(Debug)]
pub struct Connection {
    stream: TlsStream<TcpStream>,
    _open: OwnedSemaphorePermit,
}

/// Accepts TCP connections on `listener`, completes their TLS handshakes concurrently (each
/// bounded by `limits`), and yields only the connections whose handshake succeeded: plaintext,
/// certificate-less and foreign-CA peers are dropped here, before any gRPC code sees them.
/// Once `limits.connections_max` are open, the loop accepts no more until one closes.
///
/// Pass the stream to `tonic::transport::Server::serve_with_incoming_shutdown`; tonic reads the
/// peer certificates from each stream for [`crate::identity::caller_of`]. The loop ends when the
/// stream is dropped.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    limits: AcceptLimits,
) -> ReceiverStream<Result<Connection, io::Error>> {
    assert!(limits.handshakes_max > 0, "handshakes_max must be positive");
    assert!(
        limits.connections_max > 0,
        "connections_max must be positive"
    );
    let acceptor = TlsAcceptor::from(config);
    let (sender, receiver) = mpsc::channel(limits.handshakes_max);
    tokio::spawn(async move {
        let handshakes = Arc::new(Semaphore::new(limits.handshakes_max));
        let connections = Arc::new(Semaphore::new(limits.connections_max));
        loop {
            let Ok(open) = connections.clone().acquire_owned().await else {
                return;
            };
            let Ok(handshake) = handshakes.clone().acquire_owned().await else {
                return;
            };
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = sender.closed() => return,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Typically EMFILE: back off instead of spinning on the error.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // gRPC writes small frames and waits for the answer: without TCP_NODELAY, Nagle's
            // algorithm and the peer's delayed ACK add ~40 ms to a request-response exchange.
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::warn!(%peer, %error, "cannot set TCP_NODELAY");
            }
            let acceptor = acceptor.clone();
            let sender = sender.clone();
            tokio::spawn(async move {
                let handshake_result =
                    tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await;
                drop(handshake);
                match handshake_result {
                    Ok(Ok(stream)) => {
                        let connection = Connection {
                            stream,
                            _open: open,
                        };
                        // The receiver is gone only when the server is shutting down.
                        let _ = sender.send(Ok(connection)).await;
                    }
                    Ok(Err(error)) => {
                        tracing::info!(%peer, %error, "tls handshake refused");
                    }
                    Err(_) => tracing::info!(%peer, "tls handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(receiver)
}

impl Connection {
    /// The peer's certificate chain, leaf first (always present: the handshake required one).
    pub fn peer_certificates(&self) -> Option<&[rustls::pki_types::CertificateDer<'static>]> {
        self.stream.get_ref().1.peer_certificates()
    }
}

impl tonic::transport::server::Connected for Connection {
    type ConnectInfo = <TlsStream<TcpStream> as tonic::transport::server::Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
