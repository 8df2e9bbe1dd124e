//! Ledger bookings of a payment: which `tandem-ledger` transfer each saga outcome writes, in
//! the same transaction as the state change (DESIGN section 6).
//!
//! A leg's authorization is a *pending* transfer from the card's `funding_source` account to
//! the billing account's `receivable` (the hold); its capture *posts* that transfer; its void
//! *voids* it. A decline books nothing. Transfer ids are deterministic
//! (`<payment>/leg/<n>/hold|capture|void`, legs numbered from 1 as on the wire), so a booking written twice after a crash is the
//! ledger's `Exists`, never a second entry.

use tandem_ledger::types::{
    AccountCode, AccountId, AccountRefs, BalanceLimit, Currency as LedgerCurrency, IdError,
    NewAccount, Transfer, TransferId, TransferKind, TransferRefs,
};

use super::saga::{Outcome, Payment};

/// Who and what a payment's bookings refer to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BookingContext {
    /// The payment id, the prefix of every transfer id.
    pub payment_id: String,
    /// The invoice paid.
    pub invoice_id: String,
    /// The billing account whose receivable the cards pay.
    pub billing_account: String,
    /// The invoice's cost center, if any.
    pub cost_center: Option<String>,
    /// The processor's reference of the leg's authorization, which its capture carries for
    /// reconciliation; `None` before it is known (and for payments authorized before the
    /// reference was kept).
    pub processor_reference: Option<String>,
}

fn currency(payment: &Payment) -> Result<LedgerCurrency, IdError> {
    LedgerCurrency::new(payment.currency.code())
}

/// The funding-source account of a card in a currency.
pub fn funding_source(token: &str, currency: &str) -> Result<AccountId, IdError> {
    AccountId::new(format!("funding_source:{token}:{currency}"))
}

/// The card token of a funding-source account id (`funding_source:<token>:<currency>`);
/// `None` for other accounts.
pub fn card_token_of(account_id: &str) -> Option<&str> {
    let rest = account_id.strip_prefix("funding_source:")?;
    let (token, currency) = rest.rsplit_once(':')?;
    (currency.len() == 3 && !token.is_empty()).then_some(token)
}

/// The receivable account of a billing account in a currency.
pub fn receivable(billing_account: &str, currency: &str) -> Result<AccountId, IdError> {
    AccountId::new(format!("receivable:{billing_account}:{currency}"))
}

/// The accounts a payment's bookings need: the receivable and one funding source per card.
/// Creating an existing account is the ledger's `Exists`, so this is safe to repeat.
pub fn accounts(context: &BookingContext, payment: &Payment) -> Result<Vec<NewAccount>, IdError> {
    let currency = currency(payment)?;
    let mut accounts = vec![NewAccount {
        id: receivable(&context.billing_account, currency.as_str())?,
        currency,
        code: AccountCode::Receivable,
        limit: BalanceLimit::None,
        refs: AccountRefs {
            billing_account: Some(context.billing_account.clone()),
            ..AccountRefs::default()
        },
    }];
    let mut tokens: Vec<&str> = payment.members.iter().map(|m| m.token.as_str()).collect();
    tokens.sort_unstable();
    tokens.dedup();
    for token in tokens {
        accounts.push(NewAccount {
            id: funding_source(token, currency.as_str())?,
            currency,
            code: AccountCode::FundingSource,
            limit: BalanceLimit::None,
            refs: AccountRefs {
                card_token: Some(token.to_owned()),
                ..AccountRefs::default()
            },
        });
    }
    Ok(accounts)
}

fn transfer_id(context: &BookingContext, leg: usize, step: &str) -> Result<TransferId, IdError> {
    TransferId::new(format!("{}/leg/{}/{step}", context.payment_id, leg + 1))
}

/// The transfer `outcome` books, if any. Call it with the payment as it was *after* the
/// outcome was applied (the leg's approved amount is then known).
pub fn booking(
    context: &BookingContext,
    payment: &Payment,
    outcome: &Outcome,
) -> Result<Option<Transfer>, IdError> {
    let currency = currency(payment)?;
    let refs = |leg: usize| TransferRefs {
        payment_id: Some(context.payment_id.clone()),
        invoice_id: Some(context.invoice_id.clone()),
        leg_id: Some(format!("{}/leg/{}", context.payment_id, leg + 1)),
        cost_center: context.cost_center.clone(),
        processor_reference: None,
    };
    let transfer = match *outcome {
        Outcome::Authorized { leg, approved } => {
            let token = &payment.legs[leg].token;
            Transfer {
                id: transfer_id(context, leg, "hold")?,
                kind: TransferKind::Pending {
                    debit: funding_source(token, currency.as_str())?,
                    credit: receivable(&context.billing_account, currency.as_str())?,
                    amount: approved,
                    timeout_at: None,
                },
                linked: false,
                refs: refs(leg),
            }
        }
        Outcome::Captured { leg } => Transfer {
            id: transfer_id(context, leg, "capture")?,
            kind: TransferKind::PostPending {
                pending_id: transfer_id(context, leg, "hold")?,
                amount: None,
            },
            linked: false,
            refs: TransferRefs {
                processor_reference: context.processor_reference.clone(),
                ..refs(leg)
            },
        },
        Outcome::Voided { leg } => Transfer {
            id: transfer_id(context, leg, "void")?,
            kind: TransferKind::VoidPending {
                pending_id: transfer_id(context, leg, "hold")?,
            },
            linked: false,
            refs: refs(leg),
        },
        Outcome::Declined { .. } => return Ok(None),
    };
    Ok(Some(transfer))
}

/// The transfer a succeeded refund part books: `amount` back from the billing account's
/// receivable to the card's funding source, with a deterministic id
/// (`<payment>/refund/<refund>/leg/<n>`), carrying the processor's reference of the refund.
pub fn refund_booking(
    context: &BookingContext,
    payment: &Payment,
    leg: usize,
    refund_id: &str,
    amount: i64,
    processor_reference: Option<String>,
) -> Result<Transfer, IdError> {
    let currency = currency(payment)?;
    let token = &payment.legs[leg].token;
    Ok(Transfer {
        id: TransferId::new(format!(
            "{}/refund/{refund_id}/leg/{}",
            context.payment_id,
            leg + 1
        ))?,
        kind: TransferKind::Single {
            debit: receivable(&context.billing_account, currency.as_str())?,
            credit: funding_source(token, currency.as_str())?,
            amount,
        },
        linked: false,
        refs: TransferRefs {
            payment_id: Some(context.payment_id.clone()),
            invoice_id: Some(context.invoice_id.clone()),
            leg_id: Some(format!("{}/leg/{}", context.payment_id, leg + 1)),
            cost_center: context.cost_center.clone(),
            processor_reference,
        },
    })
}
