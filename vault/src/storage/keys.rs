//! The SQL of keys: every query on the data keys (reading, reserving encryptions, rotation,
//! retirement, the write lock cards take), root keys, vault secrets, the rewrap, and the
//! idempotency records of `KeyAdminService`.

use sqlx::{PgConnection, PgExecutor, PgPool, Row as _};
use time::OffsetDateTime;

use crate::crypto::{NONCE_BYTES, SealedCard, WrappedKey};
use crate::domain::Token;
use crate::error::Error;

/// A data-key version as `GetKeyStatus` reports it.
#[derive(Debug, Clone)]
pub struct DataKeyInfo {
    /// Version.
    pub version: u32,
    /// `active`, `decrypt_only` or `retired`.
    pub state: String,
    /// Card rows sealed under it.
    pub rows: i64,
    /// Encryptions reserved against its budget.
    pub encryptions: i64,
    /// The root key version wrapping it.
    pub root_key_version: i32,
    /// Created.
    pub created_at: OffsetDateTime,
    /// Stopped taking writes.
    pub deactivated_at: Option<OffsetDateTime>,
    /// Retired.
    pub retired_at: Option<OffsetDateTime>,
}

/// Most data key versions [`data_key_infos`] lists, newest first.
pub const DATA_KEYS_LISTED_MAX: usize = 1000;

/// The data-key versions (the newest [`DATA_KEYS_LISTED_MAX`]), newest first, each with its
/// row count, in one read.
pub async fn data_key_infos(executor: impl PgExecutor<'_>) -> Result<Vec<DataKeyInfo>, Error> {
    let rows = sqlx::query(
        "SELECT k.version, k.state, k.encryptions_reserved, k.root_key_version, k.created_at, \
         k.deactivated_at, k.retired_at, coalesce(c.rows, 0) AS rows FROM data_keys k \
         LEFT JOIN (SELECT dek_version, count(*) AS rows FROM cards \
         WHERE dek_version IS NOT NULL GROUP BY dek_version) c ON c.dek_version = k.version \
         ORDER BY k.version DESC LIMIT $1",
    )
    .bind(DATA_KEYS_LISTED_MAX as i64)
    .fetch_all(executor)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(DataKeyInfo {
                version: u32::try_from(row.try_get::<i32, _>("version")?)
                    .map_err(|_| Error::Corrupt("data_keys.version"))?,
                state: row.try_get("state")?,
                rows: row.try_get("rows")?,
                encryptions: row.try_get("encryptions_reserved")?,
                root_key_version: row.try_get("root_key_version")?,
                created_at: row.try_get("created_at")?,
                deactivated_at: row.try_get("deactivated_at")?,
                retired_at: row.try_get("retired_at")?,
            })
        })
        .collect()
}

/// What a data-key rotation found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotation {
    /// The new version is active.
    Rotated,
    /// Another process took that version number first.
    Raced,
    /// The root key changed since the caller loaded its keys: its wrapping would be stale.
    RootChanged,
}

/// Makes `version` (wrapped as `wrapped` under root key `root_key_id`, version
/// `root_key_version`) the active data key and the previous active one decrypt-only, in one
/// transaction, unless another process rotated first or the root key is no longer
/// `root_key_id`.
pub async fn rotate_data_key(
    pool: &PgPool,
    version: u32,
    wrapped: &WrappedKey,
    root_key_id: &str,
    root_key_version: i32,
) -> Result<Rotation, Error> {
    let mut tx = pool.begin().await?;
    // The active row's lock serializes rotations, and root-key rotations, which take it too.
    let active: Option<i32> =
        sqlx::query_scalar("SELECT version FROM data_keys WHERE state = 'active' FOR UPDATE")
            .fetch_optional(&mut *tx)
            .await?;
    if current_root_key(&mut *tx)
        .await?
        .is_some_and(|root| root.root_key_id != root_key_id)
    {
        return Ok(Rotation::RootChanged);
    }
    let newest: Option<i32> = sqlx::query_scalar("SELECT max(version) FROM data_keys")
        .fetch_one(&mut *tx)
        .await?;
    if newest.map_or(1, |v| v + 1) != version as i32 {
        return Ok(Rotation::Raced);
    }
    if let Some(active) = active {
        sqlx::query(
            "UPDATE data_keys SET state = 'decrypt_only', deactivated_at = now() WHERE version = $1",
        )
        .bind(active)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query(
        "INSERT INTO data_keys (version, state, wrap_nonce, wrapped_key, root_key_id, \
         root_key_version) VALUES ($1, 'active', $2, $3, $4, $5)",
    )
    .bind(version as i32)
    .bind(wrapped.nonce.as_slice())
    .bind(wrapped.ciphertext.as_slice())
    .bind(root_key_id)
    .bind(root_key_version)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Rotation::Rotated)
}

