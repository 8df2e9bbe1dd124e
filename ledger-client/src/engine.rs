//! The ledger's decisions, free of IO: given the accounts (locked), the transfers that already
//! exist and the pending transfers a batch refers to, decide each transfer's result and which
//! rows to insert. The storage layer loads the state, calls [`decide`], and inserts the rows;
//! the database trigger then applies them to the balances exactly as this module did in memory.

use std::collections::HashMap;

use time::OffsetDateTime;

use crate::types::{
    AccountId, BalanceLimit, Balances, Currency, StoredKind, StoredTransfer, Transfer, TransferId,
    TransferKind, TransferResult,
};

/// An account as the engine needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountState {
    /// Currency.
    pub currency: Currency,
    /// Balance limit.
    pub limit: BalanceLimit,
    /// Balances, updated in memory as the batch is decided.
    pub balances: Balances,
}

/// Whether a pending transfer has been resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// Neither posted nor voided.
    Open,
    /// Posted.
    Posted,
    /// Voided.
    Voided,
}

/// Everything [`decide`] reads and updates.
#[derive(Debug, Clone, Default)]
pub struct State {
    /// Accounts the batch touches.
    pub accounts: HashMap<AccountId, AccountState>,
    /// Existing transfers whose ids the batch uses, and the pending transfers it refers to.
    pub transfers: HashMap<TransferId, StoredTransfer>,
    /// Resolution of every pending transfer in `transfers`.
    pub resolutions: HashMap<TransferId, Resolution>,
}

/// The outcome of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// One result per transfer, in order.
    pub results: Vec<TransferResult>,
    /// The rows to insert, in order (`seq` is assigned by the database).
    pub inserts: Vec<StoredTransfer>,
}

/// Decides a batch. Linked chains succeed or fail together; a chain still open at the end of
/// the batch fails with `LinkedEventChainOpen`.
pub fn decide(transfers: &[Transfer], state: &mut State, now: OffsetDateTime) -> Decision {
    let mut results = Vec::with_capacity(transfers.len());
    let mut inserts = Vec::with_capacity(transfers.len());
    let mut start = 0;
    while start < transfers.len() {
        // A chain runs up to and including the first transfer without `linked`.
        let end = transfers[start..]
            .iter()
            .position(|t| !t.linked)
            .map_or(transfers.len(), |i| start + i + 1);
        let chain = &transfers[start..end];
        let chain_open = chain.last().is_some_and(|t| t.linked);
        if chain.len() == 1 && !chain_open {
            let (result, insert) = decide_one(&chain[0], state, now);
            results.push(result);
            inserts.extend(insert);
        } else {
            decide_chain(chain, chain_open, state, now, &mut results, &mut inserts);
        }
        start = end;
    }
    assert_eq!(results.len(), transfers.len());
    Decision { results, inserts }
}

fn decide_chain(
    chain: &[Transfer],
    chain_open: bool,
    state: &mut State,
    now: OffsetDateTime,
    results: &mut Vec<TransferResult>,
    inserts: &mut Vec<StoredTransfer>,
) {
    let snapshot = state.clone();
    let mut chain_results = Vec::with_capacity(chain.len());
    let mut chain_inserts = Vec::new();
    let mut failed = false;
    for (index, transfer) in chain.iter().enumerate() {
        if failed {
            chain_results.push(TransferResult::LinkedEventFailed);
            continue;
        }
        let is_last = index + 1 == chain.len();
        let (result, insert) = if chain_open && is_last {
            (TransferResult::LinkedEventChainOpen, None)
        } else {
            decide_one(transfer, state, now)
        };
        if result.is_success() {
            chain_results.push(result);
            chain_inserts.extend(insert);
        } else {
            failed = true;
            // Earlier members succeeded only as part of the chain: they fail with it.
            chain_results.fill(TransferResult::LinkedEventFailed);
            chain_results.push(result);
        }
    }
    if failed {
        *state = snapshot;
    } else {
        inserts.append(&mut chain_inserts);
    }
    results.append(&mut chain_results);
}

