//! The ledger's types: ids, accounts, transfers and per-transfer results.

use std::fmt;

use time::OffsetDateTime;

/// Longest id, in bytes.
const ID_BYTES_MAX: usize = 128;

/// Why an id or currency is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Not 1-128 characters of `A-Z a-z 0-9 : _ . / -`.
    #[error("must be 1-128 characters of A-Z a-z 0-9 : _ . / -")]
    Id,
    /// Not three upper-case letters.
    #[error("must be an ISO 4217 code of three upper-case letters")]
    Currency,
}

fn check_id(text: &str) -> Result<(), IdError> {
    let ok = !text.is_empty()
        && text.len() <= ID_BYTES_MAX
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":_./-".contains(&b));
    if ok { Ok(()) } else { Err(IdError::Id) }
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Validates an id.
            pub fn new(text: impl Into<String>) -> Result<Self, IdError> {
                let text = text.into();
                check_id(&text)?;
                Ok(Self(text))
            }

            /// The id text.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub(crate) fn from_stored(text: String) -> Self {
                Self(text)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// An account id, chosen by the caller (e.g. `card:tok_...:USD`).
    AccountId
);
id_type!(
    /// A transfer id: its idempotency key, chosen by the caller (e.g. `pay_.../leg_1/authorize`).
    TransferId
);

/// An ISO 4217 currency code. The ledger keeps amounts in minor units and never converts.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency([u8; 3]);

/// The code, as in reports' `Debug` output (`USD`, not its bytes).
impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Currency {
    /// Validates a code of three upper-case letters.
    pub fn new(code: &str) -> Result<Currency, IdError> {
        let bytes: [u8; 3] = code.as_bytes().try_into().map_err(|_| IdError::Currency)?;
        if !bytes.iter().all(u8::is_ascii_uppercase) {
            return Err(IdError::Currency);
        }
        Ok(Currency(bytes))
    }

    /// The code.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("validated ASCII")
    }
}

/// What an account is for (the chart of accounts in the crate docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AccountCode {
    /// A card, per token and currency: the source of the money.
    FundingSource,
    /// A billing account's invoices, per currency: what the cards pay.
    Receivable,
    /// Money in flight at the processor between capture and settlement.
    ProcessorClearing,
    /// Refunds issued back to cards.
    Refunds,
    /// The position of the conversions of one currency pair, in one of its two currencies:
    /// one account per currency of the pair, `fx_clearing:<FROM>-<TO>:<currency>` (FROM the
    /// invoice's currency, TO the card's). A converted leg pays into the TO account and out of
    /// the FROM account, so that every transfer stays within one currency.
    FxClearing,
    /// What cards paid above the exact conversion, rounded, per currency:
    /// `fx_rounding:<currency>`.
    FxRounding,
}

impl AccountCode {
    /// The code as stored.
    pub const fn as_str(self) -> &'static str {
        match self {
            AccountCode::FundingSource => "funding_source",
            AccountCode::Receivable => "receivable",
            AccountCode::ProcessorClearing => "processor_clearing",
            AccountCode::Refunds => "refunds",
            AccountCode::FxClearing => "fx_clearing",
            AccountCode::FxRounding => "fx_rounding",
        }
    }

    /// Every code, in the order of the chart of accounts.
    pub const ALL: [AccountCode; 6] = [
        AccountCode::FundingSource,
        AccountCode::Receivable,
        AccountCode::ProcessorClearing,
        AccountCode::Refunds,
        AccountCode::FxClearing,
        AccountCode::FxRounding,
    ];

    /// Parses [`AccountCode::as_str`].
    pub fn parse(text: &str) -> Option<AccountCode> {
        AccountCode::ALL.into_iter().find(|c| c.as_str() == text)
    }
}

/// A balance limit of an account (TigerBeetle's account flags). At most one applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BalanceLimit {
    /// No limit.
    #[default]
    None,
    /// `debits_pending + debits_posted <= credits_posted`: cannot spend more than was put in.
    DebitsMustNotExceedCredits,
    /// `credits_pending + credits_posted <= debits_posted`.
    CreditsMustNotExceedDebits,
}

/// Free references stored with an account.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountRefs {
    /// Owner (e.g. a company id).
    pub owner: Option<String>,
    /// The card token of a funding source.
    pub card_token: Option<String>,
    /// The billing account.
    pub billing_account: Option<String>,
    /// The cost center.
    pub cost_center: Option<String>,
}

/// An account to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAccount {
    /// Id.
    pub id: AccountId,
    /// Currency of every transfer on it.
    pub currency: Currency,
    /// Kind.
    pub code: AccountCode,
    /// Balance limit.
    pub limit: BalanceLimit,
    /// References.
    pub refs: AccountRefs,
}

