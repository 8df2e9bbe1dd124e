//! The SQL of the audit log: the chain head, appending rows, and reading them back.

use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgExecutor, Row as _};
use time::OffsetDateTime;

use crate::domain::audit::{AuditEntry, AuditRow};
use crate::error::Error;

/// Locks the audit head and reads it.
pub async fn audit_head_for_update(conn: &mut PgConnection) -> Result<(i64, [u8; 32]), Error> {
    let (seq, hash): (i64, Vec<u8>) = sqlx::query_as("SELECT seq, hash FROM audit_head FOR UPDATE")
        .fetch_one(conn)
        .await?;
    Ok((
        seq,
        hash.try_into()
            .map_err(|_| Error::Corrupt("audit_head.hash"))?,
    ))
}

/// Reads the audit head.
pub async fn audit_head(executor: impl PgExecutor<'_>) -> Result<(i64, [u8; 32]), sqlx::Error> {
    let (seq, hash): (i64, Vec<u8>) = sqlx::query_as("SELECT seq, hash FROM audit_head")
        .fetch_one(executor)
        .await?;
    let hash = hash.try_into().map_err(|_| sqlx::Error::ColumnDecode {
        index: "hash".into(),
        source: "audit head hash is not 32 bytes".into(),
    })?;
    Ok((seq, hash))
}

/// Appends chained rows and moves the head to the last one, in one statement.
pub async fn append_audit_rows(conn: &mut PgConnection, rows: &[AuditRow]) -> Result<(), Error> {
    let Some(last) = rows.last() else {
        return Ok(());
    };
    let mut seqs = Vec::with_capacity(rows.len());
    let mut times = Vec::with_capacity(rows.len());
    let mut callers = Vec::with_capacity(rows.len());
    let mut roles = Vec::with_capacity(rows.len());
    let mut rpcs = Vec::with_capacity(rows.len());
    let mut tokens = Vec::with_capacity(rows.len());
    let mut outcomes = Vec::with_capacity(rows.len());
    let mut reasons = Vec::with_capacity(rows.len());
    let mut correlations = Vec::with_capacity(rows.len());
    let mut request_ids = Vec::with_capacity(rows.len());
    let mut resources = Vec::with_capacity(rows.len());
    let mut prev_hashes = Vec::with_capacity(rows.len());
    let mut hashes = Vec::with_capacity(rows.len());
    for row in rows {
        seqs.push(row.seq);
        times.push(row.occurred_at);
        callers.push(row.entry.caller.as_str());
        roles.push(row.entry.role.as_str());
        rpcs.push(row.entry.rpc.as_str());
        tokens.push(row.entry.token.as_deref());
        outcomes.push(row.entry.outcome.as_str());
        reasons.push(row.entry.reason.as_str());
        correlations.push(row.entry.correlation_id.as_str());
        request_ids.push(row.entry.request_id.as_str());
        resources.push(row.entry.resource.as_str());
        prev_hashes.push(row.prev_hash.to_vec());
        hashes.push(row.hash.to_vec());
    }
    // The head moves in the same statement (a data-modifying CTE): one round trip per batch.
    sqlx::query(
        "WITH head AS (UPDATE audit_head SET seq = $14, hash = $15) \
         INSERT INTO audit_events (seq, occurred_at, caller, role, rpc, token, outcome, reason, \
         correlation_id, prev_hash, hash, request_id, resource) SELECT * FROM UNNEST($1::bigint[], \
         $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], \
         $8::text[], $9::text[], $10::bytea[], $11::bytea[], $12::text[], $13::text[])",
    )
    .bind(seqs)
    .bind(times)
    .bind(callers)
    .bind(roles)
    .bind(rpcs)
    .bind(tokens)
    .bind(outcomes)
    .bind(reasons)
    .bind(correlations)
    .bind(prev_hashes)
    .bind(hashes)
    .bind(request_ids)
    .bind(resources)
    .bind(last.seq)
    .bind(last.hash.as_slice())
    .execute(conn)
    .await?;
    Ok(())
}