/// What retiring a version found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retirement {
    /// Retired now (or already retired).
    Retired,
    /// No such version.
    NotFound,
    /// The version is active.
    Active,
    /// Rows still use it.
    InUse(i64),
}

/// Retires a decrypt-only version no row uses, destroying its wrapped key.
pub async fn retire_data_key(pool: &PgPool, version: u32) -> Result<Retirement, Error> {
    let mut tx = pool.begin().await?;
    // FOR UPDATE (not FOR NO KEY UPDATE): it conflicts with the FOR KEY SHARE that every card
    // write takes on its key's row, so in-flight writes finish before the count below, and
    // writes that waited re-read the row and see it retired. Weakening it would let a card be
    // written under a retired key.
    let state: Option<String> =
        sqlx::query_scalar("SELECT state FROM data_keys WHERE version = $1 FOR UPDATE")
            .bind(version as i32)
            .fetch_optional(&mut *tx)
            .await?;
    match state.as_deref() {
        None => return Ok(Retirement::NotFound),
        Some("active") => return Ok(Retirement::Active),
        Some("retired") => return Ok(Retirement::Retired),
        Some(_) => {}
    }
    // Writes under a decrypt-only version have stopped, so the count only falls; the rewrap
    // may still be moving rows, in which case the caller waits.
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM cards WHERE dek_version = $1")
        .bind(version as i32)
        .fetch_one(&mut *tx)
        .await?;
    if rows > 0 {
        return Ok(Retirement::InUse(rows));
    }
    sqlx::query(
        "UPDATE data_keys SET state = 'retired', wrap_nonce = NULL, wrapped_key = NULL, \
         retired_at = now() WHERE version = $1",
    )
    .bind(version as i32)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Retirement::Retired)
}

/// The current root key record.
#[derive(Debug, Clone)]
pub struct RootKeyRecord {
    /// Version, from 1.
    pub version: i32,
    /// The key's id.
    pub root_key_id: String,
    /// `dev` or `shares`.
    pub source: String,
    /// Shares needed to unseal.
    pub threshold: i32,
    /// Shares issued.
    pub shares_total: i32,
}

/// The current (newest) root key record, if the vault has one.
pub async fn current_root_key(
    executor: impl PgExecutor<'_>,
) -> Result<Option<RootKeyRecord>, Error> {
    let row = sqlx::query(
        "SELECT version, root_key_id, source, threshold, shares_total FROM root_keys \
         ORDER BY version DESC LIMIT 1",
    )
    .fetch_optional(executor)
    .await?;
    row.map(|row| {
        Ok(RootKeyRecord {
            version: row.try_get("version")?,
            root_key_id: row.try_get("root_key_id")?,
            source: row.try_get("source")?,
            threshold: row.try_get("threshold")?,
            shares_total: row.try_get("shares_total")?,
        })
    })
    .transpose()
}

/// Records root key version 1 unless a root key is recorded.
pub async fn insert_first_root_key(
    executor: impl PgExecutor<'_>,
    record: &RootKeyRecord,
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO root_keys (version, root_key_id, source, threshold, shares_total) \
         SELECT 1, $1, $2, $3, $4 WHERE NOT EXISTS (SELECT 1 FROM root_keys)",
    )
    .bind(&record.root_key_id)
    .bind(&record.source)
    .bind(record.threshold)
    .bind(record.shares_total)
    .execute(executor)
    .await?;
    Ok(())
}

