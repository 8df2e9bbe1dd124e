//! The listening socket and the gRPC server, built the same way by every Tandem server from
//! its [`ServerSettings`]: the listen backlog, the request timeout, HTTP/2's stream cap per
//! connection and keep-alive pings. Layers (admission, correlation, error wording) and the
//! services are each server's own.

use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};

use crate::settings::ServerSettings;

/// Listens on `server.listen_addr` with a backlog of `server.accept_backlog` (the kernel may
/// cap it at `net.core.somaxconn`).
pub fn bind(server: &ServerSettings) -> std::io::Result<TcpListener> {
    let address = server.listen_addr;
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(server.accept_backlog)
}

/// A tonic server with the limits of `server`. Each call runs under `request_timeout_ms`
/// (a stream's until its response starts). No call waits for a slot inside the server: HTTP/2
/// itself caps the streams of a connection at `concurrency_per_connection_max`, and admission
/// refuses what is over a caller's limits.
pub fn builder(server: &ServerSettings) -> tonic::transport::Server {
    let streams = u32::try_from(server.concurrency_per_connection_max).unwrap_or(u32::MAX);
    tonic::transport::Server::builder()
        .timeout(server.request_timeout())
        .max_concurrent_streams(streams)
        .http2_keepalive_interval(Some(Duration::from_millis(
            server.http2_keepalive_interval_ms,
        )))
        .http2_keepalive_timeout(Some(Duration::from_millis(
            server.http2_keepalive_timeout_ms,
        )))
}

/// The accept loop's limits from `server`.
pub fn accept_limits(server: &ServerSettings) -> tandem_tls::server::AcceptLimits {
    tandem_tls::server::AcceptLimits {
        handshake_timeout: Duration::from_millis(server.handshake_timeout_ms),
        handshakes_max: server.handshakes_max,
        connections_max: server.connections_max,
    }
}