/// Decides one transfer, updating `state` on success.
fn decide_one(
    transfer: &Transfer,
    state: &mut State,
    now: OffsetDateTime,
) -> (TransferResult, Option<StoredTransfer>) {
    if let Some(existing) = state.transfers.get(&transfer.id) {
        let same = same_fields(transfer, existing, state);
        let result = if same {
            TransferResult::Exists
        } else {
            TransferResult::ExistsWithDifferentFields
        };
        return (result, None);
    }
    let row = match &transfer.kind {
        TransferKind::Single {
            debit,
            credit,
            amount,
        } => new_movement(
            transfer,
            StoredKind::Single,
            debit,
            credit,
            *amount,
            None,
            state,
            now,
        ),
        TransferKind::Pending {
            debit,
            credit,
            amount,
            timeout_at,
        } => {
            // Stored at Postgres's precision, so a replay compares equal.
            let timeout_at = timeout_at.map(crate::truncate_to_micros);
            if timeout_at.is_some_and(|t| t <= now) {
                Err(TransferResult::TimeoutMustBeInFuture)
            } else {
                new_movement(
                    transfer,
                    StoredKind::Pending,
                    debit,
                    credit,
                    *amount,
                    timeout_at,
                    state,
                    now,
                )
            }
        }
        TransferKind::PostPending { pending_id, amount } => {
            resolve(transfer, pending_id, Some(*amount), state, now)
        }
        TransferKind::VoidPending { pending_id } => resolve(transfer, pending_id, None, state, now),
    };
    match row {
        Ok(row) => {
            apply(&row, state);
            state.transfers.insert(row.id.clone(), row.clone());
            if row.kind == StoredKind::Pending {
                state.resolutions.insert(row.id.clone(), Resolution::Open);
            }
            (TransferResult::Ok, Some(row))
        }
        Err(result) => (result, None),
    }
}

#[allow(clippy::too_many_arguments)]
fn new_movement(
    transfer: &Transfer,
    kind: StoredKind,
    debit: &AccountId,
    credit: &AccountId,
    amount: i64,
    timeout_at: Option<OffsetDateTime>,
    state: &State,
    now: OffsetDateTime,
) -> Result<StoredTransfer, TransferResult> {
    if amount <= 0 {
        return Err(TransferResult::AmountMustBePositive);
    }
    if debit == credit {
        return Err(TransferResult::AccountsMustBeDifferent);
    }
    let debit_account = state
        .accounts
        .get(debit)
        .ok_or(TransferResult::DebitAccountNotFound)?;
    let credit_account = state
        .accounts
        .get(credit)
        .ok_or(TransferResult::CreditAccountNotFound)?;
    if debit_account.currency != credit_account.currency {
        return Err(TransferResult::CurrenciesMustMatch);
    }
    let d = debit_account.balances;
    let limited = debit_account.limit == BalanceLimit::DebitsMustNotExceedCredits;
    if exceeds(
        limited,
        d.debits_pending,
        d.debits_posted,
        amount,
        d.credits_posted,
    ) {
        return Err(TransferResult::ExceedsCredits);
    }
    let c = credit_account.balances;
    let limited = credit_account.limit == BalanceLimit::CreditsMustNotExceedDebits;
    if exceeds(
        limited,
        c.credits_pending,
        c.credits_posted,
        amount,
        c.debits_posted,
    ) {
        return Err(TransferResult::ExceedsDebits);
    }
    Ok(StoredTransfer {
        seq: 0,
        id: transfer.id.clone(),
        kind,
        debit: debit.clone(),
        credit: credit.clone(),
        currency: debit_account.currency,
        amount,
        pending_id: None,
        timeout_at,
        refs: transfer.refs.clone(),
        created_at: now,
    })
}

/// True if one side's pending + posted + `amount` overflows, or, on a `limited` side, exceeds
/// the other side's posted total.
fn exceeds(limited: bool, pending: i64, posted: i64, amount: i64, other_posted: i64) -> bool {
    pending
        .checked_add(posted)
        .and_then(|sum| sum.checked_add(amount))
        .is_none_or(|total| limited && total > other_posted)
}

