//! Writing and reading the ledger inside a caller's transaction.
//!
//! Every function takes a connection (usually `&mut *transaction`): the caller decides what
//! commits together, so the orchestrator commits its payment state and its transfers in one
//! transaction. Queries are checked at run time; each is covered by the Postgres tests in
//! `tests/tests/ledger.rs`.

use std::collections::BTreeSet;

use base64::Engine as _;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgExecutor, Row as _};
use time::OffsetDateTime;

use crate::engine::{self, AccountState, Resolution, State};
use crate::types::{
    Account, AccountCode, AccountId, AccountRefs, AccountResult, BalanceLimit, Balances, Currency,
    NewAccount, StoredKind, StoredTransfer, Transfer, TransferId, TransferKind, TransferRefs,
    TransferResult,
};

/// Errors that are not business outcomes: the database failed or holds something impossible.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The database failed (a retry may succeed if it was a serialization or deadlock error).
    #[error("ledger database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A stored value violates the ledger's invariants.
    #[error("ledger data is corrupt: {0}")]
    Corrupt(String),
    /// The batching writer is gone.
    #[error("ledger writer stopped")]
    WriterStopped,
    /// A call carried more transfers than [`TRANSFERS_PER_CALL_MAX`].
    #[error("too many transfers in one call: {0} (at most {TRANSFERS_PER_CALL_MAX})")]
    TooManyTransfers(usize),
    /// A call carried more accounts than [`ACCOUNTS_PER_CALL_MAX`].
    #[error("too many accounts in one call: {0} (at most {ACCOUNTS_PER_CALL_MAX})")]
    TooManyAccounts(usize),
}

/// Most accounts one `create_accounts` call may carry: bounds one statement's parameters.
pub const ACCOUNTS_PER_CALL_MAX: usize = 8190;

/// Most transfers one call (or one writer batch) may carry: bounds the memory and the lock
/// set of a transaction.
pub const TRANSFERS_PER_CALL_MAX: usize = 8190;

const TRANSFER_COLUMNS: &str = "t.seq, t.id, t.kind, t.debit_account_id, t.credit_account_id, \
     t.currency, t.amount, t.pending_id, t.timeout_at, t.payment_id, t.invoice_id, t.leg_id, \
     t.cost_center, t.processor_reference, t.created_at";

/// Creates accounts; an existing id gives `Exists` or `ExistsWithDifferentFields`. One insert
/// for all of them, and one read of those that existed (none on the common path).
///
/// The insert names no conflict target, so that every unique index of `ledger_accounts` (the
/// primary key and `(id, currency)`, which the transfers' foreign keys need) is an arbiter: a
/// transaction creating the same account concurrently makes this one wait for it and then
/// find the account, instead of failing on whichever index is not the arbiter.
pub async fn create_accounts(
    conn: &mut PgConnection,
    accounts: &[NewAccount],
) -> Result<Vec<AccountResult>, LedgerError> {
    if accounts.is_empty() {
        return Ok(Vec::new());
    }
    if accounts.len() > ACCOUNTS_PER_CALL_MAX {
        return Err(LedgerError::TooManyAccounts(accounts.len()));
    }
    let column = |f: fn(&NewAccount) -> Option<&str>| -> Vec<Option<&str>> {
        accounts.iter().map(f).collect()
    };
    let inserted: Vec<String> = sqlx::query_scalar(
        "INSERT INTO ledger_accounts (id, currency, code, debits_must_not_exceed_credits, \
         credits_must_not_exceed_debits, owner, card_token, billing_account, cost_center) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::boolean[], $5::boolean[], \
         $6::text[], $7::text[], $8::text[], $9::text[]) ON CONFLICT DO NOTHING RETURNING id",
    )
    .bind(column(|a| Some(a.id.as_str())))
    .bind(column(|a| Some(a.currency.as_str())))
    .bind(column(|a| Some(a.code.as_str())))
    .bind(
        accounts
            .iter()
            .map(|a| a.limit == BalanceLimit::DebitsMustNotExceedCredits)
            .collect::<Vec<_>>(),
    )
    .bind(
        accounts
            .iter()
            .map(|a| a.limit == BalanceLimit::CreditsMustNotExceedDebits)
            .collect::<Vec<_>>(),
    )
    .bind(column(|a| a.refs.owner.as_deref()))
    .bind(column(|a| a.refs.card_token.as_deref()))
    .bind(column(|a| a.refs.billing_account.as_deref()))
    .bind(column(|a| a.refs.cost_center.as_deref()))
    .fetch_all(&mut *conn)
    .await?;
    // The first occurrence of an inserted id is new; every other account met an existing row
    // (from before, or earlier in this call) and is compared with it.
    let mut new: std::collections::HashSet<&str> = inserted.iter().map(String::as_str).collect();
    let fresh: Vec<bool> = accounts
        .iter()
        .map(|account| new.remove(account.id.as_str()))
        .collect();
    let existing: Vec<AccountId> = accounts
        .iter()
        .zip(&fresh)
        .filter(|(_, fresh)| !**fresh)
        .map(|(account, _)| account.id.clone())
        .collect();
    let stored = if existing.is_empty() {
        Vec::new()
    } else {
        accounts_by_id(&mut *conn, &existing).await?
    };
    accounts
        .iter()
        .zip(fresh)
        .map(|(account, fresh)| {
            if fresh {
                return Ok(AccountResult::Ok);
            }
            let stored = stored
                .iter()
                .find(|s| s.id == account.id)
                .ok_or_else(|| LedgerError::Corrupt("conflicting account vanished".into()))?;
            let same = stored.currency == account.currency
                && stored.code == account.code
                && stored.limit == account.limit
                && stored.refs == account.refs;
            Ok(if same {
                AccountResult::Exists
            } else {
                AccountResult::ExistsWithDifferentFields
            })
        })
        .collect()
}

