//! Charges: ids, states, decline codes and the checked commands of `ChargeService`.
//!
//! Pure code, like the rest of [`crate::domain`]. Names match the proto and the SQL: a state
//! stored as `partially_refunded` is `ChargeState::PartiallyRefunded` here and
//! `CHARGE_STATE_PARTIALLY_REFUNDED` on the wire.

use std::collections::BTreeMap;
use std::fmt;

use tandem_money::Money;
use time::OffsetDateTime;

use super::token::{is_random_id, random_id};
use super::{Brand, Reason, RequestId, TextError, Token, pan};

/// Most metadata entries on a charge.
pub const METADATA_ENTRIES_MAX: usize = 20;
/// Longest metadata key, in bytes (`a-z 0-9 _`).
const METADATA_KEY_BYTES_MAX: usize = 40;
/// Longest metadata value, in characters.
const METADATA_VALUE_CHARS_MAX: usize = 200;
/// Longest statement descriptor, in bytes (card networks allow 22).
const STATEMENT_DESCRIPTOR_BYTES_MAX: usize = 22;
/// Longest merchant reference, in bytes.
const MERCHANT_REFERENCE_BYTES_MAX: usize = 64;
/// Most refunds of one charge.
pub const REFUNDS_PER_CHARGE_MAX: usize = 100;

macro_rules! random_id_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash)]
        pub struct $name(String);

        impl $name {
            /// A new random id.
            pub fn generate() -> Self {
                Self(random_id($prefix))
            }

            /// Parses an id given by a client.
            pub fn parse(text: &str) -> Result<Self, TextError> {
                if text.is_empty() {
                    return Err(TextError::Missing);
                }
                if !is_random_id($prefix, text) {
                    return Err(TextError::Format(concat!(
                        "must be \"",
                        $prefix,
                        "\" followed by 26 lower-case base32 characters"
                    )));
                }
                Ok(Self(text.to_owned()))
            }

            /// Rebuilds an id read from storage, where a CHECK constraint holds its format.
            pub fn from_stored(text: String) -> Self {
                debug_assert!(is_random_id($prefix, &text));
                Self(text)
            }

            /// The id text.
            pub fn as_str(&self) -> &str {
                &self.0
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

random_id_type!(
    /// A charge id: `ch_` + 26 base32 characters.
    ChargeId,
    "ch_"
);
random_id_type!(
    /// A refund id: `rf_` + 26 base32 characters.
    RefundId,
    "rf_"
);

/// Declares a closed enum with its storage name for each variant.
macro_rules! named_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The name in storage and logs.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// Parses a stored name.
            pub fn parse(text: &str) -> Option<$name> {
                match text {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }
        }
    };
}

named_enum!(
    /// The lifecycle of a charge (see `ChargeState` in the proto).
    ChargeState {
        /// Recorded and sent to the processor; the answer is not known yet.
        Pending = "pending",
        /// A hold is in place.
        Authorized = "authorized",
        /// Refused; no hold. Final.
        Declined = "declined",
        /// The hold was released. Final.
        Voided = "voided",
        /// Captured; nothing refunded yet.
        Captured = "captured",
        /// Partly refunded.
        PartiallyRefunded = "partially_refunded",
        /// Wholly refunded. Final.
        Refunded = "refunded",
    }
);

named_enum!(
    /// The lifecycle of a refund.
    RefundState {
        /// Sent to the processor; the answer is not known yet.
        Pending = "pending",
        /// Accepted. Final.
        Succeeded = "succeeded",
        /// Refused; its amount is refundable again. Final.
        Failed = "failed",
    }
);

named_enum!(
    /// What a caller should do after a decline.
    NextAction {
        /// Transient: retry the same card later with a new request id.
        RetrySameCard = "retry_same_card",
        /// Move the amount to another card.
        TryNextCard = "try_next_card",
        /// No card will do; stop.
        DoNotRetry = "do_not_retry",
    }
);

