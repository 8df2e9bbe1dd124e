//! Cryptographic primitives of the vault: key wrapping, card sealing, keyed fingerprints.
//!
//! Pure code: no IO. This module and a processor connector are the only places that see a
//! card number in clear.
//!
//! - A **root key** (KEK) wraps every other key with AES-256-GCM; the AAD names what is wrapped
//!   (`tandem/vault/dek/v1 || version`, `tandem/vault/secret/v1 || name`), so a wrapped key
//!   cannot be swapped for another.
//! - **Data keys** (DEKs) seal card records with AES-256-GCM under a random 96-bit nonce and
//!   AAD = `tandem/vault/card/v1 || 0x00 || token || 0x00 || dek_version (u32 BE)`, so a
//!   ciphertext moved to another row, or relabelled with another key version, does not open.
//! - The **fingerprint key** computes HMAC-SHA256 over the normalised PAN (PCI DSS 4.0
//!   req. 3.5.1.1: keyed, so fingerprints cannot be brute-forced from the 10^6-ish PAN space
//!   left after BIN and last four).
//!
//! Every key lives in a locked page of its own (`locked`) and nowhere else: keys are
//! generated, decoded and unwrapped in place there, an AES cipher (whose key schedule begins
//! with the key itself) is built from it for each operation and wiped when dropped, and every
//! operation on a key or a card runs on a stack that is wiped after it ([`on_wiped_stack`]).

use std::fmt;

use aes_gcm::aead::rand_core::RngCore as _;
use aes_gcm::aead::{Aead as _, AeadInPlace as _, KeyInit as _, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use hmac::{Hmac, Mac as _};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use crate::domain::{CardSecret, Fingerprint, HolderName, Pan, Token};
use crate::locked::LockedBytes;

/// Length of every symmetric key, in bytes (AES-256, HMAC-SHA256).
pub const KEY_BYTES: usize = 32;
/// Length of an AES-GCM nonce, in bytes (96 bits, NIST SP 800-38D).
pub const NONCE_BYTES: usize = 12;
/// Length of an AES-GCM tag, in bytes.
const TAG_BYTES: usize = 16;
/// Stack wiped after each operation on a key, in bytes: well above what any of them uses below
/// its caller (a few KiB for AES-GCM over a card record, even unoptimised). Wiping it costs
/// about a microsecond.
const STACK_WIPE_BYTES: usize = 32 * 1024;

const CARD_AAD_LABEL: &[u8] = b"tandem/vault/card/v1";
const DEK_AAD_LABEL: &[u8] = b"tandem/vault/dek/v1";
const SECRET_AAD_LABEL: &[u8] = b"tandem/vault/secret/v1";
const ROOT_ID_LABEL: &[u8] = b"tandem/vault/root-key-id/v1";
const REQUEST_HASH_LABEL: &[u8] = b"tandem/vault/request/v1";
/// Version byte of the sealed card plaintext layout.
const CARD_PLAINTEXT_V1: u8 = 1;

/// A decryption or format failure. Deliberately carries no detail: which check failed is of
/// no use to a caller and of some use to an attacker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("ciphertext does not open under this key and context")]
pub struct OpenError;

/// A 256-bit secret key in locked memory that core dumps leave out: zeroized
/// on drop, redacted in `Debug`, compared in constant time, never cloned.
pub struct SecretKey(LockedBytes<KEY_BYTES>);

impl SecretKey {
    /// A fresh key from the operating system's CSPRNG, written straight into locked memory.
    pub fn generate() -> SecretKey {
        let mut key = LockedBytes::zeroed();
        OsRng.fill_bytes(key.expose_mut());
        SecretKey(key)
    }

    /// A copy of `bytes` in locked memory (the caller wipes its own copy).
    pub fn copy_from(bytes: &[u8; KEY_BYTES]) -> SecretKey {
        let mut key = LockedBytes::zeroed();
        key.expose_mut().copy_from_slice(bytes);
        SecretKey(key)
    }

    /// The key written as 64 hex characters, decoded straight into locked memory.
    pub(crate) fn from_hex(text: &str) -> Option<SecretKey> {
        let mut key = LockedBytes::zeroed();
        hex::decode_to_slice(text, key.expose_mut()).ok()?;
        Some(SecretKey(key))
    }

    /// The key bytes; only for building ciphers, splitting into shares and the dev key file.
    pub(crate) fn expose(&self) -> &[u8; KEY_BYTES] {
        self.0.expose()
    }

    /// An AES-256-GCM cipher under this key, for one operation: its key schedule (which holds
    /// the key) is on the caller's stack and wiped when it is dropped.
    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(self.expose().into())
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey([redacted])")
    }
}

