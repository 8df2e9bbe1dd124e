//! All of the orchestrator's SQL (run-time checked queries, each exercised against Postgres by
//! the end-to-end tests or this crate's `tests/`). Functions that change state take the caller's transaction, so a
//! payment's state, its events, its ledger transfers and its spend commit together.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use sqlx::{PgConnection, PgExecutor, PgPool, Row as _};
use time::{Date, OffsetDateTime};

use crate::domain::actor::Actor;
use crate::domain::group::CardGroup;
use crate::domain::record::PaymentRecord;
use crate::domain::record::steps::SpendChange;
use crate::error::{Error, is_lock_timeout};

pub mod fx;
pub mod reconciliation;
pub mod risk;
pub mod webhooks;

/// The orchestrator's migrations (the ledger's are numbered from 10001 and share the table of
/// applied migrations).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The orchestrator's and the ledger's migrations as one list (versions 1.. then 10001..), so
/// one run applies both to the shared database and checks both against its history.
pub fn migrator() -> sqlx::migrate::Migrator {
    let migrations: Vec<sqlx::migrate::Migration> = MIGRATOR
        .iter()
        .chain(tandem_ledger::MIGRATOR.iter())
        .cloned()
        .collect();
    // The fields are what `migrate!` itself fills in; sqlx has no constructor from a list.
    sqlx::migrate::Migrator {
        migrations: std::borrow::Cow::Owned(migrations),
        ignore_missing: false,
        locking: true,
        no_tx: false,
    }
}

/// A card group as stored.
#[derive(Debug, Clone)]
pub struct StoredGroup {
    /// The id.
    pub id: String,
    /// The group's content (members, policy, names); output-only fields are in the columns.
    pub content: StoredContent,
    /// Changes on every update: the etag's source.
    pub version: i64,
    /// Archived by DeleteCardGroup.
    pub archived: bool,
    /// Created.
    pub create_time: OffsetDateTime,
    /// Last changed.
    pub update_time: OffsetDateTime,
    /// Archived at.
    pub archive_time: Option<OffsetDateTime>,
    /// Who created it (`None` for groups written before callers were kept).
    pub creator: Option<Actor>,
    /// Who changed it last.
    pub updater: Option<Actor>,
    /// The events it has published (`card_group_events`), the last one's sequence.
    pub events: i64,
}

/// What a group row holds.
#[derive(Debug, Clone)]
pub enum StoredContent {
    /// The group as domain data (the `content` column): every row written by this version.
    Data(Box<CardGroup>),
    /// The encoded `CardGroup` message (the `body` column) of a row written before groups were
    /// kept as domain data and not converted yet ([`encoded_groups`]).
    Encoded(Vec<u8>),
}

const GROUP_COLUMNS: &str = "id, content, body, version, archived, create_time, update_time, \
     archive_time, creator, updater, events";

fn group_row(row: sqlx::postgres::PgRow) -> Result<StoredGroup, Error> {
    let content: Option<sqlx::types::Json<CardGroup>> = row
        .try_get("content")
        .map_err(|e| Error::Corrupt(format!("card group content: {e}")))?;
    let body: Option<Vec<u8>> = row.try_get("body")?;
    let content = match (content, body) {
        (Some(content), _) => StoredContent::Data(Box::new(content.0)),
        (None, Some(body)) => StoredContent::Encoded(body),
        (None, None) => return Err(Error::Corrupt("card group without content".into())),
    };
    let actor = |column: &str| -> Result<Option<Actor>, Error> {
        let stored: Option<String> = row.try_get(column)?;
        stored
            .map(|s| Actor::parse(&s).ok_or_else(|| Error::Corrupt(format!("card group {column}"))))
            .transpose()
    };
    Ok(StoredGroup {
        id: row.try_get("id")?,
        content,
        version: row.try_get("version")?,
        archived: row.try_get("archived")?,
        create_time: row.try_get("create_time")?,
        update_time: row.try_get("update_time")?,
        archive_time: row.try_get("archive_time")?,
        creator: actor("creator")?,
        updater: actor("updater")?,
        events: row.try_get("events")?,
    })
}

/// The columns `content` and `body` of a group: one of the two is set.
fn content_columns(
    content: &StoredContent,
) -> (Option<sqlx::types::Json<&CardGroup>>, Option<&[u8]>) {
    match content {
        StoredContent::Data(group) => (Some(sqlx::types::Json(group.as_ref())), None),
        StoredContent::Encoded(body) => (None, Some(body.as_slice())),
    }
}

