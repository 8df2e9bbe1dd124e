//! Assembles and runs the vault server: database, keys, writer, purge job, and the tonic
//! server with mutual TLS, limits, health and reflection, until shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tandem_proto::tandem::vault::v1::token_service_server::TokenServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{RootKeySource, Settings};
use crate::grpc::TokenApi;
use crate::keys::{KeyLoadError, KeyRing, load_or_create_dev_root_key};
use crate::service::Vault;
use crate::writer::Writer;

/// The gRPC services this server registers, as reflection advertises them.
const SERVED_SERVICES: [&str; 4] = [
    "tandem.vault.v1.TokenService",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// Why the vault could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// TLS material is missing or invalid.
    #[error(transparent)]
    Tls(#[from] tandem_tls::TlsError),
    /// The database could not be reached or migrated.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Migrations failed.
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Keys could not be loaded.
    #[error("keys: {0}")]
    Keys(#[from] KeyLoadError),
    /// Reflection descriptors are invalid (a build problem).
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The gRPC server failed.
    #[error("server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Opens the vault's pool and applies its migrations.
pub async fn connect_database(settings: &Settings) -> Result<PgPool, RunError> {
    let pool = PgPoolOptions::new()
        .max_connections(settings.database.connections_max)
        .acquire_timeout(Duration::from_millis(settings.database.acquire_timeout_ms))
        .connect(settings.database.url.expose())
        .await?;
    sqlx::migrate!("./migrations").run(&pool).await?;
    Ok(pool)
}

/// Runs the vault on `listener` until `shutdown` completes, then drains in-flight requests for
/// at most `server.shutdown_grace_ms`.
pub async fn run(
    listener: TcpListener,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let tls = tandem_tls::server::server_config(&settings.tls.files())?;
    let pool = connect_database(&settings).await?;
    let root = match settings.keys.root_key_source {
        RootKeySource::Dev => load_or_create_dev_root_key(&settings.keys.dev_root_key_path)?,
    };
    let keys = KeyRing::load(&pool, &root, settings.keys.clone()).await?;
    drop(root);
    let (writer, writer_task) = Writer::spawn(
        pool.clone(),
        settings.audit.batch_size_max,
        settings.audit.queue_max,
        settings.audit.writer_tasks,
    );
    let vault = Arc::new(Vault::new(
        pool.clone(),
        keys,
        writer,
        settings.tokens.clone(),
    ));

    let (stop_sender, stop) = watch::channel(false);
    let purge_task = tokio::spawn(purge_loop(
        vault.clone(),
        Duration::from_millis(settings.tokens.purge_interval_ms),
        stop.clone(),
    ));

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<TokenServiceServer<TokenApi>>()
        .await;
    // Reflection advertises exactly the services served here: the descriptor set also holds
    // the orchestrator's, which this server does not serve.
    let reflection = || {
        SERVED_SERVICES.iter().fold(
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(tandem_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET),
            |builder, service| builder.with_service_name(*service),
        )
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    let message_bytes_max = settings.server.message_bytes_max;
    let token_service = TokenServiceServer::new(TokenApi::new(
        vault.clone(),
        &settings.tls.identity_uri_prefix,
    ))
    .max_decoding_message_size(message_bytes_max)
    .max_encoding_message_size(message_bytes_max);

    let address = listener.local_addr().ok();
    let incoming = tandem_tls::server::incoming(
        listener,
        tls,
        tandem_tls::server::AcceptLimits {
            handshake_timeout: Duration::from_millis(settings.server.handshake_timeout_ms),
            handshakes_max: settings.server.handshakes_max,
        },
    );
    tracing::info!(?address, "vault serving");

    let mut shutdown_signal = stop.clone();
    let serve = tonic::transport::Server::builder()
        .timeout(settings.server.request_timeout())
        .concurrency_limit_per_connection(settings.server.concurrency_per_connection_max)
        .http2_keepalive_interval(Some(Duration::from_millis(
            settings.server.http2_keepalive_interval_ms,
        )))
        .http2_keepalive_timeout(Some(Duration::from_millis(
            settings.server.http2_keepalive_timeout_ms,
        )))
        .add_service(token_service)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = shutdown_signal.wait_for(|stopped| *stopped).await;
        });
    let grace = Duration::from_millis(settings.server.shutdown_grace_ms);
    let mut grace_signal = stop.clone();
    let stopper = async move {
        shutdown.await;
        tracing::info!("vault shutting down");
        health_reporter
            .set_not_serving::<TokenServiceServer<TokenApi>>()
            .await;
        let _ = stop_sender.send(true);
        // Keep the sender alive until the grace period is over.
        tokio::time::sleep(grace).await;
        drop(stop_sender);
    };
    tokio::pin!(serve);
    let result = tokio::select! {
        result = &mut serve => result,
        () = async {
            tokio::join!(stopper, async { let _ = grace_signal.wait_for(|s| *s).await; });
        } => {
            tracing::warn!("shutdown grace elapsed with requests in flight");
            Ok(())
        }
    };
    purge_task.abort();
    // The writer stops once the last handle (inside `vault`) is gone; let it drain first.
    drop(vault);
    let _ = tokio::time::timeout(grace, writer_task).await;
    pool.close().await;
    result.map_err(RunError::from)
}

async fn purge_loop(vault: Arc<Vault>, interval: Duration, mut stop: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        match vault.purge_expired().await {
            Ok(0) => {}
            Ok(purged) => tracing::info!(purged, "purged expired tokens"),
            Err(error) => tracing::warn!(%error, "purge of expired tokens failed"),
        }
    }
}
