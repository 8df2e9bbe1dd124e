//! The listening socket and the gRPC server, built the same way by every Tandem server from
//! its [`ServerSettings`]: the listen backlog, the request timeout, HTTP/2's stream cap per
//! connection and keep-alive pings; reflection; and the graceful stop (stop accepting, mark
//! the services not serving, let calls in flight finish within a grace period). Layers
//! (admission, correlation, error wording) and the services are each server's own.

use std::future::Future;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tonic_reflection::server::{v1, v1alpha};

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

/// Completes once `stop` says the server is stopping (or its sender is gone): what the gRPC
/// server and every background task of a server wait on to end.
pub async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// Runs `serve` (a server built with [`builder`], shutting down on [`stopped`] of `stop`)
/// until `shutdown` completes, then stops: sets `stop`, so the server accepts no more calls
/// and every task watching it ends, runs `stopping` (which marks the services not serving),
/// and lets the calls in flight finish for at most `grace`. Returns the server's own result,
/// or `Ok` when the grace elapsed with calls still in flight.
pub async fn serve_until<E>(
    name: &str,
    serve: impl Future<Output = Result<(), E>>,
    shutdown: impl Future<Output = ()>,
    stop: watch::Sender<bool>,
    stopping: impl Future<Output = ()>,
    grace: Duration,
) -> Result<(), E> {
    let grace_over = stopped(stop.subscribe());
    let stopper = async move {
        shutdown.await;
        tracing::info!("{name} shutting down");
        let _ = stop.send(true);
        stopping.await;
        // The sender lives until the grace period is over.
        tokio::time::sleep(grace).await;
        drop(stop);
    };
    tokio::pin!(serve);
    tokio::select! {
        result = &mut serve => result,
        ((), ()) = async { tokio::join!(stopper, grace_over) } => {
            tracing::warn!("shutdown grace elapsed with requests in flight");
            Ok(())
        }
    }
}

/// gRPC reflection (v1 and v1alpha) advertising exactly the services of `served`: the
/// descriptor set holds both servers' services, and each server serves only its own.
#[allow(clippy::type_complexity)]
pub fn reflection(
    served: &[&str],
) -> Result<
    (
        v1::ServerReflectionServer<impl v1::ServerReflection>,
        v1alpha::ServerReflectionServer<impl v1alpha::ServerReflection>,
    ),
    tonic_reflection::server::Error,
> {
    let builder = || {
        served.iter().fold(
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(tandem_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET),
            |builder, service| builder.with_service_name(*service),
        )
    };
    Ok((builder().build_v1()?, builder().build_v1alpha()?))
}
