//! Ledger bookings of a payment: which `tandem-ledger` transfer each saga outcome writes, in
//! the same transaction as the state change (DESIGN section 6).
//!
//! A leg's authorization is a *pending* transfer from the card's `funding_source` account to
//! the billing account's `receivable` (the hold); its capture *posts* that transfer; its void
//! *voids* it. A decline books nothing. Transfer ids are deterministic
//! (`<payment>/leg/<n>/hold|capture|void`, legs numbered from 1 as on the wire), so a booking
//! written twice after a crash is the ledger's `Exists`, never a second entry.
//!
//! A converted leg (a card in another currency than the invoice's, DESIGN section 10) crosses
//! currencies only through the FX clearing accounts of its pair, so each currency's journal
//! sums to zero. Its hold is a linked chain of three pending transfers: the card pays the
//! billing account's receivable in the card's currency, as any card does (`/hold`, so spend
//! reports see it), that receivable converts it into `fx_clearing:<FROM>-<TO>:<TO>`
//! (`/hold/convert`), and `fx_clearing:<FROM>-<TO>:<FROM>` pays the part of the invoice it
//! covers into the invoice's receivable (`/hold/fx`). The capture posts the three (the card's
//! for what the capture takes, carrying the processor's reference as any capture does) and
//! moves the rounding (what the card paid above the exact conversion rounded down: 0 or 1
//! minor unit, [`tandem_money::fx`]) from the clearing account to `fx_rounding:<TO>`
//! (`/capture/rounding`). The clearing accounts of a pair so hold, on each side, exactly the
//! amount converted and its conversion at the rate rounded down, and the receivable in the
//! card's currency nets to zero. A refund of a converted leg books the same path back at the
//! leg's rate, its rounding cumulative over the leg's refunds, so a leg refunded in full
//! leaves its clearing and rounding accounts where they were before it.

use tandem_ledger::types::{
    AccountCode, AccountId, AccountRefs, BalanceLimit, Currency as LedgerCurrency, IdError,
    NewAccount, Transfer, TransferId, TransferKind, TransferRefs,
};
use tandem_money::Currency;

use super::fx::Quote;
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

/// Why a booking cannot be written: both mean a record the orchestrator wrote is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BookingError {
    /// An id or currency the ledger refuses.
    #[error(transparent)]
    Id(#[from] IdError),
    /// An amount of a converted leg that does not convert at its rate (out of range).
    #[error("an amount of leg {0} does not convert at its rate")]
    Conversion(usize),
}