/// Inserts a new group with its `card_group.created` event (one statement).
pub async fn insert_group(
    conn: &mut PgConnection,
    group: &StoredGroup,
    billing_account_id: &str,
    event: &NewEvent,
) -> Result<(), Error> {
    let (content, body) = content_columns(&group.content);
    sqlx::query(
        "WITH inserted AS (INSERT INTO card_groups (id, billing_account_id, archived, version, \
         content, body, create_time, update_time, archive_time, creator, updater, events, \
         feed_key) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, \
         pg_current_xact_id()) RETURNING id) \
         INSERT INTO card_group_events \
         (card_group_id, sequence, id, type, body, create_time, feed_key) \
         SELECT id, $12, $13, $14, $15, $8, pg_current_xact_id() FROM inserted",
    )
    .bind(&group.id)
    .bind(billing_account_id)
    .bind(group.archived)
    .bind(group.version)
    .bind(content)
    .bind(body)
    .bind(group.create_time)
    .bind(group.update_time)
    .bind(group.archive_time)
    .bind(group.creator.as_ref().map(Actor::to_string))
    .bind(group.updater.as_ref().map(Actor::to_string))
    .bind(event.sequence)
    .bind(&event.id)
    .bind(event.kind)
    .bind(&event.body)
    .execute(conn)
    .await?;
    Ok(())
}

/// Reads a group; with `lock`, locks it for the rest of the transaction.
pub async fn group(
    executor: impl PgExecutor<'_>,
    id: &str,
    lock: bool,
) -> Result<Option<StoredGroup>, Error> {
    // NO KEY UPDATE: a group's id never changes, so a writer of the group need not block the
    // foreign-key checks (KEY SHARE) of payments being created on it.
    let lock = if lock { " FOR NO KEY UPDATE" } else { "" };
    let row = sqlx::query(&format!(
        "SELECT {GROUP_COLUMNS} FROM card_groups WHERE id = $1{lock}"
    ))
    .bind(id)
    .fetch_optional(executor)
    .await?;
    row.map(group_row).transpose()
}

