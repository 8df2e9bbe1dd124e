//! The ledger's invariant check: what must hold at every commit, verified from the tables.
//! Tests call it after every step; the chaos harness calls it at the end of a run.

use std::fmt;

use sqlx::PgExecutor;
use time::OffsetDateTime;

use crate::ledger::LedgerError;
use crate::types::Currency;

/// What the check found. Empty `violations` means the ledger is consistent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InvariantReport {
    /// Accounts checked.
    pub accounts: i64,
    /// Transfers checked.
    pub transfers: i64,
    /// Each currency's journal, ordered by currency: every currency the ledger has an
    /// account in.
    pub journals: Vec<Journal>,
    /// One line per violation.
    pub violations: Vec<String>,
}

impl InvariantReport {
    /// True if nothing is wrong.
    pub fn holds(&self) -> bool {
        self.violations.is_empty()
    }
}

/// One currency's journal: the sums of the balances of its accounts, in minor units. It sums
/// to zero ([`Journal::balanced`]) when debits equal credits, pending and posted separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Journal {
    /// The currency.
    pub currency: Currency,
    /// Debits held by pending transfers.
    pub debits_pending: i64,
    /// Credits held by pending transfers.
    pub credits_pending: i64,
    /// Debits posted.
    pub debits_posted: i64,
    /// Credits posted.
    pub credits_posted: i64,
}

impl Journal {
    /// True if debits equal credits, pending and posted separately.
    pub fn balanced(&self) -> bool {
        self.debits_pending == self.credits_pending && self.debits_posted == self.credits_posted
    }
}

/// One line, amounts in minor units with thousands separators:
/// `USD journal: debits 1,300 = credits 1,300 (posted)`, with the pending sums after it when
/// any is held, and `!=` for a side that does not balance.
impl fmt::Display for Journal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let side = |debits: i64, credits: i64, state: &str| {
            let relation = if debits == credits { "=" } else { "!=" };
            format!(
                "debits {} {relation} credits {} ({state})",
                grouped(debits),
                grouped(credits)
            )
        };
        write!(
            f,
            "{} journal: {}",
            self.currency.as_str(),
            side(self.debits_posted, self.credits_posted, "posted")
        )?;
        if self.debits_pending != 0 || self.credits_pending != 0 {
            write!(
                f,
                ", {}",
                side(self.debits_pending, self.credits_pending, "pending")
            )?;
        }
        Ok(())
    }
}

/// `amount` with a comma between groups of three digits: `1234567` is `1,234,567`.
fn grouped(amount: i64) -> String {
    let digits = amount.unsigned_abs().to_string();
    let mut text = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if amount < 0 {
        text.push('-');
    }
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            text.push(',');
        }
        text.push(digit);
    }
    text
}

