//! The SQL of tokens: the `cards` table, the fingerprint locks and the token request table
//! (`token_requests`).

use std::collections::HashSet;

use sqlx::postgres::PgRow;
use sqlx::{FromRow, PgConnection, PgExecutor, Row as _};
use time::OffsetDateTime;

use crate::crypto::{NONCE_BYTES, SealedCard};
use crate::domain::{Brand, CardView, Expiry, Fingerprint, Token, TokenState};
use crate::error::Error;

/// The columns of `cards` that [`StoredCard`] reads.
const CARD_COLUMNS: &str = "id, token, fingerprint, brand, bin, last4, expiry_month, expiry_year, \
     state, dek_version, nonce, ciphertext, created_at, updated_at, expires_at";

/// A card row: its metadata and, unless purged, its sealed data.
#[derive(Debug)]
pub struct StoredCard {
    /// Insertion order, for paging.
    pub id: i64,
    /// What clients see.
    pub view: CardView,
    /// The sealed PAN and name; `None` once purged.
    pub sealed: Option<SealedCard>,
}

impl FromRow<'_, PgRow> for StoredCard {
    fn from_row(row: &PgRow) -> Result<Self, sqlx::Error> {
        let corrupt = |column: &str| sqlx::Error::ColumnDecode {
            index: column.to_owned(),
            source: "value violates the vault's invariants".into(),
        };
        let fingerprint: Vec<u8> = row.try_get("fingerprint")?;
        let brand: String = row.try_get("brand")?;
        let state: String = row.try_get("state")?;
        let dek_version: Option<i32> = row.try_get("dek_version")?;
        let nonce: Option<Vec<u8>> = row.try_get("nonce")?;
        let ciphertext: Option<Vec<u8>> = row.try_get("ciphertext")?;
        let sealed = match (dek_version, nonce, ciphertext) {
            (Some(version), Some(nonce), Some(ciphertext)) => Some(SealedCard {
                dek_version: u32::try_from(version).map_err(|_| corrupt("dek_version"))?,
                nonce: <[u8; NONCE_BYTES]>::try_from(nonce).map_err(|_| corrupt("nonce"))?,
                ciphertext,
            }),
            (None, None, None) => None,
            _ => return Err(corrupt("ciphertext")),
        };
        Ok(StoredCard {
            id: row.try_get("id")?,
            view: CardView {
                token: Token::from_stored(row.try_get("token")?),
                brand: Brand::parse(&brand).ok_or_else(|| corrupt("brand"))?,
                bin: row.try_get("bin")?,
                last4: row.try_get("last4")?,
                expiry: Expiry::from_stored(
                    row.try_get("expiry_month")?,
                    row.try_get("expiry_year")?,
                ),
                fingerprint: Fingerprint(
                    fingerprint.try_into().map_err(|_| corrupt("fingerprint"))?,
                ),
                state: TokenState::parse(&state).ok_or_else(|| corrupt("state"))?,
                created_at: row.try_get("created_at")?,
                updated_at: row.try_get("updated_at")?,
                expires_at: row.try_get("expires_at")?,
            },
            sealed,
        })
    }
}

/// The card fields written by `Tokenize` and `UpdateCard`.
#[derive(Debug)]
pub struct CardWrite<'a> {
    /// The token.
    pub token: &'a Token,
    /// Keyed fingerprint.
    pub fingerprint: Fingerprint,
    /// Brand.
    pub brand: Brand,
    /// Leading digits.
    pub bin: &'a str,
    /// Last four.
    pub last4: &'a str,
    /// Expiry.
    pub expiry: Expiry,
    /// Sealed PAN and name.
    pub sealed: &'a SealedCard,
    /// Time of the write.
    pub now: OffsetDateTime,
}

/// Binds `$1`-`$11` of the card statements: token, fingerprint, brand, bin, last4, expiry
/// month and year, key version, nonce, ciphertext, time.
fn bind_card<'q>(
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    card: &'q CardWrite<'_>,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    query
        .bind(card.token.as_str())
        .bind(card.fingerprint.as_bytes().as_slice())
        .bind(card.brand.as_str())
        .bind(card.bin)
        .bind(card.last4)
        .bind(i16::from(card.expiry.month()))
        .bind(card.expiry.year() as i16)
        .bind(card.sealed.dek_version as i32)
        .bind(card.sealed.nonce.as_slice())
        .bind(card.sealed.ciphertext.as_slice())
        .bind(card.now)
}