named_enum!(
    /// Why a charge was declined, normalised across processors (`tandem.type.v1.DeclineCode`).
    DeclineCode {
        /// "Do not honor" (05).
        DoNotHonor = "do_not_honor",
        /// Not enough balance or credit (51).
        InsufficientFunds = "insufficient_funds",
        /// An issuer limit (61, 65).
        LimitExceeded = "limit_exceeded",
        /// The card is blocked (62, 78).
        Blocked = "blocked",
        /// Fraud suspected (59).
        FraudSuspected = "fraud_suspected",
        /// Reported lost (41).
        LostCard = "lost_card",
        /// Reported stolen (43).
        StolenCard = "stolen_card",
        /// Expired (54).
        ExpiredCard = "expired_card",
        /// Not a valid account (14, 15).
        InvalidCard = "invalid_card",
        /// 3-D Secure needed (1A).
        AuthenticationRequired = "authentication_required",
        /// Not allowed for this transaction (57, 58).
        TransactionNotAllowed = "transaction_not_allowed",
        /// The card cannot pay in this currency.
        CurrencyNotSupported = "currency_not_supported",
        /// Transient failure (91, 96).
        ProcessingError = "processing_error",
        /// The processor refused the amount itself (13).
        InvalidAmount = "invalid_amount",
        /// Anything else; the raw code is kept.
        Other = "other",
    }
);

impl DeclineCode {
    /// The action reported with this code unless the connector says otherwise.
    pub const fn default_next_action(self) -> NextAction {
        match self {
            DeclineCode::ProcessingError => NextAction::RetrySameCard,
            DeclineCode::InvalidAmount => NextAction::DoNotRetry,
            DeclineCode::DoNotHonor
            | DeclineCode::InsufficientFunds
            | DeclineCode::LimitExceeded
            | DeclineCode::Blocked
            | DeclineCode::FraudSuspected
            | DeclineCode::LostCard
            | DeclineCode::StolenCard
            | DeclineCode::ExpiredCard
            | DeclineCode::InvalidCard
            | DeclineCode::AuthenticationRequired
            | DeclineCode::TransactionNotAllowed
            | DeclineCode::CurrencyNotSupported
            | DeclineCode::Other => NextAction::TryNextCard,
        }
    }
}

/// The text on the cardholder's statement: at most 22 bytes of printable ASCII, not only
/// digits, none of `< > \ ' " *`. May be empty (the connector's default applies).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StatementDescriptor(String);

impl StatementDescriptor {
    /// Validates a statement descriptor.
    pub fn parse(text: &str) -> Result<StatementDescriptor, TextError> {
        if text.len() > STATEMENT_DESCRIPTOR_BYTES_MAX {
            return Err(TextError::TooLong);
        }
        let allowed = |b: u8| (b' '..=b'~').contains(&b) && !b"<>\\'\"*".contains(&b);
        if !text.bytes().all(allowed) {
            return Err(TextError::Characters);
        }
        if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit() || b == b' ') {
            return Err(TextError::Format("must contain at least one letter"));
        }
        if pan::contains_card_number(text) {
            return Err(TextError::CardNumber);
        }
        Ok(StatementDescriptor(text.to_owned()))
    }

    /// The descriptor text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The caller's reference sent to the processor: at most 64 bytes of `A-Z a-z 0-9 . _ : / -`,
/// never a card number. May be empty.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MerchantReference(String);

impl MerchantReference {
    /// Validates a merchant reference.
    pub fn parse(text: &str) -> Result<MerchantReference, TextError> {
        super::check_id_text(text, MERCHANT_REFERENCE_BYTES_MAX)?;
        Ok(MerchantReference(text.to_owned()))
    }