/// Replaces a group's content, version, archive state, last changer and event count, with
/// the change's event if it has one (one statement). The caller holds the group's row lock;
/// the event's feed key is kept as [`save_payment`] keeps a payment's.
pub async fn update_group(
    conn: &mut PgConnection,
    group: &StoredGroup,
    event: Option<&NewEvent>,
) -> Result<(), Error> {
    let (content, body) = content_columns(&group.content);
    sqlx::query(
        "WITH feed AS (SELECT greatest(pg_current_xact_id(), feed_key) AS key FROM card_groups \
         WHERE id = $1), \
         outbox AS (INSERT INTO card_group_events \
         (card_group_id, sequence, id, type, body, create_time, feed_key) \
         SELECT $1, e.sequence, e.id, e.type, e.body, $5, (SELECT key FROM feed) \
         FROM UNNEST($10::bigint[], $11::text[], $12::text[], $13::bytea[]) \
         AS e (sequence, id, type, body)) \
         UPDATE card_groups SET content = $2, body = $7, version = $3, archived = $4, \
         update_time = $5, archive_time = $6, updater = $8, events = $9, \
         feed_key = (SELECT key FROM feed) WHERE id = $1",
    )
    .bind(&group.id)
    .bind(content)
    .bind(group.version)
    .bind(group.archived)
    .bind(group.update_time)
    .bind(group.archive_time)
    .bind(body)
    .bind(group.updater.as_ref().map(Actor::to_string))
    .bind(group.events)
    .bind(event.iter().map(|e| e.sequence).collect::<Vec<_>>())
    .bind(event.iter().map(|e| e.id.as_str()).collect::<Vec<_>>())
    .bind(event.iter().map(|e| e.kind).collect::<Vec<_>>())
    .bind(event.iter().map(|e| e.body.as_slice()).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

/// Up to `limit` groups still held as encoded `CardGroup` messages (rows written before groups
/// were kept as domain data), as `(id, body)`.
pub async fn encoded_groups(
    pool: &PgPool,
    after_id: &str,
    limit: i64,
) -> Result<Vec<(String, Vec<u8>)>, Error> {
    Ok(sqlx::query_as(
        "SELECT id, body FROM card_groups WHERE content IS NULL AND id > $1 ORDER BY id LIMIT $2",
    )
    .bind(after_id)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// Replaces group `id`'s encoded message with `content`, the same group as domain data, unless
/// the group was written since (its version and etag stay: the group did not change).
pub async fn convert_group(pool: &PgPool, id: &str, content: &CardGroup) -> Result<(), Error> {
    sqlx::query(
        "UPDATE card_groups SET content = $2, body = NULL WHERE id = $1 AND content IS NULL",
    )
    .bind(id)
    .bind(sqlx::types::Json(content))
    .execute(pool)
    .await?;
    Ok(())
}

/// Where a newest-first page starts: after this row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// The last row's creation time.
    pub create_time: OffsetDateTime,
    /// The last row's id.
    pub id: String,
}

/// A page of groups, newest first, optionally of one billing account.
pub async fn list_groups(
    pool: &PgPool,
    billing_account_id: Option<&str>,
    show_archived: bool,
    after: Option<&Cursor>,
    limit: i64,
) -> Result<Vec<StoredGroup>, Error> {
    let rows = sqlx::query(&format!(
        "SELECT {GROUP_COLUMNS} FROM card_groups \
         WHERE ($1::text IS NULL OR billing_account_id = $1) AND ($2 OR NOT archived) \
         AND ($3::timestamptz IS NULL OR (create_time, id) < ($3, $4)) \
         ORDER BY create_time DESC, id DESC LIMIT $5"
    ))
    .bind(billing_account_id)
    .bind(show_archived)
    .bind(after.map(|c| c.create_time))
    .bind(after.map(|c| c.id.as_str()))
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(group_row).collect()
}

/// What a committed request id holds.
#[derive(Debug, Clone)]
pub struct StoredRequest {
    /// The method it was used for.
    pub method: String,
    /// The hash of that request.
    pub request_hash: Vec<u8>,
    /// What it created.
    pub resource_id: String,
    /// The stored response, for card-group mutations.
    pub response: Option<Vec<u8>>,
}

impl StoredRequest {
    /// The resource this request id made, for a request of `method` with `hash`: a replay
    /// answers with it; another request under the id is `REQUEST_ID_REUSED`.
    pub fn resource_of(&self, method: &str, hash: &[u8]) -> Result<&str, Error> {
        if self.method != method || self.request_hash != hash {
            return Err(Error::RequestIdReused);
        }
        Ok(&self.resource_id)
    }

    /// The response stored with this request id, for a request of `method` with `hash`: a
    /// replay answers with it; another request under the id is `REQUEST_ID_REUSED`.
    pub fn replay(self, method: &str, hash: &[u8]) -> Result<Vec<u8>, Error> {
        self.resource_of(method, hash)?;
        self.response
            .ok_or_else(|| Error::Corrupt(format!("a {method} request id without its response")))
    }
}

/// Claims `request_id` in the caller's transaction: `None` when it is new (the row is written
/// and commits with the transaction), the earlier request otherwise. Waits at most
/// `wait_ms` for another transaction holding the id, then fails with REQUEST_IN_PROGRESS.
pub async fn claim_request_id(
    conn: &mut PgConnection,
    request_id: &str,
    method: &str,
    request_hash: &[u8],
    resource_id: &str,
    wait_ms: u64,
) -> Result<Option<StoredRequest>, Error> {
    sqlx::query(&format!("SET LOCAL lock_timeout = '{wait_ms}ms'"))
        .execute(&mut *conn)
        .await?;
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (request_id, method, request_hash, resource_id, \
         create_time) VALUES ($1, $2, $3, $4, now()) ON CONFLICT (request_id) DO NOTHING",
    )
    .bind(request_id)
    .bind(method)
    .bind(request_hash)
    .bind(resource_id)
    .execute(&mut *conn)
    .await
    .map_err(|e| {
        if is_lock_timeout(&e) {
            Error::RequestInProgress
        } else {
            Error::Database(e)
        }
    })?
    .rows_affected();
    sqlx::query("SET LOCAL lock_timeout = 0")
        .execute(&mut *conn)
        .await?;
    if inserted == 1 {
        return Ok(None);
    }
    stored_request(&mut *conn, request_id)
        .await?
        .map(Some)
        .ok_or_else(|| Error::Corrupt("a conflicting request id vanished".into()))
}

/// The committed request of `request_id`, if any.
pub async fn stored_request(
    executor: impl PgExecutor<'_>,
    request_id: &str,
) -> Result<Option<StoredRequest>, Error> {
    let row = sqlx::query(
        "SELECT method, request_hash, resource_id, response FROM idempotency_keys \
         WHERE request_id = $1",
    )
    .bind(request_id)
    .fetch_optional(executor)
    .await?;
    row.map(|row| {
        Ok(StoredRequest {
            method: row.try_get("method")?,
            request_hash: row.try_get("request_hash")?,
            resource_id: row.try_get("resource_id")?,
            response: row.try_get("response")?,
        })
    })
    .transpose()
}

/// Stores the response of a claimed request id.
pub async fn store_response(
    conn: &mut PgConnection,
    request_id: &str,
    response: &[u8],
) -> Result<(), Error> {
    sqlx::query("UPDATE idempotency_keys SET response = $2 WHERE request_id = $1")
        .bind(request_id)
        .bind(response)
        .execute(conn)
        .await?;
    Ok(())
}

/// A payment as stored.
#[derive(Debug, Clone)]
pub struct StoredPayment {
    /// The record.
    pub record: PaymentRecord,
    /// The encoded `CreatePaymentRequest` (invoice and policy as given).
    pub request: Vec<u8>,
    /// The encoded `AllocationPolicy` in force: the override, or the group's default as it was
    /// when the payment was created. `None` for payments stored before it was recorded.
    pub policy: Option<Vec<u8>>,
    /// The card group.
    pub card_group_id: String,
    /// Its billing account.
    pub billing_account_id: String,
    /// Events written so far (the last sequence).
    pub events: i64,
    /// The instance driving it.
    pub lease_owner: Option<String>,
    /// Until when.
    pub lease_until: OffsetDateTime,
    /// Last changed.
    pub update_time: OffsetDateTime,
}

impl StoredPayment {
    /// The refund `id`, which a payment read back after recording it must have.
    pub fn refund(&self, id: &str) -> Result<&crate::domain::record::refunds::Refund, Error> {
        self.record
            .refund(id)
            .ok_or_else(|| Error::Corrupt(format!("refund {id} missing")))
    }
}

const PAYMENT_COLUMNS: &str = "record, request, policy, card_group_id, billing_account_id, \
     events, lease_owner, lease_until, update_time";

fn payment_row(row: sqlx::postgres::PgRow) -> Result<StoredPayment, Error> {
    let record: sqlx::types::Json<PaymentRecord> = row
        .try_get("record")
        .map_err(|e| Error::Corrupt(format!("payment record: {e}")))?;
    Ok(StoredPayment {
        record: record.0,
        request: row.try_get("request")?,
        policy: row.try_get("policy")?,
        card_group_id: row.try_get("card_group_id")?,
        billing_account_id: row.try_get("billing_account_id")?,
        events: row.try_get("events")?,
        lease_owner: row.try_get("lease_owner")?,
        lease_until: row.try_get("lease_until")?,
        update_time: row.try_get("update_time")?,
    })
}

/// The status name stored in `payments.state`, for filters.
pub fn state_name(record: &PaymentRecord) -> &'static str {
    use crate::domain::record::Status;
    use crate::domain::saga::PaymentState as S;
    match record.status() {
        Status::Saga(S::Pending) => "pending",
        Status::Saga(S::Authorizing) => "authorizing",
        Status::Saga(S::InReview) => "in_review",
        Status::Saga(S::Capturing) => "capturing",
        Status::Saga(S::Succeeded) => "succeeded",
        Status::Saga(S::PartiallyPaid) => "partially_paid",
        Status::Saga(S::Reversing) => "reversing",
        Status::Saga(S::Failed) => "failed",
        Status::Saga(S::NeedsOperator) => "needs_operator",
        Status::PartiallyRefunded => "partially_refunded",
        Status::Refunded => "refunded",
    }
}

/// Inserts a new payment with its first events and what it adds to the risk features (the
/// outbox insert and the features' function as CTEs of the insert: one statement).
pub async fn insert_payment(
    conn: &mut PgConnection,
    payment: &StoredPayment,
    request_id: &str,
    events: &[NewEvent],
    features: &risk::PaymentFeatures,
) -> Result<(), Error> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "WITH outbox AS (INSERT INTO payment_events \
         (payment_id, sequence, id, type, body, create_time, feed_key) \
         SELECT $1, e.sequence, e.id, e.type, e.body, $13, pg_current_xact_id() \
         FROM UNNEST($15::bigint[], $16::text[], $17::text[], $18::bytea[]) \
         AS e (sequence, id, type, body)), {} \
         INSERT INTO payments (id, request_id, card_group_id, billing_account_id, invoice_id, \
         state, settled, record, request, events, lease_owner, lease_until, create_time, \
         update_time, policy, feed_key) \
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13, $14, \
         pg_current_xact_id() FROM risk",
            risk::payment_features_cte(19)
        )
    });
    let record = &payment.record;
    let query = sqlx::query(&SQL)
        .bind(&record.id)
        .bind(request_id)
        .bind(&payment.card_group_id)
        .bind(&payment.billing_account_id)
        .bind(&record.invoice_id)
        .bind(state_name(record))
        .bind(record.is_settled())
        .bind(sqlx::types::Json(record))
        .bind(&payment.request)
        .bind(payment.events)
        .bind(&payment.lease_owner)
        .bind(payment.lease_until)
        .bind(record.create_time)
        .bind(&payment.policy)
        .bind(events.iter().map(|e| e.sequence).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.id.as_str()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.kind).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.body.as_slice()).collect::<Vec<_>>());
    features.bind(query).execute(conn).await?;
    Ok(())
}