/// Re-wraps every data key and vault secret under a new root key and records it as root key
/// `record.version`, in one transaction. `rewrapped` lists (data-key version or secret name,
/// new wrapping).
pub async fn rotate_root_key(
    conn: &mut PgConnection,
    record: &RootKeyRecord,
    data_keys: &[(u32, WrappedKey)],
    secrets: &[(String, WrappedKey)],
) -> Result<(), Error> {
    for (version, wrapped) in data_keys {
        sqlx::query(
            "UPDATE data_keys SET wrap_nonce = $2, wrapped_key = $3, root_key_id = $4, \
             root_key_version = $5 WHERE version = $1 AND state <> 'retired'",
        )
        .bind(*version as i32)
        .bind(wrapped.nonce.as_slice())
        .bind(wrapped.ciphertext.as_slice())
        .bind(&record.root_key_id)
        .bind(record.version)
        .execute(&mut *conn)
        .await?;
    }
    for (name, wrapped) in secrets {
        sqlx::query(
            "UPDATE vault_secrets SET wrap_nonce = $2, wrapped_key = $3, root_key_id = $4 \
             WHERE name = $1",
        )
        .bind(name)
        .bind(wrapped.nonce.as_slice())
        .bind(wrapped.ciphertext.as_slice())
        .bind(&record.root_key_id)
        .execute(&mut *conn)
        .await?;
    }
    sqlx::query(
        "INSERT INTO root_keys (version, root_key_id, source, threshold, shares_total) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(record.version)
    .bind(&record.root_key_id)
    .bind(&record.source)
    .bind(record.threshold)
    .bind(record.shares_total)
    .execute(conn)
    .await?;
    Ok(())
}

/// Every vault secret's name.
pub async fn secret_names(executor: impl PgExecutor<'_>) -> Result<Vec<String>, Error> {
    Ok(
        sqlx::query_scalar("SELECT name FROM vault_secrets ORDER BY name")
            .fetch_all(executor)
            .await?,
    )
}

/// A card row to re-encrypt.
#[derive(Debug)]
pub struct RewrapRow {
    /// Its position, for the rewrap's cursor.
    pub id: i64,
    /// Its token (part of the AAD).
    pub token: Token,
    /// Its current sealing.
    pub sealed: SealedCard,
}

/// The active data-key version, as the database has it.
pub async fn active_version(executor: impl PgExecutor<'_>) -> Result<Option<u32>, Error> {
    let version: Option<i32> =
        sqlx::query_scalar("SELECT version FROM data_keys WHERE state = 'active'")
            .fetch_optional(executor)
            .await?;
    version
        .map(|v| u32::try_from(v).map_err(|_| Error::Corrupt("data_keys.version")))
        .transpose()
}

/// Up to `limit` card rows sealed under versions older than `active`, with `id > after`, in
/// id order (the caller keeps `after` as its cursor, so a row that fails is not retried in a
/// loop).
pub async fn rows_to_rewrap(
    executor: impl PgExecutor<'_>,
    active: u32,
    after: i64,
    limit: i64,
) -> Result<Vec<RewrapRow>, Error> {
    let rows = sqlx::query(
        "SELECT id, token, dek_version, nonce, ciphertext FROM cards \
         WHERE dek_version < $1 AND id > $2 ORDER BY id LIMIT $3",
    )
    .bind(active as i32)
    .bind(after)
    .bind(limit)
    .fetch_all(executor)
    .await?;
    rows.iter()
        .map(|row| {
            let version: i32 = row.try_get("dek_version")?;
            let nonce: Vec<u8> = row.try_get("nonce")?;
            Ok(RewrapRow {
                id: row.try_get("id")?,
                token: Token::from_stored(row.try_get("token")?),
                sealed: SealedCard {
                    dek_version: u32::try_from(version)
                        .map_err(|_| Error::Corrupt("cards.dek_version"))?,
                    nonce: <[u8; NONCE_BYTES]>::try_from(nonce)
                        .map_err(|_| Error::Corrupt("cards.nonce"))?,
                    ciphertext: row.try_get("ciphertext")?,
                },
            })
        })
        .collect()
}

/// Replaces a card's sealing if it is still `old_nonce` (a concurrent update wins and keeps
/// its own, newer sealing). Returns whether the row was rewrapped.
pub async fn rewrap_row(
    conn: &mut PgConnection,
    token: &Token,
    old_nonce: &[u8; NONCE_BYTES],
    sealed: &SealedCard,
) -> Result<bool, Error> {
    let updated = sqlx::query(
        "UPDATE cards SET dek_version = $3, nonce = $4, ciphertext = $5 \
         WHERE token = $1 AND nonce = $2",
    )
    .bind(token.as_str())
    .bind(old_nonce.as_slice())
    .bind(sealed.dek_version as i32)
    .bind(sealed.nonce.as_slice())
    .bind(sealed.ciphertext.as_slice())
    .execute(conn)
    .await?
    .rows_affected();
    Ok(updated == 1)
}

/// Rows still under versions older than `active`.
pub async fn rows_remaining(executor: impl PgExecutor<'_>, active: u32) -> Result<i64, Error> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM cards WHERE dek_version < $1")
            .bind(active as i32)
            .fetch_one(executor)
            .await?,
    )
}

/// The rewrap's recorded progress.
#[derive(Debug, Clone)]
pub struct RewrapProgress {
    /// The version rows move to.
    pub target_version: u32,
    /// Rows to move when it started.
    pub rows_total: i64,
    /// Rows moved.
    pub rows_done: i64,
    /// When it started.
    pub started_at: OffsetDateTime,
}

