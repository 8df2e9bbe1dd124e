//! Reconciliation's SQL: settlement records as read, runs, discrepancies and adjustments
//! (migration 0006). Functions that change state take the caller's transaction, so a run's
//! records, discrepancies and counts commit together, and an approval's transfers with it.

use sqlx::{PgConnection, PgExecutor, Row as _};
use time::{Date, OffsetDateTime};

use crate::domain::actor::Actor;
use crate::domain::reconciliation::{
    Class, Finding, SettlementRecord, SettlementType, SignedAmount,
};
use crate::error::Error;

/// Serializes the runs of one processor until the transaction ends: a run reads the records of
/// other days (a duplicate settled before, a record settled late), so runs of different days
/// take turns too, and each sees what the one before it committed.
pub async fn lock_processor(conn: &mut PgConnection, processor: &str) -> Result<(), Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("reconciliation:{processor}"))
        .execute(conn)
        .await?;
    Ok(())
}

/// Takes the worker's lock of `processor` on `conn`'s session if no other instance holds it:
/// one worker round at a time across replicas, each reading which days are due only once the
/// round before has committed. A session lock: it goes with the connection if the instance
/// dies.
pub async fn try_lock_worker(conn: &mut PgConnection, processor: &str) -> Result<bool, Error> {
    Ok(
        sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
            .bind(format!("reconciliation-worker:{processor}"))
            .fetch_one(conn)
            .await?,
    )
}

/// Releases [`try_lock_worker`]'s lock.
pub async fn unlock_worker(conn: &mut PgConnection, processor: &str) -> Result<(), Error> {
    sqlx::query("SELECT pg_advisory_unlock(hashtextextended($1, 0))")
        .bind(format!("reconciliation-worker:{processor}"))
        .execute(conn)
        .await?;
    Ok(())
}