/// Checks, as of `now`, in six queries whatever the ledger's size:
/// - each currency's journal sums to zero: every transfer is within one currency and converted
///   legs cross currencies only through FX clearing accounts per pair (per currency, total
///   debits equal total credits, pending and posted separately; the journals are in the
///   report either way);
/// - every account's balances equal the sum of its transfers;
/// - every flow (per account pair, cost center and day) equals the sum of its transfers;
/// - no pending transfer past its timeout is still open;
/// - every `fx_clearing` account's id names a pair of two different currencies, one of them
///   its own (`fx_clearing:<FROM>-<TO>:<currency>`), and every `fx_rounding` account's id its
///   currency (`fx_rounding:<currency>`): the account trigger refuses any other, and this
///   checks again;
/// - no conversion is booked on one side only: no pair has a clearing account holding a
///   non-zero posted balance while its other currency has no clearing account, or one that
///   never posted anything.
///
/// Each kind of violation is reported for at most 100 examples.
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

    let journals: Vec<(String, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT currency, sum(debits_pending)::bigint, sum(credits_pending)::bigint, \
         sum(debits_posted)::bigint, sum(credits_posted)::bigint FROM ledger_accounts \
         GROUP BY currency ORDER BY currency",
    )
    .fetch_all(executor)
    .await?;
    for (currency, debits_pending, credits_pending, debits_posted, credits_posted) in journals {
        let journal = Journal {
            currency: Currency::new(&currency)
                .map_err(|_| LedgerError::Corrupt(format!("account currency {currency:?}")))?,
            debits_pending,
            credits_pending,
            debits_posted,
            credits_posted,
        };
        if !journal.balanced() {
            report.violations.push(format!(
                "{currency}: debits pending {debits_pending} / posted {debits_posted} differ \
                 from credits pending {credits_pending} / posted {credits_posted}"
            ));
        }
        report.journals.push(journal);
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

    // The FX accounts, in one read of the accounts: ids of the wrong form, then the clearing
    // positions of a pair booked in one of its currencies only. A clearing account's `pair` is
    // `<FROM>-<TO>` of a well-formed id; its posted balance is credits less debits.
    let fx: Vec<(String, String, String, i64)> = sqlx::query_as(
        "WITH fx AS (SELECT id, currency, code, \
         substring(id FROM '^fx_clearing:([A-Z]{3}-[A-Z]{3}):[A-Z]{3}$') AS pair, \
         credits_posted - debits_posted AS posted, \
         debits_posted <> 0 OR credits_posted <> 0 AS moved \
         FROM ledger_accounts WHERE code IN ('fx_clearing', 'fx_rounding')), \
         checked AS (SELECT *, CASE code WHEN 'fx_rounding' THEN id = 'fx_rounding:' || currency \
         ELSE pair IS NOT NULL AND left(pair, 3) <> right(pair, 3) \
         AND currency IN (left(pair, 3), right(pair, 3)) AND right(id, 3) = currency \
         END AS well_formed FROM fx), \
         clearing AS (SELECT pair, currency, posted, moved FROM checked \
         WHERE code = 'fx_clearing' AND well_formed) \
         (SELECT code, id, currency, 0::bigint FROM checked WHERE NOT well_formed \
         ORDER BY id LIMIT 100) \
         UNION ALL \
         (SELECT 'one_sided', c.pair, c.currency, c.posted FROM clearing c WHERE c.posted <> 0 \
         AND NOT EXISTS (SELECT 1 FROM clearing o WHERE o.pair = c.pair \
         AND o.currency <> c.currency AND o.moved) \
         ORDER BY 2, 3 LIMIT 100)",
    )
    .fetch_all(executor)
    .await?;
    for (kind, subject, currency, posted) in fx {
        report.violations.push(match kind.as_str() {
            "fx_clearing" => format!(
                "account {subject} ({currency}): an fx_clearing id must be \
                 fx_clearing:<FROM>-<TO>:{currency} with FROM and TO different, one of them {currency}"
            ),
            "fx_rounding" => format!(
                "account {subject} ({currency}): an fx_rounding id must be fx_rounding:{currency}"
            ),
            _ => format!(
                "fx pair {subject}: its {currency} clearing holds {posted} posted (credits less \
                 debits) and its other currency's clearing nothing: a conversion booked on one \
                 side only"
            ),
        });
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal(pending: (i64, i64), posted: (i64, i64)) -> Journal {
        Journal {
            currency: Currency::new("USD").unwrap(),
            debits_pending: pending.0,
            credits_pending: pending.1,
            debits_posted: posted.0,
            credits_posted: posted.1,
        }
    }

    /// A journal prints as one line, pending only when held, `!=` where it does not balance.
    #[test]
    fn journal_lines() {
        let cases = [
            (
                journal((0, 0), (1300, 1300)),
                "USD journal: debits 1,300 = credits 1,300 (posted)",
            ),
            (
                journal((200, 200), (0, 0)),
                "USD journal: debits 0 = credits 0 (posted), debits 200 = credits 200 (pending)",
            ),
            (
                journal((5, 0), (1_234_567, 999)),
                "USD journal: debits 1,234,567 != credits 999 (posted), debits 5 != credits 0 (pending)",
            ),
        ];
        for (journal, line) in cases {
            assert_eq!(journal.to_string(), line);
        }
        assert!(journal((1, 1), (2, 2)).balanced());
        assert!(!journal((1, 0), (2, 2)).balanced());
        assert!(!journal((1, 1), (2, 3)).balanced());
    }

    /// Thousands separators, at every length and sign.
    #[test]
    fn grouped_digits() {
        let cases = [
            (0, "0"),
            (7, "7"),
            (999, "999"),
            (1000, "1,000"),
            (12_345, "12,345"),
            (123_456, "123,456"),
            (1_234_567, "1,234,567"),
            (-1300, "-1,300"),
            (i64::MIN, "-9,223,372,036,854,775,808"),
        ];
        for (amount, text) in cases {
            assert_eq!(grouped(amount), text, "{amount}");
        }
    }
}
