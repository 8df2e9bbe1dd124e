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
    /// The fan-out's position when it was created: it receives every event after it.
    pub start: FeedPosition,
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
     e.update_time, e.start_key::text AS start_key, e.start_subject, e.start_sequence, \
     (SELECT count(*) FROM webhook_deliveries d \
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
        start: FeedPosition {
            key: feed_key(row.try_get("start_key")?)?,
            subject: row.try_get("start_subject")?,
            sequence: row.try_get("start_sequence")?,
        },
        creator: row.try_get("creator")?,
        updater: row.try_get("updater")?,
        create_time: row.try_get("create_time")?,
        update_time: row.try_get("update_time")?,
        pending: row.try_get("pending")?,
    })
}

/// A feed key read as text.
fn feed_key(text: String) -> Result<u64, Error> {
    text.parse()
        .map_err(|_| Error::Corrupt(format!("feed key {text}")))
}

/// Writes a new endpoint.
pub async fn insert_endpoint(conn: &mut PgConnection, e: &StoredEndpoint) -> Result<(), Error> {
    let (state, reason) = e.state.as_columns();
    sqlx::query(
        "INSERT INTO webhook_endpoints (id, url, description, event_types, state, \
         disabled_reason, secret_version, secret_sealed, creator, create_time, update_time, \
         start_key, start_subject, start_sequence) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10, $11::text::xid8, $12, $13)",
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
    .bind(e.start.key.to_string())
    .bind(&e.start.subject)
    .bind(e.start.sequence)
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

/// The endpoint `id` unless deleted; with `lock`, its row is locked for the transaction (before
/// any of its lanes, as every writer locks them).
pub async fn endpoint(
    executor: impl PgExecutor<'_>,
    id: &str,
    lock: bool,
) -> Result<Option<StoredEndpoint>, Error> {
    // NO KEY UPDATE: it does not block the foreign-key checks of the fan-out's inserts.
    let lock = if lock { " FOR NO KEY UPDATE OF e" } else { "" };
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

/// Makes an endpoint's lanes due now, each head with the schedule from its start (the endpoint
/// was enabled again). A lane claimed by an attempt still in flight stays claimed.
pub async fn restart_pending(conn: &mut PgConnection, endpoint_id: &str) -> Result<(), Error> {
    sqlx::query(
        "WITH lanes AS (UPDATE webhook_lanes SET next_attempt_time = now() \
           WHERE endpoint_id = $1 AND head_seq IS NOT NULL RETURNING head_seq) \
         UPDATE webhook_deliveries SET round_attempts = 0 WHERE seq IN (SELECT head_seq FROM lanes)",
    )
    .bind(endpoint_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Parks an endpoint's lanes (it was disabled): a claim never reads them until
/// [`restart_pending`].
pub async fn park_lanes(conn: &mut PgConnection, endpoint_id: &str) -> Result<(), Error> {
    sqlx::query(
        "UPDATE webhook_lanes SET next_attempt_time = 'infinity' \
         WHERE endpoint_id = $1 AND head_seq IS NOT NULL",
    )
    .bind(endpoint_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Cancels an endpoint's pending deliveries and empties its lanes; returns how many.
pub async fn cancel_pending(conn: &mut PgConnection, endpoint_id: &str) -> Result<i64, Error> {
    sqlx::query(
        "UPDATE webhook_lanes SET head_seq = NULL, lease_owner = NULL, lease_until = NULL \
         WHERE endpoint_id = $1",
    )
    .bind(endpoint_id)
    .execute(&mut *conn)
    .await?;
    let done = sqlx::query(
        "UPDATE webhook_deliveries SET state = 'canceled' \
         WHERE endpoint_id = $1 AND state = 'pending'",
    )
    .bind(endpoint_id)
    .execute(conn)
    .await?;
    Ok(i64::try_from(done.rows_affected()).unwrap_or(i64::MAX))
}

/// The fan-out's position, its row locked for the transaction; `None` while another instance
/// holds it, unless `wait` (an endpoint's creation waits for the fan-out step in progress, so
/// its start is a position no step is past).
pub async fn lock_fanout(
    conn: &mut PgConnection,
    wait: bool,
) -> Result<Option<FeedPosition>, Error> {
    let skip = if wait { "" } else { " SKIP LOCKED" };
    let row = sqlx::query(&format!(
        "SELECT feed_key::text AS key, subject, sequence FROM webhook_fanout WHERE id = 1 \
         FOR UPDATE{skip}"
    ))
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
#[derive(Debug, Clone)]
pub struct Receiver {
    /// The endpoint.
    pub id: String,
    /// The types it takes; empty for all.
    pub event_types: Vec<String>,
    /// The fan-out's position when it was created: it takes the events after it.
    pub start: FeedPosition,
}

/// The endpoints events are fanned out to (enabled or disabled: a disabled one keeps its
/// events), with their filters, share-locked in id order for the transaction: a deletion waits
/// for the step, then cancels what it wrote, and a step after it no longer sees the endpoint.
pub async fn fanout_endpoints(conn: &mut PgConnection) -> Result<Vec<Receiver>, Error> {
    let rows = sqlx::query(
        "SELECT id, event_types, start_key::text AS start_key, start_subject, start_sequence \
         FROM webhook_endpoints WHERE state <> 'deleted' ORDER BY id FOR SHARE",
    )
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|row| {
            Ok(Receiver {
                id: row.try_get("id")?,
                event_types: row.try_get("event_types")?,
                start: FeedPosition {
                    key: feed_key(row.try_get("start_key")?)?,
                    subject: row.try_get("start_subject")?,
                    sequence: row.try_get("start_sequence")?,
                },
            })
        })
        .collect()
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

/// The statement's tail that gives each lane of the deliveries `written` (a CTE of their `seq`,
/// `endpoint_id` and `lane`) without a head its first one, due now (parked while its endpoint is
/// disabled), locking lanes in key order.
const LANES_UPSERT: &str = "\
    INSERT INTO webhook_lanes AS l (endpoint_id, lane, head_seq, next_attempt_time) \
    SELECT w.endpoint_id, w.lane, min(w.seq), \
           CASE WHEN min(e.state) = 'enabled' THEN now() ELSE 'infinity' END \
    FROM written w JOIN webhook_endpoints e ON e.id = w.endpoint_id \
    GROUP BY w.endpoint_id, w.lane ORDER BY w.endpoint_id, w.lane \
    ON CONFLICT (endpoint_id, lane) DO UPDATE SET \
      head_seq = coalesce(l.head_seq, EXCLUDED.head_seq), \
      next_attempt_time = CASE WHEN l.head_seq IS NULL THEN EXCLUDED.next_attempt_time \
                               ELSE l.next_attempt_time END";

/// Writes deliveries in order and gives each lane without a head its first one, due now (parked
/// while its endpoint is disabled);
/// `redelivery` marks those `RedeliverEvents` made. The fan-out's are written once per endpoint
/// and event (a second write is skipped). Lanes are locked in key order, as the worker locks
/// them, so the two never deadlock.
pub async fn insert_deliveries(
    conn: &mut PgConnection,
    deliveries: &[NewDelivery],
    redelivery: bool,
) -> Result<(), Error> {
    if deliveries.is_empty() {
        return Ok(());
    }
    let column = |f: fn(&NewDelivery) -> &str| deliveries.iter().map(f).collect::<Vec<_>>();
    sqlx::query(&format!(
        "WITH written AS ( \
           INSERT INTO webhook_deliveries (id, endpoint_id, event_id, event_type, event_time, \
             lane, body, redelivery, state, create_time) \
           SELECT d.id, d.endpoint_id, d.event_id, d.event_type, d.event_time, d.lane, d.body, \
                  $8, 'pending', now() \
           FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], \
                       $6::text[], $7::text[]) WITH ORDINALITY \
                AS d (id, endpoint_id, event_id, event_type, event_time, lane, body, n) \
           ORDER BY d.n \
           ON CONFLICT (endpoint_id, event_id) WHERE NOT redelivery DO NOTHING \
           RETURNING seq, endpoint_id, lane) {LANES_UPSERT}"
    ))
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
    /// Its lane.
    pub lane: String,
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
    /// When its event happened.
    pub event_time: OffsetDateTime,
    /// Whether it is a redelivery the treasury asked for.
    pub redelivery: bool,
}

/// Claims up to `limit` due attempts for `owner` until `lease_ms` from now: the heads of lanes
/// whose endpoint is enabled, whose time has come and that no live claim holds, at most
/// `per_endpoint` in flight to one endpoint (as this instance sees the others' claims), the
/// longest due first. Reads due lanes only (a disabled endpoint's are parked), and skips lanes
/// another transaction holds, so it never waits on (or deadlocks with) the fan-out or a record.
pub async fn claim(
    pool: &PgPool,
    owner: &str,
    lease_ms: i64,
    limit: i64,
    per_endpoint: i64,
) -> Result<Vec<Claimed>, Error> {
    let heads: Vec<i64> = sqlx::query_scalar(
        "WITH busy AS (SELECT endpoint_id, count(*) AS n FROM webhook_lanes \
           WHERE lease_until > now() GROUP BY endpoint_id), \
         ready AS (SELECT l.endpoint_id, l.lane, l.next_attempt_time, \
             row_number() OVER (PARTITION BY l.endpoint_id ORDER BY l.next_attempt_time) AS rank \
           FROM webhook_lanes l JOIN webhook_endpoints e ON e.id = l.endpoint_id \
           WHERE l.head_seq IS NOT NULL AND l.next_attempt_time <= now() \
             AND e.state = 'enabled' AND (l.lease_until IS NULL OR l.lease_until <= now())), \
         chosen AS (SELECT r.endpoint_id, r.lane FROM ready r LEFT JOIN busy b USING (endpoint_id) \
           WHERE r.rank + coalesce(b.n, 0) <= $4 ORDER BY r.next_attempt_time LIMIT $3), \
         locked AS (SELECT l.endpoint_id, l.lane FROM webhook_lanes l \
           JOIN chosen c ON c.endpoint_id = l.endpoint_id AND c.lane = l.lane \
           WHERE l.head_seq IS NOT NULL AND l.next_attempt_time <= now() \
             AND (l.lease_until IS NULL OR l.lease_until <= now()) \
           ORDER BY l.endpoint_id, l.lane FOR UPDATE OF l SKIP LOCKED) \
         UPDATE webhook_lanes l \
         SET lease_owner = $1, lease_until = now() + $2 * interval '1 millisecond' \
         FROM locked WHERE l.endpoint_id = locked.endpoint_id AND l.lane = locked.lane \
         RETURNING l.head_seq",
    )
    .bind(owner)
    .bind(lease_ms)
    .bind(limit)
    .bind(per_endpoint)
    .fetch_all(pool)
    .await?;
    if heads.is_empty() {
        return Ok(Vec::new());
    }
    // A statement of its own: its snapshot sees every head (and attempt count) the claimed
    // lanes' last writers committed.
    let rows = sqlx::query(
        "SELECT d.seq, d.endpoint_id, d.lane, d.event_id, d.body, d.attempts, d.round_attempts, \
           d.event_time, d.redelivery, \
           e.url, e.secret_version, e.secret_sealed, \
           CASE WHEN e.previous_secret_until > now() THEN e.previous_secret_sealed END \
             AS previous_secret_sealed, e.failing_since \
         FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id \
         WHERE d.seq = ANY($1)",
    )
    .bind(&heads)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|row| {
            Ok(Claimed {
                seq: row.try_get("seq")?,
                endpoint_id: row.try_get("endpoint_id")?,
                lane: row.try_get("lane")?,
                event_id: row.try_get("event_id")?,
                body: row.try_get("body")?,
                attempts: row.try_get("attempts")?,
                round_attempts: row.try_get("round_attempts")?,
                url: row.try_get("url")?,
                secret_version: row.try_get("secret_version")?,
                secret_sealed: row.try_get("secret_sealed")?,
                previous_secret_sealed: row.try_get("previous_secret_sealed")?,
                failing_since: row.try_get("failing_since")?,
                event_time: row.try_get("event_time")?,
                redelivery: row.try_get("redelivery")?,
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

/// A finished attempt with its effect.
#[derive(Debug, Clone)]
pub struct Finished {
    /// The claim it answered.
    pub claimed: Claimed,
    /// The attempt.
    pub attempt: AttemptRecord,
    /// What it changes.
    pub effect: AttemptEffect,
}

/// Records finished attempts in one transaction: each attempt, its delivery's state, its lane
/// (the next head after a delivery, the next attempt's time after a failure) and its endpoint's
/// (failing since when, disabled). An attempt whose claim `owner` lost (another instance took
/// the lane over after the lease ran out) records nothing. Returns how many were recorded.
pub async fn record_attempts(
    pool: &PgPool,
    owner: &str,
    finished: &[Finished],
) -> Result<usize, Error> {
    if finished.is_empty() {
        return Ok(0);
    }
    // Per endpoint: a success clears its failing time, a failure starts it unless it runs, a
    // disabling disables (an endpoint deleted or disabled meanwhile stays as it is).
    let mut endpoints: Vec<(&str, bool, OffsetDateTime, Option<EndpointState>)> = Vec::new();
    for f in finished {
        let disable = match f.effect {
            AttemptEffect::Disable(state) => Some(state),
            _ => None,
        };
        let success = matches!(f.effect, AttemptEffect::Delivered);
        match endpoints.iter_mut().find(|e| e.0 == f.claimed.endpoint_id) {
            Some(entry) => {
                entry.1 |= success;
                entry.2 = entry.2.min(f.attempt.time);
                entry.3 = entry.3.or(disable);
            }
            None => endpoints.push((&f.claimed.endpoint_id, success, f.attempt.time, disable)),
        }
    }
    // Only endpoints whose row changes are written (a success while none was failing changes
    // nothing), so committers do not queue on a busy endpoint's row.
    // (The failing time is as the claims read it: a change this skips on a stale read is made
    // by the endpoint's next attempt.)
    endpoints.retain(|(id, success, _, disable)| {
        let failing = finished
            .iter()
            .any(|f| f.claimed.endpoint_id == *id && f.claimed.failing_since.is_some());
        disable.is_some() || *success == failing
    });
    endpoints.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut tx = pool.begin().await?;
    // Endpoints first, then lanes in key order: the order every writer of both takes.
    if !endpoints.is_empty() {
        sqlx::query(
            "SELECT 1 FROM webhook_endpoints WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE",
        )
        .bind(endpoints.iter().map(|e| e.0).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
    }
    // The lanes still claimed by this owner.
    let mut keys: Vec<(&str, &str)> = finished
        .iter()
        .map(|f| (f.claimed.endpoint_id.as_str(), f.claimed.lane.as_str()))
        .collect();
    keys.sort_unstable();
    let held: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT l.endpoint_id, l.lane, l.head_seq FROM webhook_lanes l \
         JOIN UNNEST($1::text[], $2::text[]) AS k (endpoint_id, lane) \
           ON l.endpoint_id = k.endpoint_id AND l.lane = k.lane \
         WHERE l.lease_owner = $3 AND l.head_seq IS NOT NULL \
         ORDER BY l.endpoint_id, l.lane FOR UPDATE OF l",
    )
    .bind(keys.iter().map(|k| k.0).collect::<Vec<_>>())
    .bind(keys.iter().map(|k| k.1).collect::<Vec<_>>())
    .bind(owner)
    .fetch_all(&mut *tx)
    .await?;
    let kept: Vec<&Finished> = finished
        .iter()
        .filter(|f| {
            held.iter().any(|(endpoint, lane, head)| {
                *endpoint == f.claimed.endpoint_id
                    && *lane == f.claimed.lane
                    && *head == f.claimed.seq
            })
        })
        .collect();
    if kept.is_empty() {
        tx.rollback().await?;
        return Ok(0);
    }
    let seqs: Vec<i64> = kept.iter().map(|f| f.claimed.seq).collect();
    let delivered: Vec<bool> = kept
        .iter()
        .map(|f| matches!(f.effect, AttemptEffect::Delivered))
        .collect();
    let disabled: Vec<bool> = kept
        .iter()
        .map(|f| matches!(f.effect, AttemptEffect::Disable(_)))
        .collect();
    // A disabled endpoint's lanes are parked until it is enabled again.
    let waits: Vec<Option<i64>> = kept
        .iter()
        .map(|f| match f.effect {
            AttemptEffect::Retry { next_in_ms } => Some(next_in_ms),
            AttemptEffect::Delivered => Some(0),
            AttemptEffect::Disable(_) => None,
        })
        .collect();
    sqlx::query(
        "INSERT INTO webhook_attempts (delivery_seq, number, time, status_code, latency_ms, \
         error) SELECT * FROM UNNEST($1::bigint[], $2::int[], $3::timestamptz[], $4::int[], \
         $5::bigint[], $6::text[]) ON CONFLICT DO NOTHING",
    )
    .bind(&seqs)
    .bind(
        kept.iter()
            .map(|f| f.claimed.attempts + 1)
            .collect::<Vec<_>>(),
    )
    .bind(kept.iter().map(|f| f.attempt.time).collect::<Vec<_>>())
    .bind(
        kept.iter()
            .map(|f| f.attempt.status_code)
            .collect::<Vec<_>>(),
    )
    .bind(
        kept.iter()
            .map(|f| f.attempt.latency_ms)
            .collect::<Vec<_>>(),
    )
    .bind(
        kept.iter()
            .map(|f| f.attempt.error.as_str())
            .collect::<Vec<_>>(),
    )
    .execute(&mut *tx)
    .await?;
    // A disabling restarts the schedule for when the endpoint is enabled again.
    sqlx::query(
        "UPDATE webhook_deliveries d SET attempts = d.attempts + 1, \
         round_attempts = CASE WHEN r.disabled THEN 0 ELSE d.round_attempts + 1 END, \
         state = CASE WHEN r.delivered THEN 'delivered' ELSE d.state END, \
         deliver_time = CASE WHEN r.delivered THEN now() END \
         FROM UNNEST($1::bigint[], $2::bool[], $3::bool[]) AS r (seq, delivered, disabled) \
         WHERE d.seq = r.seq",
    )
    .bind(&seqs)
    .bind(&delivered)
    .bind(&disabled)
    .execute(&mut *tx)
    .await?;
    // Each lane's next head (read now that this transaction holds the lane: a delivery the
    // fan-out committed meanwhile is seen) or its next attempt's time; the claim ends.
    sqlx::query(
        "UPDATE webhook_lanes l SET \
         head_seq = CASE WHEN r.delivered THEN (SELECT min(d.seq) FROM webhook_deliveries d \
           WHERE d.endpoint_id = l.endpoint_id AND d.lane = l.lane AND d.state = 'pending') \
           ELSE l.head_seq END, \
         next_attempt_time = coalesce(now() + r.wait_ms * interval '1 millisecond', \
                                      'infinity'), \
         lease_owner = NULL, lease_until = NULL \
         FROM UNNEST($1::text[], $2::text[], $3::bool[], $4::bigint[]) \
           AS r (endpoint_id, lane, delivered, wait_ms) \
         WHERE l.endpoint_id = r.endpoint_id AND l.lane = r.lane",
    )
    .bind(
        kept.iter()
            .map(|f| f.claimed.endpoint_id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        kept.iter()
            .map(|f| f.claimed.lane.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(&delivered)
    .bind(&waits)
    .execute(&mut *tx)
    .await?;
    let columns: Vec<(Option<&str>, Option<&str>)> = endpoints
        .iter()
        .map(|e| match e.3 {
            Some(state) => {
                let (state, reason) = state.as_columns();
                (Some(state), reason)
            }
            None => (None, None),
        })
        .collect();
    sqlx::query(
        "UPDATE webhook_endpoints e SET \
         failing_since = CASE WHEN r.success THEN NULL \
                              ELSE coalesce(e.failing_since, r.time) END, \
         state = CASE WHEN r.state IS NOT NULL AND e.state = 'enabled' THEN r.state \
                      ELSE e.state END, \
         disabled_reason = CASE WHEN r.state IS NOT NULL AND e.state = 'enabled' THEN r.reason \
                                ELSE e.disabled_reason END, \
         update_time = CASE WHEN r.state IS NOT NULL AND e.state = 'enabled' THEN now() \
                            ELSE e.update_time END \
         FROM UNNEST($1::text[], $2::bool[], $3::timestamptz[], $4::text[], $5::text[]) \
           AS r (id, success, time, state, reason) \
         WHERE e.id = r.id",
    )
    .bind(endpoints.iter().map(|e| e.0).collect::<Vec<_>>())
    .bind(endpoints.iter().map(|e| e.1).collect::<Vec<_>>())
    .bind(endpoints.iter().map(|e| e.2).collect::<Vec<_>>())
    .bind(columns.iter().map(|c| c.0).collect::<Vec<_>>())
    .bind(columns.iter().map(|c| c.1).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(kept.len())
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
    /// When its next attempt is due, for the head of its lane (the others wait their turn).
    pub next_attempt_time: Option<OffsetDateTime>,
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
                d.create_time, d.deliver_time, d.redelivery, l.next_attempt_time \
         FROM webhook_deliveries d LEFT JOIN webhook_lanes l \
           ON l.endpoint_id = d.endpoint_id AND l.lane = d.lane AND l.head_seq = d.seq \
         WHERE d.endpoint_id = $1 \
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

/// Queues again, in the database (no body passes through the server), the events an endpoint
/// was sent or is due, committed in `[start, end)`, oldest first, as redeliveries in lanes of
/// their own (`<lane>#redelivery/<request_id>`): at once, in order per subject, beside any
/// original still waiting. Returns how many, or `None` (writing nothing) when more than `limit`.
pub async fn redeliver(
    conn: &mut PgConnection,
    endpoint_id: &str,
    start: OffsetDateTime,
    end: OffsetDateTime,
    limit: i64,
    request_id: &str,
) -> Result<Option<i64>, Error> {
    let count: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT 1 FROM webhook_deliveries WHERE endpoint_id = $1 \
         AND NOT redelivery AND event_time >= $2 AND event_time < $3 LIMIT $4) picked",
    )
    .bind(endpoint_id)
    .bind(start)
    .bind(end)
    .bind(limit + 1)
    .fetch_one(&mut *conn)
    .await?;
    if count > limit {
        return Ok(None);
    }
    let ids: Vec<String> = (0..count)
        .map(|_| tandem_runtime::ids::random_id("whd_"))
        .collect();
    sqlx::query(&format!(
        "WITH picked AS ( \
           SELECT seq, event_id, event_type, event_time, lane, body, \
                  row_number() OVER (ORDER BY seq) AS n \
           FROM webhook_deliveries WHERE endpoint_id = $1 AND NOT redelivery \
             AND event_time >= $2 AND event_time < $3), \
         written AS ( \
           INSERT INTO webhook_deliveries (id, endpoint_id, event_id, event_type, event_time, \
             lane, body, redelivery, state, create_time) \
           SELECT i.id, $1, p.event_id, p.event_type, p.event_time, \
                  p.lane || '#redelivery/' || $5, p.body, true, 'pending', now() \
           FROM picked p JOIN UNNEST($4::text[]) WITH ORDINALITY AS i (id, n) ON i.n = p.n \
           ORDER BY p.n \
           RETURNING seq, endpoint_id, lane) {LANES_UPSERT}"
    ))
    .bind(endpoint_id)
    .bind(start)
    .bind(end)
    .bind(&ids)
    .bind(request_id)
    .execute(conn)
    .await?;
    Ok(Some(count))
}

/// Deletes up to `limit` delivered and canceled deliveries that ended before `before` (their
/// attempts go with them) and up to `limit` lanes with nothing pending (skipping any a writer
/// holds); returns how many of each.
pub async fn purge(pool: &PgPool, before: OffsetDateTime, limit: i64) -> Result<(u64, u64), Error> {
    let deliveries = sqlx::query(
        "DELETE FROM webhook_deliveries WHERE seq IN (SELECT seq FROM webhook_deliveries \
         WHERE state <> 'pending' AND coalesce(deliver_time, create_time) < $1 LIMIT $2)",
    )
    .bind(before)
    .bind(limit)
    .execute(pool)
    .await?;
    // An idle lane the fan-out fills meanwhile has a head again and stays.
    let lanes = sqlx::query(
        "DELETE FROM webhook_lanes WHERE (endpoint_id, lane) IN (SELECT endpoint_id, lane \
         FROM webhook_lanes WHERE head_seq IS NULL LIMIT $1 FOR UPDATE SKIP LOCKED)",
    )
    .bind(limit)
    .execute(pool)
    .await?;
    Ok((deliveries.rows_affected(), lanes.rows_affected()))
}

/// The feed's frontier now: every event not yet visible has a key at or above it.
pub async fn feed_frontier(conn: &mut PgConnection) -> Result<u64, Error> {
    let text: String = sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text")
        .fetch_one(conn)
        .await?;
    text.parse()
        .map_err(|_| Error::Corrupt(format!("feed frontier {text}")))
}