/// Creates transfers in order and returns one result per transfer. Accounts are locked in
/// sorted order before anything is decided, so concurrent callers never deadlock and never
/// see each other's half-applied batches. Call it once per transaction for that guarantee.
pub async fn create_transfers(
    conn: &mut PgConnection,
    transfers: &[Transfer],
) -> Result<Vec<TransferResult>, LedgerError> {
    Ok(create_transfer_batches(conn, &[transfers])
        .await?
        .pop()
        .unwrap_or_default())
}

/// Creates several independent batches in one go (the batching writer's path): one lock, one
/// insert, one result list per batch. A linked chain never spans two batches.
pub async fn create_transfer_batches(
    conn: &mut PgConnection,
    batches: &[&[Transfer]],
) -> Result<Vec<Vec<TransferResult>>, LedgerError> {
    let total: usize = batches.iter().map(|batch| batch.len()).sum();
    if total > TRANSFERS_PER_CALL_MAX {
        return Err(LedgerError::TooManyTransfers(total));
    }
    let now = crate::now_micros();
    let all = || batches.iter().flat_map(|batch| batch.iter());
    let pending_ids: BTreeSet<&str> = all()
        .filter_map(|t| match &t.kind {
            TransferKind::PostPending { pending_id, .. }
            | TransferKind::VoidPending { pending_id } => Some(pending_id.as_str()),
            _ => None,
        })
        .collect();

    // Pending transfers are immutable: read their accounts before locking.
    let pendings = if pending_ids.is_empty() {
        Vec::new()
    } else {
        transfers_by_id(&mut *conn, &pending_ids).await?
    };
    let mut account_ids: BTreeSet<&str> = BTreeSet::new();
    for transfer in all() {
        if let TransferKind::Single { debit, credit, .. }
        | TransferKind::Pending { debit, credit, .. } = &transfer.kind
        {
            account_ids.extend([debit.as_str(), credit.as_str()]);
        }
    }
    for (pending, _) in &pendings {
        account_ids.extend([pending.debit.as_str(), pending.credit.as_str()]);
    }

    // After the locks (one round trip, see ledger_lock_and_read): resolutions and existing ids
    // are current.
    let mut wanted: BTreeSet<&str> = all().map(|t| t.id.as_str()).collect();
    wanted.extend(pending_ids.iter().copied());
    let mut state = State::default();
    let rows = sqlx::query("SELECT * FROM ledger_lock_and_read($1, $2)")
        .bind(account_ids.iter().copied().collect::<Vec<_>>())
        .bind(wanted.iter().copied().collect::<Vec<_>>())
        .fetch_all(&mut *conn)
        .await?;
    for row in &rows {
        let row_kind: String = row.try_get("row_kind")?;
        if row_kind == "account" {
            let account = account_from_row(row)?;
            state.accounts.insert(
                account.id,
                AccountState {
                    currency: account.currency,
                    limit: account.limit,
                    balances: account.balances,
                },
            );
        } else {
            let (transfer, resolution) = transfer_with_resolution(row)?;
            if transfer.kind == StoredKind::Pending {
                state.resolutions.insert(transfer.id.clone(), resolution);
            }
            state.transfers.insert(transfer.id.clone(), transfer);
        }
    }

    let mut results = Vec::with_capacity(batches.len());
    let mut inserts = Vec::new();
    for batch in batches {
        let mut decision = engine::decide(batch, &mut state, now);
        inserts.append(&mut decision.inserts);
        results.push(decision.results);
    }
    insert_transfers(conn, &inserts).await?;
    Ok(results)
}