/// Reads a payment; with `lock`, locks it for the rest of the transaction.
pub async fn payment(
    executor: impl PgExecutor<'_>,
    id: &str,
    lock: bool,
) -> Result<Option<StoredPayment>, Error> {
    let lock = if lock { " FOR UPDATE" } else { "" };
    let row = sqlx::query(&format!(
        "SELECT {PAYMENT_COLUMNS} FROM payments WHERE id = $1{lock}"
    ))
    .bind(id)
    .fetch_optional(executor)
    .await?;
    row.map(payment_row).transpose()
}

/// Writes a payment's record, event count and lease, and appends `events` (the change's, in
/// sequence, up to `payment.events`) to its outbox, in one statement. The caller holds the
/// payment's row lock: the events' feed key is this transaction's id raised to the payment's
/// last key, so the feed lists a payment's events in the order of their commits. The declines
/// the change records are counted for risk in the same statement.
pub async fn save_payment(
    conn: &mut PgConnection,
    payment: &StoredPayment,
    events: &[NewEvent],
    declines: &risk::Counts,
    now: OffsetDateTime,
) -> Result<(), Error> {
    // The statement without the risk CTE when nothing was declined (most saves): a statement
    // Postgres plans as before.
    static SQL: LazyLock<[String; 2]> = LazyLock::new(|| {
        let statement = |risk: &str| {
            format!(
                "WITH feed AS (SELECT greatest(pg_current_xact_id(), feed_key) AS key \
                 FROM payments WHERE id = $1), \
                 outbox AS (INSERT INTO payment_events \
                 (payment_id, sequence, id, type, body, create_time, feed_key) \
                 SELECT $1, e.sequence, e.id, e.type, e.body, $8, (SELECT key FROM feed) \
                 FROM UNNEST($9::bigint[], $10::text[], $11::text[], $12::bytea[]) \
                 AS e (sequence, id, type, body)){risk} \
                 UPDATE payments SET state = $2, settled = $3, record = $4, events = $5, \
                 lease_owner = $6, lease_until = $7, update_time = $8, \
                 feed_key = (SELECT key FROM feed) WHERE id = $1"
            )
        };
        [
            statement(""),
            statement(&format!(", {}", risk::counts_cte(13))),
        ]
    });
    let record = &payment.record;
    let sql = &SQL[usize::from(!declines.is_empty())];
    let query = sqlx::query(sql)
        .bind(&record.id)
        .bind(state_name(record))
        .bind(record.is_settled())
        .bind(sqlx::types::Json(record))
        .bind(payment.events)
        .bind(&payment.lease_owner)
        .bind(payment.lease_until)
        .bind(now)
        .bind(events.iter().map(|e| e.sequence).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.id.as_str()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.kind).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.body.as_slice()).collect::<Vec<_>>());
    if declines.is_empty() {
        query.execute(conn).await?;
        return Ok(());
    }
    declines.bind(query).execute(conn).await?;
    Ok(())
}

