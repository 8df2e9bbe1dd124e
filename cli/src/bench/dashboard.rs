//! `tandemctl bench dashboard`: the dashboard's payments page over many payments. Pays a few
//! real three-card payments through a fresh stack, copies them in the orchestrator's database
//! to `--payments` payments (new ids and request ids, creation times spread over the last 30
//! days: what `ListPayments` reads is the same as for paid ones), then asks a dashboard for
//! the first page of `/payments` as `reader`, `--samples` times one after another on one
//! connection, and reports the time at the server (its `Server-Timing` header) and at this
//! client: min, median, max.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tandem_proto::tandem::orchestrator::v1::payment_service_client::PaymentServiceClient;
use tandem_tls::TlsFiles;
use tandem_tls::identity::Role;

use super::LoadArgs;
use super::flood::payment;
use super::pay::{PAYMENT_CALL_TIMEOUT, SplitStrategy, create_groups};
use super::stack::{ORCHESTRATOR_DATABASE, Stack, channels};
use super::tokenize::tokenize_cards;
use crate::dev;

/// Payments paid for real, which the copies repeat.
const PAID: usize = 10;
/// Most payments a run makes.
const PAYMENTS_MAX: u32 = 10_000_000;
/// The target at the server for the first page (DESIGN section 13's benchmark line).
const FIRST_PAGE_MS_MAX: f64 = 300.0;

/// Arguments of `tandemctl bench dashboard`.
#[derive(Debug, clap::Args)]
pub struct DashboardArgs {
    /// Payments in the orchestrator's database.
    #[arg(long, default_value_t = 100_000)]
    payments: u32,
    /// Page loads timed.
    #[arg(long, default_value_t = 20)]
    samples: u32,
    #[command(flatten)]
    load: LoadArgs,
}

/// Runs the benchmark.
pub async fn run(args: DashboardArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (PAID as u32..=PAYMENTS_MAX).contains(&args.payments),
        "--payments must be {PAID} to {PAYMENTS_MAX}"
    );
    anyhow::ensure!(
        (1..=1000).contains(&args.samples),
        "--samples must be 1 to 1000"
    );
    dev::ensure_certificates(&args.load.certs)?;
    let mut stack = Stack::new()?;
    let result = measure(&args, &mut stack).await;
    stack.stop();
    result
}

async fn measure(args: &DashboardArgs, stack: &mut Stack) -> anyhow::Result<()> {
    let load = &args.load;
    let vault_uri = stack.vault(load).await?;
    let orchestrator_uri = stack.orchestrator(None, load).await?;
    let run_id = super::run_id();
    let tokens = tokenize_cards(&vault_uri, &load.certs, &run_id, 3).await?;
    let group = create_groups(
        &orchestrator_uri,
        &load.certs,
        &run_id,
        [tokens.as_slice()],
        SplitStrategy::Parallel,
        0,
    )
    .await?
    .remove(0);
    let mut payer = PaymentServiceClient::new(
        channels(
            &orchestrator_uri,
            &load.certs,
            Role::Payer,
            1,
            PAYMENT_CALL_TIMEOUT,
        )
        .await?
        .remove(0),
    );
    for n in 0..PAID {
        payer
            .create_payment(payment(&group, format!("bench-{run_id}-{n}"), true))
            .await
            .map_err(crate::connect::failure)
            .context("paying the payments to copy")?;
    }
    let started = Instant::now();
    let url = dev::ensure_database(&load.shape.database_url, ORCHESTRATOR_DATABASE).await?;
    let pool = sqlx::PgPool::connect(&url)
        .await
        .context("connect to the bench orchestrator's database")?;
    let copies = i64::from(args.payments) - PAID as i64;
    copy_payments(&pool, copies).await?;
    sqlx::query("ANALYZE payments").execute(&pool).await?;
    pool.close().await;
    println!(
        "{} payments ({PAID} paid, {copies} copies) in {:.1} s",
        args.payments,
        started.elapsed().as_secs_f64()
    );

    let mut settings = dev::dashboard_settings(&load.certs, &orchestrator_uri, &vault_uri)?;
    settings.server.listen_addr = ([127, 0, 0, 1], 0).into();
    let listener = tokio::net::TcpListener::bind(settings.server.listen_addr).await?;
    let address = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let dashboard = tokio::spawn(tandem_dashboard::run(listener, settings, async {
        let _ = stopped.await;
    }));
    let timed = time_first_page(&load.certs, address, args.samples).await;
    let _ = stop.send(());
    dashboard.await??;
    let (server, client, rows) = timed?;
    let median = |times: &[f64]| times[times.len() / 2];
    println!(
        "dashboard /payments first page over {} payments: at the server min {:.1} ms, median \
         {:.1} ms, max {:.1} ms; at the client median {:.1} ms ({} loads of {rows} payments; \
         target {FIRST_PAGE_MS_MAX} ms at the server)",
        args.payments,
        server[0],
        median(&server),
        server[server.len() - 1],
        median(&client),
        server.len(),
    );
    anyhow::ensure!(
        median(&server) <= FIRST_PAGE_MS_MAX,
        "the first page's median at the server is over the target of {FIRST_PAGE_MS_MAX} ms"
    );
    Ok(())
}