/// Voids up to `limit` pending transfers whose timeout has passed, releasing their holds.
/// Returns how many were voided. The void's id is `expired:<pending seq>`.
pub async fn expire_pending(
    conn: &mut PgConnection,
    now: OffsetDateTime,
    limit: i64,
) -> Result<usize, LedgerError> {
    let rows: Vec<(i64, String)> = sqlx::query_as(
        "SELECT p.seq, p.id FROM ledger_transfers p WHERE p.kind = 'pending' \
         AND p.timeout_at <= $1 AND NOT EXISTS \
         (SELECT 1 FROM ledger_transfers r WHERE r.pending_id = p.id) ORDER BY p.timeout_at LIMIT $2",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    let voids: Vec<Transfer> = rows
        .into_iter()
        .map(|(seq, id)| Transfer {
            id: TransferId::from_stored(format!("expired:{seq}")),
            kind: TransferKind::VoidPending {
                pending_id: TransferId::from_stored(id),
            },
            linked: false,
            refs: TransferRefs::default(),
        })
        .collect();
    let results = create_transfers(conn, &voids).await?;
    Ok(results.iter().filter(|r| **r == TransferResult::Ok).count())
}

/// Transfers by id, each with the resolution of a pending transfer.
async fn transfers_by_id(
    conn: &mut PgConnection,
    ids: &BTreeSet<&str>,
) -> Result<Vec<(StoredTransfer, Resolution)>, LedgerError> {
    let ids: Vec<&str> = ids.iter().copied().collect();
    let sql = format!(
        "SELECT {TRANSFER_COLUMNS}, r.kind AS resolution FROM ledger_transfers t \
         LEFT JOIN ledger_transfers r ON r.pending_id = t.id WHERE t.id = ANY($1)"
    );
    // Not a prepared statement: a plan cached while the ledger was small would scan it in full.
    let rows = sqlx::query(&sql)
        .persistent(false)
        .bind(ids)
        .fetch_all(conn)
        .await?;
    rows.iter().map(transfer_with_resolution).collect()
}

/// A transfer row with a `resolution` column (the kind of the post or void resolving it).
fn transfer_with_resolution(row: &PgRow) -> Result<(StoredTransfer, Resolution), LedgerError> {
    let resolution: Option<String> = row.try_get("resolution")?;
    let resolution = match resolution.as_deref() {
        None => Resolution::Open,
        Some("post_pending") => Resolution::Posted,
        Some("void_pending") => Resolution::Voided,
        Some(other) => return Err(LedgerError::Corrupt(format!("resolution {other}"))),
    };
    Ok((transfer_from_row(row)?, resolution))
}

async fn insert_transfers(
    conn: &mut PgConnection,
    rows: &[StoredTransfer],
) -> Result<(), LedgerError> {
    if rows.is_empty() {
        return Ok(());
    }
    let column = |f: fn(&StoredTransfer) -> Option<&str>| -> Vec<Option<&str>> {
        rows.iter().map(f).collect()
    };
    sqlx::query(
        "INSERT INTO ledger_transfers (id, kind, debit_account_id, credit_account_id, currency, \
         amount, pending_id, timeout_at, payment_id, invoice_id, leg_id, cost_center, created_at, \
         processor_reference) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
         $6::bigint[], $7::text[], $8::timestamptz[], $9::text[], $10::text[], $11::text[], \
         $12::text[], $13::timestamptz[], $14::text[])",
    )
    .bind(column(|r| Some(r.id.as_str())))
    .bind(column(|r| Some(r.kind.as_str())))
    .bind(column(|r| Some(r.debit.as_str())))
    .bind(column(|r| Some(r.credit.as_str())))
    .bind(column(|r| Some(r.currency.as_str())))
    .bind(rows.iter().map(|r| r.amount).collect::<Vec<_>>())
    .bind(column(|r| r.pending_id.as_ref().map(TransferId::as_str)))
    .bind(rows.iter().map(|r| r.timeout_at).collect::<Vec<_>>())
    .bind(column(|r| r.refs.payment_id.as_deref()))
    .bind(column(|r| r.refs.invoice_id.as_deref()))
    .bind(column(|r| r.refs.leg_id.as_deref()))
    .bind(column(|r| r.refs.cost_center.as_deref()))
    .bind(rows.iter().map(|r| r.created_at).collect::<Vec<_>>())
    .bind(column(|r| r.refs.processor_reference.as_deref()))
    .execute(conn)
    .await?;
    Ok(())
}