/// A post (`post_amount` is `Some`) or a void (`None`) of `pending_id`.
fn resolve(
    transfer: &Transfer,
    pending_id: &TransferId,
    post_amount: Option<Option<i64>>,
    state: &State,
    now: OffsetDateTime,
) -> Result<StoredTransfer, TransferResult> {
    let pending = state
        .transfers
        .get(pending_id)
        .ok_or(TransferResult::PendingNotFound)?;
    if pending.kind != StoredKind::Pending {
        return Err(TransferResult::PendingTransferNotPending);
    }
    // A hold committed by another writer after this batch chose its locks: its accounts are
    // not locked, so this batch orders itself before the hold existed.
    if !state.accounts.contains_key(&pending.debit) || !state.accounts.contains_key(&pending.credit)
    {
        return Err(TransferResult::PendingNotFound);
    }
    match state.resolutions.get(pending_id) {
        Some(Resolution::Posted) => return Err(TransferResult::PendingAlreadyPosted),
        Some(Resolution::Voided) => return Err(TransferResult::PendingAlreadyVoided),
        Some(Resolution::Open) | None => {}
    }
    // A hold past its timeout can no longer be posted. It can still be voided: that is how
    // `expire_pending` releases it.
    if post_amount.is_some() && pending.timeout_at.is_some_and(|t| t <= now) {
        return Err(TransferResult::PendingExpired);
    }
    let (kind, amount) = match post_amount {
        None => (StoredKind::VoidPending, pending.amount),
        Some(None) => (StoredKind::PostPending, pending.amount),
        Some(Some(amount)) if amount <= 0 => return Err(TransferResult::AmountMustBePositive),
        Some(Some(amount)) if amount > pending.amount => {
            return Err(TransferResult::ExceedsPendingAmount);
        }
        Some(Some(amount)) => (StoredKind::PostPending, amount),
    };
    Ok(StoredTransfer {
        seq: 0,
        id: transfer.id.clone(),
        kind,
        debit: pending.debit.clone(),
        credit: pending.credit.clone(),
        currency: pending.currency,
        amount,
        pending_id: Some(pending_id.clone()),
        timeout_at: None,
        refs: transfer.refs.clone(),
        created_at: now,
    })
}

/// Applies a decided row to the in-memory balances, as the database trigger will.
fn apply(row: &StoredTransfer, state: &mut State) {
    let pending_amount = row
        .pending_id
        .as_ref()
        .and_then(|id| state.transfers.get(id))
        .map_or(0, |p| p.amount);
    let (pending_delta, posted_delta) = match row.kind {
        StoredKind::Single => (0, row.amount),
        StoredKind::Pending => (row.amount, 0),
        StoredKind::PostPending => (-pending_amount, row.amount),
        StoredKind::VoidPending => (-pending_amount, 0),
    };
    if let Some(pending_id) = &row.pending_id {
        let resolution = if row.kind == StoredKind::PostPending {
            Resolution::Posted
        } else {
            Resolution::Voided
        };
        state.resolutions.insert(pending_id.clone(), resolution);
    }
    let debit = &mut state
        .accounts
        .get_mut(&row.debit)
        .expect("a decided transfer's debit account is loaded")
        .balances;
    debit.debits_pending += pending_delta;
    debit.debits_posted += posted_delta;
    let credit = &mut state
        .accounts
        .get_mut(&row.credit)
        .expect("a decided transfer's credit account is loaded")
        .balances;
    credit.credits_pending += pending_delta;
    credit.credits_posted += posted_delta;
}