/// Filters of a payment list.
#[derive(Debug, Clone, Default)]
pub struct PaymentFilter {
    /// Of this card group.
    pub card_group_id: Option<String>,
    /// In this state (a [`state_name`]).
    pub state: Option<&'static str>,
    /// Of this invoice.
    pub invoice_id: Option<String>,
    /// Of this billing account.
    pub billing_account_id: Option<String>,
    /// Created at or after.
    pub created_from: Option<OffsetDateTime>,
    /// Created before.
    pub created_before: Option<OffsetDateTime>,
}

/// A page of payments, newest first.
pub async fn list_payments(
    pool: &PgPool,
    filter: &PaymentFilter,
    after: Option<&Cursor>,
    limit: i64,
) -> Result<Vec<(StoredPayment, OffsetDateTime)>, Error> {
    let rows = sqlx::query(&format!(
        "SELECT {PAYMENT_COLUMNS}, create_time FROM payments \
         WHERE ($1::text IS NULL OR card_group_id = $1) AND ($2::text IS NULL OR state = $2) \
         AND ($3::text IS NULL OR invoice_id = $3) \
         AND ($4::text IS NULL OR billing_account_id = $4) \
         AND ($5::timestamptz IS NULL OR (create_time, id) < ($5, $6)) \
         AND ($8::timestamptz IS NULL OR create_time >= $8) \
         AND ($9::timestamptz IS NULL OR create_time < $9) \
         ORDER BY create_time DESC, id DESC LIMIT $7"
    ))
    .bind(filter.card_group_id.as_deref())
    .bind(filter.state)
    .bind(filter.invoice_id.as_deref())
    .bind(filter.billing_account_id.as_deref())
    .bind(after.map(|c| c.create_time))
    .bind(after.map(|c| c.id.as_str()))
    .bind(limit)
    .bind(filter.created_from)
    .bind(filter.created_before)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|row| {
            let create_time: OffsetDateTime = row.try_get("create_time")?;
            Ok((payment_row(row)?, create_time))
        })
        .collect()
}