/// Reads accounts by id (missing ids are skipped), ordered by id.
pub async fn accounts_by_id(
    executor: impl PgExecutor<'_>,
    ids: &[AccountId],
) -> Result<Vec<Account>, LedgerError> {
    let ids: Vec<&str> = ids.iter().map(AccountId::as_str).collect();
    let rows = sqlx::query(
        "SELECT id, currency, code, debits_must_not_exceed_credits, credits_must_not_exceed_debits, \
         debits_pending, debits_posted, credits_pending, credits_posted, version, owner, \
         card_token, billing_account, cost_center FROM ledger_accounts WHERE id = ANY($1) ORDER BY id",
    )
    .bind(ids)
    .fetch_all(executor)
    .await?;
    rows.iter().map(account_from_row).collect()
}

/// An account's balances as they were at `at`, recomputed from its transfers.
pub async fn balances_as_of(
    executor: impl PgExecutor<'_>,
    account: &AccountId,
    at: OffsetDateTime,
) -> Result<Balances, LedgerError> {
    let row = sqlx::query(
        "WITH visible AS (SELECT t.*, p.amount AS pending_amount FROM ledger_transfers t \
         LEFT JOIN ledger_transfers p ON p.id = t.pending_id WHERE t.created_at <= $2 \
         AND (t.debit_account_id = $1 OR t.credit_account_id = $1)), \
         effects AS (SELECT debit_account_id, credit_account_id, \
         CASE kind WHEN 'pending' THEN amount WHEN 'single' THEN 0 ELSE -pending_amount END AS pd, \
         CASE kind WHEN 'single' THEN amount WHEN 'post_pending' THEN amount ELSE 0 END AS po \
         FROM visible) \
         SELECT coalesce(sum(pd) FILTER (WHERE debit_account_id = $1), 0)::bigint AS dp, \
         coalesce(sum(po) FILTER (WHERE debit_account_id = $1), 0)::bigint AS dpo, \
         coalesce(sum(pd) FILTER (WHERE credit_account_id = $1), 0)::bigint AS cp, \
         coalesce(sum(po) FILTER (WHERE credit_account_id = $1), 0)::bigint AS cpo FROM effects",
    )
    .bind(account.as_str())
    .bind(at)
    .fetch_one(executor)
    .await?;
    Ok(Balances {
        debits_pending: row.try_get("dp")?,
        debits_posted: row.try_get("dpo")?,
        credits_pending: row.try_get("cp")?,
        credits_posted: row.try_get("cpo")?,
    })
}

/// Which transfers a read or export selects. Empty fields do not filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransferFilter {
    /// Transfers debiting or crediting this account.
    pub account: Option<AccountId>,
    /// Of this payment.
    pub payment_id: Option<String>,
    /// Of this invoice.
    pub invoice_id: Option<String>,
    /// Debiting or crediting an account of this card token.
    pub card_token: Option<String>,
    /// Debiting or crediting an account of this billing account.
    pub billing_account: Option<String>,
    /// Of this cost center.
    pub cost_center: Option<String>,
    /// Created at or after this time.
    pub from: Option<OffsetDateTime>,
    /// Created before this time.
    pub to: Option<OffsetDateTime>,
}

/// A page of transfers in ledger order (AIP-158).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferPage {
    /// The transfers.
    pub transfers: Vec<StoredTransfer>,
    /// Pass back to get the next page; `None` on the last page.
    pub next_page_token: Option<String>,
}

/// Most transfers per page.
pub const PAGE_SIZE_MAX: i64 = 1000;