    /// The reference text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Caller data kept with a charge: at most 20 entries, keys 1-40 bytes of `a-z 0-9 _`, values
/// at most 200 characters without control characters or card numbers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Metadata(BTreeMap<String, String>);

impl Metadata {
    /// Validates metadata entries.
    pub fn parse<'a>(
        entries: impl ExactSizeIterator<Item = (&'a String, &'a String)>,
    ) -> Result<Metadata, TextError> {
        if entries.len() > METADATA_ENTRIES_MAX {
            return Err(TextError::TooLong);
        }
        let mut map = BTreeMap::new();
        for (key, value) in entries {
            let key_ok = !key.is_empty()
                && key.len() <= METADATA_KEY_BYTES_MAX
                && key
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !key_ok {
                return Err(TextError::Format(
                    "keys must be 1-40 characters of a-z 0-9 _",
                ));
            }
            if value.chars().count() > METADATA_VALUE_CHARS_MAX {
                return Err(TextError::TooLong);
            }
            if value.chars().any(char::is_control) {
                return Err(TextError::Characters);
            }
            if pan::contains_card_number(value) {
                return Err(TextError::CardNumber);
            }
            map.insert(key.clone(), value.clone());
        }
        Ok(Metadata(map))
    }

    /// Rebuilds metadata read from storage.
    pub fn from_stored(map: BTreeMap<String, String>) -> Metadata {
        Metadata(map)
    }

    /// The entries, sorted by key.
    pub fn entries(&self) -> &BTreeMap<String, String> {
        &self.0
    }
}

/// A checked `Authorize`.
#[derive(Debug, Clone)]
pub struct AuthorizeCommand {
    /// Idempotency key.
    pub request_id: RequestId,
    /// The card.
    pub token: Token,
    /// The amount to hold: positive, within the configured maximum.
    pub amount: Money,
    /// Whether an approval for less is acceptable.
    pub allow_partial_approval: bool,
    /// Free text for operators.
    pub description: Reason,
    /// Statement text.
    pub statement_descriptor: StatementDescriptor,
    /// The caller's reference for the processor.
    pub reference: MerchantReference,
    /// Caller data.
    pub metadata: Metadata,
}

/// A checked `Capture`.
#[derive(Debug, Clone)]
pub struct CaptureCommand {
    /// Idempotency key.
    pub request_id: RequestId,
    /// The charge.
    pub charge_id: ChargeId,
    /// The amount, or `None` for the whole approved amount.
    pub amount: Option<Money>,
}

/// A checked `Void`.
#[derive(Debug, Clone)]
pub struct VoidCommand {
    /// Idempotency key.
    pub request_id: RequestId,
    /// The charge.
    pub charge_id: ChargeId,
    /// Why, for the audit log.
    pub reason: Reason,
}

/// A checked `Refund`.
#[derive(Debug, Clone)]
pub struct RefundCommand {
    /// Idempotency key.
    pub request_id: RequestId,
    /// The charge.
    pub charge_id: ChargeId,
    /// The amount: positive.
    pub amount: Money,
    /// Why, for the audit log and the processor.
    pub reason: Reason,
}

/// How `GetCharge` finds a charge.
#[derive(Debug, Clone)]
pub enum ChargeLookup {
    /// By charge id.
    Id(ChargeId),
    /// By the request id of its `Authorize`.
    RequestId(RequestId),
}

/// How an authorization was decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decline {
    /// The normalised code.
    pub code: DeclineCode,
    /// What the caller should do.
    pub next_action: NextAction,
    /// The processor's raw code, at most 32 characters.
    pub processor_code: String,
}

/// A charge as clients see it.
#[derive(Debug, Clone)]
pub struct ChargeView {
    /// Id.
    pub id: ChargeId,
    /// The `Authorize` request id.
    pub request_id: String,
    /// The card.
    pub token: Token,
    /// The card's brand at authorization.
    pub brand: Brand,
    /// The card's last four at authorization.
    pub last4: String,
    /// Requested amount; its currency is the charge's.
    pub requested: Money,
    /// Approved amount.
    pub approved: Money,
    /// Captured amount.
    pub captured: Money,
    /// Refunded amount (succeeded refunds).
    pub refunded: Money,
    /// Whether a partial approval was allowed.
    pub allow_partial_approval: bool,
    /// State.
    pub state: ChargeState,
    /// Why declined, when declined.
    pub decline: Option<Decline>,
    /// The connector's name.
    pub processor: String,
    /// The processor's authorization reference.
    pub processor_reference: String,
    /// The issuer's approval code.
    pub authorization_code: String,
    /// Free text.
    pub description: String,
    /// Statement text.
    pub statement_descriptor: String,
    /// Caller's reference.
    pub reference: String,
    /// Caller data.
    pub metadata: Metadata,
    /// The capture or void sent and not yet answered.
    pub pending_request_id: Option<String>,
    /// Refunds, oldest first.
    pub refunds: Vec<RefundView>,
    /// When recorded.
    pub created_at: OffsetDateTime,
    /// When last changed.
    pub updated_at: OffsetDateTime,
    /// When the authorization answer was recorded.
    pub authorize_time: Option<OffsetDateTime>,
    /// When captured.
    pub capture_time: Option<OffsetDateTime>,
    /// When voided.
    pub void_time: Option<OffsetDateTime>,
}