/// Leases up to `limit` unsettled payments whose lease expired to `owner` until
/// `lease_until`, skipping rows another instance is taking at the same moment and payments
/// waiting for an operator (only `ResolvePayment` moves those on). Returns their ids.
pub async fn lease_expired(
    pool: &PgPool,
    owner: &str,
    lease_until: OffsetDateTime,
    limit: i64,
) -> Result<Vec<Expired>, Error> {
    let rows = sqlx::query(
        "WITH expired AS (SELECT id, lease_until FROM payments \
           WHERE NOT settled AND lease_until < now() AND state <> 'needs_operator' \
           ORDER BY lease_until LIMIT $3 FOR UPDATE SKIP LOCKED) \
         UPDATE payments p SET lease_owner = $1, lease_until = $2 FROM expired \
         WHERE p.id = expired.id RETURNING p.id, expired.lease_until AS expired_at, now() AS now",
    )
    .bind(owner)
    .bind(lease_until)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|row| {
            let expired_at: OffsetDateTime = row.try_get("expired_at")?;
            let now: OffsetDateTime = row.try_get("now")?;
            Ok(Expired {
                id: row.try_get("id")?,
                lag: now - expired_at,
            })
        })
        .collect()
}

/// A payment [`lease_expired`] took over.
#[derive(Debug, Clone)]
pub struct Expired {
    /// Its id.
    pub id: String,
    /// How long ago its lease had expired.
    pub lag: time::Duration,
}

/// Payments on their way and payments waiting for an operator, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InFlight {
    /// Neither terminal nor in review nor waiting for an operator (a terminal payment with a
    /// refund pending is not).
    pub count: i64,
    /// When the oldest of those was created.
    pub oldest: Option<OffsetDateTime>,
    /// In NEEDS_OPERATOR.
    pub needing_operator: i64,
}

/// [`InFlight`] now, in one statement (the partial index of unsettled payments finds them).
pub async fn in_flight(pool: &PgPool) -> Result<InFlight, Error> {
    let row = sqlx::query(
        "SELECT count(*) FILTER (WHERE state <> 'needs_operator') AS n, \
                min(create_time) FILTER (WHERE state <> 'needs_operator') AS oldest, \
                count(*) FILTER (WHERE state = 'needs_operator') AS waiting \
         FROM payments WHERE NOT settled \
         AND state IN ('pending', 'authorizing', 'capturing', 'reversing', 'needs_operator')",
    )
    .fetch_one(pool)
    .await?;
    Ok(InFlight {
        count: row.try_get("n")?,
        oldest: row.try_get("oldest")?,
        needing_operator: row.try_get("waiting")?,
    })
}

