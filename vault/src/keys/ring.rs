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
use crate::crypto::{DataKey, FingerprintKey, RootKey, SealedCard, SecretKey};
use crate::domain::{CardSecret, Fingerprint, Pan, Token};
use crate::error::Error;
use crate::storage::keys as keys_storage;

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
            let key = SecretKey::from_hex(hex_line.trim())
                .ok_or_else(|| error("key line is not 64 hex characters".into()))?;
            Ok(RootKey::new(key))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| error(e.to_string()))?;
            }
            let key = SecretKey::generate();
            let hex_key = zeroize::Zeroizing::new(hex::encode(key.expose()));
            let text = zeroize::Zeroizing::new(format!("{DEV_KEY_BANNER}\n{}\n", *hex_key));
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

/// The vault's keys in memory. Dropping the ring (sealing) zeroizes every key in it.
pub struct KeyRing {
    root: RootKey,
    /// The root key's version (`root_keys.version`).
    root_version: i32,
    data_keys: RwLock<BTreeMap<u32, Arc<DataKey>>>,
    fingerprint: FingerprintKey,
    reservation: Mutex<Reservation>,
    /// Single-flights block reservations and rotations, so concurrent sealers do not each
    /// reserve a block or rotate.
    refill: tokio::sync::Mutex<()>,
    settings: KeySettings,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing").finish_non_exhaustive()
    }
}

/// The idempotency record of a key-administration request, written with its effect.
#[derive(Debug, Clone, Copy)]
pub struct KeyRequest<'a> {
    /// The request id.
    pub request_id: &'a str,
    /// The method.
    pub rpc: &'a str,
    /// Hash of its parameters.
    pub hash: &'a [u8; 32],
}

/// How a root key is split, for its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RootKeySplit {
    /// Shares needed (k); 0 for the dev source.
    pub threshold: i32,
    /// Shares issued (n); 0 for the dev source.
    pub shares_total: i32,
}

impl RootKeySplit {
    /// The dev key file: no shares.
    pub const DEV: RootKeySplit = RootKeySplit {
        threshold: 0,
        shares_total: 0,
    };

    fn source(self) -> &'static str {
        if self.shares_total == 0 {
            "dev"
        } else {
            "shares"
        }
    }
}

impl KeyRing {
    /// Loads (or at first start creates) the data keys and the fingerprint key under `root`.
    /// At first start `split` records how the root key is held.
    pub async fn load(
        pool: &PgPool,
        root: RootKey,
        split: RootKeySplit,
        settings: KeySettings,
    ) -> Result<KeyRing, KeyLoadError> {
        let root_id = root.id();
        // First start: racing instances both insert; ON CONFLICT keeps the first.
        keys_storage::insert_secret(
            pool,
            FINGERPRINT_SECRET,
            &root.wrap_secret(FINGERPRINT_SECRET, &SecretKey::generate()),
            &root_id,
        )
        .await?;
        if keys_storage::data_keys(pool).await?.is_empty() {
            keys_storage::insert_first_data_key(
                pool,
                1,
                &root.wrap_data_key(1, &SecretKey::generate()),
                &root_id,
            )
            .await?;
        }
        keys_storage::insert_first_root_key(
            pool,
            &keys_storage::RootKeyRecord {
                version: 1,
                root_key_id: root_id.clone(),
                source: split.source().to_owned(),
                threshold: split.threshold,
                shares_total: split.shares_total,
            },
        )
        .await?;
        let record = keys_storage::current_root_key(pool)
            .await?
            .ok_or_else(|| KeyLoadError::Unwrap("root key record".into()))?;
        check_root(&root_id, &record.root_key_id)?;

        let (wrapped, stored_id) = keys_storage::secret(pool, FINGERPRINT_SECRET)
            .await?
            .ok_or_else(|| KeyLoadError::Unwrap(FINGERPRINT_SECRET.into()))?;
        check_root(&root_id, &stored_id)?;
        let fingerprint = FingerprintKey::new(
            root.unwrap_secret(FINGERPRINT_SECRET, &wrapped)
                .map_err(|_| KeyLoadError::Unwrap(FINGERPRINT_SECRET.into()))?,
        );
        let ring = KeyRing {
            root,
            root_version: record.version,
            data_keys: RwLock::new(BTreeMap::new()),
            fingerprint,
            reservation: Mutex::new(Reservation {
                version: 0,
                remaining: 0,
            }),
            refill: tokio::sync::Mutex::new(()),
            settings,
        };
        ring.refresh(pool).await?;
        Ok(ring)
    }

