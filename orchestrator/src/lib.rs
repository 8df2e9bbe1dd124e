//! tandem-orchestrator: pays an invoice from a card group, split by policy, through the vault,
//! with every cent in the ledger, idempotently and crash-safely.
//!
//! # Layout
//!
//! - [`domain`]: pure code: allocation of an amount over a card group's members
//!   ([`domain::allocation`]); the payment saga's decisions: the state machine and the next
//!   vault operations ([`domain::saga`]); the payment record with its attempts, refunds,
//!   events and summary ([`domain::record`]); the ledger transfer each outcome books
//!   ([`domain::booking`]); card groups' member rules, ceiling windows and each member's room
//!   ([`domain::group`]).
//! - [`config`]: typed settings from TOML and `TANDEM_ORCHESTRATOR__...` overrides.
//! - [`server`]: assembles everything and runs the tonic server (mTLS, limits, health,
//!   reflection, graceful shutdown).
//! - [`grpc`]: thin handlers; [`grpc::convert`] checks wire input once and builds domain
//!   types; [`grpc::status`] is the one map from [`error::Error`] to `Status`.
//! - [`auth`]: the table of which role may call which RPC.
//! - [`groups`], [`payments`]: the operations of `CardGroupService` and `PaymentService`.
//! - [`workflow`]: drives payments (intent, vault call, result), the leases and the recovery
//!   worker.
//! - [`feeds`]: the events of watched payments, read once per instance for every
//!   `WatchPayment` stream.
//! - [`vault`]: the vault client, answers in domain terms.
//! - [`storage`]: all SQL.
//!
//! # Invariants
//!
//! - Domain code does no IO and knows no wire types.
//! - Money is integer minor units; every split sums exactly to the amount it splits.
//! - Every vault call is preceded by a committed intent and its answer is committed with the
//!   ledger transfers and the outbox events it causes, in one transaction; vault request ids
//!   are deterministic, so a re-send after a crash is a replay, never a second charge.
//! - A payment is written only by the instance holding its lease.
//! - Every mutating RPC is idempotent by `request_id`.

pub mod auth;
pub mod config;
pub mod domain;
pub mod error;
pub mod feeds;
pub mod groups;
pub mod grpc;
pub mod payments;
pub mod server;
pub mod storage;
pub mod vault;
pub mod workflow;

pub use server::{run, run_with};
