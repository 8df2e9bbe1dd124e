//! The vault's domain: card numbers, expiries, tokens, fingerprints, the checked commands the
//! service layer executes, the charge rules, what an audit row says and the settlement file's
//! format.
//!
//! Pure code: no IO, no tonic, no sqlx. Every type here is valid by construction; the gRPC edge
//! builds them from wire messages and the service layer trusts them.

pub mod audit;
pub mod charge;
pub mod charge_rules;
pub mod expiry;
pub mod pan;
pub mod settlement;
pub mod token;

use std::fmt;

pub use expiry::{Expiry, ExpiryError};
pub use pan::{Brand, Pan, PanError};
pub use token::{Token, TokenError};
use zeroize::Zeroizing;

/// Longest request id, in bytes (AIP-155 suggests a UUID; the orchestrator sends
/// `payment/leg/attempt/op` paths).
const REQUEST_ID_BYTES_MAX: usize = 128;
/// Longest holder name, in characters.
const HOLDER_NAME_CHARS_MAX: usize = 100;
/// Longest revocation reason, in characters.
const REASON_CHARS_MAX: usize = 200;

/// Why a text field is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    /// Empty where required.
    #[error("is required")]
    Missing,
    /// Longer than its bound.
    #[error("is too long")]
    TooLong,
    /// Characters outside the allowed set.
    #[error("contains characters that are not allowed")]
    Characters,
    /// Something that looks like a card number, in a field that is stored or logged in clear.
    #[error("must not contain a card number")]
    CardNumber,
    /// Not in the field's documented format.
    #[error("{0}")]
    Format(&'static str),
}

/// Checks an identifier-like text stored and logged in clear (request ids, merchant
/// references): at most `bytes_max` bytes of `A-Z a-z 0-9 . _ : / -`, and no card number.
pub(crate) fn check_id_text(text: &str, bytes_max: usize) -> Result<(), TextError> {
    if text.len() > bytes_max {
        return Err(TextError::TooLong);
    }
    if !text
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._:/-".contains(&b))
    {
        return Err(TextError::Characters);
    }
    if pan::contains_card_number(text) {
        return Err(TextError::CardNumber);
    }
    Ok(())
}

/// An AIP-155 request id: 1-128 bytes of `A-Z a-z 0-9 . _ : / -`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestId(String);

impl RequestId {
    /// Validates a client's request id.
    pub fn parse(text: &str) -> Result<RequestId, TextError> {
        if text.is_empty() {
            return Err(TextError::Missing);
        }
        check_id_text(text, REQUEST_ID_BYTES_MAX)?;
        Ok(RequestId(text.to_owned()))
    }

    /// The id text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The name on a card: secret (stored only encrypted), at most 100 characters, no control
/// characters. May be empty.
pub struct HolderName(Zeroizing<String>);

impl HolderName {
    /// Validates a holder name; surrounding white space is trimmed.
    pub fn parse(text: &str) -> Result<HolderName, TextError> {
        let text = text.trim();
        if text.chars().count() > HOLDER_NAME_CHARS_MAX {
            return Err(TextError::TooLong);
        }
        if text.chars().any(char::is_control) {
            return Err(TextError::Characters);
        }
        Ok(HolderName(Zeroizing::new(text.to_owned())))
    }

    /// An explicit copy (deliberately not `Clone`, so copies are visible).
    pub(crate) fn duplicate(&self) -> HolderName {
        HolderName(self.0.clone())
    }

    /// The name, for sealing only.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    /// True if no name was given.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for HolderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HolderName([redacted])")
    }
}

/// A free-text reason for the audit log: at most 200 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reason(String);

impl Reason {
    /// Validates a reason; it may be empty.
    pub fn parse(text: &str) -> Result<Reason, TextError> {
        let text = text.trim();
        if text.chars().count() > REASON_CHARS_MAX {
            return Err(TextError::TooLong);
        }
        if text.chars().any(char::is_control) {
            return Err(TextError::Characters);
        }
        if pan::contains_card_number(text) {
            return Err(TextError::CardNumber);
        }
        Ok(Reason(text.to_owned()))
    }

    /// The reason text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A keyed card fingerprint: HMAC-SHA256 of the normalised PAN under the vault's fingerprint
/// key. Its `Debug` shows only a short prefix, so logs can correlate without holding the
/// full value.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub(crate) [u8; 32]);

/// Why a fingerprint string is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("must be 64 lower-case hex characters")]
pub struct FingerprintError;

impl Fingerprint {
    /// Parses the 64-character lower-case hex form of [`Fingerprint::to_hex`].
    pub fn parse(text: &str) -> Result<Fingerprint, FingerprintError> {
        if text.len() != 64 || text.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(FingerprintError);
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes).map_err(|_| FingerprintError)?;
        Ok(Fingerprint(bytes))
    }

    /// The lower-case hex form returned to clients.
    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }

    /// The raw bytes, as stored.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fp:{}…", hex::encode(&self.0[..4]))
    }
}

/// The card data that gets sealed: everything secret about a card.
#[derive(Debug)]
pub struct CardSecret {
    /// The card number.
    pub pan: Pan,
    /// The name on the card.
    pub holder_name: HolderName,
}