fn ledger_currency(currency: Currency) -> Result<LedgerCurrency, IdError> {
    LedgerCurrency::new(currency.code())
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

/// The FX clearing account of conversions from `from` to `to`, on the side of `side` (one of
/// the two).
pub fn fx_clearing(from: Currency, to: Currency, side: Currency) -> Result<AccountId, IdError> {
    AccountId::new(format!("fx_clearing:{from}-{to}:{side}"))
}

/// The FX rounding account of a currency.
pub fn fx_rounding(currency: Currency) -> Result<AccountId, IdError> {
    AccountId::new(format!("fx_rounding:{currency}"))
}

fn account(id: AccountId, currency: Currency, code: AccountCode) -> Result<NewAccount, IdError> {
    Ok(NewAccount {
        id,
        currency: ledger_currency(currency)?,
        code,
        limit: BalanceLimit::None,
        refs: AccountRefs::default(),
    })
}

/// The accounts a payment's bookings need: the receivable, one funding source per card in the
/// card's currency, and the FX accounts of each pair it may convert. Creating an existing
/// account is the ledger's `Exists`, so this is safe to repeat.
pub fn accounts(context: &BookingContext, payment: &Payment) -> Result<Vec<NewAccount>, IdError> {
    let invoice = payment.currency;
    let mut accounts = vec![NewAccount {
        refs: AccountRefs {
            billing_account: Some(context.billing_account.clone()),
            ..AccountRefs::default()
        },
        ..account(
            receivable(&context.billing_account, invoice.code())?,
            invoice,
            AccountCode::Receivable,
        )?
    }];
    let exchange = payment.exchange();
    let mut cards: Vec<(&str, Currency)> = payment
        .members
        .iter()
        .filter(|m| m.currency == invoice || exchange.quote(m.currency).is_some())
        .map(|m| (m.token.as_str(), m.currency))
        .collect();
    cards.sort_unstable();
    cards.dedup();
    for (token, currency) in cards {
        accounts.push(NewAccount {
            refs: AccountRefs {
                card_token: Some(token.to_owned()),
                ..AccountRefs::default()
            },
            ..account(
                funding_source(token, currency.code())?,
                currency,
                AccountCode::FundingSource,
            )?
        });
    }
    for quote in &payment.quotes {
        accounts.push(NewAccount {
            refs: AccountRefs {
                billing_account: Some(context.billing_account.clone()),
                ..AccountRefs::default()
            },
            ..account(
                receivable(&context.billing_account, quote.to.code())?,
                quote.to,
                AccountCode::Receivable,
            )?
        });
        for side in [quote.from, quote.to] {
            accounts.push(account(
                fx_clearing(quote.from, quote.to, side)?,
                side,
                AccountCode::FxClearing,
            )?);
        }
        accounts.push(account(
            fx_rounding(quote.to)?,
            quote.to,
            AccountCode::FxRounding,
        )?);
    }
    Ok(accounts)
}

fn transfer_id(context: &BookingContext, leg: usize, step: &str) -> Result<TransferId, IdError> {
    TransferId::new(format!("{}/leg/{}/{step}", context.payment_id, leg + 1))
}

/// Marks every transfer of `chain` but the last as linked to the next.
fn chain(mut transfers: Vec<Transfer>) -> Vec<Transfer> {
    let last = transfers.len().saturating_sub(1);
    for (i, transfer) in transfers.iter_mut().enumerate() {
        transfer.linked = i < last;
    }
    transfers
}

/// A single transfer of `amount` (of either sign: a negative amount goes the other way)
/// between `debit` and `credit`, or nothing for zero.
fn single(
    id: TransferId,
    debit: AccountId,
    credit: AccountId,
    amount: i64,
    refs: TransferRefs,
) -> Option<Transfer> {
    let (debit, credit) = if amount < 0 {
        (credit, debit)
    } else {
        (debit, credit)
    };
    (amount != 0).then(|| Transfer {
        id,
        kind: TransferKind::Single {
            debit,
            credit,
            amount: amount.abs(),
        },
        linked: false,
        refs,
    })
}

/// The exact conversion of leg `leg`'s `amount` at `quote`, rounded down.
fn converted_down(quote: &Quote, leg: usize, amount: i64) -> Result<i64, BookingError> {
    quote
        .convert(amount)
        .map(|c| c.charge - c.rounding)
        .ok_or(BookingError::Conversion(leg))
}

/// The transfers `outcome` books, linked together when there are several. Call it with the
/// payment as it was *after* the outcome was applied (the leg's approved amount is then
/// known).
pub fn booking(
    context: &BookingContext,
    payment: &Payment,
    outcome: &Outcome,
) -> Result<Vec<Transfer>, BookingError> {
    let leg = match *outcome {
        Outcome::Authorized { leg, .. }
        | Outcome::Captured { leg }
        | Outcome::Voided { leg }
        | Outcome::Declined { leg, .. } => leg,
    };
    let accounts = LegAccounts::of(context, payment, leg)?;
    let refs = TransferRefs {
        payment_id: Some(context.payment_id.clone()),
        invoice_id: Some(context.invoice_id.clone()),
        leg_id: Some(format!("{}/leg/{}", context.payment_id, leg + 1)),
        cost_center: context.cost_center.clone(),
        processor_reference: None,
    };
    let id = |step: &str| transfer_id(context, leg, step);
    let pending = |id, debit, credit, amount| Transfer {
        id,
        kind: TransferKind::Pending {
            debit,
            credit,
            amount,
            timeout_at: None,
        },
        linked: false,
        refs: refs.clone(),
    };
    let post = |id, pending_id, amount| Transfer {
        id,
        kind: TransferKind::PostPending { pending_id, amount },
        linked: false,
        refs: refs.clone(),
    };
    let void = |id, pending_id| Transfer {
        id,
        kind: TransferKind::VoidPending { pending_id },
        linked: false,
        refs: refs.clone(),
    };
    let hold = payment.hold(leg);
    let covers = payment.legs[leg].approved;
    let transfers = match (*outcome, &accounts.fx) {
        (Outcome::Authorized { .. }, None) => vec![pending(
            id("hold")?,
            accounts.card,
            accounts.receivable,
            hold,
        )],
        (Outcome::Authorized { .. }, Some(fx)) => {
            let mut transfers = vec![
                pending(id("hold")?, accounts.card, fx.card_receivable.clone(), hold),
                pending(
                    id("hold/convert")?,
                    fx.card_receivable.clone(),
                    fx.clearing_to.clone(),
                    hold,
                ),
            ];
            // A hold worth less than the invoice's minor unit covers nothing of it (and is
            // voided).
            if covers > 0 {
                transfers.push(pending(
                    id("hold/fx")?,
                    fx.clearing_from.clone(),
                    accounts.receivable,
                    covers,
                ));
            }
            transfers
        }
        (Outcome::Captured { .. }, fx) => {
            let capture = payment.capture(leg);
            let part = (capture < hold).then_some(capture);
            let mut transfers = vec![Transfer {
                refs: TransferRefs {
                    processor_reference: context.processor_reference.clone(),
                    ..refs.clone()
                },
                ..post(id("capture")?, id("hold")?, part)
            }];
            if let (Some(fx), Some(quote)) = (fx, payment.quote(leg)) {
                transfers.push(post(id("capture/convert")?, id("hold/convert")?, part));
                transfers.push(post(id("capture/fx")?, id("hold/fx")?, None));
                let rounding = capture - converted_down(quote, leg, covers)?;
                transfers.extend(single(
                    id("capture/rounding")?,
                    fx.clearing_to.clone(),
                    fx.rounding.clone(),
                    rounding,
                    refs.clone(),
                ));
            }
            transfers
        }
        (Outcome::Voided { .. }, fx) => {
            let mut transfers = vec![void(id("void")?, id("hold")?)];
            if fx.is_some() {
                transfers.push(void(id("void/convert")?, id("hold/convert")?));
                if covers > 0 {
                    transfers.push(void(id("void/fx")?, id("hold/fx")?));
                }
            }
            transfers
        }
        (Outcome::Declined { .. }, _) => Vec::new(),
    };
    Ok(chain(transfers))
}

/// The accounts one leg's bookings move.
struct LegAccounts {
    /// The card's funding source, in its currency.
    card: AccountId,
    /// The billing account's receivable in the invoice's currency.
    receivable: AccountId,
    /// For a converted leg, the accounts of the conversion.
    fx: Option<FxAccounts>,
}

/// The accounts a converted leg crosses currencies through.
struct FxAccounts {
    /// The billing account's receivable in the card's currency: the card pays into it as any
    /// card pays the billing account (so spend reports see it), and it is converted out at
    /// once.
    card_receivable: AccountId,
    /// The pair's clearing account on the card's side.
    clearing_to: AccountId,
    /// The pair's clearing account on the invoice's side.
    clearing_from: AccountId,
    /// The rounding account of the card's currency.
    rounding: AccountId,
}

impl LegAccounts {
    fn of(
        context: &BookingContext,
        payment: &Payment,
        leg: usize,
    ) -> Result<LegAccounts, BookingError> {
        let invoice = payment.currency;
        let token = &payment.legs[leg].token;
        let quote = payment.quote(leg);
        let card_currency = quote.map_or(invoice, |q| q.to);
        let fx = match quote {
            Some(q) => Some(FxAccounts {
                card_receivable: receivable(&context.billing_account, q.to.code())?,
                clearing_to: fx_clearing(q.from, q.to, q.to)?,
                clearing_from: fx_clearing(q.from, q.to, q.from)?,
                rounding: fx_rounding(q.to)?,
            }),
            None => None,
        };
        Ok(LegAccounts {
            card: funding_source(token, card_currency.code())?,
            receivable: receivable(&context.billing_account, invoice.code())?,
            fx,
        })
    }
}

/// A succeeded refund part of leg `leg`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundedPart<'a> {
    /// The refund's id.
    pub refund_id: &'a str,
    /// Minor units of the invoice's currency the part refunds.
    pub amount: i64,
    /// What the card got back, in minor units of its currency.
    pub charge: i64,
    /// Minor units of the invoice's currency refunded on the leg before this part.
    pub before: i64,
    /// The processor's reference of the refund.
    pub processor_reference: Option<String>,
}