/// Up to `limit` payments not terminal that were created before `cutoff` and have no
/// `payment.delayed` event yet, oldest first. Unsettled payments are few (those in flight), and
/// the partial index of unsettled payments finds them.
pub async fn delayed_payments(
    pool: &PgPool,
    cutoff: OffsetDateTime,
    limit: i64,
) -> Result<Vec<String>, Error> {
    Ok(sqlx::query_scalar(
        "SELECT id FROM payments WHERE NOT settled AND create_time < $1 \
         AND state IN ('pending', 'authorizing', 'capturing', 'reversing') \
         AND NOT (record ? 'delayed_time') ORDER BY create_time LIMIT $2",
    )
    .bind(cutoff)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// One outbox row, of a payment or a card group.
#[derive(Debug)]
pub struct NewEvent {
    /// Its place in the payment's (or group's) stream, from 1.
    pub sequence: i64,
    /// `evt_...`.
    pub id: String,
    /// `payment.succeeded`, `leg.authorized`, ...
    pub kind: &'static str,
    /// The encoded event.
    pub body: Vec<u8>,
}

/// A payment's events after `after`, in sequence order, at most `limit`.
pub async fn events_after(
    pool: &PgPool,
    payment_id: &str,
    after: i64,
    limit: i64,
) -> Result<Vec<(i64, Vec<u8>)>, Error> {
    Ok(sqlx::query_as(
        "SELECT sequence, body FROM payment_events WHERE payment_id = $1 AND sequence > $2 \
         ORDER BY sequence LIMIT $3",
    )
    .bind(payment_id)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// How far payment `id` is: its events in all and whether it is settled (`None` if unknown).
pub async fn progress(pool: &PgPool, id: &str) -> Result<Option<(i64, bool)>, Error> {
    Ok(
        sqlx::query_as("SELECT events, settled FROM payments WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await?,
    )
}

/// [`progress`] of each of `ids` that exists, as `(id, events, settled)`.
pub async fn progress_of(pool: &PgPool, ids: &[&str]) -> Result<Vec<(String, i64, bool)>, Error> {
    Ok(
        sqlx::query_as("SELECT id, events, settled FROM payments WHERE id = ANY($1)")
            .bind(ids)
            .fetch_all(pool)
            .await?,
    )
}

/// The events of several payments at once, each after its own sequence (`(id, after)` pairs),
/// as `(payment id, sequence, body)` in order.
pub async fn events_after_each(
    pool: &PgPool,
    after: &[(&str, i64)],
) -> Result<Vec<(String, i64, Vec<u8>)>, Error> {
    let (ids, sequences): (Vec<&str>, Vec<i64>) = after.iter().copied().unzip();
    Ok(sqlx::query_as(
        "SELECT e.payment_id, e.sequence, e.body \
         FROM unnest($1::text[], $2::bigint[]) AS w (id, after) \
         JOIN payment_events e ON e.payment_id = w.id AND e.sequence > w.after \
         ORDER BY e.payment_id, e.sequence",
    )
    .bind(&ids)
    .bind(&sequences)
    .fetch_all(pool)
    .await?)
}

/// The first day of `time`'s calendar month (UTC), the key of monthly spend.
pub fn month_of(time: OffsetDateTime) -> Date {
    time.to_offset(time::UtcOffset::UTC)
        .date()
        .replace_day(1)
        .expect("day 1 exists in every month")
}

/// What counts against each of `tokens`' monthly limits in `month`, by (token, currency), in
/// one query.
pub async fn month_to_date(
    executor: impl PgExecutor<'_>,
    tokens: &[String],
    month: Date,
) -> Result<HashMap<(String, String), i64>, Error> {
    let rows = sqlx::query(
        "SELECT token, currency, amount FROM member_spend WHERE token = ANY($1) AND month = $2",
    )
    .bind(tokens)
    .bind(month)
    .fetch_all(executor)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            Ok((
                (row.try_get("token")?, row.try_get("currency")?),
                row.try_get("amount")?,
            ))
        })
        .collect::<Result<_, sqlx::Error>>()?)
}

/// Adds each change's `delta` to its card's spend for `month`, in one statement that locks the
/// rows in token order (so concurrent payments sharing cards never deadlock). A positive delta
/// with a `limit` is added only if the spend stays within it. Returns the tokens whose change
/// was added. Changes of one token are added one after another (a statement may change a row
/// once), in the order given.
pub async fn add_spends(
    conn: &mut PgConnection,
    month: Date,
    changes: &[SpendChange],
) -> Result<HashSet<String>, Error> {
    let mut added = HashSet::with_capacity(changes.len());
    let mut batch: Vec<&SpendChange> = changes.iter().collect();
    batch.sort_by(|a, b| a.token.cmp(&b.token));
    while !batch.is_empty() {
        // The first change of each token now, its next ones in the next statement.
        let mut later = Vec::new();
        batch.dedup_by(|next, first| {
            let repeated = next.token == first.token;
            if repeated {
                later.push(*next);
            }
            repeated
        });
        let tokens: Vec<&str> = batch.iter().map(|c| c.token.as_str()).collect();
        let currencies: Vec<&str> = batch.iter().map(|c| c.currency.code()).collect();
        let deltas: Vec<i64> = batch.iter().map(|c| c.delta).collect();
        let limits: Vec<Option<i64>> = batch
            .iter()
            .map(|c| c.limit.filter(|_| c.delta > 0))
            .collect();
        let rows: Vec<String> = sqlx::query_scalar(
            "INSERT INTO member_spend AS s (token, currency, month, amount) \
             SELECT c.token, c.currency, $3, c.delta \
             FROM UNNEST($1::text[], $2::text[], $4::bigint[], $5::bigint[]) \
             AS c (token, currency, delta, cap) \
             WHERE c.cap IS NULL OR c.delta <= c.cap ORDER BY c.token \
             ON CONFLICT (token, currency, month) DO UPDATE SET amount = s.amount + EXCLUDED.amount \
             WHERE ($5::bigint[])[array_position($1::text[], s.token)] IS NULL \
             OR s.amount + EXCLUDED.amount <= ($5::bigint[])[array_position($1::text[], s.token)] \
             RETURNING s.token",
        )
        .bind(&tokens)
        .bind(&currencies)
        .bind(month)
        .bind(&deltas)
        .bind(&limits)
        .fetch_all(&mut *conn)
        .await?;
        added.extend(rows);
        batch = later;
    }
    Ok(added)
}

/// Where the event feed stands: after the event of feed key `key` (an `xid8`, see migration
/// 0005), subject (payment or group id) and sequence. The start is `0`, `""`, `0`; the
/// position `(k, "", 0)` is before every event of key `k`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct FeedPosition {
    /// The feed key.
    pub key: u64,
    /// The payment or card group.
    pub subject: String,
    /// The event's sequence in its subject's stream.
    pub sequence: i64,
}

/// Whose stream a feed event is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedSource {
    /// `payment_events`: the body is an encoded `PaymentEvent`.
    Payment,
    /// `card_group_events`: the body is an encoded `CardGroupEvent`.
    CardGroup,
    /// `reconciliation_events`: the body is an encoded `ReconciliationEvent`.
    Reconciliation,
}