/// A checked `Tokenize`.
#[derive(Debug)]
pub struct TokenizeCommand {
    /// Idempotency key.
    pub request_id: RequestId,
    /// What to store.
    pub secret: CardSecret,
    /// The card's expiry.
    pub expiry: Expiry,
    /// Return an active token of the same PAN instead of issuing a new one.
    pub reuse_existing: bool,
    /// Token time to live; `None` for no expiry.
    pub ttl: Option<time::Duration>,
}

/// A checked `UpdateCard`.
#[derive(Debug)]
pub struct UpdateCardCommand {
    /// Idempotency key.
    pub request_id: RequestId,
    /// The token whose card changes.
    pub token: Token,
    /// The new PAN, or `None` to keep the current one.
    pub pan: Option<Pan>,
    /// The new expiry.
    pub expiry: Expiry,
    /// The new holder name, or `None` to keep the current one.
    pub holder_name: Option<HolderName>,
}

/// Which card `RevokeByFingerprint` revokes.
#[derive(Debug)]
pub enum CardSelector {
    /// By fingerprint.
    Fingerprint(Fingerprint),
    /// By PAN; the vault computes the fingerprint.
    Pan(Pan),
}

/// The state of a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenState {
    /// Usable.
    Active,
    /// Revoked; final.
    Revoked,
    /// Past its time to live; card data purged; final.
    Expired,
}

impl TokenState {
    /// The state's name in storage.
    pub const fn as_str(self) -> &'static str {
        match self {
            TokenState::Active => "active",
            TokenState::Revoked => "revoked",
            TokenState::Expired => "expired",
        }
    }

    /// Parses [`TokenState::as_str`].
    pub fn parse(text: &str) -> Option<TokenState> {
        [TokenState::Active, TokenState::Revoked, TokenState::Expired]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

impl CardView {
    /// The view as of `now`: an active token past its time to live is expired even before
    /// the purge job has deleted its card data.
    pub fn as_of(mut self, now: time::OffsetDateTime) -> CardView {
        self.state = self.state_at(now);
        self
    }

    /// The token's state as of `now` (see [`CardView::as_of`]).
    pub fn state_at(&self, now: time::OffsetDateTime) -> TokenState {
        if self.state == TokenState::Active && self.expires_at.is_some_and(|at| at <= now) {
            TokenState::Expired
        } else {
            self.state
        }
    }
}

/// A stored card's metadata: what the vault shows about a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardView {
    /// The token.
    pub token: Token,
    /// The brand.
    pub brand: Brand,
    /// Leading digits (6 or 8).
    pub bin: String,
    /// Last four digits.
    pub last4: String,
    /// Expiry.
    pub expiry: Expiry,
    /// Keyed fingerprint.
    pub fingerprint: Fingerprint,
    /// State.
    pub state: TokenState,
    /// Issue time.
    pub created_at: time::OffsetDateTime,
    /// Last change.
    pub updated_at: time::OffsetDateTime,
    /// Time to live's end, if any.
    pub expires_at: Option<time::OffsetDateTime>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Request ids accept the AIP-155 forms and refuse everything else.
    #[test]
    fn request_id_table() {
        let ok = [
            "5f0c3a4e-7d1b-4c38-9a52-0e7b0e3c8c11",
            "pay_1/leg_2/attempt_1/authorize",
            "a",
            "A.b_c:d/e-f",
        ];
        for text in ok {
            assert!(RequestId::parse(text).is_ok(), "{text}");
        }
        let long = "a".repeat(REQUEST_ID_BYTES_MAX + 1);
        let refused = [
            ("4242-4242-4242-4242", TextError::CardNumber),
            ("", TextError::Missing),
            (long.as_str(), TextError::TooLong),
            ("has space", TextError::Characters),
            ("new\nline", TextError::Characters),
            ("ünïcode", TextError::Characters),
        ];
        for (text, expected) in refused {
            assert_eq!(RequestId::parse(text), Err(expected), "{text:?}");
        }
    }

    /// Holder names are bounded and free of control characters; Debug never shows them.
    #[test]
    fn holder_name_rules() {
        assert!(HolderName::parse("  Ada Lovelace ").unwrap().expose() == "Ada Lovelace");
        assert!(HolderName::parse("").unwrap().is_empty());
        assert!(HolderName::parse("Zoë Ñúñez-O'Brien").is_ok());
        assert_eq!(
            HolderName::parse(&"x".repeat(HOLDER_NAME_CHARS_MAX + 1)).err(),
            Some(TextError::TooLong)
        );
        assert_eq!(
            HolderName::parse("a\u{7}b").err(),
            Some(TextError::Characters)
        );
        let name = HolderName::parse("Ada Lovelace").unwrap();
        assert!(!format!("{name:?}").contains("Ada"));
    }

    /// Fingerprints round-trip through hex and show only a prefix under Debug.
    #[test]
    fn fingerprint_hex_and_debug() {
        let fp = Fingerprint([0xab; 32]);
        let hex = fp.to_hex();
        assert_eq!(Fingerprint::parse(&hex), Ok(fp));
        assert_eq!(
            Fingerprint::parse(&hex.to_uppercase()),
            Err(FingerprintError)
        );
        assert_eq!(Fingerprint::parse(&hex[1..]), Err(FingerprintError));
        assert_eq!(format!("{fp:?}"), "fp:abababab…");
    }
}
