//! Webhooks' SQL: endpoints, the fan-out's position in the feed, deliveries and their attempts
//! (migration 0007).

use sqlx::{PgConnection, PgExecutor, PgPool, Row as _};
use time::OffsetDateTime;

use super::FeedPosition;
use crate::domain::webhooks::{DeliveryState, EndpointState};
use crate::error::Error;

/// An endpoint as stored.
#[derive(Debug, Clone)]
pub struct StoredEndpoint {
    /// `whe_...`.
    pub id: String,
    /// Where deliveries go.
    pub url: String,
    /// For people.
    pub description: String,
    /// The types it receives; empty for all.
    pub event_types: Vec<String>,
    /// Whether it receives deliveries.
    pub state: EndpointState,
    /// The current secret's version.
    pub secret_version: i64,
    /// The current secret, sealed.
    pub secret_sealed: Vec<u8>,
    /// The previous secret, sealed, and until when it signs.
    pub previous_secret: Option<(Vec<u8>, OffsetDateTime)>,
    /// Since when its deliveries fail without a success.
    pub failing_since: Option<OffsetDateTime>,
    /// `<role>/<name>` of its creator.
    pub creator: String,
    /// `<role>/<name>` of its last updater.
    pub updater: Option<String>,
    /// When it was created.
    pub create_time: OffsetDateTime,
    /// When it last changed.
    pub update_time: OffsetDateTime,
    /// Its pending deliveries (read with it; not written).
    pub pending: i64,
}

/// An endpoint's columns; a previous secret whose overlap has ended reads as none.
const ENDPOINT_COLUMNS: &str = "e.id, e.url, e.description, e.event_types, e.state, \
     e.disabled_reason, e.secret_version, e.secret_sealed, \
     CASE WHEN e.previous_secret_until > now() THEN e.previous_secret_sealed END \
       AS previous_secret_sealed, \
     CASE WHEN e.previous_secret_until > now() THEN e.previous_secret_until END \
       AS previous_secret_until, e.failing_since, e.creator, e.updater, e.create_time, \
     e.update_time, (SELECT count(*) FROM webhook_deliveries d \
       WHERE d.endpoint_id = e.id AND d.state = 'pending') AS pending";

fn endpoint_row(row: sqlx::postgres::PgRow) -> Result<StoredEndpoint, Error> {
    let state: String = row.try_get("state")?;
    let reason: Option<String> = row.try_get("disabled_reason")?;
    let sealed: Option<Vec<u8>> = row.try_get("previous_secret_sealed")?;
    let until: Option<OffsetDateTime> = row.try_get("previous_secret_until")?;
    let id: String = row.try_get("id")?;
    Ok(StoredEndpoint {
        state: EndpointState::from_columns(&state, reason.as_deref())
            .ok_or_else(|| Error::Corrupt(format!("webhook endpoint {id}: state {state}")))?,
        id,
        url: row.try_get("url")?,
        description: row.try_get("description")?,
        event_types: row.try_get("event_types")?,
        secret_version: row.try_get("secret_version")?,
        secret_sealed: row.try_get("secret_sealed")?,
        previous_secret: sealed.zip(until),
        failing_since: row.try_get("failing_since")?,
        creator: row.try_get("creator")?,
        updater: row.try_get("updater")?,
        create_time: row.try_get("create_time")?,
        update_time: row.try_get("update_time")?,
        pending: row.try_get("pending")?,
    })
}

/// Writes a new endpoint.
pub async fn insert_endpoint(conn: &mut PgConnection, e: &StoredEndpoint) -> Result<(), Error> {
    let (state, reason) = e.state.as_columns();
    sqlx::query(
        "INSERT INTO webhook_endpoints (id, url, description, event_types, state, \
         disabled_reason, secret_version, secret_sealed, creator, create_time, update_time) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)",
    )
    .bind(&e.id)
    .bind(&e.url)
    .bind(&e.description)
    .bind(&e.event_types)
    .bind(state)
    .bind(reason)
    .bind(e.secret_version)
    .bind(&e.secret_sealed)
    .bind(&e.creator)
    .bind(e.create_time)
    .execute(conn)
    .await?;
    Ok(())
}

