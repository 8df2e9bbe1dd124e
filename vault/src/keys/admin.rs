//! Key administration: the seal state and unsealing with Shamir shares, data-key rotation
//! with a background rewrap, retirement, root-key rotation, and the audit log's reading side (its pages and the chain check).
//!
//! The root key exists in memory only while the vault is unsealed, inside the [`KeyRing`];
//! sealing drops the ring, which zeroizes every key. Shares are held in zeroizing buffers only
//! until enough have arrived, and never logged, stored or audited.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::audit;
use crate::audit::verification::RangeCheck;
use crate::config::{KeySettings, RootKeySource};
use crate::crypto::{KEY_BYTES, RootKey, SealedCard, SecretKey};
use crate::domain::audit::AuditRow;
use crate::domain::{RequestId, Token};
use crate::error::Error;
use crate::kernel::{Page, RequestCheck, RequestContext, Vault};
use crate::keys::ring::{
    KeyLoadError, KeyRequest, KeyRing, RootKeySplit, load_or_create_dev_root_key,
};
use crate::storage::audit::{self as audit_store, AuditFilter};
use crate::storage::keys::{self as store, DataKeyInfo, Retirement};
use crate::writer::{Apply, AuditContext, Mutation};

/// Length of a share: the index byte and one byte per root-key byte.
pub const SHARE_BYTES: usize = KEY_BYTES + 1;
/// Most shares a root key may be split into.
pub const SHARES_TOTAL_MAX: i32 = 16;

/// The seal state as `GetKeyStatus` reports it.
#[derive(Debug, Clone)]
pub struct SealStatus {
    /// True while sealed.
    pub sealed: bool,
    /// The configured source.
    pub source: RootKeySource,
    /// Distinct shares received while sealed.
    pub shares_received: i32,
    /// Shares needed.
    pub threshold: i32,
    /// Shares issued.
    pub shares_total: i32,
    /// The current root key's version (0 before initialisation).
    pub root_key_version: i32,
    /// Last sealed.
    pub sealed_at: Option<OffsetDateTime>,
    /// Last unsealed; `None` while sealed.
    pub unsealed_at: Option<OffsetDateTime>,
}

/// The rewrap as `GetKeyStatus` reports it.
#[derive(Debug, Clone)]
pub struct RewrapStatus {
    /// `idle`, `running` or `paused`.
    pub state: &'static str,
    /// The version rows move to; 0 when idle.
    pub target_version: u32,
    /// Rows to move when it started.
    pub rows_total: i64,
    /// Rows moved.
    pub rows_done: i64,
    /// Rows still under older versions.
    pub rows_remaining: i64,
    /// Measured over the last minute.
    pub rows_per_s: f64,
    /// The configured limit.
    pub rows_per_s_max: u64,
    /// When it started.
    pub started_at: Option<OffsetDateTime>,
    /// When it should finish at the measured rate.
    pub estimated_finish: Option<OffsetDateTime>,
}

/// Everything `GetKeyStatus` returns.
#[derive(Debug, Clone)]
pub struct KeyStatus {
    /// Data-key versions, newest first.
    pub data_keys: Vec<DataKeyInfo>,
    /// The rewrap.
    pub rewrap: RewrapStatus,
    /// The seal.
    pub seal: SealStatus,
}

/// What `RotateRootKey` returns. Its shares are secret.
pub struct RootRotation {
    /// The seal state after rotation.
    pub seal: SealStatus,
    /// The new shares, once; empty for the dev source and on a replay.
    pub shares: Vec<Zeroizing<Vec<u8>>>,
    /// True on a replay: the shares are not kept and cannot be returned again.
    pub shares_withheld: bool,
    /// Data keys re-wrapped.
    pub data_keys_rewrapped: i32,
}

#[derive(Default)]
struct Unseal {
    /// Shares by index, while sealed.
    shares: BTreeMap<u8, Zeroizing<Vec<u8>>>,
    sealed_at: Option<OffsetDateTime>,
    unsealed_at: Option<OffsetDateTime>,
}