impl PartialEq for SecretKey {
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq as _;
        self.expose().ct_eq(other.expose()).into()
    }
}

/// A key wrapped by the root key, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedKey {
    /// Random nonce of the wrap.
    pub nonce: [u8; NONCE_BYTES],
    /// The AES-GCM ciphertext and tag of the key.
    pub ciphertext: Vec<u8>,
}

/// The root key (KEK). It never leaves memory; it wraps data keys and vault secrets.
#[derive(Debug)]
pub struct RootKey(SecretKey);

impl RootKey {
    /// Wraps a root key.
    pub fn new(key: SecretKey) -> RootKey {
        RootKey(key)
    }

    /// A short public identifier of this root key (16 hex characters of a labelled SHA-256),
    /// stored beside every wrapped key so that starting with the wrong root key fails with a
    /// clear message instead of an opaque decryption error.
    pub fn id(&self) -> String {
        let digest = on_wiped_stack(|| {
            Sha256::new()
                .chain_update(ROOT_ID_LABEL)
                .chain_update(self.0.expose())
                .finalize()
        });
        hex::encode(&digest[..8])
    }

    /// Wraps data key `version`.
    pub fn wrap_data_key(&self, version: u32, key: &SecretKey) -> WrappedKey {
        self.wrap(key, &dek_aad(version))
    }

    /// Unwraps data key `version`.
    pub fn unwrap_data_key(
        &self,
        version: u32,
        wrapped: &WrappedKey,
    ) -> Result<SecretKey, OpenError> {
        self.unwrap(wrapped, &dek_aad(version))
    }

    /// Wraps the named vault secret (e.g. the fingerprint key).
    pub fn wrap_secret(&self, name: &str, key: &SecretKey) -> WrappedKey {
        self.wrap(key, &secret_aad(name))
    }

    /// Unwraps the named vault secret.
    pub fn unwrap_secret(&self, name: &str, wrapped: &WrappedKey) -> Result<SecretKey, OpenError> {
        self.unwrap(wrapped, &secret_aad(name))
    }

    fn wrap(&self, key: &SecretKey, aad: &[u8]) -> WrappedKey {
        let nonce = random_nonce();
        let ciphertext = on_wiped_stack(|| {
            self.0
                .cipher()
                .encrypt(
                    Nonce::from_slice(&nonce),
                    Payload {
                        msg: key.expose(),
                        aad,
                    },
                )
                // AES-GCM encryption fails only for inputs over 64 GiB; a key is 32 bytes.
                .expect("AES-GCM encryption of a 32-byte key")
        });
        WrappedKey { nonce, ciphertext }
    }

    /// Unwraps in place in locked memory: the key is never in clear anywhere else.
    fn unwrap(&self, wrapped: &WrappedKey, aad: &[u8]) -> Result<SecretKey, OpenError> {
        let (ciphertext, tag) = wrapped
            .ciphertext
            .split_at_checked(KEY_BYTES)
            .ok_or(OpenError)?;
        if tag.len() != TAG_BYTES {
            return Err(OpenError);
        }
        let mut key = LockedBytes::zeroed();
        key.expose_mut().copy_from_slice(ciphertext);
        on_wiped_stack(|| {
            self.0.cipher().decrypt_in_place_detached(
                Nonce::from_slice(&wrapped.nonce),
                aad,
                key.expose_mut(),
                Tag::from_slice(tag),
            )
        })
        .map_err(|_| OpenError)?;
        Ok(SecretKey(key))
    }
}

