//! Endpoints' signing secrets: made from the operating system's random source, shown once, and
//! stored sealed with `webhook.secret_key` (AES-256-GCM). A sealed secret is bound to its
//! endpoint and version (the additional authenticated data), so a sealed value copied to another
//! endpoint or version does not open.

use aes_gcm::aead::{Aead as _, Payload};
use aes_gcm::{Aes256Gcm, KeyInit as _, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use zeroize::Zeroizing;

use crate::domain::webhooks::SECRET_BYTES;
use crate::error::Error;

/// Bytes of an AES-GCM nonce, stored before the ciphertext.
const NONCE_BYTES: usize = 12;

/// A signing secret's bytes, wiped when dropped.
pub type Secret = Zeroizing<Vec<u8>>;

/// The key that seals secrets.
pub struct SealingKey {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealingKey([redacted])")
    }
}

impl SealingKey {
    /// True if `text` is a usable `webhook.secret_key`: empty (webhooks off) or the base64 of
    /// 32 bytes.
    pub fn check(text: &str) -> bool {
        text.is_empty() || Self::from_config(text).is_some()
    }

    /// The key of `webhook.secret_key`; `None` when it is empty or not the base64 of 32 bytes.
    pub fn from_config(text: &str) -> Option<Self> {
        let bytes = Zeroizing::new(BASE64.decode(text.trim()).ok()?);
        if bytes.len() != 32 {
            return None;
        }
        let cipher = Aes256Gcm::new_from_slice(&bytes).ok()?;
        Some(Self { cipher })
    }

    /// Seals `secret` as version `version` of `endpoint_id`'s secret: nonce, then ciphertext.
    pub fn seal(&self, endpoint_id: &str, version: i64, secret: &[u8]) -> Result<Vec<u8>, Error> {
        let mut nonce = [0u8; NONCE_BYTES];
        getrandom::getrandom(&mut nonce)
            .map_err(|e| Error::Corrupt(format!("random source: {e}")))?;
        let aad = aad(endpoint_id, version);
        let sealed = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: secret,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| Error::Corrupt("sealing a webhook secret failed".into()))?;
        let mut stored = nonce.to_vec();
        stored.extend_from_slice(&sealed);
        Ok(stored)
    }

    /// Opens what [`SealingKey::seal`] sealed for `endpoint_id` and `version`.
    pub fn open(&self, endpoint_id: &str, version: i64, stored: &[u8]) -> Result<Secret, Error> {
        let refused = || {
            Error::Corrupt(format!(
                "webhook secret {version} of {endpoint_id} does not open under webhook.secret_key"
            ))
        };
        if stored.len() < NONCE_BYTES {
            return Err(refused());
        }
        let (nonce, sealed) = stored.split_at(NONCE_BYTES);
        let aad = aad(endpoint_id, version);
        self.cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: aad.as_bytes(),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| refused())
    }
}

/// What a sealed secret is bound to.
fn aad(endpoint_id: &str, version: i64) -> String {
    format!("tandem webhook secret/{endpoint_id}/{version}")
}

/// A new secret from the operating system's random source.
pub fn new_secret() -> Result<Secret, Error> {
    let mut bytes = Zeroizing::new(vec![0u8; SECRET_BYTES]);
    getrandom::getrandom(&mut bytes).map_err(|e| Error::Corrupt(format!("random source: {e}")))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SealingKey {
        SealingKey::from_config(&BASE64.encode([7u8; 32])).unwrap()
    }

    #[test]
    fn the_key_is_32_bytes_of_base64_or_nothing() {
        assert!(SealingKey::check(""));
        assert!(SealingKey::check(&BASE64.encode([1u8; 32])));
        assert!(!SealingKey::check(&BASE64.encode([1u8; 16])));
        assert!(!SealingKey::check("not base64!"));
        assert!(SealingKey::from_config("").is_none());
        assert_eq!(format!("{:?}", key()), "SealingKey([redacted])");
    }

    #[test]
    fn a_sealed_secret_opens_only_for_its_endpoint_and_version() {
        let key = key();
        let secret = new_secret().unwrap();
        let sealed = key.seal("whe_a", 1, &secret).unwrap();
        assert!(!sealed.windows(8).any(|w| secret.windows(8).any(|s| s == w)));
        assert_eq!(*key.open("whe_a", 1, &sealed).unwrap(), *secret);
        assert!(key.open("whe_b", 1, &sealed).is_err());
        assert!(key.open("whe_a", 2, &sealed).is_err());
        let other = SealingKey::from_config(&BASE64.encode([8u8; 32])).unwrap();
        assert!(other.open("whe_a", 1, &sealed).is_err());
        assert!(key.open("whe_a", 1, &sealed[..5]).is_err());
        // Two seals of one secret differ (fresh nonces).
        assert_ne!(sealed, key.seal("whe_a", 1, &secret).unwrap());
    }

    #[test]
    fn new_secrets_are_32_random_bytes() {
        let (a, b) = (new_secret().unwrap(), new_secret().unwrap());
        assert_eq!(a.len(), SECRET_BYTES);
        assert_ne!(*a, *b);
    }
}
