//! tandem-runtime: what every Tandem server shares, so the vault and the orchestrator read
//! their settings, listen, and log the same way.
//!
//! - [`settings`]: a TOML file plus `TANDEM_<SERVICE>__<SECTION>__<KEY>` environment overrides,
//!   and the sections every server has (gRPC server limits, mutual TLS, the database pool),
//!   with their range checks.
//! - [`telemetry`]: `tracing` with JSON output.

pub mod settings;
pub mod telemetry;
