//! Webhooks between wire and domain: the checks of `WebhookService`'s requests, endpoints and
//! deliveries on the wire, and the JSON body of a delivery (the event message in the proto3
//! JSON mapping, read through the descriptors the server also serves for reflection).

use std::sync::OnceLock;

use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, Value};
use tandem_proto::tandem::orchestrator::v1 as pb;
use tandem_runtime::fields::Violations;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::commands::{DeliveryQuery, EndpointChange, EndpointUpdate, NewEndpoint, Redelivery};
use crate::config::WebhookSettings;
use crate::domain::actor::Actor;
use crate::domain::webhooks::{DeliveryState, DisabledReason, EndpointState};
use crate::error::Error;
use crate::storage::webhooks::{StoredDelivery, StoredEndpoint};
use crate::storage::{Cursor, FeedEvent, FeedSource};
use crate::webhooks::destination::{Destination, check_url};

use super::ledger::{position, time_range, token};
use super::payments::{known_event_types, strict_page_size};
use super::{
    actor, free_text, next_page_token, page_after, request_hash, request_id, resource_id, wire_time,
};

/// Most characters of an endpoint's description.
const DESCRIPTION_CHARS_MAX: usize = 500;
/// Most event types an endpoint filters on.
const EVENT_TYPES_MAX: usize = 50;
/// Most endpoints or deliveries per page.
const PAGE_SIZE_MAX: i32 = 1000;
/// The longest range one redelivery may name (its events are bounded by
/// `webhook.redeliver_max` too).
const REDELIVER_DAYS_MAX: i64 = 3660;

/// A delivery's body, ready to send.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// The event's id: the `webhook-id`.
    pub event_id: String,
    /// When the event was committed.
    pub event_time: OffsetDateTime,
    /// `{"data": ..., "timestamp": ..., "type": ...}`.
    pub json: String,
}

fn descriptors() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(tandem_proto::FILE_DESCRIPTOR_SET)
            .expect("the descriptor set built with the crate decodes")
    })
}

/// The body of `event`'s deliveries: the Standard Webhooks payload shape, `type`, `timestamp`
/// (the event's commit time, RFC 3339) and `data` (the event in the proto3 JSON mapping).
pub fn payload(event: &FeedEvent) -> Result<Rendered, Error> {
    let name = match event.source {
        FeedSource::Payment => "tandem.orchestrator.v1.PaymentEvent",
        FeedSource::CardGroup => "tandem.orchestrator.v1.CardGroupEvent",
        FeedSource::Reconciliation => "tandem.orchestrator.v1.ReconciliationEvent",
    };
    let corrupt = |what: String| Error::Corrupt(format!("{name} of {}: {what}", event.kind));
    let descriptor = descriptors()
        .get_message_by_name(name)
        .ok_or_else(|| corrupt("no descriptor".into()))?;
    let message = DynamicMessage::decode(descriptor, event.body.as_slice())
        .map_err(|e| corrupt(e.to_string()))?;
    let event_id = match message.get_field_by_name("id").as_deref() {
        Some(Value::String(id)) if !id.is_empty() => id.clone(),
        _ => return Err(corrupt("no id".into())),
    };
    let event_time = match message.get_field_by_name("create_time").as_deref() {
        Some(Value::Message(time)) => {
            let time: prost_types::Timestamp =
                time.transcode_to().map_err(|e| corrupt(e.to_string()))?;
            let nanos = i128::from(time.seconds) * 1_000_000_000 + i128::from(time.nanos);
            OffsetDateTime::from_unix_timestamp_nanos(nanos).map_err(|e| corrupt(e.to_string()))?
        }
        _ => return Err(corrupt("no create_time".into())),
    };
    let data = serde_json::to_value(&message).map_err(|e| corrupt(e.to_string()))?;
    let timestamp = event_time
        .format(&Rfc3339)
        .map_err(|e| corrupt(e.to_string()))?;
    let json = serde_json::json!({
        "type": event.kind,
        "timestamp": timestamp,
        "data": data,
    })
    .to_string();
    Ok(Rendered {
        event_id,
        event_time,
        json,
    })
}

