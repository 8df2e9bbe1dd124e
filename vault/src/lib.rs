//! tandem-vault: the hardened card vault.
//!
//! It issues and revokes opaque tokens, stores card data under AES-256-GCM envelope encryption
//! in its own Postgres database, charges cards through processor connectors (a sandbox acquirer
//! built in), and writes a hash-chained audit row for every call. It serves gRPC only over
//! mutual TLS.
//!
//! # Layout
//!
//! - [`config`]: typed settings from TOML and `TANDEM_VAULT__...` overrides, validated at start.
//! - [`server`]: assembles everything and runs the tonic server (mTLS, limits, health,
//!   reflection, graceful shutdown).
//! - [`grpc`]: thin handlers; [`grpc::convert`] checks wire input once and builds domain
//!   types; [`grpc::status`] is the one map from [`error::Error`] to `Status`.
//! - [`auth`]: the table of which role may call which RPC.
//! - [`service`]: the token operations, over checked domain types.
//! - [`charging`]: the charge operations: intent, processor call, result; replay and recovery.
//! - [`connector`]: the `Connector` trait, its timeout and circuit breaker, and the sandbox
//!   acquirer (which keeps its own tables and SQL, as an external system would).
//! - [`domain`]: pure types: PAN, expiry, token, fingerprint, charges, commands.
//! - [`crypto`]: key wrapping, card sealing, keyed fingerprints (pure).
//! - [`keys`]: the key ring in memory, the encryption budget, data-key rotation.
//! - `locked`: locked pages, left out of core dumps, that hold every key.
//! - [`hardening`]: the process settings and the wiping allocator that keep card data and keys
//!   out of memory dumps.
//! - [`key_admin`]: sealing and unsealing with Shamir shares, rotation with the background
//!   rewrap, root-key rotation, the audit log's reading side.
//! - [`writer`]: group commit of every mutation with its audit row.
//! - [`audit`]: the hash chain and its verification.
//! - [`metrics`]: Prometheus metrics on a loopback port, counted from committed audit rows.
//! - [`storage`]: all SQL (run-time checked queries, each covered by a Postgres test).
//!
//! # Invariants
//!
//! - Only [`crypto`] and a processor [`connector`] see a PAN in clear; [`domain::Pan`]
//!   zeroizes, redacts its `Debug`, and cannot be cloned or displayed.
//! - No RPC returns a PAN; no log line, error or audit row contains one, nor a key.
//! - A key is in clear only in its locked page; the process is not dumpable, and the binary
//!   wipes every heap block it frees, so card data does not outlive its request in memory.
//! - A sealed card opens only under its own token and data key version (AAD-bound).
//! - Domain code does no IO and knows no wire types.
//! - Every call is answered only after its audit row has committed, in the same transaction
//!   as the records it describes.
//! - Every mutating RPC is idempotent by `request_id`.
//! - Every processor call is preceded by a committed intent and carries an idempotency key
//!   derived from its `request_id`; a charge is never sent twice for one request.

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
