//! Webhooks' rules: the Standard Webhooks v1 signature, and when a failed delivery is tried
//! again.
//!
//! A signature is `v1,` and the base64 of HMAC-SHA256 over `{id}.{timestamp}.{body}` under the
//! secret's 32 bytes (the part of `whsec_...` after the prefix, base64-decoded). While a rotated
//! secret still signs, the header carries both signatures, space-separated; a receiver accepts
//! the delivery if any one verifies.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac as _};
use sha2::Sha256;

/// The prefix of a secret as it is shown.
pub const SECRET_PREFIX: &str = "whsec_";

/// Bytes of a signing secret.
pub const SECRET_BYTES: usize = 32;

/// The `webhook-signature` header's value for one attempt: one `v1,` signature per secret, in
/// the order given (the current secret first).
pub fn signature_header(secrets: &[&[u8]], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|secret| format!("v1,{}", sign(secret, id, timestamp, body)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The base64 HMAC-SHA256 of `{id}.{timestamp}.{body}` under `secret`.
fn sign(secret: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    // HMAC takes a key of any length; this cannot fail.
    let mut mac = <Hmac<Sha256>>::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    BASE64.encode(mac.finalize().into_bytes())
}

/// The secret as it is shown once: `whsec_` and the base64 of its bytes.
pub fn secret_text(secret: &[u8]) -> String {
    format!("{SECRET_PREFIX}{}", BASE64.encode(secret))
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    /// A 2xx answer.
    Delivered,
    /// `410 Gone`: the receiver asks never to be called again.
    Gone,
    /// Any other answer, or none: `retry_after` is the answer's `Retry-After`, if any.
    Failed {
        /// The wait the receiver asked for.
        retry_after: Option<Duration>,
    },
}

impl AttemptResult {
    /// The result of an answer with `status` and the `Retry-After` it carried.
    pub fn of_status(status: u16, retry_after: Option<Duration>) -> Self {
        match status {
            200..=299 => AttemptResult::Delivered,
            410 => AttemptResult::Gone,
            _ => AttemptResult::Failed { retry_after },
        }
    }
}

/// What follows a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Try again after this wait.
    RetryAfter(Duration),
    /// The schedule is used up: the endpoint is disabled, the delivery kept.
    Exhausted,
}

/// The wait before the next attempt of a delivery whose `made` attempts (since its endpoint was
/// last enabled) all failed, the last asking for `retry_after`: the schedule's next wait,
/// lengthened by up to a tenth of itself (`jitter` in [0, 1)), and never shorter than the
/// `Retry-After` (at most `retry_after_max`).
pub fn after_failure(
    schedule: &[Duration],
    made: usize,
    retry_after: Option<Duration>,
    retry_after_max: Duration,
    jitter: f64,
) -> AfterFailure {
    let Some(wait) = schedule.get(made) else {
        return AfterFailure::Exhausted;
    };
    let jitter = jitter.clamp(0.0, 1.0);
    let jittered = *wait + wait.mul_f64(jitter / 10.0);
    let asked = retry_after.map_or(Duration::ZERO, |asked| asked.min(retry_after_max));
    AfterFailure::RetryAfter(jittered.max(asked))
}

/// A `Retry-After` value in seconds (`120`); the HTTP-date form is read by the caller, which
/// knows the time.
pub fn retry_after_seconds(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Whether an endpoint receives deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointState {
    /// Deliveries are sent.
    Enabled,
    /// Nothing is sent; events are kept.
    Disabled(DisabledReason),
    /// Gone for good: never listed, its undelivered events dropped.
    Deleted,
}

/// Why an endpoint is disabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisabledReason {
    /// A caller disabled it.
    Operator,
    /// It answered `410 Gone`.
    Gone,
    /// It failed for `webhook.disable_after_s`, or an event used up the schedule.
    Failing,
}

impl EndpointState {
    /// The stored form: `(state, disabled_reason)`.
    pub fn as_columns(self) -> (&'static str, Option<&'static str>) {
        match self {
            EndpointState::Enabled => ("enabled", None),
            EndpointState::Disabled(reason) => (
                "disabled",
                Some(match reason {
                    DisabledReason::Operator => "operator",
                    DisabledReason::Gone => "gone",
                    DisabledReason::Failing => "failing",
                }),
            ),
            EndpointState::Deleted => ("deleted", None),
        }
    }

    /// Reads the stored form.
    pub fn from_columns(state: &str, reason: Option<&str>) -> Option<Self> {
        Some(match (state, reason) {
            ("enabled", None) => EndpointState::Enabled,
            ("deleted", None) => EndpointState::Deleted,
            ("disabled", Some("operator")) => EndpointState::Disabled(DisabledReason::Operator),
            ("disabled", Some("gone")) => EndpointState::Disabled(DisabledReason::Gone),
            ("disabled", Some("failing")) => EndpointState::Disabled(DisabledReason::Failing),
            _ => return None,
        })
    }
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    /// Not yet answered with a 2xx.
    Pending,
    /// Answered with a 2xx.
    Delivered,
    /// Dropped with its endpoint.
    Canceled,
}

impl DeliveryState {
    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Canceled => "canceled",
        }
    }

    /// Reads the stored form.
    pub fn parse(text: &str) -> Option<Self> {
        [
            DeliveryState::Pending,
            DeliveryState::Delivered,
            DeliveryState::Canceled,
        ]
        .into_iter()
        .find(|state| state.as_str() == text)
    }
}

