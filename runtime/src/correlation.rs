//! The correlation id of a call (`x-request-id`): taken from the caller when it is a safe one,
//! made otherwise, made visible to the handler in the request's metadata, and echoed on the
//! response (errors included), so a caller can quote it and every log line and downstream call
//! of the request carries it.

use crate::headers::{HeaderHook, HookLayer};

/// The metadata key.
pub const HEADER: &str = "x-request-id";

/// Longest correlation id taken from a caller, in bytes.
pub const BYTES_MAX: usize = 128;

/// Digits in a row that make a value look like a card number (PANs have 12 to 19): such a
/// value is never taken, since correlation ids are logged and stored in clear.
const DIGITS_IN_A_ROW_MAX: usize = 11;

/// `value` if it is a safe correlation id: 1 to [`BYTES_MAX`] printable ASCII characters with
/// no run of digits as long as a card number, and no card number written in groups (digits
/// joined by `-`, `.`, `:` or `/` that hold 12 to 19 digits passing the Luhn check).
pub fn accept(value: &str) -> Option<&str> {
    let printable = !value.is_empty()
        && value.len() <= BYTES_MAX
        && value.bytes().all(|b| b.is_ascii_graphic());
    let mut run = 0;
    let digits_ok = value.bytes().all(|b| {
        run = if b.is_ascii_digit() { run + 1 } else { 0 };
        run <= DIGITS_IN_A_ROW_MAX
    });
    (printable && digits_ok && !grouped_card_number(value)).then_some(value)
}

/// Whether digits joined by separators (`4242-4242-4242-4242`) hold a Luhn-valid run of 12 to
/// 19 digits.
fn grouped_card_number(value: &str) -> bool {
    let mut joined: Vec<u8> = Vec::new();
    let mut found = false;
    let mut check = |digits: &mut Vec<u8>| {
        found |= (12..=19).any(|len| digits.windows(len).any(luhn_valid));
        digits.clear();
    };
    for b in value.bytes() {
        match b {
            b'0'..=b'9' => joined.push(b - b'0'),
            b'-' | b'.' | b':' | b'/' => {}
            _ => check(&mut joined),
        }
    }
    check(&mut joined);
    found
}

fn luhn_valid(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            let d = u32::from(*d);
            if i % 2 == 1 {
                if d * 2 > 9 { d * 2 - 9 } else { d * 2 }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// The request's correlation id as [`layer`] left it (absent only without the layer).
pub fn of<T>(request: &tonic::Request<T>) -> Option<String> {
    request
        .metadata()
        .get(HEADER)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
}

/// The layer that sets a safe `x-request-id` on every request and echoes it on the response.
pub fn layer() -> HookLayer<Correlation> {
    HookLayer(Correlation)
}

/// See [`layer`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Correlation;

impl HeaderHook for Correlation {
    type State = http::HeaderValue;

    fn on_request(&self, headers: &mut http::HeaderMap) -> http::HeaderValue {
        let given = headers
            .get(HEADER)
            .and_then(|value| value.to_str().ok())
            .and_then(accept)
            .and_then(|id| http::HeaderValue::from_str(id).ok());
        // A made id is `req_` and 26 base32 characters: always a valid header value.
        let id = given.unwrap_or_else(|| {
            http::HeaderValue::from_str(&crate::ids::random_id("req_"))
                .unwrap_or_else(|_| http::HeaderValue::from_static("req_unknown"))
        });
        headers.insert(HEADER, id.clone());
        id
    }

    fn on_response(&self, id: http::HeaderValue, headers: &mut http::HeaderMap) {
        headers.insert(HEADER, id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Safe ids pass; empty, long, non-printable and card-number-like ones do not.
    #[test]
    fn accepted_ids() {
        for (value, ok) in [
            ("req-123", true),
            ("2f1c7d2e-6a7b-4c0d-9e8f-0123456789ab", true),
            ("order:12345678901", true),
            ("", false),
            ("has space", false),
            ("tab\tinside", false),
            ("pan-4242424242424242", false),
            ("123456789012", false),
            ("card-4242-4242-4242-4242", false),
            ("4242.4242.4242.4242", false),
            ("3782-822463-10005", false),
            ("billing-2026-12-07-0002", true),
        ] {
            assert_eq!(accept(value).is_some(), ok, "{value:?}");
        }
        assert!(accept(&"a".repeat(BYTES_MAX)).is_some());
        assert!(accept(&"a".repeat(BYTES_MAX + 1)).is_none());
        assert!(accept(&crate::ids::random_id("req_")).is_some());
    }
}
