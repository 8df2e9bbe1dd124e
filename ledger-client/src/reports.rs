//! Reads of the ledger's flows (`ledger_flows`): what moved between each pair of accounts per
//! cost center and UTC day, kept by the transfer trigger in the statement that books the
//! transfers. A report over a year of a busy billing account reads a few rows per card and
//! day instead of every transfer; [`crate::invariants::check`] holds the flows to the sums of
//! the transfers.

use sqlx::{PgExecutor, Row as _};
use time::Date;

use crate::ledger::{LedgerError, account_from_row};
use crate::types::Account;

/// Spend of one card in one cost center, month and currency: what it paid into a billing
/// account's receivables (captures) and what came back to it (refunds), in minor units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpendRow {
    /// The card's token.
    pub card_token: String,
    /// The cost center; empty for transfers without one.
    pub cost_center: String,
    /// The first day of the month.
    pub month: Date,
    /// The currency.
    pub currency: String,
    /// Posted from the card's funding source to the receivable.
    pub captured: i64,
    /// Posted back from the receivable to the card's funding source.
    pub refunded: i64,
}

/// The spend of billing account `billing_account` on the UTC days `[from, to)`, one row per
/// card, cost center, month and currency that moved money, ordered by those.
pub async fn spend(
    executor: impl PgExecutor<'_>,
    billing_account: &str,
    from: Date,
    to: Date,
) -> Result<Vec<SpendRow>, LedgerError> {
    let rows = sqlx::query(
        "WITH receivables AS (SELECT id FROM ledger_accounts \
              WHERE billing_account = $1 AND code = 'receivable'), \
         moves AS ( \
           SELECT f.debit_account_id AS card_account, f.cost_center, f.day, f.currency, \
                  f.posted AS captured, 0::bigint AS refunded \
           FROM receivables r JOIN ledger_flows f ON f.credit_account_id = r.id \
           WHERE f.day >= $2 AND f.day < $3 \
           UNION ALL \
           SELECT f.credit_account_id, f.cost_center, f.day, f.currency, 0, f.posted \
           FROM receivables r JOIN ledger_flows f ON f.debit_account_id = r.id \
           WHERE f.day >= $2 AND f.day < $3) \
         SELECT a.card_token, m.cost_center, date_trunc('month', m.day)::date AS month, \
                m.currency, sum(m.captured)::bigint AS captured, sum(m.refunded)::bigint AS refunded \
         FROM moves m JOIN ledger_accounts a ON a.id = m.card_account \
         WHERE a.code = 'funding_source' AND a.card_token IS NOT NULL \
         GROUP BY a.card_token, m.cost_center, 3, m.currency \
         HAVING sum(m.captured) <> 0 OR sum(m.refunded) <> 0 \
         ORDER BY a.card_token, m.cost_center, 3, m.currency",
    )
    .bind(billing_account)
    .bind(from)
    .bind(to)
    .fetch_all(executor)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(SpendRow {
                card_token: row.try_get("card_token")?,
                cost_center: row.try_get("cost_center")?,
                month: row.try_get("month")?,
                currency: row.try_get("currency")?,
                captured: row.try_get("captured")?,
                refunded: row.try_get("refunded")?,
            })
        })
        .collect()
}

/// The accounts that transfers of cost center `cost_center` moved, each with the balances
/// those transfers alone make (the cost center's slice of the account), ordered by id.
pub async fn cost_center_balances(
    executor: impl PgExecutor<'_>,
    cost_center: &str,
) -> Result<Vec<Account>, LedgerError> {
    let rows = sqlx::query(
        "WITH sides AS ( \
           SELECT debit_account_id AS id, pending AS dp, posted AS dpo, 0::bigint AS cp, \
                  0::bigint AS cpo FROM ledger_flows WHERE cost_center = $1 \
           UNION ALL \
           SELECT credit_account_id, 0, 0, pending, posted FROM ledger_flows \
           WHERE cost_center = $1), \
         sums AS (SELECT id, sum(dp)::bigint AS dp, sum(dpo)::bigint AS dpo, \
                  sum(cp)::bigint AS cp, sum(cpo)::bigint AS cpo FROM sides GROUP BY id) \
         SELECT a.id, a.currency, a.code, a.debits_must_not_exceed_credits, \
                a.credits_must_not_exceed_debits, s.dp AS debits_pending, \
                s.dpo AS debits_posted, s.cp AS credits_pending, s.cpo AS credits_posted, \
                a.version, a.owner, a.card_token, a.billing_account, a.cost_center \
         FROM sums s JOIN ledger_accounts a ON a.id = s.id ORDER BY a.id",
    )
    .bind(cost_center)
    .fetch_all(executor)
    .await?;
    rows.iter().map(account_from_row).collect()
}
