//! tandem-vault: the hardened card vault.
//!
//! It issues and revokes opaque tokens, stores card data under AES-256-GCM envelope encryption
//! in its own Postgres database, charges cards through processor connectors (a sandbox acquirer
//! built in), and writes a hash-chained audit row for every call. It serves gRPC only over
//! mutual TLS.
//!
//! # Layout
//!
//! The vault is laid out by capability: tokens, charges, keys and audit each have a module of
//! operations, a module of SQL under [`storage`] and a module of handlers under [`grpc`].
//!
//! - [`config`]: typed settings from TOML and `TANDEM_VAULT__...` overrides, validated at start.
//! - [`server`]: assembles everything and runs the tonic server (mTLS, limits, health,
//!   reflection, graceful shutdown).
//! - [`grpc`]: thin handlers, one module per service ([`grpc::tokens`], [`grpc::charges`],
//!   [`grpc::sandbox`], [`grpc::keys`]), opened and refused the same way by one edge helper;
//!   [`grpc::convert`] checks wire input once and builds domain types; [`grpc::status`] is the
//!   one map from [`error::Error`] to `Status`.
//! - [`auth`]: the table of which role may call which RPC.
//! - [`kernel`]: what the capabilities share: the request context, the vault handle (pool, key
//!   ring, writer), authorization and audited refusals, and the one request-id check
//!   (`kernel::RequestCheck`: new, replay or reused) of every request table.
//! - [`tokens`]: the token operations (tokenize, read, list, update, revoke, purge).
//! - [`charges`]: the charge operations: intent, processor call, result; replay and recovery;
//!   [`charges::sandbox`]: the sandbox acquirer's administration.
//! - [`keys`]: the key ring in memory with the encryption budget and data-key rotation
//!   ([`keys::ring`]); sealing and unsealing with Shamir shares, rotation with the background
//!   rewrap, root-key rotation, the audit log's reading side ([`keys::admin`]).
//! - [`audit`]: the hash chain (pure, [`audit::chain`]) and its verification
//!   ([`audit::verification`]).
//! - [`writer`]: group commit of every mutation with its audit row; its two job kinds
//!   ([`writer::Mutation`], and [`writer::CardMutation`] for one that joins the batch's card
//!   insert) are told apart by type.
//! - [`storage`]: the vault's SQL, one module per capability (run-time checked queries).
//! - [`connector`]: the `Connector` trait, its timeout and circuit breaker, and the sandbox
//!   acquirer (which keeps its own tables and SQL, as an external system would).
//! - [`domain`]: pure types: PAN, expiry, token, fingerprint, charges, commands, the charge
//!   rules ([`domain::charge_rules::decide`]), what an audit row says, and the settlement file's
//!   format ([`domain::settlement`]: its one writer and its chunking).
//! - [`crypto`]: key wrapping, card sealing, keyed fingerprints (pure).
//! - `locked`: locked pages, left out of core dumps, that hold every key.
//! - [`hardening`]: the process settings and the wiping allocator that keep card data and keys
//!   out of memory dumps.
//! - [`metrics`]: the vault's metric families, their labels and descriptions, and what records
//!   them (the writer counts audit rows, the connector times processor calls; a leaf: it
//!   imports nothing of the vault); [`scrape`]: the vault's endpoint, which reads the gauges of
//!   the seal, the connector and the keys at each scrape.
//!
//! # Invariants
//!
//! - A PAN is in clear only inside a [`domain::Pan`], which zeroizes, redacts its `Debug`, and
//!   cannot be cloned or displayed. Its digits are read only to check it at the edge
//!   ([`grpc::convert`], which wipes the wire copy), to key-hash a request ([`tokens`]), to
//!   fingerprint, seal and open it ([`crypto`]), and by a processor [`connector`]. The vault
//!   opens a card only to send it to the connector ([`charges`], [`charges::sandbox`]) or to
//!   re-seal it ([`tokens`], [`keys`]).
//! - No RPC returns a PAN; no log line, error or audit row contains one, nor a key.
//! - A key is in clear only in its locked page; the process is not dumpable, and the binary
//!   wipes every heap block it frees, so card data does not outlive its request in memory.
//! - A sealed card opens only under its own token and data key version (AAD-bound).
//! - Domain code does no IO and knows no wire types.
//! - All SQL is in [`storage`], except the sandbox acquirer's own tables, which
//!   [`connector::sandbox`] keeps as an external processor would.
//! - Every call is answered only after its audit row has committed. Token, charge and sandbox
//!   writes (card configuration, settlement corruptions) commit through the [`writer`] in the
//!   same transaction as their audit row; key administration (rotation, retirement, seal, root-key rotation)
//!   commits its key changes first and its audit row right after.
//! - Every mutating RPC is idempotent by `request_id`, judged by one rule
//!   (`kernel::RequestCheck`); `Unseal` is idempotent by its share (held in memory only).
//! - Every processor call is preceded by a committed intent and carries an idempotency key
//!   derived from its `request_id`; a charge is never sent twice for one request.
//! - No two of the vault's files import each other, directly or round a circle. The layers, top
//!   down: [`server`]; [`grpc`] and [`scrape`]; the capabilities ([`tokens`], [`charges`],
//!   [`keys::admin`]); the [`kernel`]; the [`writer`]; [`audit`]; [`storage`]; then
//!   [`connector`], [`crypto`], [`config`], [`domain`] and the leaves ([`error`], [`auth`],
//!   [`metrics`], [`hardening`]). The one module split across layers is [`keys`]: the key ring
//!   ([`keys::ring`]) sits below the kernel, whose vault handle holds it.

pub mod audit;
pub mod auth;
pub mod charges;
pub mod config;
pub mod connector;
pub mod crypto;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod hardening;
pub mod kernel;
pub mod keys;
mod locked;
pub mod metrics;
pub mod scrape;
pub mod server;
pub mod storage;
pub mod tokens;
pub mod writer;

pub use server::run;