/// The transfers a succeeded refund part books, with deterministic ids
/// (`<payment>/refund/<refund>/leg/<n>`): what the card got back from the billing account's
/// receivable to the card's funding source, carrying the processor's reference of the refund;
/// for a converted leg the conversion back first, through the pair's clearing accounts at the
/// leg's rate, with the rounding given back, all linked.
pub fn refund_booking(
    context: &BookingContext,
    payment: &Payment,
    leg: usize,
    part: RefundedPart<'_>,
) -> Result<Vec<Transfer>, BookingError> {
    let accounts = LegAccounts::of(context, payment, leg)?;
    let id = |suffix: &str| {
        TransferId::new(format!(
            "{}/refund/{}/leg/{}{suffix}",
            context.payment_id,
            part.refund_id,
            leg + 1
        ))
    };
    let refs = TransferRefs {
        payment_id: Some(context.payment_id.clone()),
        invoice_id: Some(context.invoice_id.clone()),
        leg_id: Some(format!("{}/leg/{}", context.payment_id, leg + 1)),
        cost_center: context.cost_center.clone(),
        processor_reference: None,
    };
    let single_transfer = |id, debit, credit, amount, refs| Transfer {
        id,
        kind: TransferKind::Single {
            debit,
            credit,
            amount,
        },
        linked: false,
        refs,
    };
    let (Some(fx), Some(quote)) = (&accounts.fx, payment.quote(leg)) else {
        return Ok(vec![single_transfer(
            id("")?,
            accounts.receivable,
            accounts.card,
            part.amount,
            TransferRefs {
                processor_reference: part.processor_reference,
                ..refs
            },
        )]);
    };
    // A part that returns nothing to the card (its share converts to less than earlier parts'
    // rounding gave back) books its invoice side and its rounding only.
    let mut transfers = vec![single_transfer(
        id("/fx")?,
        accounts.receivable,
        fx.clearing_from.clone(),
        part.amount,
        refs.clone(),
    )];
    transfers.extend(single(
        id("/convert")?,
        fx.clearing_to.clone(),
        fx.card_receivable.clone(),
        part.charge,
        refs.clone(),
    ));
    // The rounding the card gets back: what it gets beyond the conversion (rounded down) of
    // the refunded part, counted over the leg's refunds so that they add up to the capture's.
    let exact = converted_down(quote, leg, part.before + part.amount)?
        - converted_down(quote, leg, part.before)?;
    transfers.extend(single(
        id("/rounding")?,
        fx.rounding.clone(),
        fx.clearing_to.clone(),
        part.charge - exact,
        refs.clone(),
    ));
    transfers.extend(single(
        id("")?,
        fx.card_receivable.clone(),
        accounts.card,
        part.charge,
        TransferRefs {
            processor_reference: part.processor_reference,
            ..refs
        },
    ));
    Ok(chain(transfers))
}