/// An endpoint on the wire.
pub fn endpoint(e: &StoredEndpoint) -> pb::WebhookEndpoint {
    let (state, reason) = match e.state {
        EndpointState::Enabled | EndpointState::Deleted => (
            pb::WebhookEndpointState::Enabled,
            pb::WebhookDisabledReason::Unspecified,
        ),
        EndpointState::Disabled(reason) => (
            pb::WebhookEndpointState::Disabled,
            match reason {
                DisabledReason::Operator => pb::WebhookDisabledReason::Operator,
                DisabledReason::Gone => pb::WebhookDisabledReason::Gone,
                DisabledReason::Failing => pb::WebhookDisabledReason::Failing,
            },
        ),
    };
    pb::WebhookEndpoint {
        id: e.id.clone(),
        url: e.url.clone(),
        description: e.description.clone(),
        event_types: e.event_types.clone(),
        state: state.into(),
        disabled_reason: reason.into(),
        create_time: Some(wire_time(e.create_time)),
        update_time: Some(wire_time(e.update_time)),
        creator: Actor::parse(&e.creator).as_ref().map(actor),
        updater: e
            .updater
            .as_deref()
            .and_then(Actor::parse)
            .as_ref()
            .map(actor),
        secret_version: e.secret_version,
        previous_secret_expire_time: e.previous_secret.as_ref().map(|(_, t)| wire_time(*t)),
        failing_since: e.failing_since.map(wire_time),
        pending_deliveries: e.pending,
    }
}

/// The stored response of `CreateWebhookEndpoint`: without the secret, which the handler adds.
pub fn created(e: &StoredEndpoint) -> Vec<u8> {
    pb::CreateWebhookEndpointResponse {
        endpoint: Some(endpoint(e)),
        secret: String::new(),
    }
    .encode_to_vec()
}

/// The stored response of `UpdateWebhookEndpoint`.
pub fn updated(e: &StoredEndpoint) -> Vec<u8> {
    pb::UpdateWebhookEndpointResponse {
        endpoint: Some(endpoint(e)),
    }
    .encode_to_vec()
}

/// The stored response of `RotateWebhookSecret`: without the secret.
pub fn rotated(e: &StoredEndpoint) -> Vec<u8> {
    pb::RotateWebhookSecretResponse {
        endpoint: Some(endpoint(e)),
        secret: String::new(),
    }
    .encode_to_vec()
}

/// The stored response of `DeleteWebhookEndpoint`.
pub fn deleted(dropped: i64) -> Vec<u8> {
    pb::DeleteWebhookEndpointResponse {
        dropped_deliveries: dropped,
    }
    .encode_to_vec()
}

/// The stored response of `RedeliverEvents`.
pub fn redelivered(queued: i64) -> Vec<u8> {
    pb::RedeliverEventsResponse { queued }.encode_to_vec()
}

/// A delivery on the wire.
pub fn delivery(d: &StoredDelivery) -> pb::WebhookDelivery {
    pb::WebhookDelivery {
        id: d.id.clone(),
        endpoint_id: d.endpoint_id.clone(),
        event_id: d.event_id.clone(),
        event_type: d.event_type.clone(),
        event_time: Some(wire_time(d.event_time)),
        state: match d.state {
            DeliveryState::Pending => pb::WebhookDeliveryState::Pending,
            DeliveryState::Delivered => pb::WebhookDeliveryState::Delivered,
            DeliveryState::Canceled => pb::WebhookDeliveryState::Canceled,
        }
        .into(),
        create_time: Some(wire_time(d.create_time)),
        next_attempt_time: d
            .next_attempt_time
            .filter(|_| d.state == DeliveryState::Pending)
            .map(wire_time),
        deliver_time: d.deliver_time.map(wire_time),
        attempts: d
            .attempts
            .iter()
            .map(|(number, a)| pb::WebhookAttempt {
                attempt_number: *number,
                time: Some(wire_time(a.time)),
                status_code: a.status_code,
                latency_ms: a.latency_ms,
                error: a.error.clone(),
            })
            .collect(),
        redelivery: d.redelivery,
    }
}

fn destination(
    v: &mut Violations,
    field: &str,
    url: &str,
    settings: &WebhookSettings,
) -> Option<Destination> {
    match check_url(url, &settings.allow_hosts) {
        Ok(destination) => Some(destination),
        Err(why) => {
            v.add(field, why);
            None
        }
    }
}