/// Lists transfers matching `filter` in ledger order, `page_size` at a time (clamped to
/// 1..=[`PAGE_SIZE_MAX`]). `page_token` is the previous page's `next_page_token`.
pub async fn list_transfers(
    executor: impl PgExecutor<'_>,
    filter: &TransferFilter,
    page_size: i64,
    page_token: Option<&str>,
) -> Result<TransferPage, LedgerError> {
    let after_seq = match page_token {
        None => 0,
        Some(token) => decode_page_token(token).ok_or_else(|| {
            LedgerError::Corrupt("page token is not one this ledger issued".into())
        })?,
    };
    let limit = page_size.clamp(1, PAGE_SIZE_MAX);
    let mut transfers = transfers_after(executor, filter, after_seq, limit + 1).await?;
    let next_page_token = if transfers.len() as i64 > limit {
        transfers.truncate(limit as usize);
        transfers.last().map(|t| encode_page_token(t.seq))
    } else {
        None
    };
    Ok(TransferPage {
        transfers,
        next_page_token,
    })
}

/// At most `limit` transfers matching `filter` after ledger position `after_seq`, in ledger
/// order: the read under [`list_transfers`], for callers that keep their own page tokens.
pub async fn transfers_after(
    executor: impl PgExecutor<'_>,
    filter: &TransferFilter,
    after_seq: i64,
    limit: i64,
) -> Result<Vec<StoredTransfer>, LedgerError> {
    let sql = format!(
        "SELECT {TRANSFER_COLUMNS} FROM ledger_transfers t WHERE t.seq > $1 \
         AND ($2::text IS NULL OR t.debit_account_id = $2 OR t.credit_account_id = $2) \
         AND ($3::text IS NULL OR t.payment_id = $3) AND ($4::text IS NULL OR t.invoice_id = $4) \
         AND ($5::text IS NULL OR EXISTS (SELECT 1 FROM ledger_accounts a WHERE a.card_token = $5 \
              AND a.id IN (t.debit_account_id, t.credit_account_id))) \
         AND ($6::text IS NULL OR t.cost_center = $6) \
         AND ($7::timestamptz IS NULL OR t.created_at >= $7) \
         AND ($8::timestamptz IS NULL OR t.created_at < $8) \
         AND ($10::text IS NULL OR EXISTS (SELECT 1 FROM ledger_accounts a \
              WHERE a.billing_account = $10 AND a.id IN (t.debit_account_id, t.credit_account_id))) \
         ORDER BY t.seq LIMIT $9"
    );
    let rows = sqlx::query(&sql)
        .bind(after_seq)
        .bind(filter.account.as_ref().map(AccountId::as_str))
        .bind(filter.payment_id.as_deref())
        .bind(filter.invoice_id.as_deref())
        .bind(filter.card_token.as_deref())
        .bind(filter.cost_center.as_deref())
        .bind(filter.from)
        .bind(filter.to)
        .bind(limit.max(0))
        .bind(filter.billing_account.as_deref())
        .fetch_all(executor)
        .await?;
    rows.iter().map(transfer_from_row).collect()
}

/// The transfers carrying one of the processor `references` (captures and refunds), in
/// ledger order.
pub async fn transfers_by_processor_reference(
    executor: impl PgExecutor<'_>,
    references: &[&str],
) -> Result<Vec<StoredTransfer>, LedgerError> {
    let sql = format!(
        "SELECT {TRANSFER_COLUMNS} FROM ledger_transfers t \
         WHERE t.processor_reference = ANY($1) ORDER BY t.seq"
    );
    let rows = sqlx::query(&sql)
        .bind(references)
        .fetch_all(executor)
        .await?;
    rows.iter().map(transfer_from_row).collect()
}

/// The transfers carrying a processor reference (captures and refunds) written in
/// `[from, to)`, in ledger order.
pub async fn processor_transfers_between(
    executor: impl PgExecutor<'_>,
    from: OffsetDateTime,
    to: OffsetDateTime,
) -> Result<Vec<StoredTransfer>, LedgerError> {
    let sql = format!(
        "SELECT {TRANSFER_COLUMNS} FROM ledger_transfers t WHERE t.processor_reference IS NOT NULL \
         AND t.created_at >= $1 AND t.created_at < $2 ORDER BY t.seq"
    );
    let rows = sqlx::query(&sql)
        .bind(from)
        .bind(to)
        .fetch_all(executor)
        .await?;
    rows.iter().map(transfer_from_row).collect()
}