impl ChargeView {
    /// What may still be refunded: captured minus refunds succeeded or pending.
    pub fn refundable_minor(&self) -> i64 {
        let reserved: i64 = self
            .refunds
            .iter()
            .filter(|r| r.state != RefundState::Failed)
            .map(|r| r.amount.minor_units)
            .sum();
        self.captured.minor_units - reserved
    }
}

/// A refund as clients see it.
#[derive(Debug, Clone)]
pub struct RefundView {
    /// Id.
    pub id: RefundId,
    /// The `Refund` request id.
    pub request_id: String,
    /// Amount.
    pub amount: Money,
    /// State.
    pub state: RefundState,
    /// The processor's refund reference.
    pub processor_reference: String,
    /// Why.
    pub reason: String,
    /// When recorded.
    pub created_at: OffsetDateTime,
    /// When answered.
    pub complete_time: Option<OffsetDateTime>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every stored name parses back to its value, and every decline code has the action the
    /// proto documents.
    #[test]
    fn names_round_trip() {
        for state in ChargeState::ALL {
            assert_eq!(ChargeState::parse(state.as_str()), Some(*state));
        }
        for code in DeclineCode::ALL {
            assert_eq!(DeclineCode::parse(code.as_str()), Some(*code));
        }
        assert_eq!(
            DeclineCode::ProcessingError.default_next_action(),
            NextAction::RetrySameCard
        );
        assert_eq!(
            DeclineCode::InvalidAmount.default_next_action(),
            NextAction::DoNotRetry
        );
        assert_eq!(
            DeclineCode::LostCard.default_next_action(),
            NextAction::TryNextCard
        );
    }

    /// Ids have their prefix and parse back; other shapes are refused.
    #[test]
    fn ids() {
        let id = ChargeId::generate();
        assert!(id.as_str().starts_with("ch_"));
        assert_eq!(ChargeId::parse(id.as_str()), Ok(id.clone()));
        assert!(RefundId::parse(id.as_str()).is_err());
        assert_eq!(ChargeId::parse(""), Err(TextError::Missing));
        assert!(ChargeId::parse("ch_x").is_err());
    }

    /// Statement descriptors, references and metadata refuse what the proto forbids.
    #[test]
    fn free_text_fields() {
        assert!(StatementDescriptor::parse("TANDEM* CLOUD").is_err());
        assert!(StatementDescriptor::parse("TANDEM CLOUD INV 42").is_ok());
        assert!(StatementDescriptor::parse("12345").is_err());
        assert_eq!(
            StatementDescriptor::parse("CARD 4242424242424242"),
            Err(TextError::CardNumber)
        );
        assert!(StatementDescriptor::parse("A VERY LONG DESCRIPTOR TEXT").is_err());
        assert!(MerchantReference::parse("pay_1/leg_2").is_ok());
        assert_eq!(
            MerchantReference::parse("4242424242424242"),
            Err(TextError::CardNumber)
        );
        let entries = BTreeMap::from([("invoice".to_owned(), "INV-1".to_owned())]);
        assert!(Metadata::parse(entries.iter()).is_ok());
        let bad_key = BTreeMap::from([("Invoice".to_owned(), "x".to_owned())]);
        assert!(Metadata::parse(bad_key.iter()).is_err());
        let pan_value = BTreeMap::from([("note".to_owned(), "4242 4242 4242 4242".to_owned())]);
        assert_eq!(
            Metadata::parse(pan_value.iter()),
            Err(TextError::CardNumber)
        );
    }
}
