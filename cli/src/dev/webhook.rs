//! `tandemctl dev --webhook-listen PORT`: a webhook receiver inside the dev process
//! ([`crate::webhooks::listen`]) on `127.0.0.1:PORT`, registered with the dev orchestrator as an
//! endpoint for every event, so that each event prints as it arrives.
//!
//! A rerun on the same database keeps the endpoint an earlier run registered for the same URL
//! (found by its description) and gives it a new secret, rather than adding one more endpoint
//! each run: the earlier secret, which this process no longer knows, signs beside the new one
//! for a while, and the receiver checks the new one.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tandem_proto::tandem::orchestrator::v1 as pb;
use tandem_proto::tandem::orchestrator::v1::webhook_service_client::WebhookServiceClient;

use crate::connect::{LIST_PAGES_MAX, failure};
use crate::print::Format;
use crate::webhooks::{Change, Client, listen, update_request};

/// The description of the endpoints `--webhook-listen` registers, by which a rerun finds its own.
const DESCRIPTION: &str = "tandemctl dev --webhook-listen";

/// How long `--exit` waits for the run's events to be delivered before stopping.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The pause before the first look at the endpoint's pending deliveries: the orchestrator
/// fans the last events out to endpoints on its next poll (`webhook.poll_ms`, 100 ms by
/// default), and until then nothing is pending.
const DRAIN_SETTLE: Duration = Duration::from_secs(1);

/// Pause between two looks at the endpoint's pending deliveries.
const DRAIN_POLL: Duration = Duration::from_millis(100);

/// The running receiver and its endpoint.
pub(super) struct Receiver {
    endpoint_id: String,
    client: Client,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Receiver {
    /// Listens on `127.0.0.1:port`, registers `http://127.0.0.1:port/webhooks` for every event
    /// with the orchestrator of `channel` (a treasury identity's), prints the endpoint, and
    /// serves until [`Receiver::stop`].
    pub(super) async fn start(
        port: u16,
        channel: tonic::transport::Channel,
    ) -> anyhow::Result<Receiver> {
        // Bound before the endpoint exists, so that no delivery finds the port closed.
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("cannot listen on {address} for --webhook-listen"))?;
        let url = format!("http://{}/webhooks", listener.local_addr()?);
        let mut client = WebhookServiceClient::new(channel);
        let (endpoint, secret, how) = register(&mut client, &url)
            .await
            .context("registering the --webhook-listen endpoint")?;
        let secret = listen::SigningSecret::parse(&secret)
            .context("the orchestrator's secret for the --webhook-listen endpoint")?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(listen::serve(
            listener,
            vec![secret],
            listen::printer(Format::Table, "webhook  "),
            async move {
                let _ = stopped.await;
            },
        ));
        println!(
            "\nwebhook endpoint {} ({how}) receives every event at {url}; each prints as \
             `webhook  <received>  <webhook-id>  <type>  <summary>`",
            endpoint.id
        );
        Ok(Receiver {
            endpoint_id: endpoint.id,
            client,
            stop,
            task,
        })
    }

    /// Stops the receiver; with `drain`, first waits (up to [`DRAIN_TIMEOUT`]) until its
    /// endpoint has no pending delivery.
    pub(super) async fn stop(mut self, drain: bool) -> anyhow::Result<()> {
        if drain {
            let deadline = Instant::now() + DRAIN_TIMEOUT;
            tokio::time::sleep(DRAIN_SETTLE).await;
            loop {
                let pending = self
                    .client
                    .get_webhook_endpoint(pb::GetWebhookEndpointRequest {
                        endpoint_id: self.endpoint_id.clone(),
                    })
                    .await
                    .map_err(failure)?
                    .into_inner()
                    .endpoint
                    .map_or(0, |endpoint| endpoint.pending_deliveries);
                if pending == 0 {
                    break;
                }
                if Instant::now() >= deadline {
                    eprintln!(
                        "webhook endpoint {}: {pending} deliveries still pending at exit",
                        self.endpoint_id
                    );
                    break;
                }
                tokio::time::sleep(DRAIN_POLL).await;
            }
        }
        let _ = self.stop.send(());
        self.task.await.context("the webhook receiver's task")?
    }
}

/// The endpoint for `url`: the one an earlier run registered, enabled and with a new secret,
/// or a new one. Returns it, its secret, and which of the two it is, for people.
async fn register(
    client: &mut Client,
    url: &str,
) -> anyhow::Result<(pb::WebhookEndpoint, String, &'static str)> {
    let run = uuid::Uuid::new_v4();
    if let Some(earlier) = find(client, url).await? {
        let rotated = client
            .rotate_webhook_secret(pb::RotateWebhookSecretRequest {
                request_id: format!("dev-webhook-listen-{run}/rotate"),
                endpoint_id: earlier.id.clone(),
            })
            .await
            .map_err(failure)?
            .into_inner();
        let mut endpoint = rotated.endpoint.context("no endpoint in the response")?;
        if endpoint.state != i32::from(pb::WebhookEndpointState::Enabled) {
            let request = update_request(
                format!("dev-webhook-listen-{run}/enable"),
                endpoint.id.clone(),
                Change {
                    state: Some(pb::WebhookEndpointState::Enabled),
                    ..Change::default()
                },
            )?;
            endpoint = client
                .update_webhook_endpoint(request)
                .await
                .map_err(failure)?
                .into_inner()
                .endpoint
                .context("no endpoint in the response")?;
        }
        return Ok((endpoint, rotated.secret, "from an earlier run, new secret"));
    }
    let created = client
        .create_webhook_endpoint(pb::CreateWebhookEndpointRequest {
            request_id: format!("dev-webhook-listen-{run}/create"),
            url: url.to_owned(),
            event_types: Vec::new(),
            description: DESCRIPTION.to_owned(),
        })
        .await
        .map_err(failure)?
        .into_inner();
    let endpoint = created.endpoint.context("no endpoint in the response")?;
    Ok((endpoint, created.secret, "new"))
}

/// The endpoint an earlier `--webhook-listen` registered for `url`, if any.
async fn find(client: &mut Client, url: &str) -> anyhow::Result<Option<pb::WebhookEndpoint>> {
    let mut request = pb::ListWebhookEndpointsRequest {
        page_size: 1000,
        page_token: String::new(),
    };
    for _ in 0..LIST_PAGES_MAX {
        let page = client
            .list_webhook_endpoints(request.clone())
            .await
            .map_err(failure)?
            .into_inner();
        if let Some(found) = page
            .endpoints
            .into_iter()
            .find(|e| e.url == url && e.description == DESCRIPTION)
        {
            return Ok(Some(found));
        }
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
    }
    Ok(None)
}