/// True if `transfer` asks for exactly what `existing` is.
fn same_fields(transfer: &Transfer, existing: &StoredTransfer, state: &State) -> bool {
    if transfer.refs != existing.refs {
        return false;
    }
    match &transfer.kind {
        TransferKind::Single {
            debit,
            credit,
            amount,
        } => {
            existing.kind == StoredKind::Single
                && (debit, credit, *amount) == (&existing.debit, &existing.credit, existing.amount)
        }
        TransferKind::Pending {
            debit,
            credit,
            amount,
            timeout_at,
        } => {
            existing.kind == StoredKind::Pending
                && (
                    debit,
                    credit,
                    *amount,
                    timeout_at.map(crate::truncate_to_micros),
                ) == (
                    &existing.debit,
                    &existing.credit,
                    existing.amount,
                    existing.timeout_at,
                )
        }
        TransferKind::PostPending { pending_id, amount } => {
            let full = state.transfers.get(pending_id).map(|p| p.amount);
            existing.kind == StoredKind::PostPending
                && existing.pending_id.as_ref() == Some(pending_id)
                && amount.or(full) == Some(existing.amount)
        }
        TransferKind::VoidPending { pending_id } => {
            existing.kind == StoredKind::VoidPending
                && existing.pending_id.as_ref() == Some(pending_id)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::TransferRefs;

    fn id(text: &str) -> AccountId {
        AccountId::new(text).unwrap()
    }

    fn tid(text: &str) -> TransferId {
        TransferId::new(text).unwrap()
    }

    fn state() -> State {
        let usd = Currency::new("USD").unwrap();
        let mut state = State::default();
        for (name, currency, limit) in [
            ("card", usd, BalanceLimit::None),
            ("invoice", usd, BalanceLimit::None),
            ("prepaid", usd, BalanceLimit::DebitsMustNotExceedCredits),
            ("capped", usd, BalanceLimit::CreditsMustNotExceedDebits),
            ("eur", Currency::new("EUR").unwrap(), BalanceLimit::None),
        ] {
            state.accounts.insert(
                id(name),
                AccountState {
                    currency,
                    limit,
                    balances: Balances::default(),
                },
            );
        }
        state
    }

    fn single(tid_: &str, debit: &str, credit: &str, amount: i64) -> Transfer {
        Transfer {
            id: tid(tid_),
            kind: TransferKind::Single {
                debit: id(debit),
                credit: id(credit),
                amount,
            },
            linked: false,
            refs: TransferRefs::default(),
        }
    }

    fn pending(tid_: &str, amount: i64) -> Transfer {
        Transfer {
            id: tid(tid_),
            kind: TransferKind::Pending {
                debit: id("card"),
                credit: id("invoice"),
                amount,
                timeout_at: None,
            },
            linked: false,
            refs: TransferRefs::default(),
        }
    }

    fn post(tid_: &str, pending: &str, amount: Option<i64>) -> Transfer {
        Transfer {
            id: tid(tid_),
            kind: TransferKind::PostPending {
                pending_id: tid(pending),
                amount,
            },
            linked: false,
            refs: TransferRefs::default(),
        }
    }

    fn void(tid_: &str, pending: &str) -> Transfer {
        Transfer {
            id: tid(tid_),
            kind: TransferKind::VoidPending {
                pending_id: tid(pending),
            },
            linked: false,
            refs: TransferRefs::default(),
        }
    }

    fn linked(mut t: Transfer) -> Transfer {
        t.linked = true;
        t
    }

    fn run(transfers: &[Transfer], state: &mut State) -> Vec<TransferResult> {
        decide(transfers, state, OffsetDateTime::now_utc()).results
    }

    /// Every result code, each from the smallest batch that produces it.
    #[test]
    fn result_table() {
        use TransferResult as R;
        let cases: Vec<(Vec<Transfer>, Vec<R>)> = vec![
            (vec![single("t", "card", "invoice", 5)], vec![R::Ok]),
            (
                vec![
                    single("t", "card", "invoice", 5),
                    single("t", "card", "invoice", 5),
                ],
                vec![R::Ok, R::Exists],
            ),
            (
                vec![
                    single("t", "card", "invoice", 5),
                    single("t", "card", "invoice", 6),
                ],
                vec![R::Ok, R::ExistsWithDifferentFields],
            ),
            (
                vec![single("t", "card", "invoice", 0)],
                vec![R::AmountMustBePositive],
            ),
            (
                vec![single("t", "card", "card", 5)],
                vec![R::AccountsMustBeDifferent],
            ),
            (
                vec![single("t", "nope", "invoice", 5)],
                vec![R::DebitAccountNotFound],
            ),
            (
                vec![single("t", "card", "nope", 5)],
                vec![R::CreditAccountNotFound],
            ),
            (
                vec![single("t", "card", "eur", 5)],
                vec![R::CurrenciesMustMatch],
            ),
            (
                vec![single("t", "prepaid", "invoice", 1)],
                vec![R::ExceedsCredits],
            ),
            (
                vec![single("t", "card", "capped", 1)],
                vec![R::ExceedsDebits],
            ),
            (
                vec![
                    single("fund", "card", "prepaid", 10),
                    single("t", "prepaid", "invoice", 10),
                ],
                vec![R::Ok, R::Ok],
            ),
            (vec![post("p", "nope", None)], vec![R::PendingNotFound]),
            (
                vec![single("s", "card", "invoice", 5), post("p", "s", None)],
                vec![R::Ok, R::PendingTransferNotPending],
            ),
            (
                vec![pending("h", 5), post("p", "h", Some(6))],
                vec![R::Ok, R::ExceedsPendingAmount],
            ),
            (
                vec![pending("h", 5), post("p", "h", Some(0))],
                vec![R::Ok, R::AmountMustBePositive],
            ),
            (
                vec![
                    pending("h", 5),
                    post("p", "h", Some(3)),
                    post("p2", "h", None),
                ],
                vec![R::Ok, R::Ok, R::PendingAlreadyPosted],
            ),
            (
                vec![pending("h", 5), void("v", "h"), post("p", "h", None)],
                vec![R::Ok, R::Ok, R::PendingAlreadyVoided],
            ),
            (
                vec![
                    linked(single("a", "card", "invoice", 5)),
                    single("b", "card", "nope", 5),
                ],
                vec![R::LinkedEventFailed, R::CreditAccountNotFound],
            ),
            (
                vec![
                    linked(single("a", "card", "nope", 5)),
                    single("b", "card", "invoice", 5),
                ],
                vec![R::CreditAccountNotFound, R::LinkedEventFailed],
            ),
            (
                vec![
                    single("a", "card", "invoice", 5),
                    linked(single("b", "card", "invoice", 5)),
                ],
                vec![R::Ok, R::LinkedEventChainOpen],
            ),
        ];
        for (transfers, expected) in cases {
            assert_eq!(run(&transfers, &mut state()), expected, "{transfers:?}");
        }
    }

    /// A failed chain leaves no trace in the balances; a successful one applies in full.
    #[test]
    fn chains_are_atomic() {
        let mut s = state();
        let results = run(
            &[
                linked(single("a", "card", "invoice", 5)),
                linked(single("b", "card", "invoice", 7)),
                single("c", "prepaid", "invoice", 1),
            ],
            &mut s,
        );
        assert!(results.iter().all(|r| !r.is_success()));
        assert_eq!(s.accounts[&id("card")].balances, Balances::default());
        assert!(!s.transfers.contains_key(&tid("a")));

        let decision = decide(
            &[
                linked(single("a", "card", "invoice", 5)),
                single("b", "card", "invoice", 7),
            ],
            &mut s,
            OffsetDateTime::now_utc(),
        );
        assert_eq!(decision.inserts.len(), 2);
        assert_eq!(s.accounts[&id("card")].balances.debits_posted, 12);
        assert_eq!(s.accounts[&id("invoice")].balances.credits_posted, 12);
    }

    /// Two-phase: a hold, a partial post releasing the rest, and a void releasing all.
    #[test]
    fn two_phase_balances() {
        let mut s = state();
        run(&[pending("h1", 100), pending("h2", 40)], &mut s);
        let card = s.accounts[&id("card")].balances;
        assert_eq!((card.debits_pending, card.debits_posted), (140, 0));
        run(&[post("p1", "h1", Some(70)), void("v2", "h2")], &mut s);
        let card = s.accounts[&id("card")].balances;
        assert_eq!((card.debits_pending, card.debits_posted), (0, 70));
        let invoice = s.accounts[&id("invoice")].balances;
        assert_eq!((invoice.credits_pending, invoice.credits_posted), (0, 70));
        // Retrying the post with `None` is the same request only if it posted everything.
        assert_eq!(
            run(&[post("p1", "h1", Some(70))], &mut s),
            [TransferResult::Exists]
        );
        assert_eq!(
            run(&[post("p1", "h1", None)], &mut s),
            [TransferResult::ExistsWithDifferentFields]
        );
    }

    /// A hold whose accounts this batch did not lock (it appeared between the lookup that
    /// chose the locks and the locked read) is not found, rather than posted unlocked.
    #[test]
    fn hold_without_locked_accounts_is_not_found() {
        let mut s = state();
        run(&[pending("h", 5)], &mut s);
        s.accounts.remove(&id("card"));
        assert_eq!(
            run(&[post("p", "h", None)], &mut s),
            [TransferResult::PendingNotFound]
        );
    }

    /// A hold past its timeout can no longer be posted but can be voided (expiry); a timeout
    /// in the past is refused.
    #[test]
    fn timeouts() {
        let now = OffsetDateTime::now_utc();
        let mut s = state();
        let mut hold = pending("h", 5);
        if let TransferKind::Pending { timeout_at, .. } = &mut hold.kind {
            *timeout_at = Some(now + time::Duration::seconds(10));
        }
        assert_eq!(
            decide(&[hold.clone()], &mut s, now).results,
            [TransferResult::Ok]
        );
        let later = now + time::Duration::seconds(11);
        assert_eq!(
            decide(&[post("p", "h", None)], &mut s, later).results,
            [TransferResult::PendingExpired]
        );
        assert_eq!(
            decide(&[void("v", "h")], &mut s, later).results,
            [TransferResult::Ok]
        );
        let mut s = state();
        assert_eq!(
            decide(&[hold], &mut s, later).results,
            [TransferResult::TimeoutMustBeInFuture]
        );
    }
}
