//! `tandemctl webhooks`: the treasury's webhook endpoints on a running orchestrator
//! (`WebhookService`, with a `treasury` identity), and a local receiver to try them with.
//!
//! ```text
//! tandemctl webhooks create --url https://erp.example.com/tandem [--event-type payment.succeeded ...] \
//!     [--description "..."] [--request-id ID] [--format table|csv|json]
//! tandemctl webhooks list [--page-size 100] [--format table|csv|json]
//! tandemctl webhooks show whe_... [--format table|csv|json]
//! tandemctl webhooks update whe_... [--url U] [--description D] \
//!     [--event-type T ... | --all-events] [--enable | --disable] [--request-id ID]
//! tandemctl webhooks rotate whe_... [--request-id ID]
//! tandemctl webhooks deliveries whe_... [--state pending|delivered|canceled] [--event-id evt_...] \
//!     [--page-size 100] [--page-token T | --all] [--format table|csv|json]
//! tandemctl webhooks redeliver whe_... --start 2025-01-31T00:00:00Z --end 2025-02-01T00:00:00Z
//! tandemctl webhooks delete whe_... [--request-id ID]
//! tandemctl webhooks listen --port 8080 (--secret whsec_... | --secret-file F)
//! ```
//!
//! `create` and `rotate` print the endpoint's signing secret, which the orchestrator shows only
//! then, with a warning on stderr. `update` replaces only what its flags name (its
//! `update_mask`). `deliveries` prints one row per attempt (a delivery not yet tried has one
//! row without one), newest delivery first. Mutating commands take `--request-id` (a new UUID
//! by default) and name it when they fail: re-running with the same id is safe. `listen` is
//! [`listen`].

pub(crate) mod listen;

use anyhow::Context as _;
use tandem_proto::tandem::orchestrator::v1 as pb;
use tandem_proto::tandem::orchestrator::v1::webhook_service_client::WebhookServiceClient;
use tandem_tls::identity::Role;

use crate::connect::{
    CALL_TIMEOUT, LIST_PAGES_MAX, OrchestratorTarget, failure, next_page, orchestrator_channel,
    pages_stopped, request_id,
};
use crate::print::{
    Column, Format, Value, header, parse_time, print_header, print_row, row, show_actor, show_time,
    value_name,
};

pub(crate) type Client = WebhookServiceClient<tonic::transport::Channel>;

/// `WebhookDeliveryState` on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum DeliveryState {
    /// Not yet answered with a 2xx.
    Pending,
    /// Answered with a 2xx.
    Delivered,
    /// Dropped with its endpoint.
    Canceled,
}

impl From<DeliveryState> for pb::WebhookDeliveryState {
    fn from(state: DeliveryState) -> Self {
        match state {
            DeliveryState::Pending => Self::Pending,
            DeliveryState::Delivered => Self::Delivered,
            DeliveryState::Canceled => Self::Canceled,
        }
    }
}