/// A card record sealed under a data key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedCard {
    /// The data key version that sealed it.
    pub dek_version: u32,
    /// Random nonce.
    pub nonce: [u8; NONCE_BYTES],
    /// AES-GCM ciphertext and tag.
    pub ciphertext: Vec<u8>,
}

/// A data key ready to seal and open card records.
pub struct DataKey {
    version: u32,
    /// Each seal and open builds its cipher from it (an AES-256 key expansion, well under a
    /// microsecond), so no key schedule outlives the operation outside locked memory.
    key: SecretKey,
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataKey")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl DataKey {
    /// Data key `version`.
    pub fn new(version: u32, key: SecretKey) -> DataKey {
        DataKey { version, key }
    }

    /// The key's version.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Seals `secret` for `token`. The caller must have counted this encryption against the
    /// key's budget first.
    pub fn seal(&self, token: &Token, secret: &CardSecret) -> SealedCard {
        let nonce = random_nonce();
        let ciphertext = on_wiped_stack(|| {
            self.key
                .cipher()
                .encrypt(
                    Nonce::from_slice(&nonce),
                    Payload {
                        msg: &encode_card(secret),
                        aad: &card_aad(token, self.version),
                    },
                )
                // Fails only for inputs over 64 GiB; a card record is under 256 bytes.
                .expect("AES-GCM encryption of a card record")
        });
        SealedCard {
            dek_version: self.version,
            nonce,
            ciphertext,
        }
    }

    /// Opens a card sealed for `token` under this key.
    pub fn open(&self, token: &Token, sealed: &SealedCard) -> Result<CardSecret, OpenError> {
        if sealed.dek_version != self.version {
            return Err(OpenError);
        }
        on_wiped_stack(|| {
            let plaintext = Zeroizing::new(
                self.key
                    .cipher()
                    .decrypt(
                        Nonce::from_slice(&sealed.nonce),
                        Payload {
                            msg: &sealed.ciphertext,
                            aad: &card_aad(token, sealed.dek_version),
                        },
                    )
                    .map_err(|_| OpenError)?,
            );
            decode_card(&plaintext)
        })
    }
}

/// The HMAC key behind fingerprints and request hashes.
#[derive(Debug)]
pub struct FingerprintKey(SecretKey);

impl FingerprintKey {
    /// Wraps the key.
    pub fn new(key: SecretKey) -> FingerprintKey {
        FingerprintKey(key)
    }

    /// HMAC-SHA256 over the normalised PAN.
    pub fn fingerprint(&self, pan: &Pan) -> Fingerprint {
        on_wiped_stack(|| {
            let mut mac = self.mac();
            mac.update(pan.expose_digits().as_bytes());
            Fingerprint(mac.finalize().into_bytes().into())
        })
    }

    /// A keyed hash of a request's fields, for idempotency comparisons that must not store
    /// card data: HMAC-SHA256 over a label and each part, length-prefixed.
    pub fn request_hash(&self, parts: &[&[u8]]) -> [u8; 32] {
        on_wiped_stack(|| {
            let mut mac = self.mac();
            mac.update(REQUEST_HASH_LABEL);
            for part in parts {
                mac.update(&(part.len() as u64).to_be_bytes());
                mac.update(part);
            }
            mac.finalize().into_bytes().into()
        })
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC accepts keys of any length; a 32-byte key never fails.
        <Hmac<Sha256> as hmac::Mac>::new_from_slice(self.0.expose()).expect("HMAC key")
    }
}

/// Runs `operation`, which works with a key or card data, in a stack frame of its own, then
/// wipes the stack where that frame was. Key expansion and the moves of a cipher or an HMAC
/// state leave copies of a key on the stack that no destructor sees, and a dump reads stacks
/// too.
fn on_wiped_stack<R>(operation: impl FnOnce() -> R) -> R {
    let result = in_own_frame(operation);
    zeroize::zeroize_stack::<STACK_WIPE_BYTES>();
    result
}

