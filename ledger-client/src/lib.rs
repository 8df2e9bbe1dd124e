//! tandem-ledger: Tandem's double-entry ledger in Postgres, on TigerBeetle's model.
//!
//! # Chart of accounts
//!
//! Every account has one currency; amounts are integer minor units.
//!
//! | code | one per | what it holds |
//! |---|---|---|
//! | `funding_source` | card token and currency | what the card has paid: debited by payments, credited by refunds |
//! | `receivable` | billing account and currency | what the account's invoices have received: credited by payments |
//! | `processor_clearing` | processor and currency | money captured at the processor and not yet settled |
//! | `refunds` | billing account and currency | refunds issued back to cards |
//! | `fx_clearing` | currency pair and one of its two currencies | the position of the pair's conversions in that currency |
//! | `fx_rounding` | currency | what cards paid above the exact conversion, rounded |
//!
//! A card authorization is a *pending* transfer from the card's `funding_source` to the
//! billing account's `receivable` (a hold); a capture *posts* it, in full or in part (the rest
//! is released); a void *voids* it; a refund is a new transfer in the opposite direction. The
//! orchestrator decides the flows; this crate guarantees the accounting.
//!
//! Every transfer is within one currency. A leg charged to a card in another currency than the
//! invoice's crosses currencies through the pair's two clearing accounts, ids
//! `fx_clearing:<FROM>-<TO>:<currency>` with FROM the invoice's currency and TO the card's
//! (`fx_clearing:USD-EUR:EUR` and `fx_clearing:USD-EUR:USD`): a linked chain of
//! `funding_source:<token>:EUR -> receivable:<account>:EUR` (the card pays the billing account
//! in its own currency, as any card does), `receivable:<account>:EUR -> fx_clearing:USD-EUR:EUR`
//! and `fx_clearing:USD-EUR:USD -> receivable:<account>:USD`, each in its own currency, held and
//! posted together; what the card paid above the exact conversion moves on from
//! `fx_clearing:USD-EUR:EUR` to `fx_rounding:EUR`. So each currency's journal sums to zero.
//! The database holds the form of both ids (the pair names two different currencies, one of
//! them the account's; a rounding id names the account's currency).
//!
//! # Layout
//!
//! - [`types`]: ids, accounts, transfers, per-transfer results.
//! - [`engine`]: the pure decision of a batch (results, rows to insert, linked chains).
//! - [`ledger`]: writes and reads inside a caller's transaction.
//! - [`reports`]: spend and cost-center balances, read from the flows the transfer trigger
//!   keeps per account pair, cost center and day.
//! - [`batch`]: the batching writer for standalone use (group commit).
//! - [`invariants`]: the consistency check.
//! - [`export`]: CSV and JSON lines for ERP import.
//! - [`MIGRATOR`]: the schema, to run on the database that holds the ledger.
//!
//! # Invariants (held by the database, not only by this code)
//!
//! - Transfers are immutable: triggers refuse UPDATE, DELETE and TRUNCATE.
//! - Balances change only through transfers: a statement-level trigger applies each INSERT of
//!   transfers to the balances; a direct balance UPDATE is refused; accounts start at zero.
//! - Both accounts of a transfer share its currency (composite foreign keys); a post or void
//!   moves between exactly its pending transfer's accounts; at most one post or void resolves a
//!   pending transfer (a unique index); a post never exceeds its hold.
//! - Flows (`ledger_flows`) change only with the transfers that make them, in the same
//!   statement; the invariant check holds each to the sum of its transfers.
//! - Each currency's journal sums to zero: every transfer is within one currency, and
//!   conversions cross currencies only through the `fx_clearing` accounts of a pair.
//! - Balance limits (`debits_must_not_exceed_credits`, ...) are CHECK constraints.
//! - Accounts are locked in sorted id order before a batch is decided, so concurrent writers
//!   never deadlock.
//! - A transfer id is its idempotency key: the same id with the same fields is `Exists`, with
//!   other fields `ExistsWithDifferentFields`. Business outcomes are results, never errors.
//!
//! Queries are checked at run time, not compile time; each is covered by a Postgres test.

pub mod batch;
pub mod engine;
pub mod export;
pub mod invariants;
pub mod ledger;
pub mod reports;
pub mod types;

pub use ledger::LedgerError;

/// The ledger's migrations (versions from 10001, so they can share a database and sqlx's
/// migration table with the orchestrator's own; run with `set_ignore_missing(true)` there).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The current time at Postgres's precision (microseconds), so written and read values agree.
pub(crate) fn now_micros() -> time::OffsetDateTime {
    truncate_to_micros(time::OffsetDateTime::now_utc())
}

/// `time` at Postgres's precision: microseconds.
pub(crate) fn truncate_to_micros(time: time::OffsetDateTime) -> time::OffsetDateTime {
    let nanos = time.nanosecond();
    time.replace_nanosecond(nanos - nanos % 1000)
        .expect("a truncated nanosecond is in range")
}