/// Reads the rewrap's progress.
pub async fn rewrap_progress(
    executor: impl PgExecutor<'_>,
) -> Result<Option<RewrapProgress>, Error> {
    let row = sqlx::query(
        "SELECT target_version, rows_total, rows_done, started_at FROM rewrap_progress",
    )
    .fetch_optional(executor)
    .await?;
    row.map(|row| {
        Ok(RewrapProgress {
            target_version: u32::try_from(row.try_get::<i32, _>("target_version")?)
                .map_err(|_| Error::Corrupt("rewrap_progress.target_version"))?,
            rows_total: row.try_get("rows_total")?,
            rows_done: row.try_get("rows_done")?,
            started_at: row.try_get("started_at")?,
        })
    })
    .transpose()
}

/// Starts (or retargets) the rewrap toward `target_version` with `rows_total` rows to move;
/// progress toward the same target is kept.
pub async fn start_rewrap(
    executor: impl PgExecutor<'_>,
    target_version: u32,
    rows_total: i64,
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO rewrap_progress (target_version, rows_total, rows_done, started_at) \
         VALUES ($1, $2, 0, now()) ON CONFLICT (singleton) DO UPDATE SET \
         target_version = EXCLUDED.target_version, rows_total = EXCLUDED.rows_total, \
         rows_done = 0, started_at = now() \
         WHERE rewrap_progress.target_version <> EXCLUDED.target_version",
    )
    .bind(target_version as i32)
    .bind(rows_total)
    .execute(executor)
    .await?;
    Ok(())
}

/// Adds `rows` to the rewrap's progress.
pub async fn add_rewrap_progress(conn: &mut PgConnection, rows: i64) -> Result<(), Error> {
    sqlx::query("UPDATE rewrap_progress SET rows_done = rows_done + $1")
        .bind(rows)
        .execute(conn)
        .await?;
    Ok(())
}

/// Ends the rewrap: nothing is left to move.
pub async fn finish_rewrap(executor: impl PgExecutor<'_>) -> Result<(), Error> {
    sqlx::query("DELETE FROM rewrap_progress")
        .execute(executor)
        .await?;
    Ok(())
}

/// The idempotency record of a `KeyAdminService` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRequestRecord {
    /// The method that used the id.
    pub rpc: String,
    /// Keyed hash of the request.
    pub request_hash: [u8; 32],
    /// The recorded result (a data-key or root-key version).
    pub result: i32,
}

/// Reads the idempotency record of a `KeyAdminService` request.
pub async fn key_request(
    executor: impl PgExecutor<'_>,
    request_id: &str,
) -> Result<Option<KeyRequestRecord>, Error> {
    let row: Option<(String, Vec<u8>, i32)> =
        sqlx::query_as("SELECT rpc, request_hash, result FROM key_requests WHERE request_id = $1")
            .bind(request_id)
            .fetch_optional(executor)
            .await?;
    row.map(|(rpc, hash, result)| {
        Ok(KeyRequestRecord {
            rpc,
            request_hash: hash
                .try_into()
                .map_err(|_| Error::Corrupt("key_requests.request_hash"))?,
            result,
        })
    })
    .transpose()
}