/// The accounts of a card token (its funding sources) or of a billing account (its
/// receivables and refunds), ordered by id.
pub async fn accounts_of(
    executor: impl PgExecutor<'_>,
    owner: &AccountOwner,
) -> Result<Vec<Account>, LedgerError> {
    let (card_token, billing_account) = match owner {
        AccountOwner::Card(token) => (Some(token.as_str()), None),
        AccountOwner::BillingAccount(account) => (None, Some(account.as_str())),
    };
    let rows = sqlx::query(
        "SELECT id, currency, code, debits_must_not_exceed_credits, credits_must_not_exceed_debits, \
         debits_pending, debits_posted, credits_pending, credits_posted, version, owner, \
         card_token, billing_account, cost_center FROM ledger_accounts \
         WHERE ($1::text IS NOT NULL AND card_token = $1) \
            OR ($2::text IS NOT NULL AND billing_account = $2) ORDER BY id",
    )
    .bind(card_token)
    .bind(billing_account)
    .fetch_all(executor)
    .await?;
    rows.iter().map(account_from_row).collect()
}

/// Whose accounts [`accounts_of`] reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountOwner {
    /// The accounts whose `card_token` is this.
    Card(String),
    /// The accounts whose `billing_account` is this.
    BillingAccount(String),
}

fn encode_page_token(seq: i64) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("ledger/v1/{seq}"))
}

fn decode_page_token(token: &str) -> Option<i64> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()?;
    std::str::from_utf8(&bytes)
        .ok()?
        .strip_prefix("ledger/v1/")?
        .parse()
        .ok()
        .filter(|seq| *seq >= 0)
}

pub(crate) fn account_from_row(row: &PgRow) -> Result<Account, LedgerError> {
    let corrupt = |what: &str| LedgerError::Corrupt(what.to_owned());
    let currency: String = row.try_get("currency")?;
    let code: String = row.try_get("code")?;
    let debits_limit: bool = row.try_get("debits_must_not_exceed_credits")?;
    let credits_limit: bool = row.try_get("credits_must_not_exceed_debits")?;
    Ok(Account {
        id: AccountId::from_stored(row.try_get("id")?),
        currency: Currency::new(&currency).map_err(|_| corrupt("account currency"))?,
        code: AccountCode::parse(&code).ok_or_else(|| corrupt("account code"))?,
        limit: match (debits_limit, credits_limit) {
            (true, _) => BalanceLimit::DebitsMustNotExceedCredits,
            (false, true) => BalanceLimit::CreditsMustNotExceedDebits,
            (false, false) => BalanceLimit::None,
        },
        balances: Balances {
            debits_pending: row.try_get("debits_pending")?,
            debits_posted: row.try_get("debits_posted")?,
            credits_pending: row.try_get("credits_pending")?,
            credits_posted: row.try_get("credits_posted")?,
        },
        version: row.try_get("version")?,
        refs: AccountRefs {
            owner: row.try_get("owner")?,
            card_token: row.try_get("card_token")?,
            billing_account: row.try_get("billing_account")?,
            cost_center: row.try_get("cost_center")?,
        },
    })
}

fn transfer_from_row(row: &PgRow) -> Result<StoredTransfer, LedgerError> {
    let corrupt = |what: &str| LedgerError::Corrupt(what.to_owned());
    let kind: String = row.try_get("kind")?;
    let currency: String = row.try_get("currency")?;
    let pending_id: Option<String> = row.try_get("pending_id")?;
    Ok(StoredTransfer {
        seq: row.try_get("seq")?,
        id: TransferId::from_stored(row.try_get("id")?),
        kind: StoredKind::parse(&kind).ok_or_else(|| corrupt("transfer kind"))?,
        debit: AccountId::from_stored(row.try_get("debit_account_id")?),
        credit: AccountId::from_stored(row.try_get("credit_account_id")?),
        currency: Currency::new(&currency).map_err(|_| corrupt("transfer currency"))?,
        amount: row.try_get("amount")?,
        pending_id: pending_id.map(TransferId::from_stored),
        timeout_at: row.try_get("timeout_at")?,
        refs: TransferRefs {
            payment_id: row.try_get("payment_id")?,
            invoice_id: row.try_get("invoice_id")?,
            leg_id: row.try_get("leg_id")?,
            cost_center: row.try_get("cost_center")?,
            processor_reference: row.try_get("processor_reference")?,
        },
        created_at: row.try_get("created_at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Page tokens round-trip and foreign tokens are refused.
    #[test]
    fn page_tokens() {
        assert_eq!(decode_page_token(&encode_page_token(42)), Some(42));
        assert_eq!(decode_page_token("bm9wZQ"), None);
        assert_eq!(decode_page_token("!!"), None);
    }
}
