//! Assembles and runs the orchestrator: database (its schema and the ledger's), the vault
//! client, the workflow and its recovery worker, the rate source and its rates file watcher, and
//! the tonic server with mutual TLS, limits, health and reflection, until shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tandem_proto::tandem::orchestrator::v1::card_group_service_server::CardGroupServiceServer;
use tandem_proto::tandem::orchestrator::v1::fx_service_server::FxServiceServer;
use tandem_proto::tandem::orchestrator::v1::ledger_service_server::LedgerServiceServer;
use tandem_proto::tandem::orchestrator::v1::payment_service_server::PaymentServiceServer;
use tandem_proto::tandem::orchestrator::v1::reconciliation_service_server::ReconciliationServiceServer;
use tandem_proto::tandem::orchestrator::v1::risk_service_server::RiskServiceServer;
use tandem_proto::tandem::orchestrator::v1::webhook_service_server::WebhookServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Settings;
use crate::fx::Fx;
use crate::fx::file::Watcher as RatesFileWatcher;
use crate::groups::Groups;
use crate::grpc::{
    CardGroupApi, FxApi, LedgerApi, PaymentApi, ReconciliationApi, RiskApi, WebhookApi,
};
use crate::ledger_reads::LedgerReads;
use crate::payments::Payments;
use crate::reconciliation::Reconciliation;
use crate::risk::Risk;
use crate::vault::VaultClient;
use crate::webhooks::Webhooks;
use crate::webhooks::delivery::Worker as WebhookWorker;
use crate::workflow::{CrashPlan, Workflow};