/// The webhook commands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum WebhooksCommand {
    /// Register an endpoint; prints its signing secret, which is not shown again.
    Create {
        #[command(flatten)]
        target: OrchestratorTarget,
        /// Where deliveries are posted: https (http only for a host the orchestrator's
        /// `webhook.allow_hosts` names).
        #[arg(long)]
        url: String,
        /// Only events of this type, e.g. `payment.succeeded` (repeat for each); every event
        /// by default.
        #[arg(long = "event-type", value_name = "TYPE")]
        event_types: Vec<String>,
        /// For people, at most 500 characters.
        #[arg(long, default_value = "")]
        description: String,
        /// Idempotency key; a new UUID by default.
        #[arg(long)]
        request_id: Option<String>,
        /// How to print the endpoint and its secret.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// List the endpoints, oldest first.
    List {
        #[command(flatten)]
        target: OrchestratorTarget,
        /// Endpoints per call, 1-1000.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i32).range(1..=1000))]
        page_size: i32,
        /// How to print the endpoints.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Show an endpoint (never its secret).
    Show {
        #[command(flatten)]
        target: OrchestratorTarget,
        /// The endpoint id.
        endpoint_id: String,
        /// How to print the endpoint.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Change an endpoint's url, description, event types or state; only what the flags name.
    Update {
        #[command(flatten)]
        target: OrchestratorTarget,
        /// The endpoint id.
        endpoint_id: String,
        /// The new url.
        #[arg(long)]
        url: Option<String>,
        /// The new description (`""` clears it).
        #[arg(long)]
        description: Option<String>,
        /// Receive only events of this type from now on (repeat for each).
        #[arg(
            long = "event-type",
            value_name = "TYPE",
            conflicts_with = "all_events"
        )]
        event_types: Vec<String>,
        /// Receive every event from now on.
        #[arg(long)]
        all_events: bool,
        /// Enable it: its kept events are sent at once, in order.
        #[arg(long, conflicts_with = "disable")]
        enable: bool,
        /// Disable it: nothing is sent, events are kept until it is enabled again.
        #[arg(long)]
        disable: bool,
        /// Idempotency key; a new UUID by default.
        #[arg(long)]
        request_id: Option<String>,
        /// How to print the endpoint.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Give an endpoint a new secret (printed once); the previous one keeps signing beside it
    /// for the orchestrator's `webhook.rotation_overlap_s`.
    Rotate {
        #[command(flatten)]
        target: OrchestratorTarget,
        /// The endpoint id.
        endpoint_id: String,
        /// Idempotency key; a new UUID by default.
        #[arg(long)]
        request_id: Option<String>,
        /// How to print the endpoint and its new secret.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// List an endpoint's deliveries, newest first, one row per attempt (status, latency,
    /// error).
    Deliveries {
        #[command(flatten)]
        target: OrchestratorTarget,
        /// The endpoint id.
        endpoint_id: String,
        /// Only deliveries in this state.
        #[arg(long, value_enum)]
        state: Option<DeliveryState>,
        /// Only the deliveries of this event (its `webhook-id`).
        #[arg(long)]
        event_id: Option<String>,
        /// Deliveries per call, 1-1000.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i32).range(1..=1000))]
        page_size: i32,
        /// Continue with this page (printed on stderr after a page that has a next one).
        #[arg(long, conflicts_with = "all")]
        page_token: Option<String>,
        /// Follow the pages to the last one instead of printing one page.
        #[arg(long)]
        all: bool,
        /// How to print the deliveries.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Send again the events of a time range, as new deliveries with the same webhook-ids.
    Redeliver {
        #[command(flatten)]
        target: OrchestratorTarget,
        /// The endpoint id.
        endpoint_id: String,
        /// Events committed at or after (RFC 3339).
        #[arg(long, value_name = "TIME")]
        start: String,
        /// Events committed before (RFC 3339).
        #[arg(long, value_name = "TIME")]
        end: String,
        /// Idempotency key; a new UUID by default.
        #[arg(long)]
        request_id: Option<String>,
    },
    /// Delete an endpoint: it receives nothing more and its undelivered events are dropped.
    Delete {
        #[command(flatten)]
        target: OrchestratorTarget,
        /// The endpoint id.
        endpoint_id: String,
        /// Idempotency key; a new UUID by default.
        #[arg(long)]
        request_id: Option<String>,
    },
    /// Receive webhooks on this machine: check each signature, answer 204 (or 401), print
    /// each event.
    Listen(listen::ListenArgs),
}

/// Runs a webhook command.
pub(crate) async fn run(command: WebhooksCommand) -> anyhow::Result<()> {
    match command {
        WebhooksCommand::Create {
            target,
            url,
            event_types,
            description,
            request_id: given_id,
            format,
        } => {
            let id = request_id(given_id);
            let response = client(&target)
                .await?
                .create_webhook_endpoint(pb::CreateWebhookEndpointRequest {
                    request_id: id.clone(),
                    url,
                    event_types,
                    description,
                })
                .await
                .map_err(failure)
                .with_context(|| format!("request {id}"))?
                .into_inner();
            let endpoint = response.endpoint.context("no endpoint in the response")?;
            println!(
                "{}",
                render_with_secret(format, &endpoint, &response.secret)
            );
            warn_secret_shown_once();
        }
        WebhooksCommand::List {
            target,
            page_size,
            format,
        } => {
            let mut client = client(&target).await?;
            let mut request = pb::ListWebhookEndpointsRequest {
                page_size,
                page_token: String::new(),
            };
            print_header(format, ENDPOINT_COLUMNS);
            for _ in 0..LIST_PAGES_MAX {
                let page = client
                    .list_webhook_endpoints(request.clone())
                    .await
                    .map_err(failure)?
                    .into_inner();
                for endpoint in &page.endpoints {
                    print_row(format, ENDPOINT_COLUMNS, &endpoint_row(endpoint));
                }
                if page.next_page_token.is_empty() {
                    return Ok(());
                }
                request.page_token = page.next_page_token;
            }
            // A listing cut short must not look complete to a script.
            anyhow::bail!("stopped after {LIST_PAGES_MAX} pages");
        }
        WebhooksCommand::Show {
            target,
            endpoint_id,
            format,
        } => {
            let endpoint = client(&target)
                .await?
                .get_webhook_endpoint(pb::GetWebhookEndpointRequest { endpoint_id })
                .await
                .map_err(failure)?
                .into_inner()
                .endpoint
                .context("no endpoint in the response")?;
            println!("{}", render_endpoint(format, &endpoint));
        }
        WebhooksCommand::Update {
            target,
            endpoint_id,
            url,
            description,
            event_types,
            all_events,
            enable,
            disable,
            request_id: given_id,
            format,
        } => {
            let state = match (enable, disable) {
                (true, _) => Some(pb::WebhookEndpointState::Enabled),
                (false, true) => Some(pb::WebhookEndpointState::Disabled),
                (false, false) => None,
            };
            let event_types = (all_events || !event_types.is_empty()).then_some(event_types);
            let request = update_request(
                request_id(given_id),
                endpoint_id,
                Change {
                    url,
                    description,
                    event_types,
                    state,
                },
            )?;
            let id = request.request_id.clone();
            let endpoint = client(&target)
                .await?
                .update_webhook_endpoint(request)
                .await
                .map_err(failure)
                .with_context(|| format!("request {id}"))?
                .into_inner()
                .endpoint
                .context("no endpoint in the response")?;
            println!("{}", render_endpoint(format, &endpoint));
        }
        WebhooksCommand::Rotate {
            target,
            endpoint_id,
            request_id: given_id,
            format,
        } => {
            let id = request_id(given_id);
            let response = client(&target)
                .await?
                .rotate_webhook_secret(pb::RotateWebhookSecretRequest {
                    request_id: id.clone(),
                    endpoint_id,
                })
                .await
                .map_err(failure)
                .with_context(|| format!("request {id}"))?
                .into_inner();
            let endpoint = response.endpoint.context("no endpoint in the response")?;
            println!(
                "{}",
                render_with_secret(format, &endpoint, &response.secret)
            );
            warn_secret_shown_once();
        }
        WebhooksCommand::Deliveries {
            target,
            endpoint_id,
            state,
            event_id,
            page_size,
            page_token,
            all,
            format,
        } => {
            let mut request = pb::ListWebhookDeliveriesRequest {
                endpoint_id,
                page_size,
                page_token: page_token.unwrap_or_default(),
                state: state
                    .map_or(pb::WebhookDeliveryState::Unspecified, From::from)
                    .into(),
                event_id: event_id.unwrap_or_default(),
            };
            let mut client = client(&target).await?;
            print_header(format, DELIVERY_COLUMNS);
            for _ in 0..LIST_PAGES_MAX {
                let page = client
                    .list_webhook_deliveries(request.clone())
                    .await
                    .map_err(failure)?
                    .into_inner();
                for delivery in &page.deliveries {
                    for values in delivery_rows(delivery) {
                        print_row(format, DELIVERY_COLUMNS, &values);
                    }
                }
                match next_page(page.next_page_token, all) {
                    Some(token) => request.page_token = token,
                    None => return Ok(()),
                }
            }
            pages_stopped(&request.page_token);
        }
        WebhooksCommand::Redeliver {
            target,
            endpoint_id,
            start,
            end,
            request_id: given_id,
        } => {
            let id = request_id(given_id);
            let request = pb::RedeliverEventsRequest {
                request_id: id.clone(),
                endpoint_id,
                start_time: Some(parse_time("--start", &start)?),
                end_time: Some(parse_time("--end", &end)?),
            };
            let endpoint_id = request.endpoint_id.clone();
            let queued = client(&target)
                .await?
                .redeliver_events(request)
                .await
                .map_err(failure)
                .with_context(|| format!("request {id}"))?
                .into_inner()
                .queued;
            println!("queued {queued} events again for {endpoint_id}");
        }
        WebhooksCommand::Delete {
            target,
            endpoint_id,
            request_id: given_id,
        } => {
            let id = request_id(given_id);
            let dropped = client(&target)
                .await?
                .delete_webhook_endpoint(pb::DeleteWebhookEndpointRequest {
                    request_id: id.clone(),
                    endpoint_id: endpoint_id.clone(),
                })
                .await
                .map_err(failure)
                .with_context(|| format!("request {id}"))?
                .into_inner()
                .dropped_deliveries;
            println!("deleted {endpoint_id}; {dropped} undelivered deliveries dropped");
        }
        WebhooksCommand::Listen(args) => listen::run(args).await?,
    }
    Ok(())
}

async fn client(target: &OrchestratorTarget) -> anyhow::Result<Client> {
    Ok(WebhookServiceClient::new(
        orchestrator_channel(target, Role::Treasury, CALL_TIMEOUT).await?,
    ))
}

fn warn_secret_shown_once() {
    eprintln!(
        "warning: keep this secret now; it is not shown again (`tandemctl webhooks rotate` \
         makes a new one)"
    );
}

/// What `update` changes: each field that is `Some` is replaced and named in the mask.
#[derive(Debug, Default)]
pub(crate) struct Change {
    pub(crate) url: Option<String>,
    pub(crate) description: Option<String>,
    /// `Some(empty)`: every event.
    pub(crate) event_types: Option<Vec<String>>,
    pub(crate) state: Option<pb::WebhookEndpointState>,
}

/// The `UpdateWebhookEndpointRequest` of `change`, with an `update_mask` naming exactly the
/// fields it sets; refused when it sets none.
pub(crate) fn update_request(
    request_id: String,
    endpoint_id: String,
    change: Change,
) -> anyhow::Result<pb::UpdateWebhookEndpointRequest> {
    let mut paths = Vec::new();
    let mut endpoint = pb::WebhookEndpoint {
        id: endpoint_id,
        ..Default::default()
    };
    if let Some(url) = change.url {
        endpoint.url = url;
        paths.push("url".to_owned());
    }
    if let Some(description) = change.description {
        endpoint.description = description;
        paths.push("description".to_owned());
    }
    if let Some(event_types) = change.event_types {
        endpoint.event_types = event_types;
        paths.push("event_types".to_owned());
    }
    if let Some(state) = change.state {
        endpoint.state = state.into();
        paths.push("state".to_owned());
    }
    anyhow::ensure!(
        !paths.is_empty(),
        "nothing to change: give --url, --description, --event-type, --all-events, --enable or \
         --disable"
    );
    Ok(pb::UpdateWebhookEndpointRequest {
        request_id,
        endpoint: Some(endpoint),
        update_mask: Some(prost_types::FieldMask { paths }),
    })
}

/// The endpoint's state for people: `enabled`, or `disabled (why)`.
fn show_state(endpoint: &pb::WebhookEndpoint) -> String {
    let state = value_name(
        endpoint.state,
        "WEBHOOK_ENDPOINT_STATE_",
        pb::WebhookEndpointState::as_str_name,
    );
    if endpoint.disabled_reason == i32::from(pb::WebhookDisabledReason::Unspecified) {
        state
    } else {
        format!("{state} ({})", disabled_reason(endpoint))
    }
}

fn disabled_reason(endpoint: &pb::WebhookEndpoint) -> String {
    if endpoint.disabled_reason == i32::from(pb::WebhookDisabledReason::Unspecified) {
        return String::new();
    }
    value_name(
        endpoint.disabled_reason,
        "WEBHOOK_DISABLED_REASON_",
        pb::WebhookDisabledReason::as_str_name,
    )
}

/// The event types for people: `all` when the endpoint filters none.
fn show_event_types(endpoint: &pb::WebhookEndpoint) -> String {
    if endpoint.event_types.is_empty() {
        "all".to_owned()
    } else {
        endpoint.event_types.join(" ")
    }
}

/// An endpoint for people (a short block) or machines (one CSV row under its header, or one
/// JSON object).
fn render_endpoint(format: Format, endpoint: &pb::WebhookEndpoint) -> String {
    match format {
        Format::Table => render_endpoint_block(endpoint),
        Format::Csv | Format::Json => header(format, ENDPOINT_COLUMNS)
            .into_iter()
            .chain([row(format, ENDPOINT_COLUMNS, &endpoint_row(endpoint))])
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

/// An endpoint with its secret: the block and a `secret` line for people; for machines the
/// endpoint's columns and a `secret` one.
fn render_with_secret(format: Format, endpoint: &pb::WebhookEndpoint, secret: &str) -> String {
    match format {
        Format::Table => format!("{}\nsecret  {secret}", render_endpoint_block(endpoint)),
        Format::Csv | Format::Json => {
            let columns = [ENDPOINT_COLUMNS, &[Column::machines("secret")]].concat();
            let mut values = endpoint_row(endpoint);
            values.push(Value::text(secret));
            header(format, &columns)
                .into_iter()
                .chain([row(format, &columns, &values)])
                .collect::<Vec<_>>()
                .join("\n")
        }
    }
}

fn render_endpoint_block(endpoint: &pb::WebhookEndpoint) -> String {
    let seconds = |time: &Option<prost_types::Timestamp>| time.as_ref().map(|t| t.seconds);
    let mut lines = vec![
        format!(
            "endpoint {}  {}  {}",
            endpoint.id,
            show_state(endpoint),
            endpoint.url
        ),
        format!("events  {}", show_event_types(endpoint)),
    ];
    if !endpoint.description.is_empty() {
        lines.push(format!("description  {}", endpoint.description));
    }
    lines.push(format!(
        "created {} by {}",
        show_time(seconds(&endpoint.create_time)),
        show_actor(endpoint.creator.as_ref())
    ));
    if endpoint.updater.is_some() || endpoint.update_time != endpoint.create_time {
        lines.push(format!(
            "updated {} by {}",
            show_time(seconds(&endpoint.update_time)),
            show_actor(endpoint.updater.as_ref())
        ));
    }
    let mut secret = format!("secret version {}", endpoint.secret_version);
    if endpoint.previous_secret_expire_time.is_some() {
        secret.push_str(&format!(
            "; the previous one also signs until {}",
            show_time(seconds(&endpoint.previous_secret_expire_time))
        ));
    }
    lines.push(secret);
    if endpoint.failing_since.is_some() {
        lines.push(format!(
            "failing since {}",
            show_time(seconds(&endpoint.failing_since))
        ));
    }
    lines.push(format!(
        "pending deliveries  {}",
        endpoint.pending_deliveries
    ));
    lines.join("\n")
}

/// The columns of an endpoint: people see its id, state, pending deliveries, url and event
/// types; machines also get the description, the secret's version and rotation, failing
/// since, and who created and changed it when.
const ENDPOINT_COLUMNS: &[Column] = &[
    Column::text("id", "id", 30),
    Column::people("state", 20),
    Column::machines("state"),
    Column::machines("disabled_reason"),
    Column::number("pending_deliveries", "pending", 7),
    Column::text("url", "url", 40),
    Column::people("events", 0),
    Column::machines("event_types"),
    Column::machines("description"),
    Column::machines("secret_version"),
    Column::machines("previous_secret_expire_time"),
    Column::machines("failing_since"),
    Column::machines("create_time"),
    Column::machines("creator_name"),
    Column::machines("creator_role"),
    Column::machines("update_time"),
    Column::machines("updater_name"),
    Column::machines("updater_role"),
];

fn endpoint_row(endpoint: &pb::WebhookEndpoint) -> Vec<Value> {
    let creator = endpoint.creator.as_ref();
    let updater = endpoint.updater.as_ref();
    vec![
        Value::text(&endpoint.id),
        Value::Text(show_state(endpoint)),
        Value::Text(value_name(
            endpoint.state,
            "WEBHOOK_ENDPOINT_STATE_",
            pb::WebhookEndpointState::as_str_name,
        )),
        Value::Text(disabled_reason(endpoint)),
        Value::Integer(endpoint.pending_deliveries),
        Value::text(&endpoint.url),
        Value::Text(show_event_types(endpoint)),
        Value::Text(endpoint.event_types.join(" ")),
        Value::text(&endpoint.description),
        Value::Integer(endpoint.secret_version),
        Value::Time(endpoint.previous_secret_expire_time),
        Value::Time(endpoint.failing_since),
        Value::Time(endpoint.create_time),
        Value::text(creator.map_or("", |a| a.name.as_str())),
        Value::text(creator.map_or("", |a| a.role.as_str())),
        Value::Time(endpoint.update_time),
        Value::text(updater.map_or("", |a| a.name.as_str())),
        Value::text(updater.map_or("", |a| a.role.as_str())),
    ]
}

/// The columns of `deliveries`, one row per attempt: people see the event, its type, the
/// delivery's state, and the attempt's number, time, status, latency and error; machines also
/// get the delivery's ids and times.
const DELIVERY_COLUMNS: &[Column] = &[
    Column::machines("delivery_id"),
    Column::machines("endpoint_id"),
    Column::text("event_id", "event", 30),
    Column::text("event_type", "type", 26),
    Column::machines("event_time"),
    Column::text("state", "state", 9),
    Column::machines("redelivery"),
    Column::machines("create_time"),
    Column::machines("next_attempt_time"),
    Column::machines("deliver_time"),
    Column::number("attempt_number", "try", 3),
    Column::text("attempt_time", "time", 20),
    Column::number("status_code", "status", 6),
    Column::number("latency_ms", "ms", 6),
    Column::text("error", "error", 0),
];

/// A delivery's rows: one per attempt, oldest first, or one without an attempt when it has
/// not been tried yet.
fn delivery_rows(delivery: &pb::WebhookDelivery) -> Vec<Vec<Value>> {
    let state = value_name(
        delivery.state,
        "WEBHOOK_DELIVERY_STATE_",
        pb::WebhookDeliveryState::as_str_name,
    );
    let delivery_values = |attempt: Option<&pb::WebhookAttempt>| {
        let mut values = vec![
            Value::text(&delivery.id),
            Value::text(&delivery.endpoint_id),
            Value::text(&delivery.event_id),
            Value::text(&delivery.event_type),
            Value::Time(delivery.event_time),
            Value::text(&state),
            Value::text(if delivery.redelivery { "true" } else { "false" }),
            Value::Time(delivery.create_time),
            Value::Time(delivery.next_attempt_time),
            Value::Time(delivery.deliver_time),
        ];
        match attempt {
            Some(attempt) => values.extend([
                Value::Integer(i64::from(attempt.attempt_number)),
                Value::Time(attempt.time),
                // 0: no answer (see the error).
                if attempt.status_code == 0 {
                    Value::text("")
                } else {
                    Value::Integer(i64::from(attempt.status_code))
                },
                Value::Integer(attempt.latency_ms),
                Value::text(&attempt.error),
            ]),
            None => values.extend([
                Value::text(""),
                Value::Time(None),
                Value::text(""),
                Value::text(""),
                Value::text(""),
            ]),
        }
        values
    };
    if delivery.attempts.is_empty() {
        return vec![delivery_values(None)];
    }
    delivery
        .attempts
        .iter()
        .map(|attempt| delivery_values(Some(attempt)))
        .collect()
}

#[cfg(test)]
mod tests {
    use tandem_proto::tandem::r#type::v1 as types;

    use super::*;

    fn time(seconds: i64) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp { seconds, nanos: 0 })
    }

    fn endpoint() -> pb::WebhookEndpoint {
        pb::WebhookEndpoint {
            id: "whe_1".to_owned(),
            url: "https://erp.example.com/tandem".to_owned(),
            description: "ERP, payments".to_owned(),
            event_types: vec!["payment.succeeded".to_owned(), "payment.failed".to_owned()],
            state: pb::WebhookEndpointState::Enabled.into(),
            disabled_reason: pb::WebhookDisabledReason::Unspecified.into(),
            create_time: time(1_735_689_600),
            update_time: time(1_735_689_600),
            creator: Some(types::Actor {
                name: "alice".to_owned(),
                role: "treasury".to_owned(),
            }),
            updater: None,
            secret_version: 1,
            previous_secret_expire_time: None,
            failing_since: None,
            pending_deliveries: 0,
        }
    }

    /// An endpoint prints for people as a block (its state, events, description, creator,
    /// secret version, pending deliveries); a rotated, failing, disabled one also says until
    /// when the previous secret signs, since when it fails and why it is disabled. With its
    /// secret it gains a `secret` line, or a `secret` column for machines.
    #[test]
    fn endpoints() {
        assert_eq!(
            render_endpoint(Format::Table, &endpoint()),
            "\
endpoint whe_1  enabled  https://erp.example.com/tandem
events  payment.succeeded payment.failed
description  ERP, payments
created 2025-01-01T00:00:00Z by alice (treasury)
secret version 1
pending deliveries  0"
        );
        let troubled = pb::WebhookEndpoint {
            event_types: Vec::new(),
            description: String::new(),
            state: pb::WebhookEndpointState::Disabled.into(),
            disabled_reason: pb::WebhookDisabledReason::Failing.into(),
            update_time: time(1_735_776_000),
            secret_version: 2,
            previous_secret_expire_time: time(1_735_862_400),
            failing_since: time(1_735_700_000),
            pending_deliveries: 12,
            ..endpoint()
        };
        assert_eq!(
            render_endpoint(Format::Table, &troubled),
            "\
endpoint whe_1  disabled (failing)  https://erp.example.com/tandem
events  all
created 2025-01-01T00:00:00Z by alice (treasury)
updated 2025-01-02T00:00:00Z by -
secret version 2; the previous one also signs until 2025-01-03T00:00:00Z
failing since 2025-01-01T02:53:20Z
pending deliveries  12"
        );
        assert!(
            render_with_secret(Format::Table, &endpoint(), "whsec_abc")
                .ends_with("\npending deliveries  0\nsecret  whsec_abc")
        );
        assert_eq!(
            render_with_secret(Format::Json, &troubled, "whsec_abc"),
            r#"{"id":"whe_1","state":"disabled","disabled_reason":"failing","pending_deliveries":12,"url":"https://erp.example.com/tandem","event_types":"","description":"","secret_version":2,"previous_secret_expire_time":"2025-01-03T00:00:00Z","failing_since":"2025-01-01T02:53:20Z","create_time":"2025-01-01T00:00:00Z","creator_name":"alice","creator_role":"treasury","update_time":"2025-01-02T00:00:00Z","updater_name":"","updater_role":"","secret":"whsec_abc"}"#
        );
    }

    /// The listing shows the id, state, pending deliveries, url and event types (`all` for
    /// none) for people; CSV every field with the event types space-separated.
    #[test]
    fn endpoint_listing() {
        let lines = |format| -> Vec<String> {
            header(format, ENDPOINT_COLUMNS)
                .into_iter()
                .chain([row(format, ENDPOINT_COLUMNS, &endpoint_row(&endpoint()))])
                .collect()
        };
        assert_eq!(
            lines(Format::Table),
            [
                "id                              state                 pending  url                                       events",
                "whe_1                           enabled                     0  https://erp.example.com/tandem            payment.succeeded payment.failed",
            ]
        );
        assert_eq!(
            lines(Format::Csv)[1],
            "whe_1,enabled,,0,https://erp.example.com/tandem,payment.succeeded payment.failed,\"ERP, payments\",1,,,2025-01-01T00:00:00Z,alice,treasury,2025-01-01T00:00:00Z,,"
        );
    }

    /// A delivery prints one row per attempt with its status, latency and error (no status
    /// when there was no answer); one not yet tried prints one row without an attempt.
    #[test]
    fn deliveries() {
        let delivery = pb::WebhookDelivery {
            id: "whd_1".to_owned(),
            endpoint_id: "whe_1".to_owned(),
            event_id: "evt_1".to_owned(),
            event_type: "payment.succeeded".to_owned(),
            event_time: time(1_735_689_600),
            state: pb::WebhookDeliveryState::Delivered.into(),
            create_time: time(1_735_689_600),
            next_attempt_time: None,
            deliver_time: time(1_735_689_606),
            attempts: vec![
                pb::WebhookAttempt {
                    attempt_number: 1,
                    time: time(1_735_689_600),
                    status_code: 0,
                    latency_ms: 10_000,
                    error: "timed out after 10 s".to_owned(),
                },
                pb::WebhookAttempt {
                    attempt_number: 2,
                    time: time(1_735_689_606),
                    status_code: 204,
                    latency_ms: 12,
                    error: String::new(),
                },
            ],
            redelivery: false,
        };
        let pending = pb::WebhookDelivery {
            id: "whd_2".to_owned(),
            event_id: "evt_2".to_owned(),
            state: pb::WebhookDeliveryState::Pending.into(),
            deliver_time: None,
            next_attempt_time: time(1_735_689_700),
            attempts: Vec::new(),
            redelivery: true,
            ..delivery.clone()
        };
        let lines = |format| -> Vec<String> {
            header(format, DELIVERY_COLUMNS)
                .into_iter()
                .chain(
                    [&delivery, &pending]
                        .into_iter()
                        .flat_map(delivery_rows)
                        .map(|values| row(format, DELIVERY_COLUMNS, &values)),
                )
                .collect()
        };
        assert_eq!(
            lines(Format::Table),
            [
                "event                           type                        state      try  time                  status      ms  error",
                "evt_1                           payment.succeeded           delivered    1  2025-01-01T00:00:00Z       -   10000  timed out after 10 s",
                "evt_1                           payment.succeeded           delivered    2  2025-01-01T00:00:06Z     204      12  -",
                "evt_2                           payment.succeeded           pending      -  -                          -       -  -",
            ]
        );
        assert_eq!(
            lines(Format::Csv),
            [
                "delivery_id,endpoint_id,event_id,event_type,event_time,state,redelivery,create_time,next_attempt_time,deliver_time,attempt_number,attempt_time,status_code,latency_ms,error",
                "whd_1,whe_1,evt_1,payment.succeeded,2025-01-01T00:00:00Z,delivered,false,2025-01-01T00:00:00Z,,2025-01-01T00:00:06Z,1,2025-01-01T00:00:00Z,,10000,timed out after 10 s",
                "whd_1,whe_1,evt_1,payment.succeeded,2025-01-01T00:00:00Z,delivered,false,2025-01-01T00:00:00Z,,2025-01-01T00:00:06Z,2,2025-01-01T00:00:06Z,204,12,",
                "whd_2,whe_1,evt_2,payment.succeeded,2025-01-01T00:00:00Z,pending,true,2025-01-01T00:00:00Z,2025-01-01T00:01:40Z,,,,,,",
            ]
        );
    }

    /// `update` names in its mask exactly the fields its flags set; `--all-events` sets the
    /// event types to none (every event); no flag at all is refused.
    #[test]
    fn update_masks() {
        let mask = |change: Change| {
            update_request("r1".to_owned(), "whe_1".to_owned(), change)
                .map(|request| request.update_mask.map(|m| m.paths).unwrap_or_default())
                .ok()
        };
        assert_eq!(mask(Change::default()), None);
        assert_eq!(
            mask(Change {
                url: Some("https://b.example.com".to_owned()),
                state: Some(pb::WebhookEndpointState::Disabled),
                ..Change::default()
            }),
            Some(vec!["url".to_owned(), "state".to_owned()])
        );
        let request = update_request(
            "r1".to_owned(),
            "whe_1".to_owned(),
            Change {
                description: Some(String::new()),
                event_types: Some(Vec::new()),
                ..Change::default()
            },
        )
        .unwrap();
        let endpoint = request.endpoint.unwrap();
        assert_eq!(endpoint.id, "whe_1");
        assert!(endpoint.event_types.is_empty() && endpoint.description.is_empty());
        assert_eq!(
            request.update_mask.unwrap().paths,
            ["description", "event_types"]
        );
    }

    /// The command line: `update` takes `--event-type` or `--all-events`, `--enable` or
    /// `--disable`, not both; `deliveries` takes states by name; `redeliver` needs its range;
    /// `listen` needs a secret, from the flag or a file but not both.
    #[test]
    fn command_line() {
        use clap::Parser as _;
        #[derive(Debug, clap::Parser)]
        struct Cli {
            #[command(subcommand)]
            command: WebhooksCommand,
        }
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("webhooks").chain(args.iter().copied()))
        };
        assert!(parse(&["create", "--url", "https://a.example.com"]).is_ok());
        assert!(parse(&["create"]).is_err());
        let Ok(Cli {
            command:
                WebhooksCommand::Create {
                    event_types,
                    description,
                    ..
                },
        }) = parse(&[
            "create",
            "--url",
            "https://a.example.com",
            "--event-type",
            "payment.succeeded",
            "--event-type",
            "card.ineligible",
        ])
        else {
            panic!("create with event types does not parse");
        };
        assert_eq!(event_types, ["payment.succeeded", "card.ineligible"]);
        assert_eq!(description, "");
        assert!(parse(&["update", "whe_1", "--enable", "--disable"]).is_err());
        assert!(parse(&["update", "whe_1", "--event-type", "t", "--all-events"]).is_err());
        assert!(parse(&["update", "whe_1", "--disable", "--url", "https://b"]).is_ok());
        assert!(parse(&["deliveries", "whe_1", "--state", "delivered"]).is_ok());
        assert!(parse(&["deliveries", "whe_1", "--state", "failed"]).is_err());
        assert!(parse(&["deliveries", "whe_1", "--all", "--page-token", "t"]).is_err());
        assert!(parse(&["redeliver", "whe_1", "--start", "2025-01-01T00:00:00Z"]).is_err());
        assert!(
            parse(&[
                "redeliver",
                "whe_1",
                "--start",
                "2025-01-01T00:00:00Z",
                "--end",
                "2025-01-02T00:00:00Z"
            ])
            .is_ok()
        );
        assert!(parse(&["listen", "--port", "8080"]).is_err());
        assert!(parse(&["listen", "--port", "8080", "--secret", "whsec_x"]).is_ok());
        assert!(parse(&["listen", "--port", "8080", "--secret-file", "f"]).is_ok());
        assert!(
            parse(&[
                "listen",
                "--port",
                "8080",
                "--secret",
                "s",
                "--secret-file",
                "f"
            ])
            .is_err()
        );
    }
}