/// Writes an endpoint's changeable columns.
pub async fn update_endpoint(conn: &mut PgConnection, e: &StoredEndpoint) -> Result<(), Error> {
    let (state, reason) = e.state.as_columns();
    sqlx::query(
        "UPDATE webhook_endpoints SET url = $2, description = $3, event_types = $4, state = $5, \
         disabled_reason = $6, secret_version = $7, secret_sealed = $8, \
         previous_secret_sealed = $9, previous_secret_until = $10, failing_since = $11, \
         updater = $12, update_time = $13 WHERE id = $1",
    )
    .bind(&e.id)
    .bind(&e.url)
    .bind(&e.description)
    .bind(&e.event_types)
    .bind(state)
    .bind(reason)
    .bind(e.secret_version)
    .bind(&e.secret_sealed)
    .bind(e.previous_secret.as_ref().map(|(sealed, _)| sealed))
    .bind(e.previous_secret.as_ref().map(|(_, until)| *until))
    .bind(e.failing_since)
    .bind(&e.updater)
    .bind(e.update_time)
    .execute(conn)
    .await?;
    Ok(())
}

/// The endpoint `id` unless deleted; with `lock`, its row is locked for the transaction.
pub async fn endpoint(
    executor: impl PgExecutor<'_>,
    id: &str,
    lock: bool,
) -> Result<Option<StoredEndpoint>, Error> {
    let lock = if lock { " FOR UPDATE OF e" } else { "" };
    let row = sqlx::query(&format!(
        "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints e \
         WHERE e.id = $1 AND e.state <> 'deleted'{lock}"
    ))
    .bind(id)
    .fetch_optional(executor)
    .await?;
    row.map(endpoint_row).transpose()
}

/// Endpoints not deleted, oldest first, after `(create_time, id)`.
pub async fn list_endpoints(
    pool: &PgPool,
    after: Option<(OffsetDateTime, &str)>,
    limit: i64,
) -> Result<Vec<StoredEndpoint>, Error> {
    let rows = sqlx::query(&format!(
        "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints e WHERE e.state <> 'deleted' \
         AND ($1::timestamptz IS NULL OR (e.create_time, e.id) > ($1, $2)) \
         ORDER BY e.create_time, e.id LIMIT $3"
    ))
    .bind(after.map(|(time, _)| time))
    .bind(after.map(|(_, id)| id))
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(endpoint_row).collect()
}

/// How many endpoints exist (not deleted). Creations take turns on a transaction-scoped lock,
/// so the count they check is the count they leave.
pub async fn count_endpoints_locked(conn: &mut PgConnection) -> Result<i64, Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('tandem.webhook_endpoints'))")
        .execute(&mut *conn)
        .await?;
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM webhook_endpoints WHERE state <> 'deleted'")
            .fetch_one(conn)
            .await?,
    )
}

/// Makes an endpoint's pending deliveries due now, with the schedule from its start (the
/// endpoint was enabled again).
pub async fn restart_pending(conn: &mut PgConnection, endpoint_id: &str) -> Result<(), Error> {
    sqlx::query(
        "UPDATE webhook_deliveries SET round_attempts = 0, next_attempt_time = now(), \
         lease_owner = NULL, lease_until = NULL WHERE endpoint_id = $1 AND state = 'pending'",
    )
    .bind(endpoint_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Cancels an endpoint's pending deliveries; returns how many.
pub async fn cancel_pending(conn: &mut PgConnection, endpoint_id: &str) -> Result<i64, Error> {
    let done = sqlx::query(
        "UPDATE webhook_deliveries SET state = 'canceled', lease_owner = NULL, \
         lease_until = NULL WHERE endpoint_id = $1 AND state = 'pending'",
    )
    .bind(endpoint_id)
    .execute(conn)
    .await?;
    Ok(i64::try_from(done.rows_affected()).unwrap_or(i64::MAX))
}

/// The fan-out's position, its row locked for the transaction; `None` while another instance
/// holds it.
pub async fn lock_fanout(conn: &mut PgConnection) -> Result<Option<FeedPosition>, Error> {
    let row = sqlx::query(
        "SELECT feed_key::text AS key, subject, sequence FROM webhook_fanout WHERE id = 1 \
         FOR UPDATE SKIP LOCKED",
    )
    .fetch_optional(conn)
    .await?;
    row.map(|row| {
        let key: String = row.try_get("key")?;
        Ok(FeedPosition {
            key: key
                .parse()
                .map_err(|_| Error::Corrupt(format!("webhook fan-out key {key}")))?,
            subject: row.try_get("subject")?,
            sequence: row.try_get("sequence")?,
        })
    })
    .transpose()
}

/// Moves the fan-out's position.
pub async fn set_fanout(conn: &mut PgConnection, position: &FeedPosition) -> Result<(), Error> {
    sqlx::query(
        "UPDATE webhook_fanout SET feed_key = $1::text::xid8, subject = $2, sequence = $3 \
         WHERE id = 1",
    )
    .bind(position.key.to_string())
    .bind(&position.subject)
    .bind(position.sequence)
    .execute(conn)
    .await?;
    Ok(())
}

/// An endpoint as the fan-out sees it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Receiver {
    /// The endpoint.
    pub id: String,
    /// The types it takes; empty for all.
    pub event_types: Vec<String>,
    /// When it was created: it takes the events recorded from then on.
    pub create_time: OffsetDateTime,
}

/// The endpoints events are fanned out to (enabled or disabled: a disabled one keeps its
/// events), with their filters.
pub async fn fanout_endpoints(conn: &mut PgConnection) -> Result<Vec<Receiver>, Error> {
    Ok(sqlx::query_as(
        "SELECT id, event_types, create_time FROM webhook_endpoints WHERE state <> 'deleted' \
         ORDER BY id",
    )
    .fetch_all(conn)
    .await?)
}

/// A delivery to write.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    /// `whd_...`.
    pub id: String,
    /// Its endpoint.
    pub endpoint_id: String,
    /// The event's id (`webhook-id`).
    pub event_id: String,
    /// The event's type.
    pub event_type: String,
    /// When the event was committed.
    pub event_time: OffsetDateTime,
    /// Its lane: the event's subject.
    pub lane: String,
    /// The JSON sent.
    pub body: String,
}