/// `operation()` in a frame of its own below the caller's, for [`on_wiped_stack`] to wipe.
#[inline(never)]
fn in_own_frame<R>(operation: impl FnOnce() -> R) -> R {
    operation()
}

fn random_nonce() -> [u8; NONCE_BYTES] {
    let mut nonce = [0u8; NONCE_BYTES];
    OsRng.fill_bytes(&mut nonce);
    nonce
}

fn card_aad(token: &Token, dek_version: u32) -> Vec<u8> {
    let token = token.as_str().as_bytes();
    let mut aad = Vec::with_capacity(CARD_AAD_LABEL.len() + token.len() + 6);
    aad.extend_from_slice(CARD_AAD_LABEL);
    aad.push(0);
    aad.extend_from_slice(token);
    aad.push(0);
    aad.extend_from_slice(&dek_version.to_be_bytes());
    aad
}

fn dek_aad(version: u32) -> Vec<u8> {
    [DEK_AAD_LABEL, &[0], &version.to_be_bytes()].concat()
}

fn secret_aad(name: &str) -> Vec<u8> {
    [SECRET_AAD_LABEL, &[0], name.as_bytes()].concat()
}

/// Plaintext layout v1: `0x01 || pan_len (u8) || pan || name_len (u16 BE) || name`.
fn encode_card(secret: &CardSecret) -> Zeroizing<Vec<u8>> {
    let pan = secret.pan.expose_digits().as_bytes();
    let name = secret.holder_name.expose().as_bytes();
    let pan_len = u8::try_from(pan.len()).expect("a validated PAN has at most 19 digits");
    let name_len = u16::try_from(name.len()).expect("a validated name has at most 400 bytes");
    let mut out = Zeroizing::new(Vec::with_capacity(4 + pan.len() + name.len()));
    out.push(CARD_PLAINTEXT_V1);
    out.push(pan_len);
    out.extend_from_slice(pan);
    out.extend_from_slice(&name_len.to_be_bytes());
    out.extend_from_slice(name);
    out
}