/// Rows moved recently, for the measured rate.
#[derive(Default)]
struct Meter {
    samples: VecDeque<(Instant, u64)>,
    running: bool,
    /// The last card id the rewrap looked at in its current pass.
    cursor: i64,
}

impl Meter {
    const WINDOW: Duration = Duration::from_secs(60);

    fn record(&mut self, rows: u64) {
        let now = Instant::now();
        self.samples.push_back((now, rows));
        while self
            .samples
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > Self::WINDOW)
        {
            self.samples.pop_front();
        }
    }

    fn rate(&self) -> f64 {
        let Some((first, _)) = self.samples.front() else {
            return 0.0;
        };
        let elapsed = first.elapsed().as_secs_f64().max(1.0);
        self.samples
            .iter()
            .map(|(_, rows)| *rows as f64)
            .sum::<f64>()
            / elapsed
    }
}

/// Key administration over the vault.
pub struct KeyAdmin {
    vault: Arc<Vault>,
    settings: KeySettings,
    unseal: Mutex<Unseal>,
    meter: Mutex<Meter>,
    /// Serializes root-key rotations in this process.
    rotation: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for KeyAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyAdmin").finish_non_exhaustive()
    }
}

/// A keyless hash of a key-administration request (these requests carry no card data and
/// must be checkable while the vault is sealed).
fn request_hash(rpc: &str, parts: &[&[u8]]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(b"tandem/vault/key-request/v1");
    for part in std::iter::once(rpc.as_bytes()).chain(parts.iter().copied()) {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    hasher.finalize().into()
}

impl KeyAdmin {
    /// Administers `vault`; `unsealed` tells whether it started with its keys.
    pub fn new(vault: Arc<Vault>, settings: KeySettings) -> KeyAdmin {
        let now = OffsetDateTime::now_utc();
        let sealed = vault.is_sealed();
        KeyAdmin {
            vault,
            settings,
            unseal: Mutex::new(Unseal {
                shares: BTreeMap::new(),
                sealed_at: sealed.then_some(now),
                unsealed_at: (!sealed).then_some(now),
            }),
            meter: Mutex::new(Meter::default()),
            rotation: tokio::sync::Mutex::new(()),
        }
    }

    /// The vault.
    pub fn vault(&self) -> &Arc<Vault> {
        &self.vault
    }

    /// The configured encryption budget of one data-key version.
    pub fn encryption_budget(&self) -> u64 {
        self.settings.dek_encryptions_max
    }

    fn lock_unseal(&self) -> std::sync::MutexGuard<'_, Unseal> {
        self.unseal
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_meter(&self) -> std::sync::MutexGuard<'_, Meter> {
        self.meter
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The seal state.
    pub async fn seal_status(&self) -> Result<SealStatus, Error> {
        let record = store::current_root_key(self.vault.pool()).await?;
        let unseal = self.lock_unseal();
        Ok(SealStatus {
            sealed: self.vault.is_sealed(),
            source: self.settings.root_key_source,
            shares_received: unseal.shares.len() as i32,
            threshold: record.as_ref().map_or(0, |r| r.threshold),
            shares_total: record.as_ref().map_or(0, |r| r.shares_total),
            root_key_version: record.as_ref().map_or(0, |r| r.version),
            sealed_at: unseal.sealed_at,
            unsealed_at: unseal.unsealed_at,
        })
    }

    /// Data keys, rewrap and seal.
    pub async fn status(&self) -> Result<KeyStatus, Error> {
        let pool = self.vault.pool();
        let data_keys = store::data_key_infos(pool).await?;
        let active = data_keys
            .iter()
            .find(|k| k.state == "active")
            .map_or(0, |k| k.version);
        // From the same read as the keys' row counts: a second query could see a rewrap batch
        // the first did not, and the status would say none remain beside an old key that still
        // holds rows. Only when the list is cut (the newest DATA_KEYS_LISTED_MAX versions) can
        // rows sit under a key it does not show; they are counted apart then.
        let remaining: i64 = if data_keys.len() < store::DATA_KEYS_LISTED_MAX {
            data_keys
                .iter()
                .filter(|k| k.version < active)
                .map(|k| k.rows)
                .sum()
        } else {
            store::rows_remaining(pool, active).await?
        };
        let progress = store::rewrap_progress(pool).await?;
        let (rate, running) = {
            let meter = self.lock_meter();
            (meter.rate(), meter.running)
        };
        let estimated_finish = (remaining > 0 && rate > 0.0)
            .then(|| OffsetDateTime::now_utc() + Duration::from_secs_f64(remaining as f64 / rate));
        let state = match (remaining, running && !self.vault.is_sealed()) {
            (0, _) => "idle",
            (_, true) => "running",
            (_, false) => "paused",
        };
        let rewrap = RewrapStatus {
            state,
            target_version: if remaining > 0 { active } else { 0 },
            rows_total: progress.as_ref().map_or(remaining, |p| p.rows_total),
            rows_done: progress.as_ref().map_or(0, |p| p.rows_done),
            rows_remaining: remaining,
            rows_per_s: rate,
            rows_per_s_max: self.settings.rewrap_rows_per_s_max,
            started_at: progress.as_ref().map(|p| p.started_at),
            estimated_finish,
        };
        Ok(KeyStatus {
            data_keys,
            rewrap,
            seal: self.seal_status().await?,
        })
    }

    /// Looks up a key request: the recorded result, `None` if new, or `RequestIdReused`.
    async fn replay(
        &self,
        request_id: &RequestId,
        rpc: &str,
        hash: &[u8; 32],
    ) -> Result<Option<i32>, Error> {
        let stored = store::key_request(self.vault.pool(), request_id.as_str()).await?;
        Ok(RequestCheck::of(stored, rpc, hash)
            .replay()?
            .map(|stored| stored.result))
    }

    async fn record(
        &self,
        request_id: &RequestId,
        rpc: &str,
        hash: &[u8; 32],
        result: i32,
    ) -> Result<(), Error> {
        store::insert_key_request(self.vault.pool(), request_id.as_str(), rpc, hash, result)
            .await?;
        Ok(())
    }

    async fn data_key(&self, version: u32) -> Result<DataKeyInfo, Error> {
        store::data_key_infos(self.vault.pool())
            .await?
            .into_iter()
            .find(|k| k.version == version)
            .ok_or(Error::KeyVersionNotFound)
    }

    /// Makes a new data-key version active and starts the rewrap toward it.
    pub async fn rotate_data_key(
        &self,
        ctx: &RequestContext,
        request_id: RequestId,
    ) -> Result<DataKeyInfo, Error> {
        let rpc = ctx.rpc.method();
        let hash = request_hash(rpc, &[]);
        if let Some(version) = self.replay(&request_id, rpc, &hash).await? {
            self.vault.audit(ctx, None, "OK", "replay").await?;
            return self.data_key(version as u32).await;
        }
        let keys = self.vault.keys()?;
        let version = keys.rotate(self.vault.pool()).await?;
        self.record(&request_id, rpc, &hash, version as i32).await?;
        let remaining = store::rows_remaining(self.vault.pool(), version).await?;
        store::start_rewrap(self.vault.pool(), version, remaining).await?;
        self.vault
            .audit_on(
                ctx,
                None,
                &format!("dek/{version}"),
                "OK",
                "rotated: active",
            )
            .await?;
        self.data_key(version).await
    }

    /// Retires a decrypt-only version no row uses.
    pub async fn retire(
        &self,
        ctx: &RequestContext,
        request_id: RequestId,
        version: u32,
    ) -> Result<DataKeyInfo, Error> {
        let rpc = ctx.rpc.method();
        let hash = request_hash(rpc, &[&version.to_be_bytes()]);
        if self.replay(&request_id, rpc, &hash).await?.is_some() {
            self.vault.audit(ctx, None, "OK", "replay").await?;
            return self.data_key(version).await;
        }
        let keys = self.vault.keys()?;
        let reason = format!("dek/{version}");
        let error = match keys.retire(self.vault.pool(), version).await? {
            Retirement::Retired => None,
            Retirement::NotFound => Some(Error::KeyVersionNotFound),
            Retirement::Active => Some(Error::KeyVersionActive),
            Retirement::InUse(_) => Some(Error::KeyVersionInUse),
        };
        if let Some(error) = error {
            return Err(self.vault.refuse(ctx, None, error).await);
        }
        self.record(&request_id, rpc, &hash, version as i32).await?;
        self.vault
            .audit_on(ctx, None, &reason, "OK", "retired")
            .await?;
        self.data_key(version).await
    }

    /// Submits one share (or, for the dev source, an empty share that reloads the key file).
    pub async fn unseal(&self, ctx: &RequestContext, share: &[u8]) -> Result<SealStatus, Error> {
        if !self.vault.is_sealed() {
            self.vault
                .audit(ctx, None, "OK", "already unsealed")
                .await?;
            return self.seal_status().await;
        }
        let root = match self.settings.root_key_source {
            RootKeySource::Dev => {
                if !share.is_empty() {
                    let error = Error::ShareMalformed("the dev root key source takes no share");
                    return Err(self.vault.refuse(ctx, None, error).await);
                }
                Some(
                    load_or_create_dev_root_key(&self.settings.dev_root_key_path)
                        .map_err(|error| self.key_load_error(error))?,
                )
            }
            RootKeySource::Shares => self.add_share(ctx, share).await?,
        };
        let Some(root) = root else {
            let status = self.seal_status().await?;
            self.vault
                .audit(
                    ctx,
                    None,
                    "OK",
                    &format!("share {} of {}", status.shares_received, status.threshold),
                )
                .await?;
            return Ok(status);
        };
        let split = self.current_split().await?;
        let generation = self.vault.seal_generation();
        match KeyRing::load(self.vault.pool(), root, split, self.settings.clone()).await {
            Ok(ring) => {
                if !self.vault.install_keys_if(ring, generation) {
                    // A Seal arrived while the keys loaded: it wins.
                    self.lock_unseal().shares.clear();
                    return self.seal_status().await;
                }
                let mut unseal = self.lock_unseal();
                unseal.shares.clear();
                unseal.unsealed_at = Some(OffsetDateTime::now_utc());
            }
            Err(KeyLoadError::WrongRootKey { .. }) | Err(KeyLoadError::Unwrap(_)) => {
                self.lock_unseal().shares.clear();
                return Err(self.vault.refuse(ctx, None, Error::UnsealFailed).await);
            }
            Err(error) => return Err(self.key_load_error(error)),
        }
        tracing::warn!("vault unsealed");
        self.vault.audit(ctx, None, "OK", "unsealed").await?;
        self.seal_status().await
    }

    fn key_load_error(&self, error: KeyLoadError) -> Error {
        match error {
            KeyLoadError::Storage(error) => error,
            other => {
                tracing::error!(error = %other, "root key could not be loaded");
                Error::UnsealFailed
            }
        }
    }

    async fn current_split(&self) -> Result<RootKeySplit, Error> {
        Ok(store::current_root_key(self.vault.pool())
            .await?
            .map_or(RootKeySplit::DEV, |record| RootKeySplit {
                threshold: record.threshold,
                shares_total: record.shares_total,
            }))
    }

    /// Adds a share; returns the rebuilt root key once `threshold` distinct shares arrived.
    async fn add_share(
        &self,
        ctx: &RequestContext,
        share: &[u8],
    ) -> Result<Option<RootKey>, Error> {
        if share.len() != SHARE_BYTES || share[0] == 0 {
            let error = Error::ShareMalformed("must be the 33-byte share as issued, index 1-255");
            return Err(self.vault.refuse(ctx, None, error).await);
        }
        let Some(record) = store::current_root_key(self.vault.pool()).await? else {
            return Err(self.vault.refuse(ctx, None, Error::NotInitialised).await);
        };
        let threshold = u8::try_from(record.threshold).map_err(|_| Error::Corrupt("threshold"))?;
        let conflict = {
            let unseal = self.lock_unseal();
            unseal
                .shares
                .get(&share[0])
                .is_some_and(|held| held.as_slice() != share)
        };
        if conflict {
            // Keep the share already held; a custodian who mistyped can seal and start again.
            let error =
                Error::ShareMalformed("a different share with this index was already received");
            return Err(self.vault.refuse(ctx, None, error).await);
        }
        let collected: Vec<blahaj::Share> = {
            let mut unseal = self.lock_unseal();
            unseal
                .shares
                .entry(share[0])
                .or_insert_with(|| Zeroizing::new(share.to_vec()));
            if unseal.shares.len() < usize::from(threshold) {
                return Ok(None);
            }
            unseal
                .shares
                .values()
                .filter_map(|bytes| blahaj::Share::try_from(bytes.as_slice()).ok())
                .collect()
        };
        let secret = Zeroizing::new(
            blahaj::Sharks(threshold)
                .recover(&collected)
                .map_err(|_| Error::UnsealFailed)?,
        );
        drop(collected);
        let bytes: &[u8; KEY_BYTES] = match secret.as_slice().try_into() {
            Ok(bytes) => bytes,
            Err(_) => {
                self.lock_unseal().shares.clear();
                return Err(self.vault.refuse(ctx, None, Error::UnsealFailed).await);
            }
        };
        let root = RootKey::new(SecretKey::copy_from(bytes));
        if root.id() != record.root_key_id {
            self.lock_unseal().shares.clear();
            return Err(self.vault.refuse(ctx, None, Error::UnsealFailed).await);
        }
        Ok(Some(root))
    }

    /// Seals: drops every key from memory and discards unseal progress. A replay of the same
    /// request id (a delayed retry) changes nothing, so it cannot re-seal a vault that
    /// custodians unsealed since.
    pub async fn seal(
        &self,
        ctx: &RequestContext,
        request_id: RequestId,
        reason: &str,
    ) -> Result<SealStatus, Error> {
        let rpc = ctx.rpc.method();
        let hash = request_hash(rpc, &[reason.as_bytes()]);
        if self.replay(&request_id, rpc, &hash).await?.is_some() {
            self.vault.audit(ctx, None, "OK", "replay").await?;
            return self.seal_status().await;
        }
        self.record(&request_id, rpc, &hash, 0).await?;
        let was_sealed = self.vault.is_sealed();
        self.vault.seal();
        {
            let mut unseal = self.lock_unseal();
            unseal.shares.clear();
            if !was_sealed {
                unseal.sealed_at = Some(OffsetDateTime::now_utc());
                unseal.unsealed_at = None;
            }
        }
        if !was_sealed {
            tracing::warn!("vault sealed");
        }
        self.vault.audit(ctx, None, "OK", reason).await?;
        self.seal_status().await
    }

    /// Generates a new root key, re-wraps every data key under it, and (for the shares
    /// source) splits it into new shares returned once.
    pub async fn rotate_root(
        &self,
        ctx: &RequestContext,
        request_id: RequestId,
        shares_total: i32,
        threshold: i32,
    ) -> Result<RootRotation, Error> {
        let rpc = ctx.rpc.method();
        let hash = request_hash(
            rpc,
            &[&shares_total.to_be_bytes(), &threshold.to_be_bytes()],
        );
        let current = self.current_split().await?;
        let split = match self.settings.root_key_source {
            RootKeySource::Dev if shares_total == 0 && threshold == 0 => RootKeySplit::DEV,
            RootKeySource::Dev => {
                let error = Error::invalid(
                    "shares_total",
                    "must be 0 (and threshold 0) for the dev root key source",
                );
                return Err(self.vault.refuse(ctx, None, error).await);
            }
            RootKeySource::Shares => {
                let total = if shares_total == 0 {
                    current.shares_total
                } else {
                    shares_total
                };
                let k = if threshold == 0 {
                    current.threshold
                } else {
                    threshold
                };
                if !(2..=SHARES_TOTAL_MAX).contains(&total) || !(2..=total).contains(&k) {
                    let error = Error::invalid(
                        "threshold",
                        "shares_total must be 2-16 and threshold 2 to shares_total",
                    );
                    return Err(self.vault.refuse(ctx, None, error).await);
                }
                RootKeySplit {
                    threshold: k,
                    shares_total: total,
                }
            }
        };
        // One root rotation at a time in this process: they share the pending key file.
        let _rotation = self.rotation.lock().await;
        if self.replay(&request_id, rpc, &hash).await?.is_some() {
            self.vault.audit(ctx, None, "OK", "replay").await?;
            return Ok(RootRotation {
                seal: self.seal_status().await?,
                shares: Vec::new(),
                shares_withheld: true,
                data_keys_rewrapped: 0,
            });
        }
        let generation = self.vault.seal_generation();
        let keys = self.vault.keys()?;
        let secret = SecretKey::generate();
        let new_root = RootKey::new(SecretKey::copy_from(secret.expose()));
        // The shares exist before the database switches to the new root, so that whatever
        // fails after the commit, the custodians can still be given them.
        let shares: Vec<Zeroizing<Vec<u8>>> = match self.settings.root_key_source {
            RootKeySource::Dev => Vec::new(),
            RootKeySource::Shares => blahaj::Sharks(split.threshold as u8)
                .dealer(secret.expose())
                .take(split.shares_total as usize)
                .map(|share| Zeroizing::new(Vec::from(&share)))
                .collect(),
        };
        let pending_file = match self.settings.root_key_source {
            RootKeySource::Dev => Some(write_pending_dev_key(
                &self.settings.dev_root_key_path,
                &secret,
            )?),
            RootKeySource::Shares => None,
        };
        drop(secret);
        let request = KeyRequest {
            request_id: request_id.as_str(),
            rpc,
            hash: &hash,
        };
        let rewrapped = match keys
            .rewrap_under(self.vault.pool(), &new_root, split, &request)
            .await
        {
            Ok(rewrapped) => rewrapped,
            Err(error) => {
                // The commit may have happened even though its answer was lost: then the new
                // root is in force and its key file must not be thrown away.
                let current = store::current_root_key(self.vault.pool())
                    .await
                    .ok()
                    .flatten();
                if current.is_some_and(|r| r.root_key_id == new_root.id()) {
                    tracing::warn!("root rotation committed despite an error; completing it");
                    0
                } else {
                    if let Some(pending) = &pending_file {
                        let _ = std::fs::remove_file(pending);
                    }
                    return Err(error);
                }
            }
        };
        if let Some(pending) = &pending_file {
            std::fs::rename(pending, &self.settings.dev_root_key_path).map_err(|error| {
                tracing::error!(%error, "the new dev root key file could not be moved in place");
                Error::Corrupt("dev root key file")
            })?;
        }
        match KeyRing::load(self.vault.pool(), new_root, split, self.settings.clone()).await {
            Ok(ring) => {
                // A Seal that arrived meanwhile wins: the vault stays sealed.
                self.vault.install_keys_if(ring, generation);
            }
            Err(error) => {
                tracing::error!(error = %error, "keys did not load under the new root; sealing");
                self.vault.seal();
            }
        }
        let version = store::current_root_key(self.vault.pool())
            .await?
            .map_or(0, |r| r.version);
        tracing::warn!(root_key_version = version, "root key rotated");
        self.vault
            .audit(
                ctx,
                None,
                "OK",
                &format!("root key v{version}, {rewrapped} data keys re-wrapped"),
            )
            .await?;
        Ok(RootRotation {
            seal: self.seal_status().await?,
            shares,
            shares_withheld: false,
            data_keys_rewrapped: rewrapped as i32,
        })
    }

    /// One rewrap batch: re-encrypts up to `keys.rewrap_batch_max` rows under the active
    /// version (as the database has it), walking rows in id order from a cursor. A row that
    /// fails to open is reported and skipped, never retried in a tight loop; it keeps its
    /// version from being retired. Returns how many rows moved (0: nothing to do or sealed).
    pub async fn rewrap_batch(&self) -> Result<usize, Error> {
        let Ok(keys) = self.vault.keys() else {
            self.lock_meter().running = false;
            return Ok(0);
        };
        let pool = self.vault.pool();
        let Some(active) = store::active_version(pool).await? else {
            return Ok(0);
        };
        if keys.active_version() != active {
            keys.refresh_keys(pool).await?;
        }
        let after = self.lock_meter().cursor;
        let limit = i64::from(self.settings.rewrap_batch_max);
        let rows = store::rows_to_rewrap(pool, active, after, limit).await?;
        let Some(last_id) = rows.last().map(|row| row.id) else {
            let done = {
                let mut meter = self.lock_meter();
                meter.cursor = 0;
                // A whole pass from the start found nothing under older versions.
                if after == 0 {
                    meter.running = false;
                }
                after == 0
            };
            if done {
                store::finish_rewrap(pool).await?;
            }
            return Ok(0);
        };
        if store::rewrap_progress(pool).await?.is_none() {
            let remaining = store::rows_remaining(pool, active).await?;
            store::start_rewrap(pool, active, remaining).await?;
        }
        let mut moves = Vec::with_capacity(rows.len());
        for row in rows {
            let secret = match keys.open_fresh(pool, &row.token, &row.sealed).await {
                Ok(secret) => secret,
                Err(error) => {
                    tracing::error!(token = %row.token, %error, "card cannot be rewrapped; skipped");
                    continue;
                }
            };
            let sealed = keys.seal(pool, &row.token, &secret).await?;
            moves.push((row.token, row.sealed.nonce, sealed));
        }
        self.lock_meter().cursor = last_id;
        let context = AuditContext {
            caller: "system/rewrap".into(),
            role: "system".into(),
            rpc: "tandem.vault.internal/Rewrap",
            reason: format!("{} rows to dek/{active}", moves.len()),
            correlation_id: uuid::Uuid::new_v4().to_string(),
            request_id: String::new(),
            resource: format!("dek/{active}"),
        };
        let moved = self
            .vault
            .writer()
            .submit(RewrapMutation { moves }, context)
            .await?;
        let mut meter = self.lock_meter();
        meter.running = true;
        meter.record(moved as u64);
        Ok(moved)
    }

    /// The rewrap job: runs batches at most `keys.rewrap_rows_per_s_max` rows per second
    /// while there is work, and looks again every `keys.rewrap_interval_ms` when idle.
    pub async fn rewrap_loop(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let idle = Duration::from_millis(self.settings.rewrap_interval_ms);
        let rate = self.settings.rewrap_rows_per_s_max as f64;
        loop {
            let started = Instant::now();
            let pause = match self.rewrap_batch().await {
                Ok(0) => idle,
                Ok(rows) => {
                    let budget = Duration::from_secs_f64(rows as f64 / rate);
                    budget.saturating_sub(started.elapsed())
                }
                Err(error) => {
                    tracing::warn!(%error, "rewrap batch failed");
                    idle
                }
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = async { let _ = stop.wait_for(|stopped| *stopped).await; } => return,
            }
        }
    }

    /// Walks the audit chain between `start` and `end` (0: the ends) and audits the check. A
    /// broken chain is logged as an error; the check's own audit row is written after it,
    /// outside the range.
    pub async fn verify_audit(
        &self,
        ctx: &RequestContext,
        start: i64,
        end: i64,
    ) -> Result<RangeCheck, Error> {
        let check = match audit::verification::verify(self.vault.pool(), start, end).await {
            Ok(check) => check,
            Err(error) => return Err(self.vault.refuse(ctx, None, error.into()).await),
        };
        let outcome = if check.broken.is_some() {
            "audit chain broken"
        } else {
            "audit chain intact"
        };
        if let Some((seq, kind)) = check.broken {
            tracing::error!(seq, ?kind, "audit chain broken");
        }
        self.vault.audit(ctx, None, "OK", outcome).await?;
        Ok(check)
    }

    /// A page of the audit log's rows matching `filter`, after `cursor`; the read is audited.
    pub async fn audit_events(
        &self,
        ctx: &RequestContext,
        filter: &AuditFilter,
        cursor: Option<i64>,
        size: i64,
    ) -> Result<Page<AuditRow>, Error> {
        let rows =
            match audit_store::audit_events(self.vault.pool(), filter, cursor, size + 1).await {
                Ok(rows) => rows,
                Err(error) => return Err(self.vault.refuse(ctx, None, error.into()).await),
            };
        let page = Page::of(rows, size);
        let reason = format!("{} events", page.items.len());
        self.vault.audit(ctx, None, "OK", &reason).await?;
        Ok(page)
    }
}

/// Writes the new dev root key beside the current file (mode 0600), to be moved in place once
/// the database has committed the rotation.
fn write_pending_dev_key(path: &Path, key: &SecretKey) -> Result<std::path::PathBuf, Error> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let pending = path.with_extension("key.new");
    let _ = std::fs::remove_file(&pending);
    let text = Zeroizing::new(format!(
        "# TANDEM DEV ROOT KEY: for local development only. Never use this in production.\n{}\n",
        hex::encode(key.expose())
    ));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&pending)
        .map_err(|error| {
            tracing::error!(%error, "cannot write the new dev root key file");
            Error::Corrupt("dev root key file")
        })?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|error| {
            tracing::error!(%error, "cannot write the new dev root key file");
            Error::Corrupt("dev root key file")
        })?;
    Ok(pending)
}