/// One event of the feed.
#[derive(Debug)]
pub struct FeedEvent {
    /// Its position, to resume after it.
    pub position: FeedPosition,
    /// Its stream.
    pub source: FeedSource,
    /// Its type (`payment.created`, `card_group.updated`, ...).
    pub kind: String,
    /// The encoded event.
    pub body: Vec<u8>,
}

/// A read of the feed.
#[derive(Debug)]
pub struct FeedPage {
    /// The events, in feed order.
    pub events: Vec<FeedEvent>,
    /// The feed's frontier as of the read: every event not yet visible has a key at or above
    /// it, so once the read is caught up, `(frontier, "", 0)` is where the next read starts,
    /// whatever types were asked for.
    pub frontier: u64,
}

/// Up to `limit` events of every payment and card group after `after`, in feed order (feed key,
/// subject, sequence), of the types `kinds` (all when empty), with the frontier of the same
/// snapshot. Only events whose key is below every transaction still running are read, so no
/// later commit can land before a position already read (migration 0005).
pub async fn feed_after(
    executor: impl PgExecutor<'_>,
    after: &FeedPosition,
    kinds: &[String],
    limit: i64,
) -> Result<FeedPage, Error> {
    let rows = sqlx::query(
        "WITH frontier AS (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS key), \
         events AS ( \
           (SELECT feed_key, payment_id AS subject, sequence, type, body, 'payment' AS source \
            FROM payment_events \
            WHERE (feed_key, payment_id, sequence) > ($1::text::xid8, $2, $3) \
              AND feed_key < (SELECT key FROM frontier) \
              AND (cardinality($4::text[]) = 0 OR type = ANY($4)) \
            ORDER BY feed_key, payment_id, sequence LIMIT $5) \
           UNION ALL \
           (SELECT feed_key, card_group_id, sequence, type, body, 'card_group' \
            FROM card_group_events \
            WHERE (feed_key, card_group_id, sequence) > ($1::text::xid8, $2, $3) \
              AND feed_key < (SELECT key FROM frontier) \
              AND (cardinality($4::text[]) = 0 OR type = ANY($4)) \
            ORDER BY feed_key, card_group_id, sequence LIMIT $5) \
           UNION ALL \
           (SELECT feed_key, subject, sequence, type, body, 'reconciliation' \
            FROM reconciliation_events \
            WHERE (feed_key, subject, sequence) > ($1::text::xid8, $2, $3) \
              AND feed_key < (SELECT key FROM frontier) \
              AND (cardinality($4::text[]) = 0 OR type = ANY($4)) \
            ORDER BY feed_key, subject, sequence LIMIT $5)) \
         SELECT f.key::text AS frontier, e.feed_key::text AS feed_key, e.subject, e.sequence, \
                e.type, e.body, e.source \
         FROM frontier f LEFT JOIN (SELECT * FROM events \
              ORDER BY feed_key, subject, sequence LIMIT $5) e ON true \
         ORDER BY e.feed_key, e.subject, e.sequence",
    )
    .bind(after.key.to_string())
    .bind(&after.subject)
    .bind(after.sequence)
    .bind(kinds)
    .bind(limit)
    .fetch_all(executor)
    .await?;
    let key = |text: String| {
        text.parse::<u64>()
            .map_err(|_| Error::Corrupt(format!("feed key {text}")))
    };
    let frontier = match rows.first() {
        Some(row) => key(row.try_get("frontier")?)?,
        None => return Err(Error::Corrupt("the feed read no frontier".into())),
    };
    let mut events = Vec::with_capacity(rows.len());
    for row in rows {
        let Some(feed_key) = row.try_get::<Option<String>, _>("feed_key")? else {
            continue;
        };
        let source: String = row.try_get("source")?;
        events.push(FeedEvent {
            position: FeedPosition {
                key: key(feed_key)?,
                subject: row.try_get("subject")?,
                sequence: row.try_get("sequence")?,
            },
            source: match source.as_str() {
                "payment" => FeedSource::Payment,
                "card_group" => FeedSource::CardGroup,
                _ => FeedSource::Reconciliation,
            },
            kind: row.try_get("type")?,
            body: row.try_get("body")?,
        });
    }
    Ok(FeedPage { events, frontier })
}

/// The operator notes of each of `payment_ids` that has some, by payment id.
pub async fn payment_notes(
    pool: &PgPool,
    payment_ids: &[&str],
) -> Result<HashMap<String, Vec<crate::domain::record::Note>>, Error> {
    if payment_ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(String, sqlx::types::Json<Vec<crate::domain::record::Note>>)> = sqlx::query_as(
        "SELECT id, record->'notes' FROM payments WHERE id = ANY($1) AND record ? 'notes'",
    )
    .bind(payment_ids)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|(id, notes)| (id, notes.0)).collect())
}