/// A new card with the `Tokenize` request that creates it.
#[derive(Debug)]
pub struct CardInsert<'a> {
    /// The card.
    pub card: CardWrite<'a>,
    /// When the token expires, if it has a time to live.
    pub expires_at: Option<OffsetDateTime>,
    /// The request id recorded with it.
    pub request_id: &'a str,
    /// The RPC recorded with it.
    pub rpc: &'a str,
    /// The hash of the request recorded with it.
    pub request_hash: &'a [u8; 32],
}

/// Records new `Tokenize` requests and inserts their cards, all in one statement (one round
/// trip for a whole writer batch): a card is inserted only if its request id was new and its
/// data key is not retired (the keys' rows are locked against retirement until commit).
/// Returns the tokens inserted; the other cards wrote nothing.
///
/// Rows are written in request-id order (the order the writer audits them in), which also
/// makes two batches holding copies of the same requests usually take those locks in the same
/// order; a deadlock that remains fails the batch, which the writer then replays job by job.
/// Copies of one request id within `inserts` write once: the first in that order.
pub async fn insert_cards_for_new_requests<'a>(
    conn: &mut PgConnection,
    inserts: &[CardInsert<'a>],
) -> Result<HashSet<String>, Error> {
    if inserts.is_empty() {
        return Ok(HashSet::new());
    }
    let mut order: Vec<&CardInsert<'a>> = inserts.iter().collect();
    order.sort_by_key(|insert| insert.request_id);
    let column = |field: for<'r> fn(&'r CardInsert<'a>) -> &'r str| -> Vec<&str> {
        order.iter().map(|insert| field(insert)).collect()
    };
    let bytes = |field: for<'r> fn(&'r CardInsert<'a>) -> &'r [u8]| -> Vec<&[u8]> {
        order.iter().map(|insert| field(insert)).collect()
    };
    let tokens: Vec<String> = sqlx::query_scalar(
        "WITH input AS (SELECT * FROM UNNEST($1::text[], $2::bytea[], $3::text[], $4::text[], \
         $5::text[], $6::smallint[], $7::smallint[], $8::integer[], $9::bytea[], $10::bytea[], \
         $11::timestamptz[], $12::timestamptz[], $13::text[], $14::text[], $15::bytea[]) \
         WITH ORDINALITY AS input (token, fingerprint, brand, bin, last4, expiry_month, \
         expiry_year, dek_version, nonce, ciphertext, now, expires_at, request_id, rpc, \
         request_hash, position)), \
         data_key AS (SELECT version FROM data_keys \
         WHERE version IN (SELECT dek_version FROM input) AND state <> 'retired' FOR KEY SHARE), \
         request AS (INSERT INTO token_requests \
         (request_id, rpc, request_hash, result_tokens, created) \
         SELECT request_id, rpc, request_hash, ARRAY[token], true FROM input \
         WHERE dek_version IN (SELECT version FROM data_key) ORDER BY position \
         ON CONFLICT (request_id) DO NOTHING RETURNING result_tokens[1] AS token) \
         INSERT INTO cards (token, fingerprint, brand, bin, last4, expiry_month, expiry_year, \
         state, dek_version, nonce, ciphertext, created_at, updated_at, expires_at) \
         SELECT token, fingerprint, brand, bin, last4, expiry_month, expiry_year, 'active', \
         dek_version, nonce, ciphertext, now, now, expires_at FROM input \
         WHERE token IN (SELECT token FROM request) ORDER BY position \
         RETURNING token",
    )
    .bind(column(|insert| insert.card.token.as_str()))
    .bind(bytes(|insert| insert.card.fingerprint.as_bytes()))
    .bind(column(|insert| insert.card.brand.as_str()))
    .bind(column(|insert| insert.card.bin))
    .bind(column(|insert| insert.card.last4))
    .bind(
        order
            .iter()
            .map(|insert| i16::from(insert.card.expiry.month()))
            .collect::<Vec<_>>(),
    )
    .bind(
        order
            .iter()
            .map(|insert| insert.card.expiry.year() as i16)
            .collect::<Vec<_>>(),
    )
    .bind(
        order
            .iter()
            .map(|insert| insert.card.sealed.dek_version as i32)
            .collect::<Vec<_>>(),
    )
    .bind(bytes(|insert| insert.card.sealed.nonce.as_slice()))
    .bind(bytes(|insert| insert.card.sealed.ciphertext.as_slice()))
    .bind(
        order
            .iter()
            .map(|insert| insert.card.now)
            .collect::<Vec<_>>(),
    )
    .bind(
        order
            .iter()
            .map(|insert| insert.expires_at)
            .collect::<Vec<_>>(),
    )
    .bind(column(|insert| insert.request_id))
    .bind(column(|insert| insert.rpc))
    .bind(bytes(|insert| insert.request_hash.as_slice()))
    .fetch_all(conn)
    .await?;
    Ok(tokens.into_iter().collect())
}