/// Records a `KeyAdminService` request's result; false if the id was taken meanwhile.
pub async fn insert_key_request(
    executor: impl PgExecutor<'_>,
    request_id: &str,
    rpc: &str,
    request_hash: &[u8; 32],
    result: i32,
) -> Result<bool, Error> {
    let inserted = sqlx::query(
        "INSERT INTO key_requests (request_id, rpc, request_hash, result) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (request_id) DO NOTHING",
    )
    .bind(request_id)
    .bind(rpc)
    .bind(request_hash.as_slice())
    .bind(result)
    .execute(executor)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// Locks data key `version` against retirement until the transaction ends; false if it is
/// already retired (a card must never be written under a retired key: its material is gone).
/// `FOR KEY SHARE` is the lock the cards' foreign key takes anyway, so it costs nothing extra;
/// retirement's `FOR UPDATE` waits for it, and a write that waited for a retirement re-reads
/// the key's state and sees it retired.
pub async fn lock_data_key_for_write(conn: &mut PgConnection, version: u32) -> Result<bool, Error> {
    let state: Option<String> =
        sqlx::query_scalar("SELECT state FROM data_keys WHERE version = $1 FOR KEY SHARE")
            .bind(version as i32)
            .fetch_optional(conn)
            .await?;
    Ok(state.is_some_and(|state| state != "retired"))
}

/// A data key as stored.
#[derive(Debug, Clone)]
pub struct StoredDataKey {
    /// Version.
    pub version: u32,
    /// `active`, `decrypt_only` or `retired`.
    pub state: String,
    /// The wrapped key; `None` once retired.
    pub wrapped: Option<WrappedKey>,
    /// The root key that wrapped it.
    pub root_key_id: String,
    /// Encryptions reserved so far.
    pub encryptions_reserved: i64,
}

/// Every data key, oldest first.
pub async fn data_keys(executor: impl PgExecutor<'_>) -> Result<Vec<StoredDataKey>, Error> {
    type DataKeyRow = (i32, String, Option<Vec<u8>>, Option<Vec<u8>>, String, i64);
    let rows: Vec<DataKeyRow> = sqlx::query_as(
        "SELECT version, state, wrap_nonce, wrapped_key, root_key_id, encryptions_reserved \
         FROM data_keys ORDER BY version",
    )
    .fetch_all(executor)
    .await?;
    rows.into_iter()
        .map(|(version, state, nonce, wrapped, root_key_id, reserved)| {
            let wrapped = match (nonce, wrapped) {
                (Some(nonce), Some(ciphertext)) => Some(WrappedKey {
                    nonce: nonce
                        .try_into()
                        .map_err(|_| Error::Corrupt("data_keys.wrap_nonce"))?,
                    ciphertext,
                }),
                _ => None,
            };
            Ok(StoredDataKey {
                version: u32::try_from(version).map_err(|_| Error::Corrupt("data_keys.version"))?,
                state,
                wrapped,
                root_key_id,
                encryptions_reserved: reserved,
            })
        })
        .collect()
}

/// Inserts data key `version` as the active key unless one with that version exists
/// (several vault instances may start at once; the first insert wins).
pub async fn insert_first_data_key(
    executor: impl PgExecutor<'_>,
    version: u32,
    wrapped: &WrappedKey,
    root_key_id: &str,
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO data_keys (version, state, wrap_nonce, wrapped_key, root_key_id) \
         VALUES ($1, 'active', $2, $3, $4) ON CONFLICT DO NOTHING",
    )
    .bind(version as i32)
    .bind(wrapped.nonce.as_slice())
    .bind(wrapped.ciphertext.as_slice())
    .bind(root_key_id)
    .execute(executor)
    .await?;
    Ok(())
}

/// Reserves `count` encryptions of the active key `version`; returns the new reserved total, or
/// `None` if `version` is no longer active.
pub async fn reserve_encryptions(
    executor: impl PgExecutor<'_>,
    version: u32,
    count: u64,
) -> Result<Option<i64>, Error> {
    Ok(sqlx::query_scalar(
        "UPDATE data_keys SET encryptions_reserved = encryptions_reserved + $2 \
         WHERE version = $1 AND state = 'active' RETURNING encryptions_reserved",
    )
    .bind(version as i32)
    .bind(count as i64)
    .fetch_optional(executor)
    .await?)
}

/// Reads a wrapped vault secret.
pub async fn secret(
    executor: impl PgExecutor<'_>,
    name: &str,
) -> Result<Option<(WrappedKey, String)>, Error> {
    let row: Option<(Vec<u8>, Vec<u8>, String)> = sqlx::query_as(
        "SELECT wrap_nonce, wrapped_key, root_key_id FROM vault_secrets WHERE name = $1",
    )
    .bind(name)
    .fetch_optional(executor)
    .await?;
    row.map(|(nonce, ciphertext, root_key_id)| {
        Ok((
            WrappedKey {
                nonce: nonce
                    .try_into()
                    .map_err(|_| Error::Corrupt("vault_secrets.wrap_nonce"))?,
                ciphertext,
            },
            root_key_id,
        ))
    })
    .transpose()
}

/// Stores a wrapped vault secret unless one with that name exists.
pub async fn insert_secret(
    executor: impl PgExecutor<'_>,
    name: &str,
    wrapped: &WrappedKey,
    root_key_id: &str,
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO vault_secrets (name, wrap_nonce, wrapped_key, root_key_id) \
         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
    )
    .bind(name)
    .bind(wrapped.nonce.as_slice())
    .bind(wrapped.ciphertext.as_slice())
    .bind(root_key_id)
    .execute(executor)
    .await?;
    Ok(())
}

/// Locks the active data key's row until the transaction ends: rotations lock it first, so a
/// transaction holding it serializes with them.
pub async fn lock_active_data_key(conn: &mut PgConnection) -> Result<(), Error> {
    sqlx::query("SELECT version FROM data_keys WHERE state = 'active' FOR UPDATE")
        .execute(conn)
        .await?;
    Ok(())
}