/// Checks an event-type filter; returns it sorted and without repeats.
fn event_types(v: &mut Violations, field: &str, types: &[String]) -> Vec<String> {
    if types.len() > EVENT_TYPES_MAX {
        v.add(field, format!("must have at most {EVENT_TYPES_MAX} types"));
    }
    for (i, kind) in types.iter().enumerate() {
        if !known_event_types().any(|known| known == kind) {
            v.add(format!("{field}[{i}]"), "is not a known event type");
        }
    }
    let mut types = types.to_vec();
    types.sort();
    types.dedup();
    types
}

/// The checks of `CreateWebhookEndpoint`.
pub fn create_endpoint(
    request: &pb::CreateWebhookEndpointRequest,
    settings: &WebhookSettings,
) -> Result<NewEndpoint, Error> {
    let mut v = Violations::default();
    request_id(&mut v, "request_id", &request.request_id);
    let destination = destination(&mut v, "url", &request.url, settings);
    let types = event_types(&mut v, "event_types", &request.event_types);
    free_text(
        &mut v,
        "description",
        &request.description,
        DESCRIPTION_CHARS_MAX,
        false,
    );
    let destination = v.finish::<_, Error>(destination)?;
    Ok(NewEndpoint {
        request_id: request.request_id.clone(),
        request_hash: request_hash("CreateWebhookEndpoint", request),
        destination: destination.ok_or_else(|| Error::invalid("url", "is required"))?,
        event_types: types,
        description: request.description.clone(),
    })
}

/// The checks of `GetWebhookEndpoint`: the endpoint id.
pub fn get_endpoint(request: &pb::GetWebhookEndpointRequest) -> Result<String, Error> {
    let mut v = Violations::default();
    let id = resource_id(&mut v, "endpoint_id", "whe_", &request.endpoint_id);
    v.finish(id)
}

/// The scope of `ListWebhookEndpoints`' page tokens.
const ENDPOINTS_SCOPE: &str = "ListWebhookEndpoints";

/// The checks of `ListWebhookEndpoints`: where the page starts and its size.
pub fn list_endpoints(
    request: &pb::ListWebhookEndpointsRequest,
) -> Result<(Option<(OffsetDateTime, String)>, i32), Error> {
    let mut v = Violations::default();
    let size = strict_page_size(&mut v, request.page_size, 100, PAGE_SIZE_MAX);
    let after = page_after(&mut v, &request.page_token, ENDPOINTS_SCOPE)
        .map(|cursor| (cursor.create_time, cursor.id));
    v.finish((after, size))
}

/// A page of endpoints on the wire.
pub fn endpoints_page(page: &[StoredEndpoint], more: bool) -> pb::ListWebhookEndpointsResponse {
    let next = page.last().filter(|_| more).map(|e| Cursor {
        create_time: e.create_time,
        id: e.id.clone(),
    });
    pb::ListWebhookEndpointsResponse {
        endpoints: page.iter().map(endpoint).collect(),
        next_page_token: next_page_token(next.as_ref(), ENDPOINTS_SCOPE),
    }
}

/// The checks of `UpdateWebhookEndpoint`: the fields its mask names, each checked as at
/// creation.
pub fn update_endpoint(
    request: &pb::UpdateWebhookEndpointRequest,
    settings: &WebhookSettings,
) -> Result<EndpointUpdate, Error> {
    let mut v = Violations::default();
    request_id(&mut v, "request_id", &request.request_id);
    let empty = pb::WebhookEndpoint::default();
    let wanted = request.endpoint.as_ref().unwrap_or_else(|| {
        v.add("endpoint", "is required");
        &empty
    });
    let id = resource_id(&mut v, "endpoint.id", "whe_", &wanted.id);
    let paths = request
        .update_mask
        .as_ref()
        .map(|mask| mask.paths.clone())
        .unwrap_or_default();
    if paths.is_empty() {
        v.add(
            "update_mask",
            "is required: any of url, description, event_types, state",
        );
    }
    let mut update = EndpointUpdate {
        request_id: request.request_id.clone(),
        request_hash: request_hash("UpdateWebhookEndpoint", request),
        endpoint_id: id,
        destination: None,
        description: None,
        event_types: None,
        enable: None,
    };
    for path in &paths {
        match path.as_str() {
            "url" => {
                update.destination = destination(&mut v, "endpoint.url", &wanted.url, settings)
            }
            "description" => {
                free_text(
                    &mut v,
                    "endpoint.description",
                    &wanted.description,
                    DESCRIPTION_CHARS_MAX,
                    false,
                );
                update.description = Some(wanted.description.clone());
            }
            "event_types" => {
                update.event_types = Some(event_types(
                    &mut v,
                    "endpoint.event_types",
                    &wanted.event_types,
                ));
            }
            "state" => {
                update.enable = match pb::WebhookEndpointState::try_from(wanted.state) {
                    Ok(pb::WebhookEndpointState::Enabled) => Some(true),
                    Ok(pb::WebhookEndpointState::Disabled) => Some(false),
                    _ => {
                        v.add("endpoint.state", "must be ENABLED or DISABLED");
                        None
                    }
                };
            }
            other => v.add(
                "update_mask",
                format!("names {other:?}: only url, description, event_types and state change"),
            ),
        }
    }
    v.finish(update)
}