/// Replaces the card data behind an existing token.
pub async fn update_card(conn: &mut PgConnection, card: &CardWrite<'_>) -> Result<(), Error> {
    bind_card(
        sqlx::query(
            "UPDATE cards SET fingerprint = $2, brand = $3, bin = $4, last4 = $5, expiry_month = $6, \
         expiry_year = $7, dek_version = $8, nonce = $9, ciphertext = $10, updated_at = $11 \
         WHERE token = $1",
        ),
        card,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Reads one card.
pub async fn card(
    executor: impl PgExecutor<'_>,
    token: &Token,
) -> Result<Option<StoredCard>, Error> {
    let sql = format!("SELECT {CARD_COLUMNS} FROM cards WHERE token = $1");
    Ok(sqlx::query_as(&sql)
        .bind(token.as_str())
        .fetch_optional(executor)
        .await?)
}

/// Reads one card and locks its row until the transaction ends.
pub async fn card_for_update(
    conn: &mut PgConnection,
    token: &Token,
) -> Result<Option<StoredCard>, Error> {
    let sql = format!("SELECT {CARD_COLUMNS} FROM cards WHERE token = $1 FOR UPDATE");
    Ok(sqlx::query_as(&sql)
        .bind(token.as_str())
        .fetch_optional(conn)
        .await?)
}

/// The newest active, unexpired card with this fingerprint, for `reuse_existing`.
pub async fn active_card_by_fingerprint(
    conn: &mut PgConnection,
    fingerprint: &Fingerprint,
    now: OffsetDateTime,
) -> Result<Option<StoredCard>, Error> {
    let sql = format!(
        "SELECT {CARD_COLUMNS} FROM cards WHERE fingerprint = $1 AND state = 'active' \
         AND (expires_at IS NULL OR expires_at > $2) ORDER BY id DESC LIMIT 1"
    );
    Ok(sqlx::query_as(&sql)
        .bind(fingerprint.as_bytes().as_slice())
        .bind(now)
        .fetch_optional(conn)
        .await?)
}

/// Locks the fingerprint's row (creating it if needed) until the transaction ends, so that
/// concurrent `reuse_existing` tokenizations of one card serialize.
pub async fn lock_fingerprint(
    conn: &mut PgConnection,
    fingerprint: &Fingerprint,
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO card_fingerprints (fingerprint) VALUES ($1) \
         ON CONFLICT (fingerprint) DO UPDATE SET fingerprint = EXCLUDED.fingerprint",
    )
    .bind(fingerprint.as_bytes().as_slice())
    .execute(conn)
    .await?;
    Ok(())
}

/// Marks one card revoked.
pub async fn revoke_card(
    conn: &mut PgConnection,
    token: &Token,
    reason: &str,
    now: OffsetDateTime,
) -> Result<(), Error> {
    sqlx::query(
        "UPDATE cards SET state = 'revoked', revoke_reason = $2, updated_at = $3 \
         WHERE token = $1 AND state = 'active'",
    )
    .bind(token.as_str())
    .bind(reason)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Revokes every active card with this fingerprint; returns the tokens revoked.
pub async fn revoke_by_fingerprint(
    conn: &mut PgConnection,
    fingerprint: &Fingerprint,
    reason: &str,
    now: OffsetDateTime,
) -> Result<Vec<Token>, Error> {
    let tokens: Vec<String> = sqlx::query_scalar(
        "UPDATE cards SET state = 'revoked', revoke_reason = $2, updated_at = $3 \
         WHERE fingerprint = $1 AND state = 'active' RETURNING token",
    )
    .bind(fingerprint.as_bytes().as_slice())
    .bind(reason)
    .bind(now)
    .fetch_all(conn)
    .await?;
    let mut tokens: Vec<Token> = tokens.into_iter().map(Token::from_stored).collect();
    tokens.sort();
    Ok(tokens)
}

/// Deletes the card data of up to `limit` tokens past their time to live and marks them
/// expired; returns the tokens purged.
pub async fn purge_expired(
    conn: &mut PgConnection,
    now: OffsetDateTime,
    limit: i64,
) -> Result<Vec<Token>, Error> {
    let tokens: Vec<String> = sqlx::query_scalar(
        "UPDATE cards SET state = 'expired', dek_version = NULL, nonce = NULL, \
         ciphertext = NULL, updated_at = $1 \
         WHERE token IN (SELECT token FROM cards WHERE state <> 'expired' \
         AND expires_at IS NOT NULL AND expires_at <= $1 ORDER BY expires_at LIMIT $2 \
         FOR UPDATE SKIP LOCKED) RETURNING token",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    Ok(tokens.into_iter().map(Token::from_stored).collect())
}

/// True if some token is past its time to live and not yet purged.
pub async fn any_expired(
    executor: impl PgExecutor<'_>,
    now: OffsetDateTime,
) -> Result<bool, Error> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM cards WHERE state <> 'expired' \
         AND expires_at IS NOT NULL AND expires_at <= $1)",
    )
    .bind(now)
    .fetch_one(executor)
    .await?)
}