/// Audit rows with `seq > after_seq`, in order, at most `limit`.
pub async fn audit_page(
    executor: impl PgExecutor<'_>,
    after_seq: i64,
    limit: i64,
) -> Result<Vec<AuditRow>, sqlx::Error> {
    let rows: Vec<PgRow> = sqlx::query(
        "SELECT seq, occurred_at, caller, role, rpc, token, outcome, reason, correlation_id, \
         prev_hash, hash, request_id, resource FROM audit_events WHERE seq > $1 ORDER BY seq \
         LIMIT $2",
    )
    .bind(after_seq)
    .bind(limit)
    .fetch_all(executor)
    .await?;
    rows.iter().map(audit_row).collect()
}

/// Filters of `ListAuditEvents`.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// At or after.
    pub start: Option<OffsetDateTime>,
    /// Before.
    pub end: Option<OffsetDateTime>,
    /// This token.
    pub token: Option<String>,
    /// This method or job.
    pub rpc: Option<String>,
    /// This caller.
    pub caller: Option<String>,
    /// `succeeded`, `denied` or `failed`.
    pub outcome: Option<&'static str>,
    /// This correlation id.
    pub correlation_id: Option<String>,
    /// Newest first.
    pub descending: bool,
}

/// Audit rows matching `filter` after (or, descending, before) `cursor`, at most `limit`.
pub async fn audit_events(
    executor: impl PgExecutor<'_>,
    filter: &AuditFilter,
    cursor: Option<i64>,
    limit: i64,
) -> Result<Vec<AuditRow>, sqlx::Error> {
    let (position, order) = if filter.descending {
        ("($1::bigint IS NULL OR seq < $1)", "DESC")
    } else {
        ("($1::bigint IS NULL OR seq > $1)", "ASC")
    };
    let sql = format!(
        "SELECT seq, occurred_at, caller, role, rpc, token, outcome, reason, correlation_id, \
         prev_hash, hash, request_id, resource FROM audit_events WHERE {position} \
         AND ($2::timestamptz IS NULL OR occurred_at >= $2) \
         AND ($3::timestamptz IS NULL OR occurred_at < $3) \
         AND ($4::text IS NULL OR token = $4) AND ($5::text IS NULL OR rpc = $5) \
         AND ($6::text IS NULL OR caller = $6) AND ($7::text IS NULL OR correlation_id = $7) \
         AND (CASE $8::text WHEN 'succeeded' THEN outcome = 'OK' \
              WHEN 'denied' THEN outcome IN ('ROLE_NOT_ALLOWED', 'IDENTITY_INVALID') \
              WHEN 'failed' THEN outcome NOT IN ('OK', 'ROLE_NOT_ALLOWED', 'IDENTITY_INVALID') \
              ELSE true END) \
         ORDER BY seq {order} LIMIT $9"
    );
    let rows: Vec<PgRow> = sqlx::query(&sql)
        .bind(cursor)
        .bind(filter.start)
        .bind(filter.end)
        .bind(filter.token.as_deref())
        .bind(filter.rpc.as_deref())
        .bind(filter.caller.as_deref())
        .bind(filter.correlation_id.as_deref())
        .bind(filter.outcome)
        .bind(limit)
        .fetch_all(executor)
        .await?;
    rows.iter().map(audit_row).collect()
}

fn audit_row(row: &PgRow) -> Result<AuditRow, sqlx::Error> {
    let hash = |column: &str| -> Result<[u8; 32], sqlx::Error> {
        let bytes: Vec<u8> = row.try_get(column)?;
        bytes.try_into().map_err(|_| sqlx::Error::ColumnDecode {
            index: column.to_owned(),
            source: "hash is not 32 bytes".into(),
        })
    };
    Ok(AuditRow {
        seq: row.try_get("seq")?,
        occurred_at: row.try_get("occurred_at")?,
        entry: AuditEntry {
            caller: row.try_get("caller")?,
            role: row.try_get("role")?,
            rpc: row.try_get("rpc")?,
            token: row.try_get("token")?,
            outcome: row.try_get("outcome")?,
            reason: row.try_get("reason")?,
            correlation_id: row.try_get("correlation_id")?,
            request_id: row.try_get("request_id")?,
            resource: row.try_get("resource")?,
        },
        prev_hash: hash("prev_hash")?,
        hash: hash("hash")?,
    })
}
