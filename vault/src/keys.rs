//! The key ring: the root key, the data keys it unwraps, the fingerprint key, and the
//! encryption budget of the active data key.
//!
//! At first start the vault makes data key version 1 and the fingerprint key, wraps both under
//! the root key and stores them; later starts unwrap them. Encryptions are counted against the
//! active key's budget by reserving blocks in the database, so the count survives restarts and
//! is shared by every vault instance (a crash loses the unused rest of a block from the budget,
//! never reuses it).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use sqlx::PgPool;

use crate::config::KeySettings;
use crate::crypto::{DataKey, FingerprintKey, KEY_BYTES, RootKey, SealedCard, SecretKey};
use crate::domain::{CardSecret, Fingerprint, Pan, Token};
use crate::error::Error;
use crate::storage;

/// Name of the fingerprint key in `vault_secrets`.
const FINGERPRINT_SECRET: &str = "fingerprint";
/// First line of the dev root key file.
const DEV_KEY_BANNER: &str =
    "# TANDEM DEV ROOT KEY: for local development only. Never use this in production.";

/// Errors while loading keys at start.
#[derive(Debug, thiserror::Error)]
pub enum KeyLoadError {
    /// The dev key file could not be read or written.
    #[error("dev root key file {path}: {detail}")]
    DevKeyFile {
        /// The file.
        path: String,
        /// What went wrong.
        detail: String,
    },
    /// Stored keys were wrapped by a different root key.
    #[error("the root key (id {given}) is not the one that wrapped the vault's keys (id {stored})")]
    WrongRootKey {
        /// The id of the root key given at start.
        given: String,
        /// The id recorded with the stored keys.
        stored: String,
    },
    /// A stored key failed to unwrap under the right root key: tampering or corruption.
    #[error("stored key {0} failed to unwrap")]
    Unwrap(String),
    /// The database failed.
    #[error(transparent)]
    Storage(#[from] Error),
}

/// Reads the dev root key from `path`, creating it (mode 0600) if it does not exist.
pub fn load_or_create_dev_root_key(path: &Path) -> Result<RootKey, KeyLoadError> {
    let error = |detail: String| KeyLoadError::DevKeyFile {
        path: path.display().to_string(),
        detail,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let text = zeroize::Zeroizing::new(text);
            let hex_line = text
                .lines()
                .find(|line| !line.starts_with('#') && !line.trim().is_empty())
                .ok_or_else(|| error("no key line".into()))?;
            let mut bytes = zeroize::Zeroizing::new([0u8; KEY_BYTES]);
            hex::decode_to_slice(hex_line.trim(), bytes.as_mut())
                .map_err(|_| error("key line is not 64 hex characters".into()))?;
            Ok(RootKey::new(SecretKey::from_bytes(*bytes)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| error(e.to_string()))?;
            }
            let key = SecretKey::generate();
            let text = zeroize::Zeroizing::new(format!(
                "{DEV_KEY_BANNER}\n{}\n",
                hex::encode(key.expose())
            ));
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| error(e.to_string()))?;
            file.write_all(text.as_bytes())
                .map_err(|e| error(e.to_string()))?;
            tracing::warn!(path = %path.display(), "created a dev root key: for development only");
            Ok(RootKey::new(key))
        }
        Err(e) => Err(error(e.to_string())),
    }
}

/// The block of encryptions reserved for the active key.
#[derive(Debug)]
struct Reservation {
    version: u32,
    /// Encryptions left in the reserved block.
    remaining: u64,
}

/// The vault's keys in memory.
pub struct KeyRing {
    data_keys: RwLock<BTreeMap<u32, Arc<DataKey>>>,
    fingerprint: FingerprintKey,
    reservation: Mutex<Reservation>,
    /// Single-flights block reservations so concurrent sealers do not each reserve one.
    refill: tokio::sync::Mutex<()>,
    settings: KeySettings,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing").finish_non_exhaustive()
    }
}