/// The checks of `DeleteWebhookEndpoint`.
pub fn delete_endpoint(
    request: &pb::DeleteWebhookEndpointRequest,
) -> Result<EndpointChange, Error> {
    let mut v = Violations::default();
    request_id(&mut v, "request_id", &request.request_id);
    let id = resource_id(&mut v, "endpoint_id", "whe_", &request.endpoint_id);
    v.finish(EndpointChange {
        request_id: request.request_id.clone(),
        request_hash: request_hash("DeleteWebhookEndpoint", request),
        endpoint_id: id,
    })
}

/// The checks of `RotateWebhookSecret`.
pub fn rotate_secret(request: &pb::RotateWebhookSecretRequest) -> Result<EndpointChange, Error> {
    let mut v = Violations::default();
    request_id(&mut v, "request_id", &request.request_id);
    let id = resource_id(&mut v, "endpoint_id", "whe_", &request.endpoint_id);
    v.finish(EndpointChange {
        request_id: request.request_id.clone(),
        request_hash: request_hash("RotateWebhookSecret", request),
        endpoint_id: id,
    })
}

/// The checks of `ListWebhookDeliveries`, and the scope its page tokens belong to.
pub fn list_deliveries(
    request: &pb::ListWebhookDeliveriesRequest,
) -> Result<(DeliveryQuery, String), Error> {
    let mut v = Violations::default();
    let id = resource_id(&mut v, "endpoint_id", "whe_", &request.endpoint_id);
    let size = strict_page_size(&mut v, request.page_size, 100, PAGE_SIZE_MAX);
    let state = match pb::WebhookDeliveryState::try_from(request.state) {
        Ok(pb::WebhookDeliveryState::Unspecified) => None,
        Ok(pb::WebhookDeliveryState::Pending) => Some(DeliveryState::Pending),
        Ok(pb::WebhookDeliveryState::Delivered) => Some(DeliveryState::Delivered),
        Ok(pb::WebhookDeliveryState::Canceled) => Some(DeliveryState::Canceled),
        Err(_) => {
            v.add("state", "is not a WebhookDeliveryState");
            None
        }
    };
    let event_id = (!request.event_id.is_empty())
        .then(|| resource_id(&mut v, "event_id", "evt_", &request.event_id));
    let scope = format!(
        "ListWebhookDeliveries|{}|{state:?}|{event_id:?}",
        request.endpoint_id
    );
    let before = position(&mut v, "page_token", &request.page_token, &scope);
    v.finish((
        DeliveryQuery {
            endpoint_id: id,
            state,
            event_id,
            before: (before > 0).then_some(before),
            size,
        },
        scope,
    ))
}

/// A page of deliveries on the wire.
pub fn deliveries_page(
    page: &[StoredDelivery],
    more: bool,
    scope: &str,
) -> pb::ListWebhookDeliveriesResponse {
    pb::ListWebhookDeliveriesResponse {
        deliveries: page.iter().map(delivery).collect(),
        next_page_token: match (more, page.last()) {
            (true, Some(last)) => token(last.seq, scope),
            _ => String::new(),
        },
    }
}