/// True if an endpoint filtering on `types` (all when empty) receives events of `kind`.
pub fn wants(types: &[String], kind: &str) -> bool {
    types.is_empty() || types.iter().any(|t| t == kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The signature of the Standard Webhooks specification's published example.
    #[test]
    fn signs_as_the_specification_does() {
        let secret = BASE64.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            signature_header(&[&secret], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn two_secrets_sign_side_by_side() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let both = signature_header(&[&a, &b], "evt_1", 10, b"{}");
        let parts: Vec<&str> = both.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], signature_header(&[&a], "evt_1", 10, b"{}"));
        assert_eq!(parts[1], signature_header(&[&b], "evt_1", 10, b"{}"));
        assert_ne!(parts[0], parts[1]);
        // Every part of the message is signed.
        assert_ne!(parts[0], signature_header(&[&a], "evt_2", 10, b"{}"));
        assert_ne!(parts[0], signature_header(&[&a], "evt_1", 11, b"{}"));
        assert_ne!(parts[0], signature_header(&[&a], "evt_1", 10, b"{ }"));
    }

    #[test]
    fn secrets_show_with_their_prefix() {
        let text = secret_text(&[0u8; SECRET_BYTES]);
        assert!(text.starts_with("whsec_"));
        assert_eq!(BASE64.decode(&text[6..]).unwrap(), [0u8; SECRET_BYTES]);
    }

    #[test]
    fn answers_are_classified_by_status() {
        assert_eq!(
            AttemptResult::of_status(204, None),
            AttemptResult::Delivered
        );
        assert_eq!(AttemptResult::of_status(410, None), AttemptResult::Gone);
        // A redirect is not followed: it is a failure like any other.
        assert_eq!(
            AttemptResult::of_status(301, None),
            AttemptResult::Failed { retry_after: None }
        );
        let wait = Some(Duration::from_secs(3));
        assert_eq!(
            AttemptResult::of_status(429, wait),
            AttemptResult::Failed { retry_after: wait }
        );
    }

    #[test]
    fn retries_follow_the_schedule_with_jitter_and_retry_after() {
        let s = |secs: u64| Duration::from_secs(secs);
        let schedule = [s(0), s(5), s(300)];
        let max = s(3600);
        // After the first failure: the second wait, lengthened by at most a tenth.
        assert_eq!(
            after_failure(&schedule, 1, None, max, 0.0),
            AfterFailure::RetryAfter(s(5))
        );
        assert_eq!(
            after_failure(&schedule, 1, None, max, 0.999_999),
            AfterFailure::RetryAfter(s(5) + s(5).mul_f64(0.099_999_9))
        );
        assert_eq!(
            after_failure(&schedule, 2, None, max, 1.0),
            AfterFailure::RetryAfter(s(330))
        );
        // Retry-After is honoured when longer, up to its maximum.
        assert_eq!(
            after_failure(&schedule, 1, Some(s(60)), max, 0.0),
            AfterFailure::RetryAfter(s(60))
        );
        assert_eq!(
            after_failure(&schedule, 1, Some(s(2)), max, 0.0),
            AfterFailure::RetryAfter(s(5))
        );
        assert_eq!(
            after_failure(&schedule, 1, Some(s(86_400)), max, 0.0),
            AfterFailure::RetryAfter(max)
        );
        // Every wait used: the delivery is kept and its endpoint disabled.
        assert_eq!(
            after_failure(&schedule, 3, None, max, 0.0),
            AfterFailure::Exhausted
        );
    }

    #[test]
    fn states_round_trip_their_stored_form() {
        for state in [
            EndpointState::Enabled,
            EndpointState::Deleted,
            EndpointState::Disabled(DisabledReason::Operator),
            EndpointState::Disabled(DisabledReason::Gone),
            EndpointState::Disabled(DisabledReason::Failing),
        ] {
            let (name, reason) = state.as_columns();
            assert_eq!(EndpointState::from_columns(name, reason), Some(state));
        }
        assert_eq!(EndpointState::from_columns("disabled", None), None);
        for state in [
            DeliveryState::Pending,
            DeliveryState::Delivered,
            DeliveryState::Canceled,
        ] {
            assert_eq!(DeliveryState::parse(state.as_str()), Some(state));
        }
        assert!(wants(&[], "payment.created"));
        assert!(wants(&["leg.captured".into()], "leg.captured"));
        assert!(!wants(&["leg.captured".into()], "payment.created"));
    }

    #[test]
    fn retry_after_reads_seconds() {
        assert_eq!(retry_after_seconds(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(retry_after_seconds("-1"), None);
    }
}
