//! Page tokens (AIP-158): opaque to clients, and bound to the query they page, so a token used
//! with other filters, another list or another service is refused instead of silently paging
//! the wrong rows. A token is the position after the page's last row and a digest of the query
//! (`scope`: the list and its filters), base64url without padding.

use sha2::{Digest as _, Sha256};

/// Bytes of the query digest a token carries: enough that a token made for other filters is
/// not mistaken for one of these.
const SCOPE_DIGEST_BYTES: usize = 8;

/// Longest position a token may carry, so a decoded token is always small.
pub const POSITION_BYTES_MAX: usize = 256;

/// The token of `position` in the list `scope` of `service` (`tandem/vault`, ...).
///
/// # Panics
///
/// If `position` is longer than [`POSITION_BYTES_MAX`]: positions are the servers' own keys,
/// never client input.
pub fn encode(service: &str, scope: &[u8], position: &[u8]) -> String {
    assert!(
        position.len() <= POSITION_BYTES_MAX,
        "page position too long"
    );
    let mut bytes = position.to_vec();
    bytes.extend_from_slice(&scope_digest(service, scope));
    data_encoding::BASE64URL_NOPAD.encode(&bytes)
}

/// The position in `token` if it is a token of the list `scope` of `service`; `None` if it is
/// malformed or made for another query.
pub fn decode(service: &str, scope: &[u8], token: &str) -> Option<Vec<u8>> {
    if token.len() > (POSITION_BYTES_MAX + SCOPE_DIGEST_BYTES).div_ceil(3) * 4 {
        return None;
    }
    let mut bytes = data_encoding::BASE64URL_NOPAD
        .decode(token.as_bytes())
        .ok()?;
    let split = bytes.len().checked_sub(SCOPE_DIGEST_BYTES)?;
    (bytes[split..] == scope_digest(service, scope)).then_some(())?;
    bytes.truncate(split);
    Some(bytes)
}

fn scope_digest(service: &str, scope: &[u8]) -> [u8; SCOPE_DIGEST_BYTES] {
    let mut hasher = Sha256::new();
    hasher.update(service.as_bytes());
    hasher.update(b"/page/v1\0");
    hasher.update(scope);
    let digest = hasher.finalize();
    let mut prefix = [0; SCOPE_DIGEST_BYTES];
    prefix.copy_from_slice(&digest[..SCOPE_DIGEST_BYTES]);
    prefix
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token round-trips with its own query only: other filters, another service, a
    /// truncated, padded-out or garbled token all decode to nothing.
    #[test]
    fn tokens_are_bound_to_their_query() {
        let token = encode("tandem/vault", b"state=active", &42_i64.to_be_bytes());
        assert_eq!(
            decode("tandem/vault", b"state=active", &token),
            Some(42_i64.to_be_bytes().to_vec())
        );
        assert_eq!(decode("tandem/vault", b"state=revoked", &token), None);
        assert_eq!(decode("tandem/orchestrator", b"state=active", &token), None);
        assert_eq!(
            decode("tandem/vault", b"state=active", &token[..token.len() - 2]),
            None
        );
        assert_eq!(decode("tandem/vault", b"state=active", "!!"), None);
        assert_eq!(decode("tandem/vault", b"state=active", ""), None);
        let long = "A".repeat(1024);
        assert_eq!(decode("tandem/vault", b"state=active", &long), None);
    }

    /// An empty position is a position too (the first page's end may be empty).
    #[test]
    fn empty_positions_round_trip() {
        let token = encode("tandem/orchestrator", b"", b"");
        assert_eq!(decode("tandem/orchestrator", b"", &token), Some(Vec::new()));
    }
}
