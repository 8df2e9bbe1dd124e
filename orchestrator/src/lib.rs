//! tandem-orchestrator: pays an invoice from a card group, split by policy, through the vault,
//! with every cent in the ledger, idempotently and crash-safely.
//!
//! # Layout
//!
//! - [`domain`]: pure code: allocation of an amount over a card group's members
//!   ([`domain::allocation`]); payment planning, from a group's members, a policy and an
//!   invoice to the legs to charge ([`domain::planning`]); the payment saga's decisions: the
//!   state machine and the next vault operations ([`domain::saga`]); the payment record
//!   ([`domain::record`], split into its steps, refunds, events and summary); the ledger
//!   transfer each outcome books ([`domain::booking`]); card groups' member rules, ceiling
//!   windows, each member's room and the group as stored ([`domain::group`]); risk policies,
//!   their features and the assessment ([`domain::risk`]).
//! - [`config`]: typed settings from TOML and `TANDEM_ORCHESTRATOR__...` overrides.
//! - [`server`]: assembles everything and runs the tonic server (mTLS, limits, health,
//!   reflection, graceful shutdown).
//! - [`grpc`]: thin handlers: authorize the caller, check the request, call the operation,
//!   convert the answer. [`grpc::convert`] is the one module between wire and domain: it
//!   checks each request once into a [`commands`] value and builds every wire message (and
//!   the group responses stored with request ids, and groups stored before they were kept
//!   as domain data);
//!   [`grpc::status`] is the one map from [`error::Error`] to `Status`.
//! - [`commands`]: what the operations take: checked requests in domain terms.
//! - [`auth`]: the table of which role may call which RPC.
//! - [`groups`], [`payments`]: the operations of `CardGroupService` and `PaymentService`, in
//!   domain terms: they take [`commands`] values and answer with what is stored. Every change
//!   records its caller ([`domain::actor`]); [`payments`] also serves the event feed
//!   (`ListEvents`) over both outboxes.
//! - [`ledger_reads`]: the operations of `LedgerService`: balances, entries, spend reports and
//!   exports, read from `tandem-ledger` (its accounts, transfers and flows), never from the
//!   payments' counters.
//! - [`fx`]: the operations of `FxService`, the rate source: each currency pair's rate, set by
//!   the treasury or read from the rates file ([`fx::file`], reloaded when it changes), and the
//!   quotes a payment converts at ([`fx::Fx::quotes`]).
//! - [`risk`]: the operations of `RiskService`: each billing account's risk policy, and the
//!   pruning of the features' old buckets. Payments are assessed, and reviewed
//!   (`ReviewPayment`), in [`payments`].
//! - [`workflow`]: drives payments (intent, vault call, result), the leases and the recovery
//!   worker.
//! - [`feeds`]: the events of watched payments, read once per instance for every
//!   `WatchPayment` stream.
//! - [`vault`]: the vault client, the edge to the vault: it builds the vault's requests and
//!   answers in domain terms.
//! - [`storage`]: all of the orchestrator's SQL (the ledger's is in `tandem-ledger`).
//! - [`metrics`]: the orchestrator's metric families, their labels and descriptions, and the
//!   samples a committed change's events give ([`metrics::Observed`], recorded once the change
//!   commits).
//!
//! # Invariants
//!
//! - Domain code does no IO and knows no wire types.
//! - Wire types are read and built only in [`grpc`] (with [`grpc::convert`]), [`vault`] and
//!   [`server`] (which registers the services).
//! - Card groups are stored as domain data ([`domain::group::CardGroup`]), checked once when
//!   written; a payment uses its group as stored, without checking it again. Groups written
//!   before (encoded `CardGroup` messages) are converted once when the workflow starts and
//!   read from their message until then.
//! - Money is integer minor units; every split and every allocation sums exactly to the
//!   amount it divides, and asserts it (in release builds too).
//! - Every vault call is preceded by a committed intent and its answer is committed with the
//!   ledger transfers and the outbox events it causes, in one transaction; vault request ids
//!   are deterministic, so a re-send after a crash is a replay, never a second charge.
//! - A payment's saga is advanced only by the instance holding its lease; refunds and notes
//!   are appended under the payment row's lock, which every step of the saga also takes and
//!   reads under.
//! - The event feed lists an event only once no running transaction can commit one before it
//!   (`storage::feed_after`), so a cursor never skips or repeats an event.
//! - Every mutating RPC is idempotent by `request_id`.
//! - A payment is assessed before any vault call; the risk features are written by the
//!   statements that record what they count (the payment's insert, the saves of its results).
//! - A payment in review is captured only after a reviewer other than its creator approves;
//!   a rejection or the review's expiry voids every hold.

pub mod auth;
pub mod commands;
pub mod config;
pub mod domain;
pub mod error;
pub mod feeds;
pub mod fx;
pub mod groups;
pub mod grpc;
pub mod ledger_reads;
pub mod metrics;
pub mod payments;
pub mod reconciliation;
pub mod risk;
pub mod server;
pub mod storage;
pub mod vault;
pub mod webhooks;
pub mod workflow;

pub use server::{run, run_with};
