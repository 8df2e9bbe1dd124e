//! What the operations take: requests checked once at the edge ([`crate::grpc::convert`]) and
//! handed over in domain terms.

use std::fmt;

use tandem_money::{Currency, Money};

use crate::domain::group::{CardGroup, GroupDraft, MemberRules, Policy};
use crate::domain::planning::Invoice;
use crate::error::Error;
use crate::storage::{Cursor, FeedPosition, PaymentFilter};
use tandem_runtime::fields::FieldViolation;

/// A checked `CreatePayment`.
#[derive(Debug)]
pub struct NewPayment {
    /// The caller's idempotency key.
    pub request_id: String,
    /// The card group to pay from.
    pub card_group_id: String,
    /// The invoice.
    pub invoice: Invoice,
    /// The caller's policy for this payment, if any.
    pub policy_override: Option<PolicyOverride>,
    /// Answer once the payment is terminal (within `wait_ms`), not at once.
    pub wait: bool,
    /// How long to wait for the end, in milliseconds.
    pub wait_ms: u64,
    /// The hash of the request's identity (its fields, `wait` and its timeout left out).
    pub request_hash: Vec<u8>,
    /// The request's identity as given, encoded: the payment shows its invoice from it.
    pub request: Vec<u8>,
    /// An operator note to record with the payment.
    pub note: Option<String>,
}

/// A checked `AddPaymentNote`.
#[derive(Debug, Clone)]
pub struct NewNote {
    /// The caller's idempotency key.
    pub request_id: String,
    /// The payment.
    pub payment_id: String,
    /// The note.
    pub text: String,
    /// The hash of the request.
    pub request_hash: Vec<u8>,
}

/// A checked `ListEvents`.
#[derive(Debug, Clone)]
pub struct EventQuery {
    /// Events in the page.
    pub size: i32,
    /// Where the page starts (after this event).
    pub after: FeedPosition,
    /// Only these types; all when empty.
    pub types: Vec<String>,
}

/// The checks of a policy override that need the card group's members, run once the group is
/// read: the policy, or the violations of its fields.
pub type OverrideCheck =
    Box<dyn FnOnce(&[MemberRules], Currency) -> (Option<Policy>, Vec<FieldViolation>) + Send>;

/// A payment's own policy, as given.
pub struct PolicyOverride {
    /// The policy as given, encoded: the payment keeps it as the policy it was paid under.
    pub encoded: Vec<u8>,
    /// Checks it against the group's members and the invoice's currency.
    pub check: OverrideCheck,
}

impl fmt::Debug for PolicyOverride {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyOverride")
            .field("encoded_bytes", &self.encoded.len())
            .finish_non_exhaustive()
    }
}

/// A checked `RefundPayment`.
#[derive(Debug, Clone)]
pub struct NewRefund {
    /// The caller's idempotency key.
    pub request_id: String,
    /// The payment to refund.
    pub payment_id: String,
    /// How much; all that remains refundable when `None`.
    pub amount: Option<Money>,
    /// Why, for people.
    pub reason: String,
    /// The hash of the request.
    pub request_hash: Vec<u8>,
}

/// A checked `ListPayments`.
#[derive(Debug, Clone)]
pub struct PaymentQuery {
    /// Which payments.
    pub filter: PaymentFilter,
    /// Rows in the page.
    pub size: i32,
    /// Where the page starts (after this row), from the page token.
    pub after: Option<Cursor>,
}

/// A checked `WatchPayment`.
#[derive(Debug, Clone)]
pub struct Watch {
    /// The payment.
    pub payment_id: String,
    /// Send the events after this sequence number.
    pub after_sequence: i64,
}

/// A checked `CreateCardGroup`.
#[derive(Debug, Clone)]
pub struct NewGroup {
    /// The caller's idempotency key.
    pub request_id: String,
    /// The hash of the request.
    pub request_hash: Vec<u8>,
    /// The billing account the group belongs to.
    pub billing_account_id: String,
    /// The group as given, checked; each member's token is checked with the vault before
    /// anything is written.
    pub draft: GroupDraft,
}

/// Applies an update's fields to the group as stored and checks the result as a whole, like
/// a new group: the group to write, or the violations of the request's fields.
pub type GroupMerge = Box<dyn FnOnce(&CardGroup) -> Result<GroupDraft, Error> + Send>;