/// Filters of `ListTokens`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CardFilter {
    /// Only this fingerprint.
    pub fingerprint: Option<Fingerprint>,
    /// Only this state.
    pub state: Option<TokenState>,
}

/// Cards newest first with `id < before_id`, at most `limit`.
pub async fn list_cards(
    executor: impl PgExecutor<'_>,
    filter: &CardFilter,
    before_id: Option<i64>,
    limit: i64,
) -> Result<Vec<StoredCard>, Error> {
    let sql = format!(
        "SELECT {CARD_COLUMNS} FROM cards WHERE ($1::bigint IS NULL OR id < $1) \
         AND ($2::bytea IS NULL OR fingerprint = $2) AND ($3::text IS NULL OR state = $3) \
         ORDER BY id DESC LIMIT $4"
    );
    Ok(sqlx::query_as(&sql)
        .bind(before_id)
        .bind(filter.fingerprint.map(|fp| fp.as_bytes().to_vec()))
        .bind(filter.state.map(TokenState::as_str))
        .bind(limit)
        .fetch_all(executor)
        .await?)
}

/// A stored idempotency record of a `TokenService` mutation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRequest {
    /// The RPC that used the id.
    pub rpc: String,
    /// Keyed hash of the request.
    pub request_hash: [u8; 32],
    /// The tokens the first execution returned.
    pub result_tokens: Vec<Token>,
    /// Whether the first execution created a token.
    pub created: bool,
}

/// Reads the idempotency record of `request_id`.
pub async fn request(
    conn: &mut PgConnection,
    request_id: &str,
) -> Result<Option<StoredRequest>, Error> {
    let row: Option<(String, Vec<u8>, Vec<String>, bool)> = sqlx::query_as(
        "SELECT rpc, request_hash, result_tokens, created FROM token_requests \
         WHERE request_id = $1",
    )
    .bind(request_id)
    .fetch_optional(conn)
    .await?;
    row.map(|(rpc, hash, tokens, created)| {
        Ok(StoredRequest {
            rpc,
            request_hash: hash
                .try_into()
                .map_err(|_| Error::Corrupt("token_requests.request_hash"))?,
            result_tokens: tokens.into_iter().map(Token::from_stored).collect(),
            created,
        })
    })
    .transpose()
}

/// Records the result of a mutation under its request id. Returns false, writing nothing, if
/// another transaction recorded the id first (it waits for that one to finish).
pub async fn insert_request(
    conn: &mut PgConnection,
    request_id: &str,
    record: &StoredRequest,
) -> Result<bool, Error> {
    let tokens: Vec<&str> = record.result_tokens.iter().map(Token::as_str).collect();
    let inserted = sqlx::query(
        "INSERT INTO token_requests (request_id, rpc, request_hash, result_tokens, created) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (request_id) DO NOTHING",
    )
    .bind(request_id)
    .bind(&record.rpc)
    .bind(record.request_hash.as_slice())
    .bind(tokens)
    .bind(record.created)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}
