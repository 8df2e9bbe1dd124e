//! The SQL of charges, refunds and their idempotency records.

use std::collections::BTreeMap;

use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgExecutor, Row as _};
use tandem_money::{Currency, Money};
use time::OffsetDateTime;

use crate::domain::charge::{
    ChargeId, ChargeState, ChargeView, Decline, DeclineCode, Metadata, NextAction, RefundId,
    RefundState, RefundView,
};
use crate::domain::{Brand, Token};
use crate::error::Error;

fn corrupt(column: &str) -> sqlx::Error {
    sqlx::Error::ColumnDecode {
        index: column.to_owned(),
        source: "value violates the vault's invariants".into(),
    }
}

fn charge_from_row(row: &PgRow) -> Result<ChargeView, sqlx::Error> {
    let currency: String = row.try_get("currency")?;
    let currency = Currency::parse(&currency).map_err(|_| corrupt("currency"))?;
    let amount = |column: &str| -> Result<Money, sqlx::Error> {
        Ok(Money::new(currency, row.try_get(column)?))
    };
    let state: String = row.try_get("state")?;
    let brand: String = row.try_get("brand")?;
    let decline_code: Option<String> = row.try_get("decline_code")?;
    let next_action: Option<String> = row.try_get("next_action")?;
    let decline = match (decline_code, next_action) {
        (Some(code), Some(action)) => Some(Decline {
            code: DeclineCode::parse(&code).ok_or_else(|| corrupt("decline_code"))?,
            next_action: NextAction::parse(&action).ok_or_else(|| corrupt("next_action"))?,
            processor_code: row.try_get("processor_decline_code")?,
        }),
        _ => None,
    };
    let metadata: sqlx::types::Json<BTreeMap<String, String>> = row.try_get("metadata")?;
    Ok(ChargeView {
        id: ChargeId::from_stored(row.try_get("id")?),
        request_id: row.try_get("request_id")?,
        token: Token::from_stored(row.try_get("token")?),
        brand: Brand::parse(&brand).ok_or_else(|| corrupt("brand"))?,
        last4: row.try_get("last4")?,
        requested: amount("requested_minor")?,
        approved: amount("approved_minor")?,
        captured: amount("captured_minor")?,
        refunded: amount("refunded_minor")?,
        allow_partial_approval: row.try_get("allow_partial_approval")?,
        state: ChargeState::parse(&state).ok_or_else(|| corrupt("state"))?,
        decline,
        processor: row.try_get("processor")?,
        processor_reference: row.try_get("processor_reference")?,
        authorization_code: row.try_get("authorization_code")?,
        description: row.try_get("description")?,
        statement_descriptor: row.try_get("statement_descriptor")?,
        reference: row.try_get("reference")?,
        metadata: Metadata::from_stored(metadata.0),
        pending_request_id: row.try_get("pending_request_id")?,
        refunds: Vec::new(),
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        authorize_time: row.try_get("authorize_time")?,
        capture_time: row.try_get("capture_time")?,
        void_time: row.try_get("void_time")?,
    })
}

fn refund_from_row(row: &PgRow, currency: Currency) -> Result<RefundView, sqlx::Error> {
    let state: String = row.try_get("state")?;
    Ok(RefundView {
        id: RefundId::from_stored(row.try_get("id")?),
        request_id: row.try_get("request_id")?,
        amount: Money::new(currency, row.try_get("amount_minor")?),
        state: RefundState::parse(&state).ok_or_else(|| corrupt("state"))?,
        processor_reference: row.try_get("processor_reference")?,
        reason: row.try_get("reason")?,
        created_at: row.try_get("created_at")?,
        complete_time: row.try_get("complete_time")?,
    })
}

/// A charge about to be recorded as pending.
#[derive(Debug)]
pub struct NewCharge<'a> {
    /// The charge.
    pub view: &'a ChargeView,
    /// Keyed hash of the `Authorize` request.
    pub request_hash: &'a [u8; 32],
}