/// Writes deliveries due now, in order; `redelivery` marks those `RedeliverEvents` made. The
/// fan-out's are written once per endpoint and event (a second write is skipped).
pub async fn insert_deliveries(
    conn: &mut PgConnection,
    deliveries: &[NewDelivery],
    redelivery: bool,
) -> Result<(), Error> {
    if deliveries.is_empty() {
        return Ok(());
    }
    let column = |f: fn(&NewDelivery) -> &str| deliveries.iter().map(f).collect::<Vec<_>>();
    sqlx::query(
        "INSERT INTO webhook_deliveries (id, endpoint_id, event_id, event_type, event_time, \
         lane, body, redelivery, state, next_attempt_time, create_time) \
         SELECT d.id, d.endpoint_id, d.event_id, d.event_type, d.event_time, d.lane, d.body, \
                $8, 'pending', now(), now() \
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], \
                     $6::text[], $7::text[]) WITH ORDINALITY \
              AS d (id, endpoint_id, event_id, event_type, event_time, lane, body, n) \
         ORDER BY d.n \
         ON CONFLICT (endpoint_id, event_id) WHERE NOT redelivery DO NOTHING",
    )
    .bind(column(|d| &d.id))
    .bind(column(|d| &d.endpoint_id))
    .bind(column(|d| &d.event_id))
    .bind(column(|d| &d.event_type))
    .bind(deliveries.iter().map(|d| d.event_time).collect::<Vec<_>>())
    .bind(column(|d| &d.lane))
    .bind(column(|d| &d.body))
    .bind(redelivery)
    .execute(conn)
    .await?;
    Ok(())
}

/// An attempt a worker claimed: the delivery and what it needs of its endpoint.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// The delivery's row.
    pub seq: i64,
    /// Its endpoint.
    pub endpoint_id: String,
    /// `webhook-id`.
    pub event_id: String,
    /// The JSON to send.
    pub body: String,
    /// Attempts made before this one, in all and since the endpoint was last enabled.
    pub attempts: i32,
    /// See [`Claimed::attempts`].
    pub round_attempts: i32,
    /// The endpoint's URL.
    pub url: String,
    /// Its current secret's version and sealed value.
    pub secret_version: i64,
    /// See [`Claimed::secret_version`].
    pub secret_sealed: Vec<u8>,
    /// Its previous secret, sealed, while it still signs.
    pub previous_secret_sealed: Option<Vec<u8>>,
    /// Since when the endpoint has been failing, if it is.
    pub failing_since: Option<OffsetDateTime>,
}