/// The gRPC services this server registers, as reflection advertises them.
const SERVED_SERVICES: [&str; 10] = [
    "tandem.orchestrator.v1.CardGroupService",
    "tandem.orchestrator.v1.PaymentService",
    "tandem.orchestrator.v1.LedgerService",
    "tandem.orchestrator.v1.ReconciliationService",
    "tandem.orchestrator.v1.WebhookService",
    "tandem.orchestrator.v1.FxService",
    "tandem.orchestrator.v1.RiskService",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// Why the orchestrator could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// TLS material is missing or invalid.
    #[error(transparent)]
    Tls(#[from] tandem_tls::TlsError),
    /// The vault client could not be set up.
    #[error("vault client: {0}")]
    Vault(#[from] tandem_tls::client::ConnectError),
    /// The database could not be reached.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Migrations failed.
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
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

/// Opens the orchestrator's pool and applies its and the ledger's migrations.
pub async fn connect_database(settings: &Settings) -> Result<PgPool, RunError> {
    let pool = settings.database.connect().await?;
    crate::storage::migrator().run(&pool).await?;
    Ok(pool)
}

/// Runs the orchestrator on `listener` until `shutdown` completes.
pub async fn run(
    listener: TcpListener,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    run_with(listener, settings, shutdown, None).await
}

/// As [`run`], with a simulated crash of the workflow for tests of recovery: at the planned
/// point the payment's drive stops dead, as if the process had died there.
pub async fn run_with(
    listener: TcpListener,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
    crash: Option<Arc<CrashPlan>>,
) -> Result<(), RunError> {
    let tls = tandem_tls::server::server_config(&settings.tls.files())?;
    let pool = connect_database(&settings).await?;
    let vault = VaultClient::connect_lazy(&settings.vault)?;
    let (stop_sender, stop) = watch::channel(false);
    // Before anything records: what the server records from its start is kept.
    let metrics_task = tandem_runtime::metrics::start(
        &settings.metrics,
        || metrics_endpoint(pool.clone()),
        stop.clone(),
    )
    .await
    .map_err(RunError::Metrics)?
    .map(|(_, task)| task);
    let workflow = Workflow::new(
        pool.clone(),
        vault,
        settings.payments.clone(),
        crash,
        stop.clone(),
    );
    let groups = Arc::new(Groups::new(workflow.clone()));
    // The rate source, before the payments that convert at its rates.
    let fx = Arc::new(Fx::new(
        pool.clone(),
        settings.fx.clone(),
        settings.payments.request_id_wait_ms,
    ));
    let payments = Arc::new(Payments::new(
        workflow.clone(),
        fx.clone(),
        settings.risk.clone(),
        settings.server.request_timeout(),
    ));
    let risk = Arc::new(Risk::new(
        pool.clone(),
        settings.risk.clone(),
        settings.payments.request_id_wait_ms,
    ));
    let prune_task = tokio::spawn(risk.clone().prune_loop(stop.clone()));
    let ledger = Arc::new(LedgerReads::new(pool.clone(), settings.ledger.clone()));
    let reconciliation = Arc::new(Reconciliation::new(
        pool.clone(),
        workflow.vault().clone(),
        settings.reconciliation.clone(),
        settings.payments.request_id_wait_ms,
        workflow.owner(),
    ));
    let reconciliation_task = settings
        .reconciliation
        .worker_enabled
        .then(|| tokio::spawn(reconciliation.clone().worker_loop(stop.clone())));
    let webhooks = Arc::new(Webhooks::new(
        pool.clone(),
        settings.webhook.clone(),
        settings.payments.request_id_wait_ms,
    ));
    let webhook_task = match webhooks.sealing_key() {
        Some(key) if settings.webhook.worker_enabled => {
            let worker = Arc::new(WebhookWorker::new(
                pool.clone(),
                settings.webhook.clone(),
                key,
                workflow.owner(),
            ));
            Some(tokio::spawn(worker.run(stop.clone())))
        }
        _ => None,
    };
    // The rates file is read before the server answers, then watched.
    let rates_file_task = match RatesFileWatcher::new(fx.clone()) {
        Some(mut watcher) => {
            watcher.poll().await;
            Some(tokio::spawn(watcher.run(stop.clone())))
        }
        None => None,
    };
    let delay_task = tokio::spawn(
        payments
            .clone()
            .delay_loop(settings.notify.clone(), stop.clone()),
    );
    let recovery_task = tokio::spawn(workflow.clone().recovery_loop());
    let committer_task = workflow.start_committer();
    let feeds_task = tokio::spawn(workflow.feeds().clone().run(stop.clone()));

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<CardGroupServiceServer<CardGroupApi>>()
        .await;
    health_reporter
        .set_serving::<PaymentServiceServer<PaymentApi>>()
        .await;
    health_reporter
        .set_serving::<LedgerServiceServer<LedgerApi>>()
        .await;
    health_reporter
        .set_serving::<ReconciliationServiceServer<ReconciliationApi>>()
        .await;
    health_reporter
        .set_serving::<WebhookServiceServer<WebhookApi>>()
        .await;
    health_reporter
        .set_serving::<FxServiceServer<FxApi>>()
        .await;
    health_reporter
        .set_serving::<RiskServiceServer<RiskApi>>()
        .await;
    let (reflection_v1, reflection_v1alpha) =
        tandem_runtime::serving::reflection(&SERVED_SERVICES)?;

    let message_bytes_max = settings.server.message_bytes_max;
    let uri_prefix = &settings.tls.identity_uri_prefix;
    let card_group_service = CardGroupServiceServer::new(CardGroupApi::new(groups, uri_prefix))
        .max_decoding_message_size(message_bytes_max)
        .max_encoding_message_size(message_bytes_max);
    let payment_service =
        PaymentServiceServer::new(PaymentApi::new(payments, uri_prefix, message_bytes_max))
            .max_decoding_message_size(message_bytes_max)
            .max_encoding_message_size(message_bytes_max);

    let ledger_service =
        LedgerServiceServer::new(LedgerApi::new(ledger, uri_prefix, message_bytes_max))
            .max_decoding_message_size(message_bytes_max)
            .max_encoding_message_size(message_bytes_max);

    let reconciliation_service =
        ReconciliationServiceServer::new(ReconciliationApi::new(reconciliation, uri_prefix))
            .max_decoding_message_size(message_bytes_max)
            .max_encoding_message_size(message_bytes_max);

    let webhook_service = WebhookServiceServer::new(WebhookApi::new(webhooks, uri_prefix))
        .max_decoding_message_size(message_bytes_max)
        .max_encoding_message_size(message_bytes_max);

    let fx_service = FxServiceServer::new(FxApi::new(fx, uri_prefix))
        .max_decoding_message_size(message_bytes_max)
        .max_encoding_message_size(message_bytes_max);

    let risk_service = RiskServiceServer::new(RiskApi::new(risk, uri_prefix))
        .max_decoding_message_size(message_bytes_max)
        .max_encoding_message_size(message_bytes_max);

    let address = listener.local_addr().ok();
    let incoming = tandem_tls::server::incoming(
        listener,
        tls,
        tandem_runtime::serving::accept_limits(&settings.server),
    );
    tracing::info!(?address, owner = workflow.owner(), "orchestrator serving");

    let serve = tandem_runtime::serving::builder(&settings.server)
        .layer(tandem_runtime::wire::layer(crate::grpc::status::DOMAIN))
        .layer(tandem_runtime::correlation::layer())
        .layer(tandem_runtime::telemetry::layer("tandem-orchestrator"))
        .layer(tandem_runtime::admission::layer(
            settings.limits.clone(),
            uri_prefix,
            crate::auth::Rpc::class_of_path,
            crate::grpc::status::DOMAIN,
            crate::metrics::ADMISSION_REFUSALS,
        ))
        .add_service(card_group_service)
        .add_service(payment_service)
        .add_service(ledger_service)
        .add_service(reconciliation_service)
        .add_service(webhook_service)
        .add_service(fx_service)
        .add_service(risk_service)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(incoming, tandem_runtime::serving::stopped(stop));
    let stopping = async move {
        health_reporter
            .set_not_serving::<PaymentServiceServer<PaymentApi>>()
            .await;
        health_reporter
            .set_not_serving::<LedgerServiceServer<LedgerApi>>()
            .await;
        health_reporter
            .set_not_serving::<ReconciliationServiceServer<ReconciliationApi>>()
            .await;
        health_reporter
            .set_not_serving::<WebhookServiceServer<WebhookApi>>()
            .await;
        health_reporter
            .set_not_serving::<FxServiceServer<FxApi>>()
            .await;
        health_reporter
            .set_not_serving::<RiskServiceServer<RiskApi>>()
            .await;
    };
    let grace = Duration::from_millis(settings.server.shutdown_grace_ms);
    let result = tandem_runtime::serving::serve_until(
        "orchestrator",
        serve,
        shutdown,
        stop_sender,
        stopping,
        grace,
    )
    .await;
    recovery_task.abort();
    committer_task.abort();
    feeds_task.abort();
    delay_task.abort();
    prune_task.abort();
    for task in [
        reconciliation_task,
        webhook_task,
        rates_file_task,
        metrics_task,
    ]
    .into_iter()
    .flatten()
    {
        task.abort();
    }
    // Payments still being driven keep their leases; another instance (or this one after a
    // restart) resumes them once the leases expire.
    pool.close().await;
    result.map_err(RunError::from)
}

/// The orchestrator's metrics endpoint: the families of [`crate::metrics`], with the gauges of
/// the database read at a scrape (the payments in flight, the open discrepancies; at most every
/// few seconds: scrapes in between reuse them).
fn metrics_endpoint(pool: PgPool) -> tandem_runtime::metrics::Endpoint {
    const READ_TTL: std::time::Duration = std::time::Duration::from_secs(5);
    /// When the gauges were last read, and the discrepancy series reported then.
    #[derive(Default)]
    struct Read {
        at: Option<std::time::Instant>,
        discrepancies: std::collections::BTreeSet<(String, String)>,
    }
    crate::metrics::describe();
    let read: Arc<tokio::sync::Mutex<Read>> = Arc::default();
    let refresh: tandem_runtime::metrics::Refresh = Arc::new(move || {
        let (pool, read) = (pool.clone(), read.clone());
        Box::pin(async move {
            let mut read = read.lock().await;
            if read.at.is_some_and(|at| at.elapsed() < READ_TTL) {
                return;
            }
            let in_flight = crate::storage::in_flight(&pool).await;
            let discrepancies = crate::storage::reconciliation::open_discrepancies(&pool).await;
            match (in_flight, discrepancies) {
                (Ok(in_flight), Ok(discrepancies)) => {
                    crate::metrics::in_flight(in_flight, time::OffsetDateTime::now_utc());
                    crate::metrics::open_discrepancies(&discrepancies, &mut read.discrepancies);
                    read.at = Some(std::time::Instant::now());
                }
                (Err(error), _) | (_, Err(error)) => {
                    tracing::warn!(%error, "database gauges unavailable for metrics");
                }
            }
        })
    });
    tandem_runtime::metrics::Endpoint {
        prefix: "tandem_orchestrator_",
        refresh: Some(refresh),
    }
}