impl KeyRing {
    /// Loads (or at first start creates) the data keys and the fingerprint key under `root`.
    pub async fn load(
        pool: &PgPool,
        root: &RootKey,
        settings: KeySettings,
    ) -> Result<KeyRing, KeyLoadError> {
        let root_id = root.id();
        // First start: racing instances both insert; ON CONFLICT keeps the first.
        storage::insert_secret(
            pool,
            FINGERPRINT_SECRET,
            &root.wrap_secret(FINGERPRINT_SECRET, &SecretKey::generate()),
            &root_id,
        )
        .await?;
        if storage::data_keys(pool).await?.is_empty() {
            storage::insert_first_data_key(
                pool,
                1,
                &root.wrap_data_key(1, &SecretKey::generate()),
                &root_id,
            )
            .await?;
        }

        let (wrapped, stored_id) = storage::secret(pool, FINGERPRINT_SECRET)
            .await?
            .ok_or_else(|| KeyLoadError::Unwrap(FINGERPRINT_SECRET.into()))?;
        check_root(&root_id, &stored_id)?;
        let fingerprint = FingerprintKey::new(
            root.unwrap_secret(FINGERPRINT_SECRET, &wrapped)
                .map_err(|_| KeyLoadError::Unwrap(FINGERPRINT_SECRET.into()))?,
        );

        let mut data_keys = BTreeMap::new();
        let mut active = None;
        for stored in storage::data_keys(pool).await? {
            let Some(wrapped) = &stored.wrapped else {
                continue; // retired: its key material is destroyed
            };
            check_root(&root_id, &stored.root_key_id)?;
            let key = root
                .unwrap_data_key(stored.version, wrapped)
                .map_err(|_| KeyLoadError::Unwrap(format!("data key v{}", stored.version)))?;
            if stored.state == "active" {
                active = Some(stored.version);
            }
            data_keys.insert(stored.version, Arc::new(DataKey::new(stored.version, &key)));
        }
        let active = active.ok_or_else(|| KeyLoadError::Unwrap("active data key".into()))?;
        Ok(KeyRing {
            data_keys: RwLock::new(data_keys),
            fingerprint,
            reservation: Mutex::new(Reservation {
                version: active,
                remaining: 0,
            }),
            refill: tokio::sync::Mutex::new(()),
            settings,
        })
    }

    /// The keyed fingerprint of a PAN.
    pub fn fingerprint(&self, pan: &Pan) -> Fingerprint {
        self.fingerprint.fingerprint(pan)
    }

    /// A keyed hash of a request's fields.
    pub fn request_hash(&self, parts: &[&[u8]]) -> [u8; 32] {
        self.fingerprint.request_hash(parts)
    }

    /// Seals `secret` for `token` under the active data key, counting the encryption.
    pub async fn seal(
        &self,
        pool: &PgPool,
        token: &Token,
        secret: &CardSecret,
    ) -> Result<SealedCard, Error> {
        let version = self.take_encryption(pool).await?;
        let key = self.data_key(version).ok_or(Error::KeyBudgetExhausted)?;
        Ok(key.seal(token, secret))
    }

    /// Opens a sealed card.
    pub fn open(&self, token: &Token, sealed: &SealedCard) -> Result<CardSecret, Error> {
        let key = self
            .data_key(sealed.dek_version)
            .ok_or(Error::Corrupt("card sealed under an unknown data key"))?;
        key.open(token, sealed)
            .map_err(|_| Error::Corrupt("card ciphertext does not open"))
    }

    fn data_key(&self, version: u32) -> Option<Arc<DataKey>> {
        self.data_keys
            .read()
            .expect("key ring lock is never poisoned: no panics while held")
            .get(&version)
            .cloned()
    }

    /// Takes one encryption from the reserved block, reserving a new block when it is empty.
    async fn take_encryption(&self, pool: &PgPool) -> Result<u32, Error> {
        // A bounded loop: the first pass either succeeds or refills; the second succeeds
        // unless other sealers drained the fresh block first.
        for _ in 0..8 {
            if let Some(version) = self.try_take() {
                return Ok(version);
            }
            let _single_flight = self.refill.lock().await;
            if let Some(version) = self.try_take() {
                return Ok(version);
            }
            let version = self.lock_reservation().version;
            let block = self.settings.dek_reservation_block;
            let reserved = storage::reserve_encryptions(pool, version, block)
                .await?
                .ok_or(Error::KeyBudgetExhausted)?;
            if reserved as u64 > self.settings.dek_encryptions_max {
                tracing::error!(
                    version,
                    reserved,
                    "data key reached its encryption budget; rotate the data key"
                );
                return Err(Error::KeyBudgetExhausted);
            }
            self.lock_reservation().remaining += block;
        }
        Err(Error::KeyBudgetExhausted)
    }

    fn try_take(&self) -> Option<u32> {
        let mut reservation = self.lock_reservation();
        (reservation.remaining > 0).then(|| {
            reservation.remaining -= 1;
            reservation.version
        })
    }

    fn lock_reservation(&self) -> std::sync::MutexGuard<'_, Reservation> {
        self.reservation
            .lock()
            .expect("reservation lock is never poisoned: no panics while held")
    }
}

fn check_root(given: &str, stored: &str) -> Result<(), KeyLoadError> {
    if given == stored {
        Ok(())
    } else {
        Err(KeyLoadError::WrongRootKey {
            given: given.to_owned(),
            stored: stored.to_owned(),
        })
    }
}