/// Re-seals card rows under the active version, each only if it has not changed since it was
/// read.
struct RewrapMutation {
    moves: Vec<(Token, [u8; 12], SealedCard)>,
}

impl Mutation for RewrapMutation {
    type Output = usize;

    fn apply<'a>(&'a self, conn: &'a mut sqlx::PgConnection) -> Apply<'a, usize> {
        Box::pin(async move {
            // Rows move only under a key that is not retired, and it stays so until commit.
            if let Some((_, _, sealed)) = self.moves.first()
                && !store::lock_data_key_for_write(conn, sealed.dek_version).await?
            {
                return Err(Error::KeyRetired);
            }
            let mut moved = 0;
            for (token, old_nonce, sealed) in &self.moves {
                if store::rewrap_row(conn, token, old_nonce, sealed).await? {
                    moved += 1;
                }
            }
            store::add_rewrap_progress(conn, moved as i64).await?;
            Ok(moved)
        })
    }

    fn audit_token(&self, _output: &Result<usize, Error>) -> Option<String> {
        None
    }
}

/// Creates the vault's keys under a new root key split into `shares_total` Shamir shares
/// (`threshold` of them unseal), for `tandemctl keys init`. Returns the shares, to be handed to
/// custodians once; the vault database must not be initialised yet.
pub async fn init_shares(
    pool: &sqlx::PgPool,
    settings: KeySettings,
    shares_total: u8,
    threshold: u8,
) -> Result<Vec<Zeroizing<Vec<u8>>>, Error> {
    if !(2..=SHARES_TOTAL_MAX as u8).contains(&shares_total)
        || !(2..=shares_total).contains(&threshold)
    {
        return Err(Error::invalid(
            "threshold",
            "shares must be 2-16 and threshold 2 to shares",
        ));
    }
    if store::current_root_key(pool).await?.is_some() {
        return Err(Error::AlreadyInitialised);
    }
    let secret = SecretKey::generate();
    let root = RootKey::new(SecretKey::copy_from(secret.expose()));
    let split = RootKeySplit {
        threshold: i32::from(threshold),
        shares_total: i32::from(shares_total),
    };
    KeyRing::load(pool, root, split, settings)
        .await
        .map_err(|error| match error {
            KeyLoadError::Storage(error) => error,
            KeyLoadError::WrongRootKey { .. } => Error::AlreadyInitialised,
            _ => Error::Corrupt("initialisation failed"),
        })?;
    let shares = blahaj::Sharks(threshold)
        .dealer(secret.expose())
        .take(usize::from(shares_total))
        .map(|share| Zeroizing::new(Vec::from(&share)))
        .collect();
    Ok(shares)
}
