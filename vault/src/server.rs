//! Assembles and runs the vault server: database, keys, writer, purge job, and the tonic
//! server with mutual TLS, limits, health and reflection, until shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tandem_proto::tandem::vault::v1::charge_service_server::ChargeServiceServer;
use tandem_proto::tandem::vault::v1::key_admin_service_server::KeyAdminServiceServer;
use tandem_proto::tandem::vault::v1::sandbox_service_server::SandboxServiceServer;
use tandem_proto::tandem::vault::v1::token_service_server::TokenServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::charges::Charges;
use crate::config::{RootKeySource, Settings};
use crate::connector::Guarded;
use crate::connector::breaker::{Breaker, BreakerState};
use crate::connector::sandbox::Sandbox;
use crate::grpc::charges::ChargeApi;
use crate::grpc::keys::KeyAdminApi;
use crate::grpc::sandbox::SandboxApi;
use crate::grpc::tokens::TokenApi;
use crate::kernel::Vault;
use crate::keys::admin::KeyAdmin;
use crate::keys::ring::{KeyLoadError, KeyRing, RootKeySplit, load_or_create_dev_root_key};
use crate::writer::Writer;

/// The gRPC services this server registers, as reflection advertises them.
const SERVED_SERVICES: [&str; 7] = [
    "tandem.vault.v1.TokenService",
    "tandem.vault.v1.ChargeService",
    "tandem.vault.v1.SandboxService",
    "tandem.vault.v1.KeyAdminService",
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
    /// The `shares` root-key source needs keys made by `tandemctl keys init`.
    #[error(
        "keys: root_key_source is \"shares\" but the vault's keys are not initialised; \
         run tandemctl keys init"
    )]
    NotInitialised,
    /// Reflection descriptors are invalid (a build problem).
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The gRPC server failed.
    #[error("server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The metrics endpoint could not listen.
    #[error("metrics: cannot listen: {0}")]
    Metrics(std::io::Error),
}