    /// Re-reads the data keys: unwraps versions this process has not seen (another process
    /// rotated), forgets retired ones, and follows the active version.
    async fn refresh(&self, pool: &PgPool) -> Result<(), KeyLoadError> {
        let root_id = self.root.id();
        let mut data_keys = BTreeMap::new();
        let mut active = None;
        for stored in keys_storage::data_keys(pool).await? {
            let Some(wrapped) = &stored.wrapped else {
                continue; // retired: its key material is destroyed
            };
            check_root(&root_id, &stored.root_key_id)?;
            if stored.state == "active" {
                active = Some(stored.version);
            }
            if let Some(known) = self.data_key(stored.version) {
                data_keys.insert(stored.version, known);
                continue;
            }
            let key = self
                .root
                .unwrap_data_key(stored.version, wrapped)
                .map_err(|_| KeyLoadError::Unwrap(format!("data key v{}", stored.version)))?;
            data_keys.insert(stored.version, Arc::new(DataKey::new(stored.version, key)));
        }
        let active = active.ok_or_else(|| KeyLoadError::Unwrap("active data key".into()))?;
        *self
            .data_keys
            .write()
            .expect("key ring lock is never poisoned: no panics while held") = data_keys;
        let mut reservation = self.lock_reservation();
        if reservation.version != active {
            *reservation = Reservation {
                version: active,
                remaining: 0,
            };
        }
        Ok(())
    }

    /// Re-reads the data keys from the database (another process rotated or retired one).
    pub(crate) async fn refresh_keys(&self, pool: &PgPool) -> Result<(), Error> {
        let _single_flight = self.refill.lock().await;
        self.refresh(pool).await.map_err(refresh_error)
    }

    /// The version that seals new writes.
    pub fn active_version(&self) -> u32 {
        self.lock_reservation().version
    }

    /// The root key's version.
    pub fn root_version(&self) -> i32 {
        self.root_version
    }

    /// The root key's id.
    pub fn root_id(&self) -> String {
        self.root.id()
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
        // Either way the card's data is lost to this vault: a version no key ring has, or a
        // ciphertext that fails its tag under the token and version it is bound to.
        let key = self
            .data_key(sealed.dek_version)
            .ok_or(Error::CardDataUnreadable)?;
        key.open(token, sealed)
            .map_err(|_| Error::CardDataUnreadable)
    }

    /// Opens a sealed card, first learning data keys another vault process created if the
    /// card's version is not known here yet.
    pub async fn open_fresh(
        &self,
        pool: &PgPool,
        token: &Token,
        sealed: &SealedCard,
    ) -> Result<CardSecret, Error> {
        if self.data_key(sealed.dek_version).is_none() {
            self.refresh(pool).await.map_err(refresh_error)?;
        }
        self.open(token, sealed)
    }

    /// Makes a new data-key version active for every new write; the previous one becomes
    /// decrypt-only. Returns the new version.
    pub async fn rotate(&self, pool: &PgPool) -> Result<u32, Error> {
        let _single_flight = self.refill.lock().await;
        self.rotate_locked(pool).await
    }

    async fn rotate_locked(&self, pool: &PgPool) -> Result<u32, Error> {
        // A bounded retry: another process may take the next version first.
        for _ in 0..4 {
            let newest = keys_storage::data_keys(pool)
                .await?
                .iter()
                .map(|k| k.version)
                .max()
                .unwrap_or(0);
            let version = newest + 1;
            let key = SecretKey::generate();
            let wrapped = self.root.wrap_data_key(version, &key);
            let rotated = keys_storage::rotate_data_key(
                pool,
                version,
                &wrapped,
                &self.root.id(),
                self.root_version,
            )
            .await?;
            if rotated == keys_storage::Rotation::RootChanged {
                // This ring's root was replaced: the vault holds a newer ring by now.
                return Err(Error::ConcurrentUpdate);
            }
            if rotated == keys_storage::Rotation::Rotated {
                self.data_keys
                    .write()
                    .expect("key ring lock is never poisoned: no panics while held")
                    .insert(version, Arc::new(DataKey::new(version, key)));
                *self.lock_reservation() = Reservation {
                    version,
                    remaining: 0,
                };
                tracing::info!(version, "data key rotated");
                return Ok(version);
            }
            self.refresh(pool).await.map_err(refresh_error)?;
        }
        Err(Error::ConcurrentUpdate)
    }