/// A checked `UpdateCardGroup`.
pub struct GroupUpdate {
    /// The caller's idempotency key.
    pub request_id: String,
    /// The hash of the request.
    pub request_hash: Vec<u8>,
    /// The group.
    pub card_group_id: String,
    /// Act only on this version, when not empty.
    pub etag: String,
    /// The request's fields in the mask, applied to the group as it is.
    pub merge: GroupMerge,
}

impl fmt::Debug for GroupUpdate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupUpdate")
            .field("request_id", &self.request_id)
            .field("card_group_id", &self.card_group_id)
            .field("etag", &self.etag)
            .finish_non_exhaustive()
    }
}

/// A checked `DeleteCardGroup`.
#[derive(Debug, Clone)]
pub struct GroupArchive {
    /// The caller's idempotency key.
    pub request_id: String,
    /// The hash of the request.
    pub request_hash: Vec<u8>,
    /// The group.
    pub card_group_id: String,
    /// Act only on this version, when not empty.
    pub etag: String,
}

/// A checked `ListCardGroups`.
#[derive(Debug, Clone)]
pub struct GroupQuery {
    /// Of this billing account only.
    pub billing_account_id: Option<String>,
    /// Archived groups too.
    pub show_archived: bool,
    /// Rows in the page.
    pub size: i32,
    /// Where the page starts (after this row), from the page token.
    pub after: Option<Cursor>,
}

/// A checked `GetBalances`: whose balances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BalanceQuery {
    /// The funding sources of a card token.
    Card(String),
    /// The accounts of a billing account.
    BillingAccount(String),
    /// Each account's slice moved by a cost center's entries.
    CostCenter(String),
}

/// A checked `ListEntries`.
#[derive(Debug, Clone)]
pub struct EntryQuery {
    /// Which entries.
    pub filter: tandem_ledger::ledger::TransferFilter,
    /// Entries in the page.
    pub size: i32,
    /// Where the page starts: after this ledger position.
    pub after_seq: i64,
}

/// A checked `GetSpendReport`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpendQuery {
    /// The billing account.
    pub billing_account: String,
    /// The first day (UTC).
    pub from: time::Date,
    /// The day after the last.
    pub to: time::Date,
}

/// A checked `ExportLedger`.
#[derive(Debug, Clone)]
pub struct ExportQuery {
    /// Which entries.
    pub filter: tandem_ledger::ledger::TransferFilter,
    /// CSV or JSON lines.
    pub format: tandem_ledger::export::Format,
    /// Entries per chunk.
    pub chunk: i32,
    /// Where the export continues: after this ledger position (0 to start, with the header).
    pub after_seq: i64,
    /// Most bytes of lines in one chunk (one message).
    pub bytes_max: usize,
}

/// A checked `RunReconciliation`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconcileDay {
    /// The request id.
    pub request_id: String,
    /// The hash of the request.
    pub request_hash: Vec<u8>,
    /// The processor (the configured one).
    pub processor: String,
    /// The settlement day, not after today (UTC).
    pub day: time::Date,
}

/// A checked `ListDiscrepancies`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscrepancyQuery {
    /// The run whose processor and day to list, if named.
    pub run_id: Option<String>,
    /// Otherwise this processor ...
    pub processor: String,
    /// ... and this day, if given.
    pub day: Option<time::Date>,
    /// Only this state (`open`, `resolved`, `cleared`), if given.
    pub state: Option<String>,
    /// Discrepancies in the page.
    pub size: i32,
    /// Where the page starts: after this position.
    pub after: i64,
}

/// A checked `ProposeAdjustment`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdjustmentProposal {
    /// The request id.
    pub request_id: String,
    /// The hash of the request.
    pub request_hash: Vec<u8>,
    /// The discrepancy.
    pub discrepancy_id: String,
    /// The correction's size, minor units, positive.
    pub amount: i64,
    /// Its currency.
    pub currency: String,
    /// Why.
    pub reason: String,
}

/// A checked `ApproveAdjustment` or `RejectAdjustment`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdjustmentDecision {
    /// The request id.
    pub request_id: String,
    /// The hash of the request.
    pub request_hash: Vec<u8>,
    /// The adjustment.
    pub adjustment_id: String,
    /// Approve (post it) or reject.
    pub approve: bool,
    /// Why (a rejection).
    pub reason: String,
}

/// A checked `CreateWebhookEndpoint`.
#[derive(Debug)]
pub struct NewEndpoint {
    /// The caller's idempotency key.
    pub request_id: String,
    /// The hash of the request.
    pub request_hash: Vec<u8>,
    /// Where deliveries go, checked.
    pub destination: crate::webhooks::destination::Destination,
    /// The types it receives, sorted and unique; empty for all.
    pub event_types: Vec<String>,
    /// For people.
    pub description: String,
}

