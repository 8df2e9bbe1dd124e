//! tandem-orchestrator: pays an invoice from a card group, split by policy, through the vault,
//! with every cent in the ledger.
//!
//! # Layout
//!
//! - [`domain`]: pure code: allocation of an amount over a card group's members
//!   ([`domain::allocation`]) and the payment saga's decisions: the state machine and the next
//!   vault operations ([`domain::saga`]), the ledger transfer each outcome books
//!   ([`domain::booking`]), and card groups' member rules, ceiling windows and each member's
//!   room for a payment ([`domain::group`]).
//!
//! The gRPC services, the payment saga and its durability are built on this layer next
//! (see the project's issues); this crate holds the pure decision code first, because every
//! other part executes its decisions.
//!
//! # Invariants
//!
//! - Domain code does no IO and knows no wire types.
//! - Money is integer minor units; every split sums exactly to the amount it splits.

pub mod domain;