    /// Retires `version` if no row uses it, destroying its wrapped key, and forgets it here.
    pub async fn retire(
        &self,
        pool: &PgPool,
        version: u32,
    ) -> Result<keys_storage::Retirement, Error> {
        let outcome = keys_storage::retire_data_key(pool, version).await?;
        if outcome == keys_storage::Retirement::Retired {
            self.data_keys
                .write()
                .expect("key ring lock is never poisoned: no panics while held")
                .remove(&version);
        }
        Ok(outcome)
    }

    /// Re-wraps every data key and vault secret under `new_root` in one transaction and
    /// records it as the next root key version with `split`. Returns how many data keys were
    /// re-wrapped. The ring itself keeps the old root: the caller replaces the ring.
    pub async fn rewrap_under(
        &self,
        pool: &PgPool,
        new_root: &RootKey,
        split: RootKeySplit,
        request: &KeyRequest<'_>,
    ) -> Result<usize, Error> {
        let mut tx = pool.begin().await?;
        // Serializes with rotations, which lock the active row first.
        keys_storage::lock_active_data_key(&mut tx).await?;
        let current = keys_storage::current_root_key(&mut *tx)
            .await?
            .ok_or(Error::Corrupt("no root key record"))?;
        if current.root_key_id != self.root.id() {
            return Err(Error::ConcurrentUpdate);
        }
        let mut data_keys = Vec::new();
        for stored in keys_storage::data_keys(&mut *tx).await? {
            let Some(wrapped) = &stored.wrapped else {
                continue;
            };
            let key = self
                .root
                .unwrap_data_key(stored.version, wrapped)
                .map_err(|_| Error::Corrupt("data key does not unwrap"))?;
            data_keys.push((stored.version, new_root.wrap_data_key(stored.version, &key)));
        }
        let mut secrets = Vec::new();
        for name in keys_storage::secret_names(&mut *tx).await? {
            let (wrapped, _) = keys_storage::secret(&mut *tx, &name)
                .await?
                .ok_or(Error::Corrupt("vault secret vanished"))?;
            let key = self
                .root
                .unwrap_secret(&name, &wrapped)
                .map_err(|_| Error::Corrupt("vault secret does not unwrap"))?;
            let rewrapped = new_root.wrap_secret(&name, &key);
            secrets.push((name, rewrapped));
        }
        let record = keys_storage::RootKeyRecord {
            version: current.version + 1,
            root_key_id: new_root.id(),
            source: split.source().to_owned(),
            threshold: split.threshold,
            shares_total: split.shares_total,
        };
        keys_storage::rotate_root_key(&mut tx, &record, &data_keys, &secrets).await?;
        // The request is recorded in the same transaction: a retry finds it and never rotates
        // a second time.
        if !keys_storage::insert_key_request(
            &mut *tx,
            request.request_id,
            request.rpc,
            request.hash,
            record.version,
        )
        .await?
        {
            return Err(Error::ConcurrentUpdate);
        }
        tx.commit().await?;
        Ok(data_keys.len())
    }

    fn data_key(&self, version: u32) -> Option<Arc<DataKey>> {
        self.data_keys
            .read()
            .expect("key ring lock is never poisoned: no panics while held")
            .get(&version)
            .cloned()
    }

    /// Takes one encryption from the reserved block, reserving a new block when it is empty.
    /// A version that reaches its budget is rotated here, automatically.
    async fn take_encryption(&self, pool: &PgPool) -> Result<u32, Error> {
        // A bounded loop: the first pass either succeeds or refills; later passes succeed
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
            let Some(reserved) = keys_storage::reserve_encryptions(pool, version, block).await?
            else {
                // Another process rotated: follow the new active version.
                self.refresh(pool).await.map_err(refresh_error)?;
                continue;
            };
            if reserved as u64 > self.settings.dek_encryptions_max {
                tracing::warn!(
                    version,
                    reserved,
                    "data key reached its encryption budget; rotating automatically"
                );
                self.rotate_locked(pool).await?;
                continue;
            }
            let mut reservation = self.lock_reservation();
            // A refresh may have moved to a newer version meanwhile; this block belongs to
            // `version` only.
            if reservation.version == version {
                reservation.remaining += block;
            }
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

fn refresh_error(error: KeyLoadError) -> Error {
    match error {
        KeyLoadError::Storage(error) => error,
        other => {
            tracing::error!(error = %other, "data keys failed to reload");
            Error::Corrupt("data keys failed to reload")
        }
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
