//! Card tokens: `tok_` followed by 26 lower-case base32 characters of 128 random bits.
//!
//! Tokens are random, never derived from the PAN, so a token reveals nothing about its card.

use std::fmt;

const PREFIX: &str = "tok_";

pub(crate) use tandem_runtime::ids::{is_random_id, random_id};

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
            assert_eq!(
                token.as_str().len(),
                PREFIX.len() + tandem_runtime::ids::BODY_CHARS
            );
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