/// An account's balances, in minor units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Balances {
    /// Debits held by pending transfers.
    pub debits_pending: i64,
    /// Debits posted.
    pub debits_posted: i64,
    /// Credits held by pending transfers.
    pub credits_pending: i64,
    /// Credits posted.
    pub credits_posted: i64,
}

/// An account as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Id.
    pub id: AccountId,
    /// Currency.
    pub currency: Currency,
    /// Kind.
    pub code: AccountCode,
    /// Balance limit.
    pub limit: BalanceLimit,
    /// Balances.
    pub balances: Balances,
    /// Incremented by every statement that changes the balances.
    pub version: i64,
    /// References.
    pub refs: AccountRefs,
}

/// The result of creating one account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountResult {
    /// Created.
    Ok,
    /// An identical account exists.
    Exists,
    /// An account with this id exists with other fields.
    ExistsWithDifferentFields,
}

/// References stored with a transfer, for reads and export.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransferRefs {
    /// The payment.
    pub payment_id: Option<String>,
    /// The invoice.
    pub invoice_id: Option<String>,
    /// The leg of the payment.
    pub leg_id: Option<String>,
    /// The cost center.
    pub cost_center: Option<String>,
    /// The processor's reference of a capture (its authorization's) or a refund (the
    /// refund's), which reconciliation matches settlement records by; at most 128 bytes.
    pub processor_reference: Option<String>,
}

/// What a transfer does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferKind {
    /// Moves `amount` at once.
    Single {
        /// From.
        debit: AccountId,
        /// To.
        credit: AccountId,
        /// Minor units, positive.
        amount: i64,
    },
    /// Holds `amount` (an authorization) until posted, voided or timed out.
    Pending {
        /// From.
        debit: AccountId,
        /// To.
        credit: AccountId,
        /// Minor units, positive.
        amount: i64,
        /// After this the hold can no longer be posted (it expires and is voided).
        timeout_at: Option<OffsetDateTime>,
    },
    /// Posts a pending transfer: all of it (`amount: None`) or part, releasing the rest.
    PostPending {
        /// The pending transfer.
        pending_id: TransferId,
        /// Minor units to post, positive and at most the pending amount; `None` posts it all.
        amount: Option<i64>,
    },
    /// Voids a pending transfer, releasing all of it.
    VoidPending {
        /// The pending transfer.
        pending_id: TransferId,
    },
}

/// A transfer to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// Id and idempotency key.
    pub id: TransferId,
    /// What it does.
    pub kind: TransferKind,
    /// If true, this transfer and the next succeed or fail together (a chain ends at the first
    /// transfer without the flag).
    pub linked: bool,
    /// References.
    pub refs: TransferRefs,
}

/// The per-transfer outcome, as TigerBeetle reports it. Business outcomes are results, never
/// errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransferResult {
    /// Created.
    Ok,
    /// An identical transfer exists.
    Exists,
    /// A transfer with this id exists with other fields.
    ExistsWithDifferentFields,
    /// The amount is zero or negative.
    AmountMustBePositive,
    /// Debit and credit are the same account.
    AccountsMustBeDifferent,
    /// The debit account does not exist.
    DebitAccountNotFound,
    /// The credit account does not exist.
    CreditAccountNotFound,
    /// The two accounts hold different currencies.
    CurrenciesMustMatch,
    /// The debit account's limit would be exceeded.
    ExceedsCredits,
    /// The credit account's limit would be exceeded.
    ExceedsDebits,
    /// The pending transfer does not exist.
    PendingNotFound,
    /// The referenced transfer is not a pending transfer.
    PendingTransferNotPending,
    /// The post amount exceeds the pending amount.
    ExceedsPendingAmount,
    /// The pending transfer was already posted.
    PendingAlreadyPosted,
    /// The pending transfer was already voided.
    PendingAlreadyVoided,
    /// The pending transfer timed out.
    PendingExpired,
    /// The timeout is not in the future.
    TimeoutMustBeInFuture,
    /// Another transfer of the same linked chain failed.
    LinkedEventFailed,
    /// The last transfer of a submission is linked: the chain is never closed.
    LinkedEventChainOpen,
}