/// A checked `UpdateWebhookEndpoint`: the fields its mask names.
#[derive(Debug)]
pub struct EndpointUpdate {
    /// The caller's idempotency key.
    pub request_id: String,
    /// The hash of the request.
    pub request_hash: Vec<u8>,
    /// The endpoint.
    pub endpoint_id: String,
    /// A new URL, checked.
    pub destination: Option<crate::webhooks::destination::Destination>,
    /// A new description.
    pub description: Option<String>,
    /// New types (sorted and unique; empty for all).
    pub event_types: Option<Vec<String>>,
    /// Enable (true) or disable (false).
    pub enable: Option<bool>,
}

/// A checked `DeleteWebhookEndpoint` or `RotateWebhookSecret`.
#[derive(Debug)]
pub struct EndpointChange {
    /// The caller's idempotency key.
    pub request_id: String,
    /// The hash of the request.
    pub request_hash: Vec<u8>,
    /// The endpoint.
    pub endpoint_id: String,
}

/// A checked `ListWebhookDeliveries`.
#[derive(Debug)]
pub struct DeliveryQuery {
    /// The endpoint.
    pub endpoint_id: String,
    /// Only this state.
    pub state: Option<crate::domain::webhooks::DeliveryState>,
    /// Only this event's.
    pub event_id: Option<String>,
    /// Before this row (the page token).
    pub before: Option<i64>,
    /// The page size.
    pub size: i32,
}

/// A checked `RedeliverEvents`.
#[derive(Debug)]
pub struct Redelivery {
    /// The caller's idempotency key.
    pub request_id: String,
    /// The hash of the request.
    pub request_hash: Vec<u8>,
    /// The endpoint.
    pub endpoint_id: String,
    /// The events committed at or after this time ...
    pub start: time::OffsetDateTime,
    /// ... and before this one.
    pub end: time::OffsetDateTime,
}

/// A checked rate, from `SetFxRate` or the rates file: units of `quote` per unit of `base`,
/// within `[fx.rate_min, fx.rate_max]`, observed at `as_of`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRate {
    /// The currency converted from.
    pub base: Currency,
    /// The currency converted to, not `base`.
    pub quote: Currency,
    /// The rate.
    pub rate: tandem_money::fx::Rate,
    /// When it was observed (now, for a `SetFxRate` without one), in microseconds.
    pub as_of: time::OffsetDateTime,
}

/// A checked `SetFxRate`.
#[derive(Debug)]
pub struct RateChange {
    /// The caller's idempotency key.
    pub request_id: String,
    /// The hash of the request.
    pub request_hash: Vec<u8>,
    /// The rate to set.
    pub rate: NewRate,
}

/// A checked `ListFxRates`.
#[derive(Debug)]
pub struct RateQuery {
    /// Only the rates from this currency.
    pub base: Option<Currency>,
    /// After this pair (the page token).
    pub after: Option<(Currency, Currency)>,
    /// The page size.
    pub size: i32,
}

/// A checked `SetRiskPolicy`.
#[derive(Debug)]
pub struct RiskPolicyChange {
    /// The caller's idempotency key.
    pub request_id: String,
    /// The hash of the request.
    pub request_hash: Vec<u8>,
    /// The billing account.
    pub billing_account_id: String,
    /// The policy to set.
    pub policy: crate::domain::risk::Policy,
    /// Replace only this version (`None`: whatever is current).
    pub expected_version: Option<i64>,
}

/// A checked `ResolvePayment`.
#[derive(Debug)]
pub struct NewResolution {
    /// The caller's idempotency key.
    pub request_id: String,
    /// The hash of the request.
    pub request_hash: Vec<u8>,
    /// The payment.
    pub payment_id: String,
    /// Retry or confirm.
    pub decision: crate::domain::record::operator::Decision,
    /// Why.
    pub note: String,
}

/// A checked `ReviewPayment`.
#[derive(Debug)]
pub struct NewReview {
    /// The caller's idempotency key.
    pub request_id: String,
    /// The hash of the request.
    pub request_hash: Vec<u8>,
    /// The payment.
    pub payment_id: String,
    /// Approve or reject (never `Expired`).
    pub verdict: crate::domain::saga::Verdict,
    /// The reviewer's note.
    pub note: Option<String>,
}