/// Claims up to `limit` due attempts for `owner` until `lease_ms` from now: the head of each
/// lane (the first pending delivery of an endpoint and subject) whose endpoint is enabled,
/// whose time has come and that no live claim holds, at most `per_endpoint` in flight to one
/// endpoint, the longest due first.
pub async fn claim(
    pool: &PgPool,
    owner: &str,
    lease_ms: i64,
    limit: i64,
    per_endpoint: i64,
) -> Result<Vec<Claimed>, Error> {
    let rows = sqlx::query(
        "WITH heads AS ( \
           SELECT DISTINCT ON (d.endpoint_id, d.lane) d.seq, d.endpoint_id, \
                  d.next_attempt_time, d.lease_until \
           FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id \
           WHERE d.state = 'pending' AND e.state = 'enabled' \
           ORDER BY d.endpoint_id, d.lane, d.seq), \
         busy AS (SELECT endpoint_id, count(*) AS n FROM heads \
           WHERE lease_until > now() GROUP BY endpoint_id), \
         ready AS (SELECT h.seq, h.endpoint_id, h.next_attempt_time, \
             row_number() OVER (PARTITION BY h.endpoint_id \
                                ORDER BY h.next_attempt_time, h.seq) AS rank \
           FROM heads h WHERE h.next_attempt_time <= now() \
             AND (h.lease_until IS NULL OR h.lease_until <= now())), \
         chosen AS (SELECT r.seq FROM ready r LEFT JOIN busy b USING (endpoint_id) \
           WHERE r.rank + coalesce(b.n, 0) <= $4 \
           ORDER BY r.next_attempt_time, r.seq LIMIT $3) \
         UPDATE webhook_deliveries d \
         SET lease_owner = $1, lease_until = now() + $2 * interval '1 millisecond' \
         FROM chosen, webhook_endpoints e \
         WHERE d.seq = chosen.seq AND e.id = d.endpoint_id AND d.state = 'pending' \
           AND (d.lease_until IS NULL OR d.lease_until <= now()) \
         RETURNING d.seq, d.endpoint_id, d.event_id, d.body, d.attempts, d.round_attempts, \
           e.url, e.secret_version, e.secret_sealed, \
           CASE WHEN e.previous_secret_until > now() THEN e.previous_secret_sealed END \
             AS previous_secret_sealed, e.failing_since",
    )
    .bind(owner)
    .bind(lease_ms)
    .bind(limit)
    .bind(per_endpoint)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|row| {
            Ok(Claimed {
                seq: row.try_get("seq")?,
                endpoint_id: row.try_get("endpoint_id")?,
                event_id: row.try_get("event_id")?,
                body: row.try_get("body")?,
                attempts: row.try_get("attempts")?,
                round_attempts: row.try_get("round_attempts")?,
                url: row.try_get("url")?,
                secret_version: row.try_get("secret_version")?,
                secret_sealed: row.try_get("secret_sealed")?,
                previous_secret_sealed: row.try_get("previous_secret_sealed")?,
                failing_since: row.try_get("failing_since")?,
            })
        })
        .collect()
}

/// One attempt's record.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    /// When it was sent.
    pub time: OffsetDateTime,
    /// The answer's status; 0 for none.
    pub status_code: i32,
    /// How long it took.
    pub latency_ms: i64,
    /// Why it failed; empty for a 2xx.
    pub error: String,
}

/// What an attempt changes.
#[derive(Debug, Clone, Copy)]
pub enum AttemptEffect {
    /// The delivery is delivered; the endpoint is failing no more.
    Delivered,
    /// The delivery waits `next_in_ms` for its next attempt; the endpoint is failing (since
    /// now, unless it was already).
    Retry {
        /// The wait.
        next_in_ms: i64,
    },
    /// The endpoint is disabled with this reason (`gone`, `failing`); the delivery is kept.
    Disable(EndpointState),
}

