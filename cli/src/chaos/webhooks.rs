//! The chaos run's webhook check: a receiver in this process, registered for every event before
//! the first payment, counts what arrives while the orchestrator is killed -9 again and again.
//! At the end every event of the feed committed after the endpoint was registered (others may
//! have been fanned out before it existed: the reconciliation worker's first runs, say) must
//! have arrived, signed, at least once; a duplicate is
//! counted (it must carry the id of an event of the feed, so a receiver deduplicating on
//! `webhook-id` sees each event once).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use base64::Engine as _;
use tandem_proto::tandem::orchestrator::v1 as pb;
use tandem_proto::tandem::orchestrator::v1::payment_service_client::PaymentServiceClient;
use tandem_proto::tandem::orchestrator::v1::webhook_service_client::WebhookServiceClient;
use tandem_tls::identity::Role;

use crate::process::connect;
use crate::webhooks::listen::{Outcome, SigningSecret, serve};

/// The orchestrator's settings for the run: a sealing key, the local receiver allowed, and a
/// schedule short enough for the run (attempts that fail while the orchestrator restarts are
/// retried within seconds).
pub fn orchestrator_env() -> anyhow::Result<Vec<(&'static str, String)>> {
    let mut key = [0u8; 32];
    getrandom::getrandom(&mut key).context("random source")?;
    Ok(vec![
        (
            "TANDEM_ORCHESTRATOR__WEBHOOK__SECRET_KEY",
            base64::engine::general_purpose::STANDARD.encode(key),
        ),
        (
            "TANDEM_ORCHESTRATOR__WEBHOOK__ALLOW_HOSTS",
            r#"["127.0.0.1"]"#.to_owned(),
        ),
        (
            "TANDEM_ORCHESTRATOR__WEBHOOK__RETRY_SCHEDULE_MS",
            "[0, 200, 500, 1000, 1000, 1000, 1000, 1000, 1000, 1000]".to_owned(),
        ),
        (
            "TANDEM_ORCHESTRATOR__WEBHOOK__REQUEST_TIMEOUT_MS",
            "1000".to_owned(),
        ),
        ("TANDEM_ORCHESTRATOR__WEBHOOK__LEASE_MS", "3000".to_owned()),
        ("TANDEM_ORCHESTRATOR__WEBHOOK__POLL_MS", "50".to_owned()),
    ])
}

/// What the receiver saw, by event id.
#[derive(Debug, Default)]
struct Seen {
    accepted: HashMap<String, usize>,
    refused: usize,
}

/// The receiver of the run.
pub struct Watch {
    seen: Arc<Mutex<Seen>>,
    /// The feed's position once the endpoint was registered.
    registered_at: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

/// What the check found.
#[derive(Debug, Default)]
pub struct Delivered {
    /// Events of the feed.
    pub events: usize,
    /// Deliveries beyond the first of an event.
    pub duplicates: usize,
    /// What is wrong, if anything.
    pub violations: Vec<String>,
}

impl Watch {
    /// Starts the receiver and registers it for every event.
    pub async fn start(orchestrator: &str, certs: &Path) -> anyhow::Result<Watch> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let created =
            WebhookServiceClient::new(connect(orchestrator, certs, Role::Treasury).await?)
                .create_webhook_endpoint(pb::CreateWebhookEndpointRequest {
                    request_id: uuid::Uuid::new_v4().to_string(),
                    url: format!("http://127.0.0.1:{port}/chaos"),
                    event_types: Vec::new(),
                    description: "tandemctl chaos".into(),
                })
                .await
                .context("registering the chaos webhook endpoint")?
                .into_inner();
        let secret = SigningSecret::parse(&created.secret)?;
        // Events committed before the endpoint may have been fanned out before it existed:
        // only those after this position must arrive.
        let (_, registered_at) = feed_ids(orchestrator, certs, String::new()).await?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let sink = {
            let seen = seen.clone();
            Arc::new(move |outcome: Outcome| {
                let mut seen = seen.lock().expect("chaos webhook state");
                match outcome {
                    Outcome::Accepted(received) => {
                        *seen.accepted.entry(received.id).or_default() += 1;
                    }
                    Outcome::Refused { .. } => seen.refused += 1,
                }
            })
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(listener, vec![secret], sink, async {
            let _ = stopped.await;
        }));
        Ok(Watch {
            seen,
            registered_at,
            stop: Some(stop),
        })
    }

    /// Waits until every event of the feed arrived (at most `within`), then stops the receiver
    /// and reports.
    pub async fn check(
        mut self,
        orchestrator: &str,
        certs: &Path,
        within: Duration,
    ) -> anyhow::Result<Delivered> {
        let (ids, _) = feed_ids(orchestrator, certs, self.registered_at.clone()).await?;
        let (all, _) = feed_ids(orchestrator, certs, String::new()).await?;
        let deadline = Instant::now() + within;
        let missing = loop {
            let missing: Vec<&String> = {
                let seen = self.seen.lock().expect("chaos webhook state");
                ids.iter()
                    .filter(|id| !seen.accepted.contains_key(*id))
                    .collect()
            };
            if missing.is_empty() || Instant::now() > deadline {
                break missing.len();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let seen = self.seen.lock().expect("chaos webhook state");
        let known: HashSet<&String> = all.iter().collect();
        let mut report = Delivered {
            events: ids.len(),
            duplicates: seen.accepted.values().map(|n| n - 1).sum(),
            violations: Vec::new(),
        };
        if missing > 0 {
            report.violations.push(format!(
                "{missing} of {} events never arrived by webhook",
                ids.len()
            ));
        }
        let strangers = seen
            .accepted
            .keys()
            .filter(|id| !known.contains(id))
            .count();
        if strangers > 0 {
            report.violations.push(format!(
                "{strangers} webhook ids that are no event of the feed"
            ));
        }
        if seen.refused > 0 {
            report.violations.push(format!(
                "{} webhooks failed their signature check",
                seen.refused
            ));
        }
        Ok(report)
    }
}

/// The id of every event of the feed after `page_token` (empty: from the start) as it stands
/// now, and the position past them.
async fn feed_ids(
    orchestrator: &str,
    certs: &Path,
    mut page_token: String,
) -> anyhow::Result<(Vec<String>, String)> {
    let mut feed = PaymentServiceClient::new(connect(orchestrator, certs, Role::Treasury).await?);
    let mut ids = Vec::new();
    loop {
        let page = feed
            .list_events(pb::ListEventsRequest {
                page_size: 1000,
                page_token: page_token.clone(),
                event_types: Vec::new(),
            })
            .await?
            .into_inner();
        ids.extend(page.events.into_iter().map(|e| e.id));
        if page.next_page_token.is_empty() {
            return Ok((ids, page.resume_page_token));
        }
        page_token = page.next_page_token;
    }
}