/// Opens the vault's pool and applies its migrations.
pub async fn connect_database(settings: &Settings) -> Result<PgPool, RunError> {
    let pool = settings.database.connect().await?;
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
    let keys = match settings.keys.root_key_source {
        RootKeySource::Dev => {
            let path = &settings.keys.dev_root_key_path;
            finish_dev_root_rotation(&pool, path).await?;
            let root = load_or_create_dev_root_key(path)?;
            Some(KeyRing::load(&pool, root, RootKeySplit::DEV, settings.keys.clone()).await?)
        }
        RootKeySource::Shares => {
            let record = crate::storage::keys::current_root_key(&pool)
                .await
                .map_err(KeyLoadError::Storage)?;
            if record.is_none() {
                return Err(RunError::NotInitialised);
            }
            tracing::warn!("vault starts sealed: custodians must unseal it with their shares");
            None
        }
    };
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

    let sandbox = Sandbox::new(pool.clone(), &settings.connector);
    let connector = Guarded::new(
        Arc::new(sandbox.clone()),
        Duration::from_millis(settings.connector.timeout_ms),
        Breaker::new(
            settings.connector.breaker_failures_max,
            Duration::from_millis(settings.connector.breaker_open_ms),
        ),
    );
    let charges = Arc::new(Charges::new(
        vault.clone(),
        connector,
        sandbox,
        settings.charges.clone(),
        &settings.connector,
    ));

    let key_admin = Arc::new(KeyAdmin::new(vault.clone(), settings.keys.clone()));

    let (stop_sender, stop) = watch::channel(false);
    let metrics_task = tandem_runtime::metrics::start(
        &settings.metrics,
        || crate::scrape::endpoint(charges.clone(), key_admin.clone()),
        stop.clone(),
    )
    .await
    .map_err(RunError::Metrics)?
    .map(|(_, task)| task);
    let rewrap_task = tokio::spawn(key_admin.clone().rewrap_loop(stop.clone()));
    let purge_task = tokio::spawn(purge_loop(
        vault.clone(),
        Duration::from_millis(settings.tokens.purge_interval_ms),
        stop.clone(),
    ));

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<KeyAdminServiceServer<KeyAdminApi>>()
        .await;
    // The data services' health follows the seal (NOT_SERVING while sealed) and, for
    // ChargeService, the connector's circuit breaker, so that load balancers and the
    // orchestrator see a sealed vault or a processor outage. They start NOT_SERVING, so no
    // health check finds them unknown before the loop's first look.
    health_reporter
        .set_not_serving::<TokenServiceServer<TokenApi>>()
        .await;
    health_reporter
        .set_not_serving::<SandboxServiceServer<SandboxApi>>()
        .await;
    health_reporter
        .set_not_serving::<ChargeServiceServer<ChargeApi>>()
        .await;
    let recovery_task = tokio::spawn(charge_loop(
        charges.clone(),
        health_reporter.clone(),
        stop.clone(),
    ));
    let (reflection_v1, reflection_v1alpha) =
        tandem_runtime::serving::reflection(&SERVED_SERVICES)?;

    let message_bytes_max = settings.server.message_bytes_max;
    let token_service = TokenServiceServer::new(TokenApi::new(
        vault.clone(),
        &settings.tls.identity_uri_prefix,
    ))
    .max_decoding_message_size(message_bytes_max)
    .max_encoding_message_size(message_bytes_max);
    let uri_prefix = &settings.tls.identity_uri_prefix;
    let charge_service = ChargeServiceServer::new(ChargeApi::new(
        charges.clone(),
        uri_prefix,
        message_bytes_max,
    ))
    .max_decoding_message_size(message_bytes_max)
    .max_encoding_message_size(message_bytes_max);
    let sandbox_service = SandboxServiceServer::new(SandboxApi::new(charges.clone(), uri_prefix))
        .max_decoding_message_size(message_bytes_max)
        .max_encoding_message_size(message_bytes_max);
    let key_admin_service = KeyAdminServiceServer::new(KeyAdminApi::new(key_admin, uri_prefix))
        .max_decoding_message_size(message_bytes_max)
        .max_encoding_message_size(message_bytes_max);

    let address = listener.local_addr().ok();
    let incoming = tandem_tls::server::incoming(
        listener,
        tls,
        tandem_runtime::serving::accept_limits(&settings.server),
    );
    tracing::info!(?address, "vault serving");

    let serve = tandem_runtime::serving::builder(&settings.server)
        .layer(tandem_runtime::wire::layer(crate::grpc::status::DOMAIN))
        .layer(tandem_runtime::telemetry::layer("tandem-vault"))
        .layer(tandem_runtime::admission::layer(
            settings.limits.clone(),
            uri_prefix,
            crate::auth::Rpc::class_of_path,
            crate::grpc::status::DOMAIN,
            crate::metrics::ADMISSION_REFUSALS,
        ))
        .add_service(token_service)
        .add_service(charge_service)
        .add_service(sandbox_service)
        .add_service(key_admin_service)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(incoming, tandem_runtime::serving::stopped(stop));
    let stopping = async move {
        health_reporter
            .set_not_serving::<TokenServiceServer<TokenApi>>()
            .await;
        health_reporter
            .set_not_serving::<ChargeServiceServer<ChargeApi>>()
            .await;
    };
    let grace = Duration::from_millis(settings.server.shutdown_grace_ms);
    let result = tandem_runtime::serving::serve_until(
        "vault",
        serve,
        shutdown,
        stop_sender,
        stopping,
        grace,
    )
    .await;
    purge_task.abort();
    recovery_task.abort();
    rewrap_task.abort();
    if let Some(task) = metrics_task {
        task.abort();
    }
    // The writer stops once the last handle (inside `vault`) is gone; let it drain first.
    drop(charges);
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

/// Every `charges.recovery_interval_ms`, finishes charge work left pending; four times a
/// second, reports the data services' health from the seal and ChargeService's also from the
/// connector's circuit breaker.
async fn charge_loop(
    charges: Arc<Charges>,
    health: tonic_health::server::HealthReporter,
    mut stop: watch::Receiver<bool>,
) {
    let recovery_interval = Duration::from_millis(charges.settings().recovery_interval_ms);
    let mut recovery = tokio::time::interval(recovery_interval);
    recovery.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut health_check = tokio::time::interval(Duration::from_millis(250));
    let mut serving = None;
    let mut unsealed = None;
    loop {
        tokio::select! {
            _ = recovery.tick() => {
                match charges.recover().await {
                    Ok(0) => {}
                    Ok(resumed) => tracing::info!(resumed, "recovery resumed pending charges"),
                    Err(error) => tracing::warn!(%error, "charge recovery failed"),
                }
            }
            _ = health_check.tick() => {
                let now_unsealed = !charges.vault().is_sealed();
                if unsealed != Some(now_unsealed) {
                    unsealed = Some(now_unsealed);
                    if now_unsealed {
                        health.set_serving::<TokenServiceServer<TokenApi>>().await;
                        health.set_serving::<SandboxServiceServer<SandboxApi>>().await;
                    } else {
                        health.set_not_serving::<TokenServiceServer<TokenApi>>().await;
                        health.set_not_serving::<SandboxServiceServer<SandboxApi>>().await;
                    }
                }
                let state = charges.connector().breaker_state();
                let now_serving = now_unsealed && state != BreakerState::Open;
                if serving != Some(now_serving) {
                    serving = Some(now_serving);
                    if now_serving {
                        health.set_serving::<ChargeServiceServer<ChargeApi>>().await;
                    } else {
                        if state == BreakerState::Open {
                            tracing::warn!(
                                connector = charges.connector().name(),
                                "circuit breaker open"
                            );
                        }
                        health.set_not_serving::<ChargeServiceServer<ChargeApi>>().await;
                    }
                }
            }
            () = async { let _ = stop.wait_for(|stopped| *stopped).await; } => return,
        }
    }
}

/// Completes a dev root-key rotation interrupted between its database commit and the key file
/// replacement: the new key, written beside the file first, is moved in place if the database
/// already uses it, and discarded otherwise.
async fn finish_dev_root_rotation(pool: &PgPool, path: &std::path::Path) -> Result<(), RunError> {
    let pending = path.with_extension("key.new");
    if !pending.exists() {
        return Ok(());
    }
    let record = crate::storage::keys::current_root_key(pool)
        .await
        .map_err(KeyLoadError::Storage)?;
    let new_root = load_or_create_dev_root_key(&pending)?;
    if record.is_some_and(|r| r.root_key_id == new_root.id()) {
        std::fs::rename(&pending, path).map_err(|e| KeyLoadError::DevKeyFile {
            path: path.display().to_string(),
            detail: e.to_string(),
        })?;
        tracing::warn!("completed an interrupted dev root-key rotation");
    } else {
        let _ = std::fs::remove_file(&pending);
    }
    Ok(())
}
