//! Live updates of a payment page: the payment's events from `WatchPayment`, sent to the
//! browser as server-sent events. Each event is only a signal (its sequence and type: never
//! more than the page itself shows); the page's script then reloads the part of the page that
//! changed. The stream ends with an `end` event once the payment is settled; a stream the
//! orchestrator ended early (its longest stream time) just closes, and the browser reconnects
//! with the last sequence it saw (`Last-Event-ID`), losing nothing.

use std::convert::Infallible;

use bytes::Bytes;
use futures::{Stream, StreamExt as _};
use tandem_proto::tandem::orchestrator::v1 as pb;
use tandem_tls::identity::Caller;

use crate::api::{Api, ApiError, as_person};

/// The frames of a payment's event stream, after the event `after` (a sequence).
pub async fn payment_events(
    api: Api,
    person: Caller,
    payment_id: String,
    after: i64,
) -> Result<impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static, ApiError> {
    let request = pb::WatchPaymentRequest {
        payment_id: payment_id.clone(),
        after_sequence: after,
    };
    let watched = api
        .payments()
        .watch_payment(as_person(request, &person))
        .await?
        .into_inner();
    let events = watched
        .take_while(|message| std::future::ready(message.is_ok()))
        .filter_map(|message| std::future::ready(message.ok().and_then(|m| m.event)))
        .map(|event| Ok(Bytes::from(frame(&event))));
    // Once the orchestrator ends the stream: `end` if the payment is settled, else nothing
    // (the browser reconnects).
    let ending = futures::stream::once(async move {
        let request = pb::GetPaymentRequest { payment_id };
        let settled = api
            .payments()
            .get_payment(as_person(request, &person))
            .await
            .ok()
            .and_then(|response| response.into_inner().payment)
            .is_some_and(|payment| settled(payment.state));
        Ok(Bytes::from_static(if settled {
            b"event: end\ndata: {}\n\n"
        } else {
            b": the stream ends here; reconnect\n\n"
        }))
    });
    Ok(events.chain(ending))
}

/// Whether a payment in `state` changes no more (short of a refund, which the page shows
/// when reloaded).
fn settled(state: i32) -> bool {
    use pb::PaymentState as S;
    [
        S::Succeeded,
        S::PartiallyPaid,
        S::Failed,
        S::PartiallyRefunded,
        S::Refunded,
    ]
    .map(|s| s as i32)
    .contains(&state)
}

/// One event as a server-sent event: its sequence as the id, its type and sequence as data.
fn frame(event: &pb::PaymentEvent) -> String {
    let data = serde_json::json!({
        "sequence": event.sequence,
        "type": event.type_name,
    });
    format!("id: {}\ndata: {data}\n\n", event.sequence)
}

/// The sequence a reconnecting browser saw last (`Last-Event-ID`), or the one the page was
/// rendered after (`?after=`), or 0.
pub fn resume_after(headers: &http::HeaderMap, query: Option<&str>) -> i64 {
    let header = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    let query = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(key, _)| key == "after")
        .and_then(|(_, value)| value.parse().ok());
    header.or(query).filter(|n: &i64| *n >= 0).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An event is a signal with its sequence; a browser resumes where it was.
    #[test]
    fn frames_and_resumption() {
        let event = pb::PaymentEvent {
            sequence: 7,
            type_name: "payment.succeeded".into(),
            summary: "Invoice 1 paid".into(),
            ..Default::default()
        };
        let frame = frame(&event);
        assert!(frame.starts_with("id: 7\ndata: {"), "{frame}");
        assert!(frame.contains("\"type\":\"payment.succeeded\""), "{frame}");
        assert!(!frame.contains("Invoice 1 paid"), "{frame}");
        assert!(frame.ends_with("\n\n"));
        let mut headers = http::HeaderMap::new();
        assert_eq!(resume_after(&headers, Some("after=3")), 3);
        headers.insert("last-event-id", http::HeaderValue::from_static("5"));
        assert_eq!(resume_after(&headers, Some("after=3")), 5);
        assert_eq!(resume_after(&http::HeaderMap::new(), Some("after=-2")), 0);
        assert!(settled(pb::PaymentState::Failed as i32));
        assert!(!settled(pb::PaymentState::InReview as i32));
    }
}