/// The checks of `RedeliverEvents`.
pub fn redeliver(request: &pb::RedeliverEventsRequest) -> Result<Redelivery, Error> {
    let mut v = Violations::default();
    request_id(&mut v, "request_id", &request.request_id);
    let id = resource_id(&mut v, "endpoint_id", "whe_", &request.endpoint_id);
    let (start, end) = time_range(
        &mut v,
        request.start_time.as_ref(),
        request.end_time.as_ref(),
        true,
        REDELIVER_DAYS_MAX,
    );
    let range = v.finish::<_, Error>(start.zip(end))?;
    let (start, end) = range.ok_or_else(|| Error::invalid("start_time", "is required"))?;
    Ok(Redelivery {
        request_id: request.request_id.clone(),
        request_hash: request_hash("RedeliverEvents", request),
        endpoint_id: id,
        start,
        end,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::FeedPosition;

    fn settings() -> WebhookSettings {
        WebhookSettings {
            allow_hosts: vec!["127.0.0.1".into()],
            ..WebhookSettings::default()
        }
    }

    fn fields(error: Error) -> Vec<String> {
        match error {
            Error::InvalidArgument(violations) => violations.into_iter().map(|v| v.field).collect(),
            other => panic!("not invalid: {other:?}"),
        }
    }

    #[test]
    fn bad_endpoints_name_their_fields() {
        let request = pb::CreateWebhookEndpointRequest {
            request_id: "r1".into(),
            url: "http://hooks.example.com/x".into(),
            event_types: vec!["payment.succeeded".into(), "payment.exploded".into()],
            description: "d".repeat(DESCRIPTION_CHARS_MAX + 1),
        };
        assert_eq!(
            fields(create_endpoint(&request, &settings()).unwrap_err()),
            ["url", "event_types[1]", "description"]
        );
        let good = pb::CreateWebhookEndpointRequest {
            url: "http://127.0.0.1:9/hook".into(),
            event_types: vec![
                "payment.succeeded".into(),
                "card.ineligible".into(),
                "payment.delayed".into(),
                "payment.succeeded".into(),
            ],
            description: "ERP".into(),
            ..request
        };
        let checked = create_endpoint(&good, &settings()).unwrap();
        assert_eq!(
            checked.event_types,
            ["card.ineligible", "payment.delayed", "payment.succeeded"]
        );
    }

    #[test]
    fn updates_check_what_their_mask_names() {
        let request = pb::UpdateWebhookEndpointRequest {
            request_id: "r1".into(),
            endpoint: Some(pb::WebhookEndpoint {
                id: tandem_runtime::ids::random_id("whe_"),
                url: "ftp://x".into(),
                state: pb::WebhookEndpointState::Disabled.into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["state".into()],
            }),
        };
        let update = update_endpoint(&request, &settings()).unwrap();
        assert_eq!(
            (update.enable, update.destination.is_none()),
            (Some(false), true)
        );
        let mut bad = request.clone();
        bad.update_mask = Some(prost_types::FieldMask {
            paths: vec!["url".into(), "secret".into()],
        });
        assert_eq!(
            fields(update_endpoint(&bad, &settings()).unwrap_err()),
            ["endpoint.url", "update_mask"]
        );
        bad.update_mask = None;
        assert_eq!(
            fields(update_endpoint(&bad, &settings()).unwrap_err()),
            ["update_mask"]
        );
    }

    #[test]
    fn payloads_carry_the_event_as_proto_json() {
        let event = pb::PaymentEvent {
            id: "evt_1".into(),
            sequence: 3,
            r#type: pb::PaymentEventType::PaymentSucceeded.into(),
            create_time: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 123_000_000,
            }),
            summary: "Invoice 12345 paid 20.50 USD".into(),
            type_name: "payment.succeeded".into(),
            ..Default::default()
        };
        let feed = FeedEvent {
            position: FeedPosition::default(),
            source: FeedSource::Payment,
            kind: "payment.succeeded".into(),
            body: event.encode_to_vec(),
        };
        let rendered = payload(&feed).unwrap();
        assert_eq!(rendered.event_id, "evt_1");
        assert_eq!(rendered.event_time.unix_timestamp(), 1_700_000_000);
        let json: serde_json::Value = serde_json::from_str(&rendered.json).unwrap();
        assert_eq!(json["type"], "payment.succeeded");
        assert_eq!(json["timestamp"], "2023-11-14T22:13:20.123Z");
        assert_eq!(json["data"]["id"], "evt_1");
        assert_eq!(json["data"]["typeName"], "payment.succeeded");
        assert_eq!(json["data"]["type"], "PAYMENT_EVENT_TYPE_PAYMENT_SUCCEEDED");
        assert_eq!(json["data"]["summary"], "Invoice 12345 paid 20.50 USD");
        assert_eq!(
            json["data"]["sequence"], "3",
            "int64 is a string in proto3 JSON"
        );
        let broken = FeedEvent {
            body: vec![0xff, 0xff],
            ..feed
        };
        assert!(payload(&broken).is_err());
    }
}
