//! Card tokens: `tok_` followed by 26 lower-case base32 characters of 128 random bits.
//!
//! Tokens are random, never derived from the PAN, so a token reveals nothing about its card.

use std::fmt;
use std::sync::LazyLock;

use aes_gcm::aead::OsRng;
use aes_gcm::aead::rand_core::RngCore as _;

const PREFIX: &str = "tok_";
/// Base32 characters for 128 bits: ceil(128 / 5).
const BODY_CHARS: usize = 26;

/// RFC 4648 base32 alphabet in lower case, without padding.
static BASE32_LOWER: LazyLock<data_encoding::Encoding> = LazyLock::new(|| {
    let mut spec = data_encoding::Specification::new();
    spec.symbols.push_str("abcdefghijklmnopqrstuvwxyz234567");
    // A constant specification that data-encoding accepts; every token test exercises it.
    spec.encoding().expect("valid base32 specification")
});

/// A new random id: `prefix` followed by 26 lower-case base32 characters of 128 bits from the
/// operating system's CSPRNG. Tokens, charge ids and refund ids share this shape.
pub(crate) fn random_id(prefix: &str) -> String {
    let mut bytes = [0u8; 16];
    OsRng.fill_bytes(&mut bytes);
    let body = BASE32_LOWER.encode(&bytes);
    debug_assert_eq!(body.len(), BODY_CHARS);
    format!("{prefix}{body}")
}

/// True if `text` is `prefix` followed by the canonical base32 form of 128 bits.
pub(crate) fn is_random_id(prefix: &str, text: &str) -> bool {
    let Some(body) = text.strip_prefix(prefix) else {
        return false;
    };
    // Decoding checks the alphabet; the length check rejects non-canonical trailing bits
    // only together with decode, so do both.
    body.len() == BODY_CHARS
        && BASE32_LOWER
            .decode(body.as_bytes())
            .is_ok_and(|bytes| bytes.len() == 16 && BASE32_LOWER.encode(&bytes) == body)
}

/// An opaque card token.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token(String);

/// Why a token string is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Empty.
    #[error("is required")]
    Missing,
    /// Not `tok_` + 26 lower-case base32 characters.
    #[error("must be \"tok_\" followed by 26 lower-case base32 characters")]
    Format,
}

impl Token {
    /// A new random token from the operating system's CSPRNG.
    pub fn generate() -> Token {
        Token(random_id(PREFIX))
    }

    /// Parses a token given by a client.
    pub fn parse(text: &str) -> Result<Token, TokenError> {
        if text.is_empty() {
            return Err(TokenError::Missing);
        }
        if !is_random_id(PREFIX, text) {
            return Err(TokenError::Format);
        }
        Ok(Token(text.to_owned()))
    }

    /// Rebuilds a token read from storage, where a CHECK constraint holds its format.
    pub fn from_stored(text: String) -> Token {
        debug_assert!(Token::parse(&text).is_ok());
        Token(text)
    }

    /// The token text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// Generated tokens have the documented shape, parse back, and do not repeat.
    #[test]
    fn generated_tokens_are_well_formed_and_unique() {
        let mut seen = HashSet::new();
        for _ in 0..10_000 {
            let token = Token::generate();
            assert_eq!(token.as_str().len(), PREFIX.len() + BODY_CHARS);
            assert_eq!(Token::parse(token.as_str()), Ok(token.clone()));
            assert!(seen.insert(token));
        }
    }

    /// Malformed tokens are refused.
    #[test]
    fn refusals() {
        let good = Token::generate();
        let body = &good.as_str()[PREFIX.len()..];
        let cases = [
            (String::new(), TokenError::Missing),
            (body.to_owned(), TokenError::Format),
            (format!("TOK_{body}"), TokenError::Format),
            (format!("tok_{}", body.to_uppercase()), TokenError::Format),
            (format!("tok_{}", &body[1..]), TokenError::Format),
            (format!("tok_{body}a"), TokenError::Format),
            (format!("tok_{}1", &body[1..]), TokenError::Format),
            // 26 characters but the last one carries non-zero padding bits.
            (format!("tok_{}z", &body[..25]), TokenError::Format),
        ];
        for (text, expected) in cases {
            assert_eq!(Token::parse(&text), Err(expected), "{text}");
        }
    }
}