/// Records a new `Authorize` (its request and its pending charge) in one statement; false,
/// writing nothing, if the request id exists.
pub async fn insert_pending_charge(
    conn: &mut PgConnection,
    charge: &NewCharge<'_>,
) -> Result<bool, Error> {
    let view = charge.view;
    let inserted = sqlx::query(
        "WITH request AS (INSERT INTO charge_requests (request_id, rpc, request_hash, charge_id) \
         VALUES ($2, 'Authorize', $17, $1) ON CONFLICT (request_id) DO NOTHING \
         RETURNING request_id) \
         INSERT INTO charges (id, request_id, token, brand, last4, currency, requested_minor, \
         allow_partial_approval, state, processor, description, statement_descriptor, \
         reference, metadata, created_at, updated_at) \
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16 \
         WHERE EXISTS (SELECT 1 FROM request)",
    )
    .bind(view.id.as_str())
    .bind(&view.request_id)
    .bind(view.token.as_str())
    .bind(view.brand.as_str())
    .bind(&view.last4)
    .bind(view.requested.currency.code())
    .bind(view.requested.minor_units)
    .bind(view.allow_partial_approval)
    .bind(view.state.as_str())
    .bind(&view.processor)
    .bind(&view.description)
    .bind(&view.statement_descriptor)
    .bind(&view.reference)
    .bind(sqlx::types::Json(view.metadata.entries()))
    .bind(view.created_at)
    .bind(view.updated_at)
    .bind(charge.request_hash.as_slice())
    .execute(conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// The idempotency record of a `ChargeService` request.
#[derive(Debug, Clone)]
pub struct ChargeRequest {
    /// `Authorize`, `Capture`, `Void` or `Refund`.
    pub rpc: String,
    /// Keyed hash of the request.
    pub request_hash: [u8; 32],
    /// The charge it concerns.
    pub charge_id: ChargeId,
    /// The refund it created.
    pub refund_id: Option<RefundId>,
    /// The amount sent to the processor (capture, refund).
    pub amount_minor: Option<i64>,
    /// The decline code of a capture or void the processor refused.
    pub refusal: Option<DeclineCode>,
}

/// Reads the idempotency record of `request_id`.
pub async fn charge_request(
    executor: impl PgExecutor<'_>,
    request_id: &str,
) -> Result<Option<ChargeRequest>, Error> {
    let row = sqlx::query(
        "SELECT rpc, request_hash, charge_id, refund_id, amount_minor, refusal \
         FROM charge_requests WHERE request_id = $1",
    )
    .bind(request_id)
    .fetch_optional(executor)
    .await?;
    row.map(|row| {
        let hash: Vec<u8> = row.try_get("request_hash")?;
        Ok(ChargeRequest {
            rpc: row.try_get("rpc")?,
            request_hash: hash
                .try_into()
                .map_err(|_| Error::Corrupt("charge_requests.request_hash"))?,
            charge_id: ChargeId::from_stored(row.try_get("charge_id")?),
            refund_id: row
                .try_get::<Option<String>, _>("refund_id")?
                .map(RefundId::from_stored),
            amount_minor: row.try_get("amount_minor")?,
            refusal: row
                .try_get::<Option<String>, _>("refusal")?
                .map(|code| DeclineCode::parse(&code).ok_or(Error::Corrupt("refusal")))
                .transpose()?,
        })
    })
    .transpose()
}

/// Records a capture, void or refund request; false, writing nothing, if the id exists.
pub async fn insert_charge_request(
    conn: &mut PgConnection,
    request_id: &str,
    rpc: &str,
    request_hash: &[u8; 32],
    charge_id: &ChargeId,
    refund_id: Option<&RefundId>,
    amount_minor: Option<i64>,
) -> Result<bool, Error> {
    let inserted = sqlx::query(
        "INSERT INTO charge_requests (request_id, rpc, request_hash, charge_id, refund_id, \
         amount_minor) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (request_id) DO NOTHING",
    )
    .bind(request_id)
    .bind(rpc)
    .bind(request_hash.as_slice())
    .bind(charge_id.as_str())
    .bind(refund_id.map(RefundId::as_str))
    .bind(amount_minor)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// Records that the processor refused a capture or void, for replays.
pub async fn record_refusal(
    conn: &mut PgConnection,
    request_id: &str,
    code: DeclineCode,
) -> Result<(), Error> {
    sqlx::query("UPDATE charge_requests SET refusal = $2 WHERE request_id = $1")
        .bind(request_id)
        .bind(code.as_str())
        .execute(conn)
        .await?;
    Ok(())
}

async fn with_refunds(
    conn: &mut PgConnection,
    charge: Option<ChargeView>,
) -> Result<Option<ChargeView>, Error> {
    let Some(mut charge) = charge else {
        return Ok(None);
    };
    // A refund is recorded only for a captured charge (charging refuses the others, under
    // the charge's row lock), and a charge never leaves the captured states: a charge in any
    // other state has no refunds to read.
    match charge.state {
        ChargeState::Pending
        | ChargeState::Authorized
        | ChargeState::Declined
        | ChargeState::Voided => return Ok(Some(charge)),
        ChargeState::Captured | ChargeState::PartiallyRefunded | ChargeState::Refunded => {}
    }
    let rows =
        sqlx::query("SELECT * FROM charge_refunds WHERE charge_id = $1 ORDER BY created_at, id")
            .bind(charge.id.as_str())
            .fetch_all(&mut *conn)
            .await?;
    let currency = charge.requested.currency;
    charge.refunds = rows
        .iter()
        .map(|row| refund_from_row(row, currency))
        .collect::<Result<_, _>>()?;
    Ok(Some(charge))
}

/// Reads a charge with its refunds; `lock` also locks its row until the transaction ends.
pub async fn charge(
    conn: &mut PgConnection,
    id: &ChargeId,
    lock: bool,
) -> Result<Option<ChargeView>, Error> {
    let sql = if lock {
        "SELECT * FROM charges WHERE id = $1 FOR UPDATE"
    } else {
        "SELECT * FROM charges WHERE id = $1"
    };
    let row = sqlx::query(sql)
        .bind(id.as_str())
        .fetch_optional(&mut *conn)
        .await?;
    let charge = row.as_ref().map(charge_from_row).transpose()?;
    with_refunds(conn, charge).await
}

/// Reads the charge created by the `Authorize` with `request_id`.
pub async fn charge_by_request(
    conn: &mut PgConnection,
    request_id: &str,
) -> Result<Option<ChargeView>, Error> {
    let row = sqlx::query("SELECT * FROM charges WHERE request_id = $1")
        .bind(request_id)
        .fetch_optional(&mut *conn)
        .await?;
    let charge = row.as_ref().map(charge_from_row).transpose()?;
    with_refunds(conn, charge).await
}

/// How an authorization ended.
#[derive(Debug, Clone)]
pub enum AuthorizationOutcome {
    /// A hold is in place.
    Approved {
        /// Amount held.
        approved_minor: i64,
        /// Processor reference.
        reference: String,
        /// Approval code.
        authorization_code: String,
    },
    /// Refused.
    Declined {
        /// Processor reference, if any.
        reference: String,
        /// Why, and what next.
        decline: Decline,
    },
}

/// The charge a settling write returned (`RETURNING *`). Each such write requires a state that
/// was never captured (pending or authorized, under the row's lock), and refunds are recorded
/// only for captured charges, so the charge has none: there are no refunds to read.
fn unrefunded_charge(row: Option<PgRow>) -> Result<Option<ChargeView>, Error> {
    Ok(row.as_ref().map(charge_from_row).transpose()?)
}

/// Settles a pending charge and returns it as settled; a charge no longer pending is left as
/// it is (`None`: read it).
pub async fn record_authorization(
    conn: &mut PgConnection,
    id: &ChargeId,
    outcome: &AuthorizationOutcome,
    now: OffsetDateTime,
) -> Result<Option<ChargeView>, Error> {
    let query = match outcome {
        AuthorizationOutcome::Approved {
            approved_minor,
            reference,
            authorization_code,
        } => sqlx::query(
            "UPDATE charges SET state = 'authorized', approved_minor = $2, \
             processor_reference = $3, authorization_code = $4, authorize_time = $5, \
             updated_at = $5 WHERE id = $1 AND state = 'pending' RETURNING *",
        )
        .bind(id.as_str())
        .bind(*approved_minor)
        .bind(reference)
        .bind(authorization_code)
        .bind(now),
        AuthorizationOutcome::Declined { reference, decline } => sqlx::query(
            "UPDATE charges SET state = 'declined', decline_code = $2, next_action = $3, \
             processor_decline_code = $4, processor_reference = $5, authorize_time = $6, \
             updated_at = $6 WHERE id = $1 AND state = 'pending' RETURNING *",
        )
        .bind(id.as_str())
        .bind(decline.code.as_str())
        .bind(decline.next_action.as_str())
        .bind(&decline.processor_code)
        .bind(reference)
        .bind(now),
    };
    unrefunded_charge(query.fetch_optional(conn).await?)
}

/// Records a capture or void request of an authorized charge and marks the charge as waiting
/// for its answer (`pending_request_id`), in one statement. Returns the charge as marked, or
/// `None`, writing nothing, if the request id exists.
///
/// The charge is authorized and locked by the caller, so it has no refunds yet: they are
/// recorded only for captured charges.
pub async fn insert_pending_follow_up(
    conn: &mut PgConnection,
    request_id: &str,
    rpc: &str,
    request_hash: &[u8; 32],
    charge_id: &ChargeId,
    amount_minor: Option<i64>,
    now: OffsetDateTime,
) -> Result<Option<ChargeView>, Error> {
    let row = sqlx::query(
        "WITH request AS (INSERT INTO charge_requests (request_id, rpc, request_hash, \
         charge_id, amount_minor) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (request_id) DO NOTHING RETURNING charge_id) \
         UPDATE charges SET pending_request_id = $1, updated_at = $6 \
         WHERE id = (SELECT charge_id FROM request) RETURNING *",
    )
    .bind(request_id)
    .bind(rpc)
    .bind(request_hash.as_slice())
    .bind(charge_id.as_str())
    .bind(amount_minor)
    .bind(now)
    .fetch_optional(conn)
    .await?;
    unrefunded_charge(row)
}

/// Clears the in-flight marker of `request_id` (and only of it: a late answer to one request
/// never clears another's).
pub async fn clear_pending_request(
    conn: &mut PgConnection,
    id: &ChargeId,
    request_id: &str,
    now: OffsetDateTime,
) -> Result<(), Error> {
    sqlx::query(
        "UPDATE charges SET pending_request_id = NULL, updated_at = $3 \
         WHERE id = $1 AND pending_request_id = $2",
    )
    .bind(id.as_str())
    .bind(request_id)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records a confirmed capture of `amount_minor` and returns the charge as captured; a
/// charge no longer authorized is left as it is (`None`: read it).
pub async fn record_capture(
    conn: &mut PgConnection,
    id: &ChargeId,
    amount_minor: i64,
    now: OffsetDateTime,
) -> Result<Option<ChargeView>, Error> {
    let row = sqlx::query(
        "UPDATE charges SET state = 'captured', captured_minor = $2, capture_time = $3, \
         updated_at = $3, pending_request_id = NULL WHERE id = $1 AND state = 'authorized' \
         RETURNING *",
    )
    .bind(id.as_str())
    .bind(amount_minor)
    .bind(now)
    .fetch_optional(conn)
    .await?;
    unrefunded_charge(row)
}

/// Records a confirmed void and returns the charge as voided; a charge no longer authorized
/// is left as it is (`None`: read it).
pub async fn record_void(
    conn: &mut PgConnection,
    id: &ChargeId,
    now: OffsetDateTime,
) -> Result<Option<ChargeView>, Error> {
    let row = sqlx::query(
        "UPDATE charges SET state = 'voided', void_time = $2, updated_at = $2, \
         pending_request_id = NULL WHERE id = $1 AND state = 'authorized' RETURNING *",
    )
    .bind(id.as_str())
    .bind(now)
    .fetch_optional(conn)
    .await?;
    unrefunded_charge(row)
}

/// Records a new pending refund.
pub async fn insert_refund(
    conn: &mut PgConnection,
    refund: &RefundView,
    charge_id: &ChargeId,
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO charge_refunds (id, charge_id, request_id, amount_minor, state, reason, \
         created_at) VALUES ($1, $2, $3, $4, 'pending', $5, $6)",
    )
    .bind(refund.id.as_str())
    .bind(charge_id.as_str())
    .bind(&refund.request_id)
    .bind(refund.amount.minor_units)
    .bind(&refund.reason)
    .bind(refund.created_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Settles a pending refund and, when it succeeded, adds it to its charge.
pub async fn record_refund(
    conn: &mut PgConnection,
    refund_id: &RefundId,
    reference: Option<&str>,
    now: OffsetDateTime,
) -> Result<(), Error> {
    let state = if reference.is_some() {
        "succeeded"
    } else {
        "failed"
    };
    let settled: Option<(String, i64)> = sqlx::query_as(
        "UPDATE charge_refunds SET state = $2, processor_reference = $3, complete_time = $4 \
         WHERE id = $1 AND state = 'pending' RETURNING charge_id, amount_minor",
    )
    .bind(refund_id.as_str())
    .bind(state)
    .bind(reference.unwrap_or(""))
    .bind(now)
    .fetch_optional(&mut *conn)
    .await?;
    if let (Some((charge_id, amount)), Some(_)) = (settled, reference) {
        sqlx::query(
            "UPDATE charges SET refunded_minor = refunded_minor + $2, \
             state = CASE WHEN refunded_minor + $2 = captured_minor THEN 'refunded' \
             ELSE 'partially_refunded' END, updated_at = $3 WHERE id = $1",
        )
        .bind(charge_id)
        .bind(amount)
        .bind(now)
        .execute(conn)
        .await?;
    }
    Ok(())
}

/// Work the recovery job resumes: the charge ids with a pending authorization, capture or
/// void, or a pending refund, last changed before `before`; at most `limit`.
pub async fn stale_charges(
    executor: impl PgExecutor<'_>,
    before: OffsetDateTime,
    limit: i64,
) -> Result<Vec<ChargeId>, Error> {
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM (SELECT id, updated_at FROM charges \
         WHERE (state = 'pending' OR pending_request_id IS NOT NULL) AND updated_at < $1 \
         UNION SELECT charge_id, created_at FROM charge_refunds \
         WHERE state = 'pending' AND created_at < $1) stale \
         GROUP BY id ORDER BY min(updated_at) LIMIT $2",
    )
    .bind(before)
    .bind(limit)
    .fetch_all(executor)
    .await?;
    Ok(ids.into_iter().map(ChargeId::from_stored).collect())
}