/// Records the attempt of a claimed delivery in one transaction: the attempt, the delivery's
/// state and the endpoint's. Returns false, recording nothing, when `owner`'s claim was lost
/// (another instance took the delivery over).
pub async fn record_attempt(
    pool: &PgPool,
    owner: &str,
    claimed: &Claimed,
    attempt: &AttemptRecord,
    effect: AttemptEffect,
) -> Result<bool, Error> {
    let mut tx = pool.begin().await?;
    let (state, next_in_ms) = match effect {
        AttemptEffect::Delivered => (DeliveryState::Delivered, 0),
        AttemptEffect::Retry { next_in_ms } => (DeliveryState::Pending, next_in_ms),
        AttemptEffect::Disable(_) => (DeliveryState::Pending, 0),
    };
    let updated = sqlx::query(
        "UPDATE webhook_deliveries SET state = $3, attempts = attempts + 1, \
         round_attempts = CASE WHEN $3 = 'pending' AND $5 THEN 0 ELSE round_attempts + 1 END, \
         next_attempt_time = now() + $4 * interval '1 millisecond', \
         deliver_time = CASE WHEN $3 = 'delivered' THEN now() END, \
         lease_owner = NULL, lease_until = NULL \
         WHERE seq = $1 AND lease_owner = $2 AND state = 'pending'",
    )
    .bind(claimed.seq)
    .bind(owner)
    .bind(state.as_str())
    .bind(next_in_ms)
    .bind(matches!(effect, AttemptEffect::Disable(_)))
    .execute(&mut *tx)
    .await?;
    if updated.rows_affected() == 0 {
        tx.rollback().await?;
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO webhook_attempts (delivery_seq, number, time, status_code, latency_ms, \
         error) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(claimed.seq)
    .bind(claimed.attempts + 1)
    .bind(attempt.time)
    .bind(attempt.status_code)
    .bind(attempt.latency_ms)
    .bind(&attempt.error)
    .execute(&mut *tx)
    .await?;
    let (disable_state, disable_reason) = match effect {
        AttemptEffect::Disable(state) => {
            let (state, reason) = state.as_columns();
            (Some(state), reason)
        }
        _ => (None, None),
    };
    // A success clears the endpoint's failing time; a failure starts it unless it runs; a
    // disabling also disables (an endpoint deleted meanwhile stays deleted).
    sqlx::query(
        "UPDATE webhook_endpoints SET \
         failing_since = CASE WHEN $2 THEN NULL ELSE coalesce(failing_since, $3) END, \
         state = CASE WHEN $4::text IS NOT NULL AND state = 'enabled' THEN $4 ELSE state END, \
         disabled_reason = CASE WHEN $4::text IS NOT NULL AND state = 'enabled' THEN $5 \
                                ELSE disabled_reason END, \
         update_time = CASE WHEN $4::text IS NOT NULL AND state = 'enabled' THEN now() \
                            ELSE update_time END \
         WHERE id = $1",
    )
    .bind(&claimed.endpoint_id)
    .bind(matches!(effect, AttemptEffect::Delivered))
    .bind(attempt.time)
    .bind(disable_state)
    .bind(disable_reason)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// A delivery as listed.
#[derive(Debug, Clone)]
pub struct StoredDelivery {
    /// Its row, for paging.
    pub seq: i64,
    /// `whd_...`.
    pub id: String,
    /// Its endpoint.
    pub endpoint_id: String,
    /// The event.
    pub event_id: String,
    /// Its type.
    pub event_type: String,
    /// When the event was committed.
    pub event_time: OffsetDateTime,
    /// Where it stands.
    pub state: DeliveryState,
    /// When it was written.
    pub create_time: OffsetDateTime,
    /// When its next attempt is due.
    pub next_attempt_time: OffsetDateTime,
    /// When a 2xx answered it.
    pub deliver_time: Option<OffsetDateTime>,
    /// True if a redelivery.
    pub redelivery: bool,
    /// Its latest attempts, oldest first.
    pub attempts: Vec<(i32, AttemptRecord)>,
}

/// Most attempts listed per delivery.
pub const ATTEMPTS_LISTED_MAX: i64 = 20;

/// An endpoint's deliveries, newest first, before row `before`, of `state` and `event_id` if
/// given, each with its latest attempts.
pub async fn list_deliveries(
    pool: &PgPool,
    endpoint_id: &str,
    state: Option<DeliveryState>,
    event_id: Option<&str>,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<StoredDelivery>, Error> {
    let rows = sqlx::query(
        "SELECT d.seq, d.id, d.endpoint_id, d.event_id, d.event_type, d.event_time, d.state, \
                d.create_time, d.next_attempt_time, d.deliver_time, d.redelivery \
         FROM webhook_deliveries d WHERE d.endpoint_id = $1 \
           AND ($2::text IS NULL OR d.state = $2) AND ($3::text IS NULL OR d.event_id = $3) \
           AND ($4::bigint IS NULL OR d.seq < $4) \
         ORDER BY d.seq DESC LIMIT $5",
    )
    .bind(endpoint_id)
    .bind(state.map(DeliveryState::as_str))
    .bind(event_id)
    .bind(before)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let mut deliveries = Vec::with_capacity(rows.len());
    for row in rows {
        let state: String = row.try_get("state")?;
        deliveries.push(StoredDelivery {
            seq: row.try_get("seq")?,
            id: row.try_get("id")?,
            endpoint_id: row.try_get("endpoint_id")?,
            event_id: row.try_get("event_id")?,
            event_type: row.try_get("event_type")?,
            event_time: row.try_get("event_time")?,
            state: DeliveryState::parse(&state)
                .ok_or_else(|| Error::Corrupt(format!("webhook delivery state {state}")))?,
            create_time: row.try_get("create_time")?,
            next_attempt_time: row.try_get("next_attempt_time")?,
            deliver_time: row.try_get("deliver_time")?,
            redelivery: row.try_get("redelivery")?,
            attempts: Vec::new(),
        });
    }
    let seqs: Vec<i64> = deliveries.iter().map(|d| d.seq).collect();
    let attempts = sqlx::query(
        "SELECT delivery_seq, number, time, status_code, latency_ms, error FROM ( \
           SELECT a.*, row_number() OVER (PARTITION BY delivery_seq ORDER BY number DESC) AS r \
           FROM webhook_attempts a WHERE delivery_seq = ANY($1)) latest \
         WHERE r <= $2 ORDER BY delivery_seq, number",
    )
    .bind(&seqs)
    .bind(ATTEMPTS_LISTED_MAX)
    .fetch_all(pool)
    .await?;
    for row in attempts {
        let seq: i64 = row.try_get("delivery_seq")?;
        if let Some(delivery) = deliveries.iter_mut().find(|d| d.seq == seq) {
            delivery.attempts.push((
                row.try_get("number")?,
                AttemptRecord {
                    time: row.try_get("time")?,
                    status_code: row.try_get("status_code")?,
                    latency_ms: row.try_get("latency_ms")?,
                    error: row.try_get("error")?,
                },
            ));
        }
    }
    Ok(deliveries)
}

/// The events an endpoint was sent or is due, committed in `[start, end)`, oldest first (one
/// delivery per event), at most `limit`: what `RedeliverEvents` sends again.
pub async fn events_to_redeliver(
    conn: &mut PgConnection,
    endpoint_id: &str,
    start: OffsetDateTime,
    end: OffsetDateTime,
    limit: i64,
) -> Result<Vec<NewDelivery>, Error> {
    let rows = sqlx::query(
        "SELECT event_id, event_type, event_time, lane, body FROM ( \
           SELECT DISTINCT ON (event_id) seq, event_id, event_type, event_time, lane, body \
           FROM webhook_deliveries WHERE endpoint_id = $1 AND event_time >= $2 \
             AND event_time < $3 ORDER BY event_id, seq) once \
         ORDER BY seq LIMIT $4",
    )
    .bind(endpoint_id)
    .bind(start)
    .bind(end)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|row| {
            Ok(NewDelivery {
                id: tandem_runtime::ids::random_id("whd_"),
                endpoint_id: endpoint_id.to_owned(),
                event_id: row.try_get("event_id")?,
                event_type: row.try_get("event_type")?,
                event_time: row.try_get("event_time")?,
                lane: row.try_get("lane")?,
                body: row.try_get("body")?,
            })
        })
        .collect()
}

/// Deletes delivered and canceled deliveries written before `before` (their attempts go with
/// them), at most `limit`; returns how many.
pub async fn purge(pool: &PgPool, before: OffsetDateTime, limit: i64) -> Result<u64, Error> {
    let done = sqlx::query(
        "DELETE FROM webhook_deliveries WHERE seq IN (SELECT seq FROM webhook_deliveries \
         WHERE state <> 'pending' AND create_time < $1 ORDER BY create_time LIMIT $2)",
    )
    .bind(before)
    .bind(limit)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// The feed's frontier now: every event not yet visible has a key at or above it.
pub async fn feed_frontier(conn: &mut PgConnection) -> Result<u64, Error> {
    let text: String = sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text")
        .fetch_one(conn)
        .await?;
    text.parse()
        .map_err(|_| Error::Corrupt(format!("feed frontier {text}")))
}