/// Replaces the records of `processor`'s `day` with `records` (the day's file as just read),
/// writing only what changed: records gone from the file are deleted, new ones inserted,
/// changed ones updated, and a day run again on the same file writes no row. A record read
/// before under another day moves to this one.
pub async fn replace_day(
    conn: &mut PgConnection,
    processor: &str,
    day: Date,
    records: &[SettlementRecord],
) -> Result<(), Error> {
    // The day's stored ids, and those the file no longer holds, compared here: a join of the
    // table with the file's ids would be planned on a guess of the array's size.
    let stored: Vec<String> = sqlx::query_scalar(
        "SELECT record_id FROM recon_settlements WHERE processor = $1 AND settlement_date = $2",
    )
    .bind(processor)
    .bind(day)
    .fetch_all(&mut *conn)
    .await?;
    let read: std::collections::HashSet<&str> =
        records.iter().map(|r| r.record_id.as_str()).collect();
    let gone: Vec<&str> = stored
        .iter()
        .map(String::as_str)
        .filter(|id| !read.contains(id))
        .collect();
    if !gone.is_empty() {
        sqlx::query("DELETE FROM recon_settlements WHERE processor = $1 AND record_id = ANY($2)")
            .bind(processor)
            .bind(&gone)
            .execute(&mut *conn)
            .await?;
    }
    for chunk in records.chunks(10_000) {
        let text =
            |f: fn(&SettlementRecord) -> &str| -> Vec<&str> { chunk.iter().map(f).collect() };
        let number =
            |f: fn(&SettlementRecord) -> i64| -> Vec<i64> { chunk.iter().map(f).collect() };
        sqlx::query(
            "INSERT INTO recon_settlements (processor, record_id, settlement_date, line, type, \
             processor_reference, amount_minor, currency, fee_minor, settled_at) \
             SELECT $1, u.* FROM UNNEST($2::text[], $3::date[], $4::bigint[], $5::text[], \
             $6::text[], $7::bigint[], $8::text[], $9::bigint[], $10::timestamptz[]) AS u \
             ON CONFLICT (processor, record_id) DO UPDATE SET \
             settlement_date = EXCLUDED.settlement_date, line = EXCLUDED.line, \
             type = EXCLUDED.type, processor_reference = EXCLUDED.processor_reference, \
             amount_minor = EXCLUDED.amount_minor, currency = EXCLUDED.currency, \
             fee_minor = EXCLUDED.fee_minor, settled_at = EXCLUDED.settled_at \
             WHERE (recon_settlements.settlement_date, recon_settlements.line, \
                    recon_settlements.type, recon_settlements.processor_reference, \
                    recon_settlements.amount_minor, recon_settlements.currency, \
                    recon_settlements.fee_minor, recon_settlements.settled_at) \
                IS DISTINCT FROM (EXCLUDED.settlement_date, EXCLUDED.line, EXCLUDED.type, \
                    EXCLUDED.processor_reference, EXCLUDED.amount_minor, EXCLUDED.currency, \
                    EXCLUDED.fee_minor, EXCLUDED.settled_at)",
        )
        .bind(processor)
        .bind(text(|r| &r.record_id))
        .bind(chunk.iter().map(|r| r.day).collect::<Vec<_>>())
        .bind(number(|r| r.line))
        .bind(text(|r| r.kind.as_str()))
        .bind(text(|r| &r.reference))
        .bind(number(|r| r.amount))
        .bind(text(|r| &r.currency))
        .bind(number(|r| r.fee))
        .bind(chunk.iter().map(|r| r.settled_at).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Every record of `processor` read so far with one of `references`.
pub async fn records_with_references(
    conn: &mut PgConnection,
    processor: &str,
    references: &[&str],
) -> Result<Vec<SettlementRecord>, Error> {
    let rows = sqlx::query(
        "SELECT record_id, settlement_date, line, type, processor_reference, amount_minor, \
         currency, fee_minor, settled_at FROM recon_settlements \
         WHERE processor = $1 AND processor_reference = ANY($2)",
    )
    .bind(processor)
    .bind(references)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|row| {
            let kind: String = row.try_get("type")?;
            Ok(SettlementRecord {
                record_id: row.try_get("record_id")?,
                day: row.try_get("settlement_date")?,
                line: row.try_get("line")?,
                kind: SettlementType::parse(&kind)
                    .ok_or_else(|| Error::Corrupt(format!("settlement type {kind}")))?,
                reference: row.try_get("processor_reference")?,
                amount: row.try_get("amount_minor")?,
                currency: row.try_get("currency")?,
                fee: row.try_get("fee_minor")?,
                settled_at: row.try_get("settled_at")?,
            })
        })
        .collect()
}

/// A run as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRun {
    /// `rcn_` id.
    pub id: String,
    /// The processor.
    pub processor: String,
    /// The day.
    pub day: Date,
    /// Who ran it.
    pub actor: Actor,
    /// Records in the day's file.
    pub records: i64,
    /// Per class, in [`Class::ALL`] order.
    pub counts: [i64; 7],
    /// Of the discrepancies found, how many adjustments resolved.
    pub resolved: i64,
    /// Started.
    pub start_time: OffsetDateTime,
    /// Finished.
    pub finish_time: OffsetDateTime,
}

const RUN_COLUMNS: &str = "id, processor, settlement_date, actor, records, matched, \
     missing_in_ledger, missing_at_processor, amount_mismatch, currency_mismatch, \
     duplicate_settlement, pending, resolved, start_time, finish_time";

/// Stores a run.
pub async fn insert_run(conn: &mut PgConnection, run: &StoredRun) -> Result<(), Error> {
    let c = &run.counts;
    sqlx::query(&format!(
        "INSERT INTO recon_runs ({RUN_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, \
         $10, $11, $12, $13, $14, $15)"
    ))
    .bind(&run.id)
    .bind(&run.processor)
    .bind(run.day)
    .bind(run.actor.to_string())
    .bind(run.records)
    .bind(c[0])
    .bind(c[1])
    .bind(c[2])
    .bind(c[3])
    .bind(c[4])
    .bind(c[5])
    .bind(c[6])
    .bind(run.resolved)
    .bind(run.start_time)
    .bind(run.finish_time)
    .execute(conn)
    .await?;
    Ok(())
}

/// A run by id.
pub async fn run(executor: impl PgExecutor<'_>, id: &str) -> Result<Option<StoredRun>, Error> {
    let row = sqlx::query(&format!(
        "SELECT {RUN_COLUMNS} FROM recon_runs WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(executor)
    .await?;
    row.map(|row| {
        let actor: String = row.try_get("actor")?;
        Ok(StoredRun {
            id: row.try_get("id")?,
            processor: row.try_get("processor")?,
            day: row.try_get("settlement_date")?,
            actor: Actor::parse(&actor).ok_or_else(|| Error::Corrupt(format!("actor {actor}")))?,
            records: row.try_get("records")?,
            counts: [
                row.try_get("matched")?,
                row.try_get("missing_in_ledger")?,
                row.try_get("missing_at_processor")?,
                row.try_get("amount_mismatch")?,
                row.try_get("currency_mismatch")?,
                row.try_get("duplicate_settlement")?,
                row.try_get("pending")?,
            ],
            resolved: row.try_get("resolved")?,
            start_time: row.try_get("start_time")?,
            finish_time: row.try_get("finish_time")?,
        })
    })
    .transpose()
}

/// Writes the discrepancies a run of `processor`'s `day` found (new ones open; known ones
/// updated and reopened unless resolved), clears the day's open ones it no longer found and
/// those of other days whose entry a record now reports, and returns how many of the found
/// ones adjustments resolved.
pub async fn write_findings(
    conn: &mut PgConnection,
    processor: &str,
    day: Date,
    run_id: &str,
    findings: &[Finding],
    references: &[&str],
) -> Result<i64, Error> {
    let subjects: Vec<String> = findings.iter().map(Finding::subject).collect();
    for (chunk, subjects) in findings.chunks(10_000).zip(subjects.chunks(10_000)) {
        let ids: Vec<String> = chunk
            .iter()
            .map(|_| tandem_runtime::ids::random_id("dsc_"))
            .collect();
        let record = |f: fn(&SettlementRecord) -> String| -> Vec<Option<String>> {
            chunk.iter().map(|x| x.record.as_ref().map(f)).collect()
        };
        let entry = |f: fn(&crate::domain::reconciliation::LedgerEntry) -> Option<String>| {
            chunk
                .iter()
                .map(|x| x.entry.as_ref().and_then(f))
                .collect::<Vec<Option<String>>>()
        };
        sqlx::query(
            "INSERT INTO recon_discrepancies (id, processor, subject, settlement_date, class, \
             state, type, processor_reference, record_id, settled_minor, settled_currency, \
             settled_at, entry_id, ledger_minor, ledger_currency, funding_account, \
             receivable_account, payment_id, leg_id, entry_time, correction_minor, \
             correction_currency, first_run_id, last_run_id) \
             SELECT u.id, $1, u.subject, $2, u.class, 'open', u.type, u.reference, u.record_id, \
             u.settled_minor, u.settled_currency, u.settled_at, u.entry_id, u.ledger_minor, \
             u.ledger_currency, u.funding, u.receivable, u.payment_id, u.leg_id, u.entry_time, \
             u.correction_minor, u.correction_currency, $3, $3 \
             FROM UNNEST($4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], \
             $10::bigint[], $11::text[], $12::timestamptz[], $13::text[], $14::bigint[], \
             $15::text[], $16::text[], $17::text[], $18::text[], $19::text[], \
             $20::timestamptz[], $21::bigint[], $22::text[]) \
             AS u(id, subject, class, type, reference, record_id, settled_minor, \
             settled_currency, settled_at, entry_id, ledger_minor, ledger_currency, funding, \
             receivable, payment_id, leg_id, entry_time, correction_minor, correction_currency) \
             ON CONFLICT (processor, subject) DO UPDATE SET \
             settlement_date = EXCLUDED.settlement_date, class = EXCLUDED.class, \
             state = CASE WHEN recon_discrepancies.state <> 'resolved' THEN 'open' \
                     WHEN (EXCLUDED.correction_minor, EXCLUDED.correction_currency) \
                          IS NOT DISTINCT FROM (recon_discrepancies.applied_minor, \
                          recon_discrepancies.applied_currency) \
                       OR EXCLUDED.correction_currency IS DISTINCT FROM \
                          recon_discrepancies.applied_currency THEN 'resolved' \
                     ELSE 'open' END, \
             adjustment_id = CASE WHEN recon_discrepancies.state <> 'resolved' \
                     OR (EXCLUDED.correction_minor, EXCLUDED.correction_currency) \
                          IS NOT DISTINCT FROM (recon_discrepancies.applied_minor, \
                          recon_discrepancies.applied_currency) \
                     OR EXCLUDED.correction_currency IS DISTINCT FROM \
                          recon_discrepancies.applied_currency \
                     THEN recon_discrepancies.adjustment_id END, \
             settled_minor = EXCLUDED.settled_minor, settled_currency = EXCLUDED.settled_currency, \
             settled_at = EXCLUDED.settled_at, entry_id = EXCLUDED.entry_id, \
             ledger_minor = EXCLUDED.ledger_minor, ledger_currency = EXCLUDED.ledger_currency, \
             funding_account = EXCLUDED.funding_account, \
             receivable_account = EXCLUDED.receivable_account, \
             payment_id = EXCLUDED.payment_id, leg_id = EXCLUDED.leg_id, \
             entry_time = EXCLUDED.entry_time, correction_minor = EXCLUDED.correction_minor, \
             correction_currency = EXCLUDED.correction_currency, \
             last_run_id = EXCLUDED.last_run_id",
        )
        .bind(processor)
        .bind(day)
        .bind(run_id)
        .bind(&ids)
        .bind(subjects)
        .bind(chunk.iter().map(|f| f.class.as_str()).collect::<Vec<_>>())
        .bind(chunk.iter().map(|f| f.kind.as_str()).collect::<Vec<_>>())
        .bind(
            chunk
                .iter()
                .map(|f| f.reference.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(record(|r| r.record_id.clone()))
        .bind(
            chunk
                .iter()
                .map(|f| f.record.as_ref().map(|r| r.amount))
                .collect::<Vec<_>>(),
        )
        .bind(record(|r| r.currency.clone()))
        .bind(
            chunk
                .iter()
                .map(|f| f.record.as_ref().map(|r| r.settled_at))
                .collect::<Vec<_>>(),
        )
        .bind(entry(|e| Some(e.transfer_id.clone())))
        .bind(
            chunk
                .iter()
                .map(|f| f.entry.as_ref().map(|e| e.amount))
                .collect::<Vec<_>>(),
        )
        .bind(entry(|e| Some(e.currency.clone())))
        .bind(entry(|e| Some(e.funding_account.clone())))
        .bind(entry(|e| Some(e.receivable_account.clone())))
        .bind(entry(|e| e.payment_id.clone()))
        .bind(entry(|e| e.leg_id.clone()))
        .bind(
            chunk
                .iter()
                .map(|f| f.entry.as_ref().map(|e| e.created_at))
                .collect::<Vec<_>>(),
        )
        .bind(
            chunk
                .iter()
                .map(|f| f.correction.as_ref().map(|c| c.0))
                .collect::<Vec<_>>(),
        )
        .bind(
            chunk
                .iter()
                .map(|f| f.correction.as_ref().map(|c| c.1.clone()))
                .collect::<Vec<_>>(),
        )
        .execute(&mut *conn)
        .await?;
    }
    // The day's open and resolved discrepancies this run did not find, compared here (see
    // replace_day).
    let known: Vec<(String, String)> = sqlx::query_as(
        "SELECT id, subject FROM recon_discrepancies \
         WHERE processor = $1 AND settlement_date = $2 AND state IN ('open', 'resolved')",
    )
    .bind(processor)
    .bind(day)
    .fetch_all(&mut *conn)
    .await?;
    let found: std::collections::HashSet<&str> = subjects.iter().map(String::as_str).collect();
    let gone: Vec<&str> = known
        .iter()
        .filter(|(_, subject)| !found.contains(subject.as_str()))
        .map(|(id, _)| id.as_str())
        .collect();
    if !gone.is_empty() {
        gone_by(conn, &gone, run_id).await?;
    }
    // A ledger entry reported late: its discrepancy of another day is gone with this run.
    let reported: Vec<String> = sqlx::query_scalar(
        "SELECT d.id FROM recon_discrepancies d \
         WHERE d.processor = $1 AND d.state IN ('open', 'resolved') AND d.record_id IS NULL \
         AND d.processor_reference = ANY($2) AND EXISTS (SELECT 1 FROM recon_settlements s \
             WHERE s.processor = d.processor AND s.processor_reference = d.processor_reference \
             AND s.type = d.type)",
    )
    .bind(processor)
    .bind(references)
    .fetch_all(&mut *conn)
    .await?;
    if !reported.is_empty() {
        let ids: Vec<&str> = reported.iter().map(String::as_str).collect();
        gone_by(conn, &ids, run_id).await?;
    }
    let resolved: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM recon_discrepancies WHERE processor = $1 AND subject = ANY($2) \
         AND state = 'resolved'",
    )
    .bind(processor)
    .bind(&subjects)
    .fetch_one(&mut *conn)
    .await?;
    Ok(resolved)
}

/// Discrepancies `ids` that run `run_id` no longer finds: an open one is cleared (nothing was
/// booked); a resolved one is open again with a difference of 0, so what its adjustments booked
/// is left to reverse.
async fn gone_by(conn: &mut PgConnection, ids: &[&str], run_id: &str) -> Result<(), Error> {
    sqlx::query(
        "UPDATE recon_discrepancies SET last_run_id = $2, \
         state = CASE state WHEN 'open' THEN 'cleared' \
                 WHEN 'resolved' THEN CASE WHEN applied_minor = 0 THEN 'resolved' ELSE 'open' END \
                 END, \
         correction_minor = CASE state WHEN 'resolved' THEN 0 ELSE correction_minor END, \
         correction_currency = CASE state WHEN 'resolved' THEN applied_currency \
                 ELSE correction_currency END, \
         adjustment_id = CASE WHEN state = 'resolved' AND applied_minor <> 0 THEN NULL \
                 ELSE adjustment_id END \
         WHERE id = ANY($1) AND state IN ('open', 'resolved')",
    )
    .bind(ids)
    .bind(run_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// A discrepancy as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDiscrepancy {
    /// `dsc_` id.
    pub id: String,
    /// The processor.
    pub processor: String,
    /// The day whose run found it.
    pub day: Date,
    /// Its class.
    pub class: Class,
    /// `open`, `resolved` or `cleared`.
    pub state: String,
    /// Capture or refund.
    pub kind: SettlementType,
    /// The reference.
    pub reference: String,
    /// The record's id, amount, currency and time.
    pub record: Option<(String, i64, String, OffsetDateTime)>,
    /// The ledger entry, as reconciliation saw it.
    pub entry: Option<crate::domain::reconciliation::LedgerEntry>,
    /// The correction and its currency.
    pub correction: Option<SignedAmount>,
    /// First and latest run.
    pub runs: (String, String),
    /// The adjustment waiting or approved.
    pub adjustment_id: Option<String>,
    /// What approved adjustments have booked for it, signed.
    pub applied: Option<SignedAmount>,
    /// Its position in listings.
    pub seq: i64,
}

impl StoredDiscrepancy {
    /// What is left to correct: the difference less what adjustments booked; `None` while
    /// pending, or when they booked in another currency (a resolved currency mismatch).
    pub fn remaining(&self) -> Option<SignedAmount> {
        let (amount, currency) = self.correction.clone()?;
        match &self.applied {
            None => Some((amount, currency)),
            Some((applied, applied_currency)) if *applied_currency == currency => {
                Some((amount - applied, currency))
            }
            Some(_) => None,
        }
    }
}

const DISCREPANCY_COLUMNS: &str = "id, processor, settlement_date, class, state, type, \
     processor_reference, record_id, settled_minor, settled_currency, settled_at, entry_id, \
     ledger_minor, ledger_currency, funding_account, receivable_account, payment_id, leg_id, \
     entry_time, correction_minor, correction_currency, first_run_id, last_run_id, \
     adjustment_id, applied_minor, applied_currency, seq";

fn discrepancy_from_row(row: &sqlx::postgres::PgRow) -> Result<StoredDiscrepancy, Error> {
    let corrupt = |what: String| Error::Corrupt(what);
    let class: String = row.try_get("class")?;
    let kind: String = row.try_get("type")?;
    let kind = SettlementType::parse(&kind).ok_or_else(|| corrupt(format!("type {kind}")))?;
    let reference: String = row.try_get("processor_reference")?;
    let record = match row.try_get::<Option<String>, _>("record_id")? {
        Some(id) => Some((
            id,
            row.try_get::<Option<i64>, _>("settled_minor")?.unwrap_or(0),
            row.try_get::<Option<String>, _>("settled_currency")?
                .unwrap_or_default(),
            row.try_get::<Option<OffsetDateTime>, _>("settled_at")?
                .ok_or_else(|| corrupt("settled_at".into()))?,
        )),
        None => None,
    };
    let entry = match row.try_get::<Option<String>, _>("entry_id")? {
        Some(transfer_id) => Some(crate::domain::reconciliation::LedgerEntry {
            transfer_id,
            kind,
            reference: reference.clone(),
            amount: row.try_get::<Option<i64>, _>("ledger_minor")?.unwrap_or(0),
            currency: row
                .try_get::<Option<String>, _>("ledger_currency")?
                .unwrap_or_default(),
            funding_account: row
                .try_get::<Option<String>, _>("funding_account")?
                .unwrap_or_default(),
            receivable_account: row
                .try_get::<Option<String>, _>("receivable_account")?
                .unwrap_or_default(),
            payment_id: row.try_get("payment_id")?,
            leg_id: row.try_get("leg_id")?,
            created_at: row
                .try_get::<Option<OffsetDateTime>, _>("entry_time")?
                .ok_or_else(|| corrupt("entry_time".into()))?,
        }),
        None => None,
    };
    let correction = match (
        row.try_get::<Option<i64>, _>("correction_minor")?,
        row.try_get::<Option<String>, _>("correction_currency")?,
    ) {
        (Some(amount), Some(currency)) => Some((amount, currency)),
        _ => None,
    };
    Ok(StoredDiscrepancy {
        id: row.try_get("id")?,
        processor: row.try_get("processor")?,
        day: row.try_get("settlement_date")?,
        class: Class::parse(&class).ok_or_else(|| corrupt(format!("class {class}")))?,
        state: row.try_get("state")?,
        kind,
        reference,
        record,
        entry,
        correction,
        runs: (row.try_get("first_run_id")?, row.try_get("last_run_id")?),
        adjustment_id: row.try_get("adjustment_id")?,
        applied: match (
            row.try_get::<Option<i64>, _>("applied_minor")?,
            row.try_get::<Option<String>, _>("applied_currency")?,
        ) {
            (Some(amount), Some(currency)) => Some((amount, currency)),
            _ => None,
        },
        seq: row.try_get("seq")?,
    })
}

/// A discrepancy by id; locked for the transaction when `lock`.
pub async fn discrepancy(
    executor: impl PgExecutor<'_>,
    id: &str,
    lock: bool,
) -> Result<Option<StoredDiscrepancy>, Error> {
    let lock = if lock { " FOR UPDATE" } else { "" };
    let row = sqlx::query(&format!(
        "SELECT {DISCREPANCY_COLUMNS} FROM recon_discrepancies WHERE id = $1{lock}"
    ))
    .bind(id)
    .fetch_optional(executor)
    .await?;
    row.as_ref().map(discrepancy_from_row).transpose()
}

/// Discrepancies of `processor` (of `day` if given, in `state` if given) after position
/// `after`, at most `limit`, in the order they were first found.
pub async fn discrepancies(
    executor: impl PgExecutor<'_>,
    processor: &str,
    day: Option<Date>,
    state: Option<&str>,
    after: i64,
    limit: i64,
) -> Result<Vec<StoredDiscrepancy>, Error> {
    let rows = sqlx::query(&format!(
        "SELECT {DISCREPANCY_COLUMNS} FROM recon_discrepancies WHERE processor = $1 \
         AND ($2::date IS NULL OR settlement_date = $2) AND ($3::text IS NULL OR state = $3) \
         AND seq > $4 ORDER BY seq LIMIT $5"
    ))
    .bind(processor)
    .bind(day)
    .bind(state)
    .bind(after)
    .bind(limit)
    .fetch_all(executor)
    .await?;
    rows.iter().map(discrepancy_from_row).collect()
}

/// Sets a discrepancy's state and adjustment.
pub async fn set_discrepancy(
    conn: &mut PgConnection,
    id: &str,
    state: &str,
    adjustment_id: Option<&str>,
) -> Result<(), Error> {
    sqlx::query("UPDATE recon_discrepancies SET state = $2, adjustment_id = $3 WHERE id = $1")
        .bind(id)
        .bind(state)
        .bind(adjustment_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Records an approved adjustment on its discrepancy: resolved, and what has been booked for
/// it is now its whole difference.
pub async fn resolve_discrepancy(
    conn: &mut PgConnection,
    id: &str,
    adjustment_id: &str,
) -> Result<(), Error> {
    sqlx::query(
        "UPDATE recon_discrepancies SET state = 'resolved', adjustment_id = $2, \
         applied_minor = correction_minor, applied_currency = correction_currency WHERE id = $1",
    )
    .bind(id)
    .bind(adjustment_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// An adjustment as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAdjustment {
    /// `adj_` id.
    pub id: String,
    /// The discrepancy.
    pub discrepancy_id: String,
    /// `proposed`, `approved` or `rejected`.
    pub state: String,
    /// Minor units, positive.
    pub amount: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// Why.
    pub reason: String,
    /// Who proposed it, and when.
    pub proposer: Actor,
    /// When proposed.
    pub propose_time: OffsetDateTime,
    /// Who decided, when, and why (for a rejection).
    pub decider: Option<Actor>,
    /// When decided.
    pub decide_time: Option<OffsetDateTime>,
    /// Why rejected.
    pub decision_reason: String,
    /// The transfers posted on approval.
    pub transfer_ids: Vec<String>,
    /// The discrepancy as proposed against: what was left to correct (signed), its class and
    /// its ledger entry. An approval posts only if the discrepancy still says the same.
    pub basis: (i64, Class, Option<String>),
}

/// Stores a new adjustment.
pub async fn insert_adjustment(
    conn: &mut PgConnection,
    adjustment: &StoredAdjustment,
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO recon_adjustments (id, discrepancy_id, state, amount_minor, currency, \
         reason, proposer, propose_time, correction_minor, class, entry_id) \
         VALUES ($1, $2, 'proposed', $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(&adjustment.id)
    .bind(&adjustment.discrepancy_id)
    .bind(adjustment.amount)
    .bind(&adjustment.currency)
    .bind(&adjustment.reason)
    .bind(adjustment.proposer.to_string())
    .bind(adjustment.propose_time)
    .bind(adjustment.basis.0)
    .bind(adjustment.basis.1.as_str())
    .bind(adjustment.basis.2.as_deref())
    .execute(conn)
    .await?;
    Ok(())
}

/// Records the decision on an adjustment.
pub async fn decide_adjustment(
    conn: &mut PgConnection,
    adjustment: &StoredAdjustment,
) -> Result<(), Error> {
    sqlx::query(
        "UPDATE recon_adjustments SET state = $2, decider = $3, decide_time = $4, \
         decision_reason = $5, transfer_ids = $6 WHERE id = $1",
    )
    .bind(&adjustment.id)
    .bind(&adjustment.state)
    .bind(adjustment.decider.as_ref().map(ToString::to_string))
    .bind(adjustment.decide_time)
    .bind(&adjustment.decision_reason)
    .bind(&adjustment.transfer_ids)
    .execute(conn)
    .await?;
    Ok(())
}

/// An adjustment by id; locked for the transaction when `lock`.
pub async fn adjustment(
    executor: impl PgExecutor<'_>,
    id: &str,
    lock: bool,
) -> Result<Option<StoredAdjustment>, Error> {
    let lock = if lock { " FOR UPDATE" } else { "" };
    let row = sqlx::query(&format!(
        "SELECT id, discrepancy_id, state, amount_minor, currency, reason, proposer, \
         propose_time, decider, decide_time, decision_reason, transfer_ids, correction_minor, \
         class, entry_id FROM recon_adjustments WHERE id = $1{lock}"
    ))
    .bind(id)
    .fetch_optional(executor)
    .await?;
    row.map(|row| {
        let actor = |text: String| {
            Actor::parse(&text).ok_or_else(|| Error::Corrupt(format!("actor {text}")))
        };
        Ok(StoredAdjustment {
            id: row.try_get("id")?,
            discrepancy_id: row.try_get("discrepancy_id")?,
            state: row.try_get("state")?,
            amount: row.try_get("amount_minor")?,
            currency: row.try_get("currency")?,
            reason: row.try_get("reason")?,
            proposer: actor(row.try_get("proposer")?)?,
            propose_time: row.try_get("propose_time")?,
            decider: row
                .try_get::<Option<String>, _>("decider")?
                .map(actor)
                .transpose()?,
            decide_time: row.try_get("decide_time")?,
            decision_reason: row.try_get("decision_reason")?,
            transfer_ids: row.try_get("transfer_ids")?,
            basis: {
                let class: String = row.try_get("class")?;
                (
                    row.try_get("correction_minor")?,
                    Class::parse(&class).ok_or_else(|| Error::Corrupt(format!("class {class}")))?,
                    row.try_get("entry_id")?,
                )
            },
        })
    })
    .transpose()
}

/// Claims the worker's run of `processor`'s `day` for `owner` until `until`: true when this
/// caller is to run it (no run yet, or `again` for a day run before, and no other claim in
/// force).
pub async fn claim_worker_day(
    executor: impl PgExecutor<'_>,
    processor: &str,
    day: Date,
    owner: &str,
    (now, until): (OffsetDateTime, OffsetDateTime),
    again: bool,
) -> Result<bool, Error> {
    let claimed = sqlx::query(
        "INSERT INTO recon_worker_days (processor, settlement_date, owner, claimed_until) \
         VALUES ($1, $2, $3, $5) ON CONFLICT (processor, settlement_date) DO UPDATE \
         SET owner = EXCLUDED.owner, claimed_until = EXCLUDED.claimed_until, run_id = NULL \
         WHERE (recon_worker_days.run_id IS NULL OR $6) \
         AND recon_worker_days.claimed_until < $4",
    )
    .bind(processor)
    .bind(day)
    .bind(owner)
    .bind(now)
    .bind(until)
    .bind(again)
    .execute(executor)
    .await?
    .rows_affected();
    Ok(claimed == 1)
}

/// The days of `processor` in `[from, to]` with a pending discrepancy of an entry booked
/// before `booked_before` (its grace period over): the worker runs them again, so the entry is
/// reported missing if its record never came.
pub async fn days_pending_due(
    executor: impl PgExecutor<'_>,
    processor: &str,
    (from, to): (Date, Date),
    booked_before: OffsetDateTime,
) -> Result<Vec<Date>, Error> {
    Ok(sqlx::query_scalar(
        "SELECT DISTINCT settlement_date FROM recon_discrepancies WHERE processor = $1 \
         AND settlement_date BETWEEN $2 AND $3 AND state = 'open' AND class = 'pending' \
         AND entry_time < $4",
    )
    .bind(processor)
    .bind(from)
    .bind(to)
    .bind(booked_before)
    .fetch_all(executor)
    .await?)
}

/// Records the worker's run of a claimed day, in the run's transaction, and ends the claim.
pub async fn finish_worker_day(
    conn: &mut PgConnection,
    processor: &str,
    day: Date,
    run_id: &str,
) -> Result<(), Error> {
    sqlx::query(
        "UPDATE recon_worker_days SET run_id = $3, claimed_until = now() \
         WHERE processor = $1 AND settlement_date = $2",
    )
    .bind(processor)
    .bind(day)
    .bind(run_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// The days of `processor` in `[from, to]` the worker has run.
pub async fn worker_days_done(
    executor: impl PgExecutor<'_>,
    processor: &str,
    from: Date,
    to: Date,
) -> Result<Vec<Date>, Error> {
    Ok(sqlx::query_scalar(
        "SELECT settlement_date FROM recon_worker_days WHERE processor = $1 \
         AND settlement_date BETWEEN $2 AND $3 AND run_id IS NOT NULL",
    )
    .bind(processor)
    .bind(from)
    .bind(to)
    .fetch_all(executor)
    .await?)
}

/// A reconciliation step's event, for the feed.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// The run's or the adjustment's id.
    pub subject: String,
    /// Its position in the subject's stream, from 1.
    pub sequence: i64,
    /// `evt_` id.
    pub id: String,
    /// The type name (`reconciliation.run_completed`, ...).
    pub kind: &'static str,
    /// The encoded `ReconciliationEvent`.
    pub body: Vec<u8>,
    /// When.
    pub create_time: OffsetDateTime,
}

/// Writes a reconciliation event in the step's transaction.
pub async fn insert_event(conn: &mut PgConnection, event: &NewEvent) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO reconciliation_events (subject, sequence, id, type, body, create_time) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&event.subject)
    .bind(event.sequence)
    .bind(&event.id)
    .bind(event.kind)
    .bind(&event.body)
    .bind(event.create_time)
    .execute(conn)
    .await?;
    Ok(())
}

/// The open discrepancies (pending records apart) by processor and class, for the metrics: a
/// partial index holds them.
pub async fn open_discrepancies(
    executor: impl PgExecutor<'_>,
) -> Result<Vec<(String, String, i64)>, Error> {
    let rows = sqlx::query(
        "SELECT processor, class, count(*) AS n FROM recon_discrepancies \
         WHERE state = 'open' AND class <> 'pending' GROUP BY processor, class",
    )
    .fetch_all(executor)
    .await?;
    rows.into_iter()
        .map(|row| {
            Ok((
                row.try_get("processor")?,
                row.try_get("class")?,
                row.try_get("n")?,
            ))
        })
        .collect()
}