fn decode_card(bytes: &[u8]) -> Result<CardSecret, OpenError> {
    let (&version, rest) = bytes.split_first().ok_or(OpenError)?;
    if version != CARD_PLAINTEXT_V1 {
        return Err(OpenError);
    }
    let (&pan_len, rest) = rest.split_first().ok_or(OpenError)?;
    let (pan, rest) = rest
        .split_at_checked(usize::from(pan_len))
        .ok_or(OpenError)?;
    let (name_len, name) = rest.split_at_checked(2).ok_or(OpenError)?;
    let name_len = usize::from(u16::from_be_bytes([name_len[0], name_len[1]]));
    if name.len() != name_len {
        return Err(OpenError);
    }
    let pan = std::str::from_utf8(pan).map_err(|_| OpenError)?;
    let name = std::str::from_utf8(name).map_err(|_| OpenError)?;
    Ok(CardSecret {
        pan: Pan::parse(pan).map_err(|_| OpenError)?,
        holder_name: HolderName::parse(name).map_err(|_| OpenError)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn secret() -> CardSecret {
        CardSecret {
            pan: Pan::parse("4242424242424242").unwrap(),
            holder_name: HolderName::parse("Ada Lovelace").unwrap(),
        }
    }

    /// A sealed card opens to the same PAN and name under the same key, token and version.
    #[test]
    fn seal_round_trip() {
        let key = DataKey::new(1, SecretKey::generate());
        let token = Token::generate();
        let sealed = key.seal(&token, &secret());
        let opened = key.open(&token, &sealed).unwrap();
        assert_eq!(opened.pan.expose_digits(), "4242424242424242");
        assert_eq!(opened.holder_name.expose(), "Ada Lovelace");
        let digits = b"4242424242424242";
        assert!(!sealed.ciphertext.windows(digits.len()).any(|w| w == digits));
    }

    /// A ciphertext copied to another token's row, relabelled with another key version, opened
    /// with another key, or altered by one bit does not open.
    #[test]
    fn sealed_card_is_bound_to_its_context() {
        let secret_key = SecretKey::generate();
        let key = DataKey::new(1, SecretKey::copy_from(secret_key.expose()));
        let token = Token::generate();
        let sealed = key.seal(&token, &secret());

        assert_eq!(key.open(&Token::generate(), &sealed).err(), Some(OpenError));

        let relabelled = SealedCard {
            dek_version: 2,
            ..sealed.clone()
        };
        let same_bytes_as_v2 = DataKey::new(2, secret_key);
        assert_eq!(
            same_bytes_as_v2.open(&token, &relabelled).err(),
            Some(OpenError)
        );

        let other_key = DataKey::new(1, SecretKey::generate());
        assert_eq!(other_key.open(&token, &sealed).err(), Some(OpenError));

        for i in 0..sealed.ciphertext.len() {
            let mut tampered = sealed.clone();
            tampered.ciphertext[i] ^= 0x01;
            assert_eq!(
                key.open(&token, &tampered).err(),
                Some(OpenError),
                "byte {i}"
            );
        }
        let mut tampered = sealed.clone();
        tampered.nonce[0] ^= 0x01;
        assert_eq!(key.open(&token, &tampered).err(), Some(OpenError));
    }

    /// Nonces never repeat over 100k encryptions under one key.
    #[test]
    fn nonces_never_repeat() {
        let key = DataKey::new(1, SecretKey::generate());
        let token = Token::generate();
        let secret = secret();
        let mut nonces = HashSet::with_capacity(100_000);
        for _ in 0..100_000 {
            assert!(nonces.insert(key.seal(&token, &secret).nonce));
        }
    }

    /// Wrapped keys unwrap only under the same root key, version and name.
    #[test]
    fn wrapping_is_bound_to_root_and_label() {
        let root = RootKey::new(SecretKey::generate());
        let dek = SecretKey::generate();
        let wrapped = root.wrap_data_key(3, &dek);
        assert!(root.unwrap_data_key(3, &wrapped).unwrap() == dek);
        assert!(root.unwrap_data_key(4, &wrapped).is_err());
        assert!(root.unwrap_secret("fingerprint", &wrapped).is_err());
        let other_root = RootKey::new(SecretKey::generate());
        assert!(other_root.unwrap_data_key(3, &wrapped).is_err());
        assert_ne!(root.id(), other_root.id());
        assert_eq!(root.id().len(), 16);
    }

    /// Fingerprints are keyed: equal for the same PAN under one key, different under another,
    /// and independent of separators in the input.
    #[test]
    fn fingerprints_are_keyed() {
        let key = FingerprintKey::new(SecretKey::generate());
        let a = key.fingerprint(&Pan::parse("4242 4242 4242 4242").unwrap());
        let b = key.fingerprint(&Pan::parse("4242-4242-4242-4242").unwrap());
        let c = key.fingerprint(&Pan::parse("5555555555554444").unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        let other = FingerprintKey::new(SecretKey::generate());
        assert_ne!(
            a,
            other.fingerprint(&Pan::parse("4242424242424242").unwrap())
        );
    }

    /// Request hashes separate their parts: moving a byte between parts changes the hash.
    #[test]
    fn request_hash_is_unambiguous() {
        let key = FingerprintKey::new(SecretKey::generate());
        assert_ne!(
            key.request_hash(&[b"ab", b"c"]),
            key.request_hash(&[b"a", b"bc"])
        );
        assert_eq!(
            key.request_hash(&[b"ab", b"c"]),
            key.request_hash(&[b"ab", b"c"])
        );
    }

    /// Malformed plaintexts are refused rather than misread.
    #[test]
    fn decode_refuses_malformed_plaintext() {
        let good = encode_card(&secret());
        assert!(decode_card(&good).is_ok());
        assert!(decode_card(&[]).is_err());
        assert!(decode_card(&good[..good.len() - 1]).is_err());
        let mut wrong_version = good.to_vec();
        wrong_version[0] = 2;
        assert!(decode_card(&wrong_version).is_err());
        let mut extra = good.to_vec();
        extra.push(b'x');
        assert!(decode_card(&extra).is_err());
    }
}
