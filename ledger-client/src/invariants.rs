//! The ledger's invariant check: what must hold at every commit, verified from the tables.
//! Tests call it after every step; the chaos harness calls it at the end of a run.

use sqlx::PgExecutor;
use time::OffsetDateTime;

use crate::ledger::LedgerError;

/// What the check found. Empty `violations` means the ledger is consistent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InvariantReport {
    /// Accounts checked.
    pub accounts: i64,
    /// Transfers checked.
    pub transfers: i64,
    /// One line per violation.
    pub violations: Vec<String>,
}

impl InvariantReport {
    /// True if nothing is wrong.
    pub fn holds(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Checks, as of `now`:
/// - per currency, total debits equal total credits (pending and posted separately);
/// - every account's balances equal the sum of its transfers;
/// - every flow (per account pair, cost center and day) equals the sum of its transfers;
/// - no pending transfer past its timeout is still open.
pub async fn check<'c, E>(executor: E, now: OffsetDateTime) -> Result<InvariantReport, LedgerError>
where
    E: PgExecutor<'c> + Copy,
{
    let mut report = InvariantReport::default();
    let (accounts, transfers): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM ledger_accounts), (SELECT count(*) FROM ledger_transfers)",
    )
    .fetch_one(executor)
    .await?;
    report.accounts = accounts;
    report.transfers = transfers;

    let unbalanced: Vec<(String, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT currency, sum(debits_pending)::bigint, sum(credits_pending)::bigint, \
         sum(debits_posted)::bigint, sum(credits_posted)::bigint FROM ledger_accounts \
         GROUP BY currency HAVING sum(debits_pending) <> sum(credits_pending) \
         OR sum(debits_posted) <> sum(credits_posted)",
    )
    .fetch_all(executor)
    .await?;
    for (currency, dp, cp, dpo, cpo) in unbalanced {
        report.violations.push(format!(
            "{currency}: debits pending {dp} / posted {dpo} differ from credits pending {cp} / posted {cpo}"
        ));
    }

    let drifted: Vec<(String,)> = sqlx::query_as(
        "WITH effects AS (SELECT t.debit_account_id, t.credit_account_id, \
         CASE t.kind WHEN 'pending' THEN t.amount WHEN 'single' THEN 0 ELSE -p.amount END AS pd, \
         CASE t.kind WHEN 'single' THEN t.amount WHEN 'post_pending' THEN t.amount ELSE 0 END AS po \
         FROM ledger_transfers t LEFT JOIN ledger_transfers p ON p.id = t.pending_id), \
         sides AS (SELECT debit_account_id AS id, pd AS dp, po AS dpo, 0 AS cp, 0 AS cpo FROM effects \
         UNION ALL SELECT credit_account_id, 0, 0, pd, po FROM effects), \
         sums AS (SELECT id, sum(dp) AS dp, sum(dpo) AS dpo, sum(cp) AS cp, sum(cpo) AS cpo \
         FROM sides GROUP BY id) \
         SELECT a.id FROM ledger_accounts a LEFT JOIN sums s ON s.id = a.id \
         WHERE a.debits_pending <> coalesce(s.dp, 0) OR a.debits_posted <> coalesce(s.dpo, 0) \
         OR a.credits_pending <> coalesce(s.cp, 0) OR a.credits_posted <> coalesce(s.cpo, 0) \
         ORDER BY a.id LIMIT 100",
    )
    .fetch_all(executor)
    .await?;
    for (id,) in drifted {
        report.violations.push(format!(
            "account {id}: balances differ from the sum of its transfers"
        ));
    }

    let flows: Vec<(String, String, String, time::Date)> = sqlx::query_as(
        "WITH expected AS (SELECT t.debit_account_id, t.credit_account_id, \
         coalesce(t.cost_center, '') AS cost_center, (t.created_at AT TIME ZONE 'UTC')::date AS day, \
         sum(CASE t.kind WHEN 'pending' THEN t.amount WHEN 'single' THEN 0 ELSE -p.amount END) AS pending, \
         sum(CASE t.kind WHEN 'single' THEN t.amount WHEN 'post_pending' THEN t.amount ELSE 0 END) AS posted \
         FROM ledger_transfers t LEFT JOIN ledger_transfers p ON p.id = t.pending_id \
         GROUP BY 1, 2, 3, 4) \
         SELECT coalesce(e.debit_account_id, f.debit_account_id), \
         coalesce(e.credit_account_id, f.credit_account_id), \
         coalesce(e.cost_center, f.cost_center), coalesce(e.day, f.day) \
         FROM expected e FULL JOIN ledger_flows f ON f.debit_account_id = e.debit_account_id \
         AND f.credit_account_id = e.credit_account_id AND f.cost_center = e.cost_center \
         AND f.day = e.day \
         WHERE e.pending IS DISTINCT FROM f.pending OR e.posted IS DISTINCT FROM f.posted \
         ORDER BY 1, 2, 3, 4 LIMIT 100",
    )
    .fetch_all(executor)
    .await?;
    for (debit, credit, cost_center, day) in flows {
        report.violations.push(format!(
            "flow {debit} -> {credit} ({cost_center:?}, {day}) differs from the sum of its transfers"
        ));
    }

    let expired: Vec<(String,)> = sqlx::query_as(
        "SELECT p.id FROM ledger_transfers p WHERE p.kind = 'pending' AND p.timeout_at <= $1 \
         AND NOT EXISTS (SELECT 1 FROM ledger_transfers r WHERE r.pending_id = p.id) \
         ORDER BY p.seq LIMIT 100",
    )
    .bind(now)
    .fetch_all(executor)
    .await?;
    for (id,) in expired {
        report.violations.push(format!(
            "pending transfer {id} is past its timeout and still open"
        ));
    }
    Ok(report)
}