/// Copies the paid payments until `copies` more are stored: each copy a new id (its record's
/// too) and request id, created at a moment of the last 30 days.
async fn copy_payments(pool: &sqlx::PgPool, copies: i64) -> anyhow::Result<()> {
    const BATCH: i64 = 20_000;
    let mut done = 0;
    while done < copies {
        let batch = BATCH.min(copies - done);
        sqlx::query(
            "WITH source AS (SELECT *, row_number() OVER (ORDER BY id) - 1 AS n, \
               count(*) OVER () AS total FROM payments WHERE request_id NOT LIKE 'copy-%'), \
             copies AS (SELECT g, 'pay_' || translate(substr(md5('copy-' || g), 1, 26), \
               '0189', 'wxyz') AS id FROM generate_series($1::bigint, $2::bigint) AS g) \
             INSERT INTO payments (id, request_id, card_group_id, billing_account_id, invoice_id, \
               state, settled, record, request, events, lease_owner, lease_until, create_time, \
               update_time, policy) \
             SELECT c.id, 'copy-' || c.g, s.card_group_id, s.billing_account_id, \
               s.invoice_id || '-' || c.g, s.state, s.settled, \
               jsonb_set(s.record, '{id}', to_jsonb(c.id)), s.request, s.events, NULL, \
               s.lease_until, now() - make_interval(secs => (c.g % 2592000)::double precision), \
               s.update_time, s.policy \
             FROM copies c JOIN source s ON s.n = c.g % s.total",
        )
        .bind(done)
        .bind(done + batch - 1)
        .execute(pool)
        .await
        .context("copying payments")?;
        done += batch;
    }
    Ok(())
}

/// `samples` loads of `/payments` as `reader` on one connection: the server's times (its
/// `Server-Timing`) and this client's, in milliseconds, each sorted, and the payments a page
/// showed.
async fn time_first_page(
    certs: &std::path::Path,
    address: std::net::SocketAddr,
    samples: u32,
) -> anyhow::Result<(Vec<f64>, Vec<f64>, usize)> {
    let files = TlsFiles::in_dir(certs, Role::Reader.as_str());
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(&files.ca_path).context("the CA")? {
        roots.add(ca.context("the CA")?)?;
    }
    let chain = CertificateDer::pem_file_iter(&files.cert_path)
        .context("the reader's certificate")?
        .collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(&files.key_path).context("the reader's key")?;
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(address).await?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(rustls_pki_types::ServerName::try_from("localhost")?, tcp)
        .await
        .context("TLS handshake with the dashboard")?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    let connection = tokio::spawn(connection);
    let (mut server, mut client, mut rows) = (Vec::new(), Vec::new(), 0);
    // The first load warms the orchestrator's connection and caches; it is not counted.
    for sample in 0..=samples {
        let request = http::Request::get("/payments")
            .header("host", address.to_string())
            .body(Empty::<bytes::Bytes>::new())?;
        sender
            .ready()
            .await
            .context("the connection to the dashboard")?;
        let start = Instant::now();
        let response = tokio::time::timeout(Duration::from_secs(60), sender.send_request(request))
            .await
            .context("no answer in 60 s")??;
        let status = response.status();
        let timing = response
            .headers()
            .get("server-timing")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("total;dur="))
            .and_then(|v| v.parse::<f64>().ok());
        let body = response.into_body().collect().await?.to_bytes();
        let elapsed = start.elapsed().as_secs_f64() * 1000.0;
        anyhow::ensure!(status.is_success(), "/payments answered {status}");
        // 50 asked; the orchestrator cuts a page to fit its message size.
        rows = memchr_count(&body, b"<tr data-payment-id=");
        anyhow::ensure!(rows > 0, "the first page shows no payment");
        if sample > 0 {
            server.push(timing.context("no Server-Timing header")?);
            client.push(elapsed);
        }
    }
    drop(sender);
    let _ = connection.await;
    server.sort_by(f64::total_cmp);
    client.sort_by(f64::total_cmp);
    Ok((server, client, rows))
}

/// How many times `needle` occurs in `haystack`.
fn memchr_count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|window| *window == needle)
        .count()
}