impl TransferResult {
    /// The result's name, as exported and logged.
    pub const fn as_str(self) -> &'static str {
        match self {
            TransferResult::Ok => "ok",
            TransferResult::Exists => "exists",
            TransferResult::ExistsWithDifferentFields => "exists_with_different_fields",
            TransferResult::AmountMustBePositive => "amount_must_be_positive",
            TransferResult::AccountsMustBeDifferent => "accounts_must_be_different",
            TransferResult::DebitAccountNotFound => "debit_account_not_found",
            TransferResult::CreditAccountNotFound => "credit_account_not_found",
            TransferResult::CurrenciesMustMatch => "currencies_must_match",
            TransferResult::ExceedsCredits => "exceeds_credits",
            TransferResult::ExceedsDebits => "exceeds_debits",
            TransferResult::PendingNotFound => "pending_not_found",
            TransferResult::PendingTransferNotPending => "pending_transfer_not_pending",
            TransferResult::ExceedsPendingAmount => "exceeds_pending_amount",
            TransferResult::PendingAlreadyPosted => "pending_already_posted",
            TransferResult::PendingAlreadyVoided => "pending_already_voided",
            TransferResult::PendingExpired => "pending_expired",
            TransferResult::TimeoutMustBeInFuture => "timeout_must_be_in_future",
            TransferResult::LinkedEventFailed => "linked_event_failed",
            TransferResult::LinkedEventChainOpen => "linked_event_chain_open",
        }
    }

    /// True for `Ok` and `Exists`: the transfer is in the ledger as asked.
    pub fn is_success(self) -> bool {
        matches!(self, TransferResult::Ok | TransferResult::Exists)
    }
}

/// Stored kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoredKind {
    /// `single`
    Single,
    /// `pending`
    Pending,
    /// `post_pending`
    PostPending,
    /// `void_pending`
    VoidPending,
}

impl StoredKind {
    /// As stored.
    pub const fn as_str(self) -> &'static str {
        match self {
            StoredKind::Single => "single",
            StoredKind::Pending => "pending",
            StoredKind::PostPending => "post_pending",
            StoredKind::VoidPending => "void_pending",
        }
    }

    /// Parses [`StoredKind::as_str`].
    pub fn parse(text: &str) -> Option<StoredKind> {
        [
            StoredKind::Single,
            StoredKind::Pending,
            StoredKind::PostPending,
            StoredKind::VoidPending,
        ]
        .into_iter()
        .find(|k| k.as_str() == text)
    }
}

/// A transfer as stored (and exported). Post and void rows carry the pending transfer's
/// accounts; a void carries the pending amount it released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredTransfer {
    /// Position in the ledger, increasing with insertion.
    pub seq: i64,
    /// Id.
    pub id: TransferId,
    /// Kind.
    pub kind: StoredKind,
    /// From.
    pub debit: AccountId,
    /// To.
    pub credit: AccountId,
    /// Currency.
    pub currency: Currency,
    /// Minor units.
    pub amount: i64,
    /// The pending transfer a post or void resolves.
    pub pending_id: Option<TransferId>,
    /// A pending transfer's timeout.
    pub timeout_at: Option<OffsetDateTime>,
    /// References.
    pub refs: TransferRefs,
    /// When it was created.
    pub created_at: OffsetDateTime,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids and currencies accept only their documented forms.
    #[test]
    fn id_and_currency_rules() {
        assert!(AccountId::new("card:tok_abc:USD").is_ok());
        assert!(TransferId::new("pay_1/leg_2/authorize").is_ok());
        for bad in ["", "has space", "é", &"a".repeat(129)] {
            assert_eq!(AccountId::new(bad), Err(IdError::Id), "{bad:?}");
        }
        assert!(Currency::new("USD").is_ok());
        for bad in ["usd", "US", "USDX", "U$D"] {
            assert_eq!(Currency::new(bad), Err(IdError::Currency), "{bad}");
        }
    }

    /// Every account code round-trips through its stored name, and the names are distinct.
    #[test]
    fn account_codes_round_trip() {
        for code in AccountCode::ALL {
            // Exhaustive: a new code stops compiling here, a reminder to add it to `ALL`.
            let listed = match code {
                AccountCode::FundingSource
                | AccountCode::Receivable
                | AccountCode::ProcessorClearing
                | AccountCode::Refunds
                | AccountCode::FxClearing
                | AccountCode::FxRounding => true,
            };
            assert!(listed);
            assert_eq!(AccountCode::parse(code.as_str()), Some(code));
        }
        let names: std::collections::HashSet<&str> =
            AccountCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(names.len(), AccountCode::ALL.len());
        assert_eq!(
            AccountCode::parse("fx_clearing"),
            Some(AccountCode::FxClearing)
        );
        assert_eq!(
            AccountCode::parse("fx_rounding"),
            Some(AccountCode::FxRounding)
        );
        assert_eq!(AccountCode::parse("suspense"), None);
    }
}
